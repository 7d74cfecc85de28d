//! [`Limiter::check`]: the one synchronous decision function behind every
//! front door. It resolves the key's plan in the current [`Table`],
//! applies each of the plan's limits to the key's cells in the
//! [`LocalStore`], and rolls back if any limit denies, so a denied check
//! consumes nothing.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::clock::{Clock, Nanos};
use super::decision::{Decision, DenyReason, Request};
use super::gcra::{self, Verdict};
use super::hash::{KeyHasher, mix};
use super::quota;
use crate::limits::{Limit, LimitKind, LimitRef, PlanId, Table};
use crate::store::{LocalStore, StoreLimits, SweepReport};

/// Stands in for the key hash of the shared overflow cells.
const OVERFLOW_KEY: u64 = 0x6f76_6572_666c_6f77;

/// The decision engine: the limits table, this node's store, the clock
/// and the key hasher.
pub struct Limiter {
    table: ArcSwap<Table>,
    store: LocalStore,
    clock: Arc<dyn Clock>,
    hasher: KeyHasher,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("plans", &self.table.load().plans().len())
            .field("tracked", &self.store.tracked())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter over `table`. `hasher` must be the one the table's static
    /// keys were hashed with.
    pub fn new(table: Table, hasher: KeyHasher, limits: StoreLimits, clock: Arc<dyn Clock>) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
            store: LocalStore::new(limits),
            clock,
            hasher,
        }
    }

    /// Decides one request against the current table.
    #[inline]
    pub fn check(&self, req: &Request<'_>) -> Decision {
        self.snapshot().check(req)
    }

    /// A consistent view of the current table for one call (a batch or a
    /// response that needs policy names). Cheap; do not hold it for long.
    #[inline]
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            table: self.table.load(),
            limiter: self,
        }
    }

    /// Replaces the table. Checks in flight finish on the old one.
    pub fn swap_table(&self, table: Table) {
        self.table.store(Arc::new(table));
    }

    /// Drops idle cells (see [`LocalStore::sweep`]).
    pub fn sweep(&self) -> SweepReport {
        self.store.sweep(self.clock.now())
    }

    /// This node's store (for sizes and counters).
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// The keyed hasher for API keys (for logs).
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// The current time according to the limiter's clock.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }
}

/// A limiter with a table snapshot held for the duration of one call.
pub struct Snapshot<'a> {
    table: Guard<Arc<Table>>,
    limiter: &'a Limiter,
}

impl Snapshot<'_> {
    /// The table this snapshot decides with.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The limit a decision names, if any.
    pub fn limit(&self, d: &Decision) -> Option<&Limit> {
        self.table.limit(d.policy?)
    }

    /// Decides one request. Synchronous and lock-light: a hash, one shard
    /// lookup and one compare-and-swap per limit of the plan.
    pub fn check(&self, req: &Request<'_>) -> Decision {
        let lim = self.limiter;
        let now = lim.clock.now();
        let key_hash = lim.hasher.key_hash(req.key.as_bytes());
        let plan_id = self.table.plan_for(key_hash);
        let limits = &self.table.plan(plan_id).limits;
        let mut closest: Option<(usize, Verdict)> = None;
        for (i, limit) in limits.iter().enumerate() {
            let v = lim.apply(limit, key_hash, now, req.cost, true);
            if !v.allowed {
                for earlier in &limits[..i] {
                    lim.refund(earlier, key_hash, now, req.cost);
                }
                return self.denied(plan_id, limits, i, v, key_hash, now, req.cost);
            }
            if closest.is_none_or(|(_, c)| v.remaining < c.remaining) {
                closest = Some((i, v));
            }
        }
        match closest {
            Some((i, v)) => decision(plan_id, i, limits, v, DenyReason::None),
            None => Decision::UNLIMITED,
        }
    }

    /// Builds the answer for a check that limit `first` denied: looks at
    /// the remaining limits (without consuming) and reports the longest wait.
    #[allow(clippy::too_many_arguments)]
    fn denied(
        &self,
        plan: PlanId,
        limits: &[Limit],
        first: usize,
        v: Verdict,
        key_hash: u64,
        now: Nanos,
        cost: u64,
    ) -> Decision {
        let mut worst = (first, v);
        for (j, limit) in limits.iter().enumerate().skip(first + 1) {
            let w = self.limiter.apply(limit, key_hash, now, cost, false);
            if !w.allowed && waits_longer(w.retry_after, worst.1.retry_after) {
                worst = (j, w);
            }
        }
        let reason = if worst.1.retry_after.is_none() {
            DenyReason::CostExceedsCapacity
        } else {
            DenyReason::Limited
        };
        decision(plan, worst.0, limits, worst.1, reason)
    }
}

fn decision(plan: PlanId, i: usize, limits: &[Limit], v: Verdict, reason: DenyReason) -> Decision {
    Decision {
        allowed: v.allowed,
        limit: limits.get(i).map_or(0, Limit::capacity),
        remaining: v.remaining,
        reset_after: v.reset_after,
        retry_after: v.retry_after,
        reason,
        policy: Some(LimitRef {
            plan,
            limit: i as u32,
        }),
    }
}

/// `None` (never) waits longest.
fn waits_longer(a: Option<Nanos>, b: Option<Nanos>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
        _ => false,
    }
}

/// Where one limit keeps one key's state right now.
enum Cell<'l> {
    Bucket {
        rate: &'l crate::limits::Rate,
        id: u64,
        overflow: u64,
    },
    Quota {
        quota: &'l crate::limits::Quota,
        span: super::window::Span,
        id: u64,
        overflow: u64,
    },
}

impl<'l> Cell<'l> {
    #[inline]
    fn of(limit: &'l Limit, key_hash: u64, now: Nanos) -> Self {
        match &limit.kind {
            LimitKind::Rate(rate) => Cell::Bucket {
                rate,
                id: mix(key_hash, limit.uid),
                overflow: mix(OVERFLOW_KEY, limit.uid),
            },
            LimitKind::Quota(quota) => {
                let span = quota.window.span(now);
                Cell::Quota {
                    quota,
                    span,
                    id: mix(mix(key_hash, limit.uid), span.index),
                    overflow: mix(mix(OVERFLOW_KEY, limit.uid), span.index),
                }
            }
        }
    }
}

impl Limiter {
    /// Checks one limit for one key; `commit == false` is a dry run.
    #[inline]
    fn apply(&self, limit: &Limit, key_hash: u64, now: Nanos, cost: u64, commit: bool) -> Verdict {
        match Cell::of(limit, key_hash, now) {
            Cell::Bucket { rate, id, overflow } => self
                .store
                .with_bucket(id, overflow, |c| gcra::check(rate, c, now, cost, commit)),
            Cell::Quota {
                quota: q,
                span,
                id,
                overflow,
            } => self.store.with_quota(id, overflow, span.end, |c| {
                quota::check(q, c, span, now, cost, commit)
            }),
        }
    }

    /// Gives back what [`Self::apply`] took.
    fn refund(&self, limit: &Limit, key_hash: u64, now: Nanos, cost: u64) {
        match Cell::of(limit, key_hash, now) {
            Cell::Bucket { rate, id, overflow } => self
                .store
                .with_bucket(id, overflow, |c| gcra::refund(rate, c, cost)),
            Cell::Quota {
                span, id, overflow, ..
            } => self
                .store
                .with_quota(id, overflow, span.end, |c| quota::refund(c, cost)),
        }
    }
}
