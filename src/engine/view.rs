//! [`View`]: one call's consistent rules (table and settings), and the
//! plan decision for one key on them: resolve the plan, dry-run then
//! charge every limit, refund on a lost race, so a denied check consumes
//! nothing.

use std::sync::Arc;

use arc_swap::Guard;

use super::cells::Cell;
use super::{Engine, Rules};
use crate::config::{Config, Live};
use crate::core::Act;
use crate::core::clock::Nanos;
use crate::core::decision::{Decision, DenyReason, LimitRef, PlanId, Request};
use crate::core::gcra::Verdict;
use crate::core::hash::mix;
use crate::core::source::Source as KeySource;
use crate::limits::file::MAX_LIMITS_PER_PLAN;
use crate::limits::{Assigned, Limit, Plan, Source, Table};
use crate::store::journal::CellKind;
use crate::store::{Landed, LocalStore};

/// The engine with the rules in effect held for the duration of one
/// call: the table and the settings of one moment.
pub struct View<'a> {
    rules: Guard<Arc<Rules>>,
    pub(super) engine: &'a Engine,
}

impl<'a> View<'a> {
    pub(super) fn new(rules: Guard<Arc<Rules>>, engine: &'a Engine) -> Self {
        Self { rules, engine }
    }
}

impl View<'_> {
    /// The table this view decides with.
    #[inline]
    pub fn table(&self) -> &Table {
        &self.rules.table
    }

    /// The config in effect with that table.
    #[inline]
    pub fn config(&self) -> &Config {
        &self.rules.config
    }

    /// Its settings a reload changes (caps, Envoy, response headers).
    #[inline]
    pub fn live(&self) -> &Live {
        &self.rules.config.live
    }

    /// The rules, shared: kept across a wait that must not hold the view.
    pub fn rules(&self) -> Arc<Rules> {
        Arc::clone(&self.rules)
    }

    /// The limit a decision names, if any.
    pub fn limit(&self, d: &Decision) -> Option<&Limit> {
        self.table().limit(d.policy?)
    }

    /// Decides one request. Synchronous and lock-light: a hash, then per
    /// limit a shard lookup and a compare-and-swap.
    ///
    /// A plan with several limits is decided in two passes: a dry run of
    /// every limit but the first (a denial returns here, having charged and
    /// created nothing), then the charge, in order, the first limit's
    /// charge deciding for it. Should a concurrent check take the room
    /// between the passes, what this check already took is refunded to
    /// exactly the cells it went to and the check is denied; a cell it
    /// created stays, empty, until the next sweep.
    #[inline]
    pub fn check(&self, req: &Request<'_>) -> Decision {
        self.decide(req, req.cost > 0)
    }

    /// [`View::check`], or with `commit == false` a peek: the answer a
    /// charge would get, changing nothing.
    pub(super) fn decide(&self, req: &Request<'_>, commit: bool) -> Decision {
        let (assigned, cell_key, now) = self.resolve(req);
        let plan = match assigned {
            Assigned::Plan(plan) => plan,
            Assigned::Blocked { until } => return blocked(until, now),
        };
        let limits = &self.table().plan(plan).limits;
        let lim = self.engine;
        let cell_key = (cell_key, KeySource::PLANS);
        if let [only] = limits.as_slice() {
            let (v, _) = lim.apply(only, cell_key, now, req.cost, commit);
            return decision(plan, 0, limits, v);
        }
        // Pass 1: dry-run every limit but the first (the first's charge in
        // pass 2 decides for it, before anything else is charged).
        let dry = |limit: &Limit| lim.apply(limit, cell_key, now, req.cost, false).0;
        let mut seen = Seen::default();
        for (i, limit) in limits.iter().enumerate().skip(1) {
            seen.note(i, dry(limit));
        }
        if seen.worst.is_some() || !commit {
            // Denied (or a peek): the first limit's verdict is needed too,
            // to report the longest wait (or the closest limit).
            if let Some(first) = limits.first() {
                seen.note(0, dry(first));
            }
            return seen.answer(plan, limits);
        }
        // Pass 2: charge in order. Should a concurrent check take the room
        // since pass 1, refund what this check took, exactly where it went.
        let mut charged = Seen::default();
        let mut landed = [Landed::Nowhere; MAX_LIMITS_PER_PLAN];
        for (i, limit) in limits.iter().enumerate() {
            let (v, at) = lim.apply(limit, cell_key, now, req.cost, true);
            if !v.allowed {
                for (earlier, at) in limits[..i].iter().zip(landed) {
                    lim.refund(earlier, cell_key.0, now, req.cost, at);
                }
                return decision(plan, i, limits, v);
            }
            if let Some(slot) = landed.get_mut(i) {
                *slot = at;
            }
            charged.note(i, v);
        }
        charged.answer(plan, limits)
    }

    /// The answer for `key` if an operator has blocked it now: a block
    /// wins over every limit, a request's own included.
    pub fn blocked(&self, key: &str) -> Option<Decision> {
        let now = self.engine.clock.now();
        let key_hash = self.engine.hasher.key_hash(key.as_bytes());
        match self.table().assign(key_hash, now).0 {
            Assigned::Blocked { until } => Some(blocked(until, now)),
            Assigned::Plan(_) => None,
        }
    }

    /// Gives `req.cost` units back to every limit of the key's plan (a
    /// caller returning what it did not use), then reports the state.
    /// Touches only the key's own cells and creates none: a key with
    /// nothing charged has nothing to return.
    pub fn refund(&self, req: &Request<'_>) -> Decision {
        let (assigned, cell_key, now) = self.resolve(req);
        let plan = match assigned {
            Assigned::Plan(plan) => plan,
            Assigned::Blocked { until } => return blocked(until, now),
        };
        // Only the key's own cells: a caller must not refill the shared
        // overflow bucket that holds a key flood back.
        for limit in &self.table().plan(plan).limits {
            self.engine
                .refund(limit, cell_key, now, req.cost, Landed::Own);
        }
        self.check(&Request { cost: 0, ..*req })
    }

    /// Charges `req.cost` units to every limit of the key's plan whatever
    /// they hold (a report of what was really spent: buckets may go into
    /// debt, quotas past their amount), then answers with the limit
    /// closest to exhaustion ([`Reported`]). A blocked key's reports charge
    /// nothing.
    pub fn report(&self, req: &Request<'_>) -> Decision {
        let (assigned, cell_key, now) = self.resolve(req);
        let plan = match assigned {
            Assigned::Plan(plan) => plan,
            Assigned::Blocked { until } => return blocked(until, now),
        };
        let limits = &self.table().plan(plan).limits;
        let mut worst = Reported::default();
        for (i, limit) in limits.iter().enumerate() {
            let key = (cell_key, KeySource::PLANS);
            let (v, _) = self.engine.apply_as(limit, key, now, req.cost, Act::Force);
            worst.note(i, v);
        }
        worst.answer(plan, limits)
    }

    /// The store the view's engine decides on.
    pub(crate) fn store(&self) -> &LocalStore {
        &self.engine.store
    }

    /// The id of `limit`'s own cell for `cell_key` at `now`.
    pub(crate) fn cell_id(&self, limit: &Limit, cell_key: u64, now: Nanos) -> u64 {
        Cell::of(limit, cell_key, now).id()
    }

    /// See [`Engine::cells_of`].
    pub(super) fn cells_of(&self, key_hash: u64) -> Vec<(u64, CellKind)> {
        let now = self.engine.clock.now();
        self.table()
            .home_plan(key_hash, now)
            .limits
            .iter()
            .map(|limit| {
                let (id, kind, _) = Cell::of(limit, key_hash, now).journal_entry(0);
                (id, kind)
            })
            .collect()
    }

    /// The key's plan, the key its cells are filed under, and the time.
    #[inline]
    pub(crate) fn resolve(&self, req: &Request<'_>) -> (Assigned, u64, Nanos) {
        let lim = self.engine;
        let key_hash = lim.hasher.key_hash(req.key.as_bytes());
        let cell_key = match req.scope {
            0 => key_hash,
            scope => mix(key_hash, scope),
        };
        let now = lim.clock.now();
        (self.table().assign(key_hash, now).0, cell_key, now)
    }

    /// Where the key with keyed hash `key_hash` stands now against every
    /// limit of its plan, as this node sees it, without spending anything
    /// (for operators; see [`Usage`]).
    pub fn usage(&self, key_hash: u64) -> Usage<'_> {
        let now = self.engine.clock.now();
        let (assigned, source) = self.table().assign(key_hash, now);
        let plan = match assigned {
            Assigned::Plan(id) => Some(self.table().plan(id)),
            Assigned::Blocked { .. } => None,
        };
        let limits = plan.map_or(&[][..], |p| &p.limits[..]);
        let standings = limits
            .iter()
            .map(|l| {
                let key = (key_hash, KeySource::PLANS);
                (l, self.engine.apply(l, key, now, 0, false).0)
            })
            .collect();
        Usage {
            assigned,
            source,
            plan,
            limits: standings,
        }
    }
}

/// A key's standing against its plan, for operators.
#[derive(Debug)]
pub struct Usage<'t> {
    /// Where the key goes now.
    pub assigned: Assigned,
    /// Where that comes from.
    pub source: Source,
    /// Its plan; `None` while it is blocked.
    pub plan: Option<&'t Plan>,
    /// Each limit of the plan and the key's state in it (a peek: cost 0).
    pub limits: Vec<(&'t Limit, Verdict)>,
}

/// The answer to any check of a blocked key: denied, until the block ends
/// (`retry_after` then) or for good (`retry_after` absent).
pub(super) fn blocked(until: Option<Nanos>, now: Nanos) -> Decision {
    let wait = until.map(|t| t.saturating_sub(now));
    Decision {
        allowed: false,
        limit: 0,
        remaining: 0,
        reset_after: wait.unwrap_or(0),
        retry_after: wait,
        reason: Some(DenyReason::Blocked),
        policy: None,
        plan: None,
        over: 0,
    }
}

fn decision(plan: PlanId, i: usize, limits: &[Limit], v: Verdict) -> Decision {
    let capacity = limits.get(i).map_or(0, Limit::capacity);
    Decision {
        policy: Some(LimitRef {
            plan,
            limit: i as u32,
        }),
        plan: Some(plan),
        ..Decision::of_verdict(&v, capacity)
    }
}

/// The verdicts of a dry run, reduced to what the answer needs: the
/// allowed limit closest to exhaustion and the denying limit with the
/// longest wait (the first of equals, in plan order).
#[derive(Default)]
pub(crate) struct Seen {
    closest: Option<(usize, Verdict)>,
    worst: Option<(usize, Verdict)>,
}

impl Seen {
    pub(crate) fn note(&mut self, i: usize, v: Verdict) {
        if v.allowed {
            let closer = |(j, c): (usize, Verdict)| {
                v.remaining < c.remaining || (v.remaining == c.remaining && i < j)
            };
            if self.closest.is_none_or(closer) {
                self.closest = Some((i, v));
            }
        } else {
            let longer = |(j, w): (usize, Verdict)| {
                waits_longer(v.retry_after, w.retry_after)
                    || (v.retry_after == w.retry_after && i < j)
            };
            if self.worst.is_none_or(longer) {
                self.worst = Some((i, v));
            }
        }
    }

    /// The answer: the longest wait if any limit denied, else the limit
    /// closest to exhaustion, else (no limits) unlimited.
    pub(crate) fn answer(&self, plan: PlanId, limits: &[Limit]) -> Decision {
        match self.worst.or(self.closest) {
            Some((i, v)) => decision(plan, i, limits, v),
            None => Decision {
                plan: Some(plan),
                ..Decision::UNLIMITED
            },
        }
    }
}

/// The limits' standings after a report, reduced to the one closest to
/// exhaustion: fewest units left, then the longest wait for one unit,
/// then the most debt, then the first in plan order.
#[derive(Default)]
pub(super) struct Reported {
    closest: Option<(usize, Verdict)>,
}

impl Reported {
    pub(super) fn note(&mut self, i: usize, v: Verdict) {
        let closer = |(_, c): (usize, Verdict)| {
            if v.remaining != c.remaining {
                v.remaining < c.remaining
            } else if v.retry_after != c.retry_after {
                waits_longer(v.retry_after, c.retry_after)
            } else {
                v.excess > c.excess
            }
        };
        if self.closest.is_none_or(closer) {
            self.closest = Some((i, v));
        }
    }

    pub(super) fn answer(&self, plan: PlanId, limits: &[Limit]) -> Decision {
        match self.closest {
            Some((i, v)) => Decision {
                over: v.excess,
                ..decision(plan, i, limits, v)
            },
            None => Decision {
                plan: Some(plan),
                ..Decision::UNLIMITED
            },
        }
    }
}

/// `None` (never) waits longest.
pub(super) fn waits_longer(a: Option<Nanos>, b: Option<Nanos>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
        _ => false,
    }
}
