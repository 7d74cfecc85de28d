//! Graceful shutdown: in-flight calls are answered, open streams end with
//! UNAVAILABLE, health says NOT_SERVING first, and nothing is charged
//! without an answer.

use std::time::Duration;

use quotad::api::pb::CheckRequest;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::core::Request;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{CONFIG, TestDaemon};

fn req(id: u64) -> CheckRequest {
    CheckRequest {
        key: "gold-key".into(),
        cost: 1,
        id,
        ..Default::default()
    }
}

#[tokio::test]
async fn in_flight_calls_are_answered_and_streams_end_with_unavailable() {
    let d = TestDaemon::start().await;
    let engine = d.engine.clone();
    let mut c = RateLimiterClient::new(d.channel().await);
    // An open stream with one answered check, and the sender kept open.
    let (tx, rx) = tokio::sync::mpsc::channel::<CheckRequest>(4);
    let mut stream = c
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(req(1)).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().id, 1);

    // Many unary calls in flight while shutdown starts.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut c = c.clone();
        calls.spawn(async move { c.check(req(100 + i)).await });
    }
    let stopped = tokio::spawn(d.stop());

    // The stream ends with UNAVAILABLE, telling the caller to resend.
    let rest: Vec<_> = stream.collect().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    let status = rest[0].as_ref().expect_err("an UNAVAILABLE status");
    assert_eq!(status.code(), tonic::Code::Unavailable);

    // Every call was either answered, or refused before it was charged
    // (the server had stopped accepting).
    let mut answered = 1; // the stream's check
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            Ok(r) => {
                assert!(r.into_inner().allowed);
                answered += 1;
            }
            // Refused as the server stopped accepting (UNAVAILABLE, or
            // UNKNOWN when a connection closes under the call): fine, as
            // long as nothing was charged for it (asserted below).
            Err(s) => assert_ne!(s.code(), tonic::Code::Ok),
        }
    }
    // The daemon drained well within its 5 s grace period.
    tokio::time::timeout(Duration::from_secs(4), stopped)
        .await
        .expect("drained before the grace period")
        .unwrap()
        .expect("daemon exits cleanly");
    // Charged exactly what was answered: gold's burst is 2000.
    let left = engine.check(&Request::new("gold-key", 0)).remaining;
    assert_eq!(2000 - left, answered);
    drop(tx);
}

#[tokio::test]
async fn drain_delay_reports_not_ready_while_still_serving() {
    // A drain long enough for a loaded CI box to make its checks within it.
    let config = CONFIG.replace(
        "shutdown_grace: 5s",
        "shutdown_grace: 5s\n  drain_delay: 4s",
    );
    let d = TestDaemon::with_config(&config).await;
    let http = d.http_addr;
    let ch = d.channel().await;
    let mut health = HealthClient::new(ch.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "quotad.v1.RateLimiter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let stopped = tokio::spawn(d.stop());

    // The watch hears NOT_SERVING first...
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    assert_eq!(crate::support::http_get(http, "/readyz").await.0, 503);
    let probe = crate::support::http_get(http, "/healthcheck").await;
    assert_eq!(probe, (500, String::new()), "envoyproxy's probe fails too");
    // ... while checks are still answered during the drain delay.
    let mut c = RateLimiterClient::new(ch);
    assert!(c.check(req(7)).await.unwrap().into_inner().allowed);
    // Then the watch ends (it does not hold up shutdown) and the daemon
    // exits cleanly.
    assert!(watch.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(15), stopped)
        .await
        .expect("drain delay plus drain ended")
        .unwrap()
        .expect("daemon exits cleanly");
}
