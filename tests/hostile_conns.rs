//! Hostile connections: request bodies sent all but their last byte, on
//! one connection and on a hundred (the real binary, its memory read from
//! `/proc`); calls that never finish and streams that never speak holding
//! connection slots; HTTP clients trickling headers to keep probes out.
//! Each is bounded by configuration, and everyone else is served meanwhile.

use std::time::Duration;

use bytes::Bytes;
use quotad::api::pb::CheckRequest;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::support::process::spawn_serve;
use crate::support::{CONFIG, TestDaemon, write_file};

/// A raw HTTP/2 connection, for calls no gRPC client would make.
struct RawH2 {
    send: h2::client::SendRequest<Bytes>,
}

/// A call under way: the task waiting for its answer's `grpc-status`,
/// and its request side (kept, so the call stays open).
struct Call {
    status: tokio::task::JoinHandle<Option<u32>>,
    _request: h2::SendStream<Bytes>,
}

impl RawH2 {
    async fn connect(addr: &str) -> RawH2 {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        RawH2 { send }
    }

    /// Starts a call to `path` and sends `body`, not ending it.
    async fn start(&mut self, path: &str, body: Bytes) -> Call {
        let mut send = self.send.clone().ready().await.expect("a stream slot");
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a request");
        let (answer, mut stream) = send.send_request(request, false).expect("the call starts");
        if !body.is_empty() {
            stream.send_data(body, false).expect("data queued");
        }
        let status = tokio::spawn(async move {
            let r = answer.await.ok()?;
            r.headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse().ok())
        });
        Call {
            status,
            _request: stream,
        }
    }
}

/// A gRPC message declaring `len` bytes of payload, sent but for its last
/// byte (the payload is not a valid message: it never gets read whole).
fn all_but_the_last_byte(len: usize) -> Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.resize(5 + len - 1, 0x55);
    Bytes::from(m)
}

/// Checks on a connection of their own every 50 ms while `during` runs;
/// each must be answered within a second. Returns `during`'s output and how
/// many checks were answered.
async fn served_meanwhile<T>(grpc: &str, during: impl std::future::Future<Output = T>) -> (T, u32) {
    let channel = Endpoint::from_shared(format!("http://{grpc}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = RateLimiterClient::new(channel);
    let checks = async {
        let mut n = 0;
        loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                client.check(CheckRequest {
                    key: format!("legit-{n}"),
                    cost: 1,
                    id: 0,
                    ..Default::default()
                }),
            )
            .await;
            assert!(
                answer.expect("answered within a second").is_ok(),
                "legitimate check {n} refused"
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let out = {
        tokio::pin!(checks);
        tokio::select! {
            out = during => out,
            never = &mut checks => never,
        }
    };
    // At least one more after it.
    let mut answered = 0;
    for _ in 0..3 {
        if client
            .check(CheckRequest {
                key: "after".into(),
                cost: 1,
                id: 0,
                ..Default::default()
            })
            .await
            .is_ok()
        {
            answered += 1;
        }
    }
    (out, answered)
}

/// Starts `calls` calls on `conn`, each declaring a 1 MiB message and
/// sending all but its last byte.
async fn partial_calls(conn: &mut RawH2, calls: usize) -> Vec<Call> {
    let body = all_but_the_last_byte(1 << 20);
    let mut started = Vec::new();
    for _ in 0..calls {
        started.push(
            conn.start("/quotad.v1.RateLimiter/Check", body.clone())
                .await,
        );
    }
    started
}

/// Of `calls`: how many were refused with RESOURCE_EXHAUSTED and how many
/// are still held (no answer), once at least `answered` have their answer
/// (polled, for at most 20 s) and half a second more has passed.
async fn tally(calls: &[Call], answered: usize) -> (usize, usize) {
    let finished = || calls.iter().filter(|c| c.status.is_finished()).count();
    let poll = async {
        while finished() < answered {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .unwrap_or_else(|_| panic!("only {} of {answered} calls answered", finished()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = finished();
    (refused, calls.len() - refused)
}

/// The statuses of the finished calls of `calls`.
async fn statuses(calls: Vec<Call>) -> Vec<Option<u32>> {
    let mut out = Vec::new();
    for c in calls {
        if c.status.is_finished() {
            out.push(c.status.await.expect("the answer task"));
        }
    }
    out
}

/// A config file for the real binary: the demo plans, and `server` lines.
fn config_file(dir: &std::path::Path, server: &str) -> String {
    let yaml = format!(
        "default_plan: free\nplans:\n  free:\n    limits:\n      - {{ name: per-second, rate: 100000, per: second }}\nserver:\n{server}"
    );
    write_file(dir, "quotad.yaml", &yaml).display().to_string()
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_bodies_on_one_connection_and_on_a_hundred_stay_within_the_budgets() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults, but for a body deadline longer than the test.
    let config = config_file(dir.path(), "  request_body_timeout: 60s\n");
    let d = spawn_serve(&["--config", &config]).await;
    let before = d.rss();

    // One connection, 400 calls each sending all but the last byte of a
    // 1 MiB message: the connection's 2 MiB holds one, the rest are
    // refused from their prefix, unread. Others are served throughout.
    let mut one = RawH2::connect(&d.grpc).await;
    let (calls, answered) = served_meanwhile(&d.grpc, async {
        let calls = partial_calls(&mut one, 400).await;
        let (refused, held) = tally(&calls, 399).await;
        assert_eq!((refused, held), (399, 1), "one held, the rest refused");
        calls
    })
    .await;
    assert_eq!(answered, 3);
    assert!(statuses(calls).await.iter().all(|s| *s == Some(8)));
    let one_conn = d.rss().saturating_sub(before);
    assert!(
        one_conn < 32 * MIB,
        "one connection took {} MiB",
        one_conn / MIB
    );

    // A hundred connections, four such calls each: the process's 64 MiB
    // holds at most 64 messages of 1 MiB in all.
    let mut conns = Vec::new();
    for _ in 0..100 {
        conns.push(RawH2::connect(&d.grpc).await);
    }
    let (calls, answered) = served_meanwhile(&d.grpc, async {
        let mut calls = Vec::new();
        for conn in &mut conns {
            calls.extend(partial_calls(conn, 4).await);
        }
        let (refused, held) = tally(&calls, 400 - 64).await;
        assert!(held <= 64, "{held} calls held past the process's budget");
        assert_eq!(refused + held, 400);
        calls
    })
    .await;
    assert_eq!(answered, 3);
    // The documented bound (docs/src/configuration.md, "Hostile callers"): the process's
    // budget plus, per connection, its receive window, unsent answers and
    // its own buffers; 32 MiB more for the allocator's slack.
    let bound = 64 * MIB + 101 * (128 + 128 + 64) * 1024 + 32 * MIB;
    let grown = d.rss().saturating_sub(before);
    assert!(
        grown < bound,
        "RSS grew {} MiB, over the bound of {} MiB",
        grown / MIB,
        bound / MIB
    );
    drop(calls);
}

/// A config with `server` lines added to the test config's.
fn with_server(lines: &str) -> String {
    format!("{CONFIG}{lines}")
}

/// Polls a check on a fresh connection until one is served, for at most
/// `secs`; how long it took.
async fn served_within(d: &TestDaemon, secs: u64) -> Duration {
    let started = tokio::time::Instant::now();
    let poll = async {
        loop {
            let attempt = async {
                let channel = Endpoint::from_shared(format!("http://{}", d.grpc_addr))
                    .ok()?
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_millis(500))
                    .connect()
                    .await
                    .ok()?;
                RateLimiterClient::new(channel)
                    .check(CheckRequest {
                        key: "legit".into(),
                        cost: 1,
                        id: 0,
                        ..Default::default()
                    })
                    .await
                    .ok()
            };
            if attempt.await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), poll)
        .await
        .unwrap_or_else(|_| panic!("no check served within {secs} s"));
    started.elapsed()
}

/// `n` connections to `addr`, each with one call to `path` that sends its
/// headers and nothing more.
async fn silent_calls(addr: &str, path: &str, n: usize) -> Vec<(RawH2, Call)> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let mut conn = RawH2::connect(addr).await;
        let call = conn.start(path, Bytes::new()).await;
        calls.push((conn, call));
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_never_finish_and_silent_streams_give_their_connections_back() {
    let d = TestDaemon::with_config(&with_server(
        "  max_connections: 30\n  idle_timeout: 1s\n  request_body_timeout: 1s\n",
    ))
    .await;
    let addr = d.grpc_addr.to_string();
    // Every slot taken by a connection whose one call never sends its
    // message (headers only).
    let mut stalled = silent_calls(&addr, "/quotad.v1.RateLimiter/Check", 30).await;
    // The calls are failed after the body deadline (DEADLINE_EXCEEDED), their
    // connections then idle and closed, and a legitimate client gets in.
    served_within(&d, 10).await;
    for (_, call) in stalled.drain(..) {
        let status = tokio::time::timeout(Duration::from_secs(5), call.status)
            .await
            .expect("the stalled call was answered")
            .expect("the answer task");
        assert_eq!(status, Some(4), "DEADLINE_EXCEEDED");
    }

    // The same with streams that never send a message: not failed (a
    // stream may wait), but their connections are idle and closed.
    let quiet = silent_calls(&addr, "/quotad.v1.RateLimiter/CheckStream", 30).await;
    served_within(&d, 10).await;
    drop(quiet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_talking_keeps_its_connection() {
    let d = TestDaemon::with_config(&with_server("  idle_timeout: 1s\n")).await;
    let channel: Channel = d.channel().await;
    let mut c = RateLimiterClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<CheckRequest>(4);
    let mut answers = c
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    // A message every 300 ms for 3 s: three idle timeouts' worth.
    for id in 0..10 {
        tx.send(CheckRequest {
            key: "k".into(),
            cost: 1,
            id,
            ..Default::default()
        })
        .await
        .expect("stream open");
        let r = answers.message().await.expect("answer").expect("not ended");
        assert_eq!(r.id, id);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Silent for longer than the idle timeout: closed.
    let ended = tokio::time::timeout(Duration::from_secs(5), answers.message()).await;
    assert!(
        matches!(ended, Ok(Err(_)) | Ok(Ok(None))),
        "the silent stream's connection was closed: {ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_http_headers_cannot_keep_probes_and_scrapes_out() {
    let d = TestDaemon::start().await;
    let http = d.http_addr;
    // 300 connections (over the cap of 256) sending a request's headers a
    // byte every 300 ms, reconnecting when dropped, for 6 s.
    let trickle = async move {
        let mut conns = Vec::new();
        for _ in 0..300 {
            if let Ok(mut c) = TcpStream::connect(http).await {
                let _ = c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n").await;
                conns.push(c);
            }
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(6);
        while tokio::time::Instant::now() < until {
            for c in &mut conns {
                if c.write_all(b"X").await.is_err()
                    && let Ok(mut fresh) = TcpStream::connect(http).await
                {
                    let _ = fresh.write_all(b"GET /livez HTTP/1.1\r\n").await;
                    *c = fresh;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let probes = async {
        // Wait for the trickle to fill the cap, then probe for 5 s.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut answered = 0;
        for _ in 0..10 {
            for path in ["/livez", "/readyz", "/metrics"] {
                let (status, _) = tokio::time::timeout(Duration::from_secs(2), d.http_get(path))
                    .await
                    .unwrap_or_else(|_| panic!("{path} not answered within 2 s"));
                assert_eq!(status, 200, "{path}");
                answered += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        answered
    };
    let ((), answered) = tokio::join!(trickle, probes);
    assert_eq!(answered, 30);
    // Trickling connections were dropped: pushed out by newer ones or
    // past the header deadline. None was answered with a 200.
    let mut probe = TcpStream::connect(http).await.expect("connect");
    probe
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = probe.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_age_is_told_to_go_away_and_its_stream_finishes() {
    let d = TestDaemon::with_config(&with_server("  max_connection_age: 1s\n")).await;
    let open = "quotad_connections_open{listener=\"grpc\"}";
    let mut c = RateLimiterClient::new(d.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel::<CheckRequest>(4);
    let mut answers = c
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    let check = |id| CheckRequest {
        key: "aged".into(),
        cost: 1,
        id,
        ..Default::default()
    };
    tx.send(check(0)).await.expect("stream open");
    let first = answers.message().await.expect("answer").expect("not ended");
    assert_eq!(first.id, 0);
    assert_eq!(crate::support::metric(d.http_addr, open).await, 1.0);
    // Past the age the connection has been told to go away (GOAWAY); the
    // stream it carries goes on.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tx.send(check(1)).await.expect("stream open");
    let second = answers.message().await.expect("answer").expect("not ended");
    assert_eq!(second.id, 1);
    // Its last call over, the connection closes: well before the age plus
    // the 30 s grace, when one still running would be cut off.
    drop(tx);
    assert!(answers.message().await.expect("ends cleanly").is_none());
    crate::support::metric_reaches(d.http_addr, open, 0.0).await;
}
