//! Envoy RLQS across nodes on a real redis-server: the demand script
//! (`src/sync/rlqs.lua`) on its own, then Envoys split across two nodes
//! whose shares together never stay past the global rate, follow demand
//! wherever it is, and come back to one node's Envoys when the other
//! node stops.

use std::sync::Arc;
use std::time::Duration;

use quotad::core::ManualClock;

use crate::rlqs::{DOMAINS, Envoy, Held, Id, drain_all, id, rates};
use crate::support::{RedisServer, T0, TestDaemon, eval_script};

const KEY: &str = "quotad:{00000000000000cc}q";

#[tokio::test]
async fn the_demand_script_sums_the_other_nodes_and_forgets_stale_and_empty_ones() {
    let redis = RedisServer::start().await;
    let call = |node: &str, [measured, reporters, fresh, reserved]: [&str; 4], stale: &str| {
        eval_script(
            &redis,
            "rlqs.lua",
            &[KEY],
            &[node, measured, reporters, fresh, reserved, stale, "60000"],
        )
    };
    assert_eq!(call("a", ["10.5", "2", "1", "0"], "10000"), "0\n0\n0\n0");
    assert_eq!(call("b", ["4", "1", "0", "7.5"], "10000"), "10.5\n2\n1\n0");
    assert_eq!(call("a", ["12", "2", "0", "0"], "10000"), "4\n1\n0\n7.5");
    // b has only a reserved share left: still counted.
    assert_eq!(call("b", ["0", "0", "0", "2"], "10000"), "12\n2\n0\n0");
    assert_eq!(call("a", ["12", "2", "0", "0"], "10000"), "0\n0\n0\n2");
    // b has nothing left: its entry goes.
    call("b", ["0", "0", "0", "0"], "10000");
    assert_eq!(call("a", ["12", "2", "0", "0"], "10000"), "0\n0\n0\n0");
    // An entry older than the staleness no longer counts, and is dropped.
    call("b", ["7", "1", "0", "0"], "10000");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(call("a", ["12", "2", "0", "0"], "10"), "0\n0\n0\n0");
    // Only a's entry is left.
    assert_eq!(redis.command(&format!("HLEN {KEY}")).await.unwrap(), ":1");
    assert_eq!(
        redis.command(&format!("HEXISTS {KEY} a")).await.unwrap(),
        ":1"
    );
    let ttl: i64 = redis
        .command(&format!("PTTL {KEY}"))
        .await
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
}

fn config(redis: &str) -> String {
    format!(
        "default_plan: open\nplans: {{ open: {{}} }}\nstore:\n  hash_secret: \"000102030405060708090a0b0c0d0e0f\"\nredis:\n  url: {redis}\n  sync_interval: 50ms\n  strict_deadline: 1s\nserver: {{ shutdown_grace: 5s }}\nrlqs:\n  assignment_ttl: 10s\n{DOMAINS}"
    )
}

/// Reads every Envoy's messages until the rates they hold sum to at most
/// the rate and have not moved for a second (at most 10 s): the nodes
/// have exchanged demand and pushed the new shares.
async fn settle(es: &mut [Envoy], b: &Id) -> Vec<f64> {
    let mut last = Vec::new();
    let mut still = 0;
    for _ in 0..40 {
        drain_all(es).await;
        let r = rates(es, b);
        if r == last && r.iter().sum::<f64>() <= 100.0 + 1e-9 {
            still += 1;
            if still == 2 {
                return r;
            }
        } else {
            still = 0;
        }
        last = r;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("shares did not settle within the rate: {last:?}");
}

/// Two report periods: the clock moves 5 s and each Envoy reports
/// `per_s` requests a second (a fifth allowed), then the shares settle.
async fn reports(es: &mut [Envoy], clock: &ManualClock, b: &Id, per_s: [u64; 3]) {
    for _ in 0..2 {
        clock.advance(5_000_000_000);
        for (e, n) in es.iter_mut().zip(per_s) {
            e.send("shop", &[(b, n, n * 4, 5)]).await;
        }
        settle(es, b).await;
    }
}

#[tokio::test]
async fn envoys_split_across_two_nodes_share_one_rate_by_demand() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::new(T0));
    let yaml = config(&redis.url());
    let a = TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await;
    let b_node = TestDaemon::with_clock(&yaml, Arc::clone(&clock)).await;
    let mut es = vec![
        Envoy::connect(a.channel().await).await.unwrap(),
        Envoy::connect(a.channel().await).await.unwrap(),
        Envoy::connect(b_node.channel().await).await.unwrap(),
    ];
    let b = id(&[("tenant", "acme")]);
    for e in &mut es {
        e.send("shop", &[(&b, 1, 0, 0)]).await;
        e.next(Duration::from_secs(2))
            .await
            .unwrap()
            .expect("answered at once");
    }
    // Three Envoys on two nodes: a third each once the nodes have heard
    // of each other.
    let r = settle(&mut es, &b).await;
    assert!(r.iter().all(|x| (30.0..=100.0 / 3.0).contains(x)), "{r:?}");
    // Demand 6:3:1 at five times the rate; the light one on the other
    // node.
    reports(&mut es, &clock, &b, [300, 150, 50]).await;
    let r = rates(&es, &b);
    assert!(
        r[0] > r[1] && r[1] > r[2],
        "ordered by demand across nodes: {r:?}"
    );
    assert!(r.iter().sum::<f64>() >= 86.0, "{r:?}");
    // Now the heavy demand is on the other node.
    reports(&mut es, &clock, &b, [50, 50, 400]).await;
    let r = rates(&es, &b);
    assert!(r[2] > r[0] + r[1], "the busy node's Envoy has most: {r:?}");
    // The node with the busy Envoy stops. Its Envoy's share counts until
    // the node's entry is stale (the 10 s time to live and 5 s after its
    // last exchange): never past the rate meanwhile, then a's Envoys take
    // the rate back.
    drop(es.pop());
    b_node.stop().await.unwrap();
    let stopped = tokio::time::Instant::now();
    clock.advance(5_000_000_000);
    for e in &mut es {
        e.send("shop", &[(&b, 300, 1200, 5)]).await;
    }
    let mut r = Vec::new();
    for _ in 0..40 {
        drain_all(&mut es).await;
        r = rates(&es, &b);
        assert!(r.iter().sum::<f64>() <= 100.0 + 1e-9, "{r:?}");
        if r.iter().sum::<f64>() >= 90.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        r.iter().sum::<f64>() >= 90.0 && r.iter().sum::<f64>() <= 100.0 + 1e-9,
        "{r:?}"
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(9),
        "the stopped node's share was kept until its entry went stale"
    );
    assert!(es.iter().all(|e| matches!(e.held[&b], Held::Bucket { .. })));
    a.stop().await.unwrap();
}
