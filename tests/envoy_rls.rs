//! Envoy RLS v3 through Envoy's own generated client (envoy-types).

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

use crate::support::TestDaemon;
use crate::support::rls::{descriptor, request};

async fn ask(c: &mut RateLimitServiceClient<Channel>, r: RateLimitRequest) -> RateLimitResponse {
    c.should_rate_limit(r).await.expect("rls ok").into_inner()
}

fn reset_secs(s: &DescriptorStatus) -> (i64, i32) {
    let d = s.duration_until_reset.expect("duration_until_reset");
    (d.seconds, d.nanos)
}

#[tokio::test]
async fn ok_until_the_configured_limit_then_over_limit() {
    let d = TestDaemon::start().await;
    let mut c = RateLimitServiceClient::new(d.channel().await);
    // tiny: 2 per minute, burst 2.
    for remaining in [1u32, 0] {
        let r = ask(
            &mut c,
            request("edge", vec![descriptor(&[("api_key", "tiny-key")])], 0),
        )
        .await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::Ok as i32);
        assert_eq!(s.limit_remaining, remaining);
        let limit = s.current_limit.as_ref().expect("current_limit");
        assert_eq!(limit.requests_per_unit, 2);
        assert_eq!(limit.unit, Unit::Minute as i32);
        assert_eq!(limit.name, "tiny/per-minute");
    }
    let r = ask(
        &mut c,
        request("edge", vec![descriptor(&[("api_key", "tiny-key")])], 0),
    )
    .await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // Two tokens spent at 30 s each: full again in 60 s.
    assert_eq!(reset_secs(&r.statuses[0]), (60, 0));
    // 30 s later one token is back.
    d.advance_ms(30_000);
    let r = ask(
        &mut c,
        request("edge", vec![descriptor(&[("api_key", "tiny-key")])], 0),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);
}

#[tokio::test]
async fn hits_addend_is_the_cost_and_descriptor_level_overrides() {
    let d = TestDaemon::start().await;
    let mut c = RateLimitServiceClient::new(d.channel().await);
    let r = ask(
        &mut c,
        request("edge", vec![descriptor(&[("api_key", "alice")])], 15),
    )
    .await;
    assert_eq!(r.statuses[0].limit_remaining, 5);
    // Descriptor-level hits_addend wins over the request's.
    let mut desc = descriptor(&[("api_key", "alice")]);
    desc.hits_addend = Some(UInt64Value { value: 5 });
    let r = ask(&mut c, request("edge", vec![desc.clone()], 15)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // hits_addend 0 on the descriptor checks without consuming.
    desc.hits_addend = Some(UInt64Value { value: 0 });
    let r = ask(&mut c, request("edge", vec![desc.clone()], 0)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // is_negative_hits gives units back.
    desc.hits_addend = Some(UInt64Value { value: 3 });
    desc.is_negative_hits = true;
    let r = ask(&mut c, request("edge", vec![desc], 0)).await;
    assert_eq!(r.statuses[0].limit_remaining, 3);
}

#[tokio::test]
async fn overall_code_is_over_limit_if_any_descriptor_is() {
    let d = TestDaemon::start().await;
    let mut c = RateLimitServiceClient::new(d.channel().await);
    let r = ask(
        &mut c,
        request("edge", vec![descriptor(&[("api_key", "tiny-key")])], 2),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    let r = ask(
        &mut c,
        request(
            "edge",
            vec![
                descriptor(&[("api_key", "gold-key")]),
                descriptor(&[("api_key", "tiny-key")]),
                descriptor(&[("path", "/no/key/here")]),
            ],
            1,
        ),
    )
    .await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let codes: Vec<i32> = r.statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        codes,
        vec![Code::Ok as i32, Code::OverLimit as i32, Code::Ok as i32]
    );
    // gold: 1000/s, burst 2000, 1999 left: Envoy's `limit_remaining` is
    // at most its `current_limit` (1000 a second).
    assert_eq!(r.statuses[0].limit_remaining, 1000);
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit),
        Some(1000)
    );
    // A descriptor without the key entry has no limit.
    assert!(r.statuses[2].current_limit.is_none());
}

#[tokio::test]
async fn unknown_domain_is_ok() {
    let d = TestDaemon::start().await;
    let mut c = RateLimitServiceClient::new(d.channel().await);
    for _ in 0..5 {
        let r = ask(
            &mut c,
            request("other", vec![descriptor(&[("api_key", "tiny-key")])], 1),
        )
        .await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 1);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
    }
    // Nothing was charged: tiny-key still has its whole burst on "edge".
    let r = ask(
        &mut c,
        request("edge", vec![descriptor(&[("api_key", "tiny-key")])], 1),
    )
    .await;
    assert_eq!(r.statuses[0].limit_remaining, 1);
}

#[tokio::test]
async fn native_and_rls_share_one_bucket_per_key() {
    use quotad::api::pb::CheckRequest;
    use quotad::api::pb::rate_limiter_client::RateLimiterClient as Native;
    let d = TestDaemon::start().await;
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let mut native = Native::new(d.channel().await);
    let r = ask(
        &mut rls,
        request("edge", vec![descriptor(&[("api_key", "shared")])], 10),
    )
    .await;
    assert_eq!(r.statuses[0].limit_remaining, 10);
    let n = native
        .check(CheckRequest {
            key: "shared".into(),
            cost: 10,
            id: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(n.allowed);
    assert_eq!(n.remaining, 0);
    let r = ask(
        &mut rls,
        request("edge", vec![descriptor(&[("api_key", "shared")])], 1),
    )
    .await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
}

#[tokio::test]
async fn descriptors_with_more_entries_get_their_own_buckets_under_the_key_plan() {
    let d = TestDaemon::start().await;
    let mut c = RateLimitServiceClient::new(d.channel().await);
    // tiny: 2 per minute. The key alone, and the key on two paths: three
    // separate buckets, each with tiny's limit.
    let key_only = || descriptor(&[("api_key", "tiny-key")]);
    let on_a = || descriptor(&[("api_key", "tiny-key"), ("path", "/a")]);
    let on_b = || descriptor(&[("path", "/b"), ("api_key", "tiny-key")]);
    let r = ask(&mut c, request("edge", vec![key_only(), on_a(), on_b()], 2)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    for s in &r.statuses {
        assert_eq!(s.limit_remaining, 0);
        assert_eq!(s.current_limit.as_ref().unwrap().name, "tiny/per-minute");
    }
    // Each is now empty on its own...
    for desc in [key_only(), on_a(), on_b()] {
        let r = ask(&mut c, request("edge", vec![desc], 1)).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32);
    }
    // ... while a new path starts full.
    let r = ask(
        &mut c,
        request(
            "edge",
            vec![descriptor(&[("api_key", "tiny-key"), ("path", "/c")])],
            1,
        ),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 1);
}

#[tokio::test]
async fn an_operators_block_wins_over_a_limit_the_request_brings() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
    use quotad::api::pb::set_override_request::Target;

    let d = TestDaemon::with_config(&format!(
        "{}{}",
        crate::support::CONFIG,
        crate::support::admin_section("")
    ))
    .await;
    d.ops()
        .await
        .set_override(crate::support::override_of("mallory", Target::Block(true)))
        .await
        .expect("blocked");
    let mut c = RateLimitServiceClient::new(d.channel().await);
    let generous = |key: &str| {
        let mut desc = descriptor(&[("api_key", key)]);
        desc.limit = Some(RateLimitOverride {
            requests_per_unit: 1_000,
            unit: Unit::Second as i32,
        });
        request("edge", vec![desc], 1)
    };
    // With or without a limit of its own, a blocked key is over limit.
    for r in [
        generous("mallory"),
        request("edge", vec![descriptor(&[("api_key", "mallory")])], 1),
    ] {
        let answer = ask(&mut c, r).await;
        assert_eq!(answer.overall_code, Code::OverLimit as i32, "{answer:?}");
        assert_eq!(answer.statuses[0].limit_remaining, 0);
    }
    // Another key's override is honoured.
    let answer = ask(&mut c, generous("alice")).await;
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(answer.statuses[0].limit_remaining, 999);
}

/// A config with no plans, only an envoyproxy/ratelimit limits file:
/// Envoy's domains are served; calls about API keys (native gRPC, the
/// HTTP door, leases) get FAILED_PRECONDITION saying why, never an
/// answer from a plan that does not exist.
#[tokio::test]
async fn a_config_without_plans_serves_its_limits_files_and_refuses_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::support::write_file(
        dir.path(),
        "shop.yaml",
        "domain: shop\ndescriptors:\n  - key: path\n    rate_limit: { unit: minute, requests_per_unit: 2 }\n",
    );
    let config = crate::support::write_file(
        dir.path(),
        "quotad.yaml",
        &format!(
            "rls_files: [shop.yaml]\nserver:\n  http_check: {{ addr: 127.0.0.1:0 }}\n{}",
            crate::support::admin_section("")
        ),
    );
    let d = TestDaemon::from_file(&config).await;

    let mut c = RateLimitServiceClient::new(d.channel().await);
    let shop = || request("shop", vec![descriptor(&[("path", "/cart")])], 0);
    for remaining in [1u32, 0] {
        let r = ask(&mut c, shop()).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses[0].limit_remaining, remaining);
    }
    assert_eq!(
        ask(&mut c, shop()).await.overall_code,
        Code::OverLimit as i32
    );
    // No plan domain: `quotad` (the default one) is a domain like any
    // other quotad does not limit.
    let r = ask(
        &mut c,
        request("quotad", vec![descriptor(&[("api_key", "k")])], 0),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);

    let e = d
        .try_check("k", 1)
        .await
        .expect_err("no plans to check a key against");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("defines no plans"), "{e:?}");
    let mut native =
        quotad::api::pb::rate_limiter_client::RateLimiterClient::new(d.channel().await);
    let e = native
        .acquire(quotad::api::pb::AcquireRequest {
            key: "k".into(),
            cost: 1,
            ..Default::default()
        })
        .await
        .expect_err("no plans to lease from");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    let door = d.http_check_addr.expect("the door is on");
    let a = crate::support::http_request(
        door,
        "POST",
        "/v1/check",
        &[("content-type", "application/json")],
        Some(br#"{"key":"k","cost":"1"}"#),
    )
    .await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.json()["code"], "FAILED_PRECONDITION");
    let a =
        crate::support::http_request(door, "GET", "/v1/auth", &[("x-api-key", "k")], None).await;
    assert_eq!(a.status, 503, "{a:?}");

    // The admin API: a key's usage has no plan to be read against.
    let mut admin = d.admin(Some(crate::support::OPS_TOKEN)).await;
    let e = admin
        .get_usage(quotad::api::pb::KeyRef {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .expect_err("no plans");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
}
