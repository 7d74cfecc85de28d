//! Concurrency limits on one node, over real gRPC: Acquire, Renew,
//! Release and Hold; what acquiring charges; expiry; bad input; blocks,
//! resets and the operators' view.

use std::time::Duration;

use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{
    AcquireRequest, AcquireResponse, DenyReason, HoldRequest, HoldResponse, ReleaseRequest,
    RenewRequest,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{TestDaemon, admin_section, key_ref, metric, override_of};

pub(crate) const PLANS: &str = r#"
default_plan: free
plans:
  free:
    limits:
      - { name: streams, concurrency: 3, lease_ttl: 30s }
      - { name: per-minute, rate: 5, per: minute, burst: 5 }
  wide:
    limits:
      - { name: streams, concurrency: 100, lease_ttl: 10s }
  plain:
    limits:
      - { name: per-second, rate: 10, per: second }
keys:
  "wide-key": { plan: wide }
  "plain-key": { plan: plain }
requests:
  max_key_bytes: 64
  max_cost: 1000
server:
  shutdown_grace: 5s
"#;

pub(crate) type Client = RateLimiterClient<Channel>;

pub(crate) async fn acquire(c: &mut Client, key: &str, cost: u64) -> AcquireResponse {
    c.acquire(AcquireRequest {
        key: key.into(),
        cost,
        ttl: None,
        id: 7,
    })
    .await
    .expect("acquire answered")
    .into_inner()
}

pub(crate) async fn release(c: &mut Client, lease: &str) -> bool {
    c.release(ReleaseRequest {
        lease: lease.into(),
    })
    .await
    .expect("release answered")
    .into_inner()
    .released
}

fn secs(d: Option<prost_types::Duration>) -> i64 {
    d.expect("a duration").seconds
}

fn header<'a>(r: &'a AcquireResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

#[tokio::test]
async fn slots_are_granted_up_to_the_limit_and_freed_by_release() {
    let d = TestDaemon::with_config(PLANS).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let a = acquire(&mut c, "alice", 2).await;
    assert!(a.granted, "{a:?}");
    assert_eq!((a.limit, a.in_use, a.id), (3, 2, 7));
    assert_eq!(a.lease.len(), 48);
    assert_eq!(a.policy, "free/streams");
    let expires = a.expires_at.expect("expiry");
    assert_eq!(
        expires.seconds,
        (crate::support::T0 / 1_000_000_000) as i64 + 30
    );
    assert_eq!(
        header(&a, "RateLimit-Policy"),
        Some(r#""free/streams";q=3;w=30, "free/per-minute";q=5;w=60"#)
    );
    let b = acquire(&mut c, "alice", 1).await;
    assert!(b.granted);
    assert_ne!(a.lease, b.lease);
    // Full: denied, told when a slot frees, and nothing charged.
    d.advance_ms(5_000);
    let no = acquire(&mut c, "alice", 1).await;
    assert!(!no.granted);
    assert_eq!(no.reason, DenyReason::Limited as i32);
    assert_eq!((no.in_use, no.limit, no.lease.as_str()), (3, 3, ""));
    assert_eq!(secs(no.retry_after), 25, "the first lease expires at 30 s");
    assert_eq!(header(&no, "Retry-After"), Some("25"));
    assert!(
        header(&no, "RateLimit").is_some_and(|v| v.starts_with(r#""free/streams";r=0;t=25"#)),
        "{:?}",
        no.headers
    );
    // More than the limit has: never.
    let never = acquire(&mut c, "bob", 4).await;
    assert_eq!(never.reason, DenyReason::CostExceedsCapacity as i32);
    assert!(never.retry_after.is_none());
    // Another key is apart.
    assert!(acquire(&mut c, "bob", 3).await.granted);
    // Released (twice is fine), the slots are free again.
    assert!(release(&mut c, &a.lease).await);
    assert!(
        !release(&mut c, &a.lease).await,
        "twice: fine, nothing held"
    );
    let again = acquire(&mut c, "alice", 2).await;
    assert!(again.granted);
    assert_eq!(again.in_use, 3);
}

#[tokio::test]
async fn acquiring_charges_the_plan_and_a_denial_charges_nothing() {
    let d = TestDaemon::with_config(PLANS).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // 5 per minute: each acquire is a request, released or not.
    for _ in 0..5 {
        let a = acquire(&mut c, "carol", 1).await;
        assert!(a.granted, "{a:?}");
        assert!(release(&mut c, &a.lease).await);
    }
    let no = acquire(&mut c, "carol", 1).await;
    assert!(!no.granted);
    assert_eq!(no.policy, "free/per-minute");
    assert_eq!(no.reason, DenyReason::Limited as i32);
    assert_eq!(secs(no.retry_after), 12);
    // The slots it took for a moment were given back. (24 s: two
    // requests' worth of refill.)
    d.advance_ms(24_000);
    let a = acquire(&mut c, "carol", 3).await;
    assert!(a.granted, "all three slots free: {a:?}");
    // Slots refused first: the rate limit is not charged (one token
    // left, for the acquire after the release).
    let full = acquire(&mut c, "carol", 1).await;
    assert_eq!(full.policy, "free/streams");
    assert!(release(&mut c, &a.lease).await);
    assert!(
        acquire(&mut c, "carol", 1).await.granted,
        "the denied acquire did not spend the token"
    );
}

#[tokio::test]
async fn a_lease_not_renewed_expires_and_counts_as_an_expiry() {
    let d = TestDaemon::with_config(PLANS).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let a = acquire(&mut c, "wide-key", 100).await;
    assert!(a.granted);
    d.advance_ms(9_000);
    let renewed = c
        .renew(RenewRequest {
            lease: a.lease.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
        })
        .await
        .expect("renewed in time")
        .into_inner();
    let t0 = (crate::support::T0 / 1_000_000_000) as i64;
    assert_eq!(renewed.expires_at.expect("expiry").seconds, t0 + 29);
    d.advance_ms(19_999);
    assert!(!acquire(&mut c, "wide-key", 1).await.granted);
    d.advance_ms(1);
    assert!(acquire(&mut c, "wide-key", 100).await.granted);
    let gone = c
        .renew(RenewRequest {
            lease: a.lease.clone(),
            ttl: None,
        })
        .await
        .expect_err("expired");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(!release(&mut c, &a.lease).await);
    assert_eq!(
        metric(d.http_addr, "quotad_lease_expiries_total").await,
        1.0
    );
    assert_eq!(
        metric(d.http_addr, r#"quotad_leases_active{plan="wide"}"#).await,
        1.0
    );
    assert_eq!(
        metric(
            d.http_addr,
            r#"quotad_lease_acquires_total{plan="wide",result="granted"}"#
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_the_field() {
    let d = TestDaemon::with_config(PLANS).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let cases: [(AcquireRequest, &str); 4] = [
        (AcquireRequest::default(), "key: must not be empty"),
        (
            AcquireRequest {
                key: "k".repeat(65),
                ..Default::default()
            },
            "key: 65 bytes",
        ),
        (
            AcquireRequest {
                key: "k".into(),
                cost: 1001,
                ..Default::default()
            },
            "cost: 1001 exceeds",
        ),
        (
            AcquireRequest {
                key: "k".into(),
                ttl: Some(prost_types::Duration {
                    seconds: 3601,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "ttl: must be between 1s and 1h",
        ),
    ];
    for (req, want) in cases {
        let e = c.acquire(req).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(want), "{}", e.message());
    }
    for lease in ["", "xyz", &"g".repeat(48)] {
        let e = c
            .release(ReleaseRequest {
                lease: lease.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{lease:?}");
        assert!(e.message().starts_with("lease: "), "{}", e.message());
    }
    // A well-formed id that was never granted: renewing is NOT_FOUND,
    // releasing a no-op.
    let unknown = "0".repeat(48);
    let e = c
        .renew(RenewRequest {
            lease: unknown.clone(),
            ttl: None,
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    assert!(!release(&mut c, &unknown).await);
    // The daemon still answers.
    assert!(acquire(&mut c, "k", 1).await.granted);
}

#[tokio::test]
async fn a_plan_without_a_concurrency_limit_grants_without_a_lease() {
    let d = TestDaemon::with_config(PLANS).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let a = acquire(&mut c, "plain-key", 1).await;
    assert!(a.granted);
    assert_eq!((a.lease.as_str(), a.limit), ("", 0));
    assert_eq!(a.policy, "");
}

/// Opens a Hold stream for `key`; its first answer and the stream.
async fn hold(
    c: &mut Client,
    key: &str,
    cost: u64,
) -> (
    HoldResponse,
    tonic::Streaming<HoldResponse>,
    tokio::sync::mpsc::Sender<HoldRequest>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(HoldRequest {
        key: key.into(),
        cost,
        id: 9,
    })
    .await
    .expect("queued");
    let mut answers = c
        .hold(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("hold opened")
        .into_inner();
    let first = answers
        .next()
        .await
        .expect("an answer")
        .expect("not an error");
    (first, answers, tx)
}

/// Waits (bounded: 5 s) until `key` can take `cost` slots again.
pub(crate) async fn freed(c: &mut Client, key: &str, cost: u64) -> AcquireResponse {
    let poll = async {
        loop {
            let a = acquire(c, key, cost).await;
            if a.granted {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the slots were freed")
}

#[tokio::test]
async fn a_hold_keeps_its_lease_until_the_stream_ends_however_it_ends() {
    let d = TestDaemon::with_config(PLANS).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // The client ends its side: freed.
    let (first, mut answers, tx) = hold(&mut c, "wide-key", 100).await;
    let answer = first.answer.expect("an answer");
    assert!(answer.granted);
    assert_eq!(answer.id, 9);
    assert!(!acquire(&mut c, "wide-key", 1).await.granted);
    drop(tx);
    assert!(answers.next().await.is_none(), "the stream ends with OK");
    let back = freed(&mut c, "wide-key", 100).await;
    assert!(release(&mut c, &back.lease).await);

    // The connection drops (a gateway that crashed): freed.
    let mut other = RateLimiterClient::new(d.channel().await);
    let (first, answers, tx) = hold(&mut other, "wide-key", 100).await;
    assert!(first.answer.expect("answer").granted);
    assert!(!acquire(&mut c, "wide-key", 1).await.granted);
    drop((answers, tx, other));
    let back = freed(&mut c, "wide-key", 100).await;
    assert!(release(&mut c, &back.lease).await);

    // A denied Hold answers once and ends.
    let a = acquire(&mut c, "wide-key", 100).await;
    assert_eq!(
        metric(d.http_addr, r#"quotad_leases_active{plan="wide"}"#).await,
        1.0
    );
    let (first, mut answers, _tx) = hold(&mut c, "wide-key", 1).await;
    let denied = first.answer.expect("answer");
    assert!(!denied.granted);
    assert_eq!(denied.reason, DenyReason::Limited as i32);
    assert!(answers.next().await.is_none());
    assert!(release(&mut c, &a.lease).await);
    assert_eq!(
        metric(d.http_addr, r#"quotad_leases_active{plan="wide"}"#).await,
        0.0
    );
}

#[tokio::test]
async fn a_hold_outlives_its_ttl_because_the_server_renews_it() {
    // The daemon's clock is the test's: move it past several TTLs while
    // the stream stays open, with real time for the renewals between.
    let d = TestDaemon::with_config(PLANS).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let (first, _answers, _tx) = hold(&mut c, "wide-key", 100).await;
    assert!(first.answer.expect("answer").granted);
    for _ in 0..4 {
        // A renewal every ttl/3 of real time (10 s lease: 3.3 s): wait for
        // one, then move the clock 5 s (inside the renewed lease).
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        d.advance_ms(5_000);
        assert!(
            !acquire(&mut c, "wide-key", 1).await.granted,
            "still held after the clock moved"
        );
    }
    assert_eq!(
        metric(d.http_addr, "quotad_lease_expiries_total").await,
        0.0
    );
}

#[tokio::test]
async fn a_hold_without_a_first_message_is_closed_after_ten_seconds() {
    let d = TestDaemon::with_config(PLANS).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let (_tx, rx) = tokio::sync::mpsc::channel::<HoldRequest>(1);
    let started = tokio::time::Instant::now();
    let e = c
        .hold(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("closed");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(10), "{took:?}");
}

fn with_admin(plans: &str) -> String {
    format!("{plans}{}", admin_section(""))
}

#[tokio::test]
async fn operators_see_leases_reset_frees_them_and_a_block_stops_new_ones() {
    let d = TestDaemon::with_config(&with_admin(PLANS)).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let mut admin = d.ops().await;
    let a = acquire(&mut c, "dave", 2).await;
    let (first, mut held, _tx) = hold(&mut c, "dave", 1).await;
    assert!(first.answer.expect("answer").granted);
    let usage = admin
        .get_usage(key_ref("dave"))
        .await
        .expect("usage")
        .into_inner();
    let conc = usage.concurrency.expect("a concurrency limit");
    assert_eq!(
        (conc.name.as_str(), conc.limit, conc.in_use),
        ("streams", 3, 3)
    );
    assert_eq!(conc.leases.len(), 2);
    assert_eq!(conc.leases[0].slots + conc.leases[1].slots, 3);

    // A block: new acquires are denied; held leases keep running.
    admin
        .set_override(override_of(
            "dave",
            quotad::api::pb::set_override_request::Target::Block(true),
        ))
        .await
        .expect("blocked");
    let no = acquire(&mut c, "dave", 1).await;
    assert_eq!(no.reason, DenyReason::Blocked as i32);
    c.renew(RenewRequest {
        lease: a.lease.clone(),
        ttl: None,
    })
    .await
    .expect("a held lease renews through a block");
    admin
        .delete_override(key_ref("dave"))
        .await
        .expect("unblocked");

    // A reset frees every lease: renewals get NOT_FOUND, the Hold ends.
    let reset = admin
        .reset_usage(key_ref("dave"))
        .await
        .expect("reset")
        .into_inner();
    assert_eq!(reset.leases, 2);
    let e = c
        .renew(RenewRequest {
            lease: a.lease.clone(),
            ttl: None,
        })
        .await
        .expect_err("freed");
    assert_eq!(e.code(), Code::NotFound);
    assert!(acquire(&mut c, "dave", 3).await.granted);
    // The Hold learns at its next renewal (10 s into a 30 s lease).
    let last = tokio::time::timeout(Duration::from_secs(15), held.next())
        .await
        .expect("the hold ended")
        .expect("a last answer")
        .expect("not an error");
    assert!(!last.answer.expect("answer").granted);
    assert!(held.next().await.is_none());
}

#[tokio::test]
async fn an_override_gives_a_key_another_concurrency_limit() {
    let d = TestDaemon::with_config(&with_admin(PLANS)).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let mut admin = d.ops().await;
    let held = acquire(&mut c, "erin", 2).await;
    assert!(held.granted);
    let spec = quotad::api::pb::LimitSpec {
        name: "streams".into(),
        concurrency: 1,
        lease_ttl: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    };
    admin
        .set_override(override_of(
            "erin",
            quotad::api::pb::set_override_request::Target::Limits(quotad::api::pb::LimitList {
                limits: vec![spec],
            }),
        ))
        .await
        .expect("override set");
    // The two slots held count against the new limit of the same name.
    let no = acquire(&mut c, "erin", 1).await;
    assert!(!no.granted);
    assert_eq!((no.limit, no.in_use), (1, 2));
    assert_eq!(no.policy, "override/streams");
    assert!(release(&mut c, &held.lease).await);
    let a = acquire(&mut c, "erin", 1).await;
    assert!(a.granted);
    assert_eq!(
        a.expires_at.expect("expiry").seconds,
        (crate::support::T0 / 1_000_000_000) as i64 + 5
    );
    // An invalid one is refused, naming the field.
    let bad = quotad::api::pb::LimitSpec {
        name: "streams".into(),
        concurrency: 1,
        per: "second".into(),
        ..Default::default()
    };
    let e = admin
        .set_override(override_of(
            "erin",
            quotad::api::pb::set_override_request::Target::Limits(quotad::api::pb::LimitList {
                limits: vec![bad],
            }),
        ))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limits[0].per"), "{}", e.message());
}
