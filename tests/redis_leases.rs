//! Concurrency limits across nodes on a real redis-server: the lease
//! script (`src/sync/leases.lua`) on its own (grants up to the limit
//! across any number of callers, says how long to wait, renews, releases,
//! prunes and counts expiries, leaves nothing behind), then three daemons
//! sharing one limit: exact under random load, a killed Hold client's
//! slots free on every node at once, Redis killed and back.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use std::time::Duration;

use quotad::api::pb::DenyReason;
use quotad::api::pb::RenewRequest;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::core::ManualClock;
use rand::{RngExt, SeedableRng};

use crate::leases::{Client, acquire, release};
use crate::support::{RedisServer, T0, TestDaemon, admin_section, key_ref};

const SCRIPT: &str = include_str!("../src/sync/leases.lua");
const KEY: &str = "quotad:{00000000000000bb}l";
const KEYS: [&str; 4] = [
    KEY,
    "quotad:{00000000000000bb}lh",
    "quotad:{00000000000000bb}lr",
    "quotad:{00000000000000bb}lx",
];

/// Runs the script on `conn` with `args` (after the key).
async fn call(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> Vec<i64> {
    let v: redis::Value = redis::Script::new(SCRIPT)
        .key(&KEYS[..])
        .arg(args)
        .invoke_async(conn)
        .await
        .expect("the lease script runs");
    match v {
        redis::Value::Array(items) => items
            .into_iter()
            .map(|i| redis::from_redis_value(i).expect("an integer"))
            .collect(),
        other => vec![redis::from_redis_value(other).expect("an integer")],
    }
}

async fn connect(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

#[tokio::test]
async fn leases_are_granted_up_to_the_limit_renewed_released_and_pruned() {
    let redis = RedisServer::start().await;
    let mut c = connect(&redis).await;
    // Limit 3: two slots until 30 s, one until 10 s.
    assert_eq!(
        call(&mut c, &["a", "0", "3", "2", "30000", "s1"]).await,
        [1, 2, 30_000, 0]
    );
    assert_eq!(
        call(&mut c, &["a", "1000", "3", "1", "9000", "s2"]).await,
        [1, 3, 10_000, 0]
    );
    // Full: one slot frees at 10 s, three only at 30 s.
    assert_eq!(
        call(&mut c, &["a", "2000", "3", "1", "5000", "s3"]).await,
        [0, 3, 8_000, 0]
    );
    assert_eq!(
        call(&mut c, &["a", "2000", "3", "3", "5000", "s3"]).await,
        [0, 3, 28_000, 0]
    );
    // Renewed in time; a lease that is not there is not.
    assert_eq!(
        call(&mut c, &["r", "9000", "s2", "20000"]).await,
        [1, 29_000, 0]
    );
    assert_eq!(
        call(&mut c, &["r", "9000", "nope", "20000"]).await,
        [0, 0, 0]
    );
    // Counted with each lease, soonest first.
    assert_eq!(
        call(&mut c, &["n", "9000"]).await,
        [3, 0, 1, 29_000, 2, 30_000]
    );
    // Released, twice: fine.
    assert_eq!(call(&mut c, &["x", "9000", "s1"]).await, [1, 0]);
    assert_eq!(call(&mut c, &["x", "9000", "s1"]).await, [0, 0]);
    assert_eq!(call(&mut c, &["n", "9000"]).await, [1, 0, 1, 29_000]);
    // s2 expires at 29 s unless renewed: pruned, counted, and renewing it
    // then is too late.
    assert_eq!(call(&mut c, &["n", "29000"]).await, [0, 1]);
    assert_eq!(
        call(&mut c, &["r", "29000", "s2", "20000"]).await,
        [0, 0, 0]
    );
    // Nothing is left in Redis once the last lease is gone.
    assert_eq!(
        call(&mut c, &["a", "29000", "3", "1", "1000", "s4"]).await,
        [1, 1, 30_000, 0]
    );
    // Renewed without a ttl: its own (1 s).
    assert_eq!(
        call(&mut c, &["r", "29100", "s4", "0"]).await,
        [1, 30_100, 0]
    );
    assert_eq!(call(&mut c, &["x", "29500", "s4"]).await, [1, 0]);
    assert_eq!(
        redis
            .command(&format!("EXISTS {} {}", KEYS[0], KEYS[1]))
            .await
            .expect("EXISTS"),
        ":0"
    );
}

#[tokio::test]
async fn an_acquire_sent_twice_takes_its_slots_once() {
    // A pipeline resent after a lost connection runs the script again.
    let redis = RedisServer::start().await;
    let mut c = connect(&redis).await;
    assert_eq!(
        call(&mut c, &["a", "0", "2", "2", "10000", "s"]).await,
        [1, 2, 10_000, 0]
    );
    assert_eq!(
        call(&mut c, &["a", "5", "2", "2", "10000", "s"]).await,
        [1, 2, 10_000, 0],
        "the same lease, not denied and not counted twice"
    );
    assert_eq!(call(&mut c, &["x", "6", "s"]).await, [1, 0]);
    assert_eq!(call(&mut c, &["n", "6"]).await, [0, 0]);
}

#[tokio::test]
async fn a_drop_frees_everything_and_stops_lost_leases_coming_back() {
    let redis = RedisServer::start().await;
    let mut c = connect(&redis).await;
    call(&mut c, &["a", "0", "5", "2", "10000", "s1"]).await;
    call(&mut c, &["a", "0", "5", "1", "10000", "s2"]).await;
    // A lease Redis lost (say it restarted) comes back by restore...
    assert_eq!(
        call(&mut c, &["s", "100", "5", "1", "10000", "s3", "50"]).await,
        [1, 4, 10_100, 0]
    );
    // ...but not one released meanwhile (through another node)...
    assert_eq!(call(&mut c, &["x", "150", "s2"]).await, [1, 0]);
    assert_eq!(
        call(&mut c, &["s", "160", "5", "1", "10000", "s2", "0"]).await,
        [0, 3, 0, 0]
    );
    // ...nor one granted before an operator freed the cell's leases.
    assert_eq!(call(&mut c, &["d", "200"]).await, [2, 0]);
    assert_eq!(call(&mut c, &["n", "200"]).await, [0, 0]);
    assert_eq!(
        call(&mut c, &["s", "300", "5", "1", "10000", "s3", "50"]).await,
        [0, 0, 0, 0]
    );
    assert_eq!(call(&mut c, &["r", "300", "s1", "0"]).await, [0, 0, 0]);
    // A lease granted after the reset (a node deciding alone) can be.
    assert_eq!(
        call(&mut c, &["s", "300", "5", "2", "10000", "s5", "250"]).await,
        [1, 2, 10_300, 0]
    );
    // New acquires are fine.
    assert_eq!(
        call(&mut c, &["a", "300", "5", "3", "10000", "s4"]).await,
        [1, 5, 10_300, 0]
    );
}

#[tokio::test]
async fn the_lease_set_expires_with_its_last_lease() {
    let redis = RedisServer::start().await;
    let mut c = connect(&redis).await;
    // A time to live from the node's own clock (here 5 s after the
    // epoch): Redis's clock is not involved.
    assert_eq!(
        call(&mut c, &["a", "5000", "1", "1", "60000", "s"]).await[0],
        1
    );
    let ttl = redis.command(&format!("PTTL {KEY}")).await.expect("PTTL");
    let ms: i64 = ttl.trim_start_matches(':').parse().expect("a TTL");
    // 60 s, less the time since the script ran (a loaded machine: up to 30 s).
    assert!((30_000..=60_001).contains(&ms), "{ttl}");
}

#[tokio::test]
async fn fifty_callers_on_three_connections_never_hold_more_than_the_limit() {
    // Three "nodes" (connections), 50 callers acquiring and releasing one
    // slot of a limit of 10: a shared counter of leases held never
    // exceeds 10, nor does Redis's count in any answer. (That the limit
    // is reached and then denies is `leases_are_granted_...` above.)
    let redis = RedisServer::start().await;
    let nodes = [
        connect(&redis).await,
        connect(&redis).await,
        connect(&redis).await,
    ];
    let held = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for caller in 0..50 {
        let mut c = nodes[caller % 3].clone();
        let (held, most) = (Arc::clone(&held), Arc::clone(&most));
        tasks.push(tokio::spawn(async move {
            for round in 0..40 {
                let secret = format!("c{caller}-{round}");
                let got = call(&mut c, &["a", "0", "10", "1", "60000", &secret]).await;
                assert!(got[1] <= 10, "Redis counts {} in use", got[1]);
                if got[0] == 1 {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(call(&mut c, &["x", "0", &secret]).await, [1, 0]);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a caller");
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=10).contains(&most), "{most} leases held at once");
    let mut c = connect(&redis).await;
    assert_eq!(
        call(&mut c, &["n", "0"]).await,
        [0, 0],
        "every lease released"
    );
}

fn config(redis: &str, on_error: &str) -> String {
    format!(
        r#"
default_plan: free
plans:
  free:
    limits:
      - {{ name: streams, concurrency: 10, lease_ttl: 3s }}
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
redis:
  url: {redis}
  sync_interval: 50ms
  strict_deadline: 1s
  on_redis_error: {on_error}
server:
  shutdown_grace: 5s
{}"#,
        admin_section("")
    )
}

/// Three nodes on one Redis and one clock.
async fn nodes(redis: &RedisServer, on_error: &str) -> Vec<TestDaemon> {
    let clock = Arc::new(ManualClock::new(T0));
    let yaml = config(&redis.url(), on_error);
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await);
    }
    out
}

async fn clients(nodes: &[TestDaemon]) -> Vec<Client> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(RateLimiterClient::new(n.channel().await));
    }
    out
}

#[tokio::test]
async fn three_nodes_never_grant_more_than_the_limit_and_use_all_of_it() {
    // 50 clients on 3 nodes acquire and release one slot at random for
    // 10 s. A shared count of leases held (up when a grant arrives, down
    // before its release is sent) never exceeds 10; and every slot gets
    // used: the most slots in use that Redis reported (on a grant, its
    // own included; on a denial, what was full) is 10. (The clients' own
    // count reaching 10 depends on how fast a loaded machine answers.)
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, "deny").await;
    let cs = clients(&nodes).await;
    let held = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let in_use = Arc::new(AtomicI64::new(0));
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut tasks = Vec::new();
    for caller in 0..50u64 {
        let mut c = cs[caller as usize % 3].clone();
        let (held, most) = (Arc::clone(&held), Arc::clone(&most));
        let in_use = Arc::clone(&in_use);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(caller);
            let mut granted = 0u64;
            while tokio::time::Instant::now() < end {
                let a = acquire(&mut c, "shared", 1).await;
                assert!(a.in_use <= 10, "{} in use", a.in_use);
                in_use.fetch_max(a.in_use as i64, Ordering::SeqCst);
                if a.granted {
                    granted += 1;
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    assert!(release(&mut c, &a.lease).await, "held until released");
                } else {
                    assert_eq!(a.reason, DenyReason::Limited as i32, "{a:?}");
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
                }
            }
            granted
        }));
    }
    let mut granted = 0;
    for t in tasks {
        granted += t.await.expect("a caller");
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 10, "{most} leases held at once");
    assert_eq!(in_use.load(Ordering::SeqCst), 10, "every slot got used");
    assert!(granted > 100, "only {granted} grants in 10 s");
    // Everything released: all 10 slots are free, on any node.
    let mut c = cs[2].clone();
    assert!(acquire(&mut c, "shared", 10).await.granted);
}

#[tokio::test]
async fn a_killed_hold_client_frees_its_slots_on_every_node_within_a_second() {
    let redis = RedisServer::start().await;
    let nodes = nodes(&redis, "deny").await;
    let mut cs = clients(&nodes).await;
    // Another process holds all 10 slots through node 0: 10 Hold streams
    // of one slot each for key `held-0`.
    let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_quotad-bench"))
        .args([
            "--mode",
            "hold",
            "--addr",
            &nodes[0].grpc_addr.to_string(),
            "--keys",
            "1",
            "--key-prefix",
            "held-",
            "--concurrency",
            "10",
            "--connections",
            "2",
            "--warmup",
            "0s",
            "--duration",
            "5m",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("quotad-bench starts");
    // Watched through node 1's admin API (which reads Redis), so the
    // test takes no slot a Hold might then be denied.
    let mut admin = nodes[1].ops().await;
    let full = async {
        loop {
            let usage = admin
                .get_usage(key_ref("held-0"))
                .await
                .expect("usage")
                .into_inner();
            if usage.concurrency.is_some_and(|c| c.in_use == 10) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), full)
        .await
        .expect("the other process holds all 10 slots");
    bench.kill().expect("killed");
    let killed = tokio::time::Instant::now();
    let _ = bench.wait();
    for c in cs.iter_mut() {
        let free = async {
            loop {
                let a = acquire(c, "held-0", 10).await;
                if a.granted {
                    release(c, &a.lease).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), free)
            .await
            .expect("the slots were freed");
    }
    let took = killed.elapsed();
    eprintln!("slots freed on every node {took:?} after the kill");
    assert!(
        took < Duration::from_secs(1),
        "freed on every node after {took:?}"
    );
}

#[tokio::test]
async fn with_redis_down_deny_refuses_and_renewals_say_unavailable() {
    let mut redis = RedisServer::start().await;
    let nodes = nodes(&redis, "deny").await;
    let mut cs = clients(&nodes).await;
    let a = acquire(&mut cs[0], "k", 2).await;
    assert!(a.granted);
    redis.kill();
    let no = acquire(&mut cs[1], "k", 1).await;
    assert!(!no.granted);
    assert_eq!(no.reason, DenyReason::Unavailable as i32, "{no:?}");
    let e = cs[0]
        .renew(RenewRequest {
            lease: a.lease.clone(),
            ttl: None,
        })
        .await
        .expect_err("Redis cannot say");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    redis.restart().await;
    // Redis came back empty: the node that granted the lease puts it
    // back at its renewal.
    let renewed = async {
        loop {
            let r = cs[0]
                .renew(RenewRequest {
                    lease: a.lease.clone(),
                    ttl: None,
                })
                .await;
            match r {
                Ok(_) => return,
                Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), renewed)
        .await
        .expect("renewed once Redis is back");
    let b = acquire(&mut cs[2], "k", 8).await;
    assert!(b.granted, "{b:?}");
    assert_eq!(b.in_use, 10, "the restored lease counts");
}

#[tokio::test]
async fn with_redis_down_local_decides_on_this_nodes_leases_and_counts_reconcile_after() {
    let mut redis = RedisServer::start().await;
    let nodes = nodes(&redis, "local").await;
    let mut cs = clients(&nodes).await;
    let a = acquire(&mut cs[0], "k", 2).await;
    assert!(a.granted);
    redis.kill();
    // Node 0 knows its 2: 9 more would be too many, 8 fit.
    let no = acquire(&mut cs[0], "k", 9).await;
    assert!(!no.granted, "{no:?}");
    let b = acquire(&mut cs[0], "k", 8).await;
    assert!(b.granted, "{b:?}");
    redis.restart().await;
    // Back: node 0 puts both leases into the empty Redis as it renews
    // them, and the limit is exact across nodes again.
    let reconciled = async {
        loop {
            for lease in [&a.lease, &b.lease] {
                cs[0]
                    .renew(RenewRequest {
                        lease: lease.clone(),
                        ttl: None,
                    })
                    .await
                    .expect("renewed (on this node's record while Redis is out)");
            }
            let seen = acquire(&mut cs[1], "k", 1).await;
            if !seen.granted && seen.in_use == 10 {
                return;
            }
            if seen.granted {
                release(&mut cs[1], &seen.lease).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reconciled)
        .await
        .expect("both leases are back in Redis: node 1 sees all 10 slots held");
}
