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
use super::source::Source as KeySource;
use super::{counter, quota};
use crate::limits::{Assigned, Limit, LimitKind, LimitRef, Plan, PlanId, Source, Table};

use crate::limits::file::MAX_LIMITS_PER_PLAN;
use crate::store::journal::CellKind;
use crate::store::{
    BucketCell, Cell as StoreCell, Landed, LocalStore, Map, Meta, QuotaCell, StoreLimits,
    SweepReport,
};

/// Stands in for the key hash of the shared overflow cells.
const OVERFLOW_KEY: u64 = 0x6f76_6572_666c_6f77;

/// The decision engine: the limits table, this node's store, the clock
/// and the key hasher.
///
/// ```
/// use std::num::NonZeroU64;
/// use std::sync::Arc;
/// use quotad::core::{KeyHasher, Limiter, ManualClock, Request};
/// use quotad::core::clock::NANOS_PER_SEC;
/// use quotad::limits::{Limit, LimitKind, Plan, Rate, Table};
/// use quotad::store::StoreLimits;
///
/// // 10 per second, bursting to 20.
/// let rate = Rate::new(NonZeroU64::new(10).unwrap(), NANOS_PER_SEC, NonZeroU64::new(20).unwrap()).unwrap();
/// let plan = Plan { name: "free".into(), limits: vec![Limit::new("free", "per-second", LimitKind::Rate(rate))] };
/// let hasher = KeyHasher::random();
/// let table = Table::new(vec![plan], "free", [], &hasher).unwrap();
/// let clock = Arc::new(ManualClock::new(1_700_000_000 * NANOS_PER_SEC));
/// let limiter = Limiter::new(table, hasher, StoreLimits::default(), clock.clone());
///
/// let d = limiter.check(&Request::new("alice", 20));
/// assert!(d.allowed && d.remaining == 0);
/// let d = limiter.check(&Request::new("alice", 1));
/// assert!(!d.allowed);
/// assert_eq!(d.retry_after, Some(100_000_000)); // one token every 100 ms
/// clock.advance(100_000_000);
/// assert!(limiter.check(&Request::new("alice", 1)).allowed);
/// ```
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

    /// Journals every charge for a Redis sync task (see
    /// [`crate::sync`]). Call before sharing the limiter.
    pub fn enable_sync(&mut self) {
        self.store.enable_journal();
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

    /// Decides `cost` units against one limit for the cells filed under
    /// `key` (a keyed hash, such as an Envoy descriptor's), outside any
    /// plan, counting any new cell under `source`'s budget: how Envoy RLS
    /// descriptor limits are applied. A cost of 0 only reports the state.
    #[inline]
    pub fn check_limit(&self, limit: &Limit, key: u64, cost: u64, source: KeySource) -> Verdict {
        self.apply(limit, (key, source), self.clock.now(), cost, cost > 0)
            .0
    }

    /// Forgets what the key with keyed hash `key_hash` has spent against
    /// every limit of its plan on this node (see [`Limiter::cells_of`]):
    /// its own cells go, as do their pending Redis deltas, so its next
    /// check starts full.
    /// Cells of Envoy descriptors with more entries than the key, and
    /// charges that went to the shared overflow cell, stay. Returns how
    /// many cells were dropped.
    pub fn reset(&self, key_hash: u64) -> usize {
        let mut dropped = 0;
        for (id, kind) in self.cells_of(key_hash) {
            let gone = match kind {
                CellKind::Bucket => self.store.remove_bucket(id),
                CellKind::Counter { .. } => self.store.remove_quota(id),
            };
            if let Some(j) = self.store.journal() {
                j.forget(id);
            }
            dropped += usize::from(gone);
        }
        dropped
    }

    /// How many of [`Limiter::cells_of`]'s cells this node tracks.
    pub fn tracked_cells(&self, key_hash: u64) -> usize {
        self.cells_of(key_hash)
            .into_iter()
            .filter(|(id, kind)| self.store.tracks(*id, *kind == CellKind::Bucket))
            .count()
    }

    /// The ids and kinds of the cells the key with keyed hash `key_hash`
    /// has now, one per limit of its current plan (its cells are filed
    /// under `key_hash` itself; a blocked key's are those of the plan the
    /// config gives it, which it is back on when the block ends): what
    /// [`Limiter::reset`] drops, and what Redis names them by.
    pub fn cells_of(&self, key_hash: u64) -> Vec<(u64, CellKind)> {
        let snap = self.snapshot();
        let now = self.clock.now();
        let plan = match snap.table.assign(key_hash, now).0 {
            Assigned::Plan(id) => snap.table.plan(id),
            Assigned::Blocked { .. } => match snap.table.configured(key_hash).0 {
                Assigned::Plan(id) => snap.table.plan(id),
                Assigned::Blocked { .. } => return Vec::new(),
            },
        };
        plan.limits
            .iter()
            .map(|limit| {
                let (id, kind, _) = Cell::of(limit, key_hash, now).journal_entry(0);
                (id, kind)
            })
            .collect()
    }

    /// Gives `cost` units back to one limit's cell for `key` (creating
    /// nothing), then reports its state, as [`Limiter::check_limit`] with
    /// cost 0 would.
    pub fn refund_limit(&self, limit: &Limit, key: u64, cost: u64) -> Verdict {
        let now = self.clock.now();
        self.refund(limit, key, now, cost, Landed::Own);
        self.apply(limit, (key, KeySource::PLANS), now, 0, false).0
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

    /// The table, shared: kept across a wait that must not hold the
    /// snapshot.
    pub fn table_arc(&self) -> Arc<Table> {
        Arc::clone(&self.table)
    }

    /// The limit a decision names, if any.
    pub fn limit(&self, d: &Decision) -> Option<&Limit> {
        self.table.limit(d.policy?)
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
    pub fn check(&self, req: &Request<'_>) -> Decision {
        let (assigned, cell_key, now) = self.resolve(req);
        let plan = match assigned {
            Assigned::Plan(plan) => plan,
            Assigned::Blocked { until } => return blocked(until, now),
        };
        let limits = &self.table.plan(plan).limits;
        let lim = self.limiter;
        let commit = req.cost > 0;
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
        let now = self.limiter.clock.now();
        let key_hash = self.limiter.hasher.key_hash(key.as_bytes());
        match self.table.assign(key_hash, now).0 {
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
        for limit in &self.table.plan(plan).limits {
            self.limiter
                .refund(limit, cell_key, now, req.cost, Landed::Own);
        }
        self.check(&Request { cost: 0, ..*req })
    }

    /// The store the snapshot's limiter decides on.
    pub(crate) fn store(&self) -> &LocalStore {
        &self.limiter.store
    }

    /// The id of `limit`'s own cell for `cell_key` at `now`.
    pub(crate) fn cell_id(&self, limit: &Limit, cell_key: u64, now: Nanos) -> u64 {
        Cell::of(limit, cell_key, now).id()
    }

    /// The key's plan, the key its cells are filed under, and the time.
    #[inline]
    pub(crate) fn resolve(&self, req: &Request<'_>) -> (Assigned, u64, Nanos) {
        let lim = self.limiter;
        let key_hash = lim.hasher.key_hash(req.key.as_bytes());
        let cell_key = match req.scope {
            0 => key_hash,
            scope => mix(key_hash, scope),
        };
        let now = lim.clock.now();
        (self.table.assign(key_hash, now).0, cell_key, now)
    }

    /// Where the key with keyed hash `key_hash` stands now against every
    /// limit of its plan, as this node sees it, without spending anything
    /// (for operators; see [`Usage`]).
    pub fn usage(&self, key_hash: u64) -> Usage<'_> {
        let now = self.limiter.clock.now();
        let (assigned, source) = self.table.assign(key_hash, now);
        let plan = match assigned {
            Assigned::Plan(id) => Some(self.table.plan(id)),
            Assigned::Blocked { .. } => None,
        };
        let limits = plan.map_or(&[][..], |p| &p.limits[..]);
        let standings = limits
            .iter()
            .map(|l| {
                let key = (key_hash, KeySource::PLANS);
                (l, self.limiter.apply(l, key, now, 0, false).0)
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
fn blocked(until: Option<Nanos>, now: Nanos) -> Decision {
    let wait = until.map(|t| t.saturating_sub(now));
    Decision {
        allowed: false,
        limit: 0,
        remaining: 0,
        reset_after: wait.unwrap_or(0),
        retry_after: wait,
        reason: DenyReason::Blocked,
        policy: None,
        plan: None,
    }
}

fn decision(plan: PlanId, i: usize, limits: &[Limit], v: Verdict) -> Decision {
    let reason = match (v.allowed, v.retry_after) {
        (true, _) => DenyReason::None,
        (false, None) => DenyReason::CostExceedsCapacity,
        (false, Some(_)) => DenyReason::Limited,
    };
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
        plan: Some(plan),
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

/// `None` (never) waits longest.
fn waits_longer(a: Option<Nanos>, b: Option<Nanos>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
        _ => false,
    }
}

/// Where one limit keeps one key's state right now.
#[derive(Clone, Copy)]
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
    Counter {
        window: &'l crate::limits::FixedWindow,
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
            LimitKind::Window(window) => {
                let span = super::window::epoch_span(now, window.period);
                // Counters of one unit share `uid` (a descriptor's counter
                // is the same whichever rule applies), so the overflow
                // counter also keys on the limit: one per (unit, limit).
                let shape = mix(limit.uid, window.limit);
                Cell::Counter {
                    window,
                    span,
                    id: mix(mix(key_hash, limit.uid), span.index),
                    overflow: mix(mix(OVERFLOW_KEY, shape), span.index),
                }
            }
        }
    }
}

impl Cell<'_> {
    /// The key's own cell id.
    fn id(&self) -> u64 {
        match *self {
            Cell::Bucket { id, .. } | Cell::Quota { id, .. } | Cell::Counter { id, .. } => id,
        }
    }

    /// What a charge (or, negated, a refund) of `cost` to the key's own
    /// cell adds to the sync journal: the cell, its kind, the delta.
    fn journal_entry(&self, cost: u64) -> (u64, CellKind, i64) {
        let units = i64::try_from(cost).unwrap_or(i64::MAX);
        match *self {
            Cell::Bucket { rate, id, .. } => (
                id,
                CellKind::Bucket,
                i64::try_from(rate.emission(cost)).unwrap_or(i64::MAX),
            ),
            Cell::Quota { span, id, .. } | Cell::Counter { span, id, .. } => (
                id,
                CellKind::Counter {
                    window_end: span.end,
                },
                units,
            ),
        }
    }
}

impl Limiter {
    /// Checks one limit for one key (its keyed hash and the source a new
    /// cell counts under); `commit == false` is a dry run. Says where the
    /// units were charged, if anywhere.
    #[inline]
    fn apply(
        &self,
        limit: &Limit,
        (key, source): (u64, KeySource),
        now: Nanos,
        cost: u64,
        commit: bool,
    ) -> (Verdict, Landed) {
        let cell = Cell::of(limit, key, now);
        let at = Charge {
            source,
            now,
            commit,
        };
        let (v, landed) = match cell {
            Cell::Bucket { rate, id, overflow } => at.charge(
                self.store.buckets(),
                (id, overflow),
                BucketCell::new,
                |c, commit| gcra::check(rate, &c.tat, now, cost, commit),
                false,
            ),
            Cell::Quota {
                quota: q,
                span,
                id,
                overflow,
            } => at.charge(
                self.store.quotas(),
                (id, overflow),
                |m| QuotaCell::new(span.end, m),
                |c, commit| quota::check(q, c, span, now, cost, commit),
                false,
            ),
            // Limit 0 is always over: nothing to count, no cell to create.
            Cell::Counter {
                window: w, span, ..
            } if w.limit == 0 => (counter::decide(w, 0, span, now, cost).0, Landed::Nowhere),
            Cell::Counter {
                window: w,
                span,
                id,
                overflow,
            } => at.charge(
                self.store.quotas(),
                (id, overflow),
                |m| QuotaCell::new(span.end, m),
                |c, commit| counter::check(w, c, span, now, cost, commit),
                true,
            ),
        };
        match landed {
            Landed::Overflow => self.store.note_overflow(),
            // Only a key's own cells are synced: overflow cells are this
            // node's flood guard.
            Landed::Own => {
                if let Some(j) = self.store.journal() {
                    let (id, kind, delta) = cell.journal_entry(cost);
                    j.add(id, key, kind, delta, now);
                }
            }
            Landed::Nowhere => {}
        }
        (v, landed)
    }

    /// Gives back `cost` units to the cell `at` names (the key's own, or
    /// the overflow cell a charge went to). Creates nothing; a cell swept
    /// meanwhile was full, so has nothing to give back.
    fn refund(&self, limit: &Limit, key: u64, now: Nanos, cost: u64, at: Landed) {
        let pick = |id: u64, overflow: u64| match at {
            Landed::Own => Some(id),
            Landed::Overflow => Some(overflow),
            Landed::Nowhere => None,
        };
        let cell = Cell::of(limit, key, now);
        let refunded = match cell {
            Cell::Bucket { rate, id, overflow } => pick(id, overflow).and_then(|id| {
                self.store
                    .buckets()
                    .get(id, |c| gcra::refund(rate, &c.tat, cost))
            }),
            Cell::Quota { id, overflow, .. } | Cell::Counter { id, overflow, .. } => {
                pick(id, overflow)
                    .and_then(|id| self.store.quotas().get(id, |c| quota::refund(c, cost)))
            }
        };
        if at == Landed::Own
            && refunded.is_some()
            && let Some(j) = self.store.journal()
        {
            let (id, kind, delta) = cell.journal_entry(cost);
            j.add(id, key, kind, -delta, now);
        }
    }
}

/// What one charge is made for: the source a new cell counts under, the
/// time, and whether it is a commit or a dry run.
#[derive(Clone, Copy)]
struct Charge {
    source: KeySource,
    now: Nanos,
    commit: bool,
}

impl Charge {
    /// The one evaluate-then-charge path of every cell kind: a tracked
    /// cell is updated in place; an untracked key is first evaluated as a
    /// new cell, and a cell is created (in free room, or room the store's
    /// admission policy makes) only when the check is a commit and would
    /// pass, or, for kinds that count denied hits too (`counts_denied`),
    /// when it is a commit at all and the store is not nearly full.
    /// Without room the charge goes to the limit's overflow cell.
    #[inline]
    fn charge<V: StoreCell>(
        self,
        map: Map<'_, V>,
        ids: (u64, u64),
        make: impl Fn(Meta) -> V,
        eval: impl Fn(&V, bool) -> Verdict,
        counts_denied: bool,
    ) -> (Verdict, Landed) {
        let commit = self.commit;
        let counted = |v: &Verdict| commit && (v.allowed || counts_denied);
        let landed = |v: &Verdict, at: Landed| if counted(v) { at } else { Landed::Nowhere };
        let tracked = map.get(ids.0, |c| {
            let v = eval(c, commit);
            if counted(&v) {
                c.meta().hit();
            }
            v
        });
        if let Some(v) = tracked {
            return (v, landed(&v, Landed::Own));
        }
        let v = eval(&make(Meta::new(self.source, self.now)), false);
        if !commit || !(v.allowed || (counts_denied && !map.is_nearly_full())) {
            return (v, Landed::Nowhere);
        }
        let ((v, charged), at) = map.upsert(ids, self.source, self.now, make, |c, overflow| {
            // A denied hit is never counted in a shared overflow cell,
            // where it would hold every other new key over the limit.
            if overflow && counts_denied {
                let v = eval(c, false);
                if !v.allowed {
                    return (v, false);
                }
            }
            let v = eval(c, true);
            let charged = counted(&v);
            if charged {
                c.meta().hit();
            }
            (v, charged)
        });
        (v, if charged { at } else { Landed::Nowhere })
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
        Request::new(key, cost)
    }

    /// `threads` threads each make `each` cost-1 checks of `key` at once;
    /// returns how many were admitted.
    fn hammer(l: &Limiter, threads: usize, each: usize, key: &str) -> u64 {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| (0..each).filter(|_| l.check(&req(key, 1)).allowed).count() as u64)
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        })
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
        let (v, _) = l.apply(
            bucket,
            (l.hasher.key_hash(b"k"), KeySource::PLANS),
            l.now(),
            0,
            false,
        );
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
        let d = l.check(&req("vip", u64::MAX));
        assert_eq!(
            d.plan
                .map(|p| l.snapshot().table().plan(p).name.clone())
                .as_deref(),
            Some("open")
        );
        assert_eq!(Decision { plan: None, ..d }, Decision::UNLIMITED);
        assert_eq!(l.store().tracked(), 0);
    }

    #[test]
    fn a_full_store_keeps_keys_charged_twice_and_sends_one_shot_newcomers_to_overflow() {
        let (l, _) = limiter(vec![rate("p", "rate", 1, 3)], 2);
        for k in ["a", "a", "b", "b"] {
            assert!(l.check(&req(k, 1)).allowed);
        }
        assert_eq!(l.store().tracked(), 2);
        // Newcomers asking once cannot displace a key charged twice: they
        // share one overflow bucket of burst 3.
        for k in ["c", "d", "e"] {
            assert!(l.check(&req(k, 1)).allowed, "{k}");
        }
        assert!(!l.check(&req("f", 1)).allowed);
        // Three charges went to the overflow bucket, four checks were
        // judged there; the denial charged nothing.
        assert_eq!(l.store().overflowed(), 3);
        assert_eq!(l.store().overflow_checks(), 4);
        assert_eq!(l.store().displaced().refused, 4);
        // Existing keys keep their own buckets (one token left each).
        assert!(l.check(&req("a", 1)).allowed);
        assert!(!l.check(&req("b", 2)).allowed);
        // Two real cells plus the one overflow cell.
        assert_eq!(l.store().tracked(), 3);
    }

    #[test]
    fn a_new_key_displaces_the_cheapest_cell_and_what_it_held_is_counted() {
        let (l, clock) = limiter(vec![quota("p", "q", 100, Window::Day)], 3);
        for _ in 0..3 {
            assert!(l.check(&req("busy", 1)).allowed);
        }
        assert!(l.check(&req("once", 7)).allowed);
        clock.advance(1_000_000);
        assert!(l.check(&req("newer", 1)).allowed);
        assert!(l.store().is_full());
        // "once" and "newer" were charged once each: the newer goes.
        let d = l.check(&req("new", 1));
        assert!(d.allowed && d.remaining == 99, "{d:?}");
        let lost = l.store().displaced();
        assert_eq!((lost.counters, lost.units, lost.refused), (1, 1, 0));
        assert_eq!(l.store().overflow_checks(), 0);
        assert_eq!(l.check(&req("busy", 0)).remaining, 97, "kept");
        assert_eq!(l.check(&req("once", 0)).remaining, 93, "kept");
        // A full window over holds nothing: it goes first, at no loss.
        clock.advance(86_400 * NANOS_PER_SEC);
        assert!(l.check(&req("later", 1)).allowed);
        let lost = l.store().displaced();
        assert_eq!((lost.counters, lost.units), (2, 1));
        assert_eq!(l.store().tracked(), 3);
    }

    #[test]
    fn a_key_that_keeps_asking_wins_a_cell_from_one_charged_less() {
        let (l, _) = limiter(vec![rate("p", "rate", 1, 10)], 1);
        for _ in 0..3 {
            assert!(l.check(&req("old", 1)).allowed);
        }
        // The overflow bucket (burst 10) serves it meanwhile.
        assert!(l.check(&req("new", 1)).allowed);
        assert!(l.check(&req("new", 1)).allowed);
        assert_eq!(l.store().overflowed(), 2);
        // Its third ask matches the old key's three charges.
        let d = l.check(&req("new", 1));
        assert!(d.allowed && d.remaining == 9, "its own bucket: {d:?}");
        assert_eq!(l.store().overflowed(), 2);
        assert_eq!(l.store().displaced().buckets, 1);
    }

    #[test]
    fn budgets_keep_a_flood_through_one_domain_off_another_domains_cells() {
        let (l, _) = limiter(vec![], 10);
        let w = window(100);
        let (shop, flood) = (
            KeySource::of_domain("limiter-test-shop"),
            KeySource::of_domain("limiter-test-flood"),
        );
        for key in 0..3 {
            assert!(l.check_limit(&w, key, 1, shop).allowed);
        }
        // A one-shot flood through another domain fills the rest, then
        // only displaces its own cells: the shop's stay, each at 1, though
        // they were charged no more often than the flood's.
        for key in 1_000..3_000 {
            assert!(l.check_limit(&w, key, 1, flood).allowed);
        }
        assert_eq!(l.store().budgets().held(shop), 3);
        assert_eq!(l.store().budgets().held(flood), 7);
        for key in 0..3 {
            assert_eq!(l.check_limit(&w, key, 0, shop).remaining, 99, "{key}");
        }
        // A new shop key, under its share (5 of 10), takes a flood cell.
        assert!(l.check_limit(&w, 10, 1, shop).allowed);
        assert_eq!(l.store().budgets().held(shop), 4);
        assert_eq!(l.store().overflow_checks(), 0);
    }

    fn window(limit: u64) -> Limit {
        let period = 60 * NANOS_PER_SEC;
        let kind = LimitKind::Window(crate::limits::FixedWindow { limit, period });
        Limit::new("rls", "w", kind)
    }

    #[test]
    fn fixed_windows_count_refused_hits_in_their_own_cell() {
        let (l, _) = limiter(vec![], 10);
        let w = window(3);
        // A first hit larger than the limit is refused, and counted.
        assert!(!l.check_limit(&w, 7, 5, KeySource::PLANS).allowed);
        assert_eq!(l.store().tracked(), 1);
        assert!(!l.check_limit(&w, 7, 1, KeySource::PLANS).allowed);
        // A peek counts nothing and creates nothing.
        assert!(l.check_limit(&w, 8, 0, KeySource::PLANS).allowed);
        assert_eq!(l.store().tracked(), 1);
        // A refund gives back to the own cell only.
        let v = l.refund_limit(&w, 7, 6);
        assert!(v.allowed);
        assert_eq!(v.remaining, 3);
        // Limit 0 keeps no cell at all.
        assert!(!l.check_limit(&window(0), 9, 1, KeySource::PLANS).allowed);
        assert_eq!(l.store().tracked(), 1);
    }

    #[test]
    fn refused_fixed_window_hits_never_fill_the_shared_overflow_counter() {
        let (l, _) = limiter(vec![], 1);
        let w = window(2);
        // Charged twice: no newcomer asking once displaces it.
        assert!(l.check_limit(&w, 1, 1, KeySource::PLANS).allowed);
        assert!(l.check_limit(&w, 1, 1, KeySource::PLANS).allowed);
        assert!(l.store().is_full());
        // New descriptors share one overflow counter of limit 2; refused
        // hits (too big for the limit) are not added to it.
        for key in 100..110 {
            assert!(
                !l.check_limit(&w, key, 3, KeySource::PLANS).allowed,
                "{key}"
            );
        }
        assert!(l.check_limit(&w, 200, 1, KeySource::PLANS).allowed);
        assert!(l.check_limit(&w, 201, 1, KeySource::PLANS).allowed);
        assert!(!l.check_limit(&w, 202, 1, KeySource::PLANS).allowed);
        // Another limit of the same unit has its own overflow counter.
        assert!(l.check_limit(&window(5), 203, 1, KeySource::PLANS).allowed);
        assert_eq!(l.store().overflowed(), 3);
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

    #[test]
    fn denials_peeks_and_refunds_create_no_cells() {
        let (l, _) = limiter(
            vec![rate("p", "rate", 1, 2), quota("p", "q", 5, Window::Month)],
            100,
        );
        for i in 0..50 {
            let key = format!("k{i}");
            // Cost above the burst: denied without a cell.
            assert!(!l.check(&req(&key, 3)).allowed);
            // A peek and a refund of an unknown key.
            assert!(l.check(&req(&key, 0)).allowed);
            l.snapshot().refund(&req(&key, 1));
        }
        assert_eq!(l.store().tracked(), 0);
        assert_eq!(l.store().cells_in_maps(), 0);
        // A quota denial on a two-limit plan creates nothing either.
        assert!(l.check(&req("a", 2)).allowed);
        assert_eq!(l.store().tracked(), 2);
        assert!(!l.check(&req("a", 1)).allowed);
        assert_eq!(l.store().tracked(), 2);
    }

    #[test]
    fn concurrent_checks_on_one_key_admit_exactly_the_burst() {
        let (l, _) = limiter(
            vec![
                rate("p", "rate", 1, 1_000),
                quota("p", "q", 100_000, Window::Day),
            ],
            100,
        );
        let admitted = hammer(&l, 4, 1_000, "hot");
        // The clock does not move: exactly the burst passes, and the quota
        // counted exactly what passed (refunds of raced charges included).
        assert_eq!(admitted, 1_000);
        let snap = l.snapshot();
        let q = &snap.table().plan(PlanId(0)).limits[1];
        let (v, _) = l.apply(
            q,
            (l.hasher.key_hash(b"hot"), KeySource::PLANS),
            l.now(),
            0,
            false,
        );
        assert_eq!(v.remaining, 100_000 - 1_000);
    }

    /// The quota comes first, so when threads race for the bucket's last
    /// tokens the loser's quota charge must be refunded: whatever the
    /// interleaving, the quota counts exactly what was admitted.
    #[test]
    fn lost_races_refund_the_earlier_limits_exactly() {
        let (l, _) = limiter(
            vec![
                quota("p", "q", 100_000, Window::Day),
                rate("p", "rate", 1, 1_000),
            ],
            100,
        );
        let admitted = hammer(&l, 4, 2_000, "hot");
        assert_eq!(admitted, 1_000);
        let snap = l.snapshot();
        let q = &snap.table().plan(PlanId(0)).limits[0];
        let (v, _) = l.apply(
            q,
            (l.hasher.key_hash(b"hot"), KeySource::PLANS),
            l.now(),
            0,
            false,
        );
        assert_eq!(v.remaining, 100_000 - admitted);
    }

    #[test]
    fn refunds_never_refill_the_overflow_bucket() {
        let (l, _) = limiter(vec![rate("p", "rate", 1, 5)], 1);
        for _ in 0..3 {
            assert!(l.check(&req("a", 1)).allowed);
        }
        // Store full: "b" and "c" share the overflow bucket (burst 5).
        assert!(l.check(&req("b", 5)).allowed);
        assert!(!l.check(&req("c", 1)).allowed);
        // "c" returning units it never spent must not refill it.
        l.snapshot().refund(&req("c", 2));
        assert!(!l.check(&req("c", 1)).allowed);
    }

    #[test]
    fn sweeping_during_checks_keeps_the_cell_count_exact() {
        let (l, clock) = limiter(vec![rate("p", "rate", 1_000, 1)], 1_000_000);
        let l = Arc::new(l);
        std::thread::scope(|s| {
            let checker = {
                let l = Arc::clone(&l);
                let clock = Arc::clone(&clock);
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        l.check(&req(&format!("k{}", i % 5_000), 1));
                        if i % 100 == 0 {
                            clock.advance(1_000_000);
                        }
                    }
                })
            };
            let sweeper = {
                let l = Arc::clone(&l);
                s.spawn(move || {
                    for _ in 0..200 {
                        l.sweep();
                    }
                })
            };
            checker.join().unwrap();
            sweeper.join().unwrap();
        });
        assert_eq!(l.store().tracked(), l.store().cells_in_maps());
        clock.advance(NANOS_PER_SEC);
        l.sweep();
        assert_eq!(l.store().tracked(), 0);
        assert_eq!(l.store().cells_in_maps(), 0);
    }

    #[test]
    fn scopes_file_cells_apart_under_the_same_plan() {
        let (l, _) = limiter(vec![rate("p", "rate", 1, 1)], 100);
        assert!(l.check(&req("k", 1)).allowed);
        assert!(!l.check(&req("k", 1)).allowed);
        let scoped = Request {
            scope: 42,
            ..req("k", 1)
        };
        assert!(l.check(&scoped).allowed);
        assert!(!l.check(&scoped).allowed);
        // The plan is the key's: "vip" is unlimited whatever the scope.
        assert!(
            l.check(&Request {
                scope: 42,
                ..req("vip", 9)
            })
            .allowed
        );
    }

    /// A sequential model of a plan: each limit's state per key, decided
    /// with the same pure `decide` functions, orchestrated the obvious way.
    struct Model {
        limits: Vec<Limit>,
        /// (key, limit) → bucket arrival time.
        tat: std::collections::HashMap<(u8, usize), Nanos>,
        /// (key, limit, window) → units used.
        used: std::collections::HashMap<(u8, usize, u64), u64>,
    }

    impl Model {
        fn check(&mut self, key: u8, cost: u64, now: Nanos) -> (bool, u64, Option<Nanos>, usize) {
            let verdicts: Vec<Verdict> = self
                .limits
                .iter()
                .enumerate()
                .map(|(i, l)| match &l.kind {
                    LimitKind::Rate(r) => {
                        let tat = self.tat.get(&(key, i)).copied().unwrap_or(0);
                        gcra::decide(r, tat, now, cost).0
                    }
                    LimitKind::Quota(q) => {
                        let span = q.window.span(now);
                        let used = self.used.get(&(key, i, span.index)).copied().unwrap_or(0);
                        quota::decide(q, used, span, now, cost).0
                    }
                    LimitKind::Window(_) => unreachable!("plans hold no fixed windows"),
                })
                .collect();
            let denied: Vec<usize> = (0..verdicts.len())
                .filter(|&i| !verdicts[i].allowed)
                .collect();
            if let Some(&first) = denied.first() {
                let mut worst = first;
                for &i in &denied[1..] {
                    if waits_longer(verdicts[i].retry_after, verdicts[worst].retry_after) {
                        worst = i;
                    }
                }
                let v = verdicts[worst];
                return (false, v.remaining, v.retry_after, worst);
            }
            for (i, l) in self.limits.iter().enumerate() {
                match &l.kind {
                    LimitKind::Rate(r) => {
                        let tat = self.tat.get(&(key, i)).copied().unwrap_or(0);
                        if let (_, Some(next)) = gcra::decide(r, tat, now, cost) {
                            self.tat.insert((key, i), next);
                        }
                    }
                    LimitKind::Quota(q) => {
                        let span = q.window.span(now);
                        let e = self.used.entry((key, i, span.index)).or_insert(0);
                        *e += cost;
                    }
                    LimitKind::Window(_) => unreachable!("plans hold no fixed windows"),
                }
            }
            let mut closest = 0;
            for i in 1..verdicts.len() {
                if verdicts[i].remaining < verdicts[closest].remaining {
                    closest = i;
                }
            }
            let v = verdicts[closest];
            (true, v.remaining, v.retry_after, closest)
        }
    }

    proptest::proptest! {
        /// The limiter decides exactly like the sequential model over any
        /// schedule of checks, peeks, clock moves and sweeps: rollback,
        /// cell creation and sweeping never change an answer.
        #[test]
        fn limiter_matches_a_sequential_model(
            ops in proptest::collection::vec((0u8..4, 0u64..6, 0u64..3_000, proptest::bool::ANY), 1..200),
        ) {
            let limits = vec![
                rate("p", "fast", 5, 3),
                quota("p", "minute", 12, Window::Minute),
                rate("p", "slow", 1, 6),
            ];
            let (l, clock) = limiter(limits.clone(), 1_000);
            let mut model = Model { limits, tat: Default::default(), used: Default::default() };
            for (key, cost, dt_ms, sweep) in ops {
                clock.advance(dt_ms * 1_000_000);
                if sweep {
                    l.sweep();
                }
                let name = format!("key{key}");
                let d = l.check(&req(&name, cost));
                let (allowed, remaining, retry, policy) = model.check(key, cost, l.now());
                proptest::prop_assert_eq!(d.allowed, allowed);
                proptest::prop_assert_eq!(d.remaining, remaining);
                proptest::prop_assert_eq!(d.retry_after, retry);
                proptest::prop_assert_eq!(d.policy.map(|p| p.limit as usize), Some(policy));
            }
            proptest::prop_assert_eq!(l.store().tracked(), l.store().cells_in_maps());
        }
    }
}
