//! The local store: every tracked bucket and quota counter of this node,
//! bounded by configuration and fair under attack.
//!
//! Cells live in two sharded maps (`shards.rs`) keyed by a 64-bit cell id
//! (already a keyed hash):
//! - token buckets: one theoretical arrival time per (limit, key);
//! - counters: one count per (limit, key, window), with the window's end
//!   so the sweep knows when it is over.
//!
//! Each cell also records its source of keys ([`crate::core::source`]),
//! how often it was charged and when it was made ([`cell::Meta`]).
//!
//! Memory is bounded by [`StoreLimits::max_cells`]. Once that many cells
//! are tracked, a new key that would be charged asks for room: the
//! admission policy ([`admission`]) displaces a cell that costs little to
//! forget (holding nothing, or charged no more often than the newcomer
//! has asked), within the budgets per source ([`budget`]), so a flood of
//! one-shot keys neither keeps new customers out nor takes the cells of
//! established ones or of another domain. Only when no such cell is found
//! does the check go to the limit's shared *overflow cell*, the last
//! resort ([`LocalStore::overflow_checks`] says how many it judged).
//! Refused hits of fixed windows create no cell once the store is nearly
//! full. Idle cells (a full bucket, a finished window) are dropped by
//! [`LocalStore::sweep`], so memory follows the active keys.

pub mod admission;
pub mod budget;
pub mod cell;
pub mod journal;
pub mod leases;
mod shards;
pub mod sketch;
mod synced;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::core::clock::Nanos;
use crate::core::source::Source;
use admission::{Candidate, Displaced, SAMPLES, Turnover};
use budget::Budgets;
pub use cell::{Arrival, BucketCell, Cell, Loss, Meta, QuotaCell};
use shards::{Inserted, Shards};
use sketch::Sketch;

/// Memory bounds of a store.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Hard cap on tracked cells (buckets + quota counters).
    pub max_cells: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_cells: 1_000_000,
        }
    }
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Full buckets dropped.
    pub buckets: usize,
    /// Finished quota windows dropped.
    pub quotas: usize,
}

/// This node's buckets and counters. See the module docs.
#[derive(Debug)]
pub struct LocalStore {
    buckets: Shards<BucketCell>,
    quotas: Shards<QuotaCell>,
    /// Cells tracked, overflow cells included (kept by hand: counting the
    /// maps locks every shard).
    cells: AtomicUsize,
    /// Of those, in the counter map: where a sample looks is drawn in
    /// proportion.
    quota_cells: AtomicUsize,
    limits: StoreLimits,
    overflowed: AtomicU64,
    overflow_checks: AtomicU64,
    budgets: Budgets,
    /// Made on first use: a store that never fills never pays for it.
    sketch: OnceLock<Sketch>,
    displaced: Displaced,
    turnover: Turnover,
    /// Pending deltas for Redis sync; `None` on a node without Redis.
    journal: Option<journal::Journal>,
}

impl LocalStore {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            buckets: Shards::new(limits.max_cells),
            quotas: Shards::new(limits.max_cells),
            cells: AtomicUsize::new(0),
            quota_cells: AtomicUsize::new(0),
            limits,
            overflowed: AtomicU64::new(0),
            overflow_checks: AtomicU64::new(0),
            budgets: Budgets::new(limits.max_cells),
            sketch: OnceLock::new(),
            displaced: Displaced::default(),
            turnover: Turnover::new(limits.max_cells),
            journal: None,
        }
    }

    /// Accounts for a cell made in a slot taken beforehand: a new cell
    /// counts under its source; one that another check made first gives
    /// the slot back.
    pub(crate) fn settle<R>(&self, made: Inserted<R>, source: Source, quota: bool) -> R {
        match made {
            Inserted::New(r) => {
                self.budgets.add(source);
                if quota {
                    self.quota_cells.fetch_add(1, Ordering::AcqRel);
                }
                r
            }
            Inserted::Existing(r) => {
                self.release();
                r
            }
        }
    }

    /// Whether cell `id` (a bucket, else a counter) is tracked.
    pub fn tracks(&self, id: u64, bucket: bool) -> bool {
        if bucket {
            self.buckets.contains(id)
        } else {
            self.quotas.contains(id)
        }
    }

    /// Drops bucket `id` (back to full); whether it was tracked.
    pub fn remove_bucket(&self, id: u64) -> bool {
        let gone = self.buckets.remove(id);
        if let Some(c) = &gone {
            self.forget(c.meta().source(), false);
        }
        gone.is_some()
    }

    /// Drops counter `id` (back to zero); whether it was tracked.
    pub fn remove_quota(&self, id: u64) -> bool {
        let gone = self.quotas.remove(id);
        if let Some(c) = &gone {
            self.forget(c.meta().source(), true);
        }
        gone.is_some()
    }

    /// Accounts for one cell gone from a map, its slot freed.
    fn forget(&self, source: Source, quota: bool) {
        self.untrack(source, quota);
        self.release();
    }

    /// Accounts for one cell gone from a map, its slot kept (for a cell
    /// that takes its place).
    fn untrack(&self, source: Source, quota: bool) {
        self.budgets.remove(source, 1);
        if quota {
            self.quota_cells.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The token buckets: one arrival time per (limit, key).
    #[inline]
    pub fn buckets(&self) -> Map<'_, BucketCell> {
        Map {
            store: self,
            cells: &self.buckets,
            quota: false,
        }
    }

    /// The quota counters: one count per (limit, key, window).
    #[inline]
    pub fn quotas(&self) -> Map<'_, QuotaCell> {
        Map {
            store: self,
            cells: &self.quotas,
            quota: true,
        }
    }

    /// Whether the cap is reached (new keys must win room or go to
    /// overflow cells).
    #[inline]
    pub fn is_full(&self) -> bool {
        self.cells.load(Ordering::Acquire) >= self.limits.max_cells
    }

    /// Whether nine tenths of the cap are taken: refused hits of fixed
    /// windows no longer make cells.
    #[inline]
    pub fn is_nearly_full(&self) -> bool {
        let cap = self.limits.max_cells;
        self.cells.load(Ordering::Acquire) >= cap - cap / 10
    }

    /// Drops full buckets (arrival time ≤ `now`), finished windows
    /// (end ≤ `now`) and empty counters, unless they hold a change not yet
    /// sent to Redis. Runs shard by shard, so checks on other shards go
    /// on.
    pub fn sweep(&self, now: Nanos) -> SweepReport {
        let mut report = SweepReport::default();
        // A cell with a change not yet sent to Redis stays until it is.
        self.buckets.retain(|c| {
            let keep = c.tat.load(Ordering::Acquire) > now || c.delta().is_dirty();
            if !keep {
                report.buckets += 1;
                self.budgets.remove(c.meta().source(), 1);
            }
            keep
        });
        self.quotas.retain(|q| {
            // A counter back at zero (everything refunded) holds nothing.
            let keep =
                (q.window_end > now && q.used.load(Ordering::Acquire) > 0) || q.delta().is_dirty();
            if !keep {
                report.quotas += 1;
                self.budgets.remove(q.meta().source(), 1);
            }
            keep
        });
        self.quota_cells.fetch_sub(report.quotas, Ordering::AcqRel);
        self.cells
            .fetch_sub(report.buckets + report.quotas, Ordering::AcqRel);
        report
    }

    /// Cells currently tracked (buckets + quota counters, including the few
    /// shared overflow cells).
    pub fn tracked(&self) -> usize {
        self.cells.load(Ordering::Relaxed)
    }

    /// How many charges went to an overflow cell since start.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Records one charge to an overflow cell.
    pub fn note_overflow(&self) {
        self.overflowed.fetch_add(1, Ordering::Relaxed);
    }

    /// How many checks an overflow cell judged since start (allowed or
    /// not): keys that found the store full and could not win a cell.
    pub fn overflow_checks(&self) -> u64 {
        self.overflow_checks.load(Ordering::Relaxed)
    }

    /// Cells held per source, and the budgets they are judged by.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// What making room has cost since start.
    pub fn displaced(&self) -> admission::DisplacedCounts {
        self.displaced.counts()
    }

    /// The configured bounds.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// Takes one slot of the cap; false when the store is full.
    #[inline]
    pub(crate) fn reserve(&self) -> bool {
        self.cells
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.limits.max_cells).then_some(c + 1)
            })
            .is_ok()
    }

    #[inline]
    fn release(&self) {
        self.cells.fetch_sub(1, Ordering::AcqRel);
    }

    /// Asks the admission policy for room for a new cell of `asker`
    /// (cell id `id`) at `now`: how the newcomer got in when a cell was
    /// displaced, its slot now the caller's; `None` when every cell
    /// sampled is worth more (see [`admission`]). A victim another check
    /// took first costs another sample, a few times at most.
    fn make_room(&self, asker: Source, id: u64, now: Nanos) -> Option<Arrival> {
        let sketch = self
            .sketch
            .get_or_init(|| Sketch::new(self.limits.max_cells));
        let asked = sketch.touch(id);
        let under = self.budgets.under_share(asker);
        for _ in 0..RACES {
            let found = self.sample(id, asker, now, under);
            let Some(victim) = admission::choose(found, asked) else {
                break;
            };
            if let Some((loss, source)) = self.take(&victim, asker, now, under) {
                self.untrack(source, victim.quota);
                self.displaced.note(victim.quota, loss);
                return Some(self.turnover.displaced(now));
            }
        }
        self.displaced.refused();
        None
    }

    /// The cells `asker` may take from a run of neighbouring cells in the
    /// shard the new cell `id` goes to (so displacing keeps the shards as
    /// even as the hash made them), in one map picked in proportion to the
    /// maps' sizes. A cell with a change not yet sent to Redis is one
    /// only while the journal has room to keep the change aside.
    fn sample(&self, id: u64, asker: Source, now: Nanos, under: bool) -> Vec<Candidate> {
        let budgets = &self.budgets;
        let dirty_ok = self
            .journal
            .as_ref()
            .is_none_or(journal::Journal::can_evict);
        let mut found = Vec::with_capacity(SAMPLES);
        let mut add = |c: Option<Candidate>| found.extend(c.filter(|c| dirty_ok || !c.dirty));
        let (pick, r) = (admission::random(), admission::random());
        let total = self.cells.load(Ordering::Relaxed).max(1) as u64;
        if pick % total < self.quota_cells.load(Ordering::Relaxed) as u64 {
            self.quotas.sample(id, r, SAMPLES, |id, c| {
                add(Candidate::of(id, true, c, now, asker, budgets, under));
            });
        } else {
            self.buckets.sample(id, r, SAMPLES, |id, c| {
                add(Candidate::of(id, false, c, now, asker, budgets, under));
            });
        }
        found
    }

    /// Removes `victim` if it is still no dearer than when it was
    /// sampled; what it held and its source.
    fn take(
        &self,
        victim: &Candidate,
        asker: Source,
        now: Nanos,
        under: bool,
    ) -> Option<(Loss, Source)> {
        let budgets = &self.budgets;
        // Checked under the shard's write lock: a cell whose change Redis
        // has not had yet goes only if the journal keeps the change.
        let still = |c: &dyn Cell| {
            Candidate::of(victim.id, victim.quota, c, now, asker, budgets, under)
                .is_some_and(|current| current.hits <= victim.hits)
                && self.keeps_change(victim.id, c)
        };
        if victim.quota {
            self.quotas
                .remove_if(victim.id, |c| still(c))
                .map(|c| (c.loss(now), c.meta().source()))
        } else {
            self.buckets
                .remove_if(victim.id, |c| still(c))
                .map(|c| (c.loss(now), c.meta().source()))
        }
    }

    /// Whether cell `id` may go without losing a change not yet sent to
    /// Redis: it has none, or the journal took it aside.
    fn keeps_change(&self, id: u64, c: &dyn Cell) -> bool {
        let d = c.delta();
        !d.is_dirty()
            || self.journal.as_ref().is_some_and(|j| {
                let delta = d.pending();
                let window_end = c.window_end();
                j.evict(id, journal::Evicted { delta, window_end })
            })
    }

    /// Removes `prior`, the key's counter of the window before the one
    /// whose cell is being made, if it is over; its slot goes to the new
    /// cell, and how often it was charged (see [`Cell::renews`]).
    fn succeed<V: Cell>(
        &self,
        cells: &Shards<V>,
        prior: u64,
        now: Nanos,
        quota: bool,
    ) -> Option<u8> {
        cells.get(prior, |c| c.renews(now))?.then_some(())?;
        let gone = cells.remove_if(prior, |c| c.renews(now) && self.keeps_change(prior, c))?;
        self.untrack(gone.meta().source(), quota);
        Some(gone.meta().hits())
    }
}

/// Samples a newcomer may take when its victims keep being taken by
/// concurrent checks first.
const RACES: usize = 3;

/// One of the store's two maps. Cells are created only by [`Map::upsert`],
/// which the engine calls only to charge a check, so dry runs, peeks,
/// refunds and denials never grow memory.
#[derive(Clone, Copy)]
pub struct Map<'a, V> {
    store: &'a LocalStore,
    cells: &'a Shards<V>,
    quota: bool,
}

impl<V: Cell> Map<'_, V> {
    /// Whether nine tenths of the store's cap are taken.
    #[inline]
    pub fn is_nearly_full(&self) -> bool {
        self.store.is_nearly_full()
    }

    /// Runs `f` on cell `id` if it is tracked. `f` runs while the cell's
    /// shard is read-locked, so it must only touch the cell's atomics.
    #[inline]
    pub fn get<R>(&self, id: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.cells.get(id, f)
    }

    /// Runs `f` on cell `id` of `source`, creating it with `make` (given
    /// its bookkeeping) if needed: in the place of the key's counter of
    /// the window before (`prior`, when its window is over), else in free
    /// room, else in room the admission policy makes at `now`. When neither can be had, runs `f`
    /// on the limit's shared overflow cell `overflow_id` instead (created
    /// past the cap: there is one per limit). Says which cell it used, so
    /// a charge can be refunded exactly where it went.
    #[inline]
    pub fn upsert<R>(
        &self,
        ids: Ids,
        source: Source,
        now: Nanos,
        make: impl FnOnce(Meta) -> V,
        f: impl Fn(&V, bool) -> R,
    ) -> (R, Landed) {
        let Ids {
            own: id,
            overflow: overflow_id,
            prior,
        } = ids;
        if let Some(r) = self.cells.get(id, |c| f(c, false)) {
            return (r, Landed::Own);
        }
        let store = self.store;
        let inherited = prior.and_then(|p| store.succeed(self.cells, p, now, self.quota));
        let arrival = if inherited.is_some() || store.reserve() {
            Some(Arrival::Free)
        } else {
            store.make_room(source, id, now)
        };
        if let Some(arrival) = arrival {
            let meta = Meta::arrived(source, now, arrival).with_hits(inherited.unwrap_or(0));
            let made = self.cells.insert_with(id, || make(meta), |c| f(c, false));
            return (store.settle(made, source, self.quota), Landed::Own);
        }
        store.overflow_checks.fetch_add(1, Ordering::Relaxed);
        // The overflow cell is hot during a flood: read-lock it when it
        // exists rather than write-locking its shard.
        if let Some(r) = self.cells.get(overflow_id, |c| f(c, true)) {
            return (r, Landed::Overflow);
        }
        let meta = Meta::new(Source::OVERFLOW, now);
        let r = match self
            .cells
            .insert_with(overflow_id, || make(meta), |c| f(c, true))
        {
            Inserted::New(r) => {
                // Counted too, so sweeps stay exact; no source's budget.
                store.cells.fetch_add(1, Ordering::AcqRel);
                if self.quota {
                    store.quota_cells.fetch_add(1, Ordering::AcqRel);
                }
                r
            }
            Inserted::Existing(r) => r,
        };
        (r, Landed::Overflow)
    }
}

/// The cells one charge may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// The key's own cell.
    pub own: u64,
    /// The limit's shared overflow cell, when the store has no room.
    pub overflow: u64,
    /// For a counter, the key's cell of the window before, whose place
    /// (and standing) a new cell takes.
    pub prior: Option<u64>,
}

/// Which cell a charge went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landed {
    /// Nothing was charged.
    Nowhere,
    /// The key's own cell.
    Own,
    /// The limit's shared overflow cell (the store was full).
    Overflow,
}

#[cfg(test)]
impl LocalStore {
    /// Cells actually in the maps (locks every shard; tests only).
    pub(crate) fn cells_in_maps(&self) -> usize {
        self.buckets.len() + self.quotas.len()
    }
}
