//! The quotad binary itself: check-config, exit code 64, the embedded default, SIGTERM.

use std::process::Command;
use std::time::Duration;

use quotad::api::pb::CheckRequest;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;

use crate::support::process::{BIN, spawn_serve};

fn fixture(name: &str, body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

#[test]
fn check_config_accepts_a_valid_file_and_prints_a_summary() {
    let (_dir, path) = fixture("ok.yaml", crate::support::CONFIG);
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("free"), "{stdout}");
    assert!(stdout.contains("gold"), "{stdout}");
    assert!(
        !stdout.contains("gold-key"),
        "summary must not print keys: {stdout}"
    );
}

#[test]
fn check_config_rejects_a_bad_unit_with_exit_64_naming_file_line_and_field() {
    let body = "default_plan: free\nplans:\n  free:\n    limits:\n      - { name: per-second, rate: 10, per: second }\n      - { name: daily, quota: 10, per: fortnight }\n";
    let (_dir, path) = fixture("bad.yaml", body);
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains(":6:"), "line number missing: {stderr}");
    assert!(stderr.contains("plans.free.limits[1].per"), "{stderr}");
    assert!(stderr.contains("fortnight"), "{stderr}");
}

#[test]
fn serve_with_a_bad_config_exits_64_before_binding() {
    let (_dir, path) = fixture("bad.yaml", "plans: [not, a, map]\n");
    let out = crate::support::process::serve_command()
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listener bound"), "{stdout}");
    let missing = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/quotad.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/quotad.yaml"));
}

#[test]
fn bad_flags_and_clashing_listeners_exit_64() {
    let out = Command::new(BIN)
        .args(["serve", "--grpc-addr", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grpc-addr"));
    let out = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:9999",
            "--http-addr",
            "127.0.0.1:9999",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("both 127.0.0.1:9999"),
        "{out:?}"
    );
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
}

#[tokio::test]
async fn serve_runs_the_embedded_default_and_exits_0_on_sigterm() {
    let mut d = spawn_serve(&[]).await;
    let mut c = RateLimiterClient::connect(format!("http://{}", d.grpc))
        .await
        .unwrap();
    for (key, plan) in [("demo-gold-key", "gold/"), ("someone", "free/")] {
        let r = c
            .check(CheckRequest {
                key: key.into(),
                cost: 1,
                id: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed);
        assert!(r.policy.starts_with(plan), "{key}: {r:?}");
    }

    d.signal("-TERM");
    assert_eq!(
        d.exit_code("idle daemon exits promptly after SIGTERM, well within its 10 s grace")
            .await,
        Some(0)
    );
}

#[tokio::test]
async fn a_second_signal_ends_a_long_drain_at_once() {
    let body = "default_plan: free\nplans:\n  free:\n    limits:\n      - { name: per-second, rate: 10, per: second }\nserver:\n  drain_delay: 60s\n";
    let (_dir, path) = fixture("drain.yaml", body);
    let path = path.display().to_string();
    let mut d = spawn_serve(&["--config", &path]).await;
    d.signal("-TERM");
    d.wait_log("SIGTERM received").await;
    d.signal("-INT");
    assert_eq!(
        d.exit_code("the second signal ends the 60 s drain").await,
        Some(1)
    );
}

fn manifest(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_reads_envoy_limits_files_and_names_bad_ones() {
    let out = Command::new(BIN)
        .args(["check-config", &manifest("examples/envoy/quotad.yaml")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("rls domain edge: 7 rules"), "{stdout}");

    let (_dir, path) = fixture("ok.yaml", crate::support::CONFIG);
    let bad = manifest("tests/fixtures/rls/invalid/bad_unit.yaml");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .args(["--limits", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{bad}:5:13: descriptors[0].rate_limit.unit: invalid unit 'fortnight'"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_limits_and_shadow_flags_answer_envoy_from_the_file() {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

    use crate::support::rls::{descriptor, request};

    let ex3 = manifest("tests/fixtures/rls/valid/ex3_blocklist.yaml");
    let d = spawn_serve(&["--limits", &ex3, "--shadow"]).await;
    let mut c = RateLimitServiceClient::connect(format!("http://{}", d.grpc))
        .await
        .unwrap();
    let blocked = request(
        "edge_proxy_per_ip",
        vec![descriptor(&[("remote_address", "50.0.0.5")])],
        1,
    );
    let r = c.should_rate_limit(blocked).await.unwrap().into_inner();
    // The blocklisted IP is over its limit of 0, but global shadow mode
    // (--shadow) answers OK overall.
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32, "{r:?}");
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit),
        Some(0)
    );
    assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
}

#[tokio::test]
async fn envoy_response_headers_flag_turns_on_exactly_the_peers_three_for_files_domains() {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

    use crate::support::rls::{descriptor, headers, hv, request};

    let ex3 = manifest("tests/fixtures/rls/valid/ex3_blocklist.yaml");
    let ask = || {
        request(
            "edge_proxy_per_ip",
            vec![descriptor(&[("remote_address", "10.0.0.1")])],
            1,
        )
    };
    // By default a files domain's answers carry no headers, as
    // envoyproxy/ratelimit's without LIMIT_RESPONSE_HEADERS_ENABLED.
    let d = spawn_serve(&["--limits", &ex3]).await;
    let mut c = RateLimitServiceClient::connect(format!("http://{}", d.grpc))
        .await
        .unwrap();
    let r = c.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 9, "{r:?}");
    assert!(r.response_headers_to_add.is_empty(), "{r:?}");
    drop(d);
    let d = spawn_serve(&["--limits", &ex3, "--envoy-response-headers", "draft03"]).await;
    let mut c = RateLimitServiceClient::connect(format!("http://{}", d.grpc))
        .await
        .unwrap();
    let r = c.should_rate_limit(ask()).await.unwrap().into_inner();
    let names: Vec<String> = headers(&r).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
        "{r:?}"
    );
    assert_eq!(
        headers(&r)[..2],
        hv(&[("RateLimit-Limit", "10"), ("RateLimit-Remaining", "9")])
    );
    // A style that does not exist is a usage error naming the flag.
    let out = crate::support::process::serve_command()
        .args(["--check-only", "--envoy-response-headers", "draft3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--envoy-response-headers")
            && stderr.contains("expected off, draft03, draft11 or both (got 'draft3')"),
        "{stderr}"
    );
}

#[test]
fn redis_flag_needs_a_known_scheme_and_the_hash_secret() {
    let (_dir, path) = fixture("ok.yaml", crate::support::CONFIG);
    let serve = |url: &str| {
        crate::support::process::serve_command()
            .arg("--config")
            .arg(&path)
            .args(["--redis", url])
            .env_remove("QUOTAD_REDIS")
            .output()
            .unwrap()
    };
    let out = serve("redis://127.0.0.1:6379");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--redis: Redis sync needs a hash secret every node shares")
            && said.contains("QUOTAD_HASH_SECRET, --hash-secret-file FILE or store.hash_secret")
            && said.contains("openssl rand -hex 16"),
        "{out:?}"
    );
    let out = serve("http://127.0.0.1:6379");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--redis: invalid Redis URL 'http://127.0.0.1:6379'"),
        "{out:?}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config_and_a_broken_file_keeps_serving() {
    let config = |burst: u64| {
        crate::support::CONFIG.replace(
            "{ name: per-second, rate: 10, per: second, burst: 20 }",
            &format!("{{ name: per-second, rate: 10, per: second, burst: {burst} }}"),
        ) + "reload: { watch: false }\n"
    };
    let (_dir, path) = fixture("quotad.yaml", &config(20));
    let mut d = spawn_serve(&["--config", &path.display().to_string()]).await;
    let mut c = RateLimiterClient::connect(format!("http://{}", d.grpc))
        .await
        .unwrap();
    let mut limit = async || {
        c.check(CheckRequest {
            key: "alice".into(),
            cost: 1,
            id: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .limit
    };
    assert_eq!(limit().await, 20);
    std::fs::write(&path, config(35)).unwrap();
    d.signal("-HUP");
    d.wait_log("config reloaded").await;
    assert_eq!(limit().await, 35);
    std::fs::write(&path, "plans: 5\n").unwrap();
    d.signal("-HUP");
    d.wait_log("config reload refused; the running config stays in effect")
        .await;
    assert_eq!(limit().await, 35);
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
}

#[tokio::test]
async fn admin_addr_flag_needs_an_admin_section_and_binds_with_one() {
    let (_dir, path) = fixture("ok.yaml", crate::support::CONFIG);
    let out = Command::new(BIN)
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("QUOTAD_ADMIN_ADDR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--admin-addr: the admin API needs an admin section with tokens"),
        "{out:?}"
    );
    // Plain text beyond loopback is refused for the flag too.
    let with_admin = format!(
        "{}{}",
        crate::support::CONFIG,
        crate::support::admin_section("")
    );
    let (_dir2, path2) = fixture("admin.yaml", &with_admin);
    let out = Command::new(BIN)
        .args(["serve", "--admin-addr", "0.0.0.0:0", "--config"])
        .arg(&path2)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a loopback address"),
        "{out:?}"
    );
    let mut d = spawn_serve(&[
        "--config",
        &path2.display().to_string(),
        "--admin-addr",
        "127.0.0.1:0",
    ])
    .await;
    // The flag's listener serves the admin API.
    let admin = d.admin.clone().expect("the admin listener was logged");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
        .unwrap()
        .connect()
        .await
        .expect("admin listener answers");
    let plans = quotad::api::pb::quota_admin_client::QuotaAdminClient::with_interceptor(
        channel,
        crate::support::Bearer(Some(crate::support::OPS_TOKEN.into())),
    )
    .list_plans(quotad::api::pb::ListPlansRequest {})
    .await
    .expect("admin API answers")
    .into_inner();
    assert_eq!(plans.plans.len(), 4);
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
}

#[tokio::test]
async fn json_logs_carry_the_request_id_of_a_refusal_and_never_a_key() {
    let mut d = spawn_serve(&["--log-format", "json", "--log", "quotad=debug"]).await;
    let mut c = RateLimiterClient::connect(format!("http://{}", d.grpc))
        .await
        .unwrap();
    assert!(
        c.check(CheckRequest {
            key: "demo-gold-key".into(),
            cost: 1,
            id: 1,
            ..Default::default()
        })
        .await
        .is_ok()
    );
    // Refused (cost above the cap): the caller's id comes back, and the
    // log line has it.
    let mut req = tonic::Request::new(CheckRequest {
        key: "secret-key-1234".into(),
        cost: u64::MAX,
        id: 2,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let e = c.check(req).await.expect_err("cost above the cap");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.metadata().get("x-request-id").unwrap(), "req-42");
    // Without an id from the caller, one is made up and returned.
    let e = c
        .check(CheckRequest {
            key: String::new(),
            cost: 1,
            id: 3,
            ..Default::default()
        })
        .await
        .expect_err("empty key");
    let made = e
        .metadata()
        .get("x-request-id")
        .expect("an id")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(made.len(), 16, "{made}");
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
    // Every line is one JSON object; the refusal with req-42 is there;
    // neither key appears anywhere.
    let mut lines = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), d.log.recv()).await {
        lines.push(line);
    }
    assert!(lines.iter().any(|l| l.contains(&made)), "{lines:#?}");
    let mut refusal = None;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        if v["request_id"] == "req-42" {
            refusal = Some(v);
        }
        assert!(
            !line.contains("secret-key-1234") && !line.contains("demo-gold-key"),
            "{line}"
        );
    }
    let refusal = refusal.unwrap_or_else(|| panic!("no line with req-42 in {lines:#?}"));
    assert_eq!(refusal["api"], "native");
    assert!(
        refusal["error"].as_str().unwrap().contains("cost"),
        "{refusal}"
    );
}

#[test]
fn domains_with_a_line_break_are_refused_from_the_config_and_from_limits_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::CONFIG.replace(
        "domains: [edge]",
        "domains: [edge, \"edge\\nredis: off (forged)\"]",
    );
    let config = crate::support::write_file(dir.path(), "q.yaml", &config);
    let ok = crate::support::write_file(dir.path(), "ok.yaml", crate::support::CONFIG);
    let limits = crate::support::write_file(
        dir.path(),
        "limits.yaml",
        "domain: \"rl\\nredis: off (forged)\"\ndescriptors: []\n",
    );
    let cases = [
        (
            Command::new(BIN)
                .arg("check-config")
                .arg(&config)
                .output()
                .unwrap(),
            format!(
                "{}:21:19: envoy.domains[1]: a domain must be printable",
                config.display()
            ),
        ),
        (
            Command::new(BIN)
                .arg("check-config")
                .arg(&ok)
                .arg("--limits")
                .arg(&limits)
                .output()
                .unwrap(),
            format!(
                "{}:1:9: domain: a domain must be printable",
                limits.display()
            ),
        ),
    ];
    for (out, want) in cases {
        let shown = crate::support::printed(&out);
        assert_eq!(out.status.code(), Some(64), "{shown}");
        assert!(shown.contains(&want), "{shown}");
        assert!(!shown.contains("\nredis: off (forged)"), "{shown}");
    }
}

/// The soft and hard "Max open files" of process `pid`.
fn open_files(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().expect("soft").to_owned();
    let hard = fields.next().expect("hard").to_owned();
    (soft, hard)
}

#[tokio::test]
async fn a_low_open_files_limit_is_raised_to_the_hard_one_at_start() {
    use tokio::io::AsyncBufReadExt;
    // A shell's usual soft limit of 1 024, below what the default caps
    // need (1 024 gRPC connections, 512 HTTP, 64 more).
    let mut child = tokio::process::Command::new("prlimit")
        .args(["--nofile=1024:", BIN, "serve", "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env("QUOTAD_LOG", "info")
        .env_remove("QUOTAD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) runs quotad");
    let pid = child.id().expect("a pid");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut startup = String::new();
    let ready = async {
        while let Some(line) = lines.next_line().await.expect("read the log") {
            startup.push_str(&line);
            startup.push('\n');
            if line.contains("quotad ready") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("the daemon started");
    let (soft, hard) = open_files(pid);
    let hard_n: u64 = hard.parse().unwrap_or(1 << 20);
    assert_eq!(
        soft,
        hard_n.min(1 << 20).to_string(),
        "raised to the hard limit"
    );
    // With room for the caps, nothing to warn about.
    if hard_n >= 1_600 {
        assert!(
            !startup.contains("open-files limit"),
            "no warning with a soft limit of {soft}:\n{startup}"
        );
    }
    let _ = child.kill().await;
}

#[test]
fn check_only_fails_when_a_listeners_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = taken.local_addr().expect("its address").to_string();
    let check = |grpc: &str| {
        Command::new(BIN)
            .args(["serve", "--check-only", "--grpc-addr", grpc])
            .args(["--http-addr", "127.0.0.1:0"])
            .env_remove("QUOTAD_CONFIG")
            .output()
            .expect("quotad runs")
    };
    let out = check(&addr);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "the gRPC listener (server.grpc_addr) cannot bind {addr}: Address already in use"
        )),
        "{said}"
    );
    // A free address passes.
    let out = check("127.0.0.1:0");
    assert!(out.status.success(), "{out:?}");
    drop(taken);
}

#[test]
fn a_bind_failure_is_said_once_with_its_cause_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = taken.local_addr().expect("its address").to_string();
    let out = Command::new(BIN)
        .args(["serve", "--grpc-addr", &addr, "--http-addr", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env_remove("QUOTAD_CONFIG")
        .output()
        .expect("quotad runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.matches("Address already in use").count(), 1, "{said}");
    assert!(
        said.contains(&format!("cannot bind grpc listener on {addr}")),
        "{said}"
    );
    drop(taken);
}

#[test]
fn a_bad_log_filter_is_said_once() {
    let out = Command::new(BIN)
        .args(["serve", "--log", "foo=["])
        .env_remove("QUOTAD_CONFIG")
        .output()
        .expect("quotad runs");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.starts_with("error: --log: invalid filter 'foo=['"),
        "{said}"
    );
    assert_eq!(
        said.matches("error parsing level filter").count(),
        1,
        "{said}"
    );
}

#[test]
fn switches_take_the_usual_spellings_and_addresses_take_host_names() {
    let check = |shadow: &str, grpc: &str| {
        Command::new(BIN)
            .args(["serve", "--check-only", "--grpc-addr", grpc])
            .args(["--http-addr", "127.0.0.1:0"])
            .env("QUOTAD_SHADOW", shadow)
            .env_remove("QUOTAD_CONFIG")
            .output()
            .expect("quotad runs")
    };
    for (spelling, on) in [
        ("1", true),
        ("yes", true),
        ("ON", true),
        ("0", false),
        ("no", false),
    ] {
        let out = check(spelling, "localhost:0");
        assert!(out.status.success(), "{spelling}: {out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        let want = if on { "shadow on" } else { "shadow off" };
        assert!(said.contains(want), "{spelling}: {said}");
        assert!(
            said.contains("grpc 127.0.0.1:0"),
            "localhost resolved: {said}"
        );
    }
    let out = check("maybe", "127.0.0.1:0");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected 1, true, yes or on"),
        "{out:?}"
    );
    let out = check("0", "8081");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected IP:PORT or HOST:PORT"),
        "{out:?}"
    );
}

#[test]
fn the_hash_secret_can_come_from_the_environment_or_a_file() {
    let secret = "00112233445566778899aabbccddeeff";
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hash.secret");
    std::fs::write(&file, format!("{secret}\n")).expect("write the secret");
    // A config with a Redis URL and no store.hash_secret.
    let config = dir.path().join("quotad.yaml");
    std::fs::write(
        &config,
        format!(
            "{}redis: {{ url: \"redis://127.0.0.1:6379\" }}\n",
            crate::support::CONFIG
        ),
    )
    .expect("write the config");
    let check = |args: &[&str], env: Option<&str>| {
        let mut cmd = crate::support::process::serve_command();
        cmd.arg("--check-only")
            .args(args)
            .env_remove("QUOTAD_REDIS")
            .env_remove("QUOTAD_HASH_SECRET")
            .env_remove("QUOTAD_HASH_SECRET_FILE");
        if let Some(v) = env {
            cmd.env("QUOTAD_HASH_SECRET", v);
        }
        cmd.output().expect("quotad runs")
    };
    let file_arg = file.display().to_string();
    let config_arg = config.display().to_string();
    let redis = ["--redis", "redis://127.0.0.1:6379"];
    for (args, env) in [
        (vec![redis[0], redis[1]], Some(secret)),
        (
            vec![redis[0], redis[1], "--hash-secret-file", &file_arg],
            None,
        ),
        (vec!["--config", &config_arg], Some(secret)),
        (
            vec!["--config", &config_arg, "--hash-secret-file", &file_arg],
            None,
        ),
    ] {
        let out = check(&args, env);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("hash secret set"), "{said}");
        assert!(!said.contains(secret), "never shown: {said}");
    }
    // Without one, the config file's error says where one can come from.
    let out = check(&["--config", &config_arg], None);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("openssl rand -hex 16"),
        "{out:?}"
    );
    // A bad one is named by its source, never echoed; two sources are one
    // too many.
    let bad = "0011223344556677XYZ";
    let out = check(&redis, Some(bad));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("QUOTAD_HASH_SECRET: expected 32 hex digits"),
        "{said}"
    );
    assert!(!said.contains(bad), "{said}");
    let out = check(
        &[redis[0], redis[1], "--hash-secret-file", &file_arg],
        Some(secret),
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give one"),
        "{out:?}"
    );
}

#[tokio::test]
async fn the_embedded_configs_digest_is_its_texts() {
    use sha2::Digest;
    let d = spawn_serve(&[]).await;
    let addr: std::net::SocketAddr = d.http.parse().expect("the HTTP address");
    let (status, body) = crate::support::http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let digest = quotad::core::hash::hex(&sha2::Sha256::digest(
        quotad::config::EMBEDDED_DEFAULT.as_bytes(),
    ));
    // Not SHA-256 of nothing (e3b0c44298fc…): the text in force.
    assert!(
        body.contains(&format!("(digest {})", &digest[..12])),
        "{body}"
    );
}

/// `check-config` and `serve --check-only` of a config without plans take
/// its Envoy domains from `--limits`; without them it serves nothing and
/// is refused. Every mistake of a file is listed, each on its line.
#[test]
fn a_config_without_plans_needs_limits_files_and_every_mistake_is_listed() {
    let (dir, config) = fixture(
        "quotad.yaml",
        "server: { grpc_addr: 127.0.0.1:0, http_addr: 127.0.0.1:0 }\n",
    );
    let limits = dir.path().join("shop.yaml");
    std::fs::write(
        &limits,
        "domain: shop\ndescriptors:\n  - key: path\n    rate_limit: { unit: second, requests_per_unit: 5 }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no plans defined, and no limits files"),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .arg("--limits")
        .arg(&limits)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("plans: none"), "{stdout}");
    let out = crate::support::process::serve_command()
        .arg("--config")
        .arg(&config)
        .arg("--limits")
        .arg(&limits)
        .arg("--check-only")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Three mistakes: three located lines, exit 64.
    std::fs::write(
        &config,
        "default_plan: free\nplans:\n  free: { limits: [ { name: a, rate: 1, per: fortnight } ] }\nserver: { max_connections: lots }\nreqests: {}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = config.display().to_string();
    let located: Vec<&str> = stderr.lines().filter(|l| l.contains(&path)).collect();
    assert_eq!(located.len(), 3, "{stderr}");
    assert!(
        located[0].contains(":3:") && located[0].contains("fortnight"),
        "{stderr}"
    );
    assert!(
        located[1].contains(":4:") && located[1].contains("server.max_connections"),
        "{stderr}"
    );
    assert!(
        located[2].contains(":5:") && located[2].contains("did you mean 'requests'"),
        "{stderr}"
    );
}

/// `quotad probe` against a running quotad: `/readyz`, gRPC health and
/// an RLS call pass (exit 0, a line each); a listener nobody serves
/// fails with 69 naming the step; a wrong URL is a usage error (64).
#[tokio::test]
async fn probe_passes_against_a_ready_quotad_and_fails_naming_the_step() {
    let d = spawn_serve(&[]).await;
    let http = format!("--http=http://{}", d.http);
    let grpc = format!("--grpc=http://{}", d.grpc);
    let out = tokio::process::Command::new(BIN)
        .args(["probe", &http, &grpc])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("ok: GET http://") && lines[0].contains("/readyz: 200"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("ok: gRPC health") && lines[1].ends_with("SERVING"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("ok: Envoy RLS call") && lines[2].ends_with("OK"),
        "{stdout}"
    );

    // Nothing listens on a port just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args([
            "probe",
            &http,
            &format!("--grpc=http://{closed}"),
            "--timeout=2s",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(
        stdout.contains("ok: GET") && stdout.contains(&format!("failed: connect http://{closed}")),
        "{stdout}"
    );

    for wrong in ["--grpc=ftp://x", "--http=ftp://x", "--http=not a url"] {
        let out = tokio::process::Command::new(BIN)
            .args(["probe", wrong])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{wrong}: {out:?}");
    }
}

/// `check-config` (quotad's and quotactl's) takes the hash secret from
/// outside the file as `serve` does: a config with Redis and no
/// `store.hash_secret` checks as it would serve.
#[test]
fn check_config_takes_the_hash_secret_from_outside_the_file_as_serve_does() {
    let (dir, config) = fixture(
        "redis.yaml",
        "default_plan: free\nplans: { free: {} }\nredis: { url: \"redis://127.0.0.1:1/0\" }\n",
    );
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let quotactl = env!("CARGO_BIN_EXE_quotactl");
    for bin in [BIN, quotactl] {
        let check = || {
            let mut c = Command::new(bin);
            c.arg("check-config")
                .arg(&config)
                .env_remove("QUOTAD_HASH_SECRET")
                .env_remove("QUOTAD_HASH_SECRET_FILE");
            c
        };
        let out = check().output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{bin}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("hash secret"),
            "{out:?}"
        );
        let out = check()
            .env("QUOTAD_HASH_SECRET", "00112233445566778899aabbccddeeff")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin}: {out:?}");
        let out = check()
            .env("QUOTAD_HASH_SECRET_FILE", &secret)
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin}: {out:?}");
        let out = check()
            .env("QUOTAD_HASH_SECRET", "not-hex")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bin}: {out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("not-hex"),
            "never echoed: {out:?}"
        );
    }
}
