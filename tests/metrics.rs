//! `/metrics` scraped from a running daemon after known traffic, read with
//! a real Prometheus text-format parser: exact counts, no raw key,
//! nothing that grows with the number of keys, `promtool check metrics`;
//! and readiness (strict limits without Redis, reloads that fail).

use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use prometheus_parse::{Scrape, Value};
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::set_override_request::Target;
use quotad::api::pb::{CheckBatchRequest, CheckRequest, ReloadRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::redis_sync::strict_within;
use crate::support::rls::{descriptor, request};
use crate::support::{CONFIG, RedisServer, TestDaemon, admin_section, override_of, write_file};

/// A scrape, parsed.
struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    /// The value of the one sample of `name` whose labels include
    /// `labels` (none, or two, is a test error).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.try_get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.text))
    }

    /// The value of the one sample of `name` whose labels include
    /// `labels`, if there is one (two are a test error).
    fn try_get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(_) | Value::Summary(_) => f64::NAN,
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
        found.first().copied()
    }

    /// The series in the scrape: name and labels, values left out.
    fn series(&self) -> BTreeSet<String> {
        self.scrape
            .samples
            .iter()
            .map(|s| {
                let mut labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                format!("{}{{{}}}", s.metric, labels.join(","))
            })
            .collect()
    }
}

async fn scrape(d: &TestDaemon) -> Metrics {
    let (status, text) = d.http_get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("prometheus text");
    Metrics { text, scrape }
}

/// `promtool check metrics` on `text`, when the test script installed it
/// (`QUOTAD_PROMTOOL`) or it is on the PATH.
fn promtool_check(text: &str) {
    use std::io::Write;
    let tool = std::env::var("QUOTAD_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var("QUOTAD_PROMTOOL").is_err() => {
            eprintln!("promtool not found ({e}): scripts/test.sh installs it");
            return;
        }
        Err(e) => panic!("QUOTAD_PROMTOOL={tool}: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}",
        crate::support::printed(&out)
    );
}

/// An envoyproxy/ratelimit domain `shop`: `/cart` in shadow mode, `/buy`
/// enforced, one a minute each.
const SHOP: &str = r#"
domain: shop
descriptors:
  - key: path
    value: /cart
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: path
    value: /buy
    rate_limit: { unit: minute, requests_per_unit: 1 }
"#;

async fn native(d: &TestDaemon) -> RateLimiterClient<tonic::transport::Channel> {
    RateLimiterClient::new(d.channel().await)
}

fn check_of(key: &str, cost: u64) -> CheckRequest {
    CheckRequest {
        key: key.into(),
        cost,
        id: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_scripted_scenario_reads_back_exactly_from_metrics() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "shop.yaml", SHOP);
    let config = format!("{CONFIG}rls_files: [shop.yaml]\n{}", admin_section(""));
    let d = TestDaemon::from_file(&write_file(dir.path(), "quotad.yaml", &config)).await;
    let mut c = native(&d).await;

    // Native Check: gold ×3, tiny ×3 (burst 2), open ×1, a default-plan
    // key ×1, one refused (empty key), one blocked key.
    for key in [
        "gold-key",
        "gold-key",
        "gold-key",
        "open-key",
        "user-secret-XYZ",
    ] {
        assert!(
            c.check(check_of(key, 1))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
    }
    let tiny: Vec<bool> = futures_util::future::join_all((0..3).map(|_| {
        let mut c = c.clone();
        async move {
            c.check(check_of("tiny-key", 1))
                .await
                .unwrap()
                .into_inner()
                .allowed
        }
    }))
    .await;
    assert_eq!(tiny.iter().filter(|a| **a).count(), 2);
    let refused = c
        .check(tonic::Request::new(check_of("", 1)))
        .await
        .expect_err("empty key");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let mut ops = d.ops().await;
    ops.set_override(override_of("blocked-key", Target::Block(true)))
        .await
        .expect("block");
    // A key with limits of its own counts as `(override)`, whatever its
    // override's name.
    let own = quotad::api::pb::LimitList {
        limits: vec![quotad::api::pb::LimitSpec {
            name: "per-second".into(),
            rate: 5,
            per: "second".into(),
            burst: 5,
            ..Default::default()
        }],
    };
    ops.set_override(override_of("own-key", Target::Limits(own)))
        .await
        .expect("own limits");
    assert!(
        c.check(check_of("own-key", 1))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    // A change the caller may not make: refused, and counted as such.
    let viewer = d.admin(Some(crate::support::VIEWER_TOKEN)).await;
    let denied = viewer
        .clone()
        .set_override(override_of("gold-key", Target::Block(true)))
        .await
        .expect_err("read scope only");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        !c.check(check_of("blocked-key", 1))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // CheckBatch: gold allowed, tiny denied; one batch refused (11 > 10).
    let batch = |keys: &[&str]| CheckBatchRequest {
        checks: keys.iter().map(|k| check_of(k, 1)).collect(),
    };
    let r = c
        .check_batch(batch(&["gold-key", "tiny-key"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.results.iter().map(|r| r.allowed).collect::<Vec<_>>(),
        [true, false]
    );
    assert!(c.check_batch(batch(&["gold-key"; 11])).await.is_err());

    // CheckStream: gold ×2, one refused message (cost above the cap).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for req in [
        check_of("gold-key", 1),
        check_of("gold-key", 1),
        check_of("gold-key", 5000),
    ] {
        tx.send(req).await.unwrap();
    }
    drop(tx);
    let answers = c
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap();
    // The stream's request id comes back, for quoting refused messages.
    assert_eq!(
        answers.metadata().get("x-request-id").map(|v| v.len()),
        Some(16)
    );
    let mut answers = answers.into_inner();
    let mut errors = 0;
    while let Some(a) = answers.message().await.unwrap() {
        errors += usize::from(!a.error.is_empty());
    }
    assert_eq!(errors, 1);

    // Envoy RLS: a plan domain, a shadowed rule twice, an enforced rule
    // twice, a domain that is not ours, a refused request.
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let mut ask = async |domain: &str, entries: &[(&str, &str)]| {
        rls.should_rate_limit(request(domain, vec![descriptor(entries)], 1))
            .await
            .map(|r| r.into_inner().overall_code)
    };
    assert_eq!(ask("edge", &[("api_key", "gold-key")]).await.unwrap(), 1);
    for _ in 0..2 {
        assert_eq!(
            ask("shop", &[("path", "/cart")]).await.unwrap(),
            1,
            "shadow answers OK"
        );
    }
    assert_eq!(ask("shop", &[("path", "/buy")]).await.unwrap(), 1);
    assert_eq!(
        ask("shop", &[("path", "/buy")]).await.unwrap(),
        2,
        "OVER_LIMIT"
    );
    assert_eq!(ask("someone-elses", &[("x", "y")]).await.unwrap(), 1);
    assert!(ask("", &[("x", "y")]).await.is_err());

    let m = scrape(&d).await;
    let checks = |api: &str, result: &str, label: (&str, &str)| {
        m.get(
            "quotad_checks_total",
            &[("api", api), ("door", "grpc"), ("result", result), label],
        )
    };
    let expected = [
        ("native", "allowed", ("plan", "gold"), 3.0),
        ("native", "allowed", ("plan", "tiny"), 2.0),
        ("native", "denied", ("plan", "tiny"), 1.0),
        ("native", "allowed", ("plan", "open"), 1.0),
        ("native", "allowed", ("plan", "free"), 1.0),
        ("native", "denied", ("plan", "(blocked)"), 1.0),
        ("native", "allowed", ("plan", "(override)"), 1.0),
        ("native", "error", ("plan", "(none)"), 1.0),
        ("native", "denied", ("plan", "gold"), 0.0),
        ("batch", "allowed", ("plan", "gold"), 1.0),
        ("batch", "denied", ("plan", "tiny"), 1.0),
        ("batch", "error", ("plan", "(none)"), 1.0),
        ("stream", "allowed", ("plan", "gold"), 2.0),
        ("stream", "error", ("plan", "(none)"), 1.0),
        ("rls", "allowed", ("domain", "edge"), 1.0),
        ("rls", "allowed", ("domain", "shop"), 2.0),
        ("rls", "shadow_denied", ("domain", "shop"), 1.0),
        ("rls", "denied", ("domain", "shop"), 1.0),
        ("rls", "allowed", ("domain", "(other)"), 1.0),
        ("rls", "error", ("domain", "(other)"), 1.0),
    ];
    for (api, result, label, want) in expected {
        assert_eq!(
            checks(api, result, label),
            want,
            "{api} {result} {label:?}\n{}",
            m.text
        );
    }
    // Every series of the family, summed, is the scenario's total: nothing
    // counted twice or somewhere else.
    let total: f64 = m
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "quotad_checks_total")
        .map(|s| match s.value {
            Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(
        total,
        expected.iter().map(|e| e.3).sum::<f64>(),
        "{}",
        m.text
    );
    let denials = |api, reason| {
        m.get(
            "quotad_denials_total",
            &[("api", api), ("door", "grpc"), ("reason", reason)],
        )
    };
    assert_eq!(denials("native", "limited"), 1.0);
    assert_eq!(denials("native", "blocked"), 1.0);
    assert_eq!(denials("batch", "limited"), 1.0);
    assert_eq!(denials("stream", "limited"), 0.0);
    // Answered calls are timed (refusals are not).
    let timed = |api| {
        m.get(
            "quotad_check_duration_seconds_count",
            &[("api", api), ("door", "grpc")],
        )
    };
    assert_eq!(timed("native"), 10.0);
    assert_eq!(timed("batch"), 1.0);
    assert_eq!(timed("stream"), 2.0);
    assert_eq!(timed("rls"), 6.0);
    assert_eq!(
        m.get(
            "quotad_admin_mutations_total",
            &[("action", "override.set"), ("outcome", "done")]
        ),
        2.0
    );
    assert_eq!(
        m.get(
            "quotad_admin_mutations_total",
            &[("action", "override.set"), ("outcome", "refused")]
        ),
        1.0
    );
    assert_eq!(m.get("quotad_overrides", &[]), 2.0);
    assert_eq!(m.get("quotad_ready", &[]), 1.0);
    assert_eq!(m.get("quotad_config_version", &[]), 1.0);
    assert_eq!(
        m.get(
            "quotad_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // gold, tiny, the free key's two limits, own-key's, /cart and /buy.
    assert_eq!(m.get("quotad_tracked_cells", &[]), 7.0);
    assert!(m.get("process_resident_memory_bytes", &[]) > 1e6);
    // No Redis here, so no Redis metrics.
    assert!(!m.text.contains("quotad_redis_up"), "{}", m.text);
    for raw in [
        "gold-key",
        "tiny-key",
        "open-key",
        "user-secret-XYZ",
        "blocked-key",
        "own-key",
        "someone-elses",
    ] {
        assert!(!m.text.contains(raw), "{raw} in /metrics:\n{}", m.text);
    }
    // envoyproxy/ratelimit's per-limit stats, named by its stats keys:
    // the config's values are in them (`path_/cart`), as there; request
    // values only where a rule opts in (`detailed_metric`,
    // `value_to_metric`, none here). Each rule: a hit within (near the
    // limit of 1: past 80 % of it), then one over; the shadow rule's
    // over-limit hit passed.
    for (path, shadow) in [("path_/cart", 1.0), ("path_/buy", 0.0)] {
        let hits = |result: &str| {
            m.get(
                "quotad_rls_descriptor_hits_total",
                &[("domain", "shop"), ("descriptor", path), ("result", result)],
            )
        };
        assert_eq!(hits("total_hits"), 2.0, "{path}");
        assert_eq!(hits("within_limit"), 1.0, "{path}");
        assert_eq!(hits("near_limit"), 1.0, "{path}");
        assert_eq!(hits("over_limit"), 1.0, "{path}");
        assert_eq!(hits("shadow_mode"), shadow, "{path}");
    }
    // Every family has HELP and TYPE.
    for s in &m.scrape.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|x| s.metric.strip_suffix(x))
            .filter(|f| m.text.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(&s.metric);
        for line in ["# HELP", "# TYPE"] {
            let n = m.text.matches(&format!("{line} {family} ")).count();
            assert_eq!(n, 1, "{line} {family}: {n} times");
        }
    }
    promtool_check(&m.text);
}

#[tokio::test]
async fn nothing_in_metrics_grows_with_the_number_of_keys() {
    let yaml = format!("{CONFIG}metrics:\n  heavy_keys: 3\n");
    let d = TestDaemon::with_config(&yaml).await;
    let mut c = native(&d).await;
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let mut traffic = async |from: usize, to: usize| {
        for i in from..to {
            let key = format!("flood-{i}");
            c.check(check_of(&key, 1)).await.unwrap();
            rls.should_rate_limit(request("edge", vec![descriptor(&[("api_key", &key)])], 1))
                .await
                .unwrap();
            // Domains not in the config all count as one.
            rls.should_rate_limit(request(
                &format!("dom-{i}"),
                vec![descriptor(&[("a", "b")])],
                1,
            ))
            .await
            .unwrap();
        }
    };
    traffic(0, 20).await;
    let before = scrape(&d).await;
    traffic(20, 1_500).await;
    let after = scrape(&d).await;
    let strip = |m: &Metrics| {
        m.series()
            .into_iter()
            .filter(|s| !s.starts_with("quotad_heavy_key_checks"))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "series appeared with more keys"
    );
    assert_eq!(
        after.get(
            "quotad_checks_total",
            &[
                ("api", "rls"),
                ("door", "grpc"),
                ("result", "allowed"),
                ("domain", "(other)")
            ]
        ),
        1_500.0
    );
    assert_eq!(
        after.get(
            "quotad_checks_total",
            &[
                ("api", "native"),
                ("door", "grpc"),
                ("result", "allowed"),
                ("plan", "free")
            ]
        ),
        1_500.0
    );
    let heavy = after
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "quotad_heavy_key_checks")
        .count();
    assert!(heavy <= 3, "{}", after.text);
    assert!(!after.text.contains("flood-"), "a raw key in /metrics");
    assert!(
        !after.text.contains("dom-"),
        "a request's domain in /metrics"
    );
}

#[tokio::test]
async fn the_heaviest_keys_gauge_reports_keyed_hashes_and_operator_names() {
    // A fixed hash secret, so the config can name a key by its hash.
    let secret: [u8; 16] = std::array::from_fn(|i| i as u8);
    let hasher = quotad::core::KeyHasher::with_secret(secret);
    let hash_of = |key: &str| format!("{:016x}", hasher.key_hash(key.as_bytes()));
    let (gold, tiny) = (hash_of("gold-key"), hash_of("tiny-key"));
    let yaml = format!(
        "{CONFIG}store:\n  hash_secret: \"000102030405060708090a0b0c0d0e0f\"\nmetrics:\n  heavy_keys: 2\n  heavy_window: 1s\n  key_names:\n    \"{gold}\": acme-prod\n"
    );
    let d = TestDaemon::with_config(&yaml).await;
    let mut c = native(&d).await;
    // The gauge shows the last complete 1 s window. Traffic of a few
    // milliseconds rarely straddles two windows; when it does, no window
    // shows it whole, and the traffic is sent again.
    for attempt in 0..4 {
        for (key, n) in [("gold-key", 7), ("tiny-key", 5), ("someone", 1)] {
            for _ in 0..n {
                c.check(check_of(key, 1)).await.unwrap();
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2_500);
        while tokio::time::Instant::now() < deadline {
            let m = scrape(&d).await;
            let heavy = |key: &str, name: &str| {
                m.try_get("quotad_heavy_key_checks", &[("key", key), ("name", name)])
                    .unwrap_or(0.0)
            };
            let (gold_n, tiny_n) = (heavy(&gold, "acme-prod"), heavy(&tiny, ""));
            if (gold_n, tiny_n) == (7.0, 5.0) {
                let reported = m
                    .scrape
                    .samples
                    .iter()
                    .filter(|s| s.metric == "quotad_heavy_key_checks")
                    .count();
                assert_eq!(reported, 2, "top 2 only:\n{}", m.text);
                assert!(!m.text.contains("gold-key") && !m.text.contains("tiny-key"));
                promtool_check(&m.text);
                return;
            }
            assert!(
                gold_n <= 7.0 && tiny_n <= 5.0,
                "attempt {attempt}: {}",
                m.text
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("no window showed the traffic whole in 4 attempts");
}

async fn health(d: &TestDaemon) -> i32 {
    HealthClient::new(d.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

/// Polls `probe` every 20 ms until it gives a value, for at most
/// `within`; panics naming `what` otherwise.
async fn until<T>(what: &str, within: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` (bounded) until its status is `want`; returns the body.
async fn readyz_until(d: &TestDaemon, want: u16, within: Duration) -> String {
    let what = format!("/readyz did not turn {want}");
    until(&what, within, async || {
        let (status, body) = d.http_get("/readyz").await;
        (status == want).then_some(body)
    })
    .await
}

#[tokio::test]
async fn strict_limits_make_readiness_follow_redis() {
    let mut redis = RedisServer::start().await;
    // A deadline a loaded machine meets with room to spare, reconnecting
    // and sending the script again included: only a failure shows.
    let d = TestDaemon::with_config(&strict_within(&redis.url(), "deny", "2s")).await;
    assert_eq!(health(&d).await, ServingStatus::Serving as i32);
    let m = scrape(&d).await;
    assert_eq!(m.get("quotad_redis_up", &[]), 1.0);
    assert_eq!(m.get("quotad_ready", &[]), 1.0);

    redis.kill();
    let body = readyz_until(&d, 503, Duration::from_secs(10)).await;
    assert!(body.contains("waiting: redis unreachable"), "{body}");
    assert_eq!(health(&d).await, ServingStatus::NotServing as i32);
    // Still answering, by the fail mode (deny), and counted.
    let r = d.check("paid-key", 1).await;
    assert!(!r.allowed);
    let m = scrape(&d).await;
    assert_eq!(m.get("quotad_redis_up", &[]), 0.0);
    assert_eq!(m.get("quotad_ready", &[]), 0.0);
    assert_eq!(
        m.get("quotad_strict_fail_mode_total", &[("mode", "deny")]),
        1.0
    );
    // The sync task's own round fails too (it may come just after the
    // connection that told readiness first).
    until(
        "no failed flush round",
        Duration::from_secs(10),
        async || {
            let m = scrape(&d).await;
            (m.get("quotad_redis_flushes_total", &[("result", "failure")]) >= 1.0).then_some(())
        },
    )
    .await;

    redis.restart().await;
    // Reconnects within the sync task's longest backoff (5 s).
    let body = readyz_until(&d, 200, Duration::from_secs(15)).await;
    assert!(body.contains("redis: synced"), "{body}");
    assert_eq!(health(&d).await, ServingStatus::Serving as i32);
    // The strict client's own connection, dead since the kill, is made
    // again at its first use: that very check goes through Redis.
    let r = d.check("paid-key", 1).await;
    assert!(r.allowed, "the first strict check once ready: {r:?}");
}

#[tokio::test]
async fn sync_mode_flushes_are_counted_and_redis_trouble_keeps_the_node_ready() {
    let mut redis = RedisServer::start().await;
    let yaml = format!(
        "{CONFIG}store:\n  hash_secret: \"000102030405060708090a0b0c0d0e0f\"\nredis:\n  url: {}\n  sync_interval: 5ms\n",
        redis.url()
    );
    let d = TestDaemon::with_config(&yaml).await;
    for key in ["gold-key", "tiny-key", "open-key"] {
        d.check(key, 1).await;
    }
    d.wait_synced().await;
    let m = scrape(&d).await;
    assert_eq!(m.get("quotad_redis_up", &[]), 1.0);
    assert_eq!(m.get("quotad_redis_pending_deltas", &[]), 0.0);
    assert_eq!(m.get("quotad_redis_dropped_deltas_total", &[]), 0.0);
    // gold and tiny: one bucket each; open has no limits.
    assert!(
        m.get("quotad_redis_flushed_cells_total", &[]) >= 2.0,
        "{}",
        m.text
    );
    assert!(m.get("quotad_redis_flush_batches_total", &[]) >= 1.0);
    assert!(m.get("quotad_redis_flushes_total", &[("result", "success")]) >= 1.0);
    assert!(m.get("quotad_redis_flush_duration_seconds_count", &[]) >= 1.0);
    promtool_check(&m.text);

    redis.kill();
    d.check("gold-key", 1).await;
    // Down, with the charge kept for later (between a failed attempt and
    // the next, it is in the journal).
    let within = Duration::from_secs(10);
    let m = until(
        "redis_up stayed 1, or the charge was not kept",
        within,
        async || {
            let m = scrape(&d).await;
            let down = m.get("quotad_redis_up", &[]) == 0.0;
            (down && m.get("quotad_redis_pending_deltas", &[]) == 1.0).then_some(m)
        },
    )
    .await;
    assert!(m.get("quotad_redis_flushes_total", &[("result", "failure")]) >= 1.0);
    // No strict limits: Redis trouble does not take the node out.
    assert_eq!(d.http_get("/readyz").await.0, 200);
    assert_eq!(m.get("quotad_ready", &[]), 1.0);
}

#[tokio::test]
async fn a_refused_reload_is_counted_and_keeps_the_node_ready() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}reload: {{ watch: false }}\n{}", admin_section(""));
    let path = write_file(dir.path(), "quotad.yaml", &config);
    let d = TestDaemon::from_file(&path).await;
    let mut ops = d.ops().await;
    std::fs::write(&path, format!("{}plans: [broken\n", admin_section(""))).unwrap();
    assert!(ops.reload(ReloadRequest {}).await.is_err());
    let m = scrape(&d).await;
    assert_eq!(
        m.get("quotad_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(
        m.get("quotad_config_reloads_total", &[("result", "success")]),
        0.0
    );
    assert_eq!(m.get("quotad_config_last_reload_successful", &[]), 0.0);
    assert_eq!(m.get("quotad_config_version", &[]), 1.0);
    assert_eq!(m.get("quotad_ready", &[]), 1.0);
    assert_eq!(d.http_get("/readyz").await.0, 200);
    // Fixed: a new version, and the gauge is back to 1.
    std::fs::write(&path, config.replace("rate: 1000", "rate: 500")).unwrap();
    ops.reload(ReloadRequest {}).await.expect("reload");
    let m = scrape(&d).await;
    assert_eq!(
        m.get("quotad_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(m.get("quotad_config_last_reload_successful", &[]), 1.0);
    assert_eq!(m.get("quotad_config_version", &[]), 2.0);
}

#[tokio::test]
async fn admin_changes_count_once_each_including_an_ended_override_removed() {
    let d = TestDaemon::with_config(&format!("{CONFIG}{}", admin_section(""))).await;
    let mut ops = d.ops().await;
    let mut brief = override_of("brief-key", Target::Block(true));
    brief.ttl = Some(prost_types::Duration {
        seconds: 10,
        nanos: 0,
    });
    ops.set_override(brief).await.expect("set");
    d.advance_ms(11_000);
    // It had ended: removing it is a change (audited), and the caller
    // hears there was none in force.
    let gone = ops
        .delete_override(crate::support::key_ref("brief-key"))
        .await
        .expect_err("ended");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    // A delete of nothing changes nothing, and refuses nothing either.
    let none = ops
        .delete_override(crate::support::key_ref("never-key"))
        .await
        .expect_err("none");
    assert_eq!(none.code(), tonic::Code::NotFound);
    // No token: refused.
    let anonymous = d.admin(None).await;
    assert!(
        anonymous
            .clone()
            .reset_usage(crate::support::key_ref("gold-key"))
            .await
            .is_err()
    );
    let m = scrape(&d).await;
    let admin = |action, outcome| {
        m.try_get(
            "quotad_admin_mutations_total",
            &[("action", action), ("outcome", outcome)],
        )
    };
    assert_eq!(admin("override.set", "done"), Some(1.0));
    assert_eq!(admin("override.delete", "done"), Some(1.0));
    assert_eq!(admin("override.delete", "refused"), None, "{}", m.text);
    assert_eq!(admin("usage.reset", "refused"), Some(1.0));
}
