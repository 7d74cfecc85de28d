//! The peer's service tests' scenarios (`test/service/ratelimit_test.go`),
//! on real limits instead of its mocked cache: overall codes, global and
//! per-rule shadow mode, unlimited, quota mode, dynamic metadata, and the
//! RateLimit headers.

use serde_json::json;

use super::*;

const D: &str = "test-domain";

/// A limits file written to `dir`, for scenarios the peer's service tests
/// build from mocked limits (quota mode, overlapping metadata).
fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    crate::support::write_file(dir.path(), name, text)
}

/// The peer's quota-mode service tests' limits: `regular` 5/min, and
/// `quota`, `quota1`, `quota2` 3/min in quota mode.
const QUOTA: &str = "\
domain: quota-domain
descriptors:
  - key: regular
    rate_limit: { unit: minute, requests_per_unit: 5 }
  - key: quota
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 3 }
  - key: quota1
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 3 }
  - key: quota2
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 3 }
";

/// Two limits whose `metadata` overlap: `name` in both, and mappings
/// under `nested` that merge.
const OVERLAP: &str = "\
domain: metadata-merge
descriptors:
  - key: first
    rate_limit: { unit: minute, requests_per_unit: 10 }
    metadata: { name: service_1, nested: { a: 1, same: first } }
  - key: second
    rate_limit: { unit: minute, requests_per_unit: 5 }
    metadata: { name: service_2, nested: { b: two, same: second } }
";

#[tokio::test]
async fn unknown_domain_and_empty_descriptor_are_ok_without_a_limit() {
    let (_d, mut c) = daemon(&["basic_config.yaml"], &[]).await;
    let r = ask(
        &mut c,
        request(
            "foo_domain",
            vec![descriptor(&[("key2", "x")]), descriptor(&[])],
            1,
        ),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses, vec![no_limit(), no_limit()]);
    let r = ask(
        &mut c,
        request(D, vec![descriptor(&[]), descriptor(&[("key2", "x")])], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        r.statuses,
        vec![no_limit(), st(Code::Ok, &rl("", 20, Unit::Minute), 19, 60)]
    );
}

#[tokio::test]
async fn one_descriptor_over_its_limit_makes_the_answer_over_limit_in_any_order() {
    let (_d, mut c) = daemon(&["basic_config.yaml"], &[]).await;
    let hour = rl("", 1, Unit::Hour);
    let minute = rl("", 20, Unit::Minute);
    let r = one(&mut c, D, &[("key3", "foo")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &hour, 0, 3_600)]);
    let (k2, k3, none) = (
        descriptor(&[("key2", "a")]),
        descriptor(&[("key3", "foo")]),
        descriptor(&[("key1", "something")]),
    );
    let r = ask(&mut c, request(D, vec![k2.clone(), k3.clone()], 1)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::Ok, &minute, 19, 60),
            st(Code::OverLimit, &hour, 0, 3_600)
        ]
    );
    let r = ask(&mut c, request(D, vec![none, k3, k2], 1)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses,
        vec![
            no_limit(),
            st(Code::OverLimit, &hour, 0, 3_600),
            st(Code::Ok, &minute, 18, 60)
        ]
    );
}

#[tokio::test]
async fn global_shadow_mode_answers_ok_while_statuses_stay_over_limit() {
    let (_d, mut c) = daemon(&["basic_config.yaml"], &["shadow: true"]).await;
    let hour = rl("", 1, Unit::Hour);
    let r = one(&mut c, D, &[("key3", "foo")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &hour, 0, 3_600)]);
    let r = ask(
        &mut c,
        request(
            D,
            vec![descriptor(&[("key3", "foo")]), descriptor(&[("key9", "x")])],
            1,
        ),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        r.statuses,
        vec![st(Code::OverLimit, &hour, 0, 3_600), no_limit()]
    );
}

#[tokio::test]
async fn a_shadow_rule_answers_ok_over_its_limit_but_a_rule_beside_it_still_limits() {
    let (_d, mut c) = daemon(&["shadowmode_config.yaml"], &[]).await;
    let shadowed = rl("", 20, Unit::Minute);
    let plain = rl("", 30, Unit::Minute);
    ask(&mut c, request(D, vec![with_hits(&[("key2", "k")], 20)], 1)).await;
    ask(
        &mut c,
        request(D, vec![with_hits(&[("key2", "value2")], 30)], 1),
    )
    .await;
    // Both over: the shadow rule's status is OK, the other's decides.
    let both = vec![
        descriptor(&[("key2", "k")]),
        descriptor(&[("key2", "value2")]),
    ];
    let r = ask(&mut c, request(D, both, 1)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::Ok, &shadowed, 0, 60),
            st(Code::OverLimit, &plain, 0, 60)
        ]
    );
    // The shadow rule alone: OK.
    let r = one(&mut c, D, &[("key2", "k")]).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses, vec![st(Code::Ok, &shadowed, 0, 60)]);
}

#[tokio::test]
async fn unlimited_answers_remaining_4294967295_and_counts_nothing() {
    let (d, mut c) = daemon(&["basic_config.yaml"], &[]).await;
    let minute = rl("", 20, Unit::Minute);
    for remaining in [19, 18] {
        let r = ask(
            &mut c,
            request(
                D,
                vec![
                    descriptor(&[("key2", "a")]),
                    descriptor(&[("nothing", "x")]),
                    with_hits(&[("key6", "a")], 1_000),
                ],
                1,
            ),
        )
        .await;
        assert_eq!(overall(&r), Code::Ok);
        assert_eq!(
            r.statuses,
            vec![
                st(Code::Ok, &minute, remaining, 60),
                no_limit(),
                unlimited()
            ]
        );
        assert_eq!(r.statuses[2].limit_remaining, 4_294_967_295);
    }
    assert_eq!(Scrape::of(&d).await.names(D), sorted(&["key2"]));
}

#[tokio::test]
async fn a_peek_at_a_limit_of_zero_is_ok_and_any_hit_is_over() {
    let (_d, mut c) = daemon(&["reload.yaml"], &[]).await;
    let zero = rl("", 0, Unit::Second);
    let block = [("block", "1.2.3.4")];
    // Descriptor hits_addend 0: nothing counted, 0 > 0 is false.
    let r = ask(&mut c, request("reload", vec![with_hits(&block, 0)], 1)).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses, vec![st(Code::Ok, &zero, 0, 1)]);
    // A request hits_addend of 0 means 1.
    let r = ask(&mut c, request("reload", vec![descriptor(&block)], 0)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &zero, 0, 1)]);
}

#[tokio::test]
async fn quota_mode_descriptors_refuse_only_when_all_of_them_are_over() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, mut c) = daemon_with(&[file(&dir, "quota.yaml", QUOTA)], &[]).await;
    let (five, three) = (rl("", 5, Unit::Minute), rl("", 3, Unit::Minute));
    let q = "quota-domain";
    let spend = |k: &'static str, v: &'static str, n| with_hits(&[(k, v)], n);
    let d = |k: &'static str, v: &'static str| descriptor(&[(k, v)]);

    // Regular over, quota OK: the regular one refuses.
    ask(&mut c, request(q, vec![spend("regular", "a", 5)], 1)).await;
    let r = ask(
        &mut c,
        request(q, vec![d("regular", "a"), d("quota", "a")], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::OverLimit, &five, 0, 60),
            st(Code::Ok, &three, 2, 60)
        ]
    );
    // Regular OK, the only quota one over: all quota limits exceeded.
    ask(&mut c, request(q, vec![spend("quota", "b", 3)], 1)).await;
    let r = ask(
        &mut c,
        request(q, vec![d("regular", "b"), d("quota", "b")], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::Ok, &five, 4, 60),
            st(Code::OverLimit, &three, 0, 60)
        ]
    );
    let r = ask(&mut c, request(q, vec![d("quota", "b")], 1)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    // Both under: OK.
    let r = ask(
        &mut c,
        request(q, vec![d("regular", "c"), d("quota", "c")], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &five, 4, 60), st(Code::Ok, &three, 2, 60)]
    );
    // Two quota limits, one over: OK, its status still OVER_LIMIT.
    ask(&mut c, request(q, vec![spend("quota1", "d", 3)], 1)).await;
    let r = ask(
        &mut c,
        request(q, vec![d("quota1", "d"), d("quota2", "d")], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::OverLimit, &three, 0, 60),
            st(Code::Ok, &three, 2, 60)
        ]
    );
    // Both over: OVER_LIMIT.
    ask(&mut c, request(q, vec![spend("quota2", "d", 2)], 1)).await;
    let r = ask(
        &mut c,
        request(q, vec![d("quota1", "d"), d("quota2", "d")], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::OverLimit, &three, 0, 60),
            st(Code::OverLimit, &three, 0, 60)
        ]
    );
}

#[tokio::test]
async fn global_quota_mode_makes_every_descriptor_a_quota_one() {
    let dir = tempfile::tempdir().unwrap();
    let files = [file(&dir, "quota.yaml", QUOTA)];
    let (_d, mut c) = daemon_with(&files, &["quota_mode: true"]).await;
    let five = rl("", 5, Unit::Minute);
    let q = "quota-domain";
    let d = |v: &'static str| descriptor(&[("regular", v)]);
    ask(
        &mut c,
        request(q, vec![with_hits(&[("regular", "a")], 5)], 1),
    )
    .await;
    // One of two over: OK.
    let r = ask(&mut c, request(q, vec![d("a"), d("b")], 1)).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::OverLimit, &five, 0, 60),
            st(Code::Ok, &five, 4, 60)
        ]
    );
    // All over (the only one, or both): OVER_LIMIT.
    let r = ask(&mut c, request(q, vec![d("a")], 1)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    ask(
        &mut c,
        request(q, vec![with_hits(&[("regular", "b")], 4)], 1),
    )
    .await;
    let r = ask(&mut c, request(q, vec![d("a"), d("b")], 1)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::OverLimit, &five, 0, 60),
            st(Code::OverLimit, &five, 0, 60)
        ]
    );
}

#[tokio::test]
async fn quota_mode_under_global_shadow_mode_answers_ok() {
    let dir = tempfile::tempdir().unwrap();
    let files = [file(&dir, "quota.yaml", QUOTA)];
    let (_d, mut c) = daemon_with(&files, &["quota_mode: true", "shadow: true"]).await;
    let (five, three) = (rl("", 5, Unit::Minute), rl("", 3, Unit::Minute));
    let q = "quota-domain";
    let both = || {
        vec![
            with_hits(&[("regular", "a")], 6),
            with_hits(&[("quota", "a")], 4),
        ]
    };
    let r = ask(&mut c, request(q, both(), 1)).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        r.statuses,
        vec![
            st(Code::OverLimit, &five, 0, 60),
            st(Code::OverLimit, &three, 0, 60)
        ]
    );
}

#[tokio::test]
async fn dynamic_metadata_carries_the_request_and_passed_descriptors_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        fixture("metadata.yaml"),
        file(&dir, "overlap.yaml", OVERLAP),
    ];
    let envoy = ["quota_mode: true", "response_dynamic_metadata: true"];
    let (_d, mut c) = daemon_with(&files, &envoy).await;
    let d0 = |v| descriptor(&[("key1", "value1"), ("subkey1", v)]);

    // Spending key2=over's 20, with its own hits_addend.
    let r = ask(
        &mut c,
        request(D, vec![with_hits(&[("key2", "over")], 20)], 1),
    )
    .await;
    assert_eq!(
        dynamic_metadata(&r),
        Some(json!({
            "domain": "test-domain",
            "descriptors": [{ "entries": ["key2=over"], "hitsAddend": 20 }],
            "hitsAddend": 1,
            "metadata": { "service_with_quota": { "name": "service_2" } },
            "quotaModeEnabled": true,
        }))
    );
    // d0 passes, d1 is over: d0's metadata only (the answer is OK: in
    // quota mode one of two is over).
    let r = ask(
        &mut c,
        request(D, vec![d0("x"), descriptor(&[("key2", "over")])], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        dynamic_metadata(&r),
        Some(json!({
            "domain": "test-domain",
            "descriptors": [
                { "entries": ["key1=value1", "subkey1=x"] },
                { "entries": ["key2=over"] },
            ],
            "hitsAddend": 1,
            "metadata": { "name": "service_1" },
            "quotaModeEnabled": true,
            "quotaModeViolations": [1],
        }))
    );
    // Both pass with different keys: both, merged. A request hits_addend
    // of 0 is left out.
    let r = ask(
        &mut c,
        request(D, vec![d0("y"), descriptor(&[("key2", "fresh")])], 0),
    )
    .await;
    assert_eq!(
        dynamic_metadata(&r),
        Some(json!({
            "domain": "test-domain",
            "descriptors": [
                { "entries": ["key1=value1", "subkey1=y"] },
                { "entries": ["key2=fresh"] },
            ],
            "metadata": {
                "name": "service_1",
                "service_with_quota": { "name": "service_2" },
            },
            "quotaModeEnabled": true,
        }))
    );
    // The same key in both: the first descriptor's value; mappings merge.
    let pair =
        |a: &'static str, b: &'static str| vec![descriptor(&[(a, "x")]), descriptor(&[(b, "x")])];
    let r = ask(
        &mut c,
        request("metadata-merge", pair("first", "second"), 1),
    )
    .await;
    assert_eq!(
        dynamic_metadata(&r).map(|m| m["metadata"].clone()),
        Some(json!({
            "name": "service_1",
            "nested": { "a": 1, "b": "two", "same": "first" },
        }))
    );
    let r = ask(
        &mut c,
        request("metadata-merge", pair("second", "first"), 1),
    )
    .await;
    assert_eq!(
        dynamic_metadata(&r).map(|m| m["metadata"].clone()),
        Some(json!({
            "name": "service_2",
            "nested": { "a": 1, "b": "two", "same": "second" },
        }))
    );
    // A limit override is described; it has no metadata of its own.
    let r = ask(
        &mut c,
        request(
            D,
            vec![with_limit(&[("key2", "o")], 7, Unit::Hour as i32)],
            2,
        ),
    )
    .await;
    assert_eq!(
        dynamic_metadata(&r),
        Some(json!({
            "domain": "test-domain",
            "descriptors": [{
                "entries": ["key2=o"],
                "limit": "requests_per_unit:7 unit:HOUR",
            }],
            "hitsAddend": 2,
        }))
    );
}

#[tokio::test]
async fn no_dynamic_metadata_unless_asked_for() {
    let (_d, mut c) = daemon(&["metadata.yaml"], &[]).await;
    let r = one(&mut c, D, &[("key1", "value1"), ("subkey1", "x")]).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.dynamic_metadata, None);
}

// ---------------------------------------------------------------------------
// Headers.

#[tokio::test]
async fn files_domains_send_no_headers_by_default_plan_domains_do() {
    let (_d, mut c) = daemon(&["basic_headers.yaml"], &[]).await;
    let limit = rl("", 50, Unit::Second);
    let r = one(&mut c, "basic_headers", &[("key1", "foo")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 49, 1)]);
    assert_eq!(headers(&r), vec![]);
    let r = ask(
        &mut c,
        request("basic_headers", vec![with_hits(&[("key1", "foo")], 50)], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(headers(&r), vec![]);
    // The plan domain keeps quotad's own (top-level response_headers:
    // both by default).
    let r = one(&mut c, "edge", &[("api_key", "k")]).await;
    assert_eq!(
        headers(&r),
        hv(&[
            ("RateLimit-Limit", "2"),
            ("RateLimit-Remaining", "1"),
            ("RateLimit-Reset", "30"),
            ("RateLimit-Policy", r#""free/per-minute";q=2;w=60"#),
            ("RateLimit", r#""free/per-minute";r=1;t=30"#),
        ])
    );
}

#[tokio::test]
async fn draft03_headers_are_exactly_the_peers_three_even_when_over() {
    let (d, mut c) = daemon(
        &["basic_headers.yaml", "basic_config.yaml"],
        &["response_headers: draft03"],
    )
    .await;
    let three = |l: &str, r: &str, s: &str| {
        hv(&[
            ("RateLimit-Limit", l),
            ("RateLimit-Remaining", r),
            ("RateLimit-Reset", s),
        ])
    };
    let key1 = [("key1", "foo")];
    let r = one(&mut c, "basic_headers", &key1).await;
    assert_eq!(headers(&r), three("50", "49", "1"));
    let r = ask(
        &mut c,
        request("basic_headers", vec![with_hits(&key1, 49)], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(headers(&r), three("50", "0", "1"));
    // Over, 300 ms into the second: no Retry-After, reset still 1.
    d.advance_ms(300);
    let r = one(&mut c, "basic_headers", &key1).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(headers(&r), three("50", "0", "1"));

    // Of several limits, the one with the fewest left; an over-limit one
    // whatever its order.
    let (k2, k3) = (descriptor(&[("key2", "x")]), descriptor(&[("key3", "x")]));
    let r = ask(&mut c, request(D, vec![k2.clone(), k3.clone()], 1)).await;
    assert_eq!(headers(&r), three("1", "0", "3600"));
    let r = ask(&mut c, request(D, vec![k3, k2], 1)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(headers(&r), three("1", "0", "3600"));
    // No limit applied: none.
    let r = one(&mut c, D, &[("key1", "something")]).await;
    assert_eq!(headers(&r), vec![]);
}

#[tokio::test]
async fn draft03_headers_in_quota_mode_follow_a_non_quota_limit_over_a_quota_one() {
    // Only an over-limit descriptor that is not in quota mode takes the
    // headers whatever its remaining; a quota one competes on remaining.
    let dir = tempfile::tempdir().unwrap();
    let files = [file(&dir, "quota.yaml", QUOTA)];
    let (_d, mut c) = daemon_with(&files, &["response_headers: draft03"]).await;
    let q = "quota-domain";
    let three = |l: &str, r: &str| {
        hv(&[
            ("RateLimit-Limit", l),
            ("RateLimit-Remaining", r),
            ("RateLimit-Reset", "60"),
        ])
    };
    ask(&mut c, request(q, vec![with_hits(&[("quota", "h")], 3)], 1)).await;
    // regular: exactly at its 5 (OK, 0 left); quota: over.
    let both = vec![
        with_hits(&[("regular", "h")], 5),
        descriptor(&[("quota", "h")]),
    ];
    let r = ask(&mut c, request(q, both, 1)).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(headers(&r), three("5", "0"));
    // regular over, quota over: the regular one.
    let both = vec![
        descriptor(&[("quota", "h")]),
        descriptor(&[("regular", "h")]),
    ];
    let r = ask(&mut c, request(q, both, 1)).await;
    assert_eq!(headers(&r), three("5", "0"));
}
