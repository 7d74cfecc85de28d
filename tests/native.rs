//! Native API over real gRPC: Check, CheckBatch, CheckStream; exact remaining, reset and retry_after.

use std::time::Duration;

use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{CheckBatchRequest, CheckRequest, CheckResponse, DenyReason};
use tokio_stream::StreamExt;

use crate::support::TestDaemon;

fn req(key: &str, cost: u64, id: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        cost,
        id,
        ..Default::default()
    }
}

fn dur(d: &Option<prost_types::Duration>) -> Duration {
    let d = d.expect("duration present");
    Duration::new(d.seconds as u64, d.nanos as u32)
}

async fn check(
    c: &mut RateLimiterClient<tonic::transport::Channel>,
    key: &str,
    cost: u64,
) -> CheckResponse {
    c.check(req(key, cost, 0))
        .await
        .expect("check ok")
        .into_inner()
}

#[tokio::test]
async fn burst_passes_then_denies_with_exact_retry_after() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // free: 10/s, burst 20, and 100/day.
    for i in 0..20u64 {
        let r = check(&mut c, "alice", 1).await;
        assert!(r.allowed, "request {i}");
        // The per-second bucket is closer to exhaustion than the daily quota.
        assert_eq!(r.policy, "free/per-second");
        assert_eq!(r.limit, 20);
        assert_eq!(r.remaining, 19 - i);
        assert_eq!(dur(&r.retry_after), Duration::ZERO);
    }
    let r = check(&mut c, "alice", 1).await;
    assert!(!r.allowed);
    assert_eq!(r.reason, DenyReason::Limited as i32);
    assert_eq!(r.policy, "free/per-second");
    assert_eq!(r.remaining, 0);
    assert_eq!(dur(&r.retry_after), Duration::from_millis(100));
    assert_eq!(dur(&r.reset_after), Duration::from_secs(2));
    assert_eq!(r.window_seconds, 2);

    // Exactly at retry_after one more passes; a ns earlier it would not.
    d.clock.advance(99_999_999);
    assert!(!check(&mut c, "alice", 1).await.allowed);
    d.clock.advance(1);
    assert!(check(&mut c, "alice", 1).await.allowed);

    // Another key is untouched.
    assert_eq!(check(&mut c, "bob", 1).await.remaining, 19);
}

#[tokio::test]
async fn cost_zero_means_one_and_big_costs_are_all_or_nothing() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    assert_eq!(check(&mut c, "k", 0).await.remaining, 19);
    let r = check(&mut c, "k", 15).await;
    assert!(r.allowed);
    assert_eq!(r.remaining, 4);
    let r = check(&mut c, "k", 5).await;
    assert!(!r.allowed);
    assert_eq!(r.remaining, 4, "a denied check consumes nothing");
    assert_eq!(dur(&r.retry_after), Duration::from_millis(100));
    assert!(check(&mut c, "k", 4).await.allowed);
}

#[tokio::test]
async fn cost_above_burst_is_denied_without_retry_after() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let r = check(&mut c, "k", 21).await;
    assert!(!r.allowed);
    assert_eq!(r.reason, DenyReason::CostExceedsCapacity as i32);
    assert!(r.retry_after.is_none());
    assert_eq!(r.remaining, 20);
}

#[tokio::test]
async fn daily_quota_denies_until_midnight_and_a_denial_consumes_nothing() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // Spend the 100/day quota in 20-unit steps, 2 s apart so the bucket refills.
    for _ in 0..5 {
        assert!(check(&mut c, "q", 20).await.allowed);
        d.advance_ms(2_000);
    }
    let r = check(&mut c, "q", 1).await;
    assert!(!r.allowed);
    assert_eq!(r.policy, "free/daily");
    assert_eq!(r.limit, 100);
    assert_eq!(r.remaining, 0);
    // T0 is 12:00:00 UTC; 10 s have passed.
    assert_eq!(dur(&r.retry_after), Duration::from_secs(12 * 3600 - 10));
    // Next day the quota is back.
    d.advance_ms((12 * 3600 - 10) * 1000);
    let r = check(&mut c, "q", 1).await;
    assert!(r.allowed);
    assert_eq!(r.policy, "free/per-second");
    assert_eq!(r.remaining, 19);
}

#[tokio::test]
async fn static_keys_get_their_plan_and_empty_plans_are_unlimited() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let r = check(&mut c, "gold-key", 1).await;
    assert_eq!(r.policy, "gold/per-second");
    assert_eq!(r.limit, 2000);
    let r = check(&mut c, "open-key", 1000).await;
    assert!(r.allowed);
    assert_eq!(r.policy, "");
}

#[tokio::test]
async fn batch_answers_in_order_with_ids() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let checks = vec![
        req("tiny-key", 1, 7),
        req("tiny-key", 1, 8),
        req("tiny-key", 1, 9),
        req("gold-key", 1, 10),
    ];
    let out = c
        .check_batch(CheckBatchRequest { checks })
        .await
        .unwrap()
        .into_inner()
        .results;
    let got: Vec<(u64, bool)> = out.iter().map(|r| (r.id, r.allowed)).collect();
    assert_eq!(got, vec![(7, true), (8, true), (9, false), (10, true)]);
    // tiny: 2 per minute → one token every 30 s.
    assert_eq!(dur(&out[2].retry_after), Duration::from_secs(30));
}

#[tokio::test]
async fn stream_multiplexes_checks_and_echoes_ids() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let reqs: Vec<CheckRequest> = (0..25).map(|i| req("streamer", 1, 1000 + i)).collect();
    let mut out = c
        .check_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(r) = out.next().await {
        answers.push(r.expect("stream item ok"));
    }
    assert_eq!(answers.len(), 25);
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.id, 1000 + i as u64);
        assert_eq!(r.allowed, i < 20, "item {i}");
    }
}
