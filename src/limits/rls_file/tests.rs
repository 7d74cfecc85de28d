use std::path::Path;

use super::*;
use crate::limits::LimitKind;

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/rls")
        .join(kind)
}

/// The error loading `paths` fails with, fixture directories shortened.
fn load_error(paths: &[PathBuf], opts: RlsOptions, taken: &[String]) -> String {
    match load(paths, opts, taken) {
        Ok(d) => panic!("{paths:?}: expected an error, got {d:?}"),
        Err(e) => e
            .to_string()
            .replace(&dir("invalid").display().to_string(), "invalid")
            .replace(&dir("valid").display().to_string(), "valid"),
    }
}

#[test]
fn invalid_fixtures_fail_naming_file_line_path_and_reason() {
    let cases = [
        (
            "bad_algorithm.yaml",
            "invalid/bad_algorithm.yaml:2:12: algorithm: unknown algorithm 'leaky_bucket' (expected fixed_window or token_bucket)",
        ),
        (
            "bad_unit.yaml",
            "invalid/bad_unit.yaml:5:13: descriptors[0].rate_limit.unit: invalid unit 'fortnight' (expected second, minute, hour, day, week, month or year)",
        ),
        (
            "bad_yaml.yaml",
            "invalid/bad_yaml.yaml:4:4: invalid yaml: while parsing a block collection, did not find expected '-' indicator",
        ),
        (
            "burst_on_fixed_window.yaml",
            "invalid/burst_on_fixed_window.yaml:4:62: descriptors[0].rate_limit.burst: applies only with algorithm: token_bucket (fixed windows have no burst)",
        ),
        (
            "duplicate_key.yaml",
            "invalid/duplicate_key.yaml:6:10: descriptors[1].key: duplicate descriptor: key 'database' with this value is already defined at this level (first defined at line 3)",
        ),
        (
            "duplicate_key_only.yaml",
            "invalid/duplicate_key_only.yaml:7:14: descriptors[0].descriptors[1].key: duplicate descriptor: key 'ip' without a value is already defined at this level (first defined at line 5)",
        ),
        (
            "duplicate_yaml_key.yaml",
            "invalid/duplicate_yaml_key.yaml:5:7: descriptors[0].rate_limit: duplicate field 'unit'",
        ),
        (
            "empty_descriptor_key.yaml",
            "invalid/empty_descriptor_key.yaml:3:10: descriptors[0].key: must not be empty",
        ),
        (
            "empty_domain.yaml",
            "invalid/empty_domain.yaml:1:9: domain: must not be empty",
        ),
        (
            "empty_replaces.yaml",
            "invalid/empty_replaces.yaml:8:17: descriptors[0].rate_limit.replaces[0].name: must not be empty",
        ),
        (
            "misplaced_key.yaml",
            "invalid/misplaced_key.yaml:4:5: descriptors[0]: unknown field (expected one of: key, value, rate_limit, descriptors, shadow_mode, detailed_metric, value_to_metric, share_threshold, quota_mode, metadata)",
        ),
        (
            "missing_descriptor_key.yaml",
            "invalid/missing_descriptor_key.yaml:3:5: descriptors[0]: missing field 'key'",
        ),
        (
            "missing_domain.yaml",
            "invalid/missing_domain.yaml:1:1: missing field 'domain'",
        ),
        (
            "misspelled_key.yaml",
            "invalid/misspelled_key.yaml:6:7: descriptors[0].rate_limit: unknown field 'request_per_unit' (did you mean 'requests_per_unit'?)",
        ),
        (
            "negative_requests.yaml",
            "invalid/negative_requests.yaml:4:52: descriptors[0].rate_limit.requests_per_unit: expected a whole number from 0 to 4294967295 (got -1)",
        ),
        (
            "no_unit.yaml",
            "invalid/no_unit.yaml:5:7: descriptors[0].rate_limit: missing field 'unit' (or set unlimited: true)",
        ),
        (
            "not_a_mapping.yaml",
            "invalid/not_a_mapping.yaml:1:1: expected a mapping",
        ),
        (
            "self_replaces.yaml",
            "invalid/self_replaces.yaml:9:17: descriptors[0].rate_limit.replaces[0].name: a limit cannot replace itself ('mine')",
        ),
        (
            "too_fast.yaml",
            "invalid/too_fast.yaml:5:52: descriptors[0].rate_limit.requests_per_unit: rate 4000000000 per 1000000000 ns exceeds one token per nanosecond",
        ),
        (
            "unlimited_with_unit.yaml",
            "invalid/unlimited_with_unit.yaml:6:13: descriptors[0].rate_limit.unit: must not be set when unlimited is true",
        ),
    ];
    let mut listed: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    listed.sort_unstable();
    let mut on_disk: Vec<String> = std::fs::read_dir(dir("invalid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort_unstable();
    assert_eq!(listed, on_disk, "every invalid fixture has a case");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, want)| {
            let got = load_error(&[dir("invalid").join(name)], RlsOptions::default(), &[]);
            (got != *want).then(|| format!("{name}\n  got:  {got}\n  want: {want}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_valid_directory_loads_every_file_in_name_order() {
    let d = load(&[dir("valid")], RlsOptions::default(), &[]).unwrap();
    let names: Vec<&str> = d.sorted().iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "edge_proxy_per_ip",
            "example4",
            "example6",
            "example7",
            "example8",
            "example9",
            "internal",
            "messaging",
            "mongo_cps",
            "replaces_more",
            "smooth",
            "units",
            "wildcards"
        ]
    );
    let messaging = d.get("messaging").unwrap();
    assert_eq!(messaging.root.rules(), 2);
    assert!(messaging.files[0].ends_with("ex2_nested.yaml"));
    let rule = messaging
        .root
        .lookup([("message_type", "marketing"), ("to_number", "2061111111")])
        .unwrap();
    let Action::Limit(l) = &rule.action else {
        panic!("expected a limit")
    };
    assert_eq!((l.requests_per_unit, l.unit), (5, Unit::Day));
    assert_eq!(l.limit.name, "message_type/to_number");
    // Units in any case, numbers as text.
    let units = d.get("units").unwrap();
    let unit_of = |v: &str| match &units.root.lookup([("u", v)]).unwrap().action {
        Action::Limit(l) => l.unit,
        Action::Unlimited => panic!("unlimited"),
    };
    assert_eq!(unit_of("m"), Unit::Minute);
    assert_eq!(unit_of("h"), Unit::Hour);
    assert_eq!(unit_of("mo"), Unit::Month);
    assert!(units.root.lookup([("port", "8080")]).is_some());
    // The file's algorithm; its 0 limit needs no bucket.
    let smooth = d.get("smooth").unwrap();
    assert_eq!(smooth.algorithm, Algorithm::TokenBucket);
    match &smooth.root.lookup([("api", "x")]).unwrap().action {
        Action::Limit(l) => assert!(matches!(&l.limit.kind, LimitKind::Rate(r) if r.burst() == 10)),
        Action::Unlimited => panic!("unlimited"),
    }
    // Names, replaces, shadow and unlimited are kept.
    let ex7 = d.get("example7").unwrap();
    let r = ex7
        .root
        .lookup([("key_2", "value_2"), ("user", "bkthomps")])
        .unwrap();
    assert_eq!(r.replaces, ["specific_limit"]);
    let ex6 = d.get("example6").unwrap();
    assert!(
        ex6.root
            .lookup([("service", "s"), ("user", "user-a")])
            .unwrap()
            .shadow
    );
    let ex8 = d.get("example8").unwrap();
    assert!(
        ex8.root
            .lookup([("key1", "other")])
            .unwrap()
            .detailed_metric
    );
    assert!(
        !ex8.root
            .lookup([("key1", "value1")])
            .unwrap()
            .detailed_metric
    );
    let internal = d.get("internal").unwrap();
    assert_eq!(
        internal.root.lookup([("ldap", "x")]).unwrap().action,
        Action::Unlimited
    );
}

/// Writes `files` (name, text) into a fresh directory.
fn scratch(files: &[(&str, &str)]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(t.path().join(name), text).unwrap();
    }
    t
}

const A: &str =
    "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1 }\n";
const B: &str =
    "domain: d\ndescriptors:\n  - key: b\n    rate_limit: { unit: second, requests_per_unit: 2 }\n";

#[test]
fn one_domain_in_two_files_is_refused_unless_merging() {
    let t = scratch(&[
        ("a.yaml", A),
        ("b.yaml", B),
        ("again.yml", A),
        (".hidden.yaml", "x"),
    ]);
    let a = t.path().join("a.yaml");
    let b = t.path().join("b.yaml");
    let err = load_error(&[a.clone(), b.clone()], RlsOptions::default(), &[]);
    assert_eq!(
        err,
        format!(
            "{}:1:9: domain: domain 'd' is already defined in {} (set envoy.merge_domains: true to merge files of one domain)",
            b.display(),
            a.display()
        )
    );
    let merge = RlsOptions {
        merge_domains: true,
        ..RlsOptions::default()
    };
    let d = load(&[a.clone(), b.clone()], merge, &[]).unwrap();
    let d = d.get("d").unwrap();
    assert!(d.root.lookup([("a", "1")]).is_some() && d.root.lookup([("b", "1")]).is_some());
    // A descriptor defined in two merged files is still a duplicate; the
    // directory reads a.yaml, again.yml, b.yaml and skips dotfiles.
    let err = load_error(&[t.path().to_path_buf()], merge, &[]);
    assert_eq!(
        err,
        format!(
            "{}:3:10: descriptors[0].key: duplicate descriptor: key 'a' without a value is already defined at this level (in {})",
            t.path().join("again.yml").display(),
            a.display()
        )
    );
}

#[test]
fn merged_files_must_agree_on_the_algorithm() {
    let t = scratch(&[
        ("a.yaml", A),
        ("b.yaml", &format!("algorithm: token_bucket\n{B}")),
    ]);
    let merge = RlsOptions {
        merge_domains: true,
        ..RlsOptions::default()
    };
    let err = load_error(&[t.path().to_path_buf()], merge, &[]);
    assert_eq!(
        err,
        format!(
            "{}:1:12: algorithm: domain 'd' is fixed_window in {}; files of one domain must agree",
            t.path().join("b.yaml").display(),
            t.path().join("a.yaml").display()
        )
    );
}

#[test]
fn global_algorithm_applies_unless_the_file_says_otherwise() {
    let t = scratch(&[("a.yaml", A)]);
    let opts = RlsOptions {
        algorithm: Algorithm::TokenBucket,
        merge_domains: false,
    };
    let d = load(&[t.path().join("a.yaml")], opts, &[]).unwrap();
    assert_eq!(d.get("d").unwrap().algorithm, Algorithm::TokenBucket);
}

#[test]
fn a_plan_domain_cannot_come_from_a_file() {
    let t = scratch(&[("a.yaml", A)]);
    let a = t.path().join("a.yaml");
    let err = load_error(
        std::slice::from_ref(&a),
        RlsOptions::default(),
        &["d".to_owned()],
    );
    assert_eq!(
        err,
        format!(
            "{}:1:9: domain: domain 'd' is answered by the plans (envoy.domains); remove it there to use this file",
            a.display()
        )
    );
}

#[test]
fn missing_files_and_empty_directories_are_errors() {
    let t = scratch(&[("notes.txt", "x")]);
    let err = load_error(&[t.path().to_path_buf()], RlsOptions::default(), &[]);
    assert_eq!(
        err,
        format!(
            "{}: directory has no .yaml or .yml files",
            t.path().display()
        )
    );
    let missing = t.path().join("nope.yaml");
    let err = load_error(std::slice::from_ref(&missing), RlsOptions::default(), &[]);
    assert!(
        err.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let mut text = String::from("domain: d\ndescriptors:\n");
    for depth in 0..5_000 {
        let pad = "  ".repeat(depth * 2);
        text.push_str(&format!("{pad}  - key: k\n{pad}    descriptors:\n"));
    }
    let mut d = RlsDomains::default();
    assert!(add(&mut d, &text, "deep.yaml", RlsOptions::default(), &[]).is_err());
}

#[test]
fn a_domain_must_be_printable_and_at_most_256_bytes() {
    let long = "d".repeat(257);
    let cases = [
        (
            "domain: \"edge\\nstatus: forged\"\n".to_owned(),
            "t.yaml:1:9: domain: a domain must be printable: no control characters (line breaks, tabs, escapes), line separators or bidirectional overrides",
        ),
        (
            "domain: \"a\\u202eb\"\n".to_owned(),
            "t.yaml:1:9: domain: a domain must be printable: no control characters (line breaks, tabs, escapes), line separators or bidirectional overrides",
        ),
        (
            format!("domain: {long}\n"),
            "t.yaml:1:9: domain: a domain is at most 256 bytes (this one is 257)",
        ),
        (
            "domain: \"  \"\n".to_owned(),
            "t.yaml:1:9: domain: must not be empty",
        ),
    ];
    for (text, want) in cases {
        let text = format!("{text}descriptors: []\n");
        let mut domains = RlsDomains::default();
        let got = add(&mut domains, &text, "t.yaml", RlsOptions::default(), &[])
            .map_err(|e| e.to_string());
        assert_eq!(got, Err(want.to_owned()), "{text:?}");
    }
    let mut domains = RlsDomains::default();
    let at_most = format!("domain: {}\ndescriptors: []\n", "d".repeat(256));
    add(&mut domains, &at_most, "t.yaml", RlsOptions::default(), &[]).unwrap();
}

/// One domain read from `text` (origin `t.yaml`).
fn domain_of(text: &str) -> Domain {
    let mut domains = RlsDomains::default();
    if let Err(e) = add(&mut domains, text, "t.yaml", RlsOptions::default(), &[]) {
        panic!("{text}: {e}");
    }
    match domains.sorted().first() {
        Some(d) => (*d).clone(),
        None => panic!("no domain"),
    }
}

fn add_error(text: &str) -> String {
    let mut domains = RlsDomains::default();
    match add(&mut domains, text, "t.yaml", RlsOptions::default(), &[]) {
        Ok(()) => panic!("{text}: expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The series a request descriptor's hits count under, as
/// envoyproxy/ratelimit's config_test.go names its stats (without the
/// domain).
fn series(d: &Domain, entries: &[(&str, &str)]) -> Option<String> {
    let rule = d.root.lookup(entries.iter().copied())?;
    Some(rule.stats.name(entries.iter().copied()))
}

#[test]
fn metric_names_follow_value_to_metric_and_detailed_metric() {
    // envoyproxy/ratelimit's TestValueToMetric_* and TestDetailedMetric.
    let d = domain_of(
        "domain: d
descriptors:
  - key: route
    value_to_metric: true
    descriptors:
      - key: http_method
        value_to_metric: true
        descriptors:
          - key: subject_id
            rate_limit: { unit: minute, requests_per_unit: 60 }
  - key: k1
    value_to_metric: true
    descriptors:
      - key: k2
        rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: a1
    descriptors:
      - key: a2
        value_to_metric: true
        descriptors:
          - key: a3
            rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: wild
    value: foo*
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: v2m
    value: foo*bar*
    value_to_metric: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: fixed
    value: api
    value_to_metric: true
    descriptors:
      - key: leaf
        detailed_metric: true
        rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: plain
    descriptors:
      - key: x
        rate_limit: { unit: minute, requests_per_unit: 1 }
",
    );
    let cases: [(&[(&str, &str)], &str); 8] = [
        (
            &[
                ("route", "draw"),
                ("http_method", "GET"),
                ("subject_id", "123"),
            ],
            "route_draw.http_method_GET.subject_id",
        ),
        // An empty value adds no `_`.
        (
            &[("route", ""), ("http_method", "GET"), ("subject_id", "1")],
            "route.http_method_GET.subject_id",
        ),
        (&[("k1", "A"), ("k2", "B")], "k1_A.k2"),
        (&[("a1", "X"), ("a2", "Y"), ("a3", "Z")], "a1.a2_Y.a3"),
        (&[("wild", "foo1")], "wild_foo*"),
        (&[("v2m", "foo123bar456")], "v2m_foo123bar456"),
        (&[("fixed", "api"), ("leaf", "7")], "fixed_api.leaf_7"),
        (&[("plain", "p"), ("x", "q")], "plain.x"),
    ];
    for (entries, want) in cases {
        assert_eq!(series(&d, entries).as_deref(), Some(want), "{entries:?}");
    }
    // Fixed names are computed once, at load.
    let rule = d.root.lookup([("plain", "p"), ("x", "q")]);
    assert_eq!(rule.and_then(|r| r.stats.fixed()), Some("plain.x"));
}

#[test]
fn share_threshold_shares_the_counter_of_its_levels_and_names_them_by_pattern() {
    let d = domain_of(
        "domain: d
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: path
    value: path/*
    share_threshold: true
    descriptors:
      - key: file
        value: file/*
        descriptors:
          - key: type
            rate_limit: { unit: minute, requests_per_unit: 120 }
  - key: service
    value: svc/*
    share_threshold: true
    value_to_metric: true
    descriptors:
      - key: endpoint
        detailed_metric: true
        rate_limit: { unit: minute, requests_per_unit: 80 }
",
    );
    let entries = [("files", "files/a.pdf")];
    let rule = d.root.lookup(entries).expect("files/* matches");
    let counted: Vec<_> = rule.counter_entries(entries.into_iter()).collect();
    assert_eq!(counted, [("files", "files/*")]);
    assert_eq!(series(&d, &entries).as_deref(), Some("files_files/*"));
    // Only the shared level stands for its pattern.
    let entries = [("path", "path/a"), ("file", "file/b"), ("type", "pdf")];
    let rule = d.root.lookup(entries).expect("matches");
    let counted: Vec<_> = rule.counter_entries(entries.into_iter()).collect();
    assert_eq!(
        counted,
        [("path", "path/*"), ("file", "file/b"), ("type", "pdf")]
    );
    assert_eq!(
        series(&d, &entries).as_deref(),
        Some("path_path/*.file_file/*.type")
    );
    // share_threshold wins over value_to_metric and detailed_metric.
    let entries = [("service", "svc/a"), ("endpoint", "get")];
    assert_eq!(
        series(&d, &entries).as_deref(),
        Some("service_svc/*.endpoint_get")
    );
    // A level without share_threshold keeps every value's own counter.
    let rule = d.root.lookup([("files", "files/x")]).expect("matches");
    assert!(rule.shared.iter().any(Option::is_some));
}

#[test]
fn share_threshold_needs_a_wildcard_value() {
    assert_eq!(
        add_error(
            "domain: d\ndescriptors:\n  - key: k\n    value: exact\n    share_threshold: true\n    rate_limit: { unit: second, requests_per_unit: 1 }\n"
        ),
        "t.yaml:5:22: descriptors[0].share_threshold: applies only to a wildcard value (one with '*'), but this descriptor's value is 'exact'"
    );
    assert_eq!(
        add_error("domain: d\ndescriptors:\n  - key: k\n    share_threshold: true\n"),
        "t.yaml:4:22: descriptors[0].share_threshold: applies only to a wildcard value (one with '*'), but this descriptor's value is not set"
    );
    // false is fine anywhere.
    domain_of("domain: d\ndescriptors:\n  - key: k\n    share_threshold: false\n");
}

#[test]
fn unit_multiplier_widens_the_window() {
    let d = domain_of(
        "domain: d
descriptors:
  - key: key1
    rate_limit: { unit: minute, requests_per_unit: 20, unit_multiplier: 5 }
  - key: key2
    rate_limit: { unit: minute, requests_per_unit: 25 }
",
    );
    let limit = |k| match d.root.lookup([(k, "v")]).map(|r| &r.action) {
        Some(Action::Limit(l)) => l.clone(),
        other => panic!("{k}: {other:?}"),
    };
    let five = limit("key1");
    assert_eq!(five.multiplier.get(), 5);
    assert_eq!(five.limit.window_seconds(), 300);
    assert_eq!(five.requests_per_unit, 20);
    let one = limit("key2");
    assert_eq!(one.multiplier.get(), 1);
    assert_eq!(one.limit.window_seconds(), 60);
    // Different windows never share a counter.
    assert_ne!(five.limit.uid, one.limit.uid);
    assert_eq!(
        add_error(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 5, unit_multiplier: 0 }\n"
        ),
        "t.yaml:4:72: descriptors[0].rate_limit.unit_multiplier: invalid unit multiplier of 0 (the window is unit_multiplier units; at least 1)"
    );
    assert_eq!(
        add_error(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unlimited: true, unit_multiplier: 2 }\n"
        ),
        "t.yaml:4:53: descriptors[0].rate_limit.unit_multiplier: must not be set when unlimited is true"
    );
}

#[test]
fn quota_mode_and_metadata_are_read_per_descriptor() {
    let d = domain_of(
        "domain: d
descriptors:
  - key: tokens
    quota_mode: true
    metadata:
      service: { name: llm, weights: [1, 2.5], on: true, none: null }
    rate_limit: { unit: day, requests_per_unit: 1000 }
  - key: plain
    metadata: {}
    rate_limit: { unit: day, requests_per_unit: 1 }
",
    );
    let rule = d.root.lookup([("tokens", "t")]).expect("matches");
    assert!(rule.quota_mode);
    let meta = rule.metadata.as_deref().expect("metadata");
    assert_eq!(
        serde_json::Value::Object(meta.clone()),
        serde_json::json!({"service": {"name": "llm", "weights": [1, 2.5], "on": true, "none": null}})
    );
    let plain = d.root.lookup([("plain", "p")]).expect("matches");
    assert!(!plain.quota_mode);
    assert!(plain.metadata.is_none(), "an empty mapping is no metadata");
}

#[test]
fn every_mistake_in_a_limits_file_is_reported_each_on_its_line() {
    // Mistakes of shape and type, each in its own descriptor (a
    // descriptor with a mistake is left out, its children with it).
    let text = "\
domain: shop
descriptors:
  - key: a
    rate_limit: { unit: second, requests_per_unit: many }
  - key: b
    rate_limit: { unit: second, request_per_unit: 1 }
  - key: c
    descriptors:
      - key: d
        rate_limit: { unit: second, requests_per_unit: 1, burst: x }
";
    let mut domains = RlsDomains::default();
    let err = add(&mut domains, text, "l.yaml", RlsOptions::default(), &[])
        .expect_err("three mistakes")
        .to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("l.yaml:4:")
            && lines[0].contains("descriptors[0].rate_limit.requests_per_unit"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("l.yaml:6:") && lines[1].contains("did you mean 'requests_per_unit'"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("l.yaml:10:")
            && lines[2].contains("descriptors[2].descriptors[0].rate_limit.burst"),
        "{err}"
    );
}
