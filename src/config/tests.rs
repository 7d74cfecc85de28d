//! The config's tests across sections: loading files, the embedded
//! default, the summary, and error messages of every section (with their
//! line, column and field path); the helpers the sections' own tests use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::num::NonZeroU64;

use super::*;
use crate::core::clock::NANOS_PER_SEC;
use crate::core::window::Window;
use crate::limits::rls::Algorithm;
use crate::limits::{Limit, LimitKind, Quota, Rate};

/// The error message `yaml` (as `t.yaml`) fails with.
pub(crate) fn error(yaml: &str) -> String {
    match Config::from_yaml(yaml, "t.yaml") {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// Checks a table of (yaml, exact message of its first error) cases,
/// reporting every mismatch at once. (Many cases are sections alone,
/// which are also missing their plans: a second error.)
pub(crate) fn assert_errors<Y: AsRef<str>, W: AsRef<str>>(cases: &[(Y, W)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(yaml, want)| {
            let (yaml, want) = (yaml.as_ref(), want.as_ref());
            let all = error(yaml);
            let got = all.lines().next().unwrap_or_default();
            (got != want).then(|| format!("for {yaml:?}\n  got:  {got}\n  want: {want}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The config `yaml` (as `t.yaml`) makes; panics on an error.
pub(crate) fn parse_ok(yaml: &str) -> Config {
    match Config::from_yaml(yaml, "t.yaml") {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

const FULL: &str = r#"
default_plan: free
plans:
  free:
    limits:
      - { name: per-second, rate: 10, per: second, burst: 20 }
keys:
  "sk-live-abcdef": { plan: free }
server:
  grpc_addr: 0.0.0.0:50051
  http_addr: "[::1]:8080"
  shutdown_grace: 500ms
  max_connections: 500
  max_concurrent_streams: 64
  max_message_bytes: 65536
  idle_timeout: 30s
  keepalive_interval: 10s
  keepalive_timeout: 2s
  max_connection_age: 1h
  max_buffered_bytes: 8388608
  max_buffered_bytes_per_connection: 1048576
  max_unsent_bytes_per_connection: 65536
  receive_window_bytes: 65535
  request_body_timeout: 3s
  tls_handshake_timeout: 2s
  max_handshakes_per_peer: 8
requests:
  max_key_bytes: 128
  max_cost: 5000
  max_batch: 10
  max_descriptors: 8
  max_entries: 4
store:
  max_tracked_keys: 42
  sweep_interval: 2m
  hash_secret: "000102030405060708090A0B0C0D0E0F"
envoy:
  domains: [edge, internal]
  key_entry: x-api-key
"#;

#[test]
fn full_file_parses_every_section() {
    let c = parse_ok(FULL);
    assert_eq!(c.source, None);
    assert_eq!(c.boot.server.grpc_addr.to_string(), "0.0.0.0:50051");
    assert_eq!(c.boot.server.http_addr.to_string(), "[::1]:8080");
    assert_eq!(c.live.server.shutdown_grace, Duration::from_millis(500));
    assert_eq!(
        c.boot.server.conns,
        ConnLimits {
            max_connections: 500,
            max_concurrent_streams: 64,
            max_message_bytes: 65536,
            idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(2),
            max_connection_age: Some(Duration::from_secs(3600)),
            max_buffered_bytes: 8 << 20,
            max_buffered_bytes_per_connection: 1 << 20,
            max_unsent_bytes_per_connection: 64 << 10,
            receive_window_bytes: 65535,
            request_body_timeout: Duration::from_secs(3),
            tls_handshake_timeout: Duration::from_secs(2),
            max_handshakes_per_peer: 8,
        }
    );
    assert_eq!(
        c.live.requests,
        RequestCaps {
            max_key_bytes: 128,
            max_cost: 5000,
            max_batch: 10,
            max_descriptors: 8,
            max_entries: 4,
            max_entry_bytes: 4096,
        }
    );
    assert_eq!(c.boot.store.max_tracked_keys, 42);
    assert_eq!(c.boot.store.sweep_interval, Duration::from_secs(120));
    let want: Vec<u8> = (0..16).collect();
    assert_eq!(c.boot.store.hash_secret.map(|s| s.to_vec()), Some(want));
    assert_eq!(c.live.envoy.domains, ["edge", "internal"]);
    assert_eq!(c.live.envoy.key_entry, "x-api-key");
}

#[test]
fn absent_sections_take_defaults() {
    let c = parse_ok("default_plan: p\nplans:\n  p: {}\nserver:\nrequests: {}\n");
    assert_eq!(c.boot.server, ServerBoot::default());
    assert_eq!(c.live.server, ServerLive::default());
    assert_eq!(c.live.requests, RequestCaps::default());
    assert_eq!(c.boot.store, StoreSettings::default());
    assert_eq!(c.live.envoy, EnvoySettings::default());
    assert_eq!(c.boot.server.grpc_addr.to_string(), "127.0.0.1:8081");
    assert_eq!(c.boot.server.http_addr.to_string(), "127.0.0.1:9090");
    // An empty file is an error: a rate limiter must not fail open.
    assert!(error("# nothing here\n").contains("no plans defined"));
}

#[test]
fn embedded_default_parses_with_its_plans_and_keys() {
    let parsed = match Config::from_yaml(EMBEDDED_DEFAULT, "embedded") {
        Ok(c) => c,
        Err(e) => panic!("embedded default is invalid: {e}"),
    };
    // The same config, marked as the embedded one (its digest is the
    // text's).
    let embedded = Config::embedded_default();
    assert!(embedded.embedded && !parsed.embedded);
    assert_eq!(
        embedded,
        Config {
            embedded: true,
            ..parsed.clone()
        }
    );
    // What the demo promises: plans free (the default) and gold, each a
    // rate and a calendar quota, one static key on gold, every section
    // at its default.
    let limits = |plan: &str| parsed.live.limits.plan(plan).map(|p| p.limits.clone());
    let rate = |rate: u64, burst: u64| match Rate::new(
        NonZeroU64::new(rate).unwrap(),
        NANOS_PER_SEC,
        NonZeroU64::new(burst).unwrap(),
    ) {
        Ok(r) => LimitKind::Rate(r),
        Err(e) => panic!("{e}"),
    };
    let quota = |quota: u64, window: Window| {
        LimitKind::Quota(Quota {
            quota: NonZeroU64::new(quota).unwrap(),
            window,
        })
    };
    assert_eq!(parsed.live.limits.default_plan, "free");
    let names: Vec<&str> = parsed
        .live
        .limits
        .plans
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["free", "gold"]);
    assert_eq!(
        limits("free"),
        Some(vec![
            Limit::new("free", "per-second", rate(10, 20)),
            Limit::new("free", "daily", quota(10_000, Window::Day)),
        ])
    );
    assert_eq!(
        limits("gold"),
        Some(vec![
            Limit::new("gold", "per-second", rate(1000, 2000)),
            Limit::new("gold", "monthly", quota(10_000_000, Window::Month)),
        ])
    );
    assert!(
        parsed
            .live
            .limits
            .plans
            .iter()
            .flat_map(|p| &p.limits)
            .all(|l| !l.strict)
    );
    assert_eq!(
        parsed.live.limits.keys,
        [("demo-gold-key".to_owned(), "gold".to_owned())]
    );
    assert_eq!(parsed.boot.server, ServerBoot::default());
    assert_eq!(parsed.live.server, ServerLive::default());
    assert_eq!(parsed.live.requests, RequestCaps::default());
    assert_eq!(parsed.boot.store, StoreSettings::default());
    assert_eq!(parsed.live.envoy, EnvoySettings::default());
    assert_eq!(parsed.live.response_headers, HeaderStyle::Both);
    assert_eq!(parsed.live.reload, ReloadSettings::default());
    assert_eq!(parsed.live.metrics, MetricsSettings::default());
    assert!(
        parsed.boot.redis.is_none() && parsed.boot.admin.is_none() && parsed.live.admin.is_none()
    );
    assert!(parsed.live.rls_files.is_empty() && parsed.live.rls.is_empty());
}

#[test]
fn summary_lists_plans_but_not_keys() {
    let s = Config::embedded_default().summary();
    let want = "\
source: embedded default
plans: 2 (default: free)
  free: per-second 10/second burst 20; daily 10000/day; streams 10 at once, lease 30s
  gold: per-second 1000/second burst 2000; monthly 10000000/month
static keys: 1
server: grpc 127.0.0.1:8081, http 127.0.0.1:9090, shutdown grace 10s, drain delay none, tls off
http check: off (server.http_check.addr, --http-check-addr)
connections: max 1024 (100 calls each), max message 1048576 bytes, idle timeout 5m, keepalive every 1m (timeout 20s), max age none
buffers: requests 67108864 bytes in all, 2097152 per connection (within 10s), unsent answers 131072 per connection, receive window 131072; worst case for connections 392 MiB
requests: max key 256 bytes, max cost 1000000000, max batch 1000, max descriptors 64, max entries 32, max entry 4096 bytes
store: max tracked keys 1000000, max leases 1000000, sweep every 10s, hash secret random per process
envoy: plan domains quotad, key entry api_key, algorithm fixed_window, merge domains off, shadow off, file domains' headers off, quota mode off, dynamic metadata off, near limit 80%
response headers: both
redis: off (this node alone, in memory)
admin: off (no admin section)
reload: on SIGHUP, admin Reload, and file changes (polled every 1s, debounce 250ms)\nrlqs: domains none (every bucket ALLOW_ALL), assignment ttl 30s, idle abandon after 1m, key entry api_key, tolerance 10%, at most 4096 streams (16 per connection), 10000 buckets per stream, 200000 tracked";
    assert_eq!(s, want);
    assert!(!s.contains("demo-gold-key"));
}

#[test]
fn debug_hides_static_keys_and_the_hash_secret() {
    let c = parse_ok(FULL);
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("sk-live-abcdef"), "{dbg}");
    assert!(dbg.contains("<redacted>"), "{dbg}");
    // The secret's bytes, in any rendering, are absent.
    assert!(!dbg.contains("[0, 1, 2, 3"), "{dbg}");
    assert!(!dbg.to_lowercase().contains("0a0b0c"), "{dbg}");
    let summary = c.summary();
    assert!(!summary.contains("sk-live-abcdef"), "{summary}");
    assert!(!summary.to_lowercase().contains("0a0b0c"), "{summary}");
}

#[test]
fn invalid_sections_name_line_path_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "server:\n  grpc_addr: localhost:8081\n",
            "t.yaml:2:14: server.grpc_addr: invalid address 'localhost:8081' (expected ip:port such as 127.0.0.1:8081)",
        ),
        (
            "server:\n  shutdown_grace: 10 parsecs\n",
            "t.yaml:2:19: server.shutdown_grace: invalid duration '10 parsecs' (expected an integer and a unit ms, s, m or h, such as 500ms, 10s or 2m)",
        ),
        (
            "server:\n  shutdown_grace: 10\n",
            "t.yaml:2:19: server.shutdown_grace: duration 10 has no unit (write for example 10s; units: ms, s, m, h)",
        ),
        (
            "server:\n  grpc_addr: 127.0.0.1:7000\n  http_addr: 127.0.0.1:7000\n",
            "t.yaml:3:14: server.http_addr: 127.0.0.1:7000 is also server.grpc_addr: each listener needs its own address",
        ),
        (
            "server:\n  shutdown_grace: 0s\n",
            "t.yaml:2:19: server.shutdown_grace: duration must be more than 0",
        ),
        (
            "server:\n  max_message_bytes: 100\n",
            "t.yaml:2:22: server.max_message_bytes: must be from 1024 to 67108864 (got 100)",
        ),
        (
            "server:\n  max_connections: 0\n",
            "t.yaml:2:20: server.max_connections: must be at least 1 (got 0)",
        ),
        (
            "server:\n  idle_timeout: forever\n",
            "t.yaml:2:17: server.idle_timeout: invalid duration 'forever' (expected an integer and a unit ms, s, m or h, such as 500ms, 10s or 2m)",
        ),
        (
            "store:\n  sweep_interval: 25h\n",
            "t.yaml:2:19: store.sweep_interval: duration must be at most 24h (got 25h)",
        ),
        (
            "store:\n  hash_secret: abc123\n",
            "t.yaml:2:16: store.hash_secret: expected 32 hex digits (a 128-bit secret, such as 'openssl rand -hex 16' prints), got 6 characters",
        ),
        (
            "store:\n  hash_secret: 000102030405060708090a0b0c0d0e0g\n",
            "t.yaml:2:16: store.hash_secret: expected 32 hex digits (0-9, a-f), found another character",
        ),
        (
            "requests:\n  max_key_bytes: 65537\n",
            "t.yaml:2:18: requests.max_key_bytes: must be at most 65536 (got 65537)",
        ),
        (
            "requests:\n  max_batch: 0\n",
            "t.yaml:2:14: requests.max_batch: must be at least 1 (got 0)",
        ),
        (
            "envoy:\n  domains: []\n",
            "t.yaml:2:12: envoy.domains: at least one domain is required",
        ),
        (
            "envoy:\n  domains: [a, '']\n",
            "t.yaml:2:16: envoy.domains[1]: must not be empty",
        ),
        (
            "envoy:\n  key_entry: ''\n",
            "t.yaml:2:14: envoy.key_entry: must not be empty",
        ),
    ];
    assert_errors(cases);
}

#[test]
fn invalid_shapes_and_metrics_name_line_path_and_reason() {
    let cases: &[(&str, &str)] = &[
        ("server: 5\n", "t.yaml:1:9: server: expected a mapping"),
        (
            "envoy:\n  domains: quotad\n",
            "t.yaml:2:12: envoy.domains: expected a list",
        ),
        (
            "limits:\n  free: {}\n",
            "t.yaml:1:1: unknown field (expected one of: default_plan, plans, keys, server, requests, store, redis, envoy, rls_files, response_headers, admin, reload, metrics, rlqs)",
        ),
        (
            "servers:\n  grpc_addr: 127.0.0.1:1\n",
            "t.yaml:1:1: unknown field 'servers' (did you mean 'server'?)",
        ),
        (
            "metrics:\n  port: 1\n",
            "t.yaml:2:3: metrics: unknown field (expected one of: heavy_keys, heavy_window, key_names)",
        ),
        (
            "metrics:\n  key_names: { \"0123456789abcdef\": acme }\n",
            "t.yaml:2:14: metrics.key_names: naming keys by hash needs store.hash_secret: without it the hashes change at every start",
        ),
        (
            "metrics:\n  heavy_keys: 1000\n",
            "t.yaml:2:15: metrics.heavy_keys: at most 100 (got 1000): the gauge is for the top of the list, not a per-key export",
        ),
        (
            "metrics:\n  key_names: { my-secret-key: acme }\n",
            "t.yaml:2:14: metrics.key_names: a key's keyed hash is 16 lowercase hex digits (as `quotactl usage` shows it), never the key itself",
        ),
        (
            "server:\n  grpc_addr: 127.0.0.1:1\n  grpc_addr: 127.0.0.1:2\n",
            "t.yaml:2:3: server: duplicate field 'grpc_addr'",
        ),
        ("- a\n- b\n", "t.yaml:1:1: expected a mapping"),
        (
            "default_plan: free\nplans:\n  free:\n    limits: [\n",
            "t.yaml:4:13: invalid yaml: unclosed bracket '['",
        ),
        (
            "server:\n  grpc_addr: 127.0.0.1:1\n---\nserver: {}\n",
            "t.yaml:4:1: the file must hold a single yaml document",
        ),
        (
            "default_plan: free\nplans:\n  free: {}\nrequests:\n  max_key_bytes: 4\nkeys:\n  longer-than-four: { plan: free }\n",
            "t.yaml:7:3: keys.<key>: key is 16 bytes long, more than requests.max_key_bytes (4), so no request could use it",
        ),
    ];
    assert_errors(cases);
}

#[test]
fn syntax_errors_are_their_own_variant() {
    let e = Config::from_yaml("plans:\n  free: {limits: [\n", "t.yaml");
    assert!(matches!(e, Err(ConfigError::Syntax(_))), "{e:?}");
    let e = Config::from_yaml("server: 5\n", "t.yaml");
    match e {
        Err(ConfigError::Invalid(d)) => {
            assert_eq!((d.line, d.column), (Some(1), Some(9)));
            assert_eq!(d.path, "server");
            assert_eq!(d.reason, "expected a mapping");
        }
        other => panic!("{other:?}"),
    }
}

/// A config, or errors of one located line each (at most the cap, and
/// the line saying reading stopped there).
fn check_one_line(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
    if let Err(e) = Config::from_yaml(text, "f.yaml") {
        let msg = e.to_string();
        let lines: Vec<&str> = msg.lines().collect();
        proptest::prop_assert!(
            lines.len() <= crate::yaml::recover::MAX_REPORTED + 1,
            "{msg}"
        );
        for line in lines {
            proptest::prop_assert!(
                line.starts_with("f.yaml") || line.starts_with("(stopped after"),
                "{msg}"
            );
        }
    }
    Ok(())
}

proptest::proptest! {
    /// Small edits of a valid file: a config or a one-line error,
    /// never a panic.
    #[test]
    fn edits_of_the_default_never_panic(
        pos in 0usize..EMBEDDED_DEFAULT.len(),
        cut in 0usize..12,
        insert in "[ -~\n]{0,8}",
    ) {
        let end = (pos + cut).min(EMBEDDED_DEFAULT.len());
        let mut text = EMBEDDED_DEFAULT.to_owned();
        text.replace_range(pos..end, &insert);
        check_one_line(&text)?;
    }

    /// Arbitrary text, including control characters and non-ASCII.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,120}|[\\x00-\\x7f]{0,120}") {
        check_one_line(&text)?;
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // Pass one stops at the missing field; locating it reads the whole
    // document again, hits the parser's depth budget, and falls back to
    // the parser's own position (the last key read).
    let deep = format!(
        "plans:\n  free:\n    limits:\n      - {{ rate: 1, per: second }}\nx: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    // Reading on past it, `x` is no section, and reading `x`'s value
    // (to skip it) meets the parser's depth budget: the last error.
    let all = error(&deep);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("t.yaml:4:20: plans.free.limits[0]: missing field 'name'"),
        "{all}"
    );
    assert!(
        lines.len() == 3 && lines[2].contains("recursion limit"),
        "{all}"
    );
    assert!(error(&format!("x: {}", "[".repeat(100_000))).starts_with("t.yaml:1:"));
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

#[test]
fn files_over_the_cap_are_refused_unread_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("huge.yaml");
    let f = std::fs::File::create(&path).expect("create");
    // Sparse: no disk is written.
    f.set_len(crate::diag::files::MAX_FILE_BYTES + 1)
        .expect("set_len");
    let err = Config::load(&path).expect_err("refused").to_string();
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    assert!(err.contains("larger than 16 MiB; refused"), "{err}");
    // At the cap exactly, it is read (and fails as YAML, not as size).
    f.set_len(crate::diag::files::MAX_FILE_BYTES)
        .expect("set_len");
    let err = Config::load(&path).expect_err("not a config").to_string();
    assert!(!err.contains("larger than"), "{err}");
    // A device that never ends is not a regular file: refused unread.
    let err = Config::load(Path::new("/dev/zero")).expect_err("endless");
    assert_eq!(
        err.to_string(),
        "/dev/zero: cannot read: is a character device, not a regular file; refused unread"
    );
}

#[test]
fn load_names_the_file() {
    let cases = [
        (
            "bad-unit.yaml",
            "7:43: plans.free.limits[1].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)",
        ),
        (
            "misspelled-burst.yaml",
            "6:52: plans.free.limits[0]: unknown field 'brust' (did you mean 'burst'?)",
        ),
        (
            "burst-on-quota.yaml",
            "12:16: plans.gold.limits[1].burst: burst applies only to rate limits",
        ),
        (
            "unknown-plan-key.yaml",
            "13:11: keys.<key>.plan: unknown plan 'platinum' (defined plans: free, gold)",
        ),
        ("syntax.yaml", "5:13: invalid yaml: unclosed bracket '['"),
    ];
    let mut failures = Vec::new();
    for (name, tail) in cases {
        let path = fixture(name);
        let err = match Config::load(&path) {
            Ok(c) => panic!("{name}: expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        };
        let want = format!("{}:{tail}", path.display());
        if err != want {
            failures.push(format!("{name}\n  got:  {err}\n  want: {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn load_valid_fixture_sets_source() {
    let path = fixture("valid.yaml");
    let c = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.source.as_deref(), Some(path.as_path()));
    assert_eq!(c.live.limits.plans.len(), 2);
    assert!(
        c.summary()
            .starts_with(&format!("source: {}", path.display()))
    );
}

#[test]
fn load_missing_file() {
    let path = fixture("does-not-exist.yaml");
    let err = match Config::load(&path) {
        Ok(c) => panic!("{c:?}"),
        Err(e) => e,
    };
    assert!(matches!(err, ConfigError::Read { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}: cannot read: ", path.display())),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn the_envoy_example_loads_its_limits_relative_to_itself() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy");
    let c = match Config::load(&root.join("quotad.yaml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let edge = c.live.rls.get("edge").expect("domain edge from limits/");
    assert_eq!(
        edge.files,
        [root.join("limits/edge.yaml").display().to_string()]
    );
    assert_eq!(c.live.response_headers, HeaderStyle::Both);
    assert!(
        c.summary()
            .contains("rls domain edge: 7 rules, fixed_window, from ")
    );
    // The Envoy bootstrap next to it asks for that domain at that port.
    let envoy = std::fs::read_to_string(root.join("envoy.yaml")).unwrap();
    assert!(envoy.contains("domain: edge"));
    let port = format!("port_value: {}", c.boot.server.grpc_addr.port());
    assert!(envoy.contains(&port), "envoy.yaml should point at {port}");
}

#[test]
fn the_commented_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quotad.yaml");
    if let Err(e) = Config::load(&path) {
        panic!("{e}");
    }
}

#[test]
fn rls_settings_parse_and_name_their_errors() {
    let c = parse_ok(
        "plans: { p: {} }\ndefault_plan: p\nresponse_headers: off\nenvoy: { algorithm: token_bucket, merge_domains: true, shadow: true }\n",
    );
    assert_eq!(c.live.response_headers, HeaderStyle::Off);
    assert_eq!(c.live.envoy.algorithm, Algorithm::TokenBucket);
    assert!(c.live.envoy.merge_domains && c.live.envoy.shadow);
    for (style, want) in [
        ("draft03", HeaderStyle::Draft03),
        ("draft11", HeaderStyle::Draft11),
    ] {
        let c = parse_ok(&format!(
            "plans: {{ p: {{}} }}\ndefault_plan: p\nresponse_headers: {style}\n"
        ));
        assert_eq!(c.live.response_headers, want);
    }
    assert_errors(&[
        (
            "plans: { p: {} }\ndefault_plan: p\nresponse_headers: draft-11\n",
            "t.yaml:3:19: response_headers: unknown header style 'draft-11' (expected off, draft03, draft11 or both)",
        ),
        (
            "plans: { p: {} }\ndefault_plan: p\nenvoy: { algorithm: leaky }\n",
            "t.yaml:3:21: envoy.algorithm: unknown algorithm 'leaky' (expected fixed_window or token_bucket)",
        ),
        (
            "plans: { p: {} }\ndefault_plan: p\nenvoy: { near_limit_ratio: 1.5 }\n",
            "t.yaml:3:28: envoy.near_limit_ratio: expected a share from 0 to 1 in hundredths, like 0.8 (got 1.5)",
        ),
        (
            "plans: { p: {} }\ndefault_plan: p\nenvoy: { near_limit_ratio: 0.855 }\n",
            "t.yaml:3:28: envoy.near_limit_ratio: expected a share from 0 to 1 in hundredths, like 0.8 (got 0.855)",
        ),
        (
            "plans: { p: {} }\ndefault_plan: p\nenvoy: { response_headers: draft3 }\n",
            "t.yaml:3:28: envoy.response_headers: unknown header style 'draft3' (expected off, draft03, draft11 or both)",
        ),
    ]);
    // The envoyproxy/ratelimit settings: files domains' headers (off by
    // default, whatever the top-level style), quota mode, dynamic
    // metadata, near-limit share.
    let c = parse_ok("plans: { p: {} }\ndefault_plan: p\n");
    let e = &c.live.envoy;
    assert_eq!(e.response_headers, HeaderStyle::Off);
    assert!(!e.quota_mode && !e.dynamic_metadata);
    assert_eq!(e.near_limit_percent, 80);
    let c = parse_ok(
        "plans: { p: {} }\ndefault_plan: p\nenvoy: { response_headers: draft03, quota_mode: true, response_dynamic_metadata: true, near_limit_ratio: 0.95 }\n",
    );
    let e = &c.live.envoy;
    assert_eq!(e.response_headers, HeaderStyle::Draft03);
    assert!(e.quota_mode && e.dynamic_metadata);
    assert_eq!(e.near_limit_percent, 95);
    let c = parse_ok("plans: { p: {} }\ndefault_plan: p\nenvoy: { near_limit_ratio: 1 }\n");
    assert_eq!(c.live.envoy.near_limit_percent, 100);
    let err = error("plans: { p: {} }\ndefault_plan: p\nrls_files: [/nonexistent/limits.yaml]\n");
    assert_eq!(
        err,
        "t.yaml:3:13: rls_files[0]: cannot read /nonexistent/limits.yaml: No such file or directory (os error 2)"
    );
}

#[test]
fn limits_files_can_be_added_after_loading() {
    let mut c = parse_ok("plans: { p: {} }\ndefault_plan: p\n");
    assert!(c.live.rls.is_empty());
    let ex1 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rls/valid/ex1_key_value.yaml");
    c.add_rls_files(std::slice::from_ref(&ex1)).unwrap();
    assert!(c.live.rls.get("mongo_cps").is_some());
    assert_eq!(c.live.rls_files, [ex1]);
}

#[test]
fn check_listeners_names_listeners_that_flags_put_on_one_address() {
    let mut c = parse_ok("default_plan: p\nplans: { p: {} }\n");
    assert_eq!(c.check_listeners(), Ok(()));
    c.boot.server.http_addr = c.boot.server.grpc_addr;
    assert_eq!(
        c.check_listeners(),
        Err("server.grpc_addr and server.http_addr are both 127.0.0.1:8081".to_owned())
    );
    // Port 0, "any free port", may repeat.
    let any = "127.0.0.1:0".parse().expect("address");
    (c.boot.server.grpc_addr, c.boot.server.http_addr) = (any, any);
    assert_eq!(c.check_listeners(), Ok(()));
}

/// Every value under key `name` anywhere in `v`.
fn find_all<'v>(v: &'v serde_json::Value, name: &str, out: &mut Vec<&'v serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == name {
                    out.push(x);
                }
                find_all(x, name, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_all(x, name, out)),
        _ => {}
    }
}

#[test]
fn the_rlqs_envoy_example_agrees_with_its_quotad_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy/rlqs");
    let c = match Config::load(&root.join("quotad.yaml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let text = std::fs::read_to_string(root.join("envoy.yaml")).unwrap();
    let envoy: serde_json::Value = serde_saphyr::from_str(&text).expect("envoy.yaml is YAML");
    let mut filters = Vec::new();
    find_all(&envoy, "http_filters", &mut filters);
    let filter = filters
        .iter()
        .filter_map(|f| f.as_array())
        .flatten()
        .find(|f| f["name"] == "envoy.filters.http.rate_limit_quota")
        .expect("the rate_limit_quota filter");
    let cfg = &filter["typed_config"];
    assert_eq!(
        cfg["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaFilterConfig"
    );
    // Its domain is one quotad has rules for.
    let domain = cfg["domain"].as_str().expect("a domain");
    assert!(!c.live.rlqs.rules.rules(domain).is_empty(), "{domain}");
    // Its RLQS cluster is quotad's gRPC port, over HTTP/2.
    let cluster = cfg["rlqs_server"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .expect("an envoy_grpc cluster");
    let mut clusters = Vec::new();
    find_all(&envoy, "clusters", &mut clusters);
    let cluster = clusters
        .iter()
        .filter_map(|c| c.as_array())
        .flatten()
        .find(|c| c["name"] == cluster)
        .expect("the RLQS cluster");
    let mut http2 = Vec::new();
    find_all(cluster, "http2_protocol_options", &mut http2);
    assert!(!http2.is_empty(), "the RLQS cluster speaks HTTP/2");
    let mut ports = Vec::new();
    find_all(cluster, "port_value", &mut ports);
    assert_eq!(
        ports.first().and_then(|p| p.as_u64()),
        Some(u64::from(c.boot.server.grpc_addr.port()))
    );
    // Every entry a bucket id is built with is one quotad's rules or
    // key entry name; the tenant comes from a header.
    let mut builders = Vec::new();
    find_all(cfg, "bucket_id_builder", &mut builders);
    let mut entries: Vec<String> = builders
        .iter()
        .filter_map(|b| b.as_object())
        .filter(|b| !b.contains_key("bucket_id_builder"))
        .flat_map(|b| b.keys().cloned())
        .collect();
    entries.sort();
    entries.dedup();
    assert_eq!(entries, ["api_key", "tenant", "tier"]);
    let named: Vec<&str> = c
        .live
        .rlqs
        .rules
        .rules(domain)
        .iter()
        .flat_map(|r| r.matcher.iter().map(|(k, _)| k.as_str()))
        .chain([c.live.rlqs.key_entry.as_str()])
        .collect();
    assert!(
        entries.iter().all(|e| named.contains(&e.as_str())),
        "{entries:?} vs {named:?}"
    );
    assert!(text.contains("header_name: x-tenant"));
}

/// The chart restarts pods on a change of exactly the settings in
/// `helm/quotad/restart-only.yaml`; a reload reports those it cannot apply
/// by the names in `Boot::differences`. Both lists name the same settings
/// (the chart's splits a section quotad compares whole).
#[test]
fn the_charts_restart_only_list_is_quotads() {
    let chart: Vec<String> =
        serde_saphyr::from_str(include_str!("../../helm/quotad/restart-only.yaml"))
            .expect("a YAML list");
    let source = include_str!("mod.rs");
    let start = source.find("pub fn differences").expect("differences");
    let budget = source
        .find("fn budget_differences")
        .expect("budget_differences");
    let end = budget + source[budget..].find("\n    }\n").expect("its end");
    // Every string literal there (the odd pieces between quotes).
    let mut ours: Vec<&str> = source[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|name| {
            ["server.", "admin", "store", "redis"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .collect();
    ours.sort_unstable();
    ours.dedup();
    assert!(ours.len() > 20, "names found: {ours:?}");
    let covers =
        |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{outer}."));
    for name in &ours {
        assert!(
            chart.iter().any(|c| covers(name, c)),
            "{name} needs a restart but the chart's list lacks it"
        );
    }
    for entry in &chart {
        assert!(
            ours.iter().any(|name| covers(name, entry)),
            "the chart restarts on {entry}, which quotad applies on reload"
        );
    }
}
