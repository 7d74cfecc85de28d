//! Between the admin API's wire messages and the engine's types: naming
//! keys (a raw key, hashed on arrival, or a key hash), reading an
//! override request, and describing overrides, usage, plans and config
//! versions. Every refusal is `INVALID_ARGUMENT` naming the field.

use tonic::Status;

use crate::api::pb;
use crate::api::{duration, validate};
use crate::config::RequestCaps;
use crate::control::{ConfigVersion, ReloadStats};
use crate::core::clock::NANOS_PER_SEC;
use crate::core::hash::hex16;
use crate::core::{KeyHasher, Nanos, Verdict};
use crate::engine::Usage;
use crate::engine::leases::LeaseUsage;
use crate::limits::file::{describe_concurrency, describe_limit};
use crate::limits::overrides::{LimitSpec, MAX_REASON_BYTES, OwnLimits, check_text};
use crate::limits::{Assigned, Concurrency, Limit, LimitKind, Override, Plan, Source, Target};

/// Longest an override may last: ten years.
const MAX_TTL: Nanos = 10 * 366 * 86_400 * NANOS_PER_SEC;
/// Page size of `ListOverrides` when none is asked for, and the most.
pub const DEFAULT_PAGE: usize = 100;
/// The largest page.
pub const MAX_PAGE: usize = 1_000;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// The key hash a request names, by `key` (checked against the request
/// caps, hashed with `hasher`) or `key_hash` (16 hex digits): exactly one.
pub fn key_hash(
    key: &str,
    hash: &str,
    caps: &RequestCaps,
    hasher: &KeyHasher,
) -> Result<u64, Status> {
    match (key.is_empty(), hash.is_empty()) {
        (true, true) => Err(invalid("key", "give the API key, or key_hash")),
        (false, false) => Err(invalid("key_hash", "give key or key_hash, not both")),
        (false, true) => {
            validate::key(|| "key".into(), key, caps)?;
            Ok(hasher.key_hash(key.as_bytes()))
        }
        (true, false) => parse_hash(hash).ok_or_else(|| {
            invalid(
                "key_hash",
                "expected 16 hex digits, as listings and logs show a key",
            )
        }),
    }
}

/// 16 hex digits → a key hash.
pub fn parse_hash(hex: &str) -> Option<u64> {
    let hex = hex.trim();
    (hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// What a `SetOverrideRequest` asks for.
pub fn target(t: Option<pb::set_override_request::Target>) -> Result<Target, Status> {
    use pb::set_override_request::Target as T;
    match t {
        None => Err(invalid("target", "give one of plan, limits or block")),
        Some(T::Plan(p)) if p.trim().is_empty() => Err(invalid("plan", "must not be empty")),
        Some(T::Plan(p)) => Ok(Target::Plan(p)),
        Some(T::Block(false)) => Err(invalid(
            "block",
            "set it to true to block the key, or give plan or limits",
        )),
        Some(T::Block(true)) => Ok(Target::Block),
        Some(T::Limits(list)) => {
            if list.limits.is_empty() {
                return Err(invalid(
                    "limits",
                    "give at least one limit (an override without limits would allow everything: give a plan with no limits for that)",
                ));
            }
            let specs = list
                .limits
                .into_iter()
                .map(|l| LimitSpec {
                    name: l.name,
                    rate: (l.rate > 0).then_some(l.rate),
                    quota: (l.quota > 0).then_some(l.quota),
                    per: l.per,
                    burst: (l.burst > 0).then_some(l.burst),
                    strict: l.strict,
                    concurrency: (l.concurrency > 0).then_some(l.concurrency),
                    lease_ttl_ms: l.lease_ttl.map(|d| duration_ms(&d)),
                })
                .collect();
            OwnLimits::new(specs)
                .map(Target::Limits)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        }
    }
}

/// When an override asked for at `now` ends: `expires_at` or `now + ttl`
/// (not both), in the future and within ten years; `None` without either.
pub fn expiry(
    expires_at: Option<prost_types::Timestamp>,
    ttl: Option<prost_types::Duration>,
    now: Nanos,
) -> Result<Option<Nanos>, Status> {
    let field = if ttl.is_some() { "ttl" } else { "expires_at" };
    let at = match (expires_at, ttl) {
        (Some(_), Some(_)) => return Err(invalid("ttl", "give expires_at or ttl, not both")),
        (None, None) => return Ok(None),
        (Some(t), None) => {
            if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
                return Err(invalid("expires_at", "must be a time after 1970"));
            }
            let at = (t.seconds as u64)
                .saturating_mul(NANOS_PER_SEC)
                .saturating_add(t.nanos as u64);
            if at <= now {
                return Err(invalid(
                    "expires_at",
                    format!(
                        "{} is not in the future (now is {})",
                        crate::core::clock::rfc3339(at),
                        crate::core::clock::rfc3339(now)
                    ),
                ));
            }
            at
        }
        (None, Some(d)) => {
            if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
                return Err(invalid("ttl", "must be more than 0"));
            }
            let ttl = (d.seconds as u64)
                .saturating_mul(NANOS_PER_SEC)
                .saturating_add(d.nanos as u64);
            now.saturating_add(ttl)
        }
    };
    if at.saturating_sub(now) > MAX_TTL {
        return Err(invalid(field, "must be within ten years"));
    }
    Ok(Some(at))
}

/// An operator's reason: required, one line, at most 512 bytes.
pub fn reason(text: &str) -> Result<(), Status> {
    if text.trim().is_empty() {
        return Err(invalid(
            "reason",
            "must not be empty: say why (it is kept with the override and in the audit log)",
        ));
    }
    check_text("reason", text, MAX_REASON_BYTES)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A Unix time in nanoseconds as a protobuf `Timestamp`.
pub use crate::api::timestamp;

/// An override as the API shows it.
pub fn override_message(o: &Override, resolved: bool) -> pb::Override {
    let (plan, limits, block) = match &o.target {
        Target::Plan(p) => (p.clone(), Vec::new(), false),
        Target::Limits(l) => (
            crate::limits::overrides::OVERRIDE_PLAN.to_owned(),
            l.specs().iter().map(spec_message).collect(),
            false,
        ),
        Target::Block => (String::new(), Vec::new(), true),
    };
    pb::Override {
        key_hash: hex16(o.key_hash),
        plan,
        limits,
        block,
        expires_at: o.expires_at.map(timestamp),
        reason: o.reason.clone(),
        created_by: o.author.clone(),
        updated_at: Some(timestamp(o.updated_at)),
        resolved,
    }
}

fn spec_message(s: &LimitSpec) -> pb::LimitSpec {
    pb::LimitSpec {
        name: s.name.clone(),
        rate: s.rate.unwrap_or(0),
        quota: s.quota.unwrap_or(0),
        per: s.per.clone(),
        burst: s.burst.unwrap_or(0),
        strict: s.strict,
        concurrency: s.concurrency.unwrap_or(0),
        lease_ttl: s
            .lease_ttl_ms
            .map(|ms| duration(ms.saturating_mul(1_000_000))),
    }
}

/// A wire duration in whole milliseconds; negative ones are 0.
fn duration_ms(d: &prost_types::Duration) -> u64 {
    let ms = i128::from(d.seconds) * 1_000 + i128::from(d.nanos) / 1_000_000;
    u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
}

/// An Envoy RLQS bucket carrying a key, as the API shows it.
pub fn rlqs_usage(u: &crate::engine::rlqs::BucketUsage) -> pb::RlqsBucketUsage {
    use crate::engine::rlqs::Strategy;
    let rate = u.rate.unwrap_or(0.0);
    pb::RlqsBucketUsage {
        domain: u.domain.clone(),
        bucket: u
            .id
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        rule: u.rule.as_ref().map(|(_, r)| r.clone()).unwrap_or_default(),
        action: u.action.to_owned(),
        blocked: u.blocked,
        global_rate: rate,
        burst: u.burst.unwrap_or(0),
        envoys: u.all.count(),
        demand: u.all.total(rate),
        shares: u
            .shares
            .iter()
            .map(|s| {
                let (rate, max_tokens) = match s.held {
                    Some(Strategy::Bucket(f)) => (f.rate(), f.max_tokens),
                    _ => (0.0, 0),
                };
                pb::RlqsShare {
                    envoy: s.envoy.clone(),
                    demand: s.demand,
                    action: s.held.map_or("", |h| h.kind()).to_owned(),
                    rate,
                    max_tokens,
                }
            })
            .collect(),
        other_nodes_envoys: u.remote.count(),
        other_nodes_demand: u.remote.total(rate),
    }
}

/// A plan's concurrency limit as the API lists it.
pub fn concurrency_limit(c: &Concurrency) -> pb::PlanLimit {
    pb::PlanLimit {
        name: c.name.clone(),
        policy: c.policy.clone(),
        kind: "concurrency".to_owned(),
        limit: u64::from(c.slots),
        window_seconds: c.lease_ttl / NANOS_PER_SEC,
        strict: false,
        description: describe_concurrency(c),
    }
}

/// Where a key stands against its concurrency limit, as the API shows it.
pub fn concurrency_usage(u: &LeaseUsage) -> pb::ConcurrencyUsage {
    pb::ConcurrencyUsage {
        name: u.concurrency.name.clone(),
        policy: u.concurrency.policy.clone(),
        limit: u64::from(u.concurrency.slots),
        in_use: u.in_use,
        lease_ttl: Some(duration(u.concurrency.lease_ttl)),
        leases: u
            .leases
            .iter()
            .map(|&(slots, expires)| pb::LeaseUsage {
                slots: u64::from(slots),
                expires_at: Some(timestamp(expires)),
            })
            .collect(),
    }
}

fn kind(l: &Limit) -> &'static str {
    match l.kind {
        LimitKind::Rate(_) => "rate",
        LimitKind::Quota(_) => "quota",
        LimitKind::Window(_) => "window",
    }
}

/// A plan's limit as the API shows it.
pub fn plan_limit(l: &Limit) -> pb::PlanLimit {
    pb::PlanLimit {
        name: l.name.clone(),
        policy: l.policy.clone(),
        kind: kind(l).to_owned(),
        limit: l.capacity(),
        window_seconds: l.window_seconds(),
        strict: l.strict,
        description: describe_limit(l),
    }
}

fn limit_usage(l: &Limit, v: &Verdict) -> pb::LimitUsage {
    pb::LimitUsage {
        name: l.name.clone(),
        policy: l.policy.clone(),
        kind: kind(l).to_owned(),
        limit: l.capacity(),
        remaining: v.remaining,
        used: l.capacity().saturating_sub(v.remaining),
        reset_after: Some(duration(v.reset_after)),
        window_seconds: l.window_seconds(),
        strict: l.strict,
        description: describe_limit(l),
    }
}

/// Where `source` says a plan came from.
pub fn source(s: Source) -> &'static str {
    match s {
        Source::Override => "override",
        Source::Static => "static",
        Source::Default => "default",
    }
}

/// A key's usage as the API shows it.
pub fn usage_message(
    key_hash: u64,
    usage: &Usage<'_>,
    over: Option<pb::Override>,
    config: pb::ConfigVersion,
) -> pb::GetUsageResponse {
    let (blocked, blocked_until) = match usage.assigned {
        Assigned::Blocked { until } => (true, until.map(timestamp)),
        Assigned::Plan(_) => (false, None),
    };
    pb::GetUsageResponse {
        key_hash: hex16(key_hash),
        plan: usage
            .plan
            .map(|p: &Plan| p.name.clone())
            .unwrap_or_default(),
        source: source(usage.source).to_owned(),
        blocked,
        blocked_until,
        limits: usage
            .limits
            .iter()
            .map(|(l, v)| limit_usage(l, v))
            .collect(),
        r#override: over,
        config: Some(config),
        concurrency: None,
        rlqs: Vec::new(),
        global: false,
        as_of: None,
        note: String::new(),
    }
}

/// A one-line summary of a key's usage for the audit log:
/// `per-second 5/20 used, daily 12/100 used`.
pub fn usage_summary(usage: &Usage<'_>) -> String {
    if usage.limits.is_empty() {
        return "nothing to reset".to_owned();
    }
    usage
        .limits
        .iter()
        .map(|(l, v)| {
            format!(
                "{} {}/{} used",
                l.name,
                l.capacity().saturating_sub(v.remaining),
                l.capacity()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The config version as the API shows it.
pub fn version_message(v: &ConfigVersion, stats: &ReloadStats) -> pb::ConfigVersion {
    pb::ConfigVersion {
        number: v.number,
        digest: v.short_digest().to_owned(),
        loaded_at: Some(timestamp(v.loaded_at)),
        reloads_ok: stats.ok,
        reloads_failed: stats.failed,
        last_error: stats.last_error.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Nanos = 1_795_780_800 * NANOS_PER_SEC;

    #[test]
    fn keys_are_named_by_key_or_hash_exactly_once() {
        let h = KeyHasher::with_secret([1; 16]);
        let caps = RequestCaps::default();
        assert_eq!(
            key_hash("alice", "", &caps, &h).unwrap(),
            h.key_hash(b"alice")
        );
        assert_eq!(key_hash("", "00000000000000ff", &caps, &h).unwrap(), 0xff);
        let msg = |k: &str, x: &str| key_hash(k, x, &caps, &h).unwrap_err().message().to_owned();
        assert_eq!(msg("", ""), "key: give the API key, or key_hash");
        assert_eq!(
            msg("a", "00000000000000ff"),
            "key_hash: give key or key_hash, not both"
        );
        assert!(msg("", "xyz").starts_with("key_hash: expected 16 hex digits"));
        assert!(msg(&"k".repeat(300), "").starts_with("key: 300 bytes exceeds"));
    }

    #[test]
    fn expiry_is_a_future_time_or_a_positive_ttl() {
        let ts = |s: i64| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        let d = |s: i64| {
            Some(prost_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        let now_s = (NOW / NANOS_PER_SEC) as i64;
        assert_eq!(expiry(None, None, NOW).unwrap(), None);
        assert_eq!(
            expiry(None, d(60), NOW).unwrap(),
            Some(NOW + 60 * NANOS_PER_SEC)
        );
        assert_eq!(
            expiry(ts(now_s + 5), None, NOW).unwrap(),
            Some(NOW + 5 * NANOS_PER_SEC)
        );
        let msg = |e: Result<Option<Nanos>, Status>| e.unwrap_err().message().to_owned();
        assert_eq!(
            msg(expiry(ts(now_s + 5), d(5), NOW)),
            "ttl: give expires_at or ttl, not both"
        );
        assert_eq!(msg(expiry(None, d(0), NOW)), "ttl: must be more than 0");
        assert_eq!(msg(expiry(None, d(-3), NOW)), "ttl: must be more than 0");
        assert!(msg(expiry(ts(now_s - 1), None, NOW)).contains("is not in the future"));
        assert_eq!(
            msg(expiry(None, d(20 * 366 * 86_400), NOW)),
            "ttl: must be within ten years"
        );
    }

    #[test]
    fn targets_name_what_is_missing_or_wrong() {
        use pb::set_override_request::Target as T;
        let msg = |t| target(t).unwrap_err().message().to_owned();
        assert_eq!(msg(None), "target: give one of plan, limits or block");
        assert_eq!(msg(Some(T::Plan(" ".into()))), "plan: must not be empty");
        assert!(msg(Some(T::Block(false))).starts_with("block: set it to true"));
        assert!(
            msg(Some(T::Limits(pb::LimitList { limits: vec![] })))
                .starts_with("limits: give at least one limit")
        );
        let bad = pb::LimitSpec {
            name: "x".into(),
            rate: 5,
            quota: 5,
            per: "second".into(),
            ..Default::default()
        };
        assert_eq!(
            msg(Some(T::Limits(pb::LimitList { limits: vec![bad] }))),
            "limits[0].quota: a limit has either rate or quota, not both"
        );
        assert_eq!(target(Some(T::Block(true))).unwrap(), Target::Block);
    }

    #[test]
    fn reasons_are_required_and_one_line() {
        assert!(reason("ticket 42").is_ok());
        assert!(
            reason("  ")
                .unwrap_err()
                .message()
                .starts_with("reason: must not be empty")
        );
        assert!(reason("a\u{1b}[31m").is_err());
    }
}
