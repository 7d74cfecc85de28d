//! `quotactl`, the operator CLI, end to end: the real binary run as a
//! child process against a real daemon's admin listener. Exit codes and
//! output are what scripts rely on, so both are checked exactly. Every
//! run is checked to print no admin token, and listings to show keys only
//! by their hashes.

use std::process::Stdio;
use std::time::Duration;

use quotad::api::pb::{CheckResponse, DenyReason};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::support::{CONFIG, OPS_TOKEN, TestDaemon, VIEWER_TOKEN, admin_section, write_file};

const BIN: &str = env!("CARGO_BIN_EXE_quotactl");

/// The daemon clock's start, T0, as quotactl prints times.
const T0: &str = "2026-11-27T12:00:00Z";

/// What one run of quotactl did.
#[derive(Debug)]
struct Out {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Asserts the exit code.
    fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code of quotactl {:?}: {self:#?}",
            self.args
        );
        self
    }

    /// Asserts success and an empty stderr.
    fn ok(self) -> Self {
        let out = self.expect(0);
        assert_eq!(out.stderr, "", "{out:#?}");
        out
    }

    /// Stdout as one JSON document.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }

    /// Asserts a failure with `code`, nothing on stdout and exactly
    /// `error: <message>` on stderr.
    fn fails(self, code: i32, message: &str) -> Self {
        let out = self.expect(code);
        assert_eq!(out.stdout, "", "{out:#?}");
        assert_eq!(out.stderr, format!("error: {message}\n"), "{out:#?}");
        out
    }

    /// Asserts a failure with `code`, nothing on stdout, and stderr
    /// containing each of `parts`.
    fn fails_with(self, code: i32, parts: &[&str]) -> Self {
        let out = self.expect(code);
        assert_eq!(out.stdout, "", "{out:#?}");
        for part in parts {
            assert!(out.stderr.contains(part), "stderr lacks {part:?}: {out:#?}");
        }
        out
    }

    /// Stdout's lines.
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// How to run quotactl: the server and token go through the environment
/// (`QUOTACTL_SERVER`, `QUOTACTL_TOKEN`), as an operator's shell would.
#[derive(Debug, Clone, Default)]
struct Ctl {
    env: Vec<(String, String)>,
    stdin: Option<String>,
    /// Strings that must never appear in quotactl's stdout or stderr.
    secrets: Vec<String>,
}

impl Ctl {
    /// Nothing set: no server, no token.
    fn bare() -> Self {
        Self {
            secrets: vec![OPS_TOKEN.to_owned(), VIEWER_TOKEN.to_owned()],
            ..Self::default()
        }
    }

    /// The daemon's admin listener with `token`.
    fn to(d: &TestDaemon, token: &str) -> Self {
        Self::bare().server(&admin_url(d)).token(token)
    }

    /// The daemon's admin listener with the ops token (read and write).
    fn ops(d: &TestDaemon) -> Self {
        Self::to(d, OPS_TOKEN)
    }

    fn server(self, url: &str) -> Self {
        self.env("QUOTACTL_SERVER", url)
    }

    fn token(mut self, token: &str) -> Self {
        self.secrets.push(token.to_owned());
        self.env("QUOTACTL_TOKEN", token)
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    fn secret(mut self, s: &str) -> Self {
        self.secrets.push(s.to_owned());
        self
    }

    fn stdin(mut self, text: &str) -> Self {
        self.stdin = Some(text.to_owned());
        self
    }

    /// Runs `quotactl ARGS` to completion (bounded), in the test's runtime
    /// so the daemon keeps serving meanwhile.
    async fn run(&self, args: &[&str]) -> Out {
        let mut cmd = tokio::process::Command::new(BIN);
        // Nothing of the developer's environment leaks in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("QUOTACTL_") {
                cmd.env_remove(&name);
            }
        }
        for name in [
            "QUOTACTL_SERVER",
            "QUOTACTL_TOKEN",
            "QUOTACTL_TOKEN_FILE",
            "QUOTACTL_CA_FILE",
            "QUOTACTL_CERT_FILE",
            "QUOTACTL_KEY_FILE",
        ] {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("quotactl runs");
        if let Some(text) = &self.stdin {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(text.as_bytes()).await.expect("write stdin");
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("quotactl {args:?} did not finish"))
            .expect("quotactl output");
        let out = Out {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            code: output.status.code().expect("quotactl exited, not killed"),
            stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
        };
        for secret in &self.secrets {
            assert!(
                !out.stdout.contains(secret.as_str()) && !out.stderr.contains(secret.as_str()),
                "quotactl printed a token: {out:#?}"
            );
        }
        out
    }
}

async fn daemon() -> TestDaemon {
    TestDaemon::with_config(&format!("{CONFIG}{}", admin_section(""))).await
}

fn admin_url(d: &TestDaemon) -> String {
    format!("http://{}", d.admin_addr.expect("an admin listener"))
}

/// A loopback address nothing listens on, for as long as the socket
/// returned with it lives: bound, not listening, so connections are
/// refused and no other process is handed the port meanwhile (a port
/// merely found free could be taken by another test's server, and a
/// call to it answered).
fn dead_server() -> (String, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    s.bind(&any.into()).expect("a free port");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("a bound address")
        .port();
    (format!("http://127.0.0.1:{port}"), s)
}

fn hash(d: &TestDaemon, key: &str) -> String {
    d.engine.hasher().display(key.as_bytes())
}

async fn check(d: &TestDaemon, key: &str) -> CheckResponse {
    d.check(key, 1).await
}

/// A table line's cells (columns are padded with two or more spaces;
/// empty cells vanish).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// The digest of the config in effect, as `plans -o json` shows it.
async fn digest(d: &TestDaemon) -> String {
    let plans = Ctl::ops(d).run(&["plans", "-o", "json"]).await.ok().json();
    plans["config"]["digest"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_plan_override_is_set_shown_enforced_and_removed() {
    let d = daemon().await;
    let ctl = Ctl::ops(&d);
    let key = "alice-secret-api-key";
    let h = hash(&d, key);
    let ctl = ctl.secret(key);
    assert_eq!(check(&d, key).await.policy, "free/per-second");

    let set = ctl
        .run(&[
            "override",
            "set",
            key,
            "--plan",
            "gold",
            "--expires",
            "30d",
            "--reason",
            "ticket 42: trial upgrade",
        ])
        .await
        .ok();
    let fields = format!(
        "key hash  {h}\n\
         gives     plan gold\n\
         expires   2026-12-27T12:00:00Z\n\
         reason    ticket 42: trial upgrade\n\
         set by    ops\n\
         updated   {T0}\n"
    );
    assert_eq!(set.stdout, format!("override set (was: none)\n{fields}"));

    // The very next check through the real check API is gold's.
    let c = check(&d, key).await;
    assert!(c.allowed);
    assert_eq!((c.policy.as_str(), c.limit), ("gold/per-second", 2000));

    // get: the table, and JSON with the API's field names.
    let get = ctl.run(&["override", "get", key]).await.ok();
    assert_eq!(get.stdout, fields);
    let want = json!({
        "key_hash": h,
        "plan": "gold",
        "limits": [],
        "block": false,
        "expires_at": "2026-12-27T12:00:00Z",
        "reason": "ticket 42: trial upgrade",
        "created_by": "ops",
        "updated_at": T0,
        "resolved": true,
    });
    let get = ctl.run(&["override", "get", key, "-o", "json"]).await.ok();
    assert_eq!(get.json(), want);
    // By the hash listings show, the same.
    let by_hash = ctl
        .run(&["-o", "json", "override", "get", "--hash", &h])
        .await;
    assert_eq!(by_hash.ok().json(), want);

    // Replacing says what it replaced.
    let again = ctl
        .run(&[
            "override", "set", key, "--plan", "gold", "--reason", "for good",
        ])
        .await
        .ok();
    assert_eq!(
        again.lines()[..3],
        [
            "override set (was: plan gold)",
            format!("key hash  {h}").as_str(),
            "gives     plan gold"
        ]
    );
    assert_eq!(again.lines()[3], "expires   never (until deleted)");
    let json_set = ctl
        .run(&[
            "override", "set", key, "--plan", "tiny", "--reason", "demoted", "-o", "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(json_set["override"]["plan"], "tiny");
    assert_eq!(json_set["override"]["expires_at"], Value::Null);
    assert_eq!(json_set["previous"]["plan"], "gold");
    assert_eq!(json_set["previous"]["reason"], "for good");
    assert_eq!(check(&d, key).await.policy, "tiny/per-minute");

    // rm: the key is back on its usual plan, and has no override.
    let rm = ctl.run(&["override", "rm", key]).await.ok();
    assert_eq!(
        rm.stdout,
        format!("override of key {h} deleted (was: plan tiny)\n")
    );
    assert_eq!(check(&d, key).await.policy, "free/per-second");
    let none = format!("key {h} has no override");
    ctl.run(&["override", "get", key]).await.fails(1, &none);
    ctl.run(&["override", "rm", key]).await.fails(1, &none);
    // With -o json, the error is a JSON object.
    let out = ctl
        .run(&["override", "get", key, "-o", "json"])
        .await
        .expect(1);
    assert_eq!(
        out.stderr,
        format!("{}\n", json!({ "error": { "code": 1, "message": none } }))
    );
}

#[tokio::test]
async fn a_block_denies_every_check_until_it_expires() {
    let d = daemon().await;
    let ctl = Ctl::ops(&d).secret("mallory-key");
    let h = hash(&d, "mallory-key");
    let set = ctl
        .run(&[
            "override",
            "set",
            "mallory-key",
            "--block",
            "--expires",
            "1h",
            "--reason",
            "x",
        ])
        .await
        .ok();
    assert_eq!(
        set.lines(),
        [
            "override set (was: none)",
            format!("key hash  {h}").as_str(),
            "gives     block",
            "expires   2026-11-27T13:00:00Z",
            "reason    x",
            "set by    ops",
            format!("updated   {T0}").as_str(),
        ]
    );
    let c = check(&d, "mallory-key").await;
    assert!(!c.allowed);
    assert_eq!(c.reason, DenyReason::Blocked as i32);
    assert_eq!(c.retry_after.unwrap().seconds, 3600);

    let get = ctl
        .run(&["override", "get", "mallory-key", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(get["block"], true);
    assert_eq!(get["plan"], Value::Null);
    assert_eq!(get["expires_at"], "2026-11-27T13:00:00Z");

    let usage = ctl.run(&["usage", "mallory-key"]).await.ok();
    let digest = digest(&d).await;
    assert_eq!(
        usage.stdout,
        format!(
            "key {h}: blocked until 2026-11-27T13:00:00Z\n\
             override: block (ops; x)\n\
             config version 1 (digest {digest})\n"
        )
    );
    let usage = ctl
        .run(&["usage", "mallory-key", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(usage["blocked"], true);
    assert_eq!(usage["blocked_until"], "2026-11-27T13:00:00Z");
    assert_eq!(usage["limits"], json!([]));

    // An hour on it has ended by itself.
    d.advance_ms(3_600_000);
    assert!(check(&d, "mallory-key").await.allowed);
    ctl.run(&["override", "get", "mallory-key"])
        .await
        .fails(1, &format!("key {h} has no override"));

    // --expires also takes a time.
    let at = ctl
        .run(&[
            "override",
            "set",
            "eve-key",
            "--block",
            "--expires",
            "2027-01-01T00:00:00Z",
            "--reason",
            "until new year",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(at["override"]["expires_at"], "2027-01-01T00:00:00Z");
    assert_eq!(at["previous"], Value::Null);
    assert!(!check(&d, "eve-key").await.allowed);
}

/// A block that has ended is gone (get and rm say so, the audit log says
/// `none`), so a new override replaces nothing and must say `was: none`.
#[tokio::test]
async fn setting_after_an_override_ended_replaces_nothing() {
    let d = daemon().await;
    let ctl = Ctl::ops(&d);
    ctl.run(&[
        "override",
        "set",
        "k",
        "--block",
        "--expires",
        "1h",
        "--reason",
        "x",
    ])
    .await
    .ok();
    d.advance_ms(3_600_000);
    ctl.run(&["override", "get", "k"])
        .await
        .fails(1, &format!("key {} has no override", hash(&d, "k")));
    let set = ctl
        .run(&["override", "set", "k", "--plan", "gold", "--reason", "y"])
        .await
        .ok();
    assert_eq!(set.lines()[0], "override set (was: none)");
    let set = ctl
        .run(&[
            "override", "set", "k", "--plan", "gold", "--reason", "z", "-o", "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(set["previous"]["reason"], "y");
}

#[tokio::test]
async fn own_limits_from_the_command_line_are_enforced() {
    let d = daemon().await;
    let ctl = Ctl::ops(&d).secret("bob-key");
    let h = hash(&d, "bob-key");
    let set = ctl
        .run(&[
            "override",
            "set",
            "bob-key",
            "--limit",
            "name=per-second,rate=5,per=second,burst=5",
            "--limit",
            "name=hourly,quota=7,per=hour",
            "--reason",
            "load test",
        ])
        .await
        .ok();
    assert_eq!(
        set.lines()[..3],
        [
            "override set (was: none)",
            format!("key hash  {h}").as_str(),
            "gives     limits per-second 5/second burst 5; hourly 7/hour",
        ]
    );
    let get = ctl
        .run(&["override", "get", "bob-key", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(get["plan"], "override");
    assert_eq!(
        get["limits"],
        json!([
            { "name": "per-second", "per": "second", "strict": false, "rate": 5, "burst": 5 },
            { "name": "hourly", "per": "hour", "strict": false, "quota": 7 },
        ])
    );
    for _ in 0..5 {
        let c = check(&d, "bob-key").await;
        assert!(c.allowed);
        assert_eq!(c.policy.split('/').next(), Some("override"));
    }
    let c = check(&d, "bob-key").await;
    assert!(!c.allowed);
    assert_eq!((c.policy.as_str(), c.limit), ("override/per-second", 5));

    // `ls --plan override` finds own limits.
    let ls = ctl
        .run(&["override", "ls", "--plan", "override", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(ls["total"], 1);
    assert_eq!(ls["overrides"][0]["key_hash"], h.as_str());
}

#[tokio::test]
async fn overrides_are_listed_filtered_and_paged_by_hash_only() {
    let d = daemon().await;
    let ctl = Ctl::ops(&d);
    let gold = ["key-gold-one", "key-gold-two", "key-gold-three"];
    for k in gold {
        ctl.run(&["override", "set", k, "--plan", "gold", "--reason", "vip"])
            .await
            .ok();
    }
    ctl.run(&[
        "override",
        "set",
        "key-blocked",
        "--block",
        "--expires",
        "1h",
        "--reason",
        "abuse seen",
    ])
    .await
    .ok();
    let keys = [
        "key-gold-one",
        "key-gold-two",
        "key-gold-three",
        "key-blocked",
    ];
    let ctl = keys.iter().fold(ctl, |c, k| c.secret(k));
    let mut hashes: Vec<String> = keys.iter().map(|k| hash(&d, k)).collect();
    hashes.sort();

    // The table: one row a key, by hash, with what it gives.
    let ls = ctl.run(&["override", "ls"]).await.ok();
    let lines = ls.lines();
    assert_eq!(
        cells(lines[0]),
        ["KEY HASH", "GIVES", "EXPIRES", "SET BY", "REASON"]
    );
    let rows: Vec<Vec<&str>> = lines[1..lines.len() - 1].iter().map(|l| cells(l)).collect();
    let mut want: Vec<Vec<&str>> = Vec::new();
    let blocked = hash(&d, "key-blocked");
    for h in &hashes {
        want.push(if *h == blocked {
            vec![
                h.as_str(),
                "block",
                "2026-11-27T13:00:00Z",
                "ops",
                "abuse seen",
            ]
        } else {
            vec![h.as_str(), "plan gold", "never", "ops", "vip"]
        });
    }
    assert_eq!(rows, want);
    assert_eq!(lines[lines.len() - 1], "4 shown, 4 in force");

    // Filters.
    let only_gold = ctl
        .run(&["override", "ls", "--plan", "gold", "-o", "json"])
        .await
        .ok()
        .json();
    // `total` counts every override in force, the filter aside.
    assert_eq!(only_gold["total"], 4);
    let listed: Vec<&str> = only_gold["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["plan"], "gold");
            o["key_hash"].as_str().unwrap()
        })
        .collect();
    let gold_hashes: Vec<&str> = hashes
        .iter()
        .map(String::as_str)
        .filter(|h| *h != blocked)
        .collect();
    assert_eq!(listed, gold_hashes);
    assert_eq!(only_gold["next_page_token"], Value::Null);
    let blocks = ctl.run(&["override", "ls", "--blocked"]).await.ok();
    let lines = blocks.lines();
    assert_eq!(lines.len(), 3, "{blocks:#?}");
    assert_eq!(cells(lines[1])[..2], [blocked.as_str(), "block"]);
    assert_eq!(lines[2], "1 shown, 4 in force");

    // One page at a time, following the page token.
    let page = ctl.run(&["override", "ls", "--page-size", "1"]).await.ok();
    let lines = page.lines();
    assert_eq!(lines.len(), 3, "{page:#?}");
    assert_eq!(cells(lines[1])[0], hashes[0]);
    let footer = lines[2];
    let next = footer
        .strip_prefix("1 shown, 4 in force; more with --page-token ")
        .and_then(|s| s.strip_suffix(" (or --all)"))
        .unwrap_or_else(|| panic!("footer: {footer}"));
    let page2 = ctl
        .run(&[
            "override",
            "ls",
            "--page-size",
            "1",
            "--page-token",
            next,
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(page2["overrides"][0]["key_hash"], hashes[1].as_str());
    assert_eq!(page2["total"], 4);
    assert!(page2["next_page_token"].is_string());

    // --all: every page.
    let all = ctl
        .run(&["override", "ls", "--page-size", "1", "--all"])
        .await
        .ok();
    assert_eq!(all.stdout, ls.stdout);
    let all = ctl
        .run(&["override", "ls", "--page-size", "1", "--all", "-o", "json"])
        .await
        .ok()
        .json();
    let listed: Vec<&str> = all["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key_hash"].as_str().unwrap())
        .collect();
    assert_eq!(listed, hashes);
    assert_eq!(all["next_page_token"], Value::Null);
    assert_eq!(all["total"], 4);

    // A page token that is not one: refused input.
    ctl.run(&["override", "ls", "--page-token", "garbage"])
        .await
        .fails(
            65,
            "page_token: not a token from a previous page (16 hex digits)",
        );
}

#[tokio::test]
async fn usage_shows_what_a_key_spent_and_reset_forgets_it() {
    let d = daemon().await;
    let ctl = Ctl::ops(&d).secret("dave-key");
    let h = hash(&d, "dave-key");
    for _ in 0..3 {
        assert!(check(&d, "dave-key").await.allowed);
    }
    let digest = digest(&d).await;
    let usage = ctl.run(&["usage", "dave-key"]).await.ok();
    let lines = usage.lines();
    assert_eq!(lines.len(), 6, "{usage:#?}");
    assert_eq!(lines[0], format!("key {h}: plan free (default)"));
    assert_eq!(
        cells(lines[1]),
        ["LIMIT", "KIND", "USED", "LIMIT", "REMAINING", "RESETS IN"]
    );
    assert_eq!(
        cells(lines[2]),
        ["per-second", "rate", "3", "20", "17", "0.30s"]
    );
    assert_eq!(
        cells(lines[3]),
        ["daily", "quota", "3", "100", "97", "12h0m"]
    );
    // Without Redis, the usage is this node's, and says so.
    assert!(
        lines[4].starts_with("as of ") && lines[4].ends_with(": this node's (no Redis)"),
        "{usage:#?}"
    );
    assert_eq!(lines[5], format!("config version 1 (digest {digest})"));

    let u = ctl
        .run(&["usage", "dave-key", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(u["key_hash"], h.as_str());
    assert_eq!(
        (&u["plan"], &u["source"]),
        (&json!("free"), &json!("default"))
    );
    assert_eq!(u["blocked"], false);
    assert_eq!(u["override"], Value::Null);
    let limits: Vec<(&str, &str, u64, u64, u64)> = u["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["policy"].as_str().unwrap(),
                l["kind"].as_str().unwrap(),
                l["used"].as_u64().unwrap(),
                l["remaining"].as_u64().unwrap(),
                l["limit"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        limits,
        [
            ("free/per-second", "rate", 3, 17, 20),
            ("free/daily", "quota", 3, 97, 100)
        ]
    );
    assert_eq!(u["config"]["number"], 1);

    // A static key says where its plan comes from.
    let gold = ctl
        .run(&["usage", "gold-key", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (&gold["plan"], &gold["source"]),
        (&json!("gold"), &json!("static"))
    );

    // reset: everything given back.
    let reset = ctl.run(&["reset", "dave-key"]).await.ok();
    let lines = reset.lines();
    assert_eq!(lines[0], format!("usage of key {h} reset"));
    assert_eq!(lines[1], format!("key {h}: plan free (default)"));
    // Nothing used: nothing resets (not "full in 12h").
    assert_eq!(
        cells(lines[3]),
        ["per-second", "rate", "0", "20", "20", "-"]
    );
    assert_eq!(cells(lines[4]), ["daily", "quota", "0", "100", "100", "-"]);
    let u = ctl
        .run(&["usage", "dave-key", "-o", "json"])
        .await
        .ok()
        .json();
    assert!(
        u["limits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["used"] == 0),
        "{u}"
    );
    // Twenty at once fit the burst again.
    for _ in 0..20 {
        assert!(check(&d, "dave-key").await.allowed);
    }
    let r = ctl
        .run(&["reset", "dave-key", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(r["key_hash"], h.as_str());
    assert_eq!(r["cells"], 2);
    assert_eq!(r["usage"]["limits"][0]["used"], 0);
    let r = ctl
        .run(&["reset", "never-seen", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(r["cells"], 0);
}

#[tokio::test]
async fn plans_and_reload_describe_the_config_in_effect() {
    let d = daemon().await;
    let ctl = Ctl::ops(&d);
    ctl.run(&["override", "set", "k1", "--plan", "gold", "--reason", "r"])
        .await
        .ok();
    let plans = ctl.run(&["plans"]).await.ok();
    let digest = digest(&d).await;
    let lines = plans.lines();
    assert_eq!(
        lines,
        [
            "PLAN  DEFAULT  STATIC KEYS  OVERRIDES  LIMITS",
            "free  yes      0            0          per-second 10/second burst 20; daily 100/day",
            "gold           1            1          per-second 1000/second burst 2000",
            "tiny           1            0          per-minute 2/minute burst 2",
            "open           1            0          unlimited",
            format!("config version 1 (digest {digest})").as_str(),
        ]
    );
    let p = ctl.run(&["plans", "-o", "json"]).await.ok().json();
    let names: Vec<(&str, bool, u64, u64)> = p["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["is_default"].as_bool().unwrap(),
                p["static_keys"].as_u64().unwrap(),
                p["overrides"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("free", true, 0, 0),
            ("gold", false, 1, 1),
            ("tiny", false, 1, 0),
            ("open", false, 1, 0)
        ]
    );
    assert_eq!(
        p["plans"][0]["limits"][1],
        json!({
            "name": "daily",
            "policy": "free/daily",
            "kind": "quota",
            "limit": 100,
            "window_seconds": 86400,
            "strict": false,
            "description": "daily 100/day",
        })
    );
    assert_eq!(p["config"]["number"], 1);
    assert_eq!(p["config"]["loaded_at"], T0);

    // A config given as text reloads as itself.
    let reload = ctl.run(&["reload"]).await.ok();
    assert_eq!(
        reload.stdout,
        format!("config unchanged: config version 1 (digest {digest})\n")
    );
    let r = ctl.run(&["reload", "-o", "json"]).await.ok().json();
    assert_eq!(r["changed"], false);
    assert_eq!(r["restart_needed"], json!([]));
    assert_eq!(r["config"]["number"], 1);
    assert_eq!(r["config"]["digest"], digest.as_str());
    assert_eq!(r["config"]["reloads_failed"], 0);
    assert_eq!(r["config"]["last_error"], Value::Null);
}

#[tokio::test]
async fn reload_rereads_the_file_and_refuses_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{CONFIG}{}", admin_section(""));
    let path = write_file(dir.path(), "quotad.yaml", &text);
    let d = TestDaemon::from_file(&path).await;
    let ctl = Ctl::ops(&d);
    let before = digest(&d).await;

    let more = text.replace(
        "  open:\n    limits: []\n",
        "  open:\n    limits: []\n  silver:\n    limits:\n      - { name: per-second, rate: 50, per: second }\n",
    );
    assert_ne!(more, text);
    std::fs::write(&path, &more).unwrap();
    let reload = ctl.run(&["reload"]).await.ok();
    let after = digest(&d).await;
    assert_ne!(after, before);
    assert_eq!(
        reload.stdout,
        format!("config reloaded: config version 2 (digest {after})\n")
    );
    let plans = ctl.run(&["plans"]).await.ok();
    let lines = plans.lines();
    assert_eq!(lines.len(), 7, "{plans:#?}");
    assert_eq!(
        cells(lines[5]),
        ["silver", "0", "0", "per-second 50/second burst 50"]
    );
    assert_eq!(
        lines[6],
        format!("config version 2 (digest {after})").as_str()
    );

    // An invalid file: refused (65), naming file, line and field; the
    // running config stays.
    let bad = more.replace("rate: 50, per: second", "rate: 50, per: fortnight");
    std::fs::write(&path, &bad).unwrap();
    let line = bad.lines().position(|l| l.contains("fortnight")).unwrap() + 1;
    ctl.run(&["reload"]).await.fails_with(
        65,
        &[
            &format!("{}:{line}:", path.display()),
            "plans.silver.limits[0].per",
            "fortnight",
        ],
    );
    let p = ctl.run(&["plans", "-o", "json"]).await.ok().json();
    assert_eq!(p["config"]["number"], 2);
    assert_eq!(p["config"]["reloads_failed"], 1);
    assert!(
        p["config"]["last_error"]
            .as_str()
            .unwrap()
            .contains("fortnight"),
        "{p}"
    );
}

#[tokio::test]
async fn a_key_read_from_stdin_stays_out_of_the_command_line() {
    let d = daemon().await;
    let key = "stdin-only-key";
    let h = hash(&d, key);
    let ctl = Ctl::ops(&d).secret(key);
    let piped = ctl.clone().stdin(&format!("{key}\n"));
    let set = piped
        .run(&[
            "override",
            "set",
            "-",
            "--plan",
            "tiny",
            "--reason",
            "from stdin",
        ])
        .await
        .ok();
    assert_eq!(set.lines()[1], format!("key hash  {h}"));
    assert_eq!(check(&d, key).await.policy, "tiny/per-minute");
    let got = piped
        .run(&["override", "get", "-", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(got["key_hash"], h.as_str());
    assert_eq!(got["plan"], "tiny");
    // Without a trailing newline, and with a CRLF, the same key.
    let u = ctl
        .clone()
        .stdin(key)
        .run(&["usage", "-", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(u["key_hash"], h.as_str());
    assert_eq!(u["plan"], "tiny");
    ctl.clone()
        .stdin(&format!("{key}\r\n"))
        .run(&["override", "rm", "-"])
        .await
        .ok();
    assert_eq!(check(&d, key).await.policy, "free/per-second");
    // An empty stdin is a usage error, before any call.
    ctl.clone()
        .stdin("")
        .run(&["usage", "-"])
        .await
        .fails(64, "KEY -: stdin held no key");
}

#[tokio::test]
async fn an_unreachable_server_exits_69_and_a_wrong_port_70() {
    let (dead, _held) = dead_server();
    let unreachable = format!("error: cannot reach {dead}: ");
    // By QUOTACTL_SERVER and by --server.
    Ctl::bare()
        .server(&dead)
        .token(OPS_TOKEN)
        .run(&["plans"])
        .await
        .fails_with(69, &[&unreachable]);
    Ctl::bare()
        .token(OPS_TOKEN)
        .run(&["--server", &dead, "plans"])
        .await
        .fails_with(69, &[&unreachable]);
    // A server that takes the connection and never answers: 69 once
    // --timeout has passed, not a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let silent_ctl = Ctl::bare().server(&silent_url).token(OPS_TOKEN);
    let silent_run = silent_ctl.run(&["--timeout", "300ms", "plans"]);
    tokio::time::timeout(Duration::from_secs(10), silent_run)
        .await
        .expect("quotactl gives up after --timeout")
        .fails_with(69, &[&format!("error: {silent_url} is unavailable: ")]);
    drop(silent);
    // --server wins over QUOTACTL_SERVER.
    let d = daemon().await;
    Ctl::ops(&d)
        .run(&["--server", &dead, "override", "get", "k"])
        .await
        .fails_with(69, &[&unreachable]);
    // The check listener is not the admin listener.
    let check_api = format!("http://{}", d.grpc_addr);
    Ctl::bare()
        .server(&check_api)
        .token(OPS_TOKEN)
        .run(&["plans"])
        .await
        .fails_with(
            70,
            &[&format!(
                "error: {check_api} does not serve the admin API here (is this the admin address?)"
            )],
        );
}

#[tokio::test]
async fn wrong_tokens_and_missing_scopes_exit_77() {
    let d = daemon().await;
    let url = admin_url(&d);
    let wrong = "qd_not-a-configured-token-0123456789";
    let message =
        format!("not authenticated by {url}: invalid token (check QUOTACTL_TOKEN or --token-file)");
    for args in [
        &["plans"][..],
        &["override", "ls"],
        &["usage", "k"],
        &["reset", "k"],
    ] {
        Ctl::to(&d, wrong).run(args).await.fails(77, &message);
    }

    let viewer = Ctl::to(&d, VIEWER_TOKEN);
    viewer.run(&["plans"]).await.ok();
    viewer.run(&["usage", "k"]).await.ok();
    viewer.run(&["override", "ls"]).await.ok();
    viewer.run(&["reset", "k"]).await.fails(
        77,
        "permission denied: token 'viewer' lacks the write scope that ResetUsage needs",
    );
    for (args, call) in [
        (
            &["override", "set", "k", "--block", "--reason", "r"][..],
            "SetOverride",
        ),
        (&["override", "rm", "k"], "DeleteOverride"),
        (&["reload"], "Reload"),
    ] {
        viewer.run(args).await.fails(
            77,
            &format!("permission denied: token 'viewer' lacks the write scope that {call} needs"),
        );
    }
    // Nothing the refused calls asked for happened.
    Ctl::ops(&d)
        .run(&["override", "get", "k"])
        .await
        .fails(1, &format!("key {} has no override", hash(&d, "k")));
}

#[tokio::test]
async fn refused_input_exits_65_with_the_servers_message() {
    let d = daemon().await;
    let ctl = Ctl::ops(&d);
    ctl.run(&[
        "override", "set", "k", "--plan", "platinum", "--reason", "r",
    ])
    .await
    .fails(
        65,
        "plan: unknown plan 'platinum' (defined plans: free, gold, tiny, open)",
    );
    ctl.run(&["override", "set", "k", "--block", "--reason", ""])
        .await
        .fails(
            65,
            "reason: must not be empty: say why (it is kept with the override and in the audit log)",
        );
    ctl.run(&[
        "override",
        "set",
        "k",
        "--block",
        "--expires",
        "0s",
        "--reason",
        "r",
    ])
    .await
    .fails(65, "ttl: must be more than 0");
    ctl.run(&[
        "override",
        "set",
        "k",
        "--limit",
        "name=r,rate=10,per=week",
        "--reason",
        "r",
    ])
    .await
    .fails(
        65,
        "limits[0].per: a rate cannot be per week (use second, minute, hour or day, or a quota for weeks and months)",
    );
    ctl.run(&["usage", &"k".repeat(65)])
        .await
        .fails(65, "key: 65 bytes exceeds the maximum of 64 bytes");
    ctl.run(&["usage", "--hash", "not-hex"]).await.fails(
        65,
        "key_hash: expected 16 hex digits, as listings and logs show a key",
    );
    let ls = ctl.run(&["override", "ls", "-o", "json"]).await.ok().json();
    assert_eq!(ls["total"], 0);
}

#[tokio::test]
async fn the_token_comes_from_the_environment_or_a_file_only() {
    let d = daemon().await;
    let url = admin_url(&d);
    let dir = tempfile::tempdir().unwrap();

    // No token at all: a usage error naming where it goes.
    Ctl::bare().server(&url).run(&["plans"]).await.fails(
        64,
        "no admin token: set QUOTACTL_TOKEN or pass --token-file FILE (tokens are never taken as arguments)",
    );
    Ctl::bare()
        .server(&url)
        .env("QUOTACTL_TOKEN", "  ")
        .run(&["plans"])
        .await
        .fails_with(64, &["QUOTACTL_TOKEN"]);

    // A token file: its first line, by flag or QUOTACTL_TOKEN_FILE.
    let file = write_file(
        dir.path(),
        "token",
        &format!("{OPS_TOKEN}\nsecond line ignored\n"),
    );
    let file = file.to_str().unwrap();
    let by_file = Ctl::bare().server(&url);
    by_file.run(&["--token-file", file, "plans"]).await.ok();
    by_file
        .clone()
        .env("QUOTACTL_TOKEN_FILE", file)
        .run(&["plans"])
        .await
        .ok();
    // The file wins over QUOTACTL_TOKEN.
    let viewer_file = write_file(dir.path(), "viewer", VIEWER_TOKEN);
    let viewer_file = viewer_file.to_str().unwrap();
    Ctl::ops(&d)
        .run(&["--token-file", viewer_file, "reset", "k"])
        .await
        .fails(
            77,
            "permission denied: token 'viewer' lacks the write scope that ResetUsage needs",
        );

    // A missing file: 66; an empty one: 64.
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    by_file
        .run(&["--token-file", missing, "plans"])
        .await
        .fails_with(
            66,
            &[&format!("error: --token-file {missing}: cannot read: ")],
        );
    let empty = write_file(dir.path(), "empty", "\n");
    let empty = empty.to_str().unwrap();
    by_file
        .run(&["--token-file", empty, "plans"])
        .await
        .fails(64, &format!("--token-file {empty}: the file is empty"));

    // A token is not an argument.
    by_file
        .run(&["--token", OPS_TOKEN, "plans"])
        .await
        .fails_with(64, &["--token"]);
}

#[tokio::test]
async fn bad_command_lines_exit_64_before_any_call() {
    // Against an address nothing listens on: a call would exit 69.
    let (dead, _held) = dead_server();
    let ctl = Ctl::bare().server(&dead).token(OPS_TOKEN);
    let set = |extra: &[&'static str]| {
        let mut args = vec!["override", "set", "k", "--reason", "r"];
        args.extend_from_slice(extra);
        args
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            set(&["--limit", "name=x,rate=abc,per=second"]),
            "--limit 'name=x,rate=abc,per=second': rate: expected a whole number, got 'abc'",
        ),
        (
            set(&["--limit", "name=x,burts=5"]),
            "--limit 'name=x,burts=5': unknown field 'burts' (expected name, rate, quota, per, burst, mode, concurrency, lease_ttl)",
        ),
        (
            set(&["--limit", "rate=5,per=second"]),
            "--limit 'rate=5,per=second': missing name=",
        ),
        (
            set(&["--limit", "name=x,rate"]),
            "--limit 'name=x,rate': 'rate' is not field=value",
        ),
        (
            set(&["--limit", "name=x,rate=5,per=second,mode=eventual"]),
            "--limit 'name=x,rate=5,per=second,mode=eventual': mode: expected sync or strict, got 'eventual'",
        ),
        (
            set(&["--block", "--expires", "soon"]),
            "--expires 'soon': expected a duration (30d, 12h, 90m) or a UTC time (2027-01-01T00:00:00Z)",
        ),
        (set(&[]), "give one of --plan PLAN, --limit SPEC or --block"),
    ];
    for (args, message) in cases {
        ctl.run(&args).await.fails(64, message);
    }
    // clap's own refusals: 64 too, naming the flag.
    for (args, part) in [
        (
            &[
                "override", "set", "k", "--plan", "gold", "--block", "--reason", "r",
            ][..],
            "--block",
        ),
        (&["override", "set", "k", "--plan", "gold"], "--reason"),
        (&["override", "get"], "KEY"),
        (&["usage", "k", "--hash", "0123456789abcdef"], "--hash"),
        (&["--timeout", "forever", "plans"], "--timeout"),
        (&["-o", "yaml", "plans"], "yaml"),
        (&["frobnicate"], "frobnicate"),
    ] {
        ctl.run(args).await.fails_with(64, &[part]);
    }
    ctl.run(&[]).await.fails_with(64, &["Usage"]);
    let server = Ctl::bare().server("not a url").token(OPS_TOKEN);
    server
        .run(&["plans"])
        .await
        .fails_with(64, &["--server not a url"]);
    // Help and version are not errors.
    let help = ctl.run(&["--help"]).await.ok();
    assert!(help.stdout.contains("QUOTACTL_TOKEN"), "{help:#?}");
    assert!(help.stdout.contains("77"), "{help:#?}");
    ctl.run(&["--version"]).await.ok();
}

#[tokio::test]
async fn check_config_validates_files_here_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(
        dir.path(),
        "good.yaml",
        &format!("{CONFIG}{}", admin_section("")),
    );
    let good = good.to_str().unwrap();
    // No server, no token needed.
    let (dead, _held) = dead_server();
    let ctl = Ctl::bare().server(&dead);
    let out = ctl.run(&["check-config", good]).await.ok();
    let lines = out.lines();
    assert_eq!(lines[0], format!("{good}: ok"));
    assert_eq!(lines[1], format!("source: {good}"));
    assert_eq!(lines[2], "plans: 4 (default: free)");
    assert!(
        lines.contains(&"  free: per-second 10/second burst 20; daily 100/day"),
        "{out:#?}"
    );
    assert!(lines.contains(&"static keys: 3"), "{out:#?}");
    assert!(
        !out.stdout.contains("gold-key"),
        "keys never show: {out:#?}"
    );
    let j = ctl
        .run(&["check-config", good, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(j["file"], good);
    assert_eq!(j["valid"], true);
    assert!(
        j["summary"]
            .as_str()
            .unwrap()
            .contains("plans: 4 (default: free)")
    );

    let body = "default_plan: free\nplans:\n  free:\n    limits:\n      - { name: per-second, rate: 10, per: second }\n      - { name: daily, quota: 10, per: fortnight }\n";
    let bad = write_file(dir.path(), "bad.yaml", body);
    let bad = bad.to_str().unwrap();
    let out = ctl.run(&["check-config", bad]).await.fails_with(
        64,
        &[
            &format!("error: {bad}:6:"),
            "plans.free.limits[1].per",
            "fortnight",
        ],
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    // Several mistakes: each on its line, and with -o json each located
    // in `errors`.
    let two = write_file(
        dir.path(),
        "two.yaml",
        "default_plan: free\nplans:\n  free: { limits: [ { name: a, rate: 1, per: fortnight } ] }\nreqests: {}\n",
    );
    let two = two.to_str().unwrap();
    let out = ctl
        .run(&["check-config", two])
        .await
        .fails_with(64, &["fortnight", "reqests"]);
    assert_eq!(out.stderr.lines().count(), 2, "{out:#?}");
    let out = ctl
        .run(&["check-config", two, "-o", "json"])
        .await
        .fails_with(64, &["\"errors\""]);
    let v: serde_json::Value = serde_json::from_str(out.stderr.trim()).expect("one JSON object");
    let errors = v["error"]["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{v}");
    assert_eq!(errors[0]["line"], 3);
    assert_eq!(errors[0]["path"], "plans.free.limits[0].per");
    assert_eq!(errors[1]["line"], 4);
    assert_eq!(errors[1]["file"], two);
    let unknown = write_file(
        dir.path(),
        "unknown.yaml",
        "default_plan: free\nplans:\n  free:\n    limits: []\nkeys:\n  k: { plan: platinum }\n",
    );
    let unknown = unknown.to_str().unwrap();
    ctl.run(&["check-config", unknown]).await.fails_with(
        64,
        &[&format!("error: {unknown}:6:"), "unknown plan 'platinum'"],
    );

    // A file that cannot be read: 66, as for every file named on the
    // command line.
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().unwrap();
    ctl.run(&["check-config", missing])
        .await
        .fails_with(66, &[&format!("error: {missing}: cannot read: ")]);
    let no_limits = dir.path().join("no-such-limits.yaml");
    let no_limits = no_limits.to_str().unwrap();
    ctl.run(&["check-config", good, "--limits", no_limits])
        .await
        .fails_with(66, &[no_limits, "cannot read"]);
}

#[tokio::test]
async fn token_new_prints_a_token_that_its_config_line_admits() {
    let (dead, _held) = dead_server();
    let ctl = Ctl::bare().server(&dead);
    let out = ctl
        .run(&["token", "new", "--id", "ci", "--scopes", "read"])
        .await
        .ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 5, "{out:#?}");
    assert_eq!(
        lines[0],
        "token (give it to its holder; it is shown only now):"
    );
    let token = lines[1].strip_prefix("  ").unwrap();
    assert!(token.starts_with("qd_"), "{token}");
    assert_eq!(token.len(), 3 + 64);
    assert!(token[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(lines[2], "");
    assert_eq!(lines[3], "add to admin.tokens in the config:");
    let read_line = lines[4].strip_prefix("  ").unwrap();
    let sha = quotad::admin::auth::token_hash(token);
    assert_eq!(
        read_line,
        format!("- {{ id: ci, sha256: \"{sha}\", scopes: [read] }}")
    );

    let j = ctl
        .run(&["token", "new", "--id", "deploy", "-o", "json"])
        .await
        .ok()
        .json();
    let rw_token = j["token"].as_str().unwrap();
    assert_ne!(rw_token, token);
    assert_eq!(j["id"], "deploy");
    assert_eq!(j["scopes"], json!(["read", "write"]));
    assert_eq!(
        j["sha256"],
        quotad::admin::auth::token_hash(rw_token).as_str()
    );
    let rw_line = j["config"].as_str().unwrap();
    assert_eq!(
        rw_line,
        format!(
            "- {{ id: deploy, sha256: \"{}\", scopes: [read, write] }}",
            j["sha256"].as_str().unwrap()
        )
    );
    assert!(!rw_line.contains(rw_token), "the config holds no secret");
    ctl.run(&["token", "new", "--scopes", "admin"])
        .await
        .fails(64, "--scopes: expected read, write or read,write");

    // A daemon admitting exactly the printed lines.
    let d = TestDaemon::with_config(&format!(
        "{CONFIG}admin:\n  addr: 127.0.0.1:0\n  tokens:\n    {read_line}\n    {rw_line}\n"
    ))
    .await;
    let reader = Ctl::to(&d, token);
    let plans = reader.run(&["plans", "-o", "json"]).await.ok().json();
    assert_eq!(plans["plans"].as_array().unwrap().len(), 4);
    reader.run(&["reset", "k"]).await.fails(
        77,
        "permission denied: token 'ci' lacks the write scope that ResetUsage needs",
    );
    let writer = Ctl::to(&d, rw_token);
    writer.run(&["reset", "k"]).await.ok();
    let set = writer
        .run(&[
            "override", "set", "k", "--block", "--reason", "r", "-o", "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(set["override"]["created_by"], "deploy");
    // The test tokens are not configured here.
    Ctl::to(&d, OPS_TOKEN)
        .run(&["plans"])
        .await
        .fails_with(77, &["invalid token"]);
}

#[tokio::test]
async fn over_https_with_a_private_ca_and_a_client_certificate() {
    use crate::support::TestCa;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("admin CA");
    let ops_ca = TestCa::new("ops CA");
    let (cert, key) = server_ca.leaf("localhost", &["localhost", "127.0.0.1"]);
    let cert_file = write_file(dir.path(), "admin.pem", &cert);
    let key_file = write_file(dir.path(), "admin.key", &key);
    let ops_ca_file = write_file(dir.path(), "ops-ca.pem", &ops_ca.cert_pem);
    let ca_file = write_file(dir.path(), "ca.pem", &server_ca.cert_pem);
    let (client_cert, client_key) = ops_ca.leaf("alice", &[]);
    let client_cert_file = write_file(dir.path(), "alice.pem", &client_cert);
    let client_key_file = write_file(dir.path(), "alice.key", &client_key);
    let d = TestDaemon::with_config(&format!(
        "{CONFIG}{}",
        admin_section(&format!(
            "  tls: {{ cert_file: {}, key_file: {}, client_ca_file: {} }}\n",
            cert_file.display(),
            key_file.display(),
            ops_ca_file.display()
        ))
    ))
    .await;
    let url = format!("https://{}", d.admin_addr.unwrap());
    let ctl = Ctl::bare().server(&url).token(OPS_TOKEN);
    let ca = ca_file.display().to_string();
    let (cert, key) = (
        client_cert_file.display().to_string(),
        client_key_file.display().to_string(),
    );
    // The private CA, the client certificate, the name on the server's
    // certificate: served.
    let out = ctl
        .run(&[
            "plans",
            "--ca-file",
            &ca,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
        ])
        .await
        .ok();
    assert!(out.stdout.starts_with("PLAN"), "{out:#?}");
    let out = ctl
        .run(&[
            "override",
            "set",
            "k",
            "--block",
            "--reason",
            "over mTLS",
            "--ca-file",
            &ca,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "-o",
            "json",
        ])
        .await
        .ok();
    assert_eq!(out.json()["override"]["created_by"], "ops (CN=alice)");
    // Without the client certificate the server closes the connection:
    // unavailable, with a hint.
    ctl.run(&["plans", "--ca-file", &ca]).await.fails_with(
        69,
        &[
            &format!("{url} is unavailable"),
            "give --cert-file and --key-file",
        ],
    );
    // Without the private CA the server is not trusted.
    ctl.run(&["plans", "--cert-file", &cert, "--key-file", &key])
        .await
        .fails_with(69, &["not signed by a CA quotactl trusts", "--ca-file"]);
    // Half a client identity, or TLS flags on a plain URL: usage errors.
    ctl.run(&["plans", "--ca-file", &ca, "--cert-file", &cert])
        .await
        .fails(
            64,
            "--cert-file and --key-file go together (a client certificate for mTLS)",
        );
    Ctl::bare()
        .server("http://127.0.0.1:1")
        .token(OPS_TOKEN)
        .run(&["plans", "--tls-server-name", "localhost"])
        .await
        .fails(
            64,
            "--ca-file, --cert-file, --key-file and --tls-server-name need an https:// server (got http://127.0.0.1:1)",
        );
}

#[tokio::test]
async fn the_token_is_not_sent_in_plain_text_beyond_loopback_without_insecure() {
    let why = "is not a loopback address, so anyone on the way could read the token";
    let how = "Use https://";
    let bypass = "add --insecure if the link is encrypted by other means";
    // Refused before any connection (or even reading the token): these
    // addresses would otherwise time out or be unreachable, exit 69.
    for server in [
        "http://192.0.2.1:8082",
        "http://10.0.0.1:8082",
        "http://0.0.0.0:8082",
        "http://quotad.example:8082",
        "http://localhost.example:8082",
        "http://127.0.0.1.example:8082",
        "http://[2001:db8::1]:8082",
        "http://[::ffff:192.0.2.1]:8082",
        "HTTP://192.0.2.1:8082",
    ] {
        let out = Ctl::bare()
            .server(server)
            .token(OPS_TOKEN)
            .run(&["plans", "--timeout", "500ms"])
            .await;
        if server.starts_with("HTTP") {
            // Not a scheme quotactl takes at all.
            out.fails_with(64, &["expected http://host:port or https://host:port"]);
            continue;
        }
        out.fails_with(
            64,
            &[
                &format!("refusing to send the admin token in plain text to {server}"),
                why,
                how,
                bypass,
            ],
        );
    }
    // --insecure: the operator vouches for the link; quotactl tries.
    Ctl::bare()
        .server("http://192.0.2.1:8082")
        .token(OPS_TOKEN)
        .run(&["plans", "--insecure", "--timeout", "200ms"])
        .await
        .expect(69);
    // Loopback stays allowed: these get as far as connecting.
    let (dead, _reserved) = dead_server();
    let port = dead.rsplit(':').next().unwrap().to_owned();
    for host in [
        "127.0.0.1",
        "127.3.2.1",
        "localhost",
        "LocalHost",
        "[::1]",
        "[::ffff:127.0.0.1]",
    ] {
        let out = Ctl::bare()
            .server(&format!("http://{host}:{port}"))
            .token(OPS_TOKEN)
            .run(&["plans", "--timeout", "500ms"])
            .await;
        assert_ne!(out.code, 64, "{out:#?}");
        assert!(!out.stderr.contains("refusing"), "{out:#?}");
    }
    // https:// is never refused for this.
    let out = Ctl::bare()
        .server("https://192.0.2.1:8082")
        .token(OPS_TOKEN)
        .run(&["plans", "--timeout", "200ms"])
        .await;
    assert!(!out.stderr.contains("refusing"), "{out:#?}");
}

#[tokio::test]
async fn usage_shows_leases_and_reset_frees_them() {
    let d =
        TestDaemon::with_config(&format!("{}{}", crate::leases::PLANS, admin_section(""))).await;
    let ctl = Ctl::ops(&d).secret("lease-key");
    let h = hash(&d, "lease-key");
    let mut c = quotad::api::pb::rate_limiter_client::RateLimiterClient::new(d.channel().await);
    assert!(crate::leases::acquire(&mut c, "lease-key", 2).await.granted);
    let usage = ctl.run(&["usage", "lease-key"]).await.ok();
    let lines = usage.lines();
    let at = lines
        .iter()
        .position(|l| l.starts_with("concurrency "))
        .unwrap_or_else(|| panic!("{usage:#?}"));
    assert_eq!(lines[at], "concurrency streams: 2 / 3 in use");
    assert_eq!(cells(lines[at + 1]), ["SLOTS", "EXPIRES"]);
    assert_eq!(cells(lines[at + 2])[0], "2");
    let json = ctl
        .run(&["usage", "lease-key", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(json["concurrency"]["in_use"], 2);
    assert_eq!(json["concurrency"]["limit"], 3);
    assert_eq!(json["concurrency"]["leases"][0]["slots"], 2);

    let reset = ctl.run(&["reset", "lease-key"]).await.ok();
    let lines = reset.lines();
    assert_eq!(lines[0], format!("usage of key {h} reset"));
    assert_eq!(lines[1], "1 lease freed");
    assert!(
        reset.stdout.contains("concurrency streams: 0 / 3 in use"),
        "{reset:#?}"
    );
}

#[tokio::test]
async fn usage_shows_a_keys_envoy_rlqs_buckets_and_each_envoys_share() {
    use crate::rlqs::{Envoy, first_reports, id};
    let d = TestDaemon::with_config(&crate::rlqs::config("")).await;
    let ctl = Ctl::ops(&d).secret("acme-key");
    let b = id(&[("tenant", "acme"), ("api_key", "acme-key")]);
    let mut es = vec![
        Envoy::connect(d.channel().await).await.unwrap(),
        Envoy::connect(d.channel().await).await.unwrap(),
    ];
    first_reports(&mut es, &b).await;
    d.advance_ms(5_000);
    for (e, n) in es.iter_mut().zip([300u64, 100]) {
        e.send("shop", &[(&b, n, 0, 5)]).await;
    }
    crate::rlqs::drain_all(&mut es).await;
    let out = ctl.run(&["usage", "acme-key"]).await.ok();
    let lines = out.lines();
    let head = lines
        .iter()
        .position(|l| l.starts_with("rlqs shop"))
        .unwrap_or_else(|| panic!("{out:#?}"));
    assert_eq!(
        lines[head],
        "rlqs shop {api_key=<key>, tenant=acme}: 100.00/s (burst 200) shared by 2 Envoys demanding 80.00/s [tenant=*: 100/second, burst 200]"
    );
    assert_eq!(
        cells(lines[head + 1]),
        ["ENVOY", "DEMAND", "HOLDS", "RATE", "TOKENS"]
    );
    let mut demands: Vec<&str> = (head + 2..head + 4).map(|i| cells(lines[i])[1]).collect();
    demands.sort_unstable();
    assert_eq!(demands, ["20.00/s", "60.00/s"]);
    assert_eq!(cells(lines[head + 2])[2], "token_bucket");
    let json = ctl
        .run(&["usage", "acme-key", "-o", "json"])
        .await
        .ok()
        .json();
    let r = &json["rlqs"][0];
    assert_eq!(r["domain"], "shop");
    assert_eq!(r["bucket"]["api_key"], "<key>");
    assert_eq!(r["global_rate"], 100.0);
    assert_eq!(r["envoys"], 2);
    assert_eq!(r["shares"].as_array().map(Vec::len), Some(2));
    // A block through quotactl reaches both Envoys as DENY_ALL within a
    // second; lifting it gives them token buckets again.
    ctl.run(&[
        "override", "set", "acme-key", "--block", "--reason", "abuse",
    ])
    .await
    .ok();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    for e in &mut es {
        while e.held[&b] != crate::rlqs::Held::Deny {
            let _ = e.next(Duration::from_millis(50)).await;
            assert!(tokio::time::Instant::now() < until, "DENY_ALL within 1 s");
        }
    }
    ctl.run(&["override", "delete", "acme-key"]).await.ok();
    for e in &mut es {
        while !matches!(e.held[&b], crate::rlqs::Held::Bucket { .. }) {
            e.next(Duration::from_secs(2))
                .await
                .unwrap()
                .expect("the share back");
        }
    }
}

#[tokio::test]
async fn with_json_output_errors_are_json_on_stderr_too() {
    let (dead, _held) = dead_server();
    let out = Ctl::bare()
        .server(&dead)
        .token(OPS_TOKEN)
        .run(&["plans", "-o", "json"])
        .await
        .expect(69);
    assert_eq!(out.stdout, "", "{out:#?}");
    let e: Value = serde_json::from_str(out.stderr.trim()).expect("stderr is one JSON object");
    assert_eq!(e["error"]["code"], 69, "{e}");
    let message = e["error"]["message"].as_str().expect("a message");
    assert!(
        message.starts_with(&format!("cannot reach {dead}: ")),
        "{message}"
    );
    // A usage error too, however -o json is spelled.
    for json in [&["-o", "json"][..], &["--output=json"], &["-ojson"]] {
        let mut args = vec!["usage", "--no-such-flag"];
        args.extend_from_slice(json);
        let out = Ctl::bare().run(&args).await.expect(64);
        let e: Value = serde_json::from_str(out.stderr.trim())
            .unwrap_or_else(|_| panic!("stderr is one JSON object: {out:#?}"));
        assert_eq!(e["error"]["code"], 64, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("--no-such-flag")),
            "{e}"
        );
    }
    // Without it, plain text as before.
    Ctl::bare()
        .server(&dead)
        .token(OPS_TOKEN)
        .run(&["plans"])
        .await
        .fails_with(69, &["error: cannot reach "]);
}

#[tokio::test]
async fn a_commands_help_shows_its_own_options_before_the_global_ones() {
    let out = Ctl::bare().run(&["override", "ls", "--help"]).await.ok();
    let own = out.stdout.find("--page-token").expect("ls's own option");
    let global = out
        .stdout
        .find("Global options:")
        .expect("a heading for the rest");
    let server = out.stdout.find("--server").expect("the global --server");
    assert!(own < global && global < server, "{}", out.stdout);
    // A server from QUOTACTL_SERVER is not shown as a required flag in a
    // usage error.
    let out = Ctl::bare()
        .server("http://127.0.0.1:8082")
        .run(&["usage"])
        .await
        .expect(64);
    assert!(
        out.stderr.contains("Usage: quotactl usage <KEY>"),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("--server"), "{out:#?}");
}

/// Runs `scripts/make-certs.sh` into `dir` (a CA, server and client
/// certificates).
fn make_certs(dir: &std::path::Path) {
    let made = std::process::Command::new(format!(
        "{}/scripts/make-certs.sh",
        env!("CARGO_MANIFEST_DIR")
    ))
    .arg(dir)
    .output()
    .expect("scripts/make-certs.sh runs (openssl)");
    assert!(made.status.success(), "{made:?}");
}

#[tokio::test]
async fn the_certificate_recipe_makes_mtls_work_and_each_mistake_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let path = |name: &str| certs.join(name).display().to_string();
    let d = TestDaemon::with_config(&format!(
        "{CONFIG}{}",
        admin_section(&format!(
            "  tls: {{ cert_file: {}, key_file: {}, client_ca_file: {} }}\n",
            path("server.pem"),
            path("server.key"),
            path("ca.pem")
        ))
    ))
    .await;
    let port = d.admin_addr.unwrap().port();
    let ctl = Ctl::bare()
        .server(&format!("https://localhost:{port}"))
        .token(OPS_TOKEN);
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let mtls = ["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key];
    let mut args = vec!["plans"];
    args.extend(mtls);
    let out = ctl.run(&args).await.ok();
    assert!(out.stdout.starts_with("PLAN"), "{out:#?}");

    // The server's CA not given: untrusted, and how to trust it.
    ctl.run(&["plans", "--cert-file", &cert, "--key-file", &key])
        .await
        .fails_with(69, &["not signed by a CA quotactl trusts", "--ca-file"]);
    // A name the server's certificate does not carry.
    let mut args = vec!["plans", "--tls-server-name", "quotad.example"];
    args.extend(mtls);
    ctl.run(&args)
        .await
        .fails_with(69, &["does not name the host", "--tls-server-name"]);
    // A v1 client certificate, as a plain `openssl x509 -req` makes.
    let v1 = path("v1.pem");
    let csr = path("v1.csr");
    for step in [
        vec!["req", "-new", "-key", &key, "-subj", "/CN=v1", "-out", &csr],
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            &v1,
        ],
    ] {
        let out = std::process::Command::new("openssl")
            .args(&step)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    ctl.run(&[
        "plans",
        "--ca-file",
        &ca,
        "--cert-file",
        &v1,
        "--key-file",
        &key,
    ])
    .await
    .fails_with(66, &["X.509 v1 certificate", "scripts/make-certs.sh"]);
    // A client certificate from another CA: refused by the server, which
    // says why in its log; quotactl says what to check.
    let other = dir.path().join("other");
    make_certs(&other);
    let (ocert, okey) = (
        other.join("client.pem").display().to_string(),
        other.join("client.key").display().to_string(),
    );
    ctl.run(&[
        "plans",
        "--ca-file",
        &ca,
        "--cert-file",
        &ocert,
        "--key-file",
        &okey,
    ])
    .await
    .fails_with(69, &["issued by the CA in the server's client_ca_file"]);
    // A key file that is no key: the file, not the command line (66).
    ctl.run(&[
        "plans",
        "--ca-file",
        &ca,
        "--cert-file",
        &cert,
        "--key-file",
        &ca,
    ])
    .await
    .fails_with(66, &["not a usable PEM certificate or key"]);
}
