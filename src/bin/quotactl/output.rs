//! How quotactl shows answers: aligned tables for people (the default),
//! JSON for scripts (`-o json`, one document on stdout, field names as
//! in the admin API's messages). Keys appear only as their hashes.

use quotad::api::pb;
use serde_json::{Value, json};

/// `-o table` or `-o json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Rows under a header, columns padded to line up.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Label/value lines for one object.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

/// A timestamp as RFC 3339 (UTC, seconds).
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    match t {
        Some(t) if t.seconds >= 0 => quotad::core::clock::rfc3339(
            (t.seconds as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.nanos.max(0) as u64),
        ),
        _ => String::new(),
    }
}

/// A duration as people read it: `0.35s`, `42s`, `3m20s`, `11h59m`,
/// `29d23h`.
pub fn span(d: Option<&prost_types::Duration>) -> String {
    let Some(d) = d else {
        return String::new();
    };
    let secs = d.seconds.max(0) as u64;
    let (m, h, day) = (60, 3_600, 86_400);
    if secs < 10 {
        let total = secs as f64 + f64::from(d.nanos.max(0)) / 1e9;
        return format!("{total:.2}s");
    }
    match secs {
        s if s < m => format!("{s}s"),
        s if s < h => format!("{}m{}s", s / m, s % m),
        s if s < day => format!("{}h{}m", s / h, (s % h) / m),
        s => format!("{}d{}h", s / day, (s % day) / h),
    }
}

fn ts_json(t: Option<&prost_types::Timestamp>) -> Value {
    match t {
        Some(_) => json!(time(t)),
        None => Value::Null,
    }
}

fn duration_json(d: Option<&prost_types::Duration>) -> Value {
    match d {
        Some(d) => json!(d.seconds as f64 + f64::from(d.nanos) / 1e9),
        None => Value::Null,
    }
}

/// What an override gives, in a few words.
pub fn target(o: &pb::Override) -> String {
    if o.block {
        return "block".to_owned();
    }
    if o.limits.is_empty() {
        return format!("plan {}", o.plan);
    }
    let limits: Vec<String> = o.limits.iter().map(limit_spec).collect();
    format!("limits {}", limits.join("; "))
}

fn limit_spec(l: &pb::LimitSpec) -> String {
    if l.concurrency > 0 {
        let ttl = l.lease_ttl.as_ref().map_or(30, |d| d.seconds);
        return format!("{} {} at once, lease {ttl}s", l.name, l.concurrency);
    }
    let mut text = if l.rate > 0 {
        let burst = if l.burst > 0 { l.burst } else { l.rate };
        format!("{} {}/{} burst {burst}", l.name, l.rate, l.per)
    } else {
        format!("{} {}/{}", l.name, l.quota, l.per)
    };
    if l.strict {
        text.push_str(" (strict)");
    }
    text
}

fn spec_json(l: &pb::LimitSpec) -> Value {
    if l.concurrency > 0 {
        return json!({
            "name": l.name,
            "concurrency": l.concurrency,
            "lease_ttl_seconds": duration_json(l.lease_ttl.as_ref()),
        });
    }
    let mut v = json!({ "name": l.name, "per": l.per, "strict": l.strict });
    if l.rate > 0 {
        v["rate"] = json!(l.rate);
        v["burst"] = json!(if l.burst > 0 { l.burst } else { l.rate });
    } else {
        v["quota"] = json!(l.quota);
    }
    v
}

pub fn override_json(o: &pb::Override) -> Value {
    json!({
        "key_hash": o.key_hash,
        "plan": if o.block { Value::Null } else { json!(o.plan) },
        "limits": o.limits.iter().map(spec_json).collect::<Vec<_>>(),
        "block": o.block,
        "expires_at": ts_json(o.expires_at.as_ref()),
        "reason": o.reason,
        "created_by": o.created_by,
        "updated_at": ts_json(o.updated_at.as_ref()),
        "resolved": o.resolved,
    })
}

pub fn override_fields(o: &pb::Override) -> String {
    let mut pairs = vec![
        ("key hash", o.key_hash.clone()),
        ("gives", target(o)),
        (
            "expires",
            match &o.expires_at {
                Some(_) => time(o.expires_at.as_ref()),
                None => "never (until deleted)".to_owned(),
            },
        ),
        ("reason", o.reason.clone()),
        ("set by", o.created_by.clone()),
        ("updated", time(o.updated_at.as_ref())),
    ];
    if !o.resolved {
        pairs.push((
            "note",
            format!(
                "this server's config has no plan '{}': the key stays on its usual plan there",
                o.plan
            ),
        ));
    }
    fields(&pairs)
}

pub fn overrides_table(list: &[pb::Override]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|o| {
            vec![
                o.key_hash.clone(),
                target(o),
                match &o.expires_at {
                    Some(_) => time(o.expires_at.as_ref()),
                    None => "never".to_owned(),
                },
                o.created_by.clone(),
                o.reason.clone(),
            ]
        })
        .collect();
    table(&["KEY HASH", "GIVES", "EXPIRES", "SET BY", "REASON"], &rows)
}

pub fn version_json(v: Option<&pb::ConfigVersion>) -> Value {
    match v {
        None => Value::Null,
        Some(v) => json!({
            "number": v.number,
            "digest": v.digest,
            "loaded_at": ts_json(v.loaded_at.as_ref()),
            "reloads_ok": v.reloads_ok,
            "reloads_failed": v.reloads_failed,
            "last_error": if v.last_error.is_empty() { Value::Null } else { json!(v.last_error) },
        }),
    }
}

pub fn version_line(v: Option<&pb::ConfigVersion>) -> String {
    match v {
        None => String::new(),
        Some(v) => format!("config version {} (digest {})", v.number, v.digest),
    }
}

pub fn usage_json(u: &pb::GetUsageResponse) -> Value {
    json!({
        "key_hash": u.key_hash,
        "plan": u.plan,
        "source": u.source,
        "blocked": u.blocked,
        "blocked_until": ts_json(u.blocked_until.as_ref()),
        "limits": u.limits.iter().map(|l| json!({
            "name": l.name,
            "policy": l.policy,
            "kind": l.kind,
            "limit": l.limit,
            "used": l.used,
            "remaining": l.remaining,
            "reset_after_seconds": duration_json(l.reset_after.as_ref()),
            "window_seconds": l.window_seconds,
            "strict": l.strict,
        })).collect::<Vec<_>>(),
        "global": u.global,
        "as_of": ts_json(u.as_of.as_ref()),
        "note": (!u.note.is_empty()).then_some(&u.note),
        "override": u.r#override.as_ref().map(override_json),
        "concurrency": u.concurrency.as_ref().map(|c| json!({
            "name": c.name,
            "policy": c.policy,
            "limit": c.limit,
            "in_use": c.in_use,
            "lease_ttl_seconds": duration_json(c.lease_ttl.as_ref()),
            "leases": c.leases.iter().map(|l| json!({
                "slots": l.slots,
                "expires_at": ts_json(l.expires_at.as_ref()),
            })).collect::<Vec<_>>(),
        })),
        "rlqs": u.rlqs.iter().map(|b| json!({
            "domain": b.domain,
            "bucket": b.bucket,
            "rule": b.rule,
            "action": b.action,
            "blocked": b.blocked,
            "global_rate": b.global_rate,
            "burst": b.burst,
            "envoys": b.envoys,
            "demand": b.demand,
            "shares": b.shares.iter().map(|s| json!({
                "envoy": s.envoy,
                "demand": s.demand,
                "action": s.action,
                "rate": s.rate,
                "max_tokens": s.max_tokens,
            })).collect::<Vec<_>>(),
            "other_nodes_envoys": b.other_nodes_envoys,
            "other_nodes_demand": b.other_nodes_demand,
        })).collect::<Vec<_>>(),
        "config": version_json(u.config.as_ref()),
    })
}

/// A key's Envoy RLQS buckets: the rule and global rate, then a line per
/// Envoy with its demand and share.
fn rlqs_text(b: &pb::RlqsBucketUsage) -> String {
    let mut id: Vec<String> = b.bucket.iter().map(|(k, v)| format!("{k}={v}")).collect();
    id.sort();
    let mut out = format!("rlqs {} {{{}}}: ", b.domain, id.join(", "));
    if b.blocked {
        out.push_str("blocked: every Envoy holds DENY_ALL");
    } else if b.action == "token_bucket" {
        out.push_str(&format!(
            "{:.2}/s (burst {}) shared by {} Envoys demanding {:.2}/s [{}]",
            b.global_rate, b.burst, b.envoys, b.demand, b.rule
        ));
    } else if b.rule.is_empty() {
        out.push_str("no rule matches: ALLOW_ALL");
    } else {
        out.push_str(&format!("{} [{}]", b.action, b.rule));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = b
        .shares
        .iter()
        .map(|s| {
            vec![
                s.envoy.clone(),
                s.demand
                    .map_or_else(|| "-".to_owned(), |d| format!("{d:.2}/s")),
                s.action.clone(),
                if s.action == "token_bucket" {
                    format!("{:.2}/s", s.rate)
                } else {
                    "-".to_owned()
                },
                s.max_tokens.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &["ENVOY", "DEMAND", "HOLDS", "RATE", "TOKENS"],
            &rows,
        ));
    }
    if b.other_nodes_envoys > 0 {
        out.push_str(&format!(
            "other nodes: {} Envoys demanding {:.2}/s\n",
            b.other_nodes_envoys, b.other_nodes_demand
        ));
    }
    out
}

/// A key's concurrency limit: `streams: 3 / 10 in use`, then a line per
/// lease with its expiry.
fn concurrency_text(c: &pb::ConcurrencyUsage) -> String {
    let mut out = format!(
        "concurrency {}: {} / {} in use
",
        c.name, c.in_use, c.limit
    );
    let rows: Vec<Vec<String>> = c
        .leases
        .iter()
        .map(|l| vec![l.slots.to_string(), time(l.expires_at.as_ref())])
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(&["SLOTS", "EXPIRES"], &rows));
    }
    out
}

/// Whose spend the usage shows, and as of when.
fn scope_line(u: &pb::GetUsageResponse) -> String {
    let at = time(u.as_of.as_ref());
    if u.global {
        format!("as of {at}: every node's (read from Redis; others' as of their last flush)\n")
    } else if !u.note.is_empty() {
        format!("as of {at}: {}\n", u.note)
    } else {
        format!("as of {at}: this node's (no Redis)\n")
    }
}

pub fn usage_text(u: &pb::GetUsageResponse) -> String {
    let mut out = if u.blocked {
        let until = match &u.blocked_until {
            Some(_) => format!("until {}", time(u.blocked_until.as_ref())),
            None => "until the override is deleted".to_owned(),
        };
        format!("key {}: blocked {until}\n", u.key_hash)
    } else {
        format!("key {}: plan {} ({})\n", u.key_hash, u.plan, u.source)
    };
    if let Some(o) = &u.r#override {
        out.push_str(&format!(
            "override: {} ({}; {})\n",
            target(o),
            o.created_by,
            o.reason
        ));
    }
    if !u.limits.is_empty() {
        let rows: Vec<Vec<String>> = u
            .limits
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.kind.clone(),
                    l.used.to_string(),
                    l.limit.to_string(),
                    l.remaining.to_string(),
                    // Nothing used: nothing to refill or reset.
                    if l.used == 0 {
                        "-".to_owned()
                    } else {
                        span(l.reset_after.as_ref())
                    },
                ]
            })
            .collect();
        out.push_str(&table(
            &["LIMIT", "KIND", "USED", "LIMIT", "REMAINING", "RESETS IN"],
            &rows,
        ));
    } else if !u.blocked && u.concurrency.is_none() {
        out.push_str("no limits: every check passes\n");
    }
    if !u.limits.is_empty() {
        out.push_str(&scope_line(u));
    }
    if let Some(c) = &u.concurrency {
        out.push_str(&concurrency_text(c));
    }
    for b in &u.rlqs {
        out.push_str(&rlqs_text(b));
    }
    out.push_str(&version_line(u.config.as_ref()));
    out.push('\n');
    out
}

pub fn plans_json(p: &pb::ListPlansResponse) -> Value {
    json!({
        "plans": p.plans.iter().map(|plan| json!({
            "name": plan.name,
            "is_default": plan.is_default,
            "static_keys": plan.static_keys,
            "overrides": plan.overrides,
            "limits": plan.limits.iter().map(|l| json!({
                "name": l.name,
                "policy": l.policy,
                "kind": l.kind,
                "limit": l.limit,
                "window_seconds": l.window_seconds,
                "strict": l.strict,
                "description": l.description,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "config": version_json(p.config.as_ref()),
    })
}

pub fn plans_text(p: &pb::ListPlansResponse) -> String {
    let rows: Vec<Vec<String>> = p
        .plans
        .iter()
        .map(|plan| {
            let limits = if plan.limits.is_empty() {
                "unlimited".to_owned()
            } else {
                plan.limits
                    .iter()
                    .map(|l| l.description.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            vec![
                plan.name.clone(),
                if plan.is_default { "yes" } else { "" }.to_owned(),
                plan.static_keys.to_string(),
                plan.overrides.to_string(),
                limits,
            ]
        })
        .collect();
    let mut out = table(
        &["PLAN", "DEFAULT", "STATIC KEYS", "OVERRIDES", "LIMITS"],
        &rows,
    );
    out.push_str(&version_line(p.config.as_ref()));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up() {
        let t = table(
            &["A", "LONGER"],
            &[vec!["xx".into(), "1".into()], vec!["y".into(), "22".into()]],
        );
        assert_eq!(t, "A   LONGER\nxx  1\ny   22\n");
    }

    #[test]
    fn spans_read_naturally() {
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(span(d(0, 350_000_000).as_ref()), "0.35s");
        assert_eq!(span(d(42, 0).as_ref()), "42s");
        assert_eq!(span(d(200, 0).as_ref()), "3m20s");
        assert_eq!(span(d(43_140, 0).as_ref()), "11h59m");
        assert_eq!(span(d(2_588_400, 0).as_ref()), "29d23h");
    }
}
