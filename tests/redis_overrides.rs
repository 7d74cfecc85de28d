//! Operators' changes through a real Redis: an override set on one node
//! is enforced by another (in milliseconds; the 1 s target is measured by
//! `benches/propagation.rs`, see `PROPAGATION`), a missed announcement
//! heals by the version poll, a new node starts with them, resets reach
//! every node, a Redis that is down refuses changes, and nothing in
//! Redis holds a raw API key.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use quotad::api::pb::SetOverrideRequest;
use quotad::api::pb::set_override_request::Target;
use quotad::core::ManualClock;

use crate::support::{CONFIG, RedisServer, T0, TestDaemon, admin_section, eval_script};

fn config(redis: &RedisServer) -> String {
    config_with(redis, "")
}

/// [`config`] with `extra` lines in the admin section.
fn config_with(redis: &RedisServer, extra: &str) -> String {
    format!(
        "{CONFIG}store:\n  hash_secret: \"000102030405060708090a0b0c0d0e0f\"\nredis:\n  url: {}\n  sync_interval: 10ms\n  strict_deadline: 1s\n{}",
        redis.url(),
        admin_section(extra)
    )
}

/// `redis-cli -p PORT ARGS...`'s stdout.
fn cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the daemon's own write script on Redis, announcing on `channel`.
fn write_record(redis: &RedisServer, key_hash: &str, record: &str, channel: &str) {
    eval_script(
        redis,
        "overrides_write.lua",
        &[
            "quotad:{overrides}:data",
            "quotad:{overrides}:version",
            "quotad:{overrides}:digest",
        ],
        &[&format!("o:{key_hash}"), record, channel, "0", "0"],
    );
}

use crate::support::{key_ref as key, override_of as set};

async fn policy(d: &TestDaemon, k: &str) -> String {
    let r = d.check(k, 1).await;
    if r.allowed {
        r.policy
    } else {
        format!("denied:{}", r.reason)
    }
}

/// How many overrides node `d` has in force.
async fn in_force(d: &TestDaemon) -> u64 {
    d.ops()
        .await
        .list_overrides(quotad::api::pb::ListOverridesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .total
}

/// How long a change may take to reach another node here. The mechanism
/// takes milliseconds (an announcement) or two version polls (at most
/// 500 ms) when one is missed, on an idle machine: `benches/propagation.rs`
/// measures it against the 1 s target. A test must not fail because a
/// loaded machine stalled, so it allows ten times the slowest path,
/// still far below any other way a change could arrive (the 5-minute
/// prune, a restart).
const PROPAGATION: Duration = Duration::from_secs(5);

/// How long (real time) until `d`'s check of `k` answers `want`; fails
/// after [`PROPAGATION`].
async fn propagated(d: &TestDaemon, k: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        if policy(d, k).await == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "{k} did not become {want} within {PROPAGATION:?} (still {})",
            policy(d, k).await
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn an_override_set_on_one_node_is_enforced_by_the_other() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    let b = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    assert_eq!(policy(&b, "alice").await, "free/per-second");

    a.ops()
        .await
        .set_override(set("alice", Target::Plan("gold".into())))
        .await
        .unwrap();
    // The writer sees its own change at once.
    assert_eq!(policy(&a, "alice").await, "gold/per-second");
    let took = propagated(&b, "alice", "gold/per-second").await;
    eprintln!("override reached the other node in {took:?}");
    let got = b
        .ops()
        .await
        .get_override(key("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.plan.as_str(), got.created_by.as_str()),
        ("gold", "ops")
    );

    // A block set on B holds on A.
    b.ops()
        .await
        .set_override(set("mallory", Target::Block(true)))
        .await
        .unwrap();
    propagated(&a, "mallory", "denied:5").await;

    // Deleted on A: back to free on B.
    a.ops().await.delete_override(key("alice")).await.unwrap();
    propagated(&b, "alice", "free/per-second").await;
    assert_eq!(
        b.ops()
            .await
            .get_override(key("alice"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
}

#[tokio::test]
async fn a_missed_announcement_heals_by_the_version_poll() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    // Write an override the way the daemon does, but announce it on a
    // channel nobody listens to: every subscriber misses it.
    let hash = a.engine.hasher().display(b"carol");
    let record = r#"{"plan":"tiny","reason":"missed","author":"script","updated_at_ns":1}"#;
    write_record(&redis, &hash, record, "nobody-listens");
    let took = propagated(&a, "carol", "tiny/per-minute").await;
    eprintln!("missed announcement healed in {took:?}");
}

#[tokio::test]
async fn a_node_that_starts_later_enforces_the_overrides_at_once() {
    let redis = RedisServer::start().await;
    let a = TestDaemon::with_config(&config(&redis)).await;
    let mut ops = a.ops().await;
    ops.set_override(set("dave", Target::Plan("tiny".into())))
        .await
        .unwrap();
    ops.set_override(set("eve", Target::Block(true)))
        .await
        .unwrap();
    drop(a);
    // Read before ready: the first check already knows.
    let c = TestDaemon::with_config(&config(&redis)).await;
    assert_eq!(policy(&c, "dave").await, "tiny/per-minute");
    assert_eq!(policy(&c, "eve").await, "denied:5");
    assert_eq!(in_force(&c).await, 2);
}

#[tokio::test]
async fn a_reset_reaches_every_node_and_redis() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    let b = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    // 15 on a, then 5 on b: b's first check of the key is decided in
    // Redis on the global state (its plan has a day quota), where a's 15
    // leave 5 of the per-second burst of 20.
    for (d, cost) in [(&a, 15), (&b, 5)] {
        assert!(d.check("frank", cost).await.allowed);
        d.wait_synced().await;
    }
    let used = |u: &quotad::api::pb::GetUsageResponse| {
        u.limits
            .iter()
            .find(|l| l.name == "daily")
            .map(|l| l.used)
            .unwrap()
    };
    // After a's flush and b's, b has adopted a's count too.
    b.wait_synced().await;
    let u = b
        .ops()
        .await
        .get_usage(key("frank"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(used(&u), 20);

    let r = a
        .ops()
        .await
        .reset_usage(key("frank"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(used(&r.usage.unwrap()), 0);
    let start = Instant::now();
    loop {
        let u = b
            .ops()
            .await
            .get_usage(key("frank"))
            .await
            .unwrap()
            .into_inner();
        if used(&u) == 0 {
            break;
        }
        assert!(start.elapsed() < PROPAGATION, "b still counts {}", used(&u));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Redis forgot the cells: a third node starts from nothing.
    let c = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    c.check("frank", 1).await;
    c.wait_synced().await;
    let u = c
        .ops()
        .await
        .get_usage(key("frank"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(used(&u), 1);
}

#[tokio::test]
async fn overrides_expire_on_every_node_and_redis_holds_no_raw_key() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    let b = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    a.ops()
        .await
        .set_override(SetOverrideRequest {
            ttl: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..set("grace-secret-key", Target::Plan("gold".into()))
        })
        .await
        .unwrap();
    propagated(&b, "grace-secret-key", "gold/per-second").await;
    let all = format!(
        "{}{}",
        cli(&redis, &["--scan"]),
        cli(&redis, &["HGETALL", "quotad:{overrides}:data"])
    );
    assert!(
        all.contains(&a.engine.hasher().display(b"grace-secret-key")),
        "{all}"
    );
    assert!(!all.contains("grace-secret-key"), "{all}");

    clock.advance(30_000_000_000);
    for d in [&a, &b] {
        assert_eq!(policy(d, "grace-secret-key").await, "free/per-second");
    }
}

#[tokio::test]
async fn a_node_on_another_history_at_the_same_version_writes_back_what_redis_lost() {
    let redis = RedisServer::start().await;
    let a = TestDaemon::with_config(&config(&redis)).await;
    a.ops()
        .await
        .set_override(set("alice", Target::Plan("gold".into())))
        .await
        .unwrap();
    assert_eq!(policy(&a, "alice").await, "gold/per-second");
    // Redis goes back to an older state (a failover to a replica that
    // lagged): no overrides, version 0. Then someone writes another
    // change, which is version 1 again, announced as usual.
    cli(
        &redis,
        &[
            "DEL",
            "quotad:{overrides}:data",
            "quotad:{overrides}:version",
            "quotad:{overrides}:digest",
        ],
    );
    let bob = a.engine.hasher().display(b"bob");
    let record = r#"{"plan":"tiny","reason":"other history","author":"script","updated_at_ns":1}"#;
    write_record(&redis, &bob, record, "quotad:{overrides}:changes");
    // Same version number, another digest: a sees Redis lost history it
    // applied, writes back what Redis lacks (alice) and takes what Redis
    // has (bob): the cluster converges on everything a node saw.
    propagated(&a, "bob", "tiny/per-minute").await;
    let start = Instant::now();
    while cli(&redis, &["HLEN", "quotad:{overrides}:data"]).trim() != "2" {
        assert!(start.elapsed() < PROPAGATION, "alice was not written back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(policy(&a, "alice").await, "gold/per-second");
    assert_eq!(in_force(&a).await, 2);
}

#[tokio::test]
async fn the_cap_holds_for_every_node_and_ended_overrides_do_not_count() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let yaml = config_with(&redis, "  max_overrides: 2\n");
    let a = TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await;
    let b = TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await;
    a.ops()
        .await
        .set_override(SetOverrideRequest {
            ttl: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            ..set("k1", Target::Block(true))
        })
        .await
        .unwrap();
    b.ops()
        .await
        .set_override(set("k2", Target::Block(true)))
        .await
        .unwrap();
    let e = a
        .ops()
        .await
        .set_override(set("k3", Target::Block(true)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        e.message(),
        "too many overrides: 2 are in force (admin.max_overrides); delete some first"
    );
    // Replacing one fits.
    b.ops()
        .await
        .set_override(set("k2", Target::Plan("gold".into())))
        .await
        .unwrap();
    // k1 ends: room for k3, on either node.
    clock.advance(5_000_000_000);
    b.ops()
        .await
        .set_override(set("k3", Target::Block(true)))
        .await
        .unwrap();
    assert_eq!(in_force(&a).await, 2);
}

#[tokio::test]
async fn with_redis_down_changes_are_refused_and_nothing_changes() {
    let mut redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let a = TestDaemon::with_config(&config_with(
        &redis,
        &format!("  audit_file: {}\n", audit.display()),
    ))
    .await;
    redis.kill();
    let mut ops = a.ops().await;
    let e = ops
        .set_override(set("henry", Target::Plan("gold".into())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(
        e.message().starts_with("redis did not confirm the change"),
        "{}",
        e.message()
    );
    assert_eq!(policy(&a, "henry").await, "free/per-second");
    assert_eq!(
        ops.get_override(key("henry")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // Checks go on regardless.
    assert_eq!(policy(&a, "henry").await, "free/per-second");
    // The trail says the change was asked for and not confirmed.
    let trail = std::fs::read_to_string(&audit).unwrap();
    let line: serde_json::Value = serde_json::from_str(trail.lines().next().unwrap()).unwrap();
    assert_eq!(line["action"], "override.set");
    assert_eq!(line["old"], "none");
    assert!(
        line["outcome"]
            .as_str()
            .unwrap()
            .starts_with("unconfirmed: redis did not confirm"),
        "{line}"
    );
    // Back: the change goes through.
    redis.restart().await;
    let start = Instant::now();
    loop {
        match ops
            .set_override(set("henry", Target::Plan("gold".into())))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable);
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "redis never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(policy(&a, "henry").await, "gold/per-second");
}

#[tokio::test]
async fn overrides_outlive_a_redis_restarted_empty() {
    // Redis without persistence restarts empty while two nodes hold three
    // overrides (one a block): the nodes see its version go back, write
    // back what they hold, and keep enforcing it meanwhile.
    let mut redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let a = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    let b = TestDaemon::with_clock(&config(&redis), Arc::clone(&clock)).await;
    let mut ops = a.ops().await;
    ops.set_override(set("mallory", Target::Block(true)))
        .await
        .unwrap();
    ops.set_override(set("alice", Target::Plan("gold".into())))
        .await
        .unwrap();
    ops.set_override(set("bob", Target::Plan("gold".into())))
        .await
        .unwrap();
    let want = [
        ("mallory", "denied:5"),
        ("alice", "gold/per-second"),
        ("bob", "gold/per-second"),
    ];
    for d in [&a, &b] {
        for (k, w) in want {
            propagated(d, k, w).await;
        }
    }
    let hlen = |redis: &RedisServer| cli(redis, &["HLEN", "quotad:{overrides}:data"]);
    assert_eq!(hlen(&redis).trim(), "3");

    redis.restart().await;
    assert_eq!(hlen(&redis).trim(), "0", "restarted empty");
    // Within PROPAGATION (the write-back takes one or two version polls,
    // 250 ms each, on an idle machine), Redis holds all three again.
    let start = Instant::now();
    while hlen(&redis).trim() != "3" {
        assert!(
            start.elapsed() < PROPAGATION,
            "Redis holds {} overrides after {PROPAGATION:?}",
            hlen(&redis).trim()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both nodes enforced them throughout, and still do; the version
    // Redis counts again is every node's.
    for d in [&a, &b] {
        assert_eq!(in_force(d).await, 3);
        for (k, w) in want {
            assert_eq!(policy(d, k).await, w, "{k}");
        }
    }
    // An operator's change after the loss goes through as usual, on
    // every node.
    ops.delete_override(key("bob")).await.unwrap();
    for d in [&a, &b] {
        propagated(d, "bob", "free/per-second").await;
        assert_eq!(in_force(d).await, 2);
    }
    assert_eq!(hlen(&redis).trim(), "2");
}
