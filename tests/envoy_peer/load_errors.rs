//! The peer's fixtures that must not load, refused by quotad: each error
//! names the file, the line and column, the field path and the reason.
//! (The peer's own messages, for comparison, are in SPEC §10: e.g.
//! `replaces_self.yaml: replaces should not contain name of same
//! descriptor`.)

use quotad::config::Config;
use quotad::limits::rls_file::{RlsOptions, load};

use super::*;

/// The error loading the peer fixtures `names`, the fixture directory
/// shortened to `peer`.
fn load_error(names: &[&str], merge_domains: bool) -> String {
    let paths: Vec<PathBuf> = names.iter().map(|n| fixture(n)).collect();
    let opts = RlsOptions {
        merge_domains,
        ..RlsOptions::default()
    };
    match load(&paths, opts, &[]) {
        Ok(_) => panic!("{names:?} loaded"),
        Err(e) => e
            .to_string()
            .replace(&peer_dir().display().to_string(), "peer"),
    }
}

#[test]
fn every_invalid_peer_fixture_is_refused_naming_file_field_and_reason() {
    let cases = [
        (
            "duplicate_key.yaml",
            "peer/duplicate_key.yaml:7:10: descriptors[1].key: duplicate descriptor: key 'key1' with this value is already defined at this level (first defined at line 4)",
        ),
        (
            "misspelled_key.yaml",
            "peer/misspelled_key.yaml:6:5: descriptors[0]: unknown field 'ratelimit' (did you mean 'rate_limit'?)",
        ),
        (
            "misspelled_key2.yaml",
            "peer/misspelled_key2.yaml:8:7: descriptors[0].rate_limit: unknown field 'requestsperunit' (did you mean 'requests_per_unit'?)",
        ),
        (
            "non_map_list.yaml",
            "peer/non_map_list.yaml:4:5: descriptors[0]: expected a mapping",
        ),
        (
            "non_string_key.yaml",
            "peer/non_string_key.yaml:2:1: unknown field (expected one of: domain, descriptors, algorithm)",
        ),
        (
            "replaces_empty.yaml",
            "peer/replaces_empty.yaml:11:19: descriptors[0].descriptors[0].rate_limit.replaces[0].name: must not be empty",
        ),
        (
            "replaces_self.yaml",
            "peer/replaces_self.yaml:11:21: descriptors[0].descriptors[0].rate_limit.replaces[0].name: a limit cannot replace itself ('self')",
        ),
        (
            "unlimited_with_unit.yaml",
            "peer/unlimited_with_unit.yaml:7:13: descriptors[0].rate_limit.unit: must not be set when unlimited is true",
        ),
        (
            "zero_unit_multiplier.yaml",
            "peer/zero_unit_multiplier.yaml:9:24: descriptors[0].rate_limit.unit_multiplier: invalid unit multiplier of 0 (the window is unit_multiplier units; at least 1)",
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, want)| {
            // The first mistake of each (quotad lists every one; the
            // peer stops at the first).
            let all = load_error(&[name], false);
            let got = all.lines().next().unwrap_or_default();
            (got != *want).then(|| format!("{name}\n  got:  {all}\n  want: {want}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_domain_in_two_files_needs_merge_domains_and_no_descriptor_twice() {
    // MERGE_DOMAIN_CONFIG off: the second file's domain is a duplicate.
    assert_eq!(
        load_error(&["merge_domain_key1.yaml", "merge_domain_key2.yaml"], false),
        "peer/merge_domain_key2.yaml:3:9: domain: domain 'test-domain' is already defined in peer/merge_domain_key1.yaml (set envoy.merge_domains: true to merge files of one domain)"
    );
    // On: the same file twice defines key1=value1 twice.
    assert_eq!(
        load_error(&["merge_domain_key1.yaml", "merge_domain_key1.yaml"], true),
        "peer/merge_domain_key1.yaml:6:10: descriptors[0].key: duplicate descriptor: key 'key1' with this value is already defined at this level (in peer/merge_domain_key1.yaml)"
    );
    // On, distinct descriptors: one domain.
    let paths = [
        fixture("merge_domain_key1.yaml"),
        fixture("merge_domain_key2.yaml"),
    ];
    let opts = RlsOptions {
        merge_domains: true,
        ..RlsOptions::default()
    };
    let d = load(&paths, opts, &[]).expect("merged");
    assert_eq!(d.get("test-domain").expect("the domain").root.rules(), 2);
}

#[test]
fn share_threshold_on_a_value_without_a_star_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::support::write_file(
        dir.path(),
        "share.yaml",
        "domain: d\ndescriptors:\n  - key: files\n    value: files/a.pdf\n    share_threshold: true\n    rate_limit: { unit: minute, requests_per_unit: 1 }\n",
    );
    let err = load(&[file], RlsOptions::default(), &[])
        .expect_err("share_threshold needs a wildcard")
        .to_string()
        .replace(&dir.path().display().to_string(), "dir");
    assert_eq!(
        err,
        "dir/share.yaml:5:22: descriptors[0].share_threshold: applies only to a wildcard value (one with '*'), but this descriptor's value is 'files/a.pdf'"
    );
}

#[test]
fn the_daemon_config_refuses_an_invalid_rls_file() {
    let text = config(&[fixture("replaces_self.yaml")], &[]);
    let err = Config::from_yaml(&text, "quotad.yaml")
        .expect_err("an invalid rls file")
        .to_string()
        .replace(&peer_dir().display().to_string(), "peer");
    assert_eq!(
        err,
        "peer/replaces_self.yaml:11:21: descriptors[0].descriptors[0].rate_limit.replaces[0].name: a limit cannot replace itself ('self')"
    );
}
