//! Hot reload of the config and limits files: through the admin API's
//! Reload and the file watcher; a broken file keeps the running config
//! and is counted; a reload cannot drop a plan overrides give.

use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use quotad::api::pb::set_override_request::Target;
use quotad::api::pb::{CheckResponse, ReloadRequest};

use crate::support::rls::{descriptor, request};
use crate::support::{CONFIG, TestDaemon, admin_section, key_ref, override_of, write_file};

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
        (
            config_text(20, NO_WATCH)
                .replace("per: second, burst: 20", "per: fortnight, burst: 20"),
            format!(
                "{path}:6:44: plans.free.limits[0].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)"
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
