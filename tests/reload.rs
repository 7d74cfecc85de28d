//! Hot reload of the config and limits files: through the admin API's
//! Reload and the file watcher; a broken file keeps the running config
//! and is counted; a reload cannot drop a plan overrides give.

use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use quotad::api::pb::set_override_request::Target;
use quotad::api::pb::{CheckResponse, ReloadRequest};

use crate::support::process::spawn_serve;
use crate::support::rls::{descriptor, request};
use crate::support::{
    CONFIG, TestDaemon, admin_section, key_ref, metric_reaches, override_of, write_file,
};

/// A config file in a fresh directory: [`CONFIG`] with the free plan's
/// burst set to `burst`, the admin section, and `extra` YAML.
fn config_text(burst: u64, extra: &str) -> String {
    let free = "{ name: per-second, rate: 10, per: second, burst: 20 }";
    assert!(
        CONFIG.contains(free),
        "the free plan's limit is where the test expects it"
    );
    let config = CONFIG.replace(
        free,
        &format!("{{ name: per-second, rate: 10, per: second, burst: {burst} }}"),
    );
    format!("{config}{}{extra}", admin_section(""))
}

const NO_WATCH: &str = "reload: { watch: false }\n";

async fn check(d: &TestDaemon, key: &str, cost: u64) -> Result<CheckResponse, tonic::Status> {
    d.try_check(key, cost).await
}

async fn limit_of(d: &TestDaemon, key: &str) -> u64 {
    check(d, key, 1).await.expect("check").limit
}

struct Files {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn files(text: &str) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "quotad.yaml", text);
    Files { dir, config }
}

/// Replaces `path`'s contents in one step, as an editor or a ConfigMap
/// update does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits (bounded, real time) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test]
async fn a_reload_applies_new_limits_and_caps_at_once_and_says_which_version() {
    let f = files(&config_text(20, NO_WATCH));
    let d = TestDaemon::from_file(&f.config).await;
    let mut ops = d.ops().await;
    assert_eq!(limit_of(&d, "alice").await, 20);
    let first = d.control.version();
    assert_eq!(first.number, 1);
    assert_eq!(first.digest.len(), 64);

    // Nothing changed yet: the version stays.
    let r = ops.reload(ReloadRequest {}).await.unwrap().into_inner();
    assert!(!r.changed);
    assert_eq!(r.config.as_ref().unwrap().number, 1);

    let text = config_text(50, NO_WATCH).replace("max_cost: 1000", "max_cost: 10");
    replace(&f.config, &text);
    let r = ops.reload(ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.changed);
    assert!(r.restart_needed.is_empty(), "{:?}", r.restart_needed);
    let v = r.config.unwrap();
    assert_eq!(v.number, 2);
    assert_ne!(v.digest, first.short_digest());
    assert_eq!((v.reloads_ok, v.reloads_failed), (2, 0));
    assert_eq!(limit_of(&d, "alice").await, 50);
    let e = check(&d, "alice", 11).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "cost: 11 exceeds the maximum cost of 10");
    let body = d.http_get("/readyz").await.1;
    assert!(
        body.contains(&format!(
            "config: version 2 (digest {}), reloads 2 ok, 0 failed\n",
            v.digest
        )),
        "{body}"
    );

    // A setting only a restart applies is reported, the rest applies.
    replace(
        &f.config,
        &format!(
            "{}store:\n  max_tracked_keys: 5000\n",
            config_text(60, NO_WATCH)
        ),
    );
    let r = ops.reload(ReloadRequest {}).await.unwrap().into_inner();
    assert_eq!(r.restart_needed, ["store"]);
    assert_eq!(limit_of(&d, "alice").await, 60);
}

#[tokio::test]
async fn a_broken_file_keeps_the_running_config_and_is_counted() {
    let f = files(&config_text(20, NO_WATCH));
    let d = TestDaemon::from_file(&f.config).await;
    let mut ops = d.ops().await;
    let path = f.config.display().to_string();

    let broken: [(String, String); 3] = [
        (
            "default_plan: free\nplans:\n  free: { limits: [\n".to_owned(),
            format!("{path}:3:19: invalid yaml: unclosed bracket '['"),
        ),
        (
            config_text(20, NO_WATCH).replace("{ plan: gold }", "{ plan: platinum }"),
            format!(
                "{path}:17:23: keys.<key>.plan: unknown plan 'platinum' (defined plans: free, gold, tiny, open)"
            ),
        ),
        // Two plans with the same mistake: each is reported, on its line.
        (
            config_text(20, NO_WATCH)
                .replace("per: second, burst: 20", "per: fortnight, burst: 20"),
            format!(
                "{path}:6:44: plans.free.limits[0].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)\n\
                 {path}:10:46: plans.gold.limits[0].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)"
            ),
        ),
    ];
    for (n, (text, want)) in broken.iter().enumerate() {
        replace(&f.config, text);
        let e = ops.reload(ReloadRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert_eq!(e.message(), want);
        // Still serving, with the old limits.
        assert_eq!(limit_of(&d, "alice").await, 20);
        assert_eq!(d.control.version().number, 1);
        let stats = d.control.stats();
        assert_eq!((stats.ok, stats.failed), (0, n as u64 + 1));
    }
    let usage = ops.get_usage(key_ref("alice")).await.unwrap().into_inner();
    let v = usage.config.unwrap();
    assert_eq!((v.number, v.reloads_failed), (1, 3));
    assert_eq!(v.last_error, broken[2].1);
    let body = d.http_get("/readyz").await.1;
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("reloads 0 ok, 3 failed"), "{body}");

    // Fixed: it loads.
    replace(&f.config, &config_text(30, NO_WATCH));
    ops.reload(ReloadRequest {}).await.unwrap();
    assert_eq!(limit_of(&d, "alice").await, 30);
}

#[tokio::test]
async fn the_watcher_reloads_changed_files_and_leaves_broken_ones() {
    let watch = "reload: { watch: true, poll_interval: 20ms, debounce: 20ms }\n";
    let f = files(&config_text(20, watch));
    let d = TestDaemon::from_file(&f.config).await;
    assert_eq!(limit_of(&d, "alice").await, 20);

    replace(&f.config, &config_text(40, watch));
    eventually("the watcher loaded version 2", || {
        d.control.version().number == 2
    })
    .await;
    assert_eq!(limit_of(&d, "alice").await, 40);

    // Broken: refused once, the running config stays, and the same
    // broken files are not tried again and again.
    replace(&f.config, "default_plan: nope\n");
    eventually("the watcher refused the file", || {
        d.control.stats().failed == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(d.control.stats().failed, 1);
    assert_eq!(d.control.version().number, 2);
    assert_eq!(limit_of(&d, "alice").await, 40);

    // Fixed again: picked up.
    replace(&f.config, &config_text(45, watch));
    eventually("the watcher loaded version 3", || {
        d.control.version().number == 3
    })
    .await;
    assert_eq!(limit_of(&d, "alice").await, 45);
    let _ = &f.dir;
}

#[tokio::test]
async fn a_reload_cannot_drop_a_plan_that_overrides_give() {
    let f = files(&config_text(20, NO_WATCH));
    let d = TestDaemon::from_file(&f.config).await;
    let mut ops = d.ops().await;
    ops.set_override(override_of("alice", Target::Plan("tiny".into())))
        .await
        .unwrap();
    let without_tiny = config_text(20, NO_WATCH)
        .replace(
            "  tiny:\n    limits:\n      - { name: per-minute, rate: 2, per: minute, burst: 2 }\n",
            "",
        )
        .replace("  \"tiny-key\": { plan: tiny }\n", "");
    assert!(!without_tiny.contains("tiny:"));
    replace(&f.config, &without_tiny);
    let e = ops.reload(ReloadRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "plan 'tiny' is gone from the new config but 1 override(s) still give it: delete or change them first (quotactl override ls --plan tiny)"
    );
    assert_eq!(
        check(&d, "alice", 1).await.unwrap().policy,
        "tiny/per-minute"
    );
    ops.delete_override(key_ref("alice")).await.unwrap();
    ops.reload(ReloadRequest {}).await.unwrap();
    assert_eq!(
        check(&d, "alice", 1).await.unwrap().policy,
        "free/per-second"
    );
}

#[tokio::test]
async fn limits_files_reload_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let limits = dir.path().join("limits");
    std::fs::create_dir(&limits).unwrap();
    let rule = |rpu: u32| {
        format!(
            "domain: files\ndescriptors:\n  - key: path\n    rate_limit: {{ unit: minute, requests_per_unit: {rpu} }}\n"
        )
    };
    write_file(&limits, "files.yaml", &rule(3));
    let config = write_file(
        dir.path(),
        "quotad.yaml",
        &config_text(20, &format!("{NO_WATCH}rls_files: [limits]\n")),
    );
    let d = TestDaemon::from_file(&config).await;
    let mut ops = d.ops().await;
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let ask = || request("files", vec![descriptor(&[("path", "/a")])], 1);
    let r = rls.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 2);

    replace(&limits.join("files.yaml"), &rule(10));
    let r = ops.reload(ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.changed);
    // The same counter, a higher limit: 10 - 2 hits.
    let r = rls.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 8);

    // A broken limits file is refused with its own location.
    replace(
        &limits.join("files.yaml"),
        "domain: files\ndescriptors:\n  - key: path\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
    );
    let e = ops.reload(ReloadRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("files.yaml:4:") && e.message().contains("rate_limit.unit"),
        "{}",
        e.message()
    );
    let r = rls.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 7);
}

/// Makes a FIFO (named pipe) at `path`.
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A process's peak resident memory so far (VmHWM), in bytes: a read of
/// an endless device shows here even if its memory was given back.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status");
    kb * 1024
}

/// A limits file of domain `edge-files` allowing `rpu` a minute per path.
fn edge_rule(rpu: u32) -> String {
    format!(
        "domain: edge-files\ndescriptors:\n  - key: path\n    rate_limit: {{ unit: minute, requests_per_unit: {rpu} }}\n"
    )
}

/// A config file for the binary in `dir`, reading `dir/limits`, watching
/// every 20 ms, with the admin section.
fn binary_files(dir: &Path) -> (PathBuf, String) {
    let limits = dir.join("limits");
    std::fs::create_dir(&limits).unwrap();
    write_file(&limits, "edge.yaml", &edge_rule(3));
    let text = format!(
        "{CONFIG}{}reload: {{ watch: true, poll_interval: 20ms, debounce: 20ms }}\nrls_files: [limits]\n",
        admin_section("")
    );
    (write_file(dir, "quotad.yaml", &text), text)
}

/// `quotad ARGS`, bounded: its exit code, stdout and stderr.
async fn run_bounded(args: &[&str]) -> (Option<i32>, String, String) {
    let run = tokio::process::Command::new(crate::support::process::BIN)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap_or_else(|_| panic!("quotad {args:?} did not finish in 10 s"))
        .expect("quotad runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn stray_fifos_and_devices_are_skipped_in_a_limits_directory_and_refused_when_named() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = binary_files(dir.path());
    let limits = dir.path().join("limits");
    let pipe = limits.join("pipe.yaml");
    mkfifo(&pipe);
    let zero = limits.join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let said = |p: &Path, kind: &str| {
        format!(
            "{}: is {kind}, not a regular file; refused unread",
            p.display()
        )
    };
    let config_arg = config.display().to_string();

    // In a directory: skipped, and said so, by check-config and at start.
    let (code, out, err) = run_bounded(&["check-config", &config_arg]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("skipped: {}", said(&pipe, "a FIFO (named pipe)"))),
        "{out}"
    );
    assert!(
        out.contains(&format!("skipped: {}", said(&zero, "a character device"))),
        "{out}"
    );
    let mut d = spawn_serve(&["--config", &config_arg]).await;
    let startup = d.startup.clone();
    assert!(
        startup.contains(&said(&pipe, "a FIFO (named pipe)")),
        "{startup}"
    );
    assert!(
        startup.contains(&said(&zero, "a character device")),
        "{startup}"
    );
    // The regular file beside them is served.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", d.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rls = RateLimitServiceClient::new(channel);
    let ask = request("edge-files", vec![descriptor(&[("path", "/a")])], 1);
    let r = rls.should_rate_limit(ask).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 2);
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));

    // Named directly: refused at once, naming it (exit 64), never waited on.
    let pipe_arg = pipe.display().to_string();
    let want = format!(
        "{pipe_arg}: cannot read: is a FIFO (named pipe), not a regular file; refused unread"
    );
    for args in [
        vec!["check-config", &config_arg, "--limits", &pipe_arg],
        vec!["serve", "--config", &config_arg, "--limits", &pipe_arg],
        vec!["serve", "--config", &pipe_arg],
    ] {
        let (code, out, err) = run_bounded(&args).await;
        assert_eq!(code, Some(64), "{args:?}: {out}{err}");
        assert!(err.contains(&want), "{args:?}: {err}");
    }
    let zero_arg = zero.display().to_string();
    let (code, _, err) = run_bounded(&["serve", "--config", &zero_arg]).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(&format!(
            "{zero_arg}: cannot read: is a character device, not a regular file; refused unread"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn fifos_and_devices_appearing_while_serving_stop_neither_reloads_nor_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (config, text) = binary_files(dir.path());
    let limits = dir.path().join("limits");
    let mut d = spawn_serve(&["--config", &config.display().to_string()]).await;
    let http: std::net::SocketAddr = d.http.parse().unwrap();
    let mut ops = d.admin_client(Some(crate::support::OPS_TOKEN)).await;
    let peak_before = peak_rss(d.pid());

    // A FIFO and a symlink to /dev/zero appear in the watched directory:
    // the watcher sees them, skips them, says so.
    mkfifo(&limits.join("pipe.yaml"));
    std::os::unix::fs::symlink("/dev/zero", limits.join("zero.yaml")).unwrap();
    d.wait_logs(&["pipe.yaml: is a FIFO", "zero.yaml: is a character device"])
        .await;
    // The watcher still reloads what changes.
    replace(&limits.join("edge.yaml"), &edge_rule(10));
    metric_reaches(http, "quotad_config_version", 2.0).await;
    // SIGHUP and the admin API's Reload too, promptly.
    d.signal("-HUP");
    let line = d.wait_log("config reloaded: nothing changed").await;
    assert!(line.contains("SIGHUP"), "{line}");
    let r = tokio::time::timeout(Duration::from_secs(10), ops.reload(ReloadRequest {}))
        .await
        .expect("Reload answers")
        .expect("Reload succeeds")
        .into_inner();
    assert!(!r.changed);

    // The config file itself replaced by a FIFO: refused, naming it, by
    // every kind of reload, while serving on.
    let fifo = dir.path().join("new.fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &config).unwrap();
    let want = format!(
        "{}: cannot read: is a FIFO (named pipe), not a regular file; refused unread",
        config.display()
    );
    let line = d.wait_log("config reload refused").await;
    assert!(
        line.contains("file change") && line.contains(&want),
        "{line}"
    );
    d.signal("-HUP");
    let line = d.wait_log("config reload refused").await;
    assert!(line.contains("SIGHUP") && line.contains(&want), "{line}");
    let e = tokio::time::timeout(Duration::from_secs(10), ops.reload(ReloadRequest {}))
        .await
        .expect("Reload answers")
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.message(), want);
    // Put back: it loads again.
    replace(&config, &text);
    ops.reload(ReloadRequest {}).await.expect("Reload succeeds");
    metric_reaches(http, "quotad_config_last_reload_successful", 1.0).await;
    assert_eq!(
        crate::support::metric(http, "quotad_config_version").await,
        2.0
    );

    // Nothing read the device: the peak memory barely moved.
    let grown = peak_rss(d.pid()).saturating_sub(peak_before);
    assert!(grown < 64 << 20, "peak RSS grew by {} MiB", grown >> 20);
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits promptly after SIGTERM").await, Some(0));
    let stderr = d.stderr_at_exit().await;
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_reload_whose_read_hangs() {
    use futures_util::StreamExt;
    use quotad::app::App;
    use quotad::config::Config;

    let config = Config::from_yaml(CONFIG, "test.yaml").unwrap();
    let mut config = config;
    config.boot.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.boot.server.http_addr = "127.0.0.1:0".parse().unwrap();
    // The loader hangs, as a read on a hung mount does, until released.
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = std::sync::Mutex::new(hold);
    let fixed = config.clone();
    let loader: quotad::control::reload::Loader = std::sync::Arc::new(move || {
        let _ = entered_tx.send(());
        let _ = hold.lock().unwrap().recv();
        Ok(fixed.clone())
    });
    let (hup, hups) = tokio::sync::mpsc::unbounded_channel::<()>();
    let hangups =
        futures_util::stream::unfold(
            hups,
            |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
        )
        .boxed();
    let app = App::bind(config)
        .await
        .unwrap()
        .with_loader(loader)
        .reload_on(hangups);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    hup.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), entered.recv())
        .await
        .expect("the reload started reading");
    // Shut down while it hangs: done well before the read's deadline or
    // the last stage's grace (4 s) would end it.
    let started = tokio::time::Instant::now();
    stop.send(()).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run returned")
        .expect("run did not panic");
    assert!(done.is_ok(), "{done:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    release.send(()).unwrap();
}

#[tokio::test]
async fn files_put_back_as_they_run_clear_the_failure_through_the_watcher() {
    let watch = "reload: { watch: true, poll_interval: 20ms, debounce: 20ms }\n";
    let text = config_text(20, watch);
    let f = files(&text);
    let d = TestDaemon::from_file(&f.config).await;
    let mut ops = d.ops().await;
    let last_error = |v: Option<quotad::api::pb::ConfigVersion>| v.expect("config").last_error;

    // Refused by the watcher: the failure shows.
    replace(&f.config, "default_plan: nope\n");
    metric_reaches(
        d.http_addr,
        "quotad_config_reloads_total{result=\"failure\"}",
        1.0,
    )
    .await;
    assert_eq!(
        crate::support::metric(d.http_addr, "quotad_config_last_reload_successful").await,
        0.0
    );
    let plans = ops
        .list_plans(quotad::api::pb::ListPlansRequest {})
        .await
        .unwrap();
    assert!(!last_error(plans.into_inner().config).is_empty());

    // Put back as it runs: the watcher reloads it, finds nothing changed,
    // and that success clears the failure.
    replace(&f.config, &text);
    metric_reaches(d.http_addr, "quotad_config_last_reload_successful", 1.0).await;
    let m = |s: &'static str| crate::support::metric(d.http_addr, s);
    assert_eq!(
        m("quotad_config_reloads_total{result=\"success\"}").await,
        1.0
    );
    assert_eq!(
        m("quotad_config_reloads_total{result=\"failure\"}").await,
        1.0
    );
    assert_eq!(m("quotad_config_version").await, 1.0);
    let plans = ops
        .list_plans(quotad::api::pb::ListPlansRequest {})
        .await
        .unwrap();
    assert_eq!(last_error(plans.into_inner().config), "");
    assert!(!d.control.stats().last_failed);
}
