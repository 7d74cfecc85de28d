//! `config_test.go`'s expectations of its fixtures, asked over gRPC: what
//! each descriptor resolves to (limit, name, unlimited, none), which
//! counter it spends, and its stats key, read back as the `descriptor`
//! label of `quotad_rls_descriptor_hits_total`.

use super::*;

const D: &str = "test-domain";

/// Asks `entries` once each; every one must be answered OK with no limit.
async fn no_limits(c: &mut Client, domain: &str, cases: &[&[(&str, &str)]]) {
    for entries in cases {
        let r = one(c, domain, entries).await;
        assert_eq!(overall(&r), Code::Ok, "{domain} {entries:?}");
        assert_eq!(r.statuses, vec![no_limit()], "{domain} {entries:?}");
    }
}

/// A descriptor's entries, and its expected limit, remaining and seconds
/// to the reset.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a RateLimit, u32, i64);

/// Asks `entries` once each: OK under `limit` with `remaining` left and
/// `reset` seconds to go.
async fn limited(c: &mut Client, cases: &[Case<'_>]) {
    for (entries, limit, remaining, reset) in cases {
        let r = one(c, D, entries).await;
        assert_eq!(overall(&r), Code::Ok, "{entries:?}");
        assert_eq!(
            r.statuses,
            vec![st(Code::Ok, limit, *remaining, *reset)],
            "{entries:?}"
        );
    }
}

#[tokio::test]
async fn basic_config_resolves_every_descriptor_as_test_basic_config() {
    let (d, mut c) = daemon(&["basic_config.yaml"], &[]).await;
    // Not configured: an unknown domain, an empty descriptor, values and
    // depths without a rule, and the whitelisted key2=value3.
    no_limits(&mut c, "foo_domain", &[&[("key1", "value1")]]).await;
    no_limits(
        &mut c,
        D,
        &[
            &[],
            &[("key1", "something")],
            &[("key1", "value1")],
            &[("key2", "value2"), ("subkey", "subvalue")],
            &[("key5", "value5"), ("subkey5", "subvalue")],
            &[("key2", "value3")],
        ],
    )
    .await;
    let seventy = rl("", 70, Unit::Minute);
    limited(
        &mut c,
        &[
            (
                &[("key1", "value1"), ("subkey1", "something")],
                &rl("", 5, Unit::Second),
                4,
                1,
            ),
            (
                &[("key1", "value1"), ("subkey1", "subvalue1")],
                &rl("", 10, Unit::Second),
                9,
                1,
            ),
            (&[("key2", "something")], &rl("", 20, Unit::Minute), 19, 60),
            (&[("key2", "value2")], &rl("", 30, Unit::Minute), 29, 60),
            (&[("key3", "foo")], &rl("", 1, Unit::Hour), 0, 3_600),
            (
                &[("key4", "foo")],
                &rl("key4_rate_limit", 1, Unit::Day),
                0,
                HALF_DAY,
            ),
            (&[("key5", "value5")], &rl("", 15, Unit::Day), 14, HALF_DAY),
            (
                &[("key5", "value5"), ("subkey5", "subvalue5")],
                &rl("", 25, Unit::Day),
                24,
                HALF_DAY,
            ),
            (&[("key7", "unspecified_value")], &seventy, 69, 60),
            (&[("key7", "another_value")], &seventy, 69, 60),
        ],
    )
    .await;
    // key6 is unlimited: no limit, all remaining.
    let r = one(&mut c, D, &[("key6", "foo")]).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses, vec![unlimited()]);

    // The stats keys: config order and `key_value` as written; key7's
    // detailed_metric puts the request's value in; the unlimited key6 and
    // unmatched descriptors count nothing.
    let m = Scrape::of(&d).await;
    assert_eq!(
        m.names(D),
        sorted(&[
            "key1_value1.subkey1",
            "key1_value1.subkey1_subvalue1",
            "key2",
            "key2_value2",
            "key3",
            "key4",
            "key5_value5",
            "key5_value5.subkey5_subvalue5",
            "key7_another_value",
            "key7_unspecified_value",
        ])
    );
    assert!(m.names("foo_domain").is_empty());
    for name in ["key1_value1.subkey1", "key2", "key7_unspecified_value"] {
        assert_eq!(m.stats(D, name), Stats::within(1), "{name}");
    }
    // A limit of 1: the one hit is past floor(1 × 0.8) = 0, so near.
    for name in ["key3", "key4"] {
        let near = Stats {
            near_limit: 1,
            ..Stats::within(1)
        };
        assert_eq!(m.stats(D, name), near, "{name}");
    }
}

#[tokio::test]
async fn basic_config_counts_a_default_key_per_value_and_overrides_per_descriptor() {
    let (d, mut c) = daemon(&["basic_config.yaml"], &[]).await;
    let five = rl("", 5, Unit::Second);
    let sub = |v| [("key1", "value1"), ("subkey1", v)];
    // The default `subkey1` limit counts each value on its own.
    for remaining in (0..5).rev() {
        let r = one(&mut c, D, &sub("a")).await;
        assert_eq!(r.statuses, vec![st(Code::Ok, &five, remaining, 1)]);
    }
    let r = one(&mut c, D, &sub("a")).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &five, 0, 1)]);
    let r = one(&mut c, D, &sub("b")).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &five, 4, 1)]);

    // TestConfigLimitOverride: a request's limit replaces the config's,
    // named by every `key_value`, shared by any override of the
    // descriptor (10/DAY and 42/HOUR count on one series).
    let entries = [("key1", "value1"), ("subkey1", "something")];
    let r = ask(
        &mut c,
        request(D, vec![with_limit(&entries, 10, Unit::Day as i32)], 1),
    )
    .await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 10, Unit::Day), 9, HALF_DAY)]
    );
    let r = ask(
        &mut c,
        request(D, vec![with_limit(&entries, 42, Unit::Hour as i32)], 1),
    )
    .await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 42, Unit::Hour), 41, 3_600)]
    );
    // An unknown domain ignores an override too.
    let r = ask(
        &mut c,
        request(
            "foo_domain",
            vec![with_limit(&entries, 10, Unit::Day as i32)],
            1,
        ),
    )
    .await;
    assert_eq!(r.statuses, vec![no_limit()]);

    let m = Scrape::of(&d).await;
    assert_eq!(
        m.stats(D, "key1_value1.subkey1_something"),
        Stats::within(2)
    );
    // The default limit's series: 6 + 1 hits, 1 over; of the first 5,
    // the 5th is past floor(5 × 0.8) = 4.
    assert_eq!(
        m.stats(D, "key1_value1.subkey1"),
        Stats {
            total_hits: 7,
            over_limit: 1,
            near_limit: 1,
            within_limit: 6,
            shadow_mode: 0,
        }
    );
}

#[tokio::test]
async fn shadowmode_config_answers_ok_over_the_limit_only_for_shadow_rules() {
    let (d, mut c) = daemon(&["shadowmode_config.yaml"], &[]).await;
    let five = rl("", 5, Unit::Second);
    let ten = rl("", 10, Unit::Second);
    let twenty = rl("", 20, Unit::Minute);
    let thirty = rl("", 30, Unit::Minute);
    let plain = [("key1", "value1"), ("subkey1", "x")];
    let shadow = [("key1", "value1"), ("subkey1", "subvalue1")];

    // subkey1 default: 5/s, not shadow: over is over.
    let r = ask(&mut c, request(D, vec![with_hits(&plain, 5)], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &five, 0, 1)]);
    let r = one(&mut c, D, &plain).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &five, 0, 1)]);

    // subkey1=subvalue1: 10/s in shadow mode: OK with nothing left.
    let r = ask(&mut c, request(D, vec![with_hits(&shadow, 10)], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &ten, 0, 1)]);
    for _ in 0..2 {
        let r = one(&mut c, D, &shadow).await;
        assert_eq!(overall(&r), Code::Ok);
        assert_eq!(r.statuses, vec![st(Code::Ok, &ten, 0, 1)]);
    }

    // key2 (any value) is shadow; key2=value2 is not.
    let r = ask(&mut c, request(D, vec![with_hits(&[("key2", "k")], 20)], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &twenty, 0, 60)]);
    let r = one(&mut c, D, &[("key2", "k")]).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses, vec![st(Code::Ok, &twenty, 0, 60)]);
    let r = ask(
        &mut c,
        request(D, vec![with_hits(&[("key2", "value2")], 30)], 1),
    )
    .await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &thirty, 0, 60)]);
    let r = one(&mut c, D, &[("key2", "value2")]).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &thirty, 0, 60)]);

    // The shadow_mode stat counts only shadow rules' hits over the limit.
    let m = Scrape::of(&d).await;
    assert_eq!(m.stats(D, "key1_value1.subkey1").shadow_mode, 0);
    assert_eq!(m.stats(D, "key1_value1.subkey1").over_limit, 1);
    assert_eq!(
        m.stats(D, "key1_value1.subkey1_subvalue1"),
        Stats {
            total_hits: 12,
            over_limit: 2,
            near_limit: 2,
            within_limit: 10,
            shadow_mode: 2,
        }
    );
    // 20 hits at once on 20 (20 − 16 of them near), then one over and
    // shadowed.
    assert_eq!(
        m.stats(D, "key2"),
        Stats {
            total_hits: 21,
            over_limit: 1,
            near_limit: 4,
            within_limit: 20,
            shadow_mode: 1,
        }
    );
    assert_eq!(m.stats(D, "key2_value2").shadow_mode, 0);
}

#[tokio::test]
async fn wildcard_matches_prefix_middle_and_multiple_stars_each_value_counting_alone() {
    let (d, mut c) = daemon(&["wildcard.yaml"], &[]).await;
    let twenty = rl("", 20, Unit::Minute);
    let ten = rl("", 10, Unit::Minute);
    limited(
        &mut c,
        &[
            (&[("noVal", "foo1")], &twenty, 19, 60),
            (&[("noVal", "foo2")], &twenty, 19, 60),
            (&[("wild", "foo1")], &twenty, 19, 60),
            (&[("wild", "foo2")], &twenty, 19, 60),
            (&[("wild", "foo")], &twenty, 19, 60),
            (&[("wild", "foo1")], &twenty, 18, 60),
            (&[("nestedWild", "val1"), ("wild", "goo2")], &twenty, 19, 60),
            (&[("midWild", "barab")], &twenty, 19, 60),
            (&[("midWild", "bar123b")], &twenty, 19, 60),
            (&[("midWild", "barb")], &twenty, 19, 60),
            (&[("multiWild", "foo123bar456baz")], &ten, 9, 60),
            (&[("multiWild", "foobarbaz")], &ten, 9, 60),
        ],
    )
    .await;
    no_limits(
        &mut c,
        D,
        &[
            &[("wild", "bar")],
            &[("noWild", "foo1")],
            &[("midWild", "bara")],
            &[("midWild", "xbarb")],
            &[("multiWild", "foo123baz")],
            &[("multiWild", "bar456baz")],
            &[("nestedWild", "val1"), ("wild", "foo1")],
        ],
    )
    .await;
    // Stats keys name the pattern, not the value (no value_to_metric).
    let m = Scrape::of(&d).await;
    assert_eq!(
        m.names(D),
        sorted(&[
            "midWild_bar*b",
            "multiWild_foo*bar*baz",
            "nestedWild_val1.wild_goo*",
            "noVal",
            "wild_foo*",
        ])
    );
    assert_eq!(m.stats(D, "wild_foo*"), Stats::within(4));
    assert_eq!(m.stats(D, "noVal"), Stats::within(2));
    assert_eq!(m.stats(D, "midWild_bar*b"), Stats::within(3));
    assert_eq!(m.stats(D, "multiWild_foo*bar*baz"), Stats::within(2));
}

#[tokio::test]
async fn share_threshold_values_of_a_shared_wildcard_spend_one_counter() {
    let (d, mut c) = daemon(&["share_threshold.yaml"], &[]).await;
    let lim = |n| rl("", n, Unit::Minute);
    let (l100, l200, l300, l60, l80, l120, l150, l50) = (
        lim(100),
        lim(200),
        lim(300),
        lim(60),
        lim(80),
        lim(120),
        lim(150),
        lim(50),
    );
    limited(
        &mut c,
        &[
            // files/*: every file shares the 100.
            (&[("files", "files/a.pdf")], &l100, 99, 60),
            (&[("files", "files/b.csv")], &l100, 98, 60),
            (&[("files", "files/a.pdf")], &l100, 97, 60),
            // Nested under a fixed parent.
            (
                &[("nested", "parent"), ("files", "nested/x")],
                &l200,
                199,
                60,
            ),
            (
                &[("nested", "parent"), ("files", "nested/y")],
                &l200,
                198,
                60,
            ),
            // The same key shared at two levels.
            (&[("files", "top/a"), ("files", "nested/b")], &l300, 299, 60),
            (&[("files", "top/c"), ("files", "nested/d")], &l300, 298, 60),
            // A shared parent over a default key: the child's value still
            // has its own counter.
            (&[("route", "api/v1"), ("method", "GET")], &l60, 59, 60),
            (&[("route", "api/v2"), ("method", "GET")], &l60, 58, 60),
            (&[("route", "api/v2"), ("method", "POST")], &l60, 59, 60),
            (&[("service", "svc/a"), ("endpoint", "get")], &l80, 79, 60),
            (&[("service", "svc/b"), ("endpoint", "get")], &l80, 78, 60),
            // path/* shared, file/* not.
            (
                &[("path", "path/a"), ("file", "file/x"), ("type", "t")],
                &l120,
                119,
                60,
            ),
            (
                &[("path", "path/b"), ("file", "file/x"), ("type", "t")],
                &l120,
                118,
                60,
            ),
            (
                &[("path", "path/a"), ("file", "file/y"), ("type", "t")],
                &l120,
                119,
                60,
            ),
            // Two shared levels.
            (
                &[
                    ("user", "user/a"),
                    ("resource", "res/x"),
                    ("action", "read"),
                ],
                &l150,
                149,
                60,
            ),
            (
                &[
                    ("user", "user/b"),
                    ("resource", "res/y"),
                    ("action", "read"),
                ],
                &l150,
                148,
                60,
            ),
            // Middle and multiple stars.
            (&[("midpath", "/api/v1")], &l100, 99, 60),
            (&[("midpath", "/apiXv1")], &l100, 98, 60),
            (&[("multiroute", "svcAepBrpc")], &l50, 49, 60),
            (&[("multiroute", "svc1ep2rpc")], &l50, 48, 60),
            (&[("midroute", "/api/v2")], &l80, 79, 60),
            (&[("midroute", "/apiZZv2")], &l80, 78, 60),
            (
                &[("tenant", "t1prod"), ("resource", "resAv2")],
                &l60,
                59,
                60,
            ),
            (
                &[("tenant", "t2prod"), ("resource", "resBv2")],
                &l60,
                58,
                60,
            ),
        ],
    )
    .await;
    // Middle wildcards that do not match give no limit.
    no_limits(
        &mut c,
        D,
        &[
            &[("midpath", "/api/v2")],
            &[("multiroute", "svcABCrpc")],
            &[("tenant", "t1dev"), ("resource", "resAv2")],
        ],
    )
    .await;

    // Stats keys: a shared level by its pattern (over value_to_metric and
    // detailed_metric for that level); the detailed leaf by its value.
    let m = Scrape::of(&d).await;
    let want: [(&str, u64); 11] = [
        ("files_files/*", 3),
        ("nested_parent.files_nested/*", 2),
        ("files_top/*.files_nested/*", 2),
        ("route_api/*.method", 3),
        ("service_svc/*.endpoint_get", 2),
        ("path_path/*.file_file/*.type", 3),
        ("user_user/*.resource_res/*.action", 2),
        ("midpath_/api*v1", 2),
        ("multiroute_svc*ep*rpc", 2),
        ("midroute_/api*v2", 2),
        ("tenant_t*prod.resource_res*v2", 2),
    ];
    let names: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
    assert_eq!(m.names(D), sorted(&names));
    for (name, hits) in want {
        assert_eq!(m.stats(D, name).total_hits, hits, "{name}");
    }
}

#[tokio::test]
async fn share_threshold_an_explicit_value_beats_the_shared_wildcard() {
    let (d, mut c) = daemon(&["share_threshold.yaml"], &[]).await;
    let fifty = rl("", 50, Unit::Minute);
    let hundred = rl("", 100, Unit::Minute);
    limited(
        &mut c,
        &[
            (&[("file", "test1")], &fifty, 49, 60),
            (&[("file", "test2")], &hundred, 99, 60),
            (&[("file", "testX")], &hundred, 98, 60),
            (&[("file", "test1")], &fifty, 48, 60),
            (&[("file", "test")], &hundred, 97, 60),
        ],
    )
    .await;
    no_limits(&mut c, D, &[&[("file", "other")]]).await;
    let m = Scrape::of(&d).await;
    assert_eq!(m.names(D), sorted(&["file_test*", "file_test1"]));
    assert_eq!(m.stats(D, "file_test1"), Stats::within(2));
    assert_eq!(m.stats(D, "file_test*"), Stats::within(3));
}

#[tokio::test]
async fn merge_domain_files_answer_as_one_domain_when_merging() {
    let (_d, mut c) = daemon(
        &["merge_domain_key1.yaml", "merge_domain_key2.yaml"],
        &["merge_domains: true"],
    )
    .await;
    limited(
        &mut c,
        &[
            (&[("key1", "value1")], &rl("", 10, Unit::Minute), 9, 60),
            (&[("key2", "value2")], &rl("", 20, Unit::Minute), 19, 60),
        ],
    )
    .await;
    no_limits(&mut c, D, &[&[("key1", "value2")], &[("key2", "value1")]]).await;
}

#[tokio::test]
async fn unit_multiplier_windows_are_that_many_units_aligned_to_the_epoch() {
    let (d, mut c) = daemon(&["unit_multiplier.yaml"], &[]).await;
    // key1: 20 per 5 minutes, reported as 20 per MINUTE; T0 is a whole
    // 5 minutes, so the window ends 300 s on.
    let twenty = rl("", 20, Unit::Minute);
    let twenty_five = rl("", 25, Unit::Minute);
    let r = one(&mut c, D, &[("key1", "a")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &twenty, 19, 300)]);
    // key2 (no multiplier): one minute.
    let r = one(&mut c, D, &[("key2", "a")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &twenty_five, 24, 60)]);

    // 1 min 1 s later: the minute is new, the 5 minutes are not.
    d.advance_ms(61_000);
    let r = one(&mut c, D, &[("key1", "a")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &twenty, 18, 239)]);
    let r = one(&mut c, D, &[("key2", "a")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &twenty_five, 24, 59)]);
    let r = ask(&mut c, request(D, vec![with_hits(&[("key1", "a")], 18)], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &twenty, 0, 239)]);
    // 3 min 58.5 s in: still over, 61.5 s to go, reported as 62.
    d.advance_ms(177_500);
    let r = one(&mut c, D, &[("key1", "a")]).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &twenty, 0, 62)]);
    // At T0 + 5 min a new window.
    d.advance_ms(61_500);
    let r = one(&mut c, D, &[("key1", "a")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &twenty, 19, 300)]);
}

#[tokio::test]
async fn value_to_metric_and_detailed_metric_put_request_values_in_stats_keys() {
    // The shapes of config_test.go's TestValueToMetric_* and
    // TestDetailedMetric cases (written inline there too).
    let dir = tempfile::tempdir().unwrap();
    let file = crate::support::write_file(
        dir.path(),
        "v2m.yaml",
        "\
domain: v2m
descriptors:
  - key: route
    value_to_metric: true
    descriptors:
      - key: http_method
        value_to_metric: true
        descriptors:
          - key: subject_id
            rate_limit: { unit: minute, requests_per_unit: 60 }
  - key: detailed
    value_to_metric: true
    descriptors:
      - key: subject_id
        detailed_metric: true
        rate_limit: { unit: minute, requests_per_unit: 60 }
  - key: k1
    value_to_metric: true
    descriptors:
      - key: k2
        rate_limit: { unit: minute, requests_per_unit: 60 }
  - key: k3
    descriptors:
      - key: k2
        value_to_metric: true
        descriptors:
          - key: k4
            rate_limit: { unit: minute, requests_per_unit: 60 }
  - key: wild
    value: foo*
    value_to_metric: true
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: wild
    value: goo*
    rate_limit: { unit: minute, requests_per_unit: 20 }
",
    );
    let (d, mut c) = daemon_with(&[file], &[]).await;
    for entries in [
        &[
            ("route", "draw"),
            ("http_method", "GET"),
            ("subject_id", "123"),
        ][..],
        &[("route", ""), ("http_method", "GET"), ("subject_id", "1")],
        &[("detailed", "x"), ("subject_id", "123")],
        &[("k1", "A"), ("k2", "B")],
        &[("k3", "X"), ("k2", "Y"), ("k4", "Z")],
        &[("wild", "foo1")],
        &[("wild", "goo1")],
    ] {
        let r = one(&mut c, "v2m", entries).await;
        assert!(r.statuses[0].current_limit.is_some(), "{entries:?}");
    }
    assert_eq!(
        Scrape::of(&d).await.names("v2m"),
        sorted(&[
            "route_draw.http_method_GET.subject_id",
            "route.http_method_GET.subject_id",
            "detailed_x.subject_id_123",
            "k1_A.k2",
            "k3.k2_Y.k4",
            "wild_foo1",
            "wild_goo*",
        ])
    );
}
