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
            "invalid/misplaced_key.yaml:4:5: descriptors[0]: unknown field (expected one of: key, value, rate_limit, descriptors, shadow_mode, detailed_metric)",
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
