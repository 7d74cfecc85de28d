//! Charging what really happened: `CHECK_MODE_PEEK` checks (Check,
//! CheckBatch, CheckStream) change nothing; `Report` and `ReportStream`
//! charge unconditionally, into debt (buckets) and past the amount
//! (quotas); Envoy's stream-done pattern through Envoy's own RLS client.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::UInt64Value;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{
    CheckBatchRequest, CheckMode, CheckRequest, CheckResponse, DenyReason, ReportRequest,
    ReportResponse,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::support::{TestDaemon, admin_section};

/// `llm`: 600 tokens a minute (10 a second), burst 600, and 5000 a day.
const CONFIG: &str = r#"
default_plan: llm
plans:
  llm:
    limits:
      - { name: tokens, rate: 600, per: minute }
      - { name: daily, quota: 5000, per: day }
  quota-only:
    limits:
      - { name: daily, quota: 100, per: day }
keys:
  "q-key": { plan: quota-only }
envoy:
  domains: [llm]
  key_entry: api_key
requests:
  max_cost: 100000
response_headers: both
"#;

fn dur(d: &Option<prost_types::Duration>) -> Duration {
    let d = d.expect("duration present");
    Duration::new(d.seconds as u64, d.nanos as u32)
}

fn peek(key: &str, cost: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        cost,
        mode: CheckMode::Peek as i32,
        ..Default::default()
    }
}

fn charge(key: &str, cost: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        cost,
        ..Default::default()
    }
}

async fn check(c: &mut RateLimiterClient<Channel>, req: CheckRequest) -> CheckResponse {
    c.check(req).await.expect("check answered").into_inner()
}

async fn report(c: &mut RateLimiterClient<Channel>, key: &str, cost: u64) -> ReportResponse {
    c.report(ReportRequest {
        key: key.into(),
        cost,
        id: 9,
    })
    .await
    .expect("report answered")
    .into_inner()
}

#[tokio::test]
async fn a_peek_answers_as_a_charge_would_and_changes_nothing() {
    let d = TestDaemon::with_config(CONFIG).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let before = d.engine.store().tracked();
    let p = check(&mut c, peek("alice", 100)).await;
    assert!(p.allowed);
    assert_eq!((p.policy.as_str(), p.remaining), ("llm/tokens", 500));
    assert_eq!(d.engine.store().tracked(), before, "a peek creates no cell");
    // The charge that follows gets exactly what the peek saw.
    let c1 = check(&mut c, charge("alice", 100)).await;
    assert_eq!(
        (c1.allowed, c1.remaining, c1.policy.clone()),
        (true, 500, p.policy)
    );
    assert_eq!(c1.headers, p.headers);
    // Peeks of what does not fit are denied as the charge would be, with
    // the same wait, again and again (nothing changes).
    for _ in 0..3 {
        let p = check(&mut c, peek("alice", 501)).await;
        assert!(!p.allowed);
        assert_eq!(p.reason, DenyReason::Limited as i32);
        assert_eq!(dur(&p.retry_after), Duration::from_millis(100));
    }
    // (A peek of one unit sees 499 left after it: the bucket holds 500.)
    let r = check(&mut c, peek("alice", 1)).await;
    assert_eq!(r.remaining, 499, "peeks left the bucket as the charge did");
    // CheckBatch and CheckStream take the mode per check.
    let batch = c
        .check_batch(CheckBatchRequest {
            checks: vec![peek("alice", 500), charge("alice", 1), peek("alice", 500)],
        })
        .await
        .unwrap()
        .into_inner();
    let allowed: Vec<bool> = batch.results.iter().map(|r| r.allowed).collect();
    assert_eq!(allowed, [true, true, false]);
    let answers: Vec<CheckResponse> = c
        .check_stream(tokio_stream::iter(vec![
            peek("alice", 499),
            peek("alice", 499),
        ]))
        .await
        .unwrap()
        .into_inner()
        .take(2)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert!(answers.iter().all(|r| r.allowed && r.remaining == 0));
    assert_eq!(check(&mut c, peek("alice", 1)).await.remaining, 498);
}

#[tokio::test]
async fn a_report_drives_a_bucket_into_debt_and_checks_wait_for_its_repayment() {
    let d = TestDaemon::with_config(CONFIG).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    // The LLM pattern: peek before, report the real tokens after.
    assert!(check(&mut c, peek("bob", 1)).await.allowed);
    // 900 tokens against a bucket of 600: 300 in debt, 10 refill a second.
    let r = report(&mut c, "bob", 900).await;
    assert_eq!(r.id, 9);
    assert_eq!(r.policy, "llm/tokens");
    assert_eq!((r.limit, r.remaining, r.debt), (600, 0, 300));
    // A check of one token waits for the debt and one token more: 30.1 s.
    assert_eq!(dur(&r.retry_after), Duration::from_millis(30_100));
    assert_eq!(dur(&r.reset_after), Duration::from_secs(90));
    let retry = r
        .headers
        .iter()
        .find(|h| h.name == "Retry-After")
        .map(|h| h.value.clone());
    assert_eq!(retry.as_deref(), Some("31"), "{:?}", r.headers);
    // The next check is denied with exactly that wait; a peek too.
    for req in [charge("bob", 1), peek("bob", 1), peek("bob", 0)] {
        let x = check(&mut c, req).await;
        assert!(!x.allowed, "{x:?}");
        assert_eq!(x.reason, DenyReason::Limited as i32);
        assert_eq!(x.remaining, 0);
    }
    assert_eq!(
        dur(&check(&mut c, charge("bob", 1)).await.retry_after),
        Duration::from_millis(30_100)
    );
    // One ns before the repayment it is still denied; at it, it passes.
    d.clock.advance(30_100_000_000 - 1);
    assert!(!check(&mut c, charge("bob", 1)).await.allowed);
    d.clock.advance(1);
    let x = check(&mut c, charge("bob", 1)).await;
    assert!(x.allowed && x.remaining == 0, "{x:?}");
    // The daily quota counted every token: 901 of 5000.
    let key_hash = d.engine.hasher().key_hash(b"bob");
    let view = d.engine.view();
    let used: Vec<(String, u64)> = view
        .usage(key_hash)
        .limits
        .iter()
        .map(|(l, v)| (l.name.clone(), l.capacity() - v.remaining))
        .collect();
    assert_eq!(
        used,
        [("tokens".to_owned(), 600), ("daily".to_owned(), 901)]
    );
}

#[tokio::test]
async fn a_report_takes_a_quota_past_its_amount_and_says_by_how_much() {
    let d = TestDaemon::with_config(CONFIG).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let r = report(&mut c, "q-key", 130).await;
    assert_eq!(
        (r.policy.as_str(), r.limit, r.remaining, r.debt),
        ("quota-only/daily", 100, 0, 30)
    );
    // The day's end (T0 is noon UTC) is the window's: checks wait for it.
    let x = check(&mut c, charge("q-key", 1)).await;
    assert!(!x.allowed);
    assert_eq!(dur(&x.retry_after), dur(&r.retry_after));
    assert_eq!(dur(&x.retry_after), Duration::from_secs(43_200));
    // Reports keep counting past it.
    let r = report(&mut c, "q-key", 5).await;
    assert_eq!((r.remaining, r.debt), (0, 35));
}

#[tokio::test]
async fn report_stream_answers_by_id_and_goes_on_after_an_invalid_report() {
    let d = TestDaemon::with_config(CONFIG).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let reports = vec![
        ReportRequest {
            key: "carol".into(),
            cost: 100,
            id: 1,
        },
        ReportRequest {
            key: String::new(),
            cost: 100,
            id: 2,
        },
        ReportRequest {
            key: "carol".into(),
            cost: 200_000,
            id: 3,
        },
        ReportRequest {
            key: "carol".into(),
            cost: 0,
            id: 4,
        },
    ];
    let answers: Vec<ReportResponse> = c
        .report_stream(tokio_stream::iter(reports))
        .await
        .unwrap()
        .into_inner()
        .take(4)
        .map(|r| r.unwrap())
        .collect()
        .await;
    let ids: Vec<u64> = answers.iter().map(|a| a.id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(answers[0].remaining, 500);
    assert_eq!(answers[1].reason, DenyReason::InvalidRequest as i32);
    assert_eq!(answers[1].error, "key: must not be empty");
    assert!(
        answers[2]
            .error
            .starts_with("cost: 200000 exceeds the maximum cost of 100000")
    );
    // Nothing charged by the refused ones; cost 0 means 1.
    assert_eq!(answers[3].remaining, 499);
}

#[tokio::test]
async fn bad_reports_and_modes_are_refused_naming_the_field_and_charge_nothing() {
    let d = TestDaemon::with_config(CONFIG).await;
    let mut c = RateLimiterClient::new(d.channel().await);
    let e = c
        .report(ReportRequest {
            key: String::new(),
            cost: 1,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "key: must not be empty");
    let e = c
        .report(ReportRequest {
            key: "k".into(),
            cost: 100_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c
        .check(CheckRequest {
            key: "k".into(),
            mode: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("mode: unknown value 7"),
        "{}",
        e.message()
    );
    assert_eq!(d.engine.store().tracked(), 0, "nothing charged");
}

#[tokio::test]
async fn a_blocked_keys_reports_charge_nothing() {
    let d = TestDaemon::with_config(&format!("{CONFIG}{}", admin_section(""))).await;
    let mut ops = d.ops().await;
    ops.set_override(quotad::api::pb::SetOverrideRequest {
        key: "mallory".into(),
        target: Some(quotad::api::pb::set_override_request::Target::Block(true)),
        reason: "test".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut c = RateLimiterClient::new(d.channel().await);
    let r = report(&mut c, "mallory", 50).await;
    assert_eq!(r.reason, DenyReason::Blocked as i32);
    assert_eq!(d.engine.store().tracked(), 0);
}

fn llm_descriptor(key: &str, hits: u64, report: bool) -> RateLimitDescriptor {
    let mut entries = vec![Entry {
        key: "api_key".into(),
        value: key.into(),
    }];
    if report {
        entries.push(Entry {
            key: "quotad_mode".into(),
            value: "report".into(),
        });
    }
    RateLimitDescriptor {
        entries,
        hits_addend: Some(UInt64Value { value: hits }),
        ..Default::default()
    }
}

/// Envoy's pattern (`hits_addend: {number: 0}` on the request, a
/// stream-done policy with `quotad_mode: report` and the tokens): through
/// Envoy's own generated RLS client.
#[tokio::test]
async fn envoys_stream_done_reports_charge_unconditionally() {
    let d = TestDaemon::with_config(CONFIG).await;
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let call = |desc: RateLimitDescriptor| RateLimitRequest {
        domain: "llm".into(),
        descriptors: vec![desc],
        hits_addend: 0,
    };
    // Request time: a check that spends nothing.
    let r = rls
        .should_rate_limit(call(llm_descriptor("dave", 0, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);
    // Stream done: 1000 tokens, more than the bucket holds, all charged.
    let r = rls
        .should_rate_limit(call(llm_descriptor("dave", 1000, true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32, "a report is never refused");
    // The next request's check is over the limit until the debt is repaid
    // (400 tokens at 10 a second: 40 s).
    let r = rls
        .should_rate_limit(call(llm_descriptor("dave", 0, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    d.advance_ms(40_000);
    let r = rls
        .should_rate_limit(call(llm_descriptor("dave", 0, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, Code::Ok as i32);
    // The report's cells are the key's own: the native API sees them.
    let mut c = RateLimiterClient::new(d.channel().await);
    assert_eq!(check(&mut c, charge("dave", 0)).await.remaining, 0);
    // A mode other than `report` is refused, naming the entry.
    let mut bad = llm_descriptor("dave", 1, true);
    bad.entries[1].value = "later".into();
    let e = rls.should_rate_limit(call(bad)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("descriptors[0].entries[1].value:"),
        "{}",
        e.message()
    );
}
