//! The admin API (`quotad.v1.QuotaAdmin`) over real gRPC: tokens and
//! scopes, overrides (plan, own limits, block) enforced at once on both
//! front doors, expiry, usage and reset, paging, the cap, the audit file.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use quotad::api::pb::set_override_request::Target;
use quotad::api::pb::{
    CheckResponse, DenyReason, KeyRef, LimitList, LimitSpec, ListOverridesRequest,
    ListPlansRequest, ReloadRequest, SetOverrideRequest,
};
use tonic::Code as Status;

use crate::support::rls::{descriptor, request};
use crate::support::{CONFIG, TestDaemon, VIEWER_TOKEN, admin_section};

async fn daemon(extra_admin: &str) -> TestDaemon {
    TestDaemon::with_config(&format!("{CONFIG}{}", admin_section(extra_admin))).await
}

use crate::support::{key_ref as key, override_of as set};

fn ttl(secs: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs,
        nanos: 0,
    })
}

async fn check(d: &TestDaemon, k: &str) -> CheckResponse {
    d.check(k, 1).await
}

async fn spend(d: &TestDaemon, k: &str, n: u64) {
    assert!(d.check(k, n).await.allowed, "spending {n} for {k}");
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Status, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[tokio::test]
async fn the_admin_api_is_off_without_an_admin_section() {
    let d = TestDaemon::start().await;
    assert_eq!(d.admin_addr, None);
}

#[tokio::test]
async fn every_call_needs_a_token_and_changes_need_the_write_scope() {
    let d = daemon("").await;
    let mut anon = d.admin(None).await;
    let mut wrong = d.admin(Some("qd_not-a-configured-token")).await;
    let mut viewer = d.admin(Some(VIEWER_TOKEN)).await;
    let mut ops = d.ops().await;

    // Every call, without a token or with an unknown one: UNAUTHENTICATED.
    for client in [&mut anon, &mut wrong] {
        let results = [
            code(client.set_override(set("k", Target::Block(true))).await).0,
            code(client.get_override(key("k")).await).0,
            code(client.delete_override(key("k")).await).0,
            code(client.list_overrides(ListOverridesRequest::default()).await).0,
            code(client.get_usage(key("k")).await).0,
            code(client.reset_usage(key("k")).await).0,
            code(client.list_plans(ListPlansRequest {}).await).0,
            code(client.reload(ReloadRequest {}).await).0,
        ];
        assert_eq!(results, [Status::Unauthenticated; 8]);
    }
    let (_, why) = code(anon.get_usage(key("k")).await);
    assert!(why.contains("missing bearer token"), "{why}");
    let (_, why) = code(wrong.get_usage(key("k")).await);
    assert_eq!(why, "invalid token");

    // A read-only token reads, and is refused every change.
    assert!(viewer.get_usage(key("k")).await.is_ok());
    assert!(viewer.list_plans(ListPlansRequest {}).await.is_ok());
    assert!(
        viewer
            .list_overrides(ListOverridesRequest::default())
            .await
            .is_ok()
    );
    let writes = [
        code(viewer.set_override(set("k", Target::Block(true))).await),
        code(viewer.delete_override(key("k")).await),
        code(viewer.reset_usage(key("k")).await),
        code(viewer.reload(ReloadRequest {}).await),
    ];
    for ((c, why), call) in
        writes
            .iter()
            .zip(["SetOverride", "DeleteOverride", "ResetUsage", "Reload"])
    {
        assert_eq!(*c, Status::PermissionDenied, "{call}");
        assert_eq!(
            why,
            &format!("token 'viewer' lacks the write scope that {call} needs")
        );
    }
    // Nothing the refused calls asked for happened.
    assert_eq!(code(ops.get_override(key("k")).await).0, Status::NotFound);
}

#[tokio::test]
async fn a_plan_override_applies_to_the_next_check_on_both_front_doors() {
    let d = daemon("").await;
    let mut ops = d.ops().await;
    // free: burst 20. Spend it.
    spend(&d, "alice", 20).await;
    assert!(!check(&d, "alice").await.allowed);

    let r = ops
        .set_override(SetOverrideRequest {
            reason: "upgrade, ticket 42".into(),
            ..set("alice", Target::Plan("gold".into()))
        })
        .await
        .expect("set")
        .into_inner();
    let o = r.r#override.expect("override");
    assert_eq!(o.plan, "gold");
    assert_eq!(o.created_by, "ops");
    assert!(o.resolved);
    assert_eq!(r.previous, None);
    let hash = d.engine.hasher().display(b"alice");
    assert_eq!(o.key_hash, hash);

    // The very next check is gold's.
    let c = check(&d, "alice").await;
    assert!(c.allowed);
    assert_eq!((c.policy.as_str(), c.limit), ("gold/per-second", 2000));
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let e = rls
        .should_rate_limit(request(
            "edge",
            vec![descriptor(&[("api_key", "alice")])],
            1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.overall_code, Code::Ok as i32);
    assert_eq!(
        e.statuses[0].current_limit.as_ref().unwrap().name,
        "gold/per-second"
    );

    // It is listed by hash, never by key.
    let got = ops.get_override(key("alice")).await.unwrap().into_inner();
    assert_eq!(got.reason, "upgrade, ticket 42");
    let by_hash = ops
        .get_override(KeyRef {
            key: String::new(),
            key_hash: hash.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_hash, got);

    // Deleted: back on free, whose bucket is still spent.
    let gone = ops
        .delete_override(key("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.previous.unwrap().plan, "gold");
    let c = check(&d, "alice").await;
    assert!(!c.allowed);
    assert_eq!(c.policy, "free/per-second");
    assert_eq!(
        code(ops.delete_override(key("alice")).await),
        (Status::NotFound, format!("key {hash} has no override"))
    );
}

#[tokio::test]
async fn an_override_can_bring_limits_of_its_own() {
    let d = daemon("").await;
    let mut ops = d.ops().await;
    let limits = LimitList {
        limits: vec![
            LimitSpec {
                name: "per-second".into(),
                rate: 3,
                per: "second".into(),
                burst: 3,
                ..Default::default()
            },
            LimitSpec {
                name: "hourly".into(),
                quota: 5,
                per: "hour".into(),
                ..Default::default()
            },
        ],
    };
    let o = ops
        .set_override(set("bob", Target::Limits(limits)))
        .await
        .unwrap()
        .into_inner()
        .r#override
        .unwrap();
    assert_eq!(o.plan, "override");
    assert_eq!(o.limits.len(), 2);
    for _ in 0..3 {
        let c = check(&d, "bob").await;
        assert!(c.allowed);
        assert_eq!(c.policy.split('/').next(), Some("override"));
    }
    let c = check(&d, "bob").await;
    assert!(!c.allowed);
    assert_eq!(c.policy, "override/per-second");
    d.advance_ms(1_000);
    spend(&d, "bob", 2).await;
    // Five an hour: spent.
    d.advance_ms(1_000);
    let c = check(&d, "bob").await;
    assert!(!c.allowed);
    assert_eq!(c.policy, "override/hourly");
    let u = ops.get_usage(key("bob")).await.unwrap().into_inner();
    assert_eq!(
        (u.plan.as_str(), u.source.as_str()),
        ("override", "override")
    );
    let hourly = u.limits.iter().find(|l| l.name == "hourly").unwrap();
    assert_eq!((hourly.used, hourly.remaining, hourly.limit), (5, 0, 5));
}

#[tokio::test]
async fn bad_override_requests_get_invalid_argument_naming_the_field() {
    let d = daemon("").await;
    let mut ops = d.ops().await;
    let bad_limit = |spec: LimitSpec| set("k", Target::Limits(LimitList { limits: vec![spec] }));
    let cases: Vec<(SetOverrideRequest, Status, &str)> = vec![
        (
            set("k", Target::Plan("platinum".into())),
            Status::InvalidArgument,
            "plan: unknown plan 'platinum' (defined plans: free, gold, tiny, open)",
        ),
        (
            SetOverrideRequest {
                target: None,
                ..set("k", Target::Block(true))
            },
            Status::InvalidArgument,
            "target: give one of plan, limits or block",
        ),
        (
            SetOverrideRequest {
                reason: String::new(),
                ..set("k", Target::Block(true))
            },
            Status::InvalidArgument,
            "reason: must not be empty: say why (it is kept with the override and in the audit log)",
        ),
        (
            SetOverrideRequest {
                reason: "two\nlines".into(),
                ..set("k", Target::Block(true))
            },
            Status::InvalidArgument,
            "reason: must not contain control characters (line breaks, tabs, escapes)",
        ),
        (
            SetOverrideRequest {
                key: String::new(),
                ..set("k", Target::Block(true))
            },
            Status::InvalidArgument,
            "key: give the API key, or key_hash",
        ),
        (
            SetOverrideRequest {
                key: "k".repeat(65),
                ..set("k", Target::Block(true))
            },
            Status::InvalidArgument,
            "key: 65 bytes exceeds the maximum of 64 bytes",
        ),
        (
            SetOverrideRequest {
                ttl: ttl(0),
                ..set("k", Target::Block(true))
            },
            Status::InvalidArgument,
            "ttl: must be more than 0",
        ),
        (
            bad_limit(LimitSpec {
                name: "r".into(),
                rate: 10,
                per: "week".into(),
                ..Default::default()
            }),
            Status::InvalidArgument,
            "limits[0].per: a rate cannot be per week (use second, minute, hour or day, or a quota for weeks and months)",
        ),
        (
            bad_limit(LimitSpec {
                name: "r".into(),
                rate: 10,
                per: "second".into(),
                strict: true,
                ..Default::default()
            }),
            Status::InvalidArgument,
            "limits: strict limits are decided in Redis, and this node has no redis section",
        ),
    ];
    for (req, want_code, want) in cases {
        assert_eq!(
            code(ops.set_override(req).await),
            (want_code, want.to_owned())
        );
    }
    // None of them left an override behind.
    let list = ops
        .list_overrides(ListOverridesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 0);
}

#[tokio::test]
async fn a_block_denies_until_it_ends_and_says_when() {
    let d = daemon("").await;
    let mut ops = d.ops().await;
    ops.set_override(SetOverrideRequest {
        ttl: ttl(60),
        reason: "abuse from this key".into(),
        ..set("mallory", Target::Block(true))
    })
    .await
    .unwrap();
    let c = check(&d, "mallory").await;
    assert!(!c.allowed);
    assert_eq!(c.reason, DenyReason::Blocked as i32);
    assert_eq!(c.retry_after.unwrap().seconds, 60);
    let retry: Vec<_> = c
        .headers
        .iter()
        .filter(|h| h.name == "Retry-After")
        .map(|h| h.value.as_str())
        .collect();
    assert_eq!(retry, ["60"]);
    // Envoy: over limit, with the same wait.
    let mut rls = RateLimitServiceClient::new(d.channel().await);
    let e = rls
        .should_rate_limit(request(
            "edge",
            vec![descriptor(&[("api_key", "mallory")])],
            1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.overall_code, Code::OverLimit as i32);
    let headers: Vec<(&str, &str)> = e
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(headers, [("Retry-After", "60")]);
    // Usage says so.
    let u = ops.get_usage(key("mallory")).await.unwrap().into_inner();
    assert!(u.blocked);
    assert!(u.limits.is_empty());
    // A nanosecond before the end it still holds; at the end it is gone.
    d.clock.advance(60_000_000_000 - 1);
    assert!(!check(&d, "mallory").await.allowed);
    d.clock.advance(1);
    let c = check(&d, "mallory").await;
    assert!(c.allowed);
    assert_eq!(c.policy, "free/per-second");
    assert_eq!(
        code(ops.get_override(key("mallory")).await).0,
        Status::NotFound
    );
}

#[tokio::test]
async fn a_plan_override_expires_back_to_the_usual_plan() {
    let d = daemon("").await;
    let mut ops = d.ops().await;
    ops.set_override(SetOverrideRequest {
        ttl: ttl(10),
        ..set("carol", Target::Plan("tiny".into()))
    })
    .await
    .unwrap();
    assert_eq!(check(&d, "carol").await.policy, "tiny/per-minute");
    let listed = ops
        .list_overrides(ListOverridesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 1);
    d.advance_ms(10_000);
    assert_eq!(check(&d, "carol").await.policy, "free/per-second");
    let listed = ops
        .list_overrides(ListOverridesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((listed.total, listed.overrides.len()), (0, 0));
    // An override of a statically assigned key wins over the config, and
    // when it ends the static assignment is back.
    ops.set_override(SetOverrideRequest {
        ttl: ttl(5),
        ..set("gold-key", Target::Plan("tiny".into()))
    })
    .await
    .unwrap();
    assert_eq!(check(&d, "gold-key").await.policy, "tiny/per-minute");
    d.advance_ms(5_000);
    assert_eq!(check(&d, "gold-key").await.policy, "gold/per-second");
}

#[tokio::test]
async fn usage_shows_what_was_spent_and_reset_gives_it_back() {
    let d = daemon("").await;
    let mut ops = d.ops().await;
    spend(&d, "dave", 15).await;
    let u = ops.get_usage(key("dave")).await.unwrap().into_inner();
    assert_eq!((u.plan.as_str(), u.source.as_str()), ("free", "default"));
    let per: Vec<(&str, &str, u64, u64, u64)> = u
        .limits
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.kind.as_str(),
                l.used,
                l.remaining,
                l.limit,
            )
        })
        .collect();
    assert_eq!(
        per,
        [
            ("per-second", "rate", 15, 5, 20),
            ("daily", "quota", 15, 85, 100)
        ]
    );
    assert_eq!(u.config.unwrap().number, 1);
    // A key with a static plan says so.
    let u = ops.get_usage(key("gold-key")).await.unwrap().into_inner();
    assert_eq!((u.plan.as_str(), u.source.as_str()), ("gold", "static"));

    let r = ops.reset_usage(key("dave")).await.unwrap().into_inner();
    assert_eq!(r.cells, 2);
    let after = r.usage.unwrap();
    assert!(after.limits.iter().all(|l| l.used == 0), "{after:?}");
    spend(&d, "dave", 20).await;
    // Resetting a key that spent nothing is fine and drops nothing.
    let r = ops.reset_usage(key("nobody")).await.unwrap().into_inner();
    assert_eq!(r.cells, 0);
}

#[tokio::test]
async fn overrides_are_listed_by_page_and_filtered() {
    let d = daemon("").await;
    let mut ops = d.ops().await;
    for k in ["a", "b", "c"] {
        ops.set_override(set(k, Target::Plan("gold".into())))
            .await
            .unwrap();
    }
    for k in ["x", "y"] {
        ops.set_override(set(k, Target::Block(true))).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = ops
            .list_overrides(ListOverridesRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.overrides.len() <= 2);
        assert_eq!(page.total, 5);
        seen.extend(page.overrides.into_iter().map(|o| o.key_hash));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages are in key hash order");
    assert_eq!(seen.len(), 5);
    let gold = ops
        .list_overrides(ListOverridesRequest {
            plan: "gold".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gold.overrides.len(), 3);
    let blocks = ops
        .list_overrides(ListOverridesRequest {
            blocked: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(blocks.overrides.len(), 2);
    assert!(blocks.overrides.iter().all(|o| o.block));
    assert_eq!(
        code(
            ops.list_overrides(ListOverridesRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await
        ),
        (
            Status::InvalidArgument,
            "page_token: not a token from a previous page (16 hex digits)".to_owned()
        )
    );
    // Plans count them.
    let plans = ops
        .list_plans(ListPlansRequest {})
        .await
        .unwrap()
        .into_inner();
    let gold = plans.plans.iter().find(|p| p.name == "gold").unwrap();
    assert_eq!((gold.overrides, gold.static_keys), (3, 1));
    let free = plans.plans.iter().find(|p| p.name == "free").unwrap();
    assert!(free.is_default);
    assert_eq!(
        free.limits
            .iter()
            .map(|l| l.description.as_str())
            .collect::<Vec<_>>(),
        ["per-second 10/second burst 20", "daily 100/day"]
    );
}

#[tokio::test]
async fn the_override_cap_holds_and_replacing_always_fits() {
    let d = daemon("  max_overrides: 2\n").await;
    let mut ops = d.ops().await;
    for k in ["a", "b"] {
        ops.set_override(set(k, Target::Block(true))).await.unwrap();
    }
    assert_eq!(
        code(ops.set_override(set("c", Target::Block(true))).await),
        (
            Status::ResourceExhausted,
            "too many overrides: 2 are in force (admin.max_overrides); delete some first"
                .to_owned()
        )
    );
    ops.set_override(set("a", Target::Plan("gold".into())))
        .await
        .expect("replacing an override fits");
}

#[tokio::test]
async fn every_change_is_audited_with_who_what_when_and_before_after() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let d = daemon(&format!("  audit_file: {}\n", audit.display())).await;
    let mut ops = d.ops().await;
    spend(&d, "erin-secret-key", 3).await;
    ops.set_override(SetOverrideRequest {
        reason: "trial upgrade".into(),
        ..set("erin-secret-key", Target::Plan("gold".into()))
    })
    .await
    .unwrap();
    ops.set_override(SetOverrideRequest {
        ttl: ttl(3600),
        reason: "abuse".into(),
        ..set("erin-secret-key", Target::Block(true))
    })
    .await
    .unwrap();
    ops.delete_override(key("erin-secret-key")).await.unwrap();
    ops.reset_usage(key("erin-secret-key")).await.unwrap();
    // Reads are not audited.
    ops.get_usage(key("erin-secret-key")).await.unwrap();

    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains("erin-secret-key"),
        "the key never appears: {text}"
    );
    let hash = d.engine.hasher().display(b"erin-secret-key");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    let rows: Vec<(&str, &str, &str, &str)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["who"], "ops");
            assert_eq!(l["outcome"], "done");
            assert_eq!(l["key_hash"], hash.as_str());
            assert_eq!(l["at"], "2026-11-27T12:00:00Z");
            assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
            (
                l["action"].as_str().unwrap(),
                l["old"].as_str().unwrap(),
                l["new"].as_str().unwrap(),
                l["reason"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("override.set", "none", "plan gold", "trial upgrade"),
            (
                "override.set",
                "plan gold",
                "block until 2026-11-27T13:00:00Z",
                "abuse"
            ),
            (
                "override.delete",
                "block until 2026-11-27T13:00:00Z",
                "none",
                "-"
            ),
            (
                "usage.reset",
                "per-second 3/20 used, daily 3/100 used",
                "reset",
                "-"
            ),
        ]
    );
}

#[tokio::test]
async fn reload_without_files_changes_nothing() {
    // A config given as text (no file) reloads as itself.
    let d = daemon("").await;
    let mut ops = d.ops().await;
    let r = ops.reload(ReloadRequest {}).await.unwrap().into_inner();
    assert!(!r.changed);
    assert_eq!(r.config.unwrap().number, 1);
}

/// A token no configured hash matches.
const BAD_TOKEN: &str = "qd_not-a-configured-token-0123456789abcdef";

/// `N` calls refused for each reason, at once; how long they took.
async fn hammer_refused(d: &crate::support::process::Daemon, n: usize) -> std::time::Duration {
    let started = tokio::time::Instant::now();
    let mut anon = d.admin_client(None).await;
    let mut malformed = d.admin_client(Some("")).await;
    let mut bad = d.admin_client(Some(BAD_TOKEN)).await;
    let mut viewer = d.admin_client(Some(VIEWER_TOKEN)).await;
    let block = || set("alice", Target::Block(true));
    let no_token = async {
        for _ in 0..n {
            let e = anon.get_usage(key("alice")).await.unwrap_err();
            assert_eq!(e.code(), Status::Unauthenticated);
        }
    };
    let malformed = async {
        for _ in 0..n {
            let e = malformed.reset_usage(key("alice")).await.unwrap_err();
            assert_eq!(e.code(), Status::Unauthenticated);
        }
    };
    let bad_token = async {
        for _ in 0..n {
            let e = bad.set_override(block()).await.unwrap_err();
            assert_eq!(e.code(), Status::Unauthenticated);
        }
    };
    let missing_scope = async {
        for _ in 0..n {
            let e = viewer.set_override(block()).await.unwrap_err();
            assert_eq!(e.code(), Status::PermissionDenied);
        }
    };
    tokio::join!(no_token, malformed, bad_token, missing_scope);
    started.elapsed()
}

/// The `name=value` field of a text log line.
fn log_field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_calls_is_counted_whole_and_logged_a_line_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::write_file(
        dir.path(),
        "quotad.yaml",
        &format!("{CONFIG}{}reload: {{ watch: false }}\n", admin_section("")),
    );
    let mut d =
        crate::support::process::spawn_serve(&["--config", &config.display().to_string()]).await;
    let http: std::net::SocketAddr = d.http.parse().unwrap();
    const N: usize = 500;
    let took = hammer_refused(&d, N).await;
    // The metric counts every refusal, by reason.
    for reason in ["no_token", "malformed_token", "bad_token", "missing_scope"] {
        let series = format!("quotad_admin_refused_total{{reason=\"{reason}\"}}");
        crate::support::metric_reaches(http, &series, N as f64).await;
    }
    d.signal("-TERM");
    let log = d.log_to_exit().await;
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
    // The log: at most a line per reason and started second, each saying
    // how many of its reason it left out since the one before.
    let refused: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("admin call refused"))
        .collect();
    let per_reason = took.as_secs() + 2;
    assert!(
        refused.len() as u64 <= 4 * per_reason,
        "{} lines for {} refusals in {took:?}:\n{refused:#?}",
        refused.len(),
        4 * N
    );
    let mut accounted = 0;
    for line in &refused {
        let suppressed: usize = log_field(line, "suppressed")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no suppressed count: {line}"));
        accounted += 1 + suppressed;
        assert!(log_field(line, "reason").is_some(), "{line}");
        assert!(!line.contains(BAD_TOKEN), "never the token: {line}");
        assert!(!line.contains(VIEWER_TOKEN), "never the token: {line}");
    }
    assert!(accounted <= 4 * N, "{accounted}");
    assert!(log.iter().all(|l| !l.contains(BAD_TOKEN)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reloads_and_refused_changes_reach_the_audit_file_without_flooding_it() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let text = format!(
        "{CONFIG}{}reload: {{ watch: true, poll_interval: 20ms, debounce: 20ms }}\n",
        admin_section(&format!("  audit_file: {}\n", audit.display()))
    );
    let config = crate::support::write_file(dir.path(), "quotad.yaml", &text);
    let shown = config.display().to_string();
    let mut d = crate::support::process::spawn_serve(&["--config", &shown]).await;
    let mut ops = d.admin_client(Some(crate::support::OPS_TOKEN)).await;

    // A broken file, refused by the watcher, then by SIGHUP and Reload.
    let tmp = dir.path().join("quotad.tmp");
    std::fs::write(&tmp, "default_plan: nope\nplans: { p: {} }\n").unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    d.wait_log("config reload refused").await;
    d.signal("-HUP");
    let line = d.wait_log("config reload refused").await;
    assert!(line.contains("SIGHUP"), "{line}");
    let e = ops.reload(ReloadRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Status::FailedPrecondition);
    let error = e.message().to_owned();
    assert!(error.starts_with(&shown), "{error}");

    // Refused changes, a burst of each reason, then one more each once the
    // trail's second has passed: its record counts those left out.
    const N: u64 = 200;
    let took = refuse_changes(&d, N).await;
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));

    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains(BAD_TOKEN) && !text.contains(VIEWER_TOKEN),
        "never a token"
    );
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    // The three failed reloads, with cause and error; the admin one names
    // its caller.
    let failed: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["outcome"] == "failed")
        .collect();
    let causes: Vec<&str> = failed
        .iter()
        .map(|r| r["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["file change", "SIGHUP", "admin Reload"], "{text}");
    for r in &failed {
        assert_eq!(r["action"], "config.reload");
        assert_eq!(r["error"], error.as_str());
    }
    assert_eq!(
        (failed[0]["who"].as_str(), failed[0].get("peer")),
        (Some("-"), None)
    );
    assert_eq!(failed[2]["who"], "ops");
    assert!(
        failed[2]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_refusals_recorded(&records, N + 1, took);
    // Nothing else was written: no change was made.
    let other: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| {
            let outcome = r["outcome"].as_str().unwrap_or("");
            outcome != "failed" && !outcome.starts_with("refused: ")
        })
        .collect();
    assert!(other.is_empty(), "{other:#?}");
}

/// Refused changes of every reason through `d`'s admin API: `n` each, then,
/// a second later, one more each. How long it took.
async fn refuse_changes(d: &crate::support::process::Daemon, n: u64) -> std::time::Duration {
    let mut anon = d.admin_client(None).await;
    let mut malformed = d.admin_client(Some("")).await;
    let mut bad = d.admin_client(Some(BAD_TOKEN)).await;
    let mut viewer = d.admin_client(Some(VIEWER_TOKEN)).await;
    let started = tokio::time::Instant::now();
    for round in 0..2 {
        let n = if round == 0 { n } else { 1 };
        for _ in 0..n {
            anon.delete_override(key("alice")).await.unwrap_err();
            malformed.reset_usage(key("alice")).await.unwrap_err();
            bad.set_override(set("alice", Target::Block(true)))
                .await
                .unwrap_err();
            viewer.reload(ReloadRequest {}).await.unwrap_err();
        }
        if round == 0 {
            // The trail lets a reason through once a second.
            tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        }
    }
    started.elapsed()
}

/// The audit `records` of [`refuse_changes`]'s `total` refusals per reason
/// over `took`: few, and accounting for every one.
fn assert_refusals_recorded(records: &[serde_json::Value], total: u64, took: std::time::Duration) {
    // Refused changes: few records, which account for every refusal.
    let per_reason = took.as_secs() + 2;
    for (reason, action, who) in [
        ("no_token", "override.delete", "-"),
        ("malformed_token", "usage.reset", "-"),
        ("bad_token", "override.set", "-"),
        ("missing_scope", "config.reload", "viewer"),
    ] {
        let of: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["outcome"] == format!("refused: {reason}").as_str())
            .collect();
        assert!(
            !of.is_empty() && of.len() as u64 <= per_reason,
            "{reason}: {} records in {took:?}",
            of.len()
        );
        let accounted: u64 = of
            .iter()
            .map(|r| 1 + r["suppressed"].as_u64().unwrap())
            .sum();
        assert_eq!(accounted, total, "{reason}");
        for r in of {
            assert_eq!(
                (r["action"].as_str(), r["who"].as_str()),
                (Some(action), Some(who))
            );
            assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
            assert!(!r["error"].as_str().unwrap().is_empty());
        }
    }
}
