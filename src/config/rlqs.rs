//! The config's `rlqs` section: Envoy's Rate Limit Quota Service (the
//! `envoy.filters.http.rate_limit_quota` filter's server). Its timing
//! (`assignment_ttl`, `idle_abandon_after`, `stream_idle_timeout`), which
//! bucket id entry names an API key (`key_entry`), the share tolerance,
//! the caps on what Envoys may report, and each domain's rules; their raw
//! form, validation and summary line. Hot-reloadable, like every live
//! section.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::values::{Dur, NonEmpty, format_duration};
use crate::core::window::Window;
use crate::diag::{Issue, Seg};
use crate::limits::file::{Entries, Per, Positive};
use crate::limits::rlqs::{RlqsRules, Rule, RuleAction};
use crate::limits::rls::check_domain;
use crate::yaml::recover::Items;

/// The shortest assignment time to live: Envoy expires an unset or
/// sub-second one at once, and reports every 5 s.
pub const MIN_ASSIGNMENT_TTL: Duration = Duration::from_secs(10);

/// The shortest `idle_abandon_after` and `stream_idle_timeout`: two of
/// Envoy's report periods (5 s), so a busy bucket or stream is never taken
/// for an idle one between reports.
pub const MIN_IDLE: Duration = Duration::from_secs(10);

/// The `rlqs` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlqsSettings {
    /// How long an assignment holds in Envoy unless renewed: whole
    /// seconds, at least 10.
    pub assignment_ttl: Duration,
    /// A bucket an Envoy reports no traffic for this long gets an abandon
    /// action (and its share goes to the others).
    pub idle_abandon_after: Duration,
    /// A stream that reports nothing this long is closed.
    pub stream_idle_timeout: Duration,
    /// The bucket id entry whose value is an API key: an operator's block
    /// of that key turns its buckets to DENY_ALL.
    pub key_entry: String,
    /// A share is pushed again only when it moves by more than this
    /// (percent); otherwise an identical assignment extends the TTL.
    pub share_tolerance_percent: u8,
    /// RLQS streams this node serves at once.
    pub max_streams: usize,
    /// RLQS streams one connection may have open.
    pub max_streams_per_connection: usize,
    /// Buckets one stream may report.
    pub max_buckets_per_stream: usize,
    /// (Envoy, bucket) pairs this node tracks. Past it, a stream holding
    /// more than its fair part of it is refused new buckets.
    pub max_tracked: usize,
    /// Entries in one bucket id.
    pub max_bucket_entries: usize,
    /// Longest bucket id entry key or value, and the longest domain.
    pub max_entry_bytes: usize,
    /// Each domain's rules.
    pub rules: RlqsRules,
}

impl Default for RlqsSettings {
    fn default() -> Self {
        Self {
            assignment_ttl: Duration::from_secs(30),
            idle_abandon_after: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(60),
            key_entry: "api_key".to_owned(),
            share_tolerance_percent: 10,
            max_streams: 4_096,
            max_streams_per_connection: 16,
            max_buckets_per_stream: 10_000,
            max_tracked: 200_000,
            max_bucket_entries: 8,
            max_entry_bytes: 256,
            rules: RlqsRules::default(),
        }
    }
}

impl RlqsSettings {
    /// The summary's `rlqs:` line.
    pub(super) fn summary_line(&self) -> String {
        let domains: Vec<String> = self
            .rules
            .domains()
            .map(|(d, rs)| format!("{d} ({} rules)", rs.len()))
            .collect();
        format!(
            "rlqs: domains {}, assignment ttl {}, idle abandon after {}, key entry {}, tolerance {}%, at most {} streams ({} per connection), {} buckets per stream, {} tracked",
            if domains.is_empty() {
                "none (every bucket ALLOW_ALL)".to_owned()
            } else {
                domains.join(", ")
            },
            format_duration(self.assignment_ttl),
            format_duration(self.idle_abandon_after),
            self.key_entry,
            self.share_tolerance_percent,
            self.max_streams,
            self.max_streams_per_connection,
            self.max_buckets_per_stream,
            self.max_tracked,
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the rlqs section (a mapping)")]
pub(super) struct RlqsRaw {
    assignment_ttl: Option<Dur>,
    idle_abandon_after: Option<Dur>,
    stream_idle_timeout: Option<Dur>,
    key_entry: Option<NonEmpty>,
    share_tolerance_percent: Option<Positive>,
    max_streams: Option<Positive>,
    max_streams_per_connection: Option<Positive>,
    max_buckets_per_stream: Option<Positive>,
    max_tracked: Option<Positive>,
    max_bucket_entries: Option<Positive>,
    max_entry_bytes: Option<Positive>,
    // A list that takes part in reading past mistakes: each rule's
    // `match` entries are items of their own rule, not of the domain.
    domains: Option<Entries<String, Items<RuleRaw>>>,
}

/// One rule as written.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule (a mapping with match and one of rate/per, deny: true or allow: true)"
)]
struct RuleRaw {
    #[serde(rename = "match")]
    matcher: Option<Entries<String, String>>,
    rate: Option<Positive>,
    per: Option<Per>,
    burst: Option<Positive>,
    deny: Option<bool>,
    allow: Option<bool>,
}

fn at(path: &[&str]) -> Vec<Seg> {
    let mut out = vec![Seg::key("rlqs")];
    out.extend(path.iter().map(|p| Seg::key(*p)));
    out
}

/// A positive count as a `usize`.
fn count(p: Option<Positive>, field: &str, default: usize) -> Result<usize, Issue> {
    match p {
        None => Ok(default),
        Some(p) => usize::try_from(p.0.get())
            .map_err(|_| Issue::new(at(&[field]), format!("{} is too large", p.0))),
    }
}

impl RlqsRaw {
    /// Validates the section.
    pub(super) fn build(self) -> Result<RlqsSettings, Issue> {
        let d = RlqsSettings::default();
        let ttl = self.assignment_ttl.map_or(d.assignment_ttl, |t| t.0);
        if ttl < MIN_ASSIGNMENT_TTL || ttl.subsec_nanos() != 0 {
            return Err(Issue::new(
                at(&["assignment_ttl"]),
                format!(
                    "must be whole seconds, at least 10s (got {}): Envoy expires a shorter one at once",
                    format_duration(ttl)
                ),
            ));
        }
        for (field, d) in [
            ("idle_abandon_after", self.idle_abandon_after),
            ("stream_idle_timeout", self.stream_idle_timeout),
        ] {
            if let Some(d) = d
                && d.0 < MIN_IDLE
            {
                return Err(Issue::new(
                    at(&[field]),
                    format!(
                        "must be at least 10s (got {}): Envoy reports every 5s, so a shorter one takes busy buckets and streams for idle ones",
                        format_duration(d.0)
                    ),
                ));
            }
        }
        let tolerance = match self.share_tolerance_percent {
            None => d.share_tolerance_percent,
            Some(p) => u8::try_from(p.0.get())
                .ok()
                .filter(|p| *p < 100)
                .ok_or_else(|| {
                    Issue::new(
                        at(&["share_tolerance_percent"]),
                        format!("must be 1..99 (got {})", p.0),
                    )
                })?,
        };
        let max_entry_bytes = count(self.max_entry_bytes, "max_entry_bytes", d.max_entry_bytes)?;
        let rules = match self.domains {
            None => RlqsRules::default(),
            Some(domains) => build_domains(domains, max_entry_bytes)?,
        };
        Ok(RlqsSettings {
            assignment_ttl: ttl,
            idle_abandon_after: self
                .idle_abandon_after
                .map_or(d.idle_abandon_after, |t| t.0),
            stream_idle_timeout: self
                .stream_idle_timeout
                .map_or(d.stream_idle_timeout, |t| t.0),
            key_entry: self.key_entry.map_or(d.key_entry, |k| k.0),
            share_tolerance_percent: tolerance,
            max_streams: count(self.max_streams, "max_streams", d.max_streams)?,
            max_streams_per_connection: count(
                self.max_streams_per_connection,
                "max_streams_per_connection",
                d.max_streams_per_connection,
            )?,
            max_buckets_per_stream: count(
                self.max_buckets_per_stream,
                "max_buckets_per_stream",
                d.max_buckets_per_stream,
            )?,
            max_tracked: count(self.max_tracked, "max_tracked", d.max_tracked)?,
            max_bucket_entries: count(
                self.max_bucket_entries,
                "max_bucket_entries",
                d.max_bucket_entries,
            )?,
            max_entry_bytes,
            rules,
        })
    }
}

/// Every domain's rules, checked.
fn build_domains(
    domains: Entries<String, Items<RuleRaw>>,
    max_entry_bytes: usize,
) -> Result<RlqsRules, Issue> {
    let mut out = BTreeMap::new();
    let mut nth: BTreeMap<String, usize> = BTreeMap::new();
    for (name, rules) in domains.0 {
        let seen = nth.entry(name.clone()).or_default();
        if *seen > 0 {
            return Err(Issue::duplicate(
                vec![
                    Seg::key("rlqs"),
                    Seg::key("domains"),
                    Seg::Key {
                        name: name.clone(),
                        nth: *seen,
                    },
                ],
                vec![
                    Seg::key("rlqs"),
                    Seg::key("domains"),
                    Seg::key(name.clone()),
                ],
                format!("domain '{name}' is defined twice"),
            ));
        }
        *seen += 1;
        let path = vec![
            Seg::key("rlqs"),
            Seg::key("domains"),
            Seg::key(name.clone()),
        ];
        check_domain(&name).map_err(|why| Issue::new(path.clone(), why))?;
        let mut built = Vec::with_capacity(rules.0.len());
        for (i, r) in rules.0.into_iter().enumerate() {
            let mut p = path.clone();
            p.push(Seg::Index(i));
            built.push(r.build(&p, max_entry_bytes)?);
        }
        out.insert(name, built);
    }
    Ok(RlqsRules::new(out))
}

impl RuleRaw {
    fn build(self, path: &[Seg], max_entry_bytes: usize) -> Result<Rule, Issue> {
        let field = |f: &str| {
            let mut p = path.to_vec();
            p.push(Seg::key(f));
            p
        };
        let mut matcher: Vec<(String, Option<String>)> = Vec::new();
        for (k, v) in self.matcher.map(|m| m.0).unwrap_or_default() {
            let bad = if k.is_empty() || v.is_empty() {
                Some(
                    "entry names and values must not be empty (\"*\" matches any value)".to_owned(),
                )
            } else if k.len() > max_entry_bytes || v.len() > max_entry_bytes {
                Some(format!(
                    "entries are at most {max_entry_bytes} bytes (rlqs.max_entry_bytes)"
                ))
            } else if matcher.iter().any(|(seen, _)| *seen == k) {
                Some(format!("entry '{k}' is named twice"))
            } else {
                None
            };
            if let Some(why) = bad {
                return Err(Issue::new(field("match"), why));
            }
            matcher.push((k, (v != "*").then_some(v)));
        }
        let action = match (self.rate, self.deny, self.allow) {
            (Some(rate), None, None) => share(rate, self.per, self.burst, &field)?,
            (None, Some(true), None) if self.per.is_none() && self.burst.is_none() => {
                RuleAction::Deny
            }
            (None, None, Some(true)) if self.per.is_none() && self.burst.is_none() => {
                RuleAction::Allow
            }
            (None, Some(false), None) | (None, None, Some(false)) => {
                return Err(Issue::new(
                    field(if self.deny.is_some() { "deny" } else { "allow" }),
                    "false does nothing here: give the rule rate/per, deny: true or allow: true",
                ));
            }
            _ => {
                return Err(Issue::new(
                    path.to_vec(),
                    "a rule has exactly one of rate (with per, and optionally burst), deny: true or allow: true",
                ));
            }
        };
        Ok(Rule { matcher, action })
    }
}

/// A share rule's `rate`, `per` and `burst`.
fn share(
    rate: Positive,
    per: Option<Per>,
    burst: Option<Positive>,
    field: &dyn Fn(&str) -> Vec<Seg>,
) -> Result<RuleAction, Issue> {
    let per = per.ok_or_else(|| {
        Issue::new(
            field("rate"),
            "a rate needs per (second, minute, hour or day)",
        )
    })?;
    let period_secs = match per.0 {
        Window::Second | Window::Minute | Window::Hour | Window::Day => per.0.nominal_seconds(),
        Window::Week | Window::Month => {
            return Err(Issue::new(
                field("per"),
                format!(
                    "an RLQS rate is per second, minute, hour or day (got {})",
                    per.0.as_str()
                ),
            ));
        }
    };
    let tokens = rate.0.get();
    let burst = burst.map_or(tokens, |b| b.0.get());
    if tokens > u64::from(u32::MAX) || burst > u64::from(u32::MAX) {
        return Err(Issue::new(
            field("rate"),
            "rate and burst are at most 4294967295 (Envoy's token buckets count in 32 bits)",
        ));
    }
    Ok(RuleAction::Share {
        tokens,
        period_secs,
        burst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_errors, parse_ok};
    use crate::limits::rlqs::BucketEntries;

    const PLANS: &str = "plans: { p: {} }\ndefault_plan: p\n";

    #[test]
    fn the_issues_section_parses_with_its_rules_in_order() {
        let c = parse_ok(&format!(
            "{PLANS}rlqs:\n  assignment_ttl: 30s\n  idle_abandon_after: 60s\n  domains:\n    shop:\n      - match: {{ tenant: \"*\" }}\n        rate: 100\n        per: second\n        burst: 200\n      - match: {{ tier: \"blocked\" }}\n        deny: true\n      - match: {{}}\n        allow: true\n"
        ));
        let r = &c.live.rlqs;
        assert_eq!(r.assignment_ttl, Duration::from_secs(30));
        assert_eq!(r.key_entry, "api_key");
        let rules = r.rules.rules("shop");
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0].action,
            RuleAction::Share {
                tokens: 100,
                period_secs: 1,
                burst: 200
            }
        );
        assert_eq!(rules[1].action, RuleAction::Deny);
        assert_eq!(rules[2].action, RuleAction::Allow);
        let bucket: BucketEntries = [("tier".to_owned(), "blocked".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(r.rules.find("shop", &bucket).map(|(i, _)| i), Some(1));
        assert!(
            c.summary()
                .contains("rlqs: domains shop (3 rules), assignment ttl 30s")
        );
        // Without a section: no rules, the defaults.
        let c = parse_ok(PLANS);
        assert_eq!(c.live.rlqs, RlqsSettings::default());
    }

    #[test]
    fn mistakes_are_located_and_explained() {
        let at = |section: &str| format!("{PLANS}rlqs:\n{section}");
        assert_errors(&[
            (
                at("  assignment_ttl: 5s\n"),
                "t.yaml:4:19: rlqs.assignment_ttl: must be whole seconds, at least 10s (got 5s): Envoy expires a shorter one at once",
            ),
            (
                at("  assignment_ttl: 10500ms\n"),
                "t.yaml:4:19: rlqs.assignment_ttl: must be whole seconds, at least 10s (got 10500ms): Envoy expires a shorter one at once",
            ),
            (
                at("  idle_abandon_after: 5s\n"),
                "t.yaml:4:23: rlqs.idle_abandon_after: must be at least 10s (got 5s): Envoy reports every 5s, so a shorter one takes busy buckets and streams for idle ones",
            ),
            (
                at("  share_tolerance_percent: 100\n"),
                "t.yaml:4:28: rlqs.share_tolerance_percent: must be 1..99 (got 100)",
            ),
            (
                at("  domains:\n    shop:\n      - { match: { t: \"*\" }, rate: 5 }\n"),
                "t.yaml:6:36: rlqs.domains.shop[0].rate: a rate needs per (second, minute, hour or day)",
            ),
            (
                at("  domains:\n    shop:\n      - { rate: 5, per: week }\n"),
                "t.yaml:6:25: rlqs.domains.shop[0].per: an RLQS rate is per second, minute, hour or day (got week)",
            ),
            (
                at("  domains:\n    shop:\n      - { rate: 5, per: second, deny: true }\n"),
                "t.yaml:6:9: rlqs.domains.shop[0]: a rule has exactly one of rate (with per, and optionally burst), deny: true or allow: true",
            ),
            (
                at("  domains:\n    shop:\n      - { deny: false }\n"),
                "t.yaml:6:17: rlqs.domains.shop[0].deny: false does nothing here: give the rule rate/per, deny: true or allow: true",
            ),
            (
                at("  domains:\n    shop:\n      - { match: { t: \"\" }, allow: true }\n"),
                "t.yaml:6:18: rlqs.domains.shop[0].match: entry names and values must not be empty (\"*\" matches any value)",
            ),
            (
                at("  domains:\n    shop:\n      - { allow: true, limit: 3 }\n"),
                "t.yaml:6:24: rlqs.domains.shop[0]: unknown field (expected one of: match, rate, per, burst, deny, allow)",
            ),
            (
                at("  domains:\n    shop: []\n    shop: []\n"),
                "t.yaml:6:5: rlqs.domains.shop: domain 'shop' is defined twice (first defined at line 5)",
            ),
            (
                at("  domains:\n    shop:\n      - { rate: 5000000000, per: second }\n"),
                "t.yaml:6:17: rlqs.domains.shop[0].rate: rate and burst are at most 4294967295 (Envoy's token buckets count in 32 bits)",
            ),
        ]);
    }
}
