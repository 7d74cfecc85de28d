//! The peer's integration test (`test/integration/integration_test.go`)
//! with its runtime config files (`basic`, `another`, `share_threshold`):
//! the answers and the per-descriptor stats it reads back, its reload of
//! a domain file added to and removed from the runtime directory, and how
//! the peer counts a charge that crosses the limit (`base_limiter.go`).

use super::*;

#[tokio::test]
async fn basic_and_unknown_domains_answer_as_the_integration_test() {
    let (d, mut c) = daemon(&["basic.yaml"], &[]).await;
    let r = one(&mut c, "foo", &[("hello", "world")]).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses, vec![no_limit()]);
    let r = one(&mut c, "basic", &[("key1", "foo")]).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 50, Unit::Second), 49, 1)]
    );
    assert_eq!(
        Scrape::of(&d).await.stats("basic", "key1"),
        Stats::within(1)
    );
}

#[tokio::test]
async fn another_key2_25_times_20_ok_then_5_over_and_its_stats() {
    let (d, mut c) = daemon(&["another.yaml"], &[]).await;
    let limit = rl("", 20, Unit::Minute);
    let key2 = [("key2", "d2f4b6c1")];
    for i in 0..25u32 {
        let r = one(&mut c, "another", &key2).await;
        if i < 20 {
            assert_eq!(overall(&r), Code::Ok, "{i}");
            assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 20 - (i + 1), 60)]);
        } else {
            assert_eq!(overall(&r), Code::OverLimit, "{i}");
            assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 60)]);
        }
    }
    // near: hits 17 to 20, past floor(20 × 0.8) = 16.
    assert_eq!(
        Scrape::of(&d).await.stats("another", "key2"),
        Stats {
            total_hits: 25,
            over_limit: 5,
            near_limit: 4,
            within_limit: 20,
            shadow_mode: 0,
        }
    );
}

#[tokio::test]
async fn another_key2_and_key3_15_times_the_hourly_one_decides() {
    let (d, mut c) = daemon(&["another.yaml"], &[]).await;
    let (minute, hour) = (rl("", 20, Unit::Minute), rl("", 10, Unit::Hour));
    let both = || {
        request(
            "another",
            vec![
                descriptor(&[("key2", "7a1c")]),
                descriptor(&[("key3", "7a1c")]),
            ],
            1,
        )
    };
    for i in 0..15u32 {
        let r = ask(&mut c, both()).await;
        let key2 = st(Code::Ok, &minute, 20 - (i + 1), 60);
        if i < 10 {
            assert_eq!(overall(&r), Code::Ok, "{i}");
            assert_eq!(
                r.statuses,
                vec![key2, st(Code::Ok, &hour, 10 - (i + 1), 3_600)]
            );
        } else {
            assert_eq!(overall(&r), Code::OverLimit, "{i}");
            assert_eq!(r.statuses, vec![key2, st(Code::OverLimit, &hour, 0, 3_600)]);
        }
    }
    // Counters keep counting while over: key3 has all 15.
    let m = Scrape::of(&d).await;
    assert_eq!(m.stats("another", "key2"), Stats::within(15));
    assert_eq!(
        m.stats("another", "key3"),
        Stats {
            total_hits: 15,
            over_limit: 5,
            near_limit: 2,
            within_limit: 10,
            shadow_mode: 0,
        }
    );
}

#[tokio::test]
async fn duration_until_reset_counts_down_with_the_clock() {
    let (d, mut c) = daemon(&["another.yaml"], &[]).await;
    let day = rl("", 20, Unit::Day);
    let r = one(&mut c, "another", &[("key4", "x")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &day, 19, HALF_DAY)]);
    d.advance_ms(2_000);
    let r = one(&mut c, "another", &[("key4", "x")]).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &day, 18, HALF_DAY - 2)]);
}

#[tokio::test]
async fn shared_threshold_files_spend_one_hourly_10_unshared_ones_their_own() {
    let (d, mut c) = daemon(&["integration_share_threshold.yaml"], &[]).await;
    let ten = rl("", 10, Unit::Hour);
    let dom = "share-threshold-test";
    for i in 0..10u32 {
        let r = one(&mut c, dom, &[("files", "files/a.pdf")]).await;
        assert_eq!(r.statuses, vec![st(Code::Ok, &ten, 9 - i, 3_600)]);
    }
    let r = one(&mut c, dom, &[("files", "files/b.csv")]).await;
    assert_eq!(overall(&r), Code::OverLimit);
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &ten, 0, 3_600)]);
    for i in 0..10 {
        let v = format!("files_no_share/file{i}.txt");
        let r = one(&mut c, dom, &[("files_no_share", &v)]).await;
        assert_eq!(overall(&r), Code::Ok, "{v}");
        assert_eq!(r.statuses, vec![st(Code::Ok, &ten, 9, 3_600)], "{v}");
    }
    let m = Scrape::of(&d).await;
    assert_eq!(
        m.stats(dom, "files_files/*"),
        Stats {
            total_hits: 11,
            over_limit: 1,
            near_limit: 2,
            within_limit: 10,
            shadow_mode: 0,
        }
    );
    assert_eq!(
        m.stats(dom, "files_no_share_files_no_share/*"),
        Stats::within(10)
    );
}

#[tokio::test]
async fn a_charge_crossing_the_limit_counts_only_its_excess_as_over_limit() {
    // base_limiter.go: of hits that take the count from `before` (under
    // the limit) to `after` (over it), `after − limit` are over_limit,
    // `limit − max(near threshold, before)` near_limit, none
    // within_limit; under shadow mode the same excess is shadow_mode.
    let (d, mut c) = daemon(&["another.yaml", "shadowmode_config.yaml"], &[]).await;
    let limit = rl("", 20, Unit::Minute);
    let key2 = [("key2", "x")];
    let r = ask(&mut c, request("another", vec![with_hits(&key2, 18)], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::Ok, &limit, 2, 60)]);
    let r = ask(&mut c, request("another", vec![with_hits(&key2, 5)], 1)).await;
    assert_eq!(r.statuses, vec![st(Code::OverLimit, &limit, 0, 60)]);
    // shadowmode_config's key2: 20 per minute, shadow.
    let shadow = [("key2", "s")];
    ask(
        &mut c,
        request("test-domain", vec![with_hits(&shadow, 18)], 1),
    )
    .await;
    let r = ask(
        &mut c,
        request("test-domain", vec![with_hits(&shadow, 5)], 1),
    )
    .await;
    assert_eq!(overall(&r), Code::Ok);
    let m = Scrape::of(&d).await;
    let crossed = Stats {
        total_hits: 23,
        over_limit: 3,
        near_limit: 4,
        within_limit: 18,
        shadow_mode: 0,
    };
    assert_eq!(m.stats("another", "key2"), crossed);
    assert_eq!(
        m.stats("test-domain", "key2"),
        Stats {
            shadow_mode: 3,
            ..crossed
        }
    );
}

/// Waits (bounded, real time: the file watcher polls) until `domain`
/// answers `entries` with a limit (`limited`) or without one.
async fn until_limited(c: &mut Client, domain: &str, entries: &[(&str, &str)], limited: bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = ask(c, request(domain, vec![with_hits(entries, 0)], 1)).await;
        if r.statuses[0].current_limit.is_some() == limited {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{domain} did not become {} within 10 s",
            if limited { "limited" } else { "unlimited" }
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_domain_file_added_to_the_watched_directory_applies_and_its_removal_too() {
    // The integration test's reload scenario: the `reload` domain is
    // unknown (OK, no limit) until reload.yaml lands in the runtime
    // directory, then limits as the file says; removing the file reloads
    // again and the domain is gone.
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = dir.path().join("config");
    std::fs::create_dir(&runtime).expect("runtime dir");
    std::fs::copy(fixture("basic.yaml"), runtime.join("basic.yaml")).expect("copy basic");
    let config = dir.path().join("quotad.yaml");
    let text = format!(
        "{}reload: {{ watch: true, poll_interval: 20ms, debounce: 20ms }}\n",
        super::config(&[PathBuf::from("config")], &[])
    );
    std::fs::write(&config, text).expect("write config");
    let d = TestDaemon::from_file(&config).await;
    let mut c = RateLimitServiceClient::new(d.channel().await);
    let key1 = [("key1", "foo")];
    let r = one(&mut c, "reload", &key1).await;
    assert_eq!(r.statuses, vec![no_limit()]);

    // Written elsewhere and moved in, as a ConfigMap update swaps files.
    let staged = dir.path().join("reload.yaml");
    std::fs::copy(fixture("reload.yaml"), &staged).expect("stage reload.yaml");
    std::fs::rename(&staged, runtime.join("reload.yaml")).expect("move reload.yaml in");
    until_limited(&mut c, "reload", &key1, true).await;
    let r = one(&mut c, "reload", &key1).await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 50, Unit::Second), 49, 1)]
    );
    // The blocklist rule of the same file: over for every hit.
    let r = one(&mut c, "reload", &[("block", "foo")]).await;
    assert_eq!(overall(&r), Code::OverLimit);

    std::fs::remove_file(runtime.join("reload.yaml")).expect("remove reload.yaml");
    until_limited(&mut c, "reload", &key1, false).await;
    assert_eq!(
        one(&mut c, "reload", &key1).await.statuses,
        vec![no_limit()]
    );
    // The other file's domain stayed throughout.
    let r = one(&mut c, "basic", &[("key1", "foo")]).await;
    assert_eq!(
        r.statuses,
        vec![st(Code::Ok, &rl("", 50, Unit::Second), 49, 1)]
    );
}
