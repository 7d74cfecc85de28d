//! Hostile callers: oversized and deeply nested messages, huge keys and
//! values, floods of descriptors and headers, streams that never read
//! their answers, and connections opened only to sit idle. Each gets a
//! clear status or a bounded drop, and everyone else is still served.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{CheckBatchRequest, CheckRequest};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;

use crate::support::rls::{descriptor, request};
use crate::support::{CONFIG, TestDaemon};

fn req(key: &str, cost: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        cost,
        id: 0,
        ..Default::default()
    }
}

/// [`CONFIG`] with more lines in its (last) `server` section.
fn with_server(lines: &str) -> String {
    format!("{CONFIG}{lines}")
}

/// The value of the sample of `name` with all of `labels` on `/metrics`
/// (0 when absent).
async fn metric(d: &TestDaemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = d.http_get("/metrics").await;
    body.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{')?.split_once("} "))
        .find(|(set, _)| {
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `cond` every 20 ms until it holds, for at most `secs`.
async fn eventually<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let poll = async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), poll)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

/// The status `answer` was refused with, which must have `code`.
#[track_caller]
fn refused<T: std::fmt::Debug>(answer: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    let s = answer.expect_err("refused");
    assert_eq!(s.code(), code, "{s:?}");
    s
}

/// Whether one check of `key` on `c`'s connection is served and allowed.
async fn allowed(c: &mut RateLimiterClient<tonic::transport::Channel>, key: &str) -> bool {
    c.check(req(key, 1))
        .await
        .expect("served")
        .into_inner()
        .allowed
}

/// A key `len` bytes long.
fn key_of(len: usize) -> String {
    "k".repeat(len)
}

#[tokio::test]
async fn an_oversized_message_is_refused_from_its_length_and_the_connection_serves_on() {
    let d = TestDaemon::with_config(&with_server("  max_message_bytes: 4096\n")).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // Just under the cap: decoded, then refused for what it says.
    let s = refused(c.check(req(&key_of(4000), 1)).await, Code::InvalidArgument);
    assert_eq!(
        s.message(),
        "key: 4000 bytes exceeds the maximum of 64 bytes"
    );
    // Over it: refused from the length prefix, naming both sizes.
    for len in [5000, 8 << 20] {
        let s = refused(c.check(req(&key_of(len), 1)).await, Code::OutOfRange);
        assert!(
            s.message().contains("the limit is: 4096 bytes"),
            "{}",
            s.message()
        );
    }
    let batch = CheckBatchRequest {
        checks: (0..1000).map(|i| req(&format!("key-{i}"), 1)).collect(),
    };
    refused(c.check_batch(batch).await, Code::OutOfRange);
    // The same connection still answers.
    assert!(allowed(&mut c, "k").await);
    // Envoy's API has the same cap.
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let huge = descriptor(&[("api_key", "k"), ("path", &key_of(10_000))]);
    refused(
        rls.should_rate_limit(request("edge", vec![huge], 1)).await,
        Code::OutOfRange,
    );
}

#[tokio::test]
async fn floods_of_items_and_extreme_numbers_get_invalid_argument() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // Far more batch items than allowed, within the message cap.
    let batch = CheckBatchRequest {
        checks: (0..20_000).map(|_| req("k", 1)).collect(),
    };
    let s = refused(c.check_batch(batch).await, Code::InvalidArgument);
    assert_eq!(s.message(), "checks: 20000 items exceed the maximum of 10");
    // Thousands of descriptors, and thousands of entries in one.
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let many = (0..5000).map(|_| descriptor(&[("api_key", "k")])).collect();
    let s = refused(
        rls.should_rate_limit(request("edge", many, 1)).await,
        Code::InvalidArgument,
    );
    assert_eq!(
        s.message(),
        "descriptors: 5000 items exceed the maximum of 4"
    );
    let entries: Vec<(String, String)> = (0..5000).map(|i| (format!("e{i}"), "v".into())).collect();
    let entries: Vec<(&str, &str)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let s = refused(
        rls.should_rate_limit(request("edge", vec![descriptor(&entries)], 1))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        s.message(),
        "descriptors[0].entries: 5000 items exceed the maximum of 4"
    );
    // The request-wide hits_addend at its largest.
    refused(
        rls.should_rate_limit(request(
            "edge",
            vec![descriptor(&[("api_key", "k")])],
            u32::MAX,
        ))
        .await,
        Code::InvalidArgument,
    );
    // An id of u64::MAX is the caller's to choose and comes back as sent.
    let mut one = req("k", 1);
    one.id = u64::MAX;
    let r = c.check(one).await.expect("answered").into_inner();
    assert_eq!(r.id, u64::MAX);
    assert!(r.allowed);
    // Nothing refused above was charged: one unit of the burst of 20 gone.
    assert_eq!(r.remaining, 19);
}

/// A message of deeply nested unknown groups (field 15, start-group /
/// end-group): prost stops at its recursion limit instead of the stack.
fn nested_groups(depth: usize) -> Vec<u8> {
    let start = 15 << 3 | 3;
    let end = 15 << 3 | 4;
    let mut out = vec![start; depth];
    out.extend(std::iter::repeat_n(end, depth));
    out
}

/// Sends `body` as one raw gRPC message to `path`; the answer's bytes or
/// the status.
async fn call_bytes(
    d: &TestDaemon,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(d.channel().await);
    grpc.ready().await.expect("ready");
    let answer = grpc
        .unary(
            tonic::Request::new(body),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await?;
    Ok(answer.into_inner())
}

/// Sends `body` as one raw gRPC message to `path`; the status it got.
async fn send_bytes(d: &TestDaemon, path: &'static str, body: Vec<u8>) -> tonic::Status {
    call_bytes(d, path, body).await.expect_err("refused")
}

#[tokio::test]
async fn deep_nesting_and_invalid_utf8_get_invalid_argument_on_both_apis() {
    let d = TestDaemon::start().await;
    const CHECK: &str = "/quotad.v1.RateLimiter/Check";
    const RLS: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    for path in [CHECK, RLS] {
        let s = send_bytes(&d, path, nested_groups(100_000)).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{path}: {s:?}");
        assert!(s.message().starts_with("malformed request: "), "{s:?}");
    }
    // Envoy's request with a domain (field 1) that is not UTF-8.
    let bad_domain = vec![0x0a, 0x02, 0xff, 0xfe];
    let s = send_bytes(&d, RLS, bad_domain).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().starts_with("malformed request: "), "{s:?}");
    // A truncated message: a length that runs past the end.
    let s = send_bytes(&d, RLS, vec![0x0a, 0x7f, b'x']).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    // Still serving.
    assert!(d.check("k", 1).await.allowed);
}

#[tokio::test]
async fn a_method_the_rls_service_has_not_is_unimplemented() {
    let d = TestDaemon::start().await;
    let s = send_bytes(
        &d,
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldNotRateLimit",
        Vec::new(),
    )
    .await;
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    // The method the service has answers, from the same daemon.
    let request =
        prost::Message::encode_to_vec(&request("edge", vec![descriptor(&[("api_key", "k")])], 1));
    let answer = call_bytes(
        &d,
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        request,
    )
    .await
    .expect("answered");
    // overall_code: OK (field 1, varint 1).
    assert_eq!(answer.get(..2), Some(&[0x08, 0x01][..]), "{answer:?}");
}

/// Sends and decodes raw bytes.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test]
async fn a_header_flood_is_refused_before_the_call_and_others_are_served() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let mut big = tonic::Request::new(req("k", 1));
    big.metadata_mut().insert(
        "x-padding",
        key_of(64 * 1024).parse().expect("ascii metadata"),
    );
    refused(c.check(big).await, Code::ResourceExhausted);
    // Nothing was charged and a new connection is served.
    assert_eq!(d.check("k", 1).await.remaining, 19);
}

#[tokio::test]
async fn a_stream_that_never_reads_its_answers_is_held_back_and_others_are_served() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // Offers up to a million checks, counting those the client took.
    let offered = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&offered);
    let checks = tokio_stream::iter(0..1_000_000u64).map(move |i| {
        counter.fetch_add(1, Ordering::Relaxed);
        CheckRequest {
            key: "open-key".into(),
            cost: 1,
            id: i,
            ..Default::default()
        }
    });
    // The answers are never read.
    let answers = c.check_stream(checks).await.expect("stream opens");
    let answered = || {
        metric(
            &d,
            "quotad_checks_total",
            &[("api", "stream"), ("plan", "open"), ("result", "allowed")],
        )
    };
    // The server answers until HTTP/2 flow control stops it, then stops
    // reading: the count levels off far below what was offered.
    eventually("the stream was answered at all", 10, || async {
        answered().await > 0.0
    })
    .await;
    let mut last = answered().await;
    let mut level = 0;
    let levelled = async {
        while level < 5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = answered().await;
            level = if now == last { level + 1 } else { 0 };
            last = now;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), levelled)
        .await
        .expect("answers level off while nobody reads them");
    // What levels it off is the caller's own receive window: hyper's
    // client takes 2 MiB per stream, about 140 000 of these ~15-byte
    // answers (measured: 144 329 answered, 188 288 requests taken). The
    // server holds no queue of its own; a million offered would all be
    // answered if it did.
    let taken = offered.load(Ordering::Relaxed);
    assert!(
        last < 200_000.0,
        "{last} answers buffered for a stalled reader"
    );
    assert!(
        taken < 300_000,
        "{taken} requests taken from a stalled writer"
    );
    // Meanwhile, others are answered at once. (Not on the stalled
    // stream's own connection: its unread answers hold the connection's
    // HTTP/2 window on the client side, which is the caller's to manage.)
    for key in ["k", "gold-key"] {
        let answer = tokio::time::timeout(Duration::from_secs(5), d.check(key, 1));
        assert!(answer.await.expect("answered at once").allowed);
    }
    // Reading again resumes the stream where it stopped.
    let mut answers = answers.into_inner();
    let first = answers.next().await.expect("an answer").expect("ok");
    assert_eq!(first.id, 0);
    drop(answers);
}

/// Whether the server closed `tcp` (end of file) within `secs`.
async fn closed_within(tcp: &mut TcpStream, secs: u64) -> bool {
    let mut buf = [0u8; 256];
    let read_to_end = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // The server's HTTP/2 settings; keep reading.
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read_to_end)
        .await
        .is_ok()
}

/// A `CheckStream` on `d` kept open (and quiet): its sender and answers.
async fn open_stream(
    d: &TestDaemon,
) -> (
    tokio::sync::mpsc::Sender<CheckRequest>,
    tonic::Streaming<quotad::api::pb::CheckResponse>,
) {
    let mut c = RateLimiterClient::new(d.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel::<CheckRequest>(4);
    let answers = c
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    (tx, answers)
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept() {
    // No idle timeout within the test: the cap alone decides (with one,
    // a slow machine could see idle connections closed, and room made,
    // before the one over the cap arrives).
    let d =
        TestDaemon::with_config(&with_server("  max_connections: 6\n  idle_timeout: 1h\n")).await;
    let (_tx, _answers) = open_stream(&d).await;
    // Five connections that never say anything fill the cap.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(d.grpc_addr).await.expect("connect"));
    }
    eventually("6 connections open", 10, || async {
        metric(&d, "quotad_connections_open", &[("listener", "grpc")]).await == 6.0
    })
    .await;
    // One more is closed as soon as it is accepted, and counted.
    let mut over = TcpStream::connect(d.grpc_addr).await.expect("connect");
    assert!(closed_within(&mut over, 10).await, "over the cap: closed");
    assert_eq!(
        metric(
            &d,
            "quotad_connections_refused_total",
            &[("listener", "grpc")]
        )
        .await,
        1.0
    );
    // Room is free again for new callers once they go.
    drop(idle);
    eventually("the idle connections gone", 10, || async {
        metric(&d, "quotad_connections_open", &[("listener", "grpc")]).await == 1.0
    })
    .await;
    assert!(d.check("k", 1).await.allowed);
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_stay() {
    let d = TestDaemon::with_config(&with_server("  idle_timeout: 1s\n")).await;
    // A stream that keeps talking: a message every 200 ms, each answered.
    let (tx, mut answers) = open_stream(&d).await;
    let talking = tokio::spawn(async move {
        for id in 0.. {
            if tx.send(req_id("k", id)).await.is_err() {
                return id;
            }
            match answers.next().await {
                Some(Ok(r)) if r.id == id => {}
                _ => return id,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        0
    });
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(d.grpc_addr).await.expect("connect"));
    }
    // The idle ones are closed after the idle timeout.
    for tcp in &mut idle {
        assert!(closed_within(tcp, 10).await, "idle connection closed");
    }
    assert!(
        metric(
            &d,
            "quotad_connections_idle_closed_total",
            &[("listener", "grpc")]
        )
        .await
            >= 5.0
    );
    // The talking stream's connection stayed throughout.
    assert!(!talking.is_finished(), "the talking stream was ended");
    talking.abort();
}

fn req_id(key: &str, id: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        cost: 1,
        id,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_and_a_live_one_stays() {
    use tokio::io::AsyncWriteExt;
    // A live client has 3 s to answer a ping: room for a loaded machine
    // (it answers in microseconds); the mute peer goes after about 4 s.
    let d = TestDaemon::with_config(&with_server(
        "  keepalive_interval: 1s\n  keepalive_timeout: 3s\n  idle_timeout: 1h\n",
    ))
    .await;
    // A live client: its HTTP/2 stack answers the pings.
    let mut live = RateLimiterClient::new(d.channel().await);
    assert!(allowed(&mut live, "k").await);
    // A peer that opens HTTP/2 (preface and empty SETTINGS) and then only
    // listens: it never acknowledges a ping.
    let mut mute = TcpStream::connect(d.grpc_addr).await.expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
    mute.write_all(&hello).await.expect("preface sent");
    assert!(
        closed_within(&mut mute, 20).await,
        "a peer that does not answer pings is dropped"
    );
    // The live client's connection is still the one open.
    let open = || metric(&d, "quotad_connections_open", &[("listener", "grpc")]);
    eventually("only the live connection open", 5, || async {
        open().await == 1.0
    })
    .await;
    assert!(allowed(&mut live, "k").await);
    assert_eq!(open().await, 1.0, "no reconnect was needed");
}

#[tokio::test]
async fn the_http_listener_caps_its_connections_and_new_ones_push_out_the_longest_waiting() {
    let d = TestDaemon::start().await;
    // Connections that never send a request fill the HTTP listener's cap.
    let mut idle = Vec::new();
    for _ in 0..quotad::net::http::HTTP_MAX_CONNECTIONS {
        idle.push(TcpStream::connect(d.http_addr).await.expect("connect"));
    }
    eventually("the cap filled", 5, || async {
        metric(&d, "quotad_connections_open", &[("listener", "http")]).await
            >= quotad::net::http::HTTP_MAX_CONNECTIONS as f64
    })
    .await;
    // A probe still gets in: it pushes out the connection that waited
    // longest for a request, which is closed and counted.
    assert_eq!(d.http_get("/readyz").await.0, 200);
    assert!(
        closed_within(&mut idle[0], 5).await,
        "the oldest was pushed out"
    );
    assert!(
        metric(
            &d,
            "quotad_connections_refused_total",
            &[("listener", "http")]
        )
        .await
            >= 1.0
    );
    // gRPC is not affected.
    assert!(d.check("k", 1).await.allowed);
}
