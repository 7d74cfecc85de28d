//! `quotad-bench`, the end-to-end load generator, against a real daemon:
//! every mode answers with consistent counts, the open loop keeps its
//! rate, and it refuses to load anything but loopback by default.

use std::process::Command;

use serde_json::Value;

use crate::support::TestDaemon;

const BENCH: &str = env!("CARGO_BIN_EXE_quotad-bench");

/// Runs quotad-bench against `d` (as a child process, while the daemon
/// keeps serving on this test's runtime) and parses its JSON report.
async fn run(d: &TestDaemon, extra: &[&str]) -> Value {
    run_at(d.grpc_addr, extra).await
}

/// Runs quotad-bench against `addr` with the defaults of [`run`], which
/// `extra` overrides (a repeated flag takes its last value).
async fn run_at(addr: std::net::SocketAddr, extra: &[&str]) -> Value {
    let out = tokio::process::Command::new(BENCH)
        .arg(format!("--addr={addr}"))
        .args(["--duration=300ms", "--warmup=0s", "--json", "--keys=50"])
        .args(["--concurrency=4", "--connections=2", "--domain=edge"])
        .args(extra)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), out)
        .await
        .expect("quotad-bench stops by itself")
        .expect("quotad-bench runs");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[tokio::test]
async fn every_mode_reports_consistent_counts_against_a_daemon() {
    let d = TestDaemon::start().await;
    for mode in ["check", "batch", "stream", "rls"] {
        let dist = if mode == "rls" {
            "--dist=zipf:1.1"
        } else {
            "--dist=uniform"
        };
        let mode_flag = format!("--mode={mode}");
        let r = run(&d, &[&mode_flag, dist, "--batch=5"]).await;
        let n = |k: &str| {
            r[k].as_u64()
                .unwrap_or_else(|| panic!("{mode}: {k} in {r}"))
        };
        assert!(n("requests") > 0, "{mode}: {r}");
        assert_eq!(n("errors"), 0, "{mode}: {r}");
        assert_eq!(n("allowed") + n("denied"), n("checks"), "{mode}: {r}");
        let per_request = if mode == "batch" { 5 } else { 1 };
        assert_eq!(n("checks"), per_request * n("requests"), "{mode}: {r}");
        // The daemon's limits hold: 50 free-plan keys with a burst of 20
        // and 10/s cannot all pass for long.
        assert!(n("denied") > 0 || n("checks") <= 50 * 30, "{mode}: {r}");
        assert!(r["latency_us"]["p50"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn the_open_loop_keeps_its_rate() {
    let d = TestDaemon::start().await;
    // 300 ms at 400/s: 120 requests due, each sent.
    let r = run(&d, &["--rate=400"]).await;
    let requests = r["requests"].as_u64().unwrap();
    assert!((110..=120).contains(&requests), "{r}");
}

#[tokio::test]
async fn the_latency_log_has_every_measured_request_in_order() {
    let d = TestDaemon::start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = dir.path().join("latency.txt");
    let flag = format!("--latency-log={}", log.display());
    let r = run(&d, &["--rate=400", &flag]).await;
    let text = std::fs::read_to_string(&log).expect("the log is written");
    let rows: Vec<Vec<u64>> = text
        .lines()
        .map(|l| l.split(' ').map(|n| n.parse().expect("a number")).collect())
        .collect();
    assert_eq!(rows.len() as u64, r["requests"].as_u64().unwrap(), "{r}");
    for w in rows.windows(2) {
        assert!(w[0][0] <= w[1][0], "in the order they were due: {w:?}");
    }
    for row in &rows {
        assert_eq!(row.len(), 3, "due, lag, took: {row:?}");
        assert!(row[0] < 300_000 && row[1] <= row[2], "{row:?}");
    }
    // Only an open loop has due times.
    let out = std::process::Command::new(BENCH)
        .args([format!("--addr={}", d.grpc_addr), flag])
        .output()
        .expect("quotad-bench runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--latency-log: only with --rate"));
}

#[tokio::test]
async fn requests_stops_the_run_after_that_many() {
    let d = TestDaemon::start().await;
    // Closed loop (4 callers), stream and open loop: exactly 37 calls,
    // long before the 10 s duration.
    for flags in [
        &["--mode=batch", "--batch=3"][..],
        &["--mode=stream"][..],
        &["--mode=check", "--rate=2000"][..],
    ] {
        let started = quotad::core::clock::Stopwatch::start();
        let r = run(&d, &[flags, &["--requests=37", "--duration=10s"]].concat()).await;
        let per_request = if flags[0] == "--mode=batch" { 3 } else { 1 };
        assert_eq!(r["requests"].as_u64(), Some(37), "{flags:?}: {r}");
        assert_eq!(
            r["checks"].as_u64(),
            Some(37 * per_request),
            "{flags:?}: {r}"
        );
        assert!(started.seconds() < 5.0, "{flags:?}: {r}");
        assert!(r["seconds"].as_f64().unwrap() < 5.0, "{flags:?}: {r}");
    }
    let out = Command::new(BENCH)
        .args(["--requests=0", "--duration=1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn it_loads_only_loopback_unless_told() {
    let out = Command::new(BENCH)
        .args(["--addr=10.1.2.3:8081", "--duration=1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    let out = Command::new(BENCH)
        .args(["--duration=11m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn seq_touches_every_key_once_per_round() {
    let d = TestDaemon::start().await;
    // 30 batches of 10 (open loop, 100/s for 300 ms) in order over 400
    // keys: 300 distinct keys, two cells each on the free plan. 300
    // uniform draws would repeat about 70 of them.
    let r = run(
        &d,
        &[
            "--mode=batch",
            "--batch=10",
            "--dist=seq",
            "--keys=400",
            "--rate=100",
        ],
    )
    .await;
    let checks = r["checks"].as_u64().unwrap();
    assert!((280..=300).contains(&checks), "{r}");
    let (status, text) = d.http_get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    let cells: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("quotad_tracked_cells "))
        .and_then(|v| v.trim().parse().ok())
        .expect("quotad_tracked_cells");
    assert_eq!(cells, 2 * checks, "{r}");
    let out = Command::new(BENCH)
        .args(["--dist=zipf:-1", "--duration=1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("uniform, seq"));
}

#[tokio::test]
async fn rlqs_mode_reports_every_bucket_of_every_simulated_envoy() {
    let d = TestDaemon::with_config(&crate::rlqs::config("")).await;
    // 4 Envoys × 10 buckets of 50 tenants, reporting every second for
    // 2.5 s: each reports three times (its first report, then two).
    let r = run(
        &d,
        &[
            "--mode=rlqs",
            "--domain=shop",
            "--buckets=10",
            "--report-interval=1s",
            "--duration=2500ms",
        ],
    )
    .await;
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("errors"), 0, "{r}");
    assert!((8..=12).contains(&n("requests")), "{r}");
    // Every answer carries the 10 buckets (token buckets of the tenant
    // rule), pushes may add more.
    assert!(n("checks") >= 10 * n("requests"), "{r}");
    assert_eq!(n("denied"), 0, "{r}");
    assert_eq!(
        d.engine.rlqs().sizes().2,
        40,
        "40 distinct buckets of 50 tenants"
    );
}

#[tokio::test]
async fn report_and_http_auth_modes_drive_a_daemon() {
    let yaml = format!(
        "{}\n  http_check:\n    addr: 127.0.0.1:0\n",
        crate::support::CONFIG.trim_end()
    );
    let d = TestDaemon::with_config(&yaml).await;
    // Reports are never refused: "denied" counts those that left their
    // key in debt (a burst of 20, 10 a second, reports of 5).
    let r = run(&d, &["--mode=report", "--cost=5"]).await;
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert!(n(&r, "requests") > 0 && n(&r, "errors") == 0, "{r}");
    assert!(n(&r, "denied") > 0, "{r}");
    // /v1/auth over HTTP/1.1: 200 allowed, 429 denied, no errors.
    let door = d.http_check_addr.expect("the door is on");
    let r = run_at(door, &["--mode=http-auth", "--keys=5"]).await;
    assert!(n(&r, "requests") > 0 && n(&r, "errors") == 0, "{r}");
    assert_eq!(n(&r, "allowed") + n(&r, "denied"), n(&r, "requests"), "{r}");
    assert!(n(&r, "denied") > 0, "5 keys of 20 + 10/s: {r}");
    let counted = crate::support::metric(
        d.http_addr,
        "quotad_checks_total{api=\"auth\",door=\"http\",result=\"allowed\",plan=\"free\"}",
    )
    .await;
    assert_eq!(counted as u64, n(&r, "allowed"));
}
