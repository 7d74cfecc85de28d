use quotad::api::pb::CheckRequest;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use tokio_stream::StreamExt;

use crate::support::TestDaemon;

fn req(id: u64) -> CheckRequest {
    CheckRequest {
        key: "k".into(),
        cost: 1,
        id,
    }
}

#[tokio::test]
async fn shutdown_answers_in_flight_calls_ends_streams_and_returns_ok() {
    let d = TestDaemon::start().await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // An open stream with one answered check, and the sender kept open.
    let (tx, rx) = tokio::sync::mpsc::channel::<CheckRequest>(4);
    let mut stream = c
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(req(1)).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.id, 1);

    // Many unary calls in flight while shutdown starts.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut c = c.clone();
        calls.spawn(async move { c.check(req(100 + i)).await });
    }
    let stopped = tokio::spawn(d.stop());

    // The stream ends cleanly (no error) even though we never closed it.
    let rest: Vec<_> = stream.collect().await;
    assert!(rest.iter().all(|r| r.is_ok()), "{rest:?}");

    // Every call either was answered, or was refused because the server had
    // already stopped accepting: none hangs, none gets a half answer.
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            Ok(r) => assert!(r.into_inner().id >= 100),
            Err(s) => assert!(
                matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled),
                "{s:?}"
            ),
        }
    }
    stopped
        .await
        .unwrap()
        .expect("daemon drains and exits cleanly");
    drop(tx);
}

#[tokio::test]
async fn after_shutdown_new_connections_are_refused() {
    let d = TestDaemon::start().await;
    let addr = d.grpc_addr;
    d.stop().await.expect("clean stop");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
