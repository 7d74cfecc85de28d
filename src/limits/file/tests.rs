//! Parsing and error tests go through [`crate::config::Config::from_yaml`],
//! which owns the YAML reader and error formatting.

use super::*;
use crate::config::Config;

const EXAMPLE: &str = r#"
default_plan: free
plans:
  free:
    limits:
      - { name: per-second, rate: 10, per: second, burst: 20 }
      - { name: daily, quota: 10000, per: day }
  gold:
    limits:
      - { name: per-second, rate: 1000, per: second, burst: 2000 }
      - name: per-minute
        rate: 30000
        per: Minute
  open: {}
keys:                      # static assignments of API keys to plans
  "demo-gold-key": { plan: gold }
"#;

fn limits(yaml: &str) -> LimitsSpec {
    match Config::from_yaml(yaml, "t.yaml") {
        Ok(c) => c.live.limits,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

use crate::config::tests::{assert_errors, error};

fn rate(l: &Limit) -> &Rate {
    match &l.kind {
        LimitKind::Rate(r) => r,
        other => panic!("expected a rate, got {other:?}"),
    }
}

#[test]
fn example_parses_in_file_order() {
    let spec = limits(EXAMPLE);
    assert_eq!(spec.default_plan, "free");
    let names: Vec<&str> = spec.plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["free", "gold", "open"]);
    assert_eq!(spec.keys, [("demo-gold-key".to_owned(), "gold".to_owned())]);

    let free = &spec.plans[0];
    assert_eq!(free.limits.len(), 2);
    let r = rate(&free.limits[0]);
    assert_eq!((r.rate(), r.period(), r.burst()), (10, NANOS_PER_SEC, 20));
    assert_eq!(free.limits[0].policy, "free/per-second");
    match &free.limits[1].kind {
        LimitKind::Quota(q) => {
            assert_eq!(q.quota.get(), 10_000);
            assert_eq!(q.window, Window::Day);
        }
        other => panic!("expected a quota, got {other:?}"),
    }

    let gold = &spec.plans[1];
    let r = rate(&gold.limits[1]);
    // burst defaults to rate; units are case-insensitive
    assert_eq!(
        (r.rate(), r.period(), r.burst()),
        (30_000, 60 * NANOS_PER_SEC, 30_000)
    );
    assert!(spec.plans[2].limits.is_empty());
    assert_eq!(
        describe_limit(&free.limits[0]),
        "per-second 10/second burst 20"
    );
    assert_eq!(describe_limit(&free.limits[1]), "daily 10000/day");
}

#[test]
fn table_builds_and_resolves_static_keys() {
    let spec = limits(EXAMPLE);
    let h = KeyHasher::with_secret([9; 16]);
    let t = match spec.table(&h) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(t.plans().len(), 3);
    assert_eq!(t.default_plan().name, "free");
    assert_eq!(
        match t.assign(h.key_hash(b"demo-gold-key"), 0).0 {
            crate::limits::Assigned::Plan(id) => t.plan(id).name.as_str(),
            other => panic!("{other:?}"),
        },
        "gold"
    );
    assert_eq!(t.static_keys(), 1);
}

#[test]
fn debug_does_not_print_keys() {
    let spec = limits(EXAMPLE);
    let dbg = format!("{spec:?}");
    assert!(!dbg.contains("demo-gold-key"), "{dbg}");
    assert!(dbg.contains("<1 static keys>"), "{dbg}");
}

#[test]
fn a_file_without_plans_nor_limits_files_is_an_error_not_an_open_door() {
    assert_eq!(
        error("server: {}\n"),
        "t.yaml:1:1: plans: no plans defined, and no limits files: a config needs at least one plan, or rls_files (or --limits) with the Envoy domains it serves, or rlqs rules (an allow-everything plan is `open: { limits: [] }` with `default_plan: open`)"
    );
    // Keys need plans to be on.
    let e = error("keys:\n  k1: { plan: gold }\n");
    assert!(
        e.starts_with("t.yaml:2:3: keys: keys are assigned to plans, and this file defines none"),
        "{e}"
    );
}

#[test]
fn quotas_accept_weeks_and_months() {
    let spec = limits(
        "default_plan: p\nplans:\n  p:\n    limits:\n      - { name: w, quota: 5, per: week }\n      - { name: m, quota: 6, per: MONTH }\n",
    );
    let windows: Vec<Window> = spec.plans[0]
        .limits
        .iter()
        .map(|l| match &l.kind {
            LimitKind::Quota(q) => q.window,
            _ => Window::Second,
        })
        .collect();
    assert_eq!(windows, [Window::Week, Window::Month]);
}

#[test]
fn a_plan_mixes_rates_quotas_and_one_concurrency_limit() {
    let spec = limits(
        "default_plan: p\nplans:\n  p:\n    limits:\n      - { name: per-second, rate: 5, per: second }\n      - { name: streams, concurrency: 10 }\n      - { name: daily, quota: 9, per: day }\n  q:\n    limits:\n      - { name: streams, concurrency: 2, lease_ttl: 90s }\n",
    );
    let p = &spec.plans[0];
    assert_eq!(p.limits.len(), 2, "checks see only rates and quotas");
    let c = p.concurrency.as_deref().expect("a concurrency limit");
    assert_eq!(
        (c.slots, c.lease_ttl),
        (10, 30 * NANOS_PER_SEC),
        "30 s by default"
    );
    assert_eq!(c.policy, "p/streams");
    assert_eq!(describe_concurrency(c), "streams 10 at once, lease 30s");
    let q = spec.plans[1].concurrency.as_deref().expect("q's");
    assert_eq!(q.lease_ttl, 90 * NANOS_PER_SEC);
    assert_eq!(q.uid, c.uid, "filed by the limit's name, whatever the plan");
}

/// Each case's limit lines, in a one-plan file, fail with its error.
fn assert_plan_errors(cases: &[(&str, &str)]) {
    let files: Vec<(String, &str)> = cases
        .iter()
        .map(|(lines, want)| (plan_file(lines), *want))
        .collect();
    assert_errors(&files);
}

/// Wraps a list of limit lines into a one-plan file; the first limit
/// line is line 5.
fn plan_file(limit_lines: &str) -> String {
    format!("default_plan: free\nplans:\n  free:\n    limits:\n{limit_lines}")
}

#[test]
fn invalid_limits_name_line_path_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "      - { name: a, rate: 10, per: second }\n      - { name: b, quota: 5, per: fortnight }\n",
            "t.yaml:6:35: plans.free.limits[1].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)",
        ),
        (
            "      - { name: a, rate: 10, per: second, brust: 20 }\n",
            "t.yaml:5:43: plans.free.limits[0]: unknown field 'brust' (did you mean 'burst'?)",
        ),
        (
            "      - { name: a, rate: 0, per: second }\n",
            "t.yaml:5:26: plans.free.limits[0].rate: must be at least 1 (got 0)",
        ),
        (
            "      - { name: a, rate: -5, per: second }\n",
            "t.yaml:5:26: plans.free.limits[0].rate: must be at least 1 (got -5)",
        ),
        (
            "      - { name: a, rate: ten, per: second }\n",
            "t.yaml:5:26: plans.free.limits[0].rate: expected a positive integer (got 'ten')",
        ),
        (
            "      - { name: a, rate: \"10\", per: second }\n",
            "t.yaml:5:26: plans.free.limits[0].rate: expected a number, not the string '10' (remove the quotes)",
        ),
        (
            "      - { name: a, rate: 1.5, per: second }\n",
            "t.yaml:5:26: plans.free.limits[0].rate: expected a whole number (got 1.5)",
        ),
        (
            "      - { name: a, quota: 99999999999999999999999, per: day }\n",
            "t.yaml:5:27: plans.free.limits[0].quota: number is too large (at most 18446744073709551615)",
        ),
        (
            "      - { name: a, rate: true, per: second }\n",
            "t.yaml:5:26: plans.free.limits[0].rate: expected a positive integer (got true)",
        ),
        (
            "      - { name: a, rate: [1], per: second }\n",
            "t.yaml:5:20: plans.free.limits[0].rate: expected a positive integer (got sequence)",
        ),
        (
            "      - { name: a, rate: 10, quota: 5, per: second }\n",
            "t.yaml:5:37: plans.free.limits[0].quota: a limit has either rate or quota, not both",
        ),
        (
            "      - { name: a, per: second }\n",
            "t.yaml:5:9: plans.free.limits[0]: a limit needs either rate (a token bucket), quota (a calendar window) or concurrency (slots held at once)",
        ),
        (
            "      - { name: a, quota: 5, per: day, burst: 10 }\n",
            "t.yaml:5:47: plans.free.limits[0].burst: burst applies only to rate limits",
        ),
        (
            "      - { name: a, rate: 1, per: second }\n      - { name: a, quota: 5, per: day }\n",
            "t.yaml:6:17: plans.free.limits[1].name: limit 'a' is defined twice in this plan (first defined at line 5)",
        ),
        (
            "      - { name: a, rate: 2000000000, per: second }\n",
            "t.yaml:5:26: plans.free.limits[0].rate: rate 2000000000 per second is faster than one token per nanosecond",
        ),
        (
            "      - { name: a, rate: 1, per: day, burst: 1000000 }\n",
            "t.yaml:5:46: plans.free.limits[0].burst: burst 1000000 at 1 per day takes more than 500 years to refill",
        ),
        (
            "      - { name: a, rate: 1, per: week }\n",
            "t.yaml:5:34: plans.free.limits[0].per: a rate cannot be per week (use second, minute, hour or day, or a quota for weeks and months)",
        ),
        (
            "      - { name: 'a b', rate: 1, per: second }\n",
            "t.yaml:5:17: plans.free.limits[0].name: invalid character ' ' in name 'a b' (use letters, digits, '_', '.' and '-')",
        ),
        (
            "      - { name: '', rate: 1, per: second }\n",
            "t.yaml:5:17: plans.free.limits[0].name: name must not be empty",
        ),
        (
            "      - { rate: 1, per: second }\n",
            "t.yaml:5:9: plans.free.limits[0]: missing field 'name'",
        ),
        (
            "      - { name: a, rate: 1 }\n",
            "t.yaml:5:9: plans.free.limits[0]: missing field 'per'",
        ),
        (
            "      - 5\n",
            "t.yaml:5:9: plans.free.limits[0]: expected a mapping",
        ),
    ];
    assert_plan_errors(cases);
}

#[test]
fn invalid_concurrency_limits_name_line_path_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "      - { name: s, concurrency: 10, per: second }\n",
            "t.yaml:5:42: plans.free.limits[0].per: a concurrency limit has no per (only name, concurrency and lease_ttl)",
        ),
        (
            "      - { name: s, concurrency: 10, lease_ttl: 2h }\n",
            "t.yaml:5:48: plans.free.limits[0].lease_ttl: lease_ttl must be between 1s and 1h (got 7200s)",
        ),
        (
            "      - { name: s, concurrency: 10, lease_ttl: 0s }\n",
            "t.yaml:5:48: plans.free.limits[0].lease_ttl: lease_ttl must be between 1s and 1h (got 0s)",
        ),
        (
            "      - { name: s, concurrency: 10 }\n      - { name: t, concurrency: 5 }\n",
            "t.yaml:6:33: plans.free.limits[1].concurrency: a plan has at most one concurrency limit",
        ),
        (
            "      - { name: a, rate: 1, per: second, lease_ttl: 30s }\n",
            "t.yaml:5:53: plans.free.limits[0].lease_ttl: lease_ttl applies only to concurrency limits",
        ),
        (
            "      - { name: s, concurrency: 10, mode: sync }\n",
            "t.yaml:5:43: plans.free.limits[0].mode: a concurrency limit has no mode (only name, concurrency and lease_ttl)",
        ),
        (
            "      - { name: s, concurrency: 5000000000 }\n",
            "t.yaml:5:33: plans.free.limits[0].concurrency: concurrency 5000000000 is more than 4294967295 slots",
        ),
    ];
    assert_plan_errors(cases);
}

#[test]
fn too_many_limits() {
    let lines: String = (0..65)
        .map(|i| format!("      - {{ name: l{i}, rate: 1, per: second }}\n"))
        .collect();
    assert_eq!(
        error(&plan_file(&lines)),
        "t.yaml:5:7: plans.free.limits: too many limits: 65 (at most 64 per plan)"
    );
}

#[test]
fn invalid_plans_and_keys_name_line_path_and_reason() {
    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    let long_name = "n".repeat(crate::diag::MAX_NAME_BYTES + 1);
    let cases: Vec<(String, String)> = vec![
        (
            "default_plan: free\nplans:\n  free: {}\n  gold: {}\n  free: {}\n".into(),
            "t.yaml:5:3: plans.free: plan 'free' is defined twice (first defined at line 3)".into(),
        ),
        (
            "default_plan: silver\nplans:\n  free: {}\n  gold: {}\n".into(),
            "t.yaml:1:15: default_plan: unknown plan 'silver' (defined plans: free, gold)".into(),
        ),
        (
            "plans:\n  free: {}\n".into(),
            "t.yaml:1:1: default_plan: missing field 'default_plan' (required when plans are defined)".into(),
        ),
        (
            "default_plan: free\n".into(),
            "t.yaml:1:15: default_plan: unknown plan 'free' (the file defines no plans)".into(),
        ),
        (
            "default_plan: free\nplans:\n  free: {}\nkeys:\n  k1: { plan: gold }\n".into(),
            "t.yaml:5:15: keys.<key>.plan: unknown plan 'gold' (defined plans: free)".into(),
        ),
        (
            "default_plan: free\nplans:\n  free: {}\nkeys:\n  \"\": { plan: free }\n".into(),
            "t.yaml:5:3: keys.<key>: key must not be empty".into(),
        ),
        (
            format!("default_plan: free\nplans:\n  free: {{}}\nkeys:\n  {long_key}: {{ plan: free }}\n"),
            "t.yaml:5:3: keys.<key>: key is 257 bytes long (at most 256)".into(),
        ),
        (
            "default_plan: free\nplans:\n  free: {}\nkeys:\n  k1: { plan: free }\n  k1: { plan: free }\n".into(),
            "t.yaml:6:3: keys.<key>: key is assigned twice (first defined at line 5)".into(),
        ),
        (
            "default_plan: free\nplans:\n  free: {}\nkeys:\n  k1: { plan: free, tier: 2 }\n".into(),
            "t.yaml:5:21: keys.<key>: unknown field (expected one of: plan)".into(),
        ),
        (
            format!("default_plan: free\nplans:\n  {long_name}: {{}}\n"),
            format!("t.yaml:3:3: plans.{long_name}: name '{}...' is 65 bytes long (at most 64)", "n".repeat(40)),
        ),
        (
            "default_plan: free\nplans:\n  free:\n    limit: []\n".into(),
            "t.yaml:4:5: plans.free: unknown field 'limit' (did you mean 'limits'?)".into(),
        ),
        (
            "default_plan: free\nplans:\n  free: {}\n  override: {}\n".into(),
            "t.yaml:4:13: plans.override: the plan name 'override' is reserved for operators' overrides with limits of their own".into(),
        ),
    ];
    assert_errors(&cases);
}

#[test]
fn key_errors_never_echo_the_key() {
    let err =
        error("default_plan: free\nplans:\n  free: {}\nkeys:\n  sk-secret-123: { plan: gold }\n");
    assert!(!err.contains("sk-secret-123"), "{err}");
}
