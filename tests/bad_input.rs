//! Caller mistakes: INVALID_ARGUMENT naming the field, nothing charged, the server keeps serving.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::UInt64Value;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{CheckBatchRequest, CheckRequest};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::TestDaemon;
use crate::support::rls::{descriptor, request};

fn req(key: &str, cost: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        cost,
        id: 0,
        ..Default::default()
    }
}

fn assert_invalid(r: Result<impl std::fmt::Debug, tonic::Status>, message: &str) {
    let status = r.expect_err("request must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test]
async fn native_check_refuses_bad_keys_and_costs() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    assert_invalid(c.check(req("", 1)).await, "key: must not be empty");
    let long = "k".repeat(65);
    assert_invalid(
        c.check(req(&long, 1)).await,
        "key: 65 bytes exceeds the maximum of 64 bytes",
    );
    assert_invalid(
        c.check(req("k", 1001)).await,
        "cost: 1001 exceeds the maximum cost of 1000",
    );
    assert_invalid(
        c.check(req("k", u64::MAX)).await,
        "cost: 18446744073709551615 exceeds the maximum cost of 1000",
    );
    // Nothing was charged by the refused requests.
    let r = c.check(req("k", 1)).await.unwrap().into_inner();
    assert_eq!(r.remaining, 19);
}

#[tokio::test]
async fn batch_refuses_oversize_and_bad_items_without_charging_any() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let checks = (0..11).map(|_| req("k", 1)).collect();
    assert_invalid(
        c.check_batch(CheckBatchRequest { checks }).await,
        "checks: 11 items exceed the maximum of 10",
    );
    let checks = vec![req("k", 5), req("k", 5), req("", 1)];
    assert_invalid(
        c.check_batch(CheckBatchRequest { checks }).await,
        "checks[2].key: must not be empty",
    );
    let r = c.check(req("k", 1)).await.unwrap().into_inner();
    assert_eq!(r.remaining, 19, "the refused batch charged nothing");
    // An empty batch is fine and answers nothing.
    let out = c
        .check_batch(CheckBatchRequest { checks: vec![] })
        .await
        .unwrap();
    assert!(out.into_inner().results.is_empty());
}

#[tokio::test]
async fn stream_answers_an_invalid_check_with_an_error_and_goes_on() {
    use quotad::api::pb::DenyReason;
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let reqs = vec![
        CheckRequest {
            key: "k".into(),
            cost: 1,
            id: 1,
            ..Default::default()
        },
        CheckRequest {
            key: "".into(),
            cost: 1,
            id: 2,
            ..Default::default()
        },
        CheckRequest {
            key: "k".into(),
            cost: 5000,
            id: 3,
            ..Default::default()
        },
        CheckRequest {
            key: "k".into(),
            cost: 1,
            id: 4,
            ..Default::default()
        },
    ];
    let out: Vec<_> = c
        .check_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let out: Vec<_> = out
        .into_iter()
        .map(|r| r.expect("no stream error"))
        .collect();
    let summary: Vec<(u64, bool, i32, &str)> = out
        .iter()
        .map(|r| (r.id, r.allowed, r.reason, r.error.as_str()))
        .collect();
    let invalid = DenyReason::InvalidRequest as i32;
    assert_eq!(
        summary,
        vec![
            (1, true, 0, ""),
            (2, false, invalid, "key: must not be empty"),
            (
                3,
                false,
                invalid,
                "cost: 5000 exceeds the maximum cost of 1000"
            ),
            (4, true, 0, ""),
        ]
    );
    // The refused checks charged nothing: 2 of the burst of 20 are gone.
    assert_eq!(out[3].remaining, 18);
}

fn rls(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    request(domain, descriptors, 0)
}

#[tokio::test]
async fn requests_for_other_domains_are_ok_whatever_their_entries() {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
    let d = TestDaemon::start().await;
    let mut c = RateLimitServiceClient::new(d.channel().await);
    // Our caps are not theirs: a long key for another domain is not ours
    // to refuse.
    let long = "k".repeat(100);
    let r = c
        .should_rate_limit(rls("someone-else", vec![descriptor(&[("api_key", &long)])]))
        .await
        .expect("OK for a domain we do not own")
        .into_inner();
    assert_eq!(r.overall_code, RlsCode::Ok as i32);
}

#[tokio::test]
async fn rls_refuses_malformed_requests() {
    let d = TestDaemon::start().await;
    let mut c = RateLimitServiceClient::new(d.channel().await);
    assert_invalid(
        c.should_rate_limit(rls("", vec![descriptor(&[("api_key", "k")])]))
            .await,
        "domain: must not be empty",
    );
    assert_invalid(
        c.should_rate_limit(rls("edge", vec![])).await,
        "descriptors: must not be empty",
    );
    let many = (0..5).map(|_| descriptor(&[("api_key", "k")])).collect();
    assert_invalid(
        c.should_rate_limit(rls("edge", many)).await,
        "descriptors: 5 items exceed the maximum of 4",
    );
    let wide = descriptor(&[
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "4"),
        ("api_key", "k"),
    ]);
    assert_invalid(
        c.should_rate_limit(rls("edge", vec![descriptor(&[("api_key", "k")]), wide]))
            .await,
        "descriptors[1].entries: 5 items exceed the maximum of 4",
    );
    assert_invalid(
        c.should_rate_limit(rls("edge", vec![descriptor(&[])]))
            .await,
        "descriptors[0].entries: must not be empty",
    );
    assert_invalid(
        c.should_rate_limit(rls("edge", vec![descriptor(&[("", "v")])]))
            .await,
        "descriptors[0].entries[0].key: must not be empty",
    );
    assert_invalid(
        c.should_rate_limit(rls(
            "edge",
            vec![descriptor(&[("path", "/"), ("api_key", "")])],
        ))
        .await,
        "descriptors[0].entries[1].value: must not be empty",
    );
    let long = "k".repeat(100);
    assert_invalid(
        c.should_rate_limit(rls("edge", vec![descriptor(&[("api_key", &long)])]))
            .await,
        "descriptors[0].entries[0].value: 100 bytes exceeds the maximum of 64 bytes",
    );
    let mut costly = descriptor(&[("api_key", "k")]);
    costly.hits_addend = Some(UInt64Value { value: u64::MAX });
    assert_invalid(
        c.should_rate_limit(rls("edge", vec![costly])).await,
        "descriptors[0].hits_addend: 18446744073709551615 exceeds the maximum cost of 1000",
    );
    assert_invalid(
        c.should_rate_limit(rls(
            "edge",
            vec![descriptor(&[("api_key", "a"), ("api_key", "b")])],
        ))
        .await,
        "descriptors[0].entries[1].key: the API key entry appears more than once",
    );
    let mut r = rls("edge", vec![descriptor(&[("api_key", "k")])]);
    r.hits_addend = 5000;
    assert_invalid(
        c.should_rate_limit(r).await,
        "descriptors[0].hits_addend: 5000 exceeds the maximum cost of 1000",
    );
}

/// A message with CheckRequest's field numbers but wrong contents: `key`
/// (field 1, a string) carries bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct NotUtf8 {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

/// `key` sent as a varint: the wrong wire type for a string.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    key: u64,
}

async fn send_raw<M: prost::Message + Send + Sync + 'static>(
    d: &TestDaemon,
    m: M,
) -> tonic::Status {
    use tonic::codegen::http::uri::PathAndQuery;
    let mut grpc = tonic::client::Grpc::new(d.channel().await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<M, quotad::api::pb::CheckResponse>::default();
    let path = PathAndQuery::from_static("/quotad.v1.RateLimiter/Check");
    grpc.unary(tonic::Request::new(m), path, codec)
        .await
        .expect_err("malformed message refused")
}

#[tokio::test]
async fn a_malformed_message_on_a_stream_ends_it_with_invalid_argument() {
    use tonic::codegen::http::uri::PathAndQuery;
    let d = TestDaemon::start().await;
    let mut grpc = tonic::client::Grpc::new(d.channel().await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<NotUtf8, quotad::api::pb::CheckResponse>::default();
    let path = PathAndQuery::from_static("/quotad.v1.RateLimiter/CheckStream");
    let bad = NotUtf8 {
        key: vec![0xff, 0xfe],
    };
    let mut out = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(vec![bad])),
            path,
            codec,
        )
        .await
        .expect("stream opens")
        .into_inner();
    let status = out
        .next()
        .await
        .expect("an item")
        .expect_err("an error status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("malformed request: "),
        "{status:?}"
    );
    assert!(out.next().await.is_none());
}

#[tokio::test]
async fn malformed_messages_get_invalid_argument_and_the_server_keeps_serving() {
    let d = TestDaemon::start().await;
    let s = send_raw(
        &d,
        NotUtf8 {
            key: vec![0xff, 0xfe, 0x00],
        },
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().starts_with("malformed request: "), "{s:?}");
    let s = send_raw(&d, WrongWireType { key: 7 }).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let mut c = RateLimiterClient::new(d.channel().await);
    assert!(c.check(req("k", 1)).await.unwrap().into_inner().allowed);
}
