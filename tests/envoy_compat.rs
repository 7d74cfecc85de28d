//! envoyproxy/ratelimit as a drop-in: the README's example config files
//! (tests/fixtures/rls/valid), loaded through `rls_files`, answered over
//! real gRPC with envoyproxy/ratelimit's fixed windows (every hit counted,
//! windows aligned to the unit, whole-second resets), and the RateLimit
//! headers of both front doors.
//!
//! The daemon's clock starts at T0 = 2026-11-27T12:00:00Z, a whole minute,
//! hour and day, so a fresh window of one unit has exactly one unit left
//! and a day window 12 h.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use tonic::transport::Channel;

use crate::support::TestDaemon;
use crate::support::rls::{
    descriptor, headers, hv, no_limit, request, rl, st, st_ns, unlimited, with_hits, with_limit,
};

type Client = RateLimitServiceClient<Channel>;

/// The fixture files these tests load, one domain each.
const FIXTURES: [&str; 11] = [
    "ex1_key_value.yaml",
    "ex2_nested.yaml",
    "ex3_blocklist.yaml",
    "ex4_depth.yaml",
    "ex5_unlimited.yaml",
    "ex6_shadow.yaml",
    "ex7_replaces.yaml",
    "ex9_wildcard.yaml",
    "token_bucket.yaml",
    "replaces_more.yaml",
    "wildcards_anywhere.yaml",
];

/// 12 h: from T0 (noon UTC) to the end of the day window.
const HALF_DAY: i64 = 43_200;

/// A config loading [`FIXTURES`] by absolute path, with a plan domain
/// `edge` (plan `free`: 2 per minute), the given header style and global
/// shadow mode.
fn config(headers: &str, shadow: bool) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rls/valid");
    let files = FIXTURES
        .iter()
        .map(|f| format!("{:?}", format!("{dir}/{f}")))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
default_plan: free
plans:
  free:
    limits:
      - {{ name: per-minute, rate: 2, per: minute }}
envoy:
  domains: [edge]
  shadow: {shadow}
  response_headers: {headers}
rls_files: [{files}]
response_headers: {headers}
"#
    )
}

async fn daemon(headers: &str, shadow: bool) -> (TestDaemon, Client) {
    let d = TestDaemon::with_config(&config(headers, shadow)).await;
    let c = RateLimitServiceClient::new(d.channel().await);
    (d, c)
}

async fn ask(c: &mut Client, r: RateLimitRequest) -> RateLimitResponse {
    c.should_rate_limit(r).await.expect("rls ok").into_inner()
}

/// One request with one descriptor and `hits` as the request's addend.
async fn one(
    c: &mut Client,
    domain: &str,
    entries: &[(&str, &str)],
    hits: u32,
) -> RateLimitResponse {
    ask(c, request(domain, vec![descriptor(entries)], hits)).await
}

/// Sends one descriptor `entries` to `domain` `n` times, each OK with `n - 1`
/// down to 0 left of `limit` and `reset` seconds to go, then once more:
/// OVER_LIMIT with 0 left.
async fn drain(
    c: &mut Client,
    domain: &str,
    entries: &[(&str, &str)],
    limit: &RateLimit,
    n: u32,
    reset: i64,
) {
    for remaining in (0..n).rev() {
        let r = one(c, domain, entries, 1).await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![st(Code::Ok, limit, remaining, reset)]);
    }
    let r = one(c, domain, entries, 1).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, limit, 0, reset)]);
}

fn ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

fn over(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::OverLimit as i32
}

// ---------------------------------------------------------------------------
// The README's examples.

#[tokio::test]
async fn example1_key_value_counts_each_value_down_from_500() {
    let (d, mut c) = daemon("both", false).await;
    let limit = rl("", 500, Unit::Second);
    let users = [("database", "users")];
    for remaining in (495..500).rev() {
        let r = one(&mut c, "mongo_cps", &users, 0).await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![st(Code::Ok, &limit, remaining, 1)]);
    }
    // Another configured value has its own counter.
    let r = one(&mut c, "mongo_cps", &[("database", "default")], 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 499, 1)]);
    // A value (or key) the config does not have: OK, no limit, no headers.
    for entries in [[("database", "orders")], [("table", "users")]] {
        let r = one(&mut c, "mongo_cps", &entries, 1).await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![no_limit()]);
        assert!(r.response_headers_to_add.is_empty());
    }
    // users has counted 5: 495 more reach the limit exactly, one more is over.
    let r = one(&mut c, "mongo_cps", &users, 495).await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 0, 1)]);
    let r = one(&mut c, "mongo_cps", &users, 1).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 1)]);
    // default is untouched by users' hits.
    let r = one(&mut c, "mongo_cps", &[("database", "default")], 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 498, 1)]);
    // The next second is a new window.
    d.advance_ms(1_000);
    let r = one(&mut c, "mongo_cps", &users, 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 499, 1)]);
}

#[tokio::test]
async fn example2_nested_descriptor_and_key_only_count_separately_and_both_are_charged() {
    let (_d, mut c) = daemon("both", false).await;
    let marketing = rl("", 5, Unit::Day);
    let any_number = rl("", 100, Unit::Day);
    let m = |n| descriptor(&[("message_type", "marketing"), ("to_number", n)]);
    let t = |n| descriptor(&[("to_number", n)]);

    // 5 marketing messages a day per number.
    for remaining in (0..5).rev() {
        let r = ask(&mut c, request("messaging", vec![m("2061111111")], 1)).await;
        assert!(ok(&r));
        assert_eq!(
            r.statuses,
            vec![st(Code::Ok, &marketing, remaining, HALF_DAY)]
        );
    }
    let r = ask(&mut c, request("messaging", vec![m("2061111111")], 1)).await;
    assert!(over(&r));
    assert_eq!(
        r.statuses,
        vec![st(Code::OverLimit, &marketing, 0, HALF_DAY)]
    );
    // Another number has its own 5.
    let r = ask(&mut c, request("messaging", vec![m("2062222222")], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &marketing, 4, HALF_DAY)]);
    // The key-only descriptor of the same number: its own 100, untouched.
    let r = ask(&mut c, request("messaging", vec![t("2061111111")], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &any_number, 99, HALF_DAY)]);
    // Another message type does not match the nested rule.
    let r = one(
        &mut c,
        "messaging",
        &[
            ("message_type", "transactional"),
            ("to_number", "2061111111"),
        ],
        1,
    )
    .await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![no_limit()]);

    // Both descriptors in one request, as Envoy sends them.
    let n = "2063333333";
    for i in 1..=5u32 {
        let r = ask(&mut c, request("messaging", vec![m(n), t(n)], 1)).await;
        assert!(ok(&r));
        assert_eq!(
            r.statuses,
            vec![
                st(Code::Ok, &marketing, 5 - i, HALF_DAY),
                st(Code::Ok, &any_number, 100 - i, HALF_DAY),
            ]
        );
    }
    let r = ask(&mut c, request("messaging", vec![m(n), t(n)], 1)).await;
    assert!(over(&r));
    assert_eq!(
        r.statuses,
        vec![
            st(Code::OverLimit, &marketing, 0, HALF_DAY),
            st(Code::Ok, &any_number, 94, HALF_DAY),
        ]
    );
    // The OK descriptor was charged on the over-limit request.
    let r = ask(&mut c, request("messaging", vec![t(n)], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &any_number, 93, HALF_DAY)]);
}

#[tokio::test]
async fn example3_blocklisted_ip_is_always_over_and_others_get_10_per_second() {
    let (d, mut c) = daemon("both", false).await;
    let blocked = rl("", 0, Unit::Second);
    let per_ip = rl("", 10, Unit::Second);
    let ip = |a| [("remote_address", a)];

    for _ in 0..3 {
        let r = one(&mut c, "edge_proxy_per_ip", &ip("50.0.0.5"), 1).await;
        assert!(over(&r));
        assert_eq!(r.statuses, vec![st(Code::OverLimit, &blocked, 0, 1)]);
        // Waiting never helps a limit of 0: no Retry-After.
        assert!(
            !headers(&r).iter().any(|(k, _)| k == "Retry-After"),
            "{:?}",
            headers(&r)
        );
    }
    drain(&mut c, "edge_proxy_per_ip", &ip("10.0.0.1"), &per_ip, 10, 1).await;
    // Each address counts on its own.
    let r = one(&mut c, "edge_proxy_per_ip", &ip("10.0.0.2"), 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &per_ip, 9, 1)]);

    // 300 ms into the second: still over, 0.7 s left, reported as 1 s.
    d.advance_ms(300);
    let r = one(&mut c, "edge_proxy_per_ip", &ip("10.0.0.1"), 1).await;
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &per_ip, 0, 1)]);
    let r = one(&mut c, "edge_proxy_per_ip", &ip("10.0.0.2"), 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &per_ip, 8, 1)]);

    // The next second resets the window; the blocklist stays.
    d.advance_ms(700);
    let r = one(&mut c, "edge_proxy_per_ip", &ip("10.0.0.1"), 1).await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![st(Code::Ok, &per_ip, 9, 1)]);
    let r = one(&mut c, "edge_proxy_per_ip", &ip("50.0.0.5"), 1).await;
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &blocked, 0, 1)]);
}

#[tokio::test]
async fn example4_a_rule_applies_only_at_its_own_depth() {
    let (_d, mut c) = daemon("both", false).await;
    let limit = rl("", 300, Unit::Second);
    // Deeper than the `key=value` rule: no limit.
    let r = one(
        &mut c,
        "example4",
        &[("key", "value"), ("subkey", "subvalue")],
        1,
    )
    .await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![no_limit()]);
    // At its depth it applies.
    let r = one(&mut c, "example4", &[("key", "value")], 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 299, 1)]);
    // `other=value` has no rule of its own, only a nested one.
    let r = one(&mut c, "example4", &[("other", "value")], 1).await;
    assert_eq!(r.statuses, vec![no_limit()]);
    let nested = [("other", "value"), ("subkey", "subvalue")];
    let r = one(&mut c, "example4", &nested, 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 299, 1)]);
    let r = one(&mut c, "example4", &nested, 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 298, 1)]);
    let r = one(
        &mut c,
        "example4",
        &[("other", "value"), ("subkey", "subvalue"), ("x", "y")],
        1,
    )
    .await;
    assert_eq!(r.statuses, vec![no_limit()]);
}

#[tokio::test]
async fn example5_unlimited_answers_max_remaining_without_a_limit() {
    let (d, mut c) = daemon("both", false).await;
    let azure = rl("", 100, Unit::Minute);
    for _ in 0..3 {
        let r = one(&mut c, "internal", &[("ldap", "cn=admin")], 1000).await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![unlimited()]);
        assert_eq!(r.statuses[0].limit_remaining, 4_294_967_295);
        assert!(r.response_headers_to_add.is_empty());
    }
    let r = one(&mut c, "internal", &[("azure", "tenant-1")], 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &azure, 99, 60)]);
    let r = ask(
        &mut c,
        request(
            "internal",
            vec![
                descriptor(&[("ldap", "x")]),
                descriptor(&[("azure", "tenant-1")]),
            ],
            1,
        ),
    )
    .await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![unlimited(), st(Code::Ok, &azure, 98, 60)]);
    // 29.5 s left in the minute: 30 s.
    d.advance_ms(30_500);
    let r = one(&mut c, "internal", &[("azure", "tenant-1")], 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &azure, 97, 30)]);
}

#[tokio::test]
async fn example6_shadow_mode_counts_and_reports_but_answers_ok() {
    let (_d, mut c) = daemon("both", false).await;
    let a_limit = rl("", 10, Unit::Second);
    let b_limit = rl("", 20, Unit::Second);
    let a = [("service", "checkout"), ("user", "user-a")];
    let b = [("service", "checkout"), ("user", "user-b")];
    for remaining in (0..10).rev() {
        let r = one(&mut c, "example6", &a, 1).await;
        assert_eq!(r.statuses, vec![st(Code::Ok, &a_limit, remaining, 1)]);
    }
    for _ in 0..2 {
        let r = one(&mut c, "example6", &a, 1).await;
        assert!(ok(&r), "shadow mode answers OK");
        assert_eq!(r.statuses, vec![st(Code::Ok, &a_limit, 0, 1)]);
        assert!(!headers(&r).iter().any(|(k, _)| k == "Retry-After"));
    }
    drain(&mut c, "example6", &b, &b_limit, 20, 1).await;
}

#[tokio::test]
async fn example7_a_replaced_limit_is_dropped_and_its_counter_untouched() {
    let (_d, mut c) = daemon("both", false).await;
    let specific = rl("specific_limit", 5, Unit::Second);
    let general = rl("", 10, Unit::Second);
    let d1 = [("key_1", "value_1"), ("user", "bkthomps")];
    let d2 = [("key_2", "value_2"), ("user", "bkthomps")];
    let both = || request("example7", vec![descriptor(&d1), descriptor(&d2)], 1);
    for remaining in (0..10).rev() {
        let r = ask(&mut c, both()).await;
        assert!(ok(&r));
        assert_eq!(
            r.statuses,
            vec![no_limit(), st(Code::Ok, &general, remaining, 1)]
        );
    }
    let r = ask(&mut c, both()).await;
    assert!(over(&r));
    assert_eq!(
        r.statuses,
        vec![no_limit(), st(Code::OverLimit, &general, 0, 1)]
    );
    // The replaced limit counted none of the 11: alone it still has all 5.
    drain(&mut c, "example7", &d1, &specific, 5, 1).await;
}

#[tokio::test]
async fn example9_wildcard_value_counts_each_matching_value_separately() {
    let (_d, mut c) = daemon("both", false).await;
    let limit = rl("", 20, Unit::Minute);
    for remaining in (0..20).rev() {
        let r = one(&mut c, "example9", &[("key1", "value1")], 1).await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![st(Code::Ok, &limit, remaining, 60)]);
    }
    let r = one(&mut c, "example9", &[("key1", "value1")], 1).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 60)]);
    // value2 and the bare prefix match too, each with its own counter.
    for v in ["value2", "value"] {
        let r = one(&mut c, "example9", &[("key1", v)], 1).await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 19, 60)]);
    }
    // Not the prefix: no limit.
    for v in ["valu", "other", "Value1"] {
        let r = one(&mut c, "example9", &[("key1", v)], 1).await;
        assert_eq!(r.statuses, vec![no_limit()], "{v}");
    }
}

#[tokio::test]
async fn a_star_anywhere_in_a_value_matches_zero_or_more_characters() {
    let (_d, mut c) = daemon("off", false).await;
    let action = rl("", 2, Unit::Minute);
    // `/api/*/action`: any middle segment, each value its own counter.
    for v in ["/api/v1/action", "/api/v2/users/action", "/api//action"] {
        for remaining in [1, 0] {
            let r = one(&mut c, "wildcards", &[("path", v)], 1).await;
            assert_eq!(
                r.statuses,
                vec![st(Code::Ok, &action, remaining, 60)],
                "{v}"
            );
        }
        let r = one(&mut c, "wildcards", &[("path", v)], 1).await;
        assert!(over(&r), "{v}: a third hit in the minute is over");
    }
    // Several `*`s: the literal runs in order, anything between them.
    let three = rl("", 1, Unit::Minute);
    for v in ["foobarbaz", "fooXbarYYbaz", "foo-bar-bar-baz"] {
        let r = one(&mut c, "wildcards", &[("path", v)], 1).await;
        assert_eq!(r.statuses, vec![st(Code::Ok, &three, 0, 60)], "{v}");
        assert!(
            over(&one(&mut c, "wildcards", &[("path", v)], 1).await),
            "{v}"
        );
    }
    // A leading `*`.
    let png = rl("", 3, Unit::Minute);
    let r = one(&mut c, "wildcards", &[("path", "/img/logo.png")], 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &png, 2, 60)]);
    // Values the patterns do not cover have no limit.
    for v in [
        "/api/v1/actions",
        "/apix/action",
        "foobaz",
        "foobarbazz",
        "logo.png.txt",
    ] {
        let r = one(&mut c, "wildcards", &[("path", v)], 1).await;
        assert_eq!(r.statuses, vec![no_limit()], "{v}");
    }
}

#[tokio::test]
async fn a_descriptor_without_entries_is_ok_with_no_limit_in_a_files_domain() {
    let (_d, mut c) = daemon("off", false).await;
    let limit = rl("", 500, Unit::Second);
    let both = vec![descriptor(&[]), descriptor(&[("database", "users")])];
    let r = ask(&mut c, request("mongo_cps", both, 1)).await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![no_limit(), st(Code::Ok, &limit, 499, 1)]);
}

// ---------------------------------------------------------------------------
// Request fields: limit overrides and hits_addend.

#[tokio::test]
async fn limit_override_replaces_the_config_and_applies_where_nothing_matches() {
    let (_d, mut c) = daemon("both", false).await;
    let users = [("database", "users")];
    let default = [("database", "default")];
    let minute = Unit::Minute as i32;
    let second = Unit::Second as i32;
    let three_a_minute = rl("", 3, Unit::Minute);
    for remaining in (0..3).rev() {
        let r = ask(
            &mut c,
            request("mongo_cps", vec![with_limit(&users, 3, minute)], 1),
        )
        .await;
        assert!(ok(&r));
        assert_eq!(
            r.statuses,
            vec![st(Code::Ok, &three_a_minute, remaining, 60)]
        );
    }
    let r = ask(
        &mut c,
        request("mongo_cps", vec![with_limit(&users, 3, minute)], 1),
    )
    .await;
    assert!(over(&r));
    assert_eq!(
        r.statuses,
        vec![st(Code::OverLimit, &three_a_minute, 0, 60)]
    );
    // Without the override the config's 500/second counter is its own.
    let r = one(&mut c, "mongo_cps", &users, 1).await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 500, Unit::Second), 499, 1)]
    );
    // With the same unit, the override limits the descriptor's one counter
    // (envoyproxy's cache key is the descriptor and the window).
    let r = one(&mut c, "mongo_cps", &default, 2).await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 500, Unit::Second), 498, 1)]
    );
    let r = ask(
        &mut c,
        request("mongo_cps", vec![with_limit(&default, 5, second)], 1),
    )
    .await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 5, Unit::Second), 2, 1)]
    );

    // A descriptor the config does not match.
    let orders = [("database", "orders")];
    let one_an_hour = rl("", 1, Unit::Hour);
    let hour = Unit::Hour as i32;
    let r = ask(
        &mut c,
        request("mongo_cps", vec![with_limit(&orders, 1, hour)], 1),
    )
    .await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &one_an_hour, 0, 3_600)]);
    let r = ask(
        &mut c,
        request("mongo_cps", vec![with_limit(&orders, 1, hour)], 1),
    )
    .await;
    assert!(over(&r));
    assert_eq!(
        r.statuses,
        vec![st(Code::OverLimit, &one_an_hour, 0, 3_600)]
    );

    // In the plan domain: a descriptor without the key entry...
    let path = [("path", "/x")];
    let two = rl("", 2, Unit::Second);
    let r = ask(
        &mut c,
        request("edge", vec![with_limit(&path, 2, second)], 1),
    )
    .await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &two, 1, 1)]);
    // ...and one with it: the override replaces the plan and leaves the
    // plan's bucket alone.
    let key = [("api_key", "k-override")];
    let r = ask(
        &mut c,
        request("edge", vec![with_limit(&key, 2, second)], 1),
    )
    .await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &two, 1, 1)]);
    let r = one(&mut c, "edge", &key, 1).await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("free/per-minute", 2, Unit::Minute), 1, 30)]
    );

    // An unknown unit is refused, naming the descriptor; nothing is charged.
    for (domain, entries) in [("mongo_cps", default), ("edge", [("path", "/y")])] {
        for unit in [0, 99] {
            let status = c
                .should_rate_limit(request(
                    domain,
                    vec![descriptor(&entries), with_limit(&entries, 5, unit)],
                    1,
                ))
                .await
                .expect_err("unknown unit is refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert_eq!(
                status.message(),
                format!(
                    "descriptors[1].limit.unit: unknown unit {unit} \
                     (expected SECOND, MINUTE, HOUR, DAY, MONTH, YEAR or WEEK)"
                )
            );
        }
    }
    let r = one(&mut c, "mongo_cps", &default, 1).await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 500, Unit::Second), 496, 1)]
    );
}

#[tokio::test]
async fn hits_addend_is_the_cost_and_over_limit_hits_still_count() {
    let (d, mut c) = daemon("both", false).await;
    let limit = rl("", 10, Unit::Second);
    let a = [("remote_address", "10.1.0.1")];
    // Request-level: 0 means 1.
    let r = one(&mut c, "edge_proxy_per_ip", &a, 0).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 9, 1)]);
    let r = one(&mut c, "edge_proxy_per_ip", &a, 3).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 6, 1)]);
    // The descriptor's own addend wins; 0 peeks without consuming.
    for _ in 0..3 {
        let r = ask(
            &mut c,
            request("edge_proxy_per_ip", vec![with_hits(&a, 0)], 5),
        )
        .await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 6, 1)]);
    }
    let r = ask(
        &mut c,
        request("edge_proxy_per_ip", vec![with_hits(&a, 2)], 5),
    )
    .await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 4, 1)]);

    // Fixed windows count every hit, over the limit or not.
    let b = [("remote_address", "10.1.0.2")];
    let r = one(&mut c, "edge_proxy_per_ip", &b, 6).await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 4, 1)]);
    let r = one(&mut c, "edge_proxy_per_ip", &b, 6).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 1)]);
    // 12 counted: a single hit, which would have fit into the 4 left, is
    // over too, and so is a peek.
    let r = one(&mut c, "edge_proxy_per_ip", &b, 1).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 1)]);
    let r = ask(
        &mut c,
        request("edge_proxy_per_ip", vec![with_hits(&b, 0)], 1),
    )
    .await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 1)]);

    // Exactly at the limit: OK with 0 left, a peek is OK, one more is over.
    let e = [("remote_address", "10.1.0.3")];
    let r = one(&mut c, "edge_proxy_per_ip", &e, 10).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 0, 1)]);
    let r = ask(
        &mut c,
        request("edge_proxy_per_ip", vec![with_hits(&e, 0)], 1),
    )
    .await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 0, 1)]);
    let r = one(&mut c, "edge_proxy_per_ip", &e, 1).await;
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 1)]);

    // A new window forgets it all.
    d.advance_ms(1_000);
    let r = one(&mut c, "edge_proxy_per_ip", &b, 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 9, 1)]);
}

#[tokio::test]
async fn global_shadow_mode_answers_ok_with_over_limit_statuses_and_no_retry_after() {
    let (_d, mut c) = daemon("both", true).await;
    let per_ip = rl("", 10, Unit::Second);
    let ip = [("remote_address", "10.2.0.1")];
    for remaining in (0..10).rev() {
        let r = one(&mut c, "edge_proxy_per_ip", &ip, 1).await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![st(Code::Ok, &per_ip, remaining, 1)]);
    }
    let r = one(&mut c, "edge_proxy_per_ip", &ip, 1).await;
    assert!(ok(&r), "global shadow mode answers OK");
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &per_ip, 0, 1)]);
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "10"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "1"),
            ("RateLimit-Policy", r#""remote_address";q=10;w=1"#),
            ("RateLimit", r#""remote_address";r=0;t=1"#),
        ])
    );
    let r = one(
        &mut c,
        "edge_proxy_per_ip",
        &[("remote_address", "50.0.0.5")],
        1,
    )
    .await;
    assert!(ok(&r));
    assert_eq!(
        r.statuses,
        vec![st(Code::OverLimit, &rl("", 0, Unit::Second), 0, 1)]
    );
    assert!(!headers(&r).iter().any(|(k, _)| k == "Retry-After"));
}

#[tokio::test]
async fn token_bucket_domain_is_smooth_with_nanosecond_resets() {
    let (d, mut c) = daemon("both", false).await;
    // 60 per minute (one a second), burst 10.
    let limit = rl("", 60, Unit::Minute);
    let api = [("api", "client-1")];
    for i in 1..=10u32 {
        let r = one(&mut c, "smooth", &api, 1).await;
        assert!(ok(&r));
        assert_eq!(
            r.statuses,
            vec![st_ns(Code::Ok, &limit, 10 - i, i64::from(i), 0)]
        );
    }
    let r = one(&mut c, "smooth", &api, 1).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st_ns(Code::OverLimit, &limit, 0, 10, 0)]);
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "10"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "10"),
            ("RateLimit-Policy", r#""api";q=10;w=10"#),
            ("RateLimit", r#""api";r=0;t=10"#),
            ("Retry-After", "1"),
        ])
    );
    // A second later one more token; a denial took nothing.
    d.advance_ms(1_000);
    let r = one(&mut c, "smooth", &api, 1).await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![st_ns(Code::Ok, &limit, 0, 10, 0)]);
    let r = one(&mut c, "smooth", &api, 1).await;
    assert_eq!(r.statuses, vec![st_ns(Code::OverLimit, &limit, 0, 10, 0)]);
    // 1.5 s later: 1.5 tokens, one spent, 9.5 s to full.
    d.advance_ms(1_500);
    let r = one(&mut c, "smooth", &api, 1).await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![st_ns(Code::Ok, &limit, 0, 9, 500_000_000)]);
    // Another client has its own bucket.
    let r = one(&mut c, "smooth", &[("api", "client-2")], 1).await;
    assert_eq!(r.statuses, vec![st_ns(Code::Ok, &limit, 9, 1, 0)]);
    // Full again after 9.5 s: a peek shows all 10, nothing to reset.
    d.advance_ms(9_500);
    let r = ask(&mut c, request("smooth", vec![with_hits(&api, 0)], 1)).await;
    assert_eq!(r.statuses, vec![st_ns(Code::Ok, &limit, 10, 0, 0)]);
    // A limit of 0 is a counter of 0 even here: whole seconds to the minute
    // (T0 + 12.5 s now: 47.5 s left).
    let r = one(&mut c, "smooth", &[("blocked", "x")], 1).await;
    assert!(over(&r));
    assert_eq!(
        r.statuses,
        vec![st(Code::OverLimit, &rl("", 0, Unit::Minute), 0, 48)]
    );
}

// ---------------------------------------------------------------------------
// Headers.

#[tokio::test]
async fn draft03_headers_describe_the_closest_limit() {
    let (d, mut c) = daemon("draft03", false).await;
    // 1.5 s into the day's second half: 43198.5 s left, reported as 43199.
    d.advance_ms(1_500);
    let m = |n| descriptor(&[("message_type", "marketing"), ("to_number", n)]);
    let t = |n| descriptor(&[("to_number", n)]);
    let n = "2064440001";
    let r = ask(&mut c, request("messaging", vec![m(n), t(n)], 1)).await;
    assert_eq!(
        r.statuses[0].duration_until_reset,
        Some(Duration {
            seconds: 43_199,
            nanos: 0
        })
    );
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "5"),
            ("RateLimit-Remaining", "4"),
            ("RateLimit-Reset", "43199"),
        ])
    );
    for _ in 0..4 {
        ask(&mut c, request("messaging", vec![m(n), t(n)], 1)).await;
    }
    // Over: the over-limit one, and (as envoyproxy/ratelimit) exactly
    // the three draft-03 fields: no Retry-After.
    let r = ask(&mut c, request("messaging", vec![m(n), t(n)], 1)).await;
    assert!(over(&r));
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "5"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "43199"),
        ])
    );
    // The second limit when it has fewer left.
    let n = "2064440002";
    let r = ask(&mut c, request("messaging", vec![t(n)], 98)).await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "100"),
            ("RateLimit-Remaining", "2"),
            ("RateLimit-Reset", "43199"),
        ])
    );
    let r = ask(&mut c, request("messaging", vec![m(n), t(n)], 1)).await;
    assert!(ok(&r));
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "100"),
            ("RateLimit-Remaining", "1"),
            ("RateLimit-Reset", "43199"),
        ])
    );
    // Of two over-limit limits, the last; no Retry-After when one of them
    // (a limit of 0) can never pass.
    let ip = |a| descriptor(&[("remote_address", a)]);
    ask(
        &mut c,
        request("edge_proxy_per_ip", vec![ip("10.3.0.1")], 10),
    )
    .await;
    let r = ask(
        &mut c,
        request("edge_proxy_per_ip", vec![ip("50.0.0.5"), ip("10.3.0.1")], 1),
    )
    .await;
    assert!(over(&r));
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "10"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "1"),
        ])
    );
    let r = ask(
        &mut c,
        request("edge_proxy_per_ip", vec![ip("10.3.0.1"), ip("50.0.0.5")], 1),
    )
    .await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "0"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "1"),
        ])
    );
    // No limit applied: no headers.
    let r = one(&mut c, "mongo_cps", &[("database", "orders")], 1).await;
    assert!(r.response_headers_to_add.is_empty());
}

#[tokio::test]
async fn draft11_headers_name_every_policy_by_rule_name_or_config_path() {
    let (d, mut c) = daemon("draft11", false).await;
    d.advance_ms(1_500);
    let m = descriptor(&[("message_type", "marketing"), ("to_number", "2065550001")]);
    let t = descriptor(&[("to_number", "2065550001")]);
    let r = ask(&mut c, request("messaging", vec![m, t], 1)).await;
    assert_eq!(
        headers(&r),
        hv(&[
            (
                "RateLimit-Policy",
                r#""message_type/to_number";q=5;w=86400, "to_number";q=100;w=86400"#
            ),
            (
                "RateLimit",
                r#""message_type/to_number";r=4;t=43199, "to_number";r=99;t=43199"#
            ),
        ])
    );
    // A named rule goes by its name.
    let d1 = [("key_1", "value_1"), ("user", "bkthomps")];
    let d2 = [("key_2", "value_2"), ("user", "bkthomps")];
    let r = one(&mut c, "example7", &d1, 1).await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Policy", r#""specific_limit";q=5;w=1"#),
            ("RateLimit", r#""specific_limit";r=4;t=1"#),
        ])
    );
    // A replaced limit is not listed.
    let r = ask(
        &mut c,
        request("example7", vec![descriptor(&d1), descriptor(&d2)], 1),
    )
    .await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Policy", r#""key_2/user";q=10;w=1"#),
            ("RateLimit", r#""key_2/user";r=9;t=1"#),
        ])
    );
    // Key-only levels and wildcards in the path.
    let r = one(
        &mut c,
        "example6",
        &[("service", "s"), ("user", "user-a")],
        1,
    )
    .await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Policy", r#""service/user";q=10;w=1"#),
            ("RateLimit", r#""service/user";r=9;t=1"#),
        ])
    );
    let r = one(&mut c, "example9", &[("key1", "value7")], 1).await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Policy", r#""key1";q=20;w=60"#),
            ("RateLimit", r#""key1";r=19;t=59"#),
        ])
    );
    // Unlimited descriptors are not listed.
    let r = ask(
        &mut c,
        request(
            "internal",
            vec![descriptor(&[("ldap", "x")]), descriptor(&[("azure", "y")])],
            1,
        ),
    )
    .await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Policy", r#""azure";q=100;w=60"#),
            ("RateLimit", r#""azure";r=99;t=59"#),
        ])
    );
    // Two descriptors under one policy name: one item, the tightest.
    let ip = |a| descriptor(&[("remote_address", a)]);
    ask(
        &mut c,
        request("edge_proxy_per_ip", vec![ip("10.4.0.1")], 5),
    )
    .await;
    let r = ask(
        &mut c,
        request("edge_proxy_per_ip", vec![ip("10.4.0.2"), ip("10.4.0.1")], 1),
    )
    .await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Policy", r#""remote_address";q=10;w=1"#),
            ("RateLimit", r#""remote_address";r=4;t=1"#),
        ])
    );
    // Over limit adds Retry-After.
    for _ in 0..4 {
        one(&mut c, "example7", &d1, 1).await;
    }
    let r = one(&mut c, "example7", &d1, 1).await;
    assert!(over(&r));
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Policy", r#""specific_limit";q=5;w=1"#),
            ("RateLimit", r#""specific_limit";r=0;t=1"#),
            ("Retry-After", "1"),
        ])
    );
}

#[tokio::test]
async fn both_header_styles_with_retry_after_until_the_window_resets() {
    let (d, mut c) = daemon("both", false).await;
    // 20.5 s into the minute: 39.5 s left, reported as 40.
    d.advance_ms(20_500);
    let limit = rl("", 20, Unit::Minute);
    let v = [("key1", "value1")];
    let r = one(&mut c, "example9", &v, 1).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 19, 40)]);
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "20"),
            ("RateLimit-Remaining", "19"),
            ("RateLimit-Reset", "40"),
            ("RateLimit-Policy", r#""key1";q=20;w=60"#),
            ("RateLimit", r#""key1";r=19;t=40"#),
        ])
    );
    let r = one(&mut c, "example9", &v, 19).await;
    assert!(ok(&r));
    assert!(!headers(&r).iter().any(|(k, _)| k == "Retry-After"));
    let r = one(&mut c, "example9", &v, 1).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 40)]);
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "20"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "40"),
            ("RateLimit-Policy", r#""key1";q=20;w=60"#),
            ("RateLimit", r#""key1";r=0;t=40"#),
            ("Retry-After", "40"),
        ])
    );
}

#[tokio::test]
async fn headers_off_sends_none_but_still_limits() {
    let (_d, mut c) = daemon("off", false).await;
    let limit = rl("", 20, Unit::Minute);
    let v = [("key1", "value1")];
    let r = one(&mut c, "example9", &v, 20).await;
    assert!(r.response_headers_to_add.is_empty());
    let r = one(&mut c, "example9", &v, 1).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 60)]);
    assert!(r.response_headers_to_add.is_empty());
    let r = one(&mut c, "edge", &[("api_key", "k")], 1).await;
    assert!(r.response_headers_to_add.is_empty());
}

#[tokio::test]
async fn native_check_returns_the_same_headers_for_a_plan_key() {
    use quotad::api::pb::CheckRequest;
    use quotad::api::pb::rate_limiter_client::RateLimiterClient;
    let (d, mut rls) = daemon("both", false).await;
    let mut native = RateLimiterClient::new(d.channel().await);
    let check = |cost| CheckRequest {
        key: "plan-key".into(),
        cost,
        id: 0,
        ..Default::default()
    };
    let native_headers = |r: &quotad::api::pb::CheckResponse| -> Vec<(String, String)> {
        r.headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.clone()))
            .collect()
    };
    // free: 2 per minute, one token every 30 s.
    let r = native.check(check(1)).await.unwrap().into_inner();
    assert!(r.allowed);
    assert_eq!(
        native_headers(&r),
        hv(&[
            ("RateLimit-Limit", "2"),
            ("RateLimit-Remaining", "1"),
            ("RateLimit-Reset", "30"),
            ("RateLimit-Policy", r#""free/per-minute";q=2;w=60"#),
            ("RateLimit", r#""free/per-minute";r=1;t=30"#),
        ])
    );
    // The plan domain spends the same bucket and says so the same way.
    let r = one(&mut rls, "edge", &[("api_key", "plan-key")], 1).await;
    assert!(ok(&r));
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("free/per-minute", 2, Unit::Minute), 0, 60)]
    );
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "2"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "60"),
            ("RateLimit-Policy", r#""free/per-minute";q=2;w=60"#),
            ("RateLimit", r#""free/per-minute";r=0;t=60"#),
        ])
    );
    let r = native.check(check(1)).await.unwrap().into_inner();
    assert!(!r.allowed);
    assert_eq!(
        native_headers(&r),
        hv(&[
            ("RateLimit-Limit", "2"),
            ("RateLimit-Remaining", "0"),
            ("RateLimit-Reset", "60"),
            ("RateLimit-Policy", r#""free/per-minute";q=2;w=60"#),
            ("RateLimit", r#""free/per-minute";r=0;t=60"#),
            ("Retry-After", "30"),
        ])
    );
    let r = one(&mut rls, "edge", &[("api_key", "plan-key")], 1).await;
    assert!(over(&r));
    assert_eq!(
        headers(&r).last(),
        Some(&("Retry-After".to_owned(), "30".to_owned()))
    );
}

// ---------------------------------------------------------------------------
// Domains that are not ours.

#[tokio::test]
async fn unknown_domain_is_ok_for_every_descriptor() {
    let (_d, mut c) = daemon("both", false).await;
    let users = [("database", "users")];
    for domain in ["nobody", "MONGO_CPS"] {
        for _ in 0..5 {
            let r = ask(
                &mut c,
                request(
                    domain,
                    vec![
                        descriptor(&users),
                        descriptor(&[("remote_address", "50.0.0.5")]),
                        // Not validated: another service's descriptors.
                        RateLimitDescriptor::default(),
                        with_limit(&users, 1, 0),
                        with_hits(&users, u64::MAX),
                    ],
                    1,
                ),
            )
            .await;
            assert!(ok(&r));
            assert_eq!(r.statuses, vec![no_limit(); 5]);
            assert!(r.response_headers_to_add.is_empty());
        }
    }
    // Nothing was counted against mongo_cps.
    let r = one(&mut c, "mongo_cps", &users, 1).await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 500, Unit::Second), 499, 1)]
    );
}

#[tokio::test]
async fn unlimited_and_shadow_rules_replace_too() {
    let (_d, mut c) = daemon("off", false).await;
    let base = rl("base", 1, Unit::Second);
    let shadowed = rl("shadowed", 1, Unit::Second);
    let (a, b, cc) = (
        descriptor(&[("a", "1")]),
        descriptor(&[("b", "1")]),
        descriptor(&[("c", "1")]),
    );
    // The unlimited rule's `replaces` drop `base`, which counts nothing.
    for _ in 0..3 {
        let r = ask(
            &mut c,
            request("replaces_more", vec![a.clone(), b.clone()], 1),
        )
        .await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![no_limit(), unlimited()]);
    }
    // So does the shadow rule's; the shadow rule itself counts, answering OK.
    for _ in 0..2 {
        let r = ask(
            &mut c,
            request("replaces_more", vec![a.clone(), cc.clone()], 1),
        )
        .await;
        assert!(ok(&r));
        assert_eq!(r.statuses, vec![no_limit(), st(Code::Ok, &shadowed, 0, 1)]);
    }
    // `base` alone still has its whole limit of 1.
    drain(&mut c, "replaces_more", &[("a", "1")], &base, 1, 1).await;
}

#[tokio::test]
async fn week_month_and_year_windows_align_as_envoyproxy_does() {
    // T0 is Friday 2026-11-27 12:00 UTC. envoyproxy/ratelimit's windows
    // are multiples of the unit from the Unix epoch: weeks start on
    // Thursdays (1970-01-01 was one), months are 30 days, years 365.
    let (_d, mut c) = daemon("off", false).await;
    let users = [("database", "users")];
    for (unit, number, reset) in [
        ("week", 7, 475_200),   // Thursday 00:00 + 7 d − Friday 12:00 = 5.5 d
        ("month", 5, 475_200),  // day 20 760 + 30 − day 20 784.5 = 5.5 d
        ("year", 6, 1_771_200), // day 20 440 + 365 − day 20 784.5 = 20.5 d
    ] {
        let r = ask(
            &mut c,
            request("mongo_cps", vec![with_limit(&users, 9, number)], 1),
        )
        .await;
        let status = &r.statuses[0];
        let got = status.duration_until_reset.map(|d| d.seconds);
        assert_eq!(got, Some(reset), "{unit}");
        assert_eq!(
            status.current_limit.as_ref().map(|l| l.unit),
            Some(number),
            "{unit}"
        );
        assert_eq!(
            status.limit_remaining, 8,
            "{unit}: its own window's counter"
        );
    }
}

#[tokio::test]
async fn a_blocklisted_descriptor_is_over_for_every_hit_but_a_peek_of_nothing_is_not() {
    let (_d, mut c) = daemon("both", false).await;
    let blocked = rl("", 0, Unit::Second);
    // As envoyproxy's `0 > 0` is false: a peek with no hit counted in the
    // window is OK, with nothing remaining. (That a peek after a hit in
    // the same window is over is a unit test, on a clock held still.)
    let peek = with_hits(&[("remote_address", "50.0.0.5")], 0);
    let r = ask(&mut c, request("edge_proxy_per_ip", vec![peek], 1)).await;
    assert!(ok(&r));
    assert_eq!(r.statuses, vec![st(Code::Ok, &blocked, 0, 1)]);
    // Any hit is over, and waiting cannot help, so no Retry-After.
    let hit = with_hits(&[("remote_address", "50.0.0.5")], 1);
    let r = ask(&mut c, request("edge_proxy_per_ip", vec![hit], 1)).await;
    assert!(over(&r));
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &blocked, 0, 1)]);
    assert!(!headers(&r).iter().any(|(k, _)| k == "Retry-After"));
}
