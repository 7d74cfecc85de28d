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
    pub fn new(
        table: Table,
        hasher: KeyHasher,
        limits: StoreLimits,
        clock: Arc<dyn Clock>,
    ) -> Self {
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

    /// Gives `req.cost` units back to every limit of the key's plan (a
    /// caller returning what it did not use), then reports the state.
    pub fn refund(&self, req: &Request<'_>) -> Decision {
        let lim = self.limiter;
        let now = lim.clock.now();
        let key_hash = lim.hasher.key_hash(req.key.as_bytes());
        let plan_id = self.table.plan_for(key_hash);
        for limit in &self.table.plan(plan_id).limits {
            lim.refund(limit, key_hash, now, req.cost);
        }
        self.check(&Request {
            key: req.key,
            cost: 0,
        })
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::core::clock::{ManualClock, NANOS_PER_SEC};
    use crate::core::window::Window;
    use crate::limits::{Plan, Quota, Rate};

    const T0: Nanos = 1_795_780_800 * NANOS_PER_SEC; // 2026-11-27T12:00:00Z

    fn nz(v: u64) -> NonZeroU64 {
        NonZeroU64::new(v).unwrap()
    }

    fn rate(plan: &str, name: &str, r: u64, b: u64) -> Limit {
        let rate = Rate::new(nz(r), NANOS_PER_SEC, nz(b)).unwrap();
        Limit::new(plan, name, LimitKind::Rate(rate))
    }

    fn quota(plan: &str, name: &str, q: u64, window: Window) -> Limit {
        Limit::new(
            plan,
            name,
            LimitKind::Quota(Quota {
                quota: nz(q),
                window,
            }),
        )
    }

    fn limiter(limits: Vec<Limit>, max_cells: usize) -> (Limiter, Arc<ManualClock>) {
        let hasher = KeyHasher::with_secret([9; 16]);
        let plans = vec![
            Plan {
                name: "p".into(),
                limits,
            },
            Plan {
                name: "open".into(),
                limits: vec![],
            },
        ];
        let table = Table::new(plans, "p", [("vip", "open")], &hasher).unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let l = Limiter::new(table, hasher, StoreLimits { max_cells }, clock.clone());
        (l, clock)
    }

    fn req(key: &str, cost: u64) -> Request<'_> {
        Request { key, cost }
    }

    #[test]
    fn a_denial_by_a_later_limit_refunds_the_earlier_ones() {
        let (l, _) = limiter(
            vec![rate("p", "rate", 10, 20), quota("p", "q", 12, Window::Day)],
            100,
        );
        assert!(l.check(&req("k", 10)).allowed);
        // The bucket has 10 left and would allow 5; the quota (2 left) denies.
        let d = l.check(&req("k", 5));
        assert!(!d.allowed);
        assert_eq!(l.snapshot().limit(&d).unwrap().name, "q");
        assert_eq!(d.remaining, 2);
        // Spending the last 2 of the quota is allowed; a dry run of the
        // bucket then shows 8 left: the denied check took nothing from it.
        let d = l.check(&req("k", 2));
        assert!(d.allowed);
        assert_eq!(d.remaining, 0, "closest limit is the quota");
        let snap = l.snapshot();
        let bucket = &snap.table().plan(PlanId(0)).limits[0];
        let v = l.apply(bucket, l.hasher.key_hash(b"k"), l.now(), 0, false);
        assert_eq!(v.remaining, 8);
    }

    #[test]
    fn denial_reports_the_longest_wait() {
        let (l, _) = limiter(
            vec![rate("p", "rate", 1, 1), quota("p", "q", 1, Window::Day)],
            100,
        );
        assert!(l.check(&req("k", 1)).allowed);
        let d = l.check(&req("k", 1));
        assert!(!d.allowed);
        assert_eq!(l.snapshot().limit(&d).unwrap().name, "q");
        assert_eq!(d.retry_after, Some(12 * 3_600 * NANOS_PER_SEC));
        assert_eq!(d.reason, DenyReason::Limited);
        let d = l.check(&req("k", 2));
        assert_eq!(d.reason, DenyReason::CostExceedsCapacity);
        assert_eq!(d.retry_after, None);
    }

    #[test]
    fn allowed_reports_the_limit_closest_to_exhaustion() {
        let (l, _) = limiter(
            vec![
                rate("p", "rate", 100, 100),
                quota("p", "q", 10, Window::Hour),
            ],
            100,
        );
        let d = l.check(&req("k", 1));
        assert_eq!(l.snapshot().limit(&d).unwrap().name, "q");
        assert_eq!((d.limit, d.remaining), (10, 9));
    }

    #[test]
    fn plan_without_limits_is_unlimited() {
        let (l, _) = limiter(vec![rate("p", "rate", 1, 1)], 100);
        assert_eq!(l.check(&req("vip", u64::MAX)), Decision::UNLIMITED);
        assert_eq!(l.store().tracked(), 0);
    }

    #[test]
    fn full_store_sends_new_keys_to_the_shared_overflow_bucket() {
        let (l, _) = limiter(vec![rate("p", "rate", 1, 3)], 2);
        assert!(l.check(&req("a", 1)).allowed);
        assert!(l.check(&req("b", 1)).allowed);
        assert_eq!(l.store().tracked(), 2);
        // New keys share one bucket of burst 3.
        for k in ["c", "d", "e"] {
            assert!(l.check(&req(k, 1)).allowed, "{k}");
        }
        assert!(!l.check(&req("f", 1)).allowed);
        assert_eq!(l.store().overflowed(), 4);
        // Existing keys keep their own buckets.
        assert!(l.check(&req("a", 1)).allowed);
        assert!(l.check(&req("b", 2)).allowed);
        // Two real cells plus the one overflow cell.
        assert_eq!(l.store().tracked(), 3);
    }

    #[test]
    fn sweep_drops_idle_cells_and_frees_the_cap() {
        let (l, clock) = limiter(
            vec![
                rate("p", "rate", 10, 10),
                quota("p", "q", 100, Window::Minute),
            ],
            4,
        );
        assert!(l.check(&req("a", 5)).allowed);
        assert!(l.check(&req("b", 5)).allowed);
        assert_eq!(l.store().tracked(), 4);
        // Half a second later the buckets are full again but the minute's
        // window is still open.
        clock.advance(NANOS_PER_SEC / 2);
        let r = l.sweep();
        assert_eq!((r.buckets, r.quotas), (2, 0));
        assert_eq!(l.store().tracked(), 2);
        clock.advance(60 * NANOS_PER_SEC);
        let r = l.sweep();
        assert_eq!(r.quotas, 2);
        assert_eq!(l.store().tracked(), 0);
        assert!(l.check(&req("c", 1)).allowed);
        assert_eq!(l.store().overflowed(), 0);
    }

    #[test]
    fn refund_gives_units_back() {
        let (l, _) = limiter(vec![rate("p", "rate", 1, 10)], 100);
        assert!(l.check(&req("k", 10)).allowed);
        assert!(!l.check(&req("k", 1)).allowed);
        let d = l.snapshot().refund(&req("k", 4));
        assert_eq!(d.remaining, 4);
        assert!(l.check(&req("k", 4)).allowed);
    }

    #[test]
    fn swapped_table_applies_to_the_next_check() {
        let (l, _) = limiter(vec![rate("p", "rate", 1, 1)], 100);
        assert!(l.check(&req("k", 1)).allowed);
        assert!(!l.check(&req("k", 1)).allowed);
        let hasher = *l.hasher();
        let plans = vec![Plan {
            name: "p".into(),
            limits: vec![],
        }];
        l.swap_table(Table::new(plans, "p", [], &hasher).unwrap());
        assert!(l.check(&req("k", 1)).allowed);
    }
}
