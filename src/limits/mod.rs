//! Plans, limits and key assignments: the validated, immutable [`Table`]
//! the engine reads on every check.
//!
//! A table is built once from a config file ([`mod@file`]) and then only read;
//! a reload builds a new table and swaps it in atomically (the
//! [`crate::engine::Engine`] holds it in an `ArcSwap`). The types here cannot
//! hold a bad limit: rates and bursts are non-zero and their nanosecond
//! arithmetic is known to fit in 64 bits.

pub mod file;
pub mod header_text;
pub mod overrides;
pub mod rlqs;
pub mod rls;
pub mod rls_file;

use std::collections::HashMap;

use std::sync::Arc;

use nohash_hasher::BuildNoHashHasher;

use crate::core::clock::{NANOS_PER_SEC, Nanos};
pub use crate::core::decision::{LimitRef, PlanId};
use crate::core::hash::{KeyHasher, name_id};
pub use crate::core::limit::{FixedWindow, Quota, Rate, RateError};
pub use overrides::{Assigned, Override, Target};
use overrides::{Route, Routes};

/// What a limit counts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKind {
    /// A smooth token bucket.
    Rate(Rate),
    /// A calendar-window counter.
    Quota(Quota),
    /// An epoch-aligned fixed-window counter (envoyproxy/ratelimit's).
    Window(FixedWindow),
}

/// One named limit of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The limit's own name, unique within its plan (`per-second`).
    pub name: String,
    /// `plan/limit`, what responses report as the deciding policy.
    pub policy: String,
    /// Stable id of `plan/limit`; part of every bucket's cell id, so buckets
    /// survive reloads that keep the names.
    pub uid: u64,
    /// How it counts.
    pub kind: LimitKind,
    /// `mode: strict`: decided in Redis on every check (see
    /// [`crate::sync::strict`]); a plan with a strict limit is decided
    /// there as a whole.
    pub strict: bool,
    /// Its header text, rendered once (see [`header_text`]): under
    /// `policy`, or `name` when `policy` is empty (an envoyproxy/ratelimit
    /// file's limit).
    pub text: header_text::HeaderText,
}

impl Limit {
    /// Builds a limit of plan `plan`.
    pub fn new(plan: &str, name: &str, kind: LimitKind) -> Self {
        Self {
            name: name.to_owned(),
            policy: format!("{plan}/{name}"),
            uid: name_id(&[plan, name]),
            kind,
            strict: false,
            text: header_text::HeaderText::default(),
        }
        .rendered()
    }

    /// This limit with its header text rendered (see [`Limit::text`]).
    pub fn rendered(mut self) -> Self {
        let shown = if self.policy.is_empty() {
            &self.name
        } else {
            &self.policy
        };
        self.text = header_text::HeaderText::new(shown, self.capacity(), self.window_seconds());
        self
    }

    /// Capacity: the burst of a bucket, the quota of a window.
    pub fn capacity(&self) -> u64 {
        match &self.kind {
            LimitKind::Rate(r) => r.burst(),
            LimitKind::Quota(q) => q.quota.get(),
            LimitKind::Window(w) => w.limit,
        }
    }

    /// The period over which the capacity refills (bucket) or resets
    /// (window), in whole seconds (a month counts as 30 days).
    pub fn window_seconds(&self) -> u64 {
        match &self.kind {
            LimitKind::Rate(r) => {
                // Time to refill the whole burst, rounded up to a second.
                r.tau().div_ceil(NANOS_PER_SEC).max(1)
            }
            LimitKind::Quota(q) => q.window.nominal_seconds(),
            LimitKind::Window(w) => w.period.div_ceil(NANOS_PER_SEC).max(1),
        }
    }
}

/// A concurrency limit: how many slots a key may hold at once as leases
/// (`{ name: streams, concurrency: 10, lease_ttl: 30s }`). Checks never
/// see it; acquiring a lease does (see [`crate::engine::leases`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    /// The limit's name, unique within its plan.
    pub name: String,
    /// `plan/limit`, what answers report as the deciding policy.
    pub policy: String,
    /// Stable id of the limit's *name* (not its plan's): a key's leases
    /// are filed under it, so a key moved to another plan (an override)
    /// keeps its leases counted against a limit of the same name there.
    pub uid: u64,
    /// Slots a key may hold at once.
    pub slots: u32,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Nanos,
}

/// Shortest lease time to live (acquired, renewed or configured).
pub const MIN_LEASE_TTL: Nanos = NANOS_PER_SEC;
/// Longest lease time to live.
pub const MAX_LEASE_TTL: Nanos = 3_600 * NANOS_PER_SEC;
/// A concurrency limit's lease time to live when none is given.
pub const DEFAULT_LEASE_TTL: Nanos = 30 * NANOS_PER_SEC;

impl Concurrency {
    /// Concurrency limit `name` of plan `plan`.
    pub fn new(plan: &str, name: &str, slots: u32, lease_ttl: Nanos) -> Self {
        Self {
            name: name.to_owned(),
            policy: format!("{plan}/{name}"),
            uid: name_id(&["concurrency", name]),
            slots,
            lease_ttl,
        }
    }
}

/// A named set of limits; a check passes only if every limit passes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The plan's name (`free`, `gold`).
    pub name: String,
    /// Its rate limits and quotas, in config order. Empty means unlimited.
    pub limits: Vec<Limit>,
    /// Its concurrency limit, if any (at most one per plan).
    pub concurrency: Option<Arc<Concurrency>>,
}

/// The validated limits configuration: plans, the default plan, static
/// key assignments, Envoy RLS domains, and operators' overrides.
/// Immutable once built. A change of the overrides builds a new table
/// around a copy of the config's plans (a few), sharing its static keys
/// (any number) and the rest.
#[derive(Debug, Clone)]
pub struct Table {
    /// The config's plans, then those of overrides with limits of their
    /// own (plan ids index this).
    plans: Vec<Plan>,
    /// How many of `plans` are the config's.
    config_plans: usize,
    default_plan: PlanId,
    /// Static key → plan assignments, keyed by the keyed hash of the API key
    /// so the table never holds raw keys.
    keys: Arc<HashMap<u64, PlanId, BuildNoHashHasher<u64>>>,
    /// Overrides in force, by key hash.
    routes: HashMap<u64, Route, BuildNoHashHasher<u64>>,
    /// Whether a plan has a strict limit.
    strict: bool,
    /// The config defines no plans (it serves Envoy domains of limits
    /// files only): `plans[0]` is [`NO_PLANS`], a placeholder no key is
    /// on, and a key without an override is blocked (fail closed; the
    /// front doors refuse such calls before they get here).
    planless: bool,
    /// What checks of plans do not read.
    cold: Arc<Cold>,
}

/// The part of a table only some calls read.
#[derive(Debug, Clone, Default)]
struct Cold {
    /// Number of static keys as written in the file (for summaries).
    static_keys: usize,
    /// Envoy RLS domains read from envoyproxy/ratelimit files.
    rls: rls::RlsDomains,
}

/// Where a key's plan comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An operator's override.
    Override,
    /// The config's `keys`.
    Static,
    /// `default_plan`.
    Default,
}

/// Why a table could not be built from already-typed parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The default plan is not among the plans.
    #[error("default plan '{0}' is not defined")]
    UnknownDefaultPlan(String),
    /// A static key names a plan that does not exist.
    #[error("key assigned to unknown plan '{0}'")]
    UnknownPlan(String),
    /// Two plans with the same name.
    #[error("plan '{0}' is defined twice")]
    DuplicatePlan(String),
    /// Too many plans to index.
    #[error("too many plans")]
    TooManyPlans,
    /// A plan with more limits than a check can track.
    #[error("plan '{0}' has more than {max} limits", max = file::MAX_LIMITS_PER_PLAN)]
    TooManyLimits(String),
}

/// The placeholder plan of a config that defines none: no name a file or
/// an operator can write.
pub const NO_PLANS: &str = "(no plans)";

impl Table {
    /// Builds a table. `keys` are (raw API key, plan name) pairs; the raw
    /// keys are hashed with `hasher` and dropped. The table has no Envoy
    /// RLS domains until [`Table::with_rls`] adds them, and no overrides
    /// until [`Table::with_overrides`] adds them.
    pub fn new<'a>(
        plans: Vec<Plan>,
        default_plan: &str,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
        hasher: &KeyHasher,
    ) -> Result<Self, TableError> {
        if u32::try_from(plans.len()).is_err() {
            return Err(TableError::TooManyPlans);
        }
        if plans.is_empty() && default_plan.is_empty() {
            return Self::planless(keys);
        }
        let mut by_name: HashMap<&str, PlanId> = HashMap::new();
        for (i, p) in plans.iter().enumerate() {
            if p.limits.len() > file::MAX_LIMITS_PER_PLAN {
                return Err(TableError::TooManyLimits(p.name.clone()));
            }
            if by_name.insert(&p.name, PlanId(i as u32)).is_some() {
                return Err(TableError::DuplicatePlan(p.name.clone()));
            }
        }
        let default = *by_name
            .get(default_plan)
            .ok_or_else(|| TableError::UnknownDefaultPlan(default_plan.to_owned()))?;
        let mut map = HashMap::with_hasher(BuildNoHashHasher::default());
        let mut static_keys = 0;
        for (key, plan) in keys {
            let id = *by_name
                .get(plan)
                .ok_or_else(|| TableError::UnknownPlan(plan.to_owned()))?;
            map.insert(hasher.key_hash(key.as_bytes()), id);
            static_keys += 1;
        }
        let strict = plans.iter().any(|p| p.limits.iter().any(|l| l.strict));
        Ok(Self {
            config_plans: plans.len(),
            plans,
            default_plan: default,
            keys: Arc::new(map),
            routes: HashMap::with_hasher(BuildNoHashHasher::default()),
            strict,
            planless: false,
            cold: Arc::new(Cold {
                static_keys,
                rls: rls::RlsDomains::default(),
            }),
        })
    }

    /// The table of a config without plans (and so without static keys):
    /// only the [`NO_PLANS`] placeholder.
    fn planless<'a>(
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, TableError> {
        if let Some((_, plan)) = keys.into_iter().next() {
            return Err(TableError::UnknownPlan(plan.to_owned()));
        }
        Ok(Self {
            plans: vec![Plan {
                name: NO_PLANS.to_owned(),
                limits: Vec::new(),
                concurrency: None,
            }],
            config_plans: 1,
            default_plan: PlanId(0),
            keys: Arc::new(HashMap::with_hasher(BuildNoHashHasher::default())),
            routes: HashMap::with_hasher(BuildNoHashHasher::default()),
            strict: false,
            planless: true,
            cold: Arc::new(Cold::default()),
        })
    }

    /// Whether the config defines no plans (see [`NO_PLANS`]).
    #[inline]
    pub fn is_planless(&self) -> bool {
        self.planless
    }

    /// The plan a key is on at `now`, given its keyed hash, and where
    /// that comes from: an override in force, else its static
    /// assignment, else the default plan.
    #[inline]
    pub fn assign(&self, key_hash: u64, now: Nanos) -> (Assigned, Source) {
        if !self.routes.is_empty()
            && let Some(r) = self.routes.get(&key_hash)
            && now < r.until
        {
            return (r.to, Source::Override);
        }
        self.configured(key_hash)
    }

    /// The plan the config gives a key (its static assignment, else the
    /// default plan), ignoring overrides.
    #[inline]
    pub fn configured(&self, key_hash: u64) -> (Assigned, Source) {
        match self.keys.get(&key_hash) {
            Some(&id) => (Assigned::Plan(id), Source::Static),
            None if self.planless => (Assigned::Blocked { until: None }, Source::Default),
            None => (Assigned::Plan(self.default_plan), Source::Default),
        }
    }

    /// The plan whose cells (and leases) the key with hash `key_hash` has
    /// at `now`: the plan it is on, or, while an operator blocks it, the
    /// one the config gives it (which it is back on when the block ends).
    pub fn home_plan(&self, key_hash: u64, now: Nanos) -> &Plan {
        match self.assign(key_hash, now).0 {
            Assigned::Plan(id) => self.plan(id),
            Assigned::Blocked { .. } => {
                self.plan(*self.keys.get(&key_hash).unwrap_or(&self.default_plan))
            }
        }
    }

    /// A plan by id: the config's plans first, then those of overrides
    /// with limits of their own. Ids are this table's: those of overrides
    /// change whenever the overrides do, so a decision is rendered with the
    /// table it was made with; an id beyond this table falls back to the
    /// default plan.
    #[inline]
    pub fn plan(&self, id: PlanId) -> &Plan {
        self.plans
            .get(id.0 as usize)
            .unwrap_or(&self.plans[self.default_plan.0 as usize])
    }

    /// The limit a decision refers to.
    pub fn limit(&self, r: LimitRef) -> Option<&Limit> {
        self.plans
            .get(r.plan.0 as usize)?
            .limits
            .get(r.limit as usize)
    }

    /// The config's plans, in config order (not those of overrides, nor
    /// the [`NO_PLANS`] placeholder).
    pub fn plans(&self) -> &[Plan] {
        &self.plans[usize::from(self.planless)..self.config_plans]
    }

    /// The default plan.
    pub fn default_plan(&self) -> &Plan {
        self.plan(self.default_plan)
    }

    /// A config plan's id by name.
    pub fn plan_id(&self, name: &str) -> Option<PlanId> {
        self.plans()
            .iter()
            .position(|p| p.name == name)
            .map(|i| PlanId((i + usize::from(self.planless)) as u32))
    }

    /// The table with these Envoy RLS domains.
    pub fn with_rls(mut self, rls: rls::RlsDomains) -> Self {
        Arc::make_mut(&mut self.cold).rls = rls;
        self
    }

    /// The Envoy RLS domains read from envoyproxy/ratelimit files.
    #[inline]
    pub fn rls(&self) -> &rls::RlsDomains {
        &self.cold.rls
    }

    /// How many static key assignments the table has.
    pub fn static_keys(&self) -> usize {
        self.cold.static_keys
    }

    /// This table's config part with `records` as its overrides (those in
    /// force at `now`) instead of its own, and the records naming a plan
    /// this config lacks (their keys stay on their usual plans).
    pub fn with_overrides<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Override>,
        now: Nanos,
    ) -> (Table, Vec<&'a Override>) {
        let (routes, unresolved) =
            Routes::build(records, self.config_plans, |n| self.plan_id(n), now);
        let mut plans = Vec::with_capacity(self.config_plans + routes.plans.len());
        plans.extend_from_slice(&self.plans[..self.config_plans]);
        plans.extend(routes.plans);
        let table = Table {
            plans,
            config_plans: self.config_plans,
            default_plan: self.default_plan,
            keys: Arc::clone(&self.keys),
            routes: routes.by_key,
            strict: self
                .plans()
                .iter()
                .any(|p| p.limits.iter().any(|l| l.strict))
                || routes.strict,
            planless: self.planless,
            cold: Arc::clone(&self.cold),
        };
        (table, unresolved)
    }

    /// How many overrides are in force in this table.
    #[inline]
    pub fn overrides(&self) -> usize {
        self.routes.len()
    }

    /// Whether any plan (of the config or of an override) has a strict
    /// limit: if not, no check needs Redis.
    #[inline]
    pub fn has_strict(&self) -> bool {
        self.strict
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;

    fn nz(v: u64) -> NonZeroU64 {
        NonZeroU64::new(v).unwrap()
    }

    #[test]
    fn rate_rejects_more_than_one_token_per_ns() {
        assert!(Rate::new(nz(2_000_000_000), NANOS_PER_SEC, nz(1)).is_err());
        assert!(Rate::new(nz(1_000_000_000), NANOS_PER_SEC, nz(1)).is_ok());
    }

    #[test]
    fn rate_rejects_spans_beyond_500_years() {
        assert!(Rate::new(nz(1), 86_400 * NANOS_PER_SEC, nz(u64::MAX)).is_err());
    }

    #[test]
    fn tokens_in_inverts_emission() {
        let r = Rate::new(nz(3), NANOS_PER_SEC, nz(10)).unwrap();
        for slack in [
            0,
            1,
            333_333_332,
            333_333_333,
            333_333_334,
            999_999_999,
            1_000_000_000,
        ] {
            let c = r.tokens_in(slack);
            assert!(r.emission(c) <= slack || c == 0, "slack {slack}");
            if c < r.burst() {
                assert!(r.emission(c + 1) > slack, "slack {slack}");
            }
        }
        assert_eq!(r.tokens_in(r.tau()), 10);
    }

    #[test]
    fn table_resolves_static_keys_by_hash() {
        let h = KeyHasher::with_secret([3; 16]);
        let plans = vec![
            Plan {
                concurrency: None,
                name: "free".into(),
                limits: vec![],
            },
            Plan {
                concurrency: None,
                name: "gold".into(),
                limits: vec![],
            },
        ];
        let t = Table::new(plans, "free", [("k1", "gold")], &h).unwrap();
        let plan = |key: &[u8]| match t.assign(h.key_hash(key), 0) {
            (Assigned::Plan(id), source) => (t.plan(id).name.as_str(), source),
            other => panic!("{other:?}"),
        };
        assert_eq!(plan(b"k1"), ("gold", Source::Static));
        assert_eq!(plan(b"other"), ("free", Source::Default));
        assert_eq!(t.static_keys(), 1);
    }

    #[test]
    fn table_rejects_unknown_plans() {
        let h = KeyHasher::with_secret([3; 16]);
        let plans = vec![Plan {
            concurrency: None,
            name: "free".into(),
            limits: vec![],
        }];
        assert_eq!(
            Table::new(plans.clone(), "gold", [], &h).unwrap_err(),
            TableError::UnknownDefaultPlan("gold".into())
        );
        assert_eq!(
            Table::new(plans, "free", [("k", "gold")], &h).unwrap_err(),
            TableError::UnknownPlan("gold".into())
        );
    }
}
