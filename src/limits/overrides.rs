//! Operator overrides: per-key exceptions to the config's plan
//! assignment, set through the admin API while traffic flows.
//!
//! An [`Override`] names a key by its keyed hash (never the key itself)
//! and gives it another plan of the config, limits of its own (a plan
//! named [`OVERRIDE_PLAN`]), or a block; optionally until a time. It wins
//! over the key's static assignment and the default plan until it expires
//! or is deleted, and then the key is back on its usual plan. Overrides
//! are resolved into a map of routes when a table is built, so a check
//! pays one hash lookup for them, and none when there are none.
//!
//! Records travel between nodes (through Redis) as JSON ([`Override::to_json`],
//! [`Override::from_json`]); a record read back is validated again, as
//! one from an operator is.

use std::collections::HashMap;

use nohash_hasher::BuildNoHashHasher;
use serde::{Deserialize, Serialize};

use super::file::{self, LimitRaw};
use super::{Plan, PlanId};
use crate::core::clock::Nanos;
use crate::core::hash::mix;

/// Defined with the plan names it is reserved from, so the file reader
/// needs nothing of this module.
pub use super::file::OVERRIDE_PLAN;
/// Longest `reason`, in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// Longest `author` (a token id or certificate subject), in bytes.
pub const MAX_AUTHOR_BYTES: usize = 256;

/// One key's override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The keyed hash of the API key ([`crate::core::KeyHasher::key_hash`]).
    pub key_hash: u64,
    /// What the key gets instead of its usual plan.
    pub target: Target,
    /// When it ends (Unix ns); `None` lasts until deleted.
    pub expires_at: Option<Nanos>,
    /// Why, as the operator said (for the audit trail and listings).
    pub reason: String,
    /// Who set it: an admin token id, or a client certificate's subject.
    pub author: String,
    /// When it was set (Unix ns).
    pub updated_at: Nanos,
}

/// What an override gives its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Another plan of the config, by name (resolved against each node's
    /// own table: a name a node does not know leaves the key on its usual
    /// plan there, and is reported).
    Plan(String),
    /// Limits of its own, validated as a config plan's are.
    Limits(OwnLimits),
    /// Every check of the key is denied.
    Block,
}

/// An override's own limits: as given, and as the plan they make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLimits {
    specs: Vec<LimitSpec>,
    plan: Plan,
}

impl OwnLimits {
    /// Validates `specs` (as a config plan's limits are validated);
    /// an error names the field, as `limits[1].burst`.
    pub fn new(specs: Vec<LimitSpec>) -> Result<Self, OverrideError> {
        let raw = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                LimitRaw::from_parts(
                    &s.name,
                    (s.rate, s.quota, s.concurrency),
                    &s.per,
                    s.burst,
                    s.strict,
                    s.lease_ttl_ms.map(|ms| ms.saturating_mul(1_000_000)),
                )
                .map_err(|(field, why)| OverrideError::Invalid {
                    field: format!("limits[{i}].{field}"),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plan = file::plan_of(OVERRIDE_PLAN, raw).map_err(|issue| OverrideError::Invalid {
            field: crate::yaml::render_path(&issue.path),
            why: issue.reason,
        })?;
        Ok(Self { specs, plan })
    }

    /// The limits as given.
    pub fn specs(&self) -> &[LimitSpec] {
        &self.specs
    }

    /// The plan they make (named [`OVERRIDE_PLAN`]).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// One limit of an override, field for field as a config file's limit
/// (`{ name, rate | quota, per, burst, mode }` or
/// `{ name, concurrency, lease_ttl }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    /// The limit's name.
    pub name: String,
    /// Tokens per `per` (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Units per calendar `per` (a quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// The unit: second, minute, hour, day, week or month (empty for a
    /// concurrency limit).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub per: String,
    /// A bucket's capacity (default: `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `mode: strict`: decided in Redis on every check.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Slots held at once (a concurrency limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    /// A concurrency limit's lease time to live, in ms (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
}

/// Why an override was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// A field's value is wrong.
    #[error("{field}: {why}")]
    Invalid {
        /// The field path, as `limits[0].rate`.
        field: String,
        /// Why.
        why: String,
    },
}

/// Whether `c` could make a log line lie: control characters, line and
/// paragraph separators, and the bidirectional overrides that reorder
/// what a terminal shows.
pub(crate) fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `text` without the characters [`check_text`] refuses.
pub fn printable(text: &str) -> String {
    text.chars().filter(|c| !deceptive(*c)).collect()
}

/// Checks free text an operator gives (a reason, an author): at most
/// `max` bytes, one line without control characters, line separators or
/// bidirectional overrides (it goes into log lines, which it must not be
/// able to forge).
pub fn check_text(field: &str, text: &str, max: usize) -> Result<(), OverrideError> {
    let invalid = |why: String| OverrideError::Invalid {
        field: field.to_owned(),
        why,
    };
    if text.len() > max {
        return Err(invalid(format!(
            "{} bytes exceeds the maximum of {max} bytes",
            text.len()
        )));
    }
    if text.chars().any(deceptive) {
        return Err(invalid(
            "must not contain control characters (line breaks, tabs, escapes)".to_owned(),
        ));
    }
    Ok(())
}

impl Override {
    /// Whether it is in force at `now`.
    #[inline]
    pub fn active(&self, now: Nanos) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }

    /// The plan name it gives (`override` for its own limits), or `None`
    /// for a block.
    pub fn plan_name(&self) -> Option<&str> {
        match &self.target {
            Target::Plan(p) => Some(p),
            Target::Limits(_) => Some(OVERRIDE_PLAN),
            Target::Block => None,
        }
    }

    /// A short description for listings and the audit log:
    /// `plan gold until 2026-12-31T00:00:00Z`, `block`, `limits per-second
    /// 100/second burst 200`.
    pub fn describe(&self) -> String {
        let what = match &self.target {
            Target::Plan(p) => format!("plan {p}"),
            Target::Block => "block".to_owned(),
            Target::Limits(l) => {
                format!("limits {}", file::describe_plan(&l.plan).join("; "))
            }
        };
        match self.expires_at {
            Some(t) => format!("{what} until {}", crate::core::clock::rfc3339(t)),
            None => what,
        }
    }

    /// The record as stored in Redis (the key hash is the record's name
    /// there, so it is not repeated).
    pub fn to_json(&self) -> String {
        let (plan, limits, block) = match &self.target {
            Target::Plan(p) => (Some(p.clone()), None, false),
            Target::Limits(l) => (None, Some(l.specs.clone()), false),
            Target::Block => (None, None, true),
        };
        let stored = Stored {
            plan,
            limits,
            block,
            expires_at_ns: self.expires_at,
            reason: self.reason.clone(),
            author: self.author.clone(),
            updated_at_ns: self.updated_at,
        };
        // A struct of strings and numbers always serializes.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// A record read back from Redis, validated as one from an operator.
    pub fn from_json(key_hash: u64, text: &str) -> Result<Override, OverrideError> {
        let invalid = |why: String| OverrideError::Invalid {
            field: "record".to_owned(),
            why,
        };
        let s: Stored = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let target = match (s.plan, s.limits, s.block) {
            (Some(p), None, false) => {
                crate::diag::check_name(&p).map_err(|why| OverrideError::Invalid {
                    field: "plan".to_owned(),
                    why,
                })?;
                Target::Plan(p)
            }
            (None, Some(l), false) => Target::Limits(OwnLimits::new(l)?),
            (None, None, true) => Target::Block,
            _ => {
                return Err(invalid(
                    "exactly one of plan, limits and block must be set".to_owned(),
                ));
            }
        };
        check_text("reason", &s.reason, MAX_REASON_BYTES)?;
        check_text("author", &s.author, MAX_AUTHOR_BYTES)?;
        Ok(Override {
            key_hash,
            target,
            expires_at: s.expires_at_ns,
            reason: s.reason,
            author: s.author,
            updated_at: s.updated_at_ns,
        })
    }
}

/// An override as JSON. Unknown fields are ignored, so a newer node's
/// additions do not make older nodes drop records.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<Vec<LimitSpec>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    block: bool,
    #[serde(default)]
    expires_at_ns: Option<u64>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    updated_at_ns: u64,
}

/// Where an override sends its key, resolved against one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// Decide with this plan.
    Plan(PlanId),
    /// Deny every check, until the block ends (`None`: until deleted).
    Blocked {
        /// When the block ends (Unix ns).
        until: Option<Nanos>,
    },
}

/// One key's route: where it goes, and until when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) to: Assigned,
    /// `expires_at`, or `u64::MAX`.
    pub(crate) until: Nanos,
}

/// Every override of a table, resolved: key hash → route, and the plans
/// of overrides with limits of their own (plan ids after the config's).
#[derive(Debug, Clone, Default)]
pub(crate) struct Routes {
    pub(crate) by_key: HashMap<u64, Route, BuildNoHashHasher<u64>>,
    pub(crate) plans: Vec<Plan>,
    /// Whether one of `plans` has a strict limit.
    pub(crate) strict: bool,
}

impl Routes {
    /// Resolves `records` against a config with `base_plans` plans,
    /// `plan_id` finding a plan by name. Records already expired at `now`
    /// are left out; records naming a plan the config does not have are
    /// returned (their keys stay on their usual plans).
    pub(crate) fn build<'a>(
        records: impl IntoIterator<Item = &'a Override>,
        base_plans: usize,
        plan_id: impl Fn(&str) -> Option<PlanId>,
        now: Nanos,
    ) -> (Routes, Vec<&'a Override>) {
        let mut routes = Routes::default();
        let mut unresolved = Vec::new();
        for o in records {
            if !o.active(now) {
                continue;
            }
            let to = match &o.target {
                Target::Plan(name) => match plan_id(name) {
                    Some(id) => Assigned::Plan(id),
                    None => {
                        unresolved.push(o);
                        continue;
                    }
                },
                Target::Limits(l) => {
                    let id = PlanId((base_plans + routes.plans.len()) as u32);
                    // Each key's own limits are a plan of their own: their
                    // uids carry the key, so a plan id that moved (another
                    // key's override came or went) cannot pass for
                    // another key's plan (a strict answer checks them).
                    let mut plan = l.plan.clone();
                    for limit in &mut plan.limits {
                        limit.uid = mix(limit.uid, o.key_hash);
                    }
                    routes.strict |= plan.limits.iter().any(|l| l.strict);
                    routes.plans.push(plan);
                    Assigned::Plan(id)
                }
                Target::Block => Assigned::Blocked {
                    until: o.expires_at,
                },
            };
            let until = o.expires_at.unwrap_or(Nanos::MAX);
            routes.by_key.insert(o.key_hash, Route { to, until });
        }
        (routes, unresolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, rate: Option<u64>, quota: Option<u64>, per: &str) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            rate,
            quota,
            per: per.into(),
            burst: None,
            strict: false,
            concurrency: None,
            lease_ttl_ms: None,
        }
    }

    #[test]
    fn own_limits_are_validated_as_a_config_plan_and_name_the_field() {
        let ok = OwnLimits::new(vec![
            spec("per-second", Some(100), None, "second"),
            spec("daily", None, Some(5000), "Day"),
        ])
        .unwrap();
        assert_eq!(ok.plan().name, OVERRIDE_PLAN);
        assert_eq!(ok.plan().limits[0].policy, "override/per-second");
        let cases = [
            (
                vec![spec("a", Some(1), Some(2), "second")],
                "limits[0].quota: a limit has either rate or quota, not both",
            ),
            (
                vec![spec("a", None, None, "second")],
                "limits[0]: a limit needs either rate (a token bucket), quota (a calendar window) or concurrency (slots held at once)",
            ),
            (
                vec![spec("a", Some(0), None, "second")],
                "limits[0].rate: must be at least 1 (got 0)",
            ),
            (
                vec![spec("a", Some(1), None, "fortnight")],
                "limits[0].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)",
            ),
            (
                vec![spec("a b", Some(1), None, "second")],
                "limits[0].name: invalid character ' ' in name 'a b' (use letters, digits, '_', '.' and '-')",
            ),
            (
                vec![
                    spec("a", Some(1), None, "second"),
                    spec("a", None, Some(1), "day"),
                ],
                "limits[1].name: limit 'a' is defined twice in this plan",
            ),
            (
                vec![LimitSpec {
                    burst: Some(3),
                    ..spec("q", None, Some(1), "day")
                }],
                "limits[0].burst: burst applies only to rate limits",
            ),
            (
                vec![spec("r", Some(1), None, "month")],
                "limits[0].per: a rate cannot be per month (use second, minute, hour or day, or a quota for weeks and months)",
            ),
            (
                vec![LimitSpec {
                    concurrency: Some(3),
                    lease_ttl_ms: Some(500),
                    ..spec("c", None, None, "")
                }],
                "limits[0].lease_ttl: lease_ttl must be between 1s and 1h (got 500ms)",
            ),
            (
                vec![LimitSpec {
                    concurrency: Some(3),
                    ..spec("c", None, None, "second")
                }],
                "limits[0].per: a concurrency limit has no per (only name, concurrency and lease_ttl)",
            ),
            (
                vec![spec("r", Some(2_000_000_000), None, "second")],
                "limits[0].rate: rate 2000000000 per second is faster than one token per nanosecond",
            ),
        ];
        for (specs, want) in cases {
            assert_eq!(OwnLimits::new(specs).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn records_round_trip_through_json_and_are_validated_on_the_way_back() {
        let limits = OwnLimits::new(vec![LimitSpec {
            burst: Some(200),
            ..spec("per-second", Some(100), None, "second")
        }])
        .unwrap();
        for target in [
            Target::Plan("gold".into()),
            Target::Block,
            Target::Limits(limits),
        ] {
            let o = Override {
                key_hash: 0xabc,
                target,
                expires_at: Some(1_800_000_000_000_000_000),
                reason: "support ticket 42".into(),
                author: "ops-alice".into(),
                updated_at: 1_700_000_000_000_000_000,
            };
            let json = o.to_json();
            assert_eq!(Override::from_json(0xabc, &json).unwrap(), o, "{json}");
        }
        let bad = [
            r#"{"plan":"gold","block":true}"#,
            r#"{}"#,
            r#"{"plan":"a b"}"#,
            r#"{"limits":[{"name":"x","per":"second"}]}"#,
            r#"{"block":true,"reason":"line\nbreak"}"#,
            "not json",
        ];
        for text in bad {
            assert!(Override::from_json(1, text).is_err(), "{text}");
        }
        // Fields a newer node may add are ignored.
        assert!(Override::from_json(1, r#"{"block":true,"colour":"red"}"#).is_ok());
    }

    #[test]
    fn text_checks_refuse_long_and_multi_line_text() {
        assert!(check_text("reason", "fine", 10).is_ok());
        assert_eq!(
            check_text("reason", "a\nb", 10).unwrap_err().to_string(),
            "reason: must not contain control characters (line breaks, tabs, escapes)"
        );
        assert_eq!(
            check_text("reason", "abcdef", 3).unwrap_err().to_string(),
            "reason: 6 bytes exceeds the maximum of 3 bytes"
        );
        for sneaky in ["a\u{2028}b", "a\u{202e}b", "a\u{2067}b"] {
            assert!(check_text("reason", sneaky, 10).is_err(), "{sneaky:?}");
        }
        assert_eq!(printable("CN=a\u{202e}b\nc"), "CN=abc");
    }

    #[test]
    fn routes_skip_expired_records_and_report_unknown_plans() {
        let rec = |key_hash, target, expires_at| Override {
            key_hash,
            target,
            expires_at,
            reason: String::new(),
            author: String::new(),
            updated_at: 0,
        };
        let records = [
            rec(1, Target::Plan("gold".into()), None),
            rec(2, Target::Plan("platinum".into()), None),
            rec(3, Target::Block, Some(100)),
            rec(4, Target::Block, Some(50)),
        ];
        let lookup = |n: &str| (n == "gold").then_some(PlanId(1));
        let (routes, unresolved) = Routes::build(&records, 2, lookup, 60);
        assert_eq!(unresolved.len(), 1);
        assert_eq!(unresolved[0].key_hash, 2);
        assert_eq!(routes.by_key.len(), 2);
        assert_eq!(routes.by_key[&1].to, Assigned::Plan(PlanId(1)));
        assert_eq!(routes.by_key[&3].to, Assigned::Blocked { until: Some(100) });
        assert!(!routes.by_key.contains_key(&4), "expired at 50");
    }
}
