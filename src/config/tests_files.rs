//! Tests of whole files: every mistake of a file reported, each on its
//! line (and where reading stops), and a file without plans serving the
//! Envoy domains of its limits files.

use super::Config;
use super::tests::error;

#[test]
fn every_mistake_in_a_file_is_reported_each_on_its_line() {
    // Type mistakes in three plans' limits, a misspelt section, a bad
    // value in a section, and a key naming a plan that does not exist:
    // reading goes past each, in the order of the file.
    let text = "\
default_plan: free
plans:
  free:
    limits:
      - { name: a, rate: 10, per: fortnight }
      - { name: b, rate: 10, per: second, brust: 5 }
  gold:
    limits:
      - { name: c, rate: -1, per: second }
servers:
  grpc_addr: 127.0.0.1:1
requests:
  max_batch: lots
";
    let all = error(text);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(
        lines,
        [
            "t.yaml:5:35: plans.free.limits[0].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)",
            "t.yaml:6:43: plans.free.limits[1]: unknown field 'brust' (did you mean 'burst'?)",
            "t.yaml:9:26: plans.gold.limits[0].rate: must be at least 1 (got -1)",
            "t.yaml:10:1: unknown field 'servers' (did you mean 'server'?)",
            "t.yaml:13:14: requests.max_batch: expected a positive integer (got 'lots')",
        ],
        "{all}"
    );

    // Validation: each section's issue, and each key's.
    let text = "\
default_plan: free
plans:
  free: { limits: [ { name: a, rate: 10, quota: 5, per: second } ] }
  free: {}
server:
  max_message_bytes: 100
keys:
  k1: { plan: silver }
  k2: { plan: bronze }
";
    let all = error(text);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 5, "{all}");
    assert!(
        lines[0].starts_with("t.yaml:6:22: server.max_message_bytes:"),
        "{all}"
    );
    assert!(lines[1].starts_with("t.yaml:3:"), "rate and quota: {all}");
    assert!(
        lines[2].starts_with("t.yaml:4:3: plans.free: plan 'free' is defined twice"),
        "{all}"
    );
    assert!(
        lines[3].starts_with("t.yaml:8:15: keys.<key>.plan: unknown plan 'silver'"),
        "{all}"
    );
    assert!(
        lines[4].starts_with("t.yaml:9:15: keys.<key>.plan: unknown plan 'bronze'"),
        "{all}"
    );
}

#[test]
fn reading_stops_at_the_cap_and_says_so() {
    use crate::yaml::recover::MAX_REPORTED;
    let mut text = String::from("default_plan: free\nplans:\n  free:\n    limits:\n");
    for i in 0..MAX_REPORTED + 5 {
        text.push_str(&format!(
            "      - {{ name: l{i}, rate: 1, per: fortnight }}\n"
        ));
    }
    let all = error(&text);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), MAX_REPORTED + 1, "{all}");
    assert_eq!(
        lines[MAX_REPORTED],
        format!("(stopped after {MAX_REPORTED} errors; fix these and check again)")
    );
    assert!(
        lines[..MAX_REPORTED]
            .iter()
            .all(|l| l.contains("unknown unit")),
        "{all}"
    );
    // Each is its own limit, in order.
    assert!(
        lines[MAX_REPORTED - 1].contains(&format!("limits[{}]", MAX_REPORTED - 1)),
        "{all}"
    );
}

#[test]
fn a_config_without_plans_serves_the_envoy_domains_of_its_limits_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = dir.path().join("shop.yaml");
    std::fs::write(
        &limits,
        "domain: shop\ndescriptors:\n  - key: path\n    rate_limit: { unit: second, requests_per_unit: 5 }\n",
    )
    .expect("limits file");

    // From rls_files: no plans, no plan domains, keys blocked.
    let config = dir.path().join("quotad.yaml");
    std::fs::write(&config, "rls_files: [shop.yaml]\n").expect("config");
    let c = Config::load(&config).expect("a config without plans, with a limits file");
    assert!(c.live.limits.is_planless());
    assert!(
        c.live.envoy.domains.is_empty(),
        "the default plan domain is dropped"
    );
    assert!(c.live.rls.get("shop").is_some());
    assert!(c.summary().contains("plans: none"), "{}", c.summary());
    let table = c
        .live
        .limits
        .table(&crate::core::hash::KeyHasher::with_secret([7; 16]))
        .expect("a planless table");
    assert!(table.is_planless() && table.plans().is_empty());
    assert!(matches!(
        table.configured(42).0,
        crate::limits::Assigned::Blocked { until: None }
    ));
    assert_eq!(table.plan_id(crate::limits::NO_PLANS), None);

    // From --limits alone (the file names none).
    std::fs::write(&config, "server: { grpc_addr: 127.0.0.1:0 }\n").expect("config");
    let e = Config::load(&config).expect_err("nothing to serve");
    assert!(
        e.to_string()
            .contains("no plans defined, and no limits files"),
        "{e}"
    );
    let c = Config::load_with(&config, None, std::slice::from_ref(&limits))
        .expect("limits from --limits");
    assert!(c.live.limits.is_planless() && c.live.rls.get("shop").is_some());
    // A --limits file that cannot be read is named as itself.
    let missing = dir.path().join("missing.yaml");
    let e = Config::load_with(&config, None, std::slice::from_ref(&missing))
        .expect_err("missing --limits file")
        .to_string();
    assert!(
        e.contains("missing.yaml") && !e.contains("rls_files["),
        "{e}"
    );

    // Plan domains need plans.
    std::fs::write(
        &config,
        "rls_files: [shop.yaml]\nenvoy: { domains: [edge] }\n",
    )
    .expect("config");
    let e = Config::load(&config)
        .expect_err("plan domains without plans")
        .to_string();
    assert!(
        e.ends_with("envoy.domains: plan domains answer from plans, and this file defines none: add plans, or remove envoy.domains (the limits files' domains are served without it)"),
        "{e}"
    );
}

#[test]
fn a_file_beyond_the_node_budget_is_one_error_not_one_per_pass() {
    // More nodes than the budget, in a list of valid values: a reading
    // limit ends the reading (a pass per item would repeat it 20 times).
    // About 6 s in a debug build on an idle core: the budget is what it
    // is in production.
    let mut text = String::from("envoy:\n  domains: [");
    text.push_str(&"a,".repeat(crate::yaml::MAX_NODES));
    text.push_str("a]\n");
    let all = error(&text);
    assert_eq!(all.lines().count(), 1, "{}", &all[..all.len().min(2000)]);
    assert!(all.contains("the file is too big to read"), "{all}");
}

#[test]
fn aliases_beyond_their_limits_are_one_error() {
    // Eight anchors, each ten of the one before: 10^7 events if replayed,
    // past the reader's limits. Read as a limit's rate, inside a plan
    // inside `plans`: one error, not one per level skipped.
    let mut text = String::from("defs:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let prev = format!("*a{}", i - 1);
        text.push_str(&format!("  - &a{i} [{}]\n", [prev.as_str(); 10].join(", ")));
    }
    text.push_str("default_plan: free\nplans:\n  free:\n    limits:\n      - { name: a, rate: *a7, per: second }\n");
    let all = error(&text);
    let limits = all.lines().filter(|l| l.contains("reading limit")).count();
    assert_eq!(limits, 1, "{all}");
    assert!(all.lines().count() <= 2, "`defs` is no section: {all}");
}
