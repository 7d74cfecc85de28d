//! The lease script (`src/sync/leases.lua`, concurrency limits)
//! against a real redis-server: grants up to the limit across any number
//! of callers, says how long to wait, renews, releases, prunes and counts
//! expiries, and leaves nothing behind once its leases are gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::support::RedisServer;

const SCRIPT: &str = include_str!("../src/sync/leases.lua");
const KEY: &str = "quotad:{00000000000000bb}l";
const KEYS: [&str; 3] = [
    KEY,
    "quotad:{00000000000000bb}lh",
    "quotad:{00000000000000bb}lr",
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
        call(&mut c, &["s", "100", "5", "1", "10000", "s3"]).await,
        [1, 4, 10_100, 0]
    );
    // ...unless an operator freed the cell's leases since.
    assert_eq!(call(&mut c, &["d", "200"]).await, [3, 0]);
    assert_eq!(call(&mut c, &["n", "200"]).await, [0, 0]);
    assert_eq!(
        call(&mut c, &["s", "300", "5", "1", "10000", "s3"]).await,
        [0, 0, 0, 0]
    );
    assert_eq!(call(&mut c, &["r", "300", "s1", "0"]).await, [0, 0, 0]);
    // New acquires are fine.
    assert_eq!(
        call(&mut c, &["a", "300", "5", "5", "10000", "s4"]).await,
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
