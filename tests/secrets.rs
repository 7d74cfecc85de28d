//! Secrets never shown: a Redis password (whatever characters it holds,
//! however the URL is mistyped) in `check-config`, `serve --check-only`,
//! logs, stderr, a refused reload and the admin API's `last_error`.

use std::process::Command;
use std::time::Duration;

use quotad::api::pb::quota_admin_client::QuotaAdminClient;
use quotad::api::pb::{ListPlansRequest, ReloadRequest};

use crate::support::process::{BIN, Daemon, spawn_serve};
use crate::support::{Bearer, OPS_TOKEN, VIEWER_TOKEN, printed};

/// Every piece of [`password`] starts with this; no output may hold it.
const MARK: &str = "sek";

/// Every character a URL reserves, `%` and a space, each between two
/// pieces of the password.
fn password() -> String {
    let mut pw = format!("{MARK}A");
    for (i, c) in ":/?#[]@!$&'()*+,;=% ".chars().enumerate() {
        pw.push(c);
        pw.push_str(&format!("{MARK}{i}"));
    }
    pw
}

/// `s` with every byte outside the unreserved set percent-encoded.
fn encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Well-formed and mistyped URLs carrying the password, raw and
/// percent-encoded.
fn urls() -> Vec<String> {
    let mut urls = Vec::new();
    for pw in [password(), encoded(&password())] {
        for prefix in ["redis://", "redis:/", "rediss//", "redis:", "http://", ""] {
            for userinfo in [format!(":{pw}"), format!("user:{pw}")] {
                urls.push(format!("{prefix}{userinfo}@127.0.0.1:6379/0"));
            }
        }
        urls.push(format!("unix:///run/redis.sock?db=1&pass={pw}"));
    }
    urls
}

const HASH_SECRET: &str = "store: { hash_secret: \"000102030405060708090a0b0c0d0e0f\" }\n";

fn base_config() -> String {
    format!("{}{HASH_SECRET}", crate::support::CONFIG)
}

/// `url` as a single-quoted YAML scalar.
fn yaml_quoted(url: &str) -> String {
    format!("'{}'", url.replace('\'', "''"))
}

fn assert_hidden(what: &str, out: &str) {
    assert!(!out.contains(MARK), "{what} shows the password:\n{out}");
}

#[test]
fn redis_passwords_never_show_in_check_config_or_check_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = crate::support::write_file(dir.path(), "base.yaml", &base_config());
    let mut accepted = 0;
    for (n, url) in urls().iter().enumerate() {
        let in_file = format!("{}redis: {{ url: {} }}\n", base_config(), yaml_quoted(url));
        let file = crate::support::write_file(dir.path(), &format!("c{n}.yaml"), &in_file);
        let check = Command::new(BIN)
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let shown = printed(&check);
        assert_hidden(&format!("check-config with {url:?}"), &shown);
        assert!(
            matches!(check.status.code(), Some(0 | 64)),
            "{url:?}: {check:?}"
        );
        if check.status.success() {
            accepted += 1;
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        let check_only = |args: &[&str], env: Option<&str>| {
            let mut cmd = Command::new(BIN);
            cmd.args(["serve", "--check-only"])
                .args(args)
                .env_remove("QUOTAD_REDIS")
                .env_remove("QUOTAD_CONFIG");
            if let Some(url) = env {
                cmd.env("QUOTAD_REDIS", url);
            }
            let out = cmd.output().unwrap();
            assert_eq!(out.status.code(), check.status.code(), "{url:?}: {out:?}");
            printed(&out)
        };
        let file = file.display().to_string();
        let base = base.display().to_string();
        assert_hidden(
            "serve --check-only",
            &check_only(&["--config", &file], None),
        );
        assert_hidden(
            "serve --check-only --redis",
            &check_only(&["--config", &base, "--redis", url], None),
        );
        assert_hidden(
            "serve --check-only with QUOTAD_REDIS",
            &check_only(&["--config", &base], Some(url)),
        );
    }
    // The percent-encoded, well-formed URLs are valid: they were checked
    // and summarised, not only refused.
    assert!(accepted >= 2, "{accepted} URLs accepted");
}

/// Reads the daemon's log until a line holds `text` (bounded); returns
/// every line read.
async fn log_until(d: &mut Daemon, text: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while let Some(line) = d.log.recv().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(text) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no log line {text:?} in:\n{seen}"));
    seen
}

#[test]
fn serve_refuses_a_url_redis_cannot_read_without_showing_its_password() {
    // A raw `/` ends a strict parser's authority: the `redis` crate
    // cannot read this URL, and must be asked before anything binds.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://:{}@127.0.0.1:6379/0", password());
    let body = format!("{}redis: {{ url: {} }}\n", base_config(), yaml_quoted(&url));
    let config = crate::support::write_file(dir.path(), "q.yaml", &body);
    let out = crate::support::process::serve_command()
        .arg("--config")
        .arg(&config)
        .env_remove("QUOTAD_REDIS")
        .output()
        .unwrap();
    let shown = printed(&out);
    assert_hidden("serve's log and stderr", &shown);
    assert_eq!(out.status.code(), Some(64), "{shown}");
    assert!(
        shown.contains("redis.url: invalid Redis URL 'redis://<redacted>@127.0.0.1:6379/0': "),
        "{shown}"
    );
}

#[tokio::test]
async fn a_password_redis_refuses_never_shows_in_the_log() {
    let redis = crate::support::RedisServer::start().await;
    // Set after start: the harness checks the server with PING first.
    let set = redis.command("CONFIG SET requirepass right-one").await;
    assert_eq!(set.unwrap().trim(), "+OK");
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "redis://:{}@127.0.0.1:{}/0",
        encoded(&password()),
        redis.port
    );
    let body = format!("{}redis: {{ url: {} }}\n", base_config(), yaml_quoted(&url));
    let config = crate::support::write_file(dir.path(), "q.yaml", &body);
    let mut d = spawn_serve(&["--config", &config.display().to_string()]).await;
    let log = d.startup.clone() + &log_until(&mut d, "cannot reach Redis").await;
    assert_hidden("the log", &log);
    assert!(log.contains("url=redis://:<redacted>@127.0.0.1"), "{log}");
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
    let rest = format!("{}{}", drain(&mut d).await, d.stderr_at_exit().await);
    assert_hidden("the log and stderr", &rest);
}

/// Every log line left, once the daemon has exited (bounded).
async fn drain(d: &mut Daemon) -> String {
    let mut out = String::new();
    let read = async {
        while let Some(line) = d.log.recv().await {
            out.push_str(&line);
            out.push('\n');
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the daemon's stdout reached its end");
    out
}

#[tokio::test]
async fn a_reload_refused_for_its_redis_url_keeps_the_password_out_of_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}reload: {{ watch: false }}\n",
        base_config(),
        crate::support::admin_section("")
    );
    let config = crate::support::write_file(dir.path(), "q.yaml", &body);
    let mut d = spawn_serve(&["--config", &config.display().to_string()]).await;
    let admin = d.admin.clone().expect("the admin listener was logged");
    let client = |token: &str| {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
            .unwrap()
            .connect_lazy();
        QuotaAdminClient::with_interceptor(channel, Bearer(Some(token.to_owned())))
    };
    let (mut ops, mut viewer) = (client(OPS_TOKEN), client(VIEWER_TOKEN));
    let mut refused = 0;
    for url in urls() {
        let broken = format!("{body}redis: {{ url: {} }}\n", yaml_quoted(&url));
        std::fs::write(&config, broken).unwrap();
        let Err(e) = ops.reload(ReloadRequest {}).await else {
            // A valid URL: the reload goes through (Redis needs a restart).
            continue;
        };
        refused += 1;
        assert_hidden(&format!("the reload's error for {url:?}"), e.message());
        assert!(e.message().contains("redis.url"), "{}", e.message());
        let plans = viewer.list_plans(ListPlansRequest {}).await.unwrap();
        let last = plans.into_inner().config.unwrap().last_error;
        assert!(last.contains("redis.url"), "{last}");
        assert_hidden("last_error", &last);
    }
    assert!(refused > urls().len() / 2, "{refused} reloads refused");
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
    let rest = drain(&mut d).await;
    let log = format!("{}{rest}{}", d.startup, d.stderr_at_exit().await);
    assert!(log.contains("config reload refused"), "{log}");
    assert_hidden("the log", &log);
}

/// A Redis that asks for [`password`].
async fn redis_with_password() -> crate::support::RedisServer {
    let redis = crate::support::RedisServer::start().await;
    // Set after start (the harness checks the server with PING first),
    // as one argument: no shell or inline command splits it.
    let set = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CONFIG",
            "SET",
            "requirepass",
        ])
        .arg(password())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK", "{set:?}");
    redis
}

#[tokio::test]
async fn a_redis_password_file_flag_reaches_redis_and_is_never_shown() {
    let redis = redis_with_password().await;
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::write_file(dir.path(), "q.yaml", &base_config());
    let pw_file =
        crate::support::write_file(dir.path(), "redis.pass", &format!("{}\n", password()));
    let (config, pw_file) = (config.display().to_string(), pw_file.display().to_string());
    // The password is in neither the URL nor the config: only the file.
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let by_flag = [
        "--config",
        &config,
        "--redis",
        &url,
        "--redis-password-file",
        &pw_file,
    ];
    let check = Command::new(BIN)
        .args(["serve", "--check-only"])
        .args(by_flag)
        .env_remove("QUOTAD_REDIS_PASSWORD_FILE")
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert_hidden("serve --check-only", &printed(&check));
    assert!(
        printed(&check).contains("(password from a file)"),
        "{check:?}"
    );
    let by_env = [("QUOTAD_REDIS_PASSWORD_FILE", pw_file.as_str())];
    for (args, env) in [(&by_flag[..], &[][..]), (&by_flag[..4], &by_env[..])] {
        let mut d = crate::support::process::spawn_serve_env(args, env).await;
        // Connected: Redis took the password.
        let log = d.startup.clone() + &log_until(&mut d, "redis sync: connected").await;
        d.signal("-TERM");
        assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
        let rest = drain(&mut d).await;
        let all = format!("{log}{rest}{}", d.stderr_at_exit().await);
        assert_hidden("the log", &all);
        assert!(!all.contains("process arguments"), "{all}");
    }
    // Without Redis to use it for, the flag is a usage error.
    let out = Command::new(BIN)
        .args(["serve", "--check-only", "--config", &config])
        .args(["--redis-password-file", &pw_file])
        .env_remove("QUOTAD_REDIS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        printed(&out).contains("--redis-password-file: there is no Redis"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_password_on_the_command_line_is_warned_of_but_not_from_the_environment() {
    let redis = redis_with_password().await;
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::write_file(dir.path(), "q.yaml", &base_config());
    let config = config.display().to_string();
    let url = format!(
        "redis://:{}@127.0.0.1:{}/0",
        encoded(&password()),
        redis.port
    );
    let warning = "password in this URL is visible in process arguments";
    // On the command line: warned at start (and by --check-only), and
    // the password still works and never shows.
    let mut d = spawn_serve(&["--config", &config, "--redis", &url]).await;
    let log = d.startup.clone() + &log_until(&mut d, "redis sync: connected").await;
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(warning)),
        "{log}"
    );
    assert!(
        log.contains("QUOTAD_REDIS") && log.contains("--redis-password-file"),
        "{log}"
    );
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
    let rest = drain(&mut d).await;
    assert_hidden(
        "the log",
        &format!("{log}{rest}{}", d.stderr_at_exit().await),
    );
    let check = Command::new(BIN)
        .args([
            "serve",
            "--check-only",
            "--config",
            &config,
            "--redis",
            &url,
        ])
        .env_remove("QUOTAD_REDIS")
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(warning),
        "{check:?}"
    );
    assert_hidden("serve --check-only", &printed(&check));

    // From QUOTAD_REDIS: nothing to warn of.
    let mut d = crate::support::process::spawn_serve_env(
        &["--config", &config],
        &[("QUOTAD_REDIS", url.as_str())],
    )
    .await;
    let log = d.startup.clone() + &log_until(&mut d, "redis sync: connected").await;
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
    let all = format!("{log}{}{}", drain(&mut d).await, d.stderr_at_exit().await);
    assert!(!all.contains(warning), "{all}");
    assert_hidden("the log", &all);
    // No password in the URL: nothing to warn of either.
    let plain = format!("redis://127.0.0.1:{}/0", redis.port);
    let check = Command::new(BIN)
        .args([
            "serve",
            "--check-only",
            "--config",
            &config,
            "--redis",
            &plain,
        ])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(!printed(&check).contains(warning), "{check:?}");
}

/// What a secret file holds, in the shapes a YAML parser or a PEM
/// reader trips over differently.
const SECRET: &str = "s3cr3t-token-value";

fn secret_files() -> Vec<String> {
    [
        "{S}\n",
        "{S}: x\n",
        "? {S}\n",
        "{{{S}}}\n",
        "[{S}\n",
        "\"{S}\\q\"\n",
        "{S}\t: [\n",
        "x\t{S}: 1\n",
        "&{S} x\n",
        "!{S} x\n",
        "!<{S}> x\n",
        "{S}: a: b\n",
        "- {S}\n",
        "'{S}\n",
        "domain: x\n{S}: 1\n",
        "plans: {S}\n",
        "-----BEGIN {S}-----\nczNjcjN0\n",
        "-----BEGIN PRIVATE KEY-----\n{S}!\n-----END PRIVATE KEY-----\n",
    ]
    .iter()
    .map(|t| t.replace("{S}", SECRET))
    .collect()
}

/// The secret, or its bytes as a parser's `Debug` of a `Vec<u8>` shows
/// them.
fn assert_not_quoted(what: &str, out: &std::process::Output) {
    let shown = printed(out);
    let bytes = format!("{:?}", &SECRET.as_bytes()[..6]);
    let bytes = bytes.trim_matches(['[', ']']);
    assert!(
        !shown.contains("s3cr3t") && !shown.contains(bytes),
        "{what} quotes the file:\n{shown}"
    );
    assert_eq!(out.status.code(), Some(64), "{what}: {shown}");
}

#[test]
fn a_secret_file_given_as_config_limits_or_tls_file_is_never_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let ok = crate::support::write_file(dir.path(), "ok.yaml", crate::support::CONFIG);
    let run = |args: &[&std::ffi::OsStr]| Command::new(BIN).args(args).output().unwrap();
    for (n, text) in secret_files().iter().enumerate() {
        let file = crate::support::write_file(dir.path(), &format!("secret{n}"), text);
        let (f, ok) = (file.as_os_str(), ok.as_os_str());
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        let out = run(&[os("check-config"), f]);
        assert_not_quoted(&format!("check-config {text:?}"), &out);
        // Still located: the file, its line and column.
        assert!(
            printed(&out).contains(&format!("secret{n}:")),
            "{}",
            printed(&out)
        );
        let out = run(&[os("serve"), os("--check-only"), os("--config"), f]);
        assert_not_quoted(&format!("serve --config {text:?}"), &out);
        let out = run(&[os("check-config"), ok, os("--limits"), f]);
        assert_not_quoted(&format!("--limits {text:?}"), &out);
        let out = run(&[
            os("serve"),
            os("--check-only"),
            os("--config"),
            ok,
            os("--limits"),
            f,
        ]);
        assert_not_quoted(&format!("serve --limits {text:?}"), &out);
        // As TLS files (certificate, key, client CA) and the Redis CA.
        let path = file.display();
        for section in [
            format!("server:\n  tls: {{ cert_file: {path}, key_file: {path} }}\n"),
            format!(
                "admin:\n  tls: {{ cert_file: {path}, key_file: {path} }}\n  tokens: [{{ id: a, sha256: \"{}\", scopes: [read] }}]\n",
                "0".repeat(64)
            ),
            format!(
                "store: {{ hash_secret: \"000102030405060708090a0b0c0d0e0f\" }}\nredis: {{ url: \"rediss://127.0.0.1:1\", tls_ca_file: {path} }}\n"
            ),
        ] {
            let body = format!("default_plan: f\nplans: {{ f: {{ limits: [] }} }}\n{section}");
            let config = crate::support::write_file(dir.path(), "tls.yaml", &body);
            let out = run(&[os("check-config"), config.as_os_str()]);
            assert_not_quoted(&format!("a TLS file {text:?}"), &out);
        }
    }
}
