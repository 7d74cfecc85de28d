//! Redis `sync` mode against a real redis-server on a free port: several
//! daemons enforce one limit, quotas survive restarts, an outage changes
//! nothing for callers and loses nothing, shutdown flushes.
//!
//! Daemons run on a shared manual clock: the test moves time and waits for
//! every node to have flushed (`wait_synced`), so the numbers are exact
//! and no assertion depends on how fast the machine is.

use std::sync::Arc;

use quotad::api::pb::CheckRequest;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::core::ManualClock;
use quotad::sync::SyncState;
use tonic::transport::Channel;

use crate::support::{RedisServer, T0, TestDaemon, eval_script};

/// `free`: 100 per second, burst 10. Key `q-key`: 100 per day (so a
/// node's first check of it is decided in Redis, within a deadline a
/// loaded machine meets: these tests count exactly).
fn config(redis: &str, interval: &str) -> String {
    format!(
        r#"
default_plan: free
plans:
  free:
    limits:
      - {{ name: per-second, rate: 100, per: second, burst: 10 }}
  quota:
    limits:
      - {{ name: daily, quota: 100, per: day }}
keys:
  "q-key": {{ plan: quota }}
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
redis:
  url: {redis}
  sync_interval: {interval}
  strict_deadline: 1s
server:
  shutdown_grace: 5s
"#
    )
}

type Client = RateLimiterClient<Channel>;

/// Waits until `sync` is in state `want`, for at most 15 s (three times
/// the sync task's longest wait between attempts): a state never reached
/// fails the test instead of hanging it.
async fn reach(sync: &mut quotad::sync::SyncHandle, want: SyncState) {
    tokio::time::timeout(std::time::Duration::from_secs(15), sync.wait_for(want))
        .await
        .unwrap_or_else(|_| panic!("the sync state never became {want:?}"));
}

async fn client(d: &TestDaemon) -> Client {
    RateLimiterClient::new(d.channel().await)
}

/// (allowed, remaining) of one check.
async fn check(c: &mut Client, key: &str, cost: u64) -> (bool, u64) {
    let r = c
        .check(CheckRequest {
            key: key.into(),
            cost,
            id: 0,
            ..Default::default()
        })
        .await
        .expect("check answered")
        .into_inner();
    (r.allowed, r.remaining)
}

/// What a node that has not seen `key` yet reports once it has: its
/// first check decides on a fresh local counter, its flush adopts the
/// global count, and its second check (returned) shows it.
async fn after_first_flush(d: &TestDaemon, key: &str) -> (bool, u64) {
    let mut c = client(d).await;
    let _ = check(&mut c, key, 1).await;
    d.wait_synced().await;
    check(&mut c, key, 1).await
}

#[tokio::test]
async fn three_nodes_enforce_one_limit_within_the_stated_bound() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let yaml = config(&redis.url(), "5ms");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let d = TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await;
        let c = client(&d).await;
        nodes.push((d, c));
    }
    // 2 s of traffic in 20 ms steps, offered at 5× the limit and split
    // unevenly (6:3:1) across the nodes; after each step every node has
    // flushed, as it would every sync_interval (here 20 ms of clock).
    const STEPS: u64 = 100;
    const STEP_MS: u64 = 20;
    let split = [6, 3, 1];
    let mut admitted = 0u64;
    for _ in 0..STEPS {
        for ((_, c), n) in nodes.iter_mut().zip(split) {
            for _ in 0..n {
                admitted += u64::from(check(c, "shared", 1).await.0);
            }
        }
        for (d, _) in &nodes {
            d.wait_synced().await;
        }
        clock.advance(STEP_MS * 1_000_000);
    }
    eprintln!("three nodes admitted {admitted}");
    // One node alone would admit burst + rate·t = 10 + 100 × 2 = 210.
    // The stated bound, b + r·(t + n·interval) = 10 + 100 × (2 + 3 × 0.02)
    // = 216, is within the 5 % the issue allows (220.5).
    let single_node = 10 + 100 * STEPS * STEP_MS / 1_000;
    let bound = 10 + 100 * (STEPS * STEP_MS + 3 * STEP_MS) / 1_000;
    assert!(
        admitted <= bound,
        "admitted {admitted}, bound {bound} (one node alone: {single_node})"
    );
    assert!(
        admitted * 100 <= single_node * 105,
        "admitted {admitted} is more than 5 % over {single_node}"
    );
    // And the limit is not enforced by refusing everything.
    assert!(admitted >= single_node * 9 / 10, "admitted only {admitted}");
}

#[tokio::test]
async fn quotas_survive_a_restart_of_every_node() {
    let redis = RedisServer::start().await;
    let yaml = config(&redis.url(), "5ms");
    let a = TestDaemon::with_config(&yaml).await;
    let mut ca = client(&a).await;
    assert_eq!(check(&mut ca, "q-key", 60).await, (true, 40));
    a.wait_synced().await;
    a.stop().await.expect("clean stop");

    // A new node (a restart) on the same Redis: its first check decides
    // on a fresh local counter, its flush brings the global count.
    let b = TestDaemon::with_config(&yaml).await;
    assert_eq!(after_first_flush(&b, "q-key").await, (true, 38));
    // 38 left: 39 is refused, 38 fits.
    let mut cb = client(&b).await;
    assert!(!check(&mut cb, "q-key", 39).await.0);
    assert_eq!(check(&mut cb, "q-key", 38).await, (true, 0));
}

#[tokio::test]
async fn a_redis_outage_changes_nothing_for_callers_and_loses_nothing() {
    let mut redis = RedisServer::start().await;
    let yaml = config(&redis.url(), "5ms");
    let a = TestDaemon::with_config(&yaml).await;
    let mut ca = client(&a).await;
    let mut sync = a.sync.clone().expect("sync task");
    assert_eq!(check(&mut ca, "q-key", 10).await, (true, 90));
    a.wait_synced().await;
    reach(&mut sync, SyncState::Synced).await;

    redis.kill();
    // Callers see no difference: local decisions, exact as before.
    for left in [85, 80, 75, 70] {
        assert_eq!(check(&mut ca, "q-key", 5).await, (true, left));
    }
    reach(&mut sync, SyncState::Degraded).await;
    // Still ready (callers are served), and saying why it is degraded.
    let (status, body) = a.http_get("/readyz").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ready\nredis: degraded (deciding locally)\n"),
        "{body}"
    );

    // Redis comes back empty (no persistence): the 20 units counted during
    // the outage are sent; the 10 before it were lost with Redis's data.
    redis.restart().await;
    reach(&mut sync, SyncState::Synced).await;
    let body = a.http_get("/readyz").await.1;
    assert!(body.starts_with("ready\nredis: synced\n"), "{body}");
    a.wait_synced().await;
    let b = TestDaemon::with_config(&yaml).await;
    // 20 from the outage + 1 + 1 = 22 used.
    assert_eq!(after_first_flush(&b, "q-key").await, (true, 78));
}

#[tokio::test]
async fn shutdown_flushes_what_is_pending() {
    let redis = RedisServer::start().await;
    // An interval far longer than the test: only the final flush can
    // carry the charge to Redis.
    let yaml = config(&redis.url(), "1h");
    let a = TestDaemon::with_config(&yaml).await;
    let mut ca = client(&a).await;
    assert_eq!(check(&mut ca, "q-key", 25).await, (true, 75));
    a.stop().await.expect("clean stop");

    let fast = config(&redis.url(), "5ms");
    let b = TestDaemon::with_config(&fast).await;
    assert_eq!(after_first_flush(&b, "q-key").await, (true, 73));
}

#[tokio::test]
async fn shutdown_interrupts_a_round_redis_holds_up_and_sends_its_calls_once() {
    // Redis pauses writes for 1 s while a round is in flight; the node is
    // stopped meanwhile. The stop does not wait for that round: the final
    // flush sends its calls again, and once Redis serves, every charge is
    // counted exactly once, however the paused round and the final flush
    // met in Redis.
    let redis = RedisServer::start().await;
    let a = TestDaemon::with_config(&config(&redis.url(), "5ms")).await;
    let mut ca = client(&a).await;
    assert_eq!(check(&mut ca, "q-key", 3).await, (true, 97));
    a.wait_synced().await;
    assert_eq!(
        redis
            .command("CLIENT PAUSE 1000 WRITE")
            .await
            .expect("pause"),
        "+OK"
    );
    assert_eq!(check(&mut ca, "q-key", 4).await, (true, 93));
    // A round takes the 4 units to a Redis that holds them up.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    a.stop().await.expect("clean stop");
    let fast = config(&redis.url(), "5ms");
    let b = TestDaemon::with_config(&fast).await;
    assert_eq!(after_first_flush(&b, "q-key").await, (true, 91));
}

#[tokio::test]
async fn redis_keys_never_contain_the_api_key() {
    let redis = RedisServer::start().await;
    let a = TestDaemon::with_config(&config(&redis.url(), "5ms")).await;
    let mut ca = client(&a).await;
    let _ = check(&mut ca, "secret-key-123", 1).await;
    let _ = check(&mut ca, "q-key", 1).await;
    a.wait_synced().await;
    // The two cells (besides the flush calls' markers, named by keyed
    // hashes and the node's random id).
    let keys = redis.command("KEYS *}[bc]:*").await.expect("KEYS");
    // `*2` (two keys) then the names; a bulk reply is read line by line.
    assert!(keys.starts_with("*2"), "{keys}");
    let dump = redis.command("KEYS *secret*").await.expect("KEYS");
    assert_eq!(dump, "*0", "no key name holds the API key");
}

/// Key `paid-key`: plan `paid`, a local per-second rate and a strict
/// monthly quota of 50 (so the whole plan is decided in Redis), decided
/// within 1 s: a deadline a loaded machine meets with room to spare (the
/// first check connects and sends the script twice, NOSCRIPT then EVAL),
/// so that only Redis's failures, not a slow moment, reach the fail mode
/// (at 20 ms, one slow check could fail an exact count).
pub(crate) fn strict_config(redis: &str, on_error: &str) -> String {
    format!(
        r#"
default_plan: free
plans:
  free:
    limits:
      - {{ name: per-second, rate: 100, per: second, burst: 10 }}
  paid:
    limits:
      - {{ name: per-second, rate: 1000, per: second, burst: 1000 }}
      - {{ name: monthly, quota: 50, per: month, mode: strict }}
keys:
  "paid-key": {{ plan: paid }}
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
redis:
  url: {redis}
  sync_interval: 5ms
  strict_deadline: 1s
  on_redis_error: {on_error}
envoy:
  domains: [edge]
server:
  shutdown_grace: 5s
"#
    )
}

#[tokio::test]
async fn strict_limits_are_exact_across_nodes_under_concurrency() {
    let redis = RedisServer::start().await;
    let yaml = strict_config(&redis.url(), "deny");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestDaemon::with_config(&yaml).await);
    }
    // 3 nodes × 4 concurrent callers × 10 checks = 120 attempts at a
    // quota of 50: exactly 50 pass, whatever the interleaving.
    let mut tasks = Vec::new();
    for d in &nodes {
        for _ in 0..4 {
            let mut c = client(d).await;
            tasks.push(tokio::spawn(async move {
                let mut passed = 0u64;
                for _ in 0..10 {
                    passed += u64::from(check(&mut c, "paid-key", 1).await.0);
                }
                passed
            }));
        }
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("caller task");
    }
    assert_eq!(admitted, 50);
    // Every node now says so, at once: the quota is Redis's.
    for d in &nodes {
        let mut c = client(d).await;
        let r = c
            .check(CheckRequest {
                key: "paid-key".into(),
                cost: 1,
                id: 0,
                ..Default::default()
            })
            .await
            .expect("check")
            .into_inner();
        assert!(!r.allowed);
        assert_eq!(r.policy, "paid/monthly");
        assert_eq!(r.remaining, 0);
    }
}

#[tokio::test]
async fn strict_checks_answer_within_the_deadline_with_the_fail_mode() {
    let redis = RedisServer::start().await;
    let mut daemons = Vec::new();
    for mode in ["deny", "allow", "local"] {
        daemons.push((
            mode,
            TestDaemon::with_config(&strict_config(&redis.url(), mode)).await,
        ));
    }
    // Before the pause: all through Redis, 3 units of the shared 50.
    for (_, d) in &daemons {
        let mut c = client(d).await;
        assert!(check(&mut c, "paid-key", 1).await.0);
    }
    // A Redis that stops answering for 10 s: every strict check gets its
    // fail mode after the 1 s deadline, long before Redis is back.
    redis
        .command("CLIENT PAUSE 10000 ALL")
        .await
        .expect("pause");
    // Bounded by 7 s (three deadlines, and 4 s of room for a loaded
    // machine): the answers come from the fail mode, not from Redis
    // after its pause.
    let answers = async {
        for (mode, d) in &daemons {
            let mut c = client(d).await;
            let r = c
                .check(CheckRequest {
                    key: "paid-key".into(),
                    cost: 1,
                    id: 0,
                    ..Default::default()
                })
                .await
                .expect("answered")
                .into_inner();
            match *mode {
                "deny" => {
                    assert!(!r.allowed, "{mode}: {r:?}");
                    assert_eq!(r.reason, quotad::api::pb::DenyReason::Unavailable as i32);
                }
                "allow" => assert!(r.allowed, "{mode}: {r:?}"),
                // This node's mirror of the quota: 50 − its view of 3 used
                // (it saw the state after its own check, taking the first
                // two), minus this one.
                _ => {
                    assert!(r.allowed, "{mode}: {r:?}");
                    assert_eq!(r.policy, "paid/monthly");
                    assert_eq!(r.remaining, 50 - 3 - 1);
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(7), answers)
        .await
        .expect("strict checks answered by the fail mode within the pause");
}

#[tokio::test]
async fn strict_plans_apply_to_envoy_plan_domains_too() {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

    use crate::support::rls::{descriptor, request};

    let redis = RedisServer::start().await;
    let yaml = strict_config(&redis.url(), "deny");
    let a = TestDaemon::with_config(&yaml).await;
    let b = TestDaemon::with_config(&yaml).await;
    let mut ca = client(&a).await;
    assert_eq!(check(&mut ca, "paid-key", 48).await, (true, 2));
    let mut rls = RateLimitServiceClient::new(b.channel().await);
    let ask = || request("edge", vec![descriptor(&[("api_key", "paid-key")])], 2);
    let r = rls
        .should_rate_limit(ask())
        .await
        .expect("rls")
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let r = rls
        .should_rate_limit(ask())
        .await
        .expect("rls")
        .into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{r:?}");
}

#[tokio::test]
async fn a_redis_cluster_syncs_quotas_and_decides_strict_plans() {
    let cluster = crate::support::RedisCluster::start().await;
    let seed = format!("{}\n  cluster: true", cluster.url());
    // Sync mode: a quota spent on one node is seen by the other.
    let yaml = config(&seed, "5ms");
    let a = TestDaemon::with_config(&yaml).await;
    let b = TestDaemon::with_config(&yaml).await;
    let mut ca = client(&a).await;
    let mut cb = client(&b).await;
    assert_eq!(check(&mut ca, "q-key", 30).await, (true, 70));
    a.wait_synced().await;
    let _ = check(&mut cb, "q-key", 1).await;
    b.wait_synced().await;
    assert_eq!(check(&mut cb, "q-key", 1).await, (true, 68));
    // Many keys land on every master.
    for i in 0..50 {
        assert!(check(&mut ca, &format!("k{i}"), 1).await.0);
    }
    a.wait_synced().await;

    // Strict mode: exact across both nodes.
    let strict = strict_config(&seed, "deny");
    let s1 = TestDaemon::with_config(&strict).await;
    let s2 = TestDaemon::with_config(&strict).await;
    let (mut c1, mut c2) = (client(&s1).await, client(&s2).await);
    let mut admitted = 0;
    for _ in 0..40 {
        admitted += u64::from(check(&mut c1, "paid-key", 1).await.0);
        admitted += u64::from(check(&mut c2, "paid-key", 1).await.0);
    }
    assert_eq!(admitted, 50);
}

#[tokio::test]
async fn rediss_with_a_private_ca_syncs_and_refuses_an_untrusted_server() {
    let redis = crate::support::RedisTls::start().await;
    let url = format!(
        "rediss://localhost:{}\n  tls_ca_file: {}",
        redis.port,
        redis.ca_file.display()
    );
    let a = TestDaemon::with_config(&config(&url, "5ms")).await;
    let b = TestDaemon::with_config(&config(&url, "5ms")).await;
    let mut sync = a.sync.clone().expect("sync task");
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    assert_eq!(check(&mut ca, "q-key", 40).await, (true, 60));
    a.wait_synced().await;
    reach(&mut sync, SyncState::Synced).await;
    let _ = check(&mut cb, "q-key", 1).await;
    b.wait_synced().await;
    assert_eq!(check(&mut cb, "q-key", 1).await, (true, 58));

    // Without the CA, the server's certificate is not trusted: the node
    // keeps deciding locally and reports Redis unreachable.
    let untrusted = TestDaemon::with_config(&config(
        &format!("rediss://localhost:{}", redis.port),
        "5ms",
    ))
    .await;
    let mut cu = client(&untrusted).await;
    assert!(check(&mut cu, "q-key", 1).await.0);
    let mut state = untrusted.sync.clone().expect("sync task");
    reach(&mut state, SyncState::Degraded).await;
}

#[tokio::test]
async fn a_sentinel_leads_the_nodes_to_the_master() {
    let sentinel = crate::support::RedisSentinel::start().await;
    let url = format!(
        "redis://127.0.0.1:{}\n  sentinel_master: mymaster",
        sentinel.port
    );
    let a = TestDaemon::with_config(&config(&url, "5ms")).await;
    let b = TestDaemon::with_config(&config(&url, "5ms")).await;
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    assert_eq!(check(&mut ca, "q-key", 45).await, (true, 55));
    a.wait_synced().await;
    let _ = check(&mut cb, "q-key", 1).await;
    b.wait_synced().await;
    assert_eq!(check(&mut cb, "q-key", 1).await, (true, 53));
    // The counters are on the master the Sentinel named.
    let keys = sentinel.master.command("KEYS *}c:*").await.expect("KEYS");
    assert!(keys.starts_with("*1"), "{keys}");
}

#[tokio::test]
async fn a_long_outage_does_not_hold_a_rate_limit_after_recovery() {
    let mut redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = TestDaemon::with_clock(&config(&redis.url(), "5ms"), Arc::clone(&clock)).await;
    let mut ca = client(&a).await;
    let mut sync = a.sync.clone().expect("sync task");
    assert!(check(&mut ca, "busy", 1).await.0);
    a.wait_synced().await;
    redis.kill();
    // A minute at the limit (100/s) while Redis is away: a minute of
    // arrival time pending for this key.
    for _ in 0..60 {
        clock.advance(1_000_000_000);
        for _ in 0..100 {
            let _ = check(&mut ca, "busy", 1).await;
        }
    }
    reach(&mut sync, SyncState::Degraded).await;
    redis.restart().await;
    reach(&mut sync, SyncState::Synced).await;
    a.wait_synced().await;
    // Redis holds at most a full bucket's worth ahead (burst 10 at 100/s:
    // 100 ms), not the minute: 100 ms later the key passes again.
    clock.advance(100_000_000);
    assert!(check(&mut ca, "busy", 1).await.0);
}

#[tokio::test]
async fn a_read_only_redis_keeps_the_deltas_until_it_takes_writes_again() {
    let redis = RedisServer::start().await;
    let other = RedisServer::start().await;
    let yaml = config(&redis.url(), "5ms");
    let a = TestDaemon::with_config(&yaml).await;
    let mut ca = client(&a).await;
    let mut sync = a.sync.clone().expect("sync task");
    assert!(check(&mut ca, "q-key", 1).await.0);
    a.wait_synced().await;
    // Demoted (as in a failover): a read-only replica answers READONLY.
    let reply = redis
        .command(&format!("REPLICAOF 127.0.0.1 {}", other.port))
        .await
        .expect("REPLICAOF");
    assert_eq!(reply, "+OK");
    assert_eq!(check(&mut ca, "q-key", 5).await, (true, 94));
    reach(&mut sync, SyncState::Degraded).await;
    // Promoted again: the 5 units were kept, not dropped, and arrive.
    assert_eq!(
        redis.command("REPLICAOF NO ONE").await.expect("REPLICAOF"),
        "+OK"
    );
    reach(&mut sync, SyncState::Synced).await;
    a.wait_synced().await;
    let b = TestDaemon::with_config(&yaml).await;
    // 5 + 1 + 1 used since the demotion, plus the first unit unless the
    // replica's resync from the empty master had already wiped it.
    let (allowed, left) = after_first_flush(&b, "q-key").await;
    assert!(allowed && (left == 93 || left == 92), "{left} left");
    assert_eq!(a.engine.store().journal().map(|j| j.dropped()), Some(0));
}

/// [`strict_config`] with another `strict_deadline`.
pub(crate) fn strict_within(redis: &str, on_error: &str, deadline: &str) -> String {
    strict_config(redis, on_error).replace(
        "strict_deadline: 1s",
        &format!("strict_deadline: {deadline}"),
    )
}

/// `redis-server` arguments under which `EVALSHA` is `SUNION`: every
/// script call (strict, sync, overrides) is answered by an empty array,
/// a real reply of another shape than any script's (the keys it names
/// do not exist).
const EVALSHA_IS_SUNION: [&str; 6] = [
    "--rename-command",
    "EVALSHA",
    "",
    "--rename-command",
    "SUNION",
    "EVALSHA",
];

/// A sample's value in `d`'s `/metrics` (`series` as rendered, labels
/// included), 0 when absent.
async fn metric(d: &TestDaemon, series: &str) -> f64 {
    let (_, body) = d.http_get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_strict_reply_of_another_shape_gets_the_fail_mode_never_a_denial() {
    use quotad::api::pb::DenyReason;

    let redis = RedisServer::start_with(&EVALSHA_IS_SUNION).await;
    for mode in ["allow", "deny", "local"] {
        // A deadline far beyond the reply's (it is immediate): what the
        // fail mode answers here is the reply, not a timeout.
        let d = TestDaemon::with_config(&strict_within(&redis.url(), mode, "5s")).await;
        let r = d.check("paid-key", 1).await;
        match mode {
            "allow" => assert!(r.allowed, "{mode}: {r:?}"),
            "deny" => assert!(
                !r.allowed && r.reason == DenyReason::Unavailable as i32,
                "{mode}: {r:?}"
            ),
            // This node's own view: a fresh quota of 50, one used.
            _ => assert!(
                r.allowed && r.policy == "paid/monthly" && r.remaining == 49,
                "{mode}: {r:?}"
            ),
        }
        let series = format!("quotad_strict_fail_mode_total{{mode=\"{mode}\"}}");
        assert_eq!(metric(&d, &series).await, 1.0, "{mode}");
    }
}

#[tokio::test]
async fn sync_keeps_its_deltas_while_redis_replies_with_another_shape() {
    let mut redis = RedisServer::start_with(&EVALSHA_IS_SUNION).await;
    let yaml = config(&redis.url(), "5ms");
    let a = TestDaemon::with_config(&yaml).await;
    let mut ca = client(&a).await;
    let mut sync = a.sync.clone().expect("sync task");
    assert_eq!(check(&mut ca, "q-key", 7).await, (true, 93));
    let within = std::time::Duration::from_secs(10);
    reach(&mut sync, SyncState::Degraded).await;
    // Kept (set aside, to be sent again as it was), and
    // the failure counted; nothing dropped.
    let kept = async {
        while metric(&a, "quotad_redis_pending_deltas").await != 1.0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(within, kept)
        .await
        .expect("the delta is kept");
    assert!(metric(&a, "quotad_redis_flushes_total{result=\"failure\"}").await >= 1.0);
    assert_eq!(metric(&a, "quotad_redis_dropped_deltas_total").await, 0.0);

    // Scripts answered again: the 7 units arrive.
    redis.restart_with(&[]).await;
    reach(&mut sync, SyncState::Synced).await;
    a.wait_synced().await;
    let b = TestDaemon::with_config(&yaml).await;
    assert_eq!(after_first_flush(&b, "q-key").await, (true, 91));
}

#[tokio::test]
async fn overrides_keep_the_last_state_read_while_redis_replies_with_another_shape() {
    use crate::support::{admin_section, override_of};
    use quotad::api::pb::set_override_request::Target;

    let mut redis = RedisServer::start().await;
    let yaml = format!("{}{}", config(&redis.url(), "5ms"), admin_section(""));
    let a = TestDaemon::with_config(&yaml).await;
    let mut ops = a.ops().await;
    ops.set_override(override_of("alice", Target::Plan("quota".into())))
        .await
        .expect("override set");
    assert_eq!(a.check("alice", 1).await.policy, "quota/daily");
    a.wait_synced().await;

    // Redis starts over, empty, answering scripts with another shape: the
    // node, now ahead of Redis, reads everything again and again. Nothing
    // else calls a script (nothing is pending), so two calls mean a read
    // was answered and handled.
    redis.restart_with(&EVALSHA_IS_SUNION).await;
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let reads = async {
        loop {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn)
                .await
                .expect("INFO");
            let calls = info
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_sunion:calls="))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0);
            if calls >= 2 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), reads)
        .await
        .expect("the node read the overrides again");
    // The override read last stays in force.
    assert_eq!(a.check("alice", 1).await.policy, "quota/daily");
    // A change is not confirmed: the reply does not say it was made.
    let e = ops
        .set_override(override_of("bob", Target::Plan("quota".into())))
        .await
        .expect_err("unconfirmed");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
}

/// Polls (bounded, 10 s) until `probe` holds; panics naming `what`.
async fn until(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let poll = async {
        while !probe().await {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .unwrap_or_else(|_| panic!("{what}"));
}

/// Subscribers to the overrides channel (default prefix), as Redis says.
async fn subscribers(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let reply: redis::RedisResult<(String, u64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("quotad:{overrides}:changes")
        .query_async(&mut conn)
        .await;
    reply.map_or(0, |(_, n)| n)
}

#[tokio::test]
async fn the_first_strict_check_and_admin_change_after_a_redis_restart_go_through() {
    use crate::support::{admin_section, override_of};
    use quotad::api::pb::set_override_request::Target;

    let mut redis = RedisServer::start().await;
    // Fail-closed, so a strict check Redis did not answer shows; a
    // deadline a loaded machine meets with room to spare (a reconnection
    // and the script sent again on loopback take milliseconds).
    let yaml = format!(
        "{}{}",
        strict_within(&redis.url(), "deny", "2s"),
        admin_section("")
    );
    let d = TestDaemon::with_config(&yaml).await;
    let mut ops = d.ops().await;
    let mut sync = d.sync.clone().expect("sync task");
    // The strict and the admin connections are made, and used.
    assert!(d.check("paid-key", 1).await.allowed);
    ops.set_override(override_of("alice", Target::Plan("paid".into())))
        .await
        .expect("a change before the restart");

    // Killed and started again, empty, on the same port. The node's other
    // connections find it back: the sync task's, and the overrides
    // follower's (subscribed again, and writing back the override, which
    // went with Redis's data). The strict and the admin connections are
    // left untouched until their first use below.
    redis.restart().await;
    until("the follower subscribed again", async || {
        subscribers(&redis).await == 1
    })
    .await;
    until("the follower wrote the override back", async || {
        redis
            .command("HLEN quotad:{overrides}:data")
            .await
            .ok()
            .as_deref()
            == Some(":1")
    })
    .await;
    assert_eq!(d.engine.view().table().overrides(), 1);
    reach(&mut sync, SyncState::Synced).await;

    // The very first strict check: through Redis, not refused.
    let r = d.check("paid-key", 1).await;
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.policy, "paid/monthly");
    // The very first admin change: done, and in force.
    ops.set_override(override_of("bob", Target::Plan("paid".into())))
        .await
        .expect("the first change after the restart");
    assert_eq!(d.check("bob", 1).await.policy, "paid/monthly");
    let series = "quotad_strict_fail_mode_total{mode=\"deny\"}";
    assert_eq!(metric(&d, series).await, 0.0);
}

#[tokio::test]
async fn readiness_follows_any_connection_that_finds_redis_gone_or_back() {
    let mut redis = RedisServer::start().await;
    // Flushes an hour apart: the sync task's own rounds would notice
    // nothing within this test; only what the other connections report
    // (the strict client's, the overrides follower's polls) can move
    // the state.
    let yaml =
        strict_config(&redis.url(), "deny").replace("sync_interval: 5ms", "sync_interval: 1h");
    let d = TestDaemon::with_config(&yaml).await;
    assert!(d.check("paid-key", 1).await.allowed);

    redis.kill();
    let r = d.check("paid-key", 1).await;
    assert!(!r.allowed, "{r:?}");
    until("/readyz says not ready, Redis degraded", async || {
        let (status, body) = d.http_get("/readyz").await;
        status == 503 && body.contains("redis: degraded")
    })
    .await;

    redis.restart().await;
    until("/readyz says ready, Redis synced", async || {
        let (status, body) = d.http_get("/readyz").await;
        status == 200 && body.contains("redis: synced")
    })
    .await;
    let r = d.check("paid-key", 1).await;
    assert!(r.allowed, "{r:?}");
}

#[tokio::test]
async fn counters_of_short_windows_leave_redis_a_short_slack_after_their_window() {
    // A per-second envoyproxy/ratelimit limit over many keys must not
    // keep a minute of dead counters in Redis: a counter outlives its
    // window by the window's length, at least 2 s and at most a minute
    // (the clock skew between nodes a window tolerates). The daemon's
    // clock stands on a whole second, so a per-second counter's time to
    // live is at most 1 s + 2 s, a day's 12 h + 1 min.
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = dir.path().join("flood.yaml");
    std::fs::write(
        &limits,
        "domain: flood\ndescriptors:\n  - key: ip\n    rate_limit: { unit: second, requests_per_unit: 1000 }\n  - key: user\n    rate_limit: { unit: day, requests_per_unit: 1000 }\n",
    )
    .expect("write limits");
    let yaml = format!(
        "{}rls_files: [{:?}]\n",
        config(&redis.url(), "5ms"),
        limits.display().to_string()
    );
    let d = TestDaemon::with_config(&yaml).await;
    let mut rls = envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::new(
        d.channel().await,
    );
    use crate::support::rls::{descriptor, request};
    const IPS: usize = 200;
    for i in 0..IPS {
        let ip = format!("10.0.{}.{}", i / 256, i % 256);
        rls.should_rate_limit(request("flood", vec![descriptor(&[("ip", &ip)])], 1))
            .await
            .expect("rls");
    }
    rls.should_rate_limit(request("flood", vec![descriptor(&[("user", "u1")])], 1))
        .await
        .expect("rls");
    d.wait_synced().await;
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*}c:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), IPS + 1, "{keys:?}");
    let (mut short, mut long) = (0, 0);
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        if ttl <= 3_000 {
            assert!(ttl > 0, "{k}: {ttl} ms");
            short += 1;
        } else {
            // 12 h to the day's end plus a minute, less what has passed.
            assert!(ttl <= 43_260_000, "{k}: {ttl} ms");
            long += 1;
        }
    }
    assert_eq!((short, long), (IPS, 1));
}

#[tokio::test]
async fn a_strict_check_given_up_is_refunded_if_charged_and_never_charged_after() {
    // The node gives up a strict check whose answer was lost
    // (strict_cancel.lua): Redis gives back what it charged, and the same
    // check arriving late charges nothing. A counter with room for 10,
    // the check costs 3.
    let redis = RedisServer::start().await;
    let keys = ["t:{k}c:1", "t:{k}s:node:1"];
    let check = ["1000000", "3", "600000", "c", "c", "10", "60000"];
    let get = |k: &str| {
        std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "GET", k])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("redis-cli runs")
    };
    // Charged (its answer lost on the way back).
    assert_eq!(eval_script(&redis, "strict.lua", &keys, &check), "1\n0");
    assert_eq!(get(keys[0]), "3");
    // Sent again (its connection died after Redis ran it): answered as
    // charged, with the state before its charge, and not charged twice.
    assert_eq!(eval_script(&redis, "strict.lua", &keys, &check), "1\n0");
    assert_eq!(get(keys[0]), "3");
    // Given up: refunded.
    assert_eq!(eval_script(&redis, "strict_cancel.lua", &keys, &check), "1");
    assert_eq!(get(keys[0]), "");
    // Sent again (or arriving late): answered not charged, charges nothing.
    assert_eq!(eval_script(&redis, "strict.lua", &keys, &check), "0\n0");
    assert_eq!(get(keys[0]), "");
    // Given up before it arrived: nothing to refund, and it charges
    // nothing when it does arrive.
    let other = ["t:{k}c:1", "t:{k}s:node:2"];
    assert_eq!(
        eval_script(&redis, "strict_cancel.lua", &other, &check),
        "0"
    );
    assert_eq!(eval_script(&redis, "strict.lua", &other, &check), "0\n0");
    assert_eq!(get(keys[0]), "");
    // Another check is charged as usual.
    let third = ["t:{k}c:1", "t:{k}s:node:3"];
    assert_eq!(eval_script(&redis, "strict.lua", &third, &check), "1\n0");
    assert_eq!(get(keys[0]), "3");
}

#[tokio::test]
async fn a_flush_call_sent_twice_is_applied_once() {
    // The same call (same marker) arriving twice: its answer was lost and
    // the node sent it again. The second is only read. A counter cell
    // (+5) and a bucket cell (+2 ms of arrival time) at now = 1 000 s.
    let redis = RedisServer::start().await;
    let keys = ["t:{k}r:node:1", "t:{k}c:1", "t:{k}b:2"];
    let args = [
        "600000",
        "1000000000",
        "c",
        "60000",
        "5",
        "b",
        "2000",
        "1000000000",
    ];
    assert_eq!(
        eval_script(&redis, "sync.lua", &keys, &args),
        "1\n5\n1000002000"
    );
    assert_eq!(
        eval_script(&redis, "sync.lua", &keys, &args),
        "0\n5\n1000002000"
    );
    // A new call (another sequence number) applies.
    let next = ["t:{k}r:node:2", "t:{k}c:1", "t:{k}b:2"];
    assert_eq!(
        eval_script(&redis, "sync.lua", &next, &args),
        "1\n10\n1000004000"
    );
}

/// `daily`: a quota of 5 a day for every key; first reads of windows of a
/// minute or more (the default), and a strict deadline a loaded machine
/// meets (the first checks after a restart are decided in Redis; a
/// check that missed it would be decided locally, on a fresh counter).
fn daily_config(redis: &str, first_read: &str) -> String {
    format!(
        r#"
default_plan: daily
plans:
  daily:
    limits:
      - {{ name: daily, quota: 5, per: day }}
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
redis:
  url: {redis}
  sync_interval: 5ms
  strict_deadline: 2s
  first_read_min_window: {first_read}
"#
    )
}

/// How many of `n` checks of `key` at once on `d` are allowed.
async fn burst(d: &TestDaemon, key: &str, n: usize) -> usize {
    let checks = (0..n).map(|_| d.check(key, 1));
    futures_util::future::join_all(checks)
        .await
        .iter()
        .filter(|r| r.allowed)
        .count()
}

#[tokio::test]
async fn a_quota_does_not_overshoot_after_every_node_restarted() {
    // 3 of a key's 5 daily units used, every node restarted, then a burst
    // of 10 checks at once on each of the 3 new nodes: exactly the 2 left
    // are allowed, because a node's first check of a key's day quota is
    // decided in Redis. (Before, each new node started the key on a fresh
    // counter until its first flush: 15 allowed.)
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let yaml = daily_config(&redis.url(), "1m");
    {
        let old: Vec<TestDaemon> = futures_util::future::join_all(
            (0..3).map(|_| TestDaemon::with_clock(&yaml, Arc::clone(&clock))),
        )
        .await;
        for d in &old {
            assert!(d.check("user-7", 1).await.allowed);
            d.wait_synced().await;
        }
        for d in old {
            d.stop().await.expect("clean stop");
        }
    }
    let new: Vec<TestDaemon> = futures_util::future::join_all(
        (0..3).map(|_| TestDaemon::with_clock(&yaml, Arc::clone(&clock))),
    )
    .await;
    let allowed: usize = futures_util::future::join_all(new.iter().map(|d| burst(d, "user-7", 10)))
        .await
        .into_iter()
        .sum();
    assert_eq!(allowed, 2);
    // Later checks are decided locally again, on the count Redis gave.
    for d in &new {
        let r = d.check("user-7", 1).await;
        assert!(!r.allowed);
        assert_eq!(r.remaining, 0);
    }
}

#[tokio::test]
async fn first_reads_can_be_turned_off() {
    // `first_read_min_window: off`: a new node decides a key's first
    // checks on a fresh counter until its first flush, as before.
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let yaml = daily_config(&redis.url(), "off");
    let a = TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await;
    for _ in 0..5 {
        assert!(a.check("user-8", 1).await.allowed);
    }
    a.wait_synced().await;
    let b = TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await;
    let r = b.check("user-8", 1).await;
    assert!(r.allowed, "decided on a fresh counter: {r:?}");
    b.wait_synced().await;
    assert!(!b.check("user-8", 1).await.allowed);
}

#[tokio::test]
async fn first_reads_pause_while_the_store_is_full() {
    // A store of 4 cells: the first 4 keys are read from Redis (each
    // leaves its strict marker there); with the store full, a fifth key
    // is decided here at once, not read from Redis on every check.
    let redis = RedisServer::start().await;
    let yaml =
        daily_config(&redis.url(), "1m").replace("store:\n", "store:\n  max_tracked_keys: 4\n");
    let d = TestDaemon::with_config(&yaml).await;
    let markers = async || {
        let keys = redis.command("KEYS *}s:*").await.expect("KEYS");
        keys.lines().next().unwrap_or_default().to_owned()
    };
    for k in ["k0", "k1", "k2", "k3"] {
        assert!(d.check(k, 1).await.allowed);
    }
    assert_eq!(markers().await, "*4");
    for _ in 0..3 {
        assert!(d.check("k4", 1).await.allowed);
    }
    assert_eq!(markers().await, "*4");
}

/// Plan `metered` for every key: an hourly quota of a million (every
/// check allowed, each unit counted in Redis), in a store of 300 cells
/// flushed every second, so that a flood dirties more cells between two
/// flushes than the store holds. First reads off: a flood key is decided
/// locally at once, as under a rate limit.
fn flood_config(redis: &str) -> String {
    format!(
        r#"
default_plan: metered
plans:
  metered:
    limits:
      - {{ name: hourly, quota: 1000000, per: hour }}
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
  max_tracked_keys: 300
redis:
  url: {redis}
  sync_interval: 1s
  strict_deadline: 1s
  first_read_min_window: "off"
server:
  shutdown_grace: 5s
"#
    )
}

#[tokio::test]
async fn a_key_flood_over_the_cap_drops_no_delta_of_a_tracked_key() {
    // 3 nodes, each flooded with 3 000 one-shot keys (10 times its cap)
    // while 20 established keys keep being checked on every node: Redis
    // ends with exactly every unit those keys were charged, and no node
    // dropped a delta.
    const LEGIT: usize = 20;
    let redis = RedisServer::start().await;
    let yaml = flood_config(&redis.url());
    let nodes = [
        TestDaemon::with_config(&yaml).await,
        TestDaemon::with_config(&yaml).await,
        TestDaemon::with_config(&yaml).await,
    ];
    let legit: Vec<String> = (0..LEGIT).map(|i| format!("legit-{i}")).collect();
    let run = async |n: usize, d: &TestDaemon| {
        let mut c = client(d).await;
        let mut charged = 0u64;
        // Established: charged 5 times before the flood, so a one-shot
        // key cannot displace them.
        for _ in 0..5 {
            for k in &legit {
                assert!(check(&mut c, k, 1).await.0);
                charged += 1;
            }
        }
        for i in 0..3_000 {
            let _ = check(&mut c, &format!("flood-{n}-{i}"), 1).await;
            if i % 100 == 99 {
                for k in &legit {
                    assert!(check(&mut c, k, 1).await.0);
                    charged += 1;
                }
            }
        }
        charged
    };
    let (a, b, c) = tokio::join!(run(0, &nodes[0]), run(1, &nodes[1]), run(2, &nodes[2]));
    assert_eq!(a + b + c, 3 * 35 * LEGIT as u64);
    for d in &nodes {
        d.wait_synced().await;
        let store = d.engine.store();
        // Past the cap: flood keys took each other's cells once sent
        // (at least 3 000 - 300 - 20 of them), or shared the overflow
        // cell while every cell was waiting to be sent.
        let past = store.displaced().counters + store.overflow_checks();
        assert!(past >= 2_680, "the flood went past the cap: {past}");
        assert_eq!(store.journal().map(|j| j.dropped()), Some(0));
    }
    let engine = &nodes[0].engine;
    for k in &legit {
        let tag = engine.hasher().key_hash(k.as_bytes());
        let cells = engine.cells_of(tag);
        assert_eq!(cells.len(), 1, "one hourly counter");
        let name = format!("quotad:{{{tag:016x}}}c:{:016x}", cells[0].0);
        let count = redis.command(&format!("GET {name}")).await.expect("GET");
        assert_eq!(count, "105", "{k}: 35 checks on each of 3 nodes");
    }
}

#[tokio::test]
async fn a_round_of_many_dirty_cells_goes_out_in_several_round_trips() {
    // 40 000 keys charged between two flushes: 80 script calls, sent 32
    // per round trip; every one arrives, once.
    let redis = RedisServer::start().await;
    let yaml =
        flood_config(&redis.url()).replace("max_tracked_keys: 300", "max_tracked_keys: 50000");
    let d = TestDaemon::with_config(&yaml).await;
    for i in 0..40_000 {
        let key = format!("many-{i}");
        assert!(d.engine.check(&quotad::core::Request::new(&key, 1)).allowed);
    }
    d.wait_synced().await;
    let keys = redis.command("KEYS *}c:*").await.expect("KEYS");
    assert_eq!(keys, "*40000", "one counter per key in Redis");
    assert_eq!(d.engine.store().journal().map(|j| j.dropped()), Some(0));
}

#[tokio::test]
async fn usage_on_any_node_is_every_nodes_read_from_redis() {
    use quotad::api::pb::KeyRef;
    let redis = RedisServer::start().await;
    let yaml = format!(
        "{}{}",
        config(&redis.url(), "5ms"),
        crate::support::admin_section("")
    );
    let a = TestDaemon::with_config(&yaml).await;
    let b = TestDaemon::with_config(&yaml).await;
    // 30 of the key's daily 100 spent on a, flushed to Redis.
    let mut ca = client(&a).await;
    assert_eq!(check(&mut ca, "q-key", 30).await, (true, 70));
    a.wait_synced().await;
    // b never saw the key: its usage is still every node's.
    let key = || KeyRef {
        key: "q-key".into(),
        ..Default::default()
    };
    let usage = b
        .admin(Some(crate::support::OPS_TOKEN))
        .await
        .get_usage(key())
        .await
        .expect("usage answered")
        .into_inner();
    assert!(usage.global, "{usage:?}");
    assert!(usage.as_of.is_some() && usage.note.is_empty(), "{usage:?}");
    let daily = &usage.limits[0];
    assert_eq!((daily.used, daily.remaining), (30, 70), "{usage:?}");
    // Without Redis it says so: this node's view, with the reason.
    drop(redis);
    let usage = b
        .admin(Some(crate::support::OPS_TOKEN))
        .await
        .get_usage(key())
        .await
        .expect("usage answered without Redis")
        .into_inner();
    assert!(!usage.global, "{usage:?}");
    assert!(usage.note.contains("Redis did not answer"), "{usage:?}");
}
