//! Reports across nodes on a real redis-server: what two nodes report
//! sums exactly in Redis (sync mode, flushed exactly once like charges,
//! and strict mode, charged in Redis as they come), and a bucket driven
//! into debt on one node is in debt on the other.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::UInt64Value;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{CheckMode, CheckRequest, CheckResponse, ReportRequest, ReportResponse};
use quotad::core::ManualClock;
use tonic::transport::Channel;

use crate::support::{RedisServer, T0, TestDaemon};

/// `llm`: 600 tokens a minute and 100000 a day, synced; `paid`: a strict
/// 100 a day.
fn config(redis: &str) -> String {
    format!(
        r#"
default_plan: llm
plans:
  llm:
    limits:
      - {{ name: tokens, rate: 600, per: minute }}
      - {{ name: daily, quota: 100000, per: day }}
  paid:
    limits:
      - {{ name: daily, quota: 100, per: day, mode: strict }}
keys:
  "paid-key": {{ plan: paid }}
envoy:
  domains: [llm]
requests:
  max_cost: 100000
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
redis:
  url: {redis}
  sync_interval: 5ms
  strict_deadline: 1s
server:
  shutdown_grace: 5s
"#
    )
}

type Client = RateLimiterClient<Channel>;

async fn report(c: &mut Client, key: &str, cost: u64) -> ReportResponse {
    c.report(ReportRequest {
        key: key.into(),
        cost,
        id: 0,
    })
    .await
    .expect("report answered")
    .into_inner()
}

async fn peek(c: &mut Client, key: &str) -> CheckResponse {
    c.check(CheckRequest {
        key: key.into(),
        cost: 1,
        mode: CheckMode::Peek as i32,
        ..Default::default()
    })
    .await
    .expect("check answered")
    .into_inner()
}

/// Two nodes on one Redis and one manual clock, each with a client.
async fn two_nodes(redis: &RedisServer) -> [(TestDaemon, Client); 2] {
    let clock = Arc::new(ManualClock::new(T0));
    let yaml = config(&redis.url());
    let a = TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await;
    let b = TestDaemon::with_clock(&yaml, clock).await;
    let (ca, cb) = (
        RateLimiterClient::new(a.channel().await),
        RateLimiterClient::new(b.channel().await),
    );
    [(a, ca), (b, cb)]
}

#[tokio::test]
async fn reports_on_two_nodes_sum_exactly_and_the_debt_is_seen_everywhere() {
    let redis = RedisServer::start().await;
    let [(a, mut ca), (b, mut cb)] = two_nodes(&redis).await;
    // 3 × 100 on one node, 5 × 90 on the other: 750 tokens, 150 past the
    // bucket of 600.
    for _ in 0..3 {
        report(&mut ca, "team", 100).await;
    }
    for _ in 0..5 {
        report(&mut cb, "team", 90).await;
    }
    // A flushes, then B: B's flush returns the global state, both nodes'
    // reports. (A node learns the others' charges of a key when it
    // flushes its own: sync mode's stated accuracy.)
    a.wait_synced().await;
    b.wait_synced().await;
    // 150 tokens of debt and one more at 10 a second: 15.1 s.
    assert_in_debt(&peek(&mut cb, "team").await, 15_100);
    // A's next report (10 tokens) flushes and brings A the same state.
    report(&mut ca, "team", 10).await;
    a.wait_synced().await;
    assert_in_debt(&peek(&mut ca, "team").await, 16_100);
    // The daily quota counted every token exactly once: 760.
    let view = a.engine.view();
    let usage = view.usage(a.engine.hasher().key_hash(b"team"));
    let (_, v) = usage
        .limits
        .iter()
        .find(|(l, _)| l.name == "daily")
        .expect("daily quota");
    assert_eq!(v.remaining, 100_000 - 760);
}

/// `r` is a denial of the token bucket with `ms` to wait (Redis keeps
/// arrival times in µs: at most 1 ms more).
fn assert_in_debt(r: &CheckResponse, ms: u64) {
    assert!(!r.allowed, "in debt: {r:?}");
    assert_eq!((r.policy.as_str(), r.remaining), ("llm/tokens", 0));
    let wait = r.retry_after.expect("a wait");
    let wait = Duration::new(wait.seconds as u64, wait.nanos as u32);
    assert!(
        wait >= Duration::from_millis(ms) && wait <= Duration::from_millis(ms + 1),
        "{wait:?}, want {ms} ms"
    );
}

#[tokio::test]
async fn strict_reports_are_charged_in_redis_as_they_come() {
    let redis = RedisServer::start().await;
    let [(a, ca), (b, cb)] = two_nodes(&redis).await;
    // 2 nodes × 3 callers × 10 reports of 7 = 420 against a strict 100.
    let mut tasks = Vec::new();
    for c in [ca.clone(), cb.clone()] {
        for _ in 0..3 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    report(&mut c, "paid-key", 7).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("reporter");
    }
    // Every node is over at once, and the next report says by how much:
    // 420 + 1 − 100.
    for mut c in [ca.clone(), cb.clone()] {
        let r = peek(&mut c, "paid-key").await;
        assert!(!r.allowed);
        assert_eq!((r.policy.as_str(), r.remaining), ("paid/daily", 0));
    }
    let mut c = cb;
    let r = report(&mut c, "paid-key", 1).await;
    assert_eq!((r.remaining, r.debt), (0, 321), "{r:?}");
    // Envoy's request-time check (hits_addend 0) is decided in Redis too:
    // over the limit, on either node; a key with room is OK.
    for d in [&a, &b] {
        let mut rls = RateLimitServiceClient::new(d.channel().await);
        for (key, code) in [("paid-key", Code::OverLimit), ("other", Code::Ok)] {
            let r = rls
                .should_rate_limit(RateLimitRequest {
                    domain: "llm".into(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![Entry {
                            key: "api_key".into(),
                            value: key.into(),
                        }],
                        hits_addend: Some(UInt64Value { value: 0 }),
                        ..Default::default()
                    }],
                    hits_addend: 0,
                })
                .await
                .expect("answered")
                .into_inner();
            assert_eq!(r.overall_code, code as i32, "{key}: {r:?}");
        }
    }
}
