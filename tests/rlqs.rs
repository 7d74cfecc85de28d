//! Envoy RLQS on one node, driven by Envoy's own generated client
//! (`envoy-types`): fair shares that follow demand and never sum past the
//! rate, Envoy's quirks (first report with time elapsed 0, answers at
//! first sighting after a reconnect, whole-second fields), operators'
//! blocks, reloads that remove a rule, idle buckets, bad input and caps,
//! the operators' view and the metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy as Wire};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::BucketAction as Kind;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_client::RateLimitQuotaServiceClient;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    BucketId, RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::support::{TestDaemon, admin_section, key_ref, metric, override_of};

pub(crate) const DOMAINS: &str = r#"
  domains:
    shop:
      - match: { tier: "blocked" }
        deny: true
      - match: { tenant: "*" }
        rate: 100
        per: second
        burst: 200
      - match: { zone: "*" }
        allow: true
"#;

pub(crate) fn config(rlqs_extra: &str) -> String {
    format!(
        "default_plan: open\nplans: {{ open: {{}} }}\nserver: {{ shutdown_grace: 5s }}\nreload: {{ watch: false }}\nrlqs:\n{rlqs_extra}{DOMAINS}{}",
        admin_section("")
    )
}

/// What an Envoy holds for a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Held {
    Bucket { rate: f64, max_tokens: u32 },
    Allow,
    Deny,
    Abandoned,
}

impl Held {
    pub(crate) fn rate(&self) -> f64 {
        match self {
            Held::Bucket { rate, .. } => *rate,
            _ => 0.0,
        }
    }
}

pub(crate) type Id = Vec<(String, String)>;

pub(crate) fn id(pairs: &[(&str, &str)]) -> Id {
    let mut v: Id = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

/// A simulated Envoy: one stream, what it holds per bucket, and a check
/// of every action it gets against what Envoy's filter needs.
pub(crate) struct Envoy {
    tx: mpsc::Sender<RateLimitQuotaUsageReports>,
    rx: Streaming<RateLimitQuotaResponse>,
    pub(crate) held: BTreeMap<Id, Held>,
    pub(crate) messages: usize,
}

impl Envoy {
    pub(crate) async fn connect(channel: Channel) -> Result<Envoy, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut client = RateLimitQuotaServiceClient::new(channel);
        let rx = client
            .stream_rate_limit_quotas(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Envoy {
            tx,
            rx,
            held: BTreeMap::new(),
            messages: 0,
        })
    }

    /// Sends one report: each bucket with requests (allowed, denied) and
    /// the time elapsed Envoy says (whole seconds).
    pub(crate) async fn send(&self, domain: &str, buckets: &[(&Id, u64, u64, i64)]) {
        let usages = buckets
            .iter()
            .map(|(id, allowed, denied, secs)| BucketQuotaUsage {
                bucket_id: Some(BucketId {
                    bucket: id.iter().cloned().collect(),
                }),
                time_elapsed: Some(PbDuration {
                    seconds: *secs,
                    nanos: 0,
                }),
                num_requests_allowed: *allowed,
                num_requests_denied: *denied,
            })
            .collect();
        self.send_raw(RateLimitQuotaUsageReports {
            domain: domain.to_owned(),
            bucket_quota_usages: usages,
        })
        .await;
    }

    pub(crate) async fn send_raw(&self, r: RateLimitQuotaUsageReports) {
        self.tx.send(r).await.expect("the stream takes reports");
    }

    /// The next message within `wait`: `Ok(None)` if none came.
    pub(crate) async fn next(
        &mut self,
        wait: Duration,
    ) -> Result<Option<RateLimitQuotaResponse>, tonic::Status> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(m))) => {
                self.apply(&m);
                Ok(Some(m))
            }
            Ok(Ok(None)) => Err(tonic::Status::ok("stream ended")),
            Ok(Err(s)) => Err(s),
        }
    }

    /// Reads until nothing comes for 300 ms.
    pub(crate) async fn drain(&mut self) {
        while let Ok(Some(_)) = self.next(Duration::from_millis(300)).await {}
    }

    /// The stream's ending status (after at most 15 s).
    pub(crate) async fn ended(&mut self) -> tonic::Status {
        for _ in 0..150 {
            match self.next(Duration::from_millis(100)).await {
                Ok(_) => {}
                Err(s) => return s,
            }
        }
        panic!("the stream did not end");
    }

    /// Takes in a message, checking each action as Envoy would read it.
    fn apply(&mut self, m: &RateLimitQuotaResponse) {
        self.messages += 1;
        for a in &m.bucket_action {
            let bucket = a.bucket_id.as_ref().expect("every action names its bucket");
            let mut key: Id = bucket.bucket.clone().into_iter().collect();
            key.sort();
            let held = match a.bucket_action.as_ref().expect("an action") {
                Kind::AbandonAction(_) => Held::Abandoned,
                Kind::QuotaAssignmentAction(q) => {
                    let ttl = q.assignment_time_to_live.expect("a time to live");
                    assert!(ttl.seconds >= 10 && ttl.nanos == 0, "ttl {ttl:?}");
                    let s = q.rate_limit_strategy.as_ref().expect("a strategy");
                    match s.strategy.expect("a strategy set") {
                        Wire::BlanketRule(r) if r == BlanketRule::AllowAll as i32 => Held::Allow,
                        Wire::BlanketRule(_) => Held::Deny,
                        Wire::RequestsPerTimeUnit(_) => {
                            panic!("Envoy ignores requests_per_time_unit")
                        }
                        Wire::TokenBucket(tb) => {
                            let per_fill = tb.tokens_per_fill.expect("tokens_per_fill set").value;
                            let fill = tb.fill_interval.expect("fill_interval set");
                            assert!(fill.seconds >= 1 && fill.nanos == 0, "fill {fill:?}");
                            assert!(tb.max_tokens >= 1);
                            Held::Bucket {
                                rate: f64::from(per_fill) / fill.seconds as f64,
                                max_tokens: tb.max_tokens,
                            }
                        }
                    }
                }
            };
            self.held.insert(key, held);
        }
    }
}

async fn envoys(d: &TestDaemon, n: usize) -> Vec<Envoy> {
    let mut out = Vec::new();
    for _ in 0..n {
        // One connection each, as separate Envoys have.
        out.push(
            Envoy::connect(d.channel().await)
                .await
                .expect("stream opens"),
        );
    }
    out
}

/// Each Envoy reports bucket `b` for the first time (one request, time
/// elapsed 0), and every answer and push is read.
pub(crate) async fn first_reports(es: &mut [Envoy], b: &Id) {
    for e in es.iter_mut() {
        e.send("shop", &[(b, 1, 0, 0)]).await;
    }
    drain_all(es).await;
}

pub(crate) async fn drain_all(es: &mut [Envoy]) {
    for e in es.iter_mut() {
        e.drain().await;
    }
}

pub(crate) fn rates(es: &[Envoy], bucket: &Id) -> Vec<f64> {
    es.iter()
        .map(|e| e.held.get(bucket).map_or(0.0, Held::rate))
        .collect()
}

/// Each Envoy reports `per_s` requests a second over 5 s (a fifth
/// allowed), one after the other, each answered before the next reports
/// (so the order, and what each holds, is the same every run).
pub(crate) async fn report_in_turn(es: &mut [Envoy], b: &Id, per_s: &[u64]) {
    for (e, &n) in es.iter_mut().zip(per_s) {
        e.send("shop", &[(b, n, n * 4, 5)]).await;
        e.drain().await;
    }
    drain_all(es).await;
}

#[tokio::test]
async fn shares_follow_demand_never_sum_past_the_rate_and_flow_from_idle_envoys() {
    let d = TestDaemon::with_config(&config("")).await;
    let mut es = envoys(&d, 3).await;
    let b = id(&[("tenant", "acme")]);
    // First reports: time elapsed 0, answered at once, equal shares.
    for e in &mut es {
        e.send("shop", &[(&b, 1, 0, 0)]).await;
        let first = e
            .next(Duration::from_secs(2))
            .await
            .unwrap()
            .expect("answered at once");
        assert_eq!(first.bucket_action.len(), 1);
    }
    drain_all(&mut es).await;
    let r = rates(&es, &b);
    assert!(r.iter().sum::<f64>() <= 100.0 + 1e-9, "{r:?}");
    assert!(
        r.iter().all(|x| (x - 100.0 / 3.0).abs() < 2.0),
        "equal shares: {r:?}"
    );
    // Demand 6:3:1 at five times the limit, reported every 5 s.
    for _ in 0..2 {
        d.advance_ms(5_000);
        report_in_turn(&mut es, &b, &[300, 150, 50]).await;
        let r = rates(&es, &b);
        assert!(
            r.iter().sum::<f64>() <= 100.0 + 1e-9,
            "never past the rate: {r:?}"
        );
    }
    let r = rates(&es, &b);
    assert!(r[0] > r[1] && r[1] > r[2], "ordered by demand: {r:?}");
    assert!(
        r.iter().sum::<f64>() >= 90.0,
        "the rate is handed out: {r:?}"
    );
    // The third goes idle: within two report periods its share is the
    // others'.
    for _ in 0..2 {
        d.advance_ms(5_000);
        report_in_turn(&mut es, &b, &[300, 150, 0]).await;
    }
    let r = rates(&es, &b);
    assert!(
        r[2] <= 100.0 * 0.05 / 3.0 + 0.01,
        "idle keeps the floor only: {r:?}"
    );
    assert!(r[0] + r[1] >= 86.0, "busy ones took it: {r:?}");
    assert!(r.iter().sum::<f64>() <= 100.0 + 1e-9, "{r:?}");
    // Bursts are split the same way, and never past the burst.
    let tokens: u32 = es
        .iter()
        .map(|e| match e.held.get(&b) {
            Some(Held::Bucket { max_tokens, .. }) => *max_tokens,
            _ => 0,
        })
        .sum();
    assert!((150..=202).contains(&tokens), "burst 200 split: {tokens}");
}

#[tokio::test]
async fn rules_decide_blanket_answers_and_unmatched_buckets_are_allowed() {
    let d = TestDaemon::with_config(&config("")).await;
    let mut e = Envoy::connect(d.channel().await).await.unwrap();
    let blocked = id(&[("tier", "blocked"), ("tenant", "x")]);
    let zone = id(&[("zone", "eu")]);
    let none = id(&[("path", "/")]);
    e.send(
        "shop",
        &[(&blocked, 1, 0, 0), (&zone, 1, 0, 0), (&none, 1, 0, 0)],
    )
    .await;
    let m = e
        .next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(
        m.bucket_action.len(),
        3,
        "every reported bucket, in one answer"
    );
    assert_eq!(e.held[&blocked], Held::Deny);
    assert_eq!(e.held[&zone], Held::Allow);
    assert_eq!(e.held[&none], Held::Allow);
    // A domain without rules: everything ALLOW_ALL.
    let mut other = Envoy::connect(d.channel().await).await.unwrap();
    let t = id(&[("tenant", "acme")]);
    other.send("elsewhere", &[(&t, 5, 0, 0)]).await;
    other
        .next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(other.held[&t], Held::Allow);
}

#[tokio::test]
async fn an_identical_assignment_renews_and_a_reconnect_is_answered_at_once() {
    let d = TestDaemon::with_config(&config("")).await;
    let b = id(&[("tenant", "acme")]);
    let mut e = Envoy::connect(d.channel().await).await.unwrap();
    e.send("shop", &[(&b, 1, 0, 0)]).await;
    e.next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("answered");
    let first = e.held[&b];
    // Steady demand: every report is answered with the same assignment.
    for _ in 0..3 {
        d.advance_ms(5_000);
        e.send("shop", &[(&b, 50, 0, 5)]).await;
        e.next(Duration::from_secs(2))
            .await
            .unwrap()
            .expect("renewed");
        assert_eq!(e.held[&b], first);
    }
    // The Envoy reconnects and reports everything again (time elapsed
    // its own): answered at its first sighting on the new stream.
    drop(e);
    let mut again = Envoy::connect(d.channel().await).await.unwrap();
    again.send("shop", &[(&b, 250, 0, 5)]).await;
    again
        .next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("answered at once");
    assert!(matches!(again.held[&b], Held::Bucket { .. }));
}

#[tokio::test]
async fn a_block_reaches_every_stream_at_once_and_lifting_it_restores_the_share() {
    let d = TestDaemon::with_config(&config("")).await;
    let mut es = envoys(&d, 2).await;
    let b = id(&[("tenant", "acme"), ("api_key", "acme-secret-key")]);
    let other = id(&[("tenant", "zed"), ("api_key", "zed-key")]);
    for e in &mut es {
        e.send("shop", &[(&b, 1, 0, 0), (&other, 1, 0, 0)]).await;
    }
    drain_all(&mut es).await;
    let mut ops = d.ops().await;
    ops.set_override(override_of(
        "acme-secret-key",
        quotad::api::pb::set_override_request::Target::Block(true),
    ))
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    for e in &mut es {
        while e.held[&b] != Held::Deny {
            e.next(Duration::from_millis(100)).await.unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "DENY_ALL within 1 s"
            );
        }
        assert!(
            matches!(e.held[&other], Held::Bucket { .. }),
            "others untouched"
        );
    }
    // The operators' view: the key's bucket, blocked.
    let u = ops
        .get_usage(key_ref("acme-secret-key"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.rlqs.len(), 1, "{u:?}");
    assert!(u.rlqs[0].blocked);
    assert_eq!(
        u.rlqs[0].bucket.get("api_key").map(String::as_str),
        Some("<key>")
    );
    ops.delete_override(key_ref("acme-secret-key"))
        .await
        .unwrap();
    for e in &mut es {
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while !matches!(e.held[&b], Held::Bucket { .. }) {
            e.next(Duration::from_millis(100)).await.unwrap();
            assert!(
                tokio::time::Instant::now() < until,
                "the share back within 1 s"
            );
        }
    }
    let r = rates(&es, &b);
    assert!(
        r.iter().sum::<f64>() <= 100.0 + 1e-9 && r.iter().all(|x| *x > 0.0),
        "{r:?}"
    );
}

#[tokio::test]
async fn usage_shows_the_global_rate_and_each_envoys_share() {
    let d = TestDaemon::with_config(&config("")).await;
    let mut es = envoys(&d, 2).await;
    let b = id(&[("tenant", "acme"), ("api_key", "k1")]);
    first_reports(&mut es, &b).await;
    d.advance_ms(5_000);
    for (e, n) in es.iter_mut().zip([400u64, 100]) {
        e.send("shop", &[(&b, n, 0, 5)]).await;
    }
    drain_all(&mut es).await;
    let mut ops = d.ops().await;
    let u = ops.get_usage(key_ref("k1")).await.unwrap().into_inner();
    let r = &u.rlqs[0];
    assert_eq!(
        (r.domain.as_str(), r.action.as_str()),
        ("shop", "token_bucket")
    );
    assert_eq!((r.global_rate, r.burst, r.envoys), (100.0, 200, 2));
    assert!((r.demand - 100.0).abs() < 1e-6, "80/s + 20/s: {r:?}");
    assert_eq!(r.rule, "tenant=*: 100/second, burst 200");
    let mut demands: Vec<f64> = r.shares.iter().filter_map(|s| s.demand).collect();
    demands.sort_by(f64::total_cmp);
    assert_eq!(demands, [20.0, 80.0]);
    let held: f64 = r.shares.iter().map(|s| s.rate).sum();
    assert!(held <= 100.0 && held > 86.0, "{r:?}");
    assert!(r.shares.iter().all(|s| s.envoy.starts_with("127.0.0.1:")));
}

#[tokio::test]
async fn a_reload_that_removes_a_rule_abandons_its_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quotad.yaml");
    std::fs::write(&path, config("")).unwrap();
    let d = TestDaemon::from_file(&path).await;
    let mut e = Envoy::connect(d.channel().await).await.unwrap();
    let t = id(&[("tenant", "acme")]);
    let z = id(&[("zone", "eu")]);
    e.send("shop", &[(&t, 1, 0, 0), (&z, 1, 0, 0)]).await;
    e.next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("answered");
    // The tenant rule goes; the zone rule's rate changes nothing (allow).
    let without = config("").replace(
        "      - match: { tenant: \"*\" }\n        rate: 100\n        per: second\n        burst: 200\n",
        "",
    );
    assert_ne!(without, config(""));
    std::fs::write(&path, without).unwrap();
    let mut ops = d.ops().await;
    ops.reload(quotad::api::pb::ReloadRequest {}).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while e.held[&t] != Held::Abandoned {
        e.next(Duration::from_millis(100)).await.unwrap();
        assert!(
            tokio::time::Instant::now() < until,
            "abandoned after the reload"
        );
    }
    assert_eq!(e.held[&z], Held::Allow);
    assert!(
        metric(
            d.http_addr,
            "quotad_rlqs_abandons_total{reason=\"rule_removed\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_bucket_without_traffic_is_abandoned_and_its_share_goes_to_the_others() {
    let d = TestDaemon::with_config(&config("  idle_abandon_after: 10s\n")).await;
    let mut es = envoys(&d, 2).await;
    let b = id(&[("tenant", "acme")]);
    first_reports(&mut es, &b).await;
    // Both busy, then the second has no traffic.
    d.advance_ms(5_000);
    for e in &mut es {
        e.send("shop", &[(&b, 250, 0, 5)]).await;
    }
    drain_all(&mut es).await;
    let half = es[0].held[&b].rate();
    assert!(half < 50.0, "{half}");
    for _ in 0..3 {
        d.advance_ms(5_000);
        es[0].send("shop", &[(&b, 500, 0, 5)]).await;
        // As Envoy: a bucket abandoned is no longer reported.
        if es[1].held[&b] != Held::Abandoned {
            es[1].send("shop", &[(&b, 0, 0, 5)]).await;
        }
        drain_all(&mut es).await;
    }
    assert_eq!(es[1].held[&b], Held::Abandoned);
    // The whole rate, less the margin.
    assert!(
        es[0].held[&b].rate() >= 86.0,
        "the rate: {:?}",
        es[0].held[&b]
    );
    assert!(metric(d.http_addr, "quotad_rlqs_abandons_total{reason=\"idle\"}").await >= 1.0);
}

#[tokio::test]
async fn bad_reports_end_only_their_own_stream_with_invalid_argument() {
    let d = TestDaemon::with_config(&config("  max_bucket_entries: 4\n")).await;
    let good_id = id(&[("tenant", "acme")]);
    let mut good = Envoy::connect(d.channel().await).await.unwrap();
    good.send("shop", &[(&good_id, 1, 0, 0)]).await;
    good.next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("answered");
    let cases: Vec<(Vec<RateLimitQuotaUsageReports>, &str)> = vec![
        (
            vec![report("", &[("tenant", "a")])],
            "domain: must not be empty",
        ),
        (
            vec![
                report("shop", &[("tenant", "a")]),
                report("other", &[("tenant", "a")]),
            ],
            "domain: the stream's domain is 'shop', a message says 'other'",
        ),
        (
            vec![report("shop", &[])],
            "bucket_quota_usages[0].bucket_id: must have at least one entry",
        ),
        (
            vec![report("shop", &[("", "a")])],
            "bucket_quota_usages[0].bucket_id.bucket: entry keys and values must not be empty",
        ),
        (
            vec![report("shop", &[("tenant", "")])],
            "bucket_quota_usages[0].bucket_id.bucket: entry keys and values must not be empty",
        ),
        (
            vec![report(
                "shop",
                &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")],
            )],
            "bucket_quota_usages[0].bucket_id.bucket: 5 items exceed the maximum of 4",
        ),
    ];
    for (reports, want) in cases {
        let mut bad = Envoy::connect(d.channel().await).await.unwrap();
        for r in reports {
            bad.send_raw(r).await;
        }
        let status = bad.ended().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(want),
            "{} vs {want}",
            status.message()
        );
    }
    // The good stream still works.
    d.advance_ms(5_000);
    good.send("shop", &[(&good_id, 10, 0, 5)]).await;
    good.next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("still answered");
    assert!(metric(d.http_addr, "quotad_rlqs_refused_total{reason=\"invalid\"}").await >= 6.0);
}

fn report(domain: &str, pairs: &[(&str, &str)]) -> RateLimitQuotaUsageReports {
    RateLimitQuotaUsageReports {
        domain: domain.to_owned(),
        bucket_quota_usages: vec![BucketQuotaUsage {
            bucket_id: Some(BucketId {
                bucket: pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }),
            time_elapsed: None,
            num_requests_allowed: 1,
            num_requests_denied: 0,
        }],
    }
}

#[tokio::test]
async fn caps_hold_streams_per_connection_buckets_per_stream_and_idle_streams() {
    let d = TestDaemon::with_config(&config(
        "  max_streams_per_connection: 2\n  max_buckets_per_stream: 3\n  stream_idle_timeout: 10s\n",
    ))
    .await;
    let channel = d.channel().await;
    let _a = Envoy::connect(channel.clone()).await.unwrap();
    let _b = Envoy::connect(channel.clone()).await.unwrap();
    let third = Envoy::connect(channel.clone()).await;
    let status = third
        .err()
        .expect("a third stream on one connection is refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("rlqs.max_streams_per_connection (2)"),
        "{status:?}"
    );
    // Another connection may.
    let mut e = Envoy::connect(d.channel().await).await.unwrap();
    let ids: Vec<Id> = (0..4)
        .map(|i| id(&[("tenant", &format!("t{i}"))]))
        .collect();
    e.send(
        "shop",
        &[(&ids[0], 1, 0, 0), (&ids[1], 1, 0, 0), (&ids[2], 1, 0, 0)],
    )
    .await;
    e.next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("three fit");
    e.send("shop", &[(&ids[3], 1, 0, 0)]).await;
    let status = e.ended().await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("rlqs.max_buckets_per_stream (3)"),
        "{status:?}"
    );
    // A stream that reports nothing is closed.
    let mut quiet = Envoy::connect(d.channel().await).await.unwrap();
    let status = quiet.ended().await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("rlqs.stream_idle_timeout"));
    // Closed streams are forgotten; the shares the refused one held stay
    // reserved until they expire in its Envoy.
    drop((_a, _b));
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while metric(d.http_addr, "quotad_rlqs_streams").await > 0.0 {
        assert!(tokio::time::Instant::now() < until, "streams forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(d.http_addr, "quotad_rlqs_tracked").await, 3.0);
    d.advance_ms(30_000);
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while metric(d.http_addr, "quotad_rlqs_tracked").await > 0.0 {
        assert!(
            tokio::time::Instant::now() < until,
            "expired shares forgotten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_count_streams_buckets_assignments_and_per_rule_demand() {
    let d = TestDaemon::with_config(&config("")).await;
    let mut es = envoys(&d, 2).await;
    let b = id(&[("tenant", "acme")]);
    first_reports(&mut es, &b).await;
    d.advance_ms(5_000);
    for e in &mut es {
        e.send("shop", &[(&b, 100, 150, 5)]).await;
    }
    drain_all(&mut es).await;
    let m = |s: &'static str| metric(d.http_addr, s);
    assert_eq!(m("quotad_rlqs_streams").await, 2.0);
    assert_eq!(m("quotad_rlqs_buckets").await, 1.0);
    assert_eq!(m("quotad_rlqs_tracked").await, 2.0);
    assert!(
        m("quotad_rlqs_assignments_total{action=\"token_bucket\",kind=\"changed\"}").await >= 2.0
    );
    assert!(
        m("quotad_rlqs_assignments_total{action=\"token_bucket\",kind=\"renewed\"}").await >= 1.0
    );
    assert_eq!(
        m("quotad_rlqs_demand{domain=\"shop\",rule=\"1\"}").await,
        100.0
    );
    let assigned = m("quotad_rlqs_assigned_rate{domain=\"shop\",rule=\"1\"}").await;
    assert!(assigned > 86.0 && assigned <= 100.0, "{assigned}");
}

#[tokio::test]
async fn a_closed_streams_share_stays_reserved_until_it_expires_in_its_envoy() {
    let d = TestDaemon::with_config(&config("")).await;
    let mut es = envoys(&d, 2).await;
    let b = id(&[("tenant", "acme")]);
    first_reports(&mut es, &b).await;
    d.advance_ms(5_000);
    report_in_turn(&mut es, &b, &[100, 100]).await;
    let gone = es[1].held[&b].rate();
    assert!(gone > 40.0, "{gone}");
    // The second Envoy's stream closes; it still enforces what it holds
    // until its assignment expires (30 s after it was sent).
    drop(es.pop());
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while d.engine.rlqs().sizes().0 > 1 {
        assert!(tokio::time::Instant::now() < until, "the stream closes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        d.advance_ms(5_000);
        es[0].send("shop", &[(&b, 1_000, 4_000, 5)]).await;
        drain_all(&mut es).await;
        let mine = es[0].held[&b].rate();
        assert!(mine + gone <= 100.0 + 1e-9, "{mine} + {gone}");
    }
    // Expired: the rest goes to the Envoy still reporting.
    d.advance_ms(20_000);
    // The next report finds the reservation expired.
    es[0].send("shop", &[(&b, 1_000, 4_000, 5)]).await;
    drain_all(&mut es).await;
    assert!(es[0].held[&b].rate() >= 86.0, "{:?}", es[0].held[&b]);
}

#[tokio::test]
async fn with_many_buckets_every_shared_one_is_exchanged_within_the_refresh() {
    use quotad::engine::rlqs::Usage;
    let d = TestDaemon::with_config(&config("  max_buckets_per_stream: 21000\n")).await;
    let engine = &d.engine;
    engine.rlqs_exchange();
    // 40 000 shared buckets (and 1 000 allowed ones) on two streams,
    // reported every 5 s: more changes per round than the floor of 2 000.
    let streams: Vec<_> = (0..2)
        .map(|s| engine.rlqs_open(format!("127.0.0.1:{s}"), s).unwrap())
        .collect();
    let report = |elapsed: u64| {
        for (s, stream) in streams.iter().enumerate() {
            let usages = (0..20_500)
                .map(|i| Usage {
                    id: if i < 20_000 {
                        [("tenant".to_owned(), format!("t{s}-{i}"))]
                            .into_iter()
                            .collect()
                    } else {
                        [("zone".to_owned(), format!("z{s}-{i}"))]
                            .into_iter()
                            .collect()
                    },
                    allowed: 3,
                    denied: 0,
                    elapsed,
                })
                .collect();
            stream.report("shop", usages).unwrap();
        }
    };
    report(0);
    let mut last: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut worst = 0;
    for round in 0..60u64 {
        if round % 10 == 0 && round > 0 {
            report(5_000_000_000);
        }
        for p in engine.rlqs_local_demands(2_000, round + 1) {
            if let Some(prev) = last.insert(p.bucket, round) {
                worst = worst.max(round - prev);
            }
            assert!(p.demand.count() > 0, "only shared buckets are published");
        }
        d.advance_ms(500);
    }
    assert_eq!(last.len(), 40_000, "every shared bucket, no allowed one");
    // 6 000 a round (three twentieths of 40 000): a report marks every
    // bucket changed, and 40 000 take seven rounds; every bucket is
    // published again within its Envoys' report period (10 rounds) and
    // two, far within what other nodes wait before dropping an entry
    // (15 s at least: 30 rounds).
    assert!(worst <= 12, "a bucket waited {worst} rounds");
    assert!(last.values().all(|r| 59 - r <= 12));
}

/// A config without plans may serve RLQS alone, and its buckets keyed by
/// an API key follow the rules: no plan is no operator's block.
#[tokio::test]
async fn a_config_without_plans_serves_rlqs_and_does_not_deny_keyed_buckets() {
    let config =
        format!("server: {{ shutdown_grace: 5s }}\nreload: {{ watch: false }}\nrlqs:\n{DOMAINS}");
    let d = TestDaemon::with_config(&config).await;
    let mut e = Envoy::connect(d.channel().await).await.unwrap();
    let keyed = id(&[("api_key", "k1"), ("zone", "eu")]);
    let tenant = id(&[("api_key", "k2"), ("tenant", "acme")]);
    e.send("shop", &[(&keyed, 1, 0, 0), (&tenant, 1, 0, 0)])
        .await;
    e.next(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(e.held[&keyed], Held::Allow);
    assert!(e.held[&tenant].rate() > 0.0, "{:?}", e.held[&tenant]);
}
