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
mod shards;
pub mod sketch;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::core::clock::Nanos;
use crate::core::source::Source;
use admission::{Candidate, Displaced, SAMPLES, Turnover};
use budget::Budgets;
pub use cell::{Arrival, BucketCell, Cell, Loss, Meta, QuotaCell};
use journal::Journal;
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
    journal: Option<Journal>,
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

    /// Starts journaling charges for a sync task (see [`journal`]).
    pub fn enable_journal(&mut self) {
        self.journal = Some(Journal::new(self.limits.max_cells));
    }

    /// The sync journal, when enabled.
    #[inline]
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Raises bucket `id`'s arrival time to the global one Redis returned
    /// plus what this node charged since (still in the journal). A bucket
    /// swept meanwhile is left alone: the next check starts it fresh and
    /// its next flush brings it up to date.
    pub fn adopt_bucket(&self, id: u64, global_tat: Nanos) {
        let pending = self.journal.as_ref().map_or(0, |j| j.pending(id));
        self.buckets.get(id, |c| {
            c.tat
                .fetch_max(global_tat.saturating_add_signed(pending), Ordering::AcqRel)
        });
    }

    /// Sets bucket `id` to at least `tat` (a strict answer at `now`),
    /// creating it when there is room. Not journaled: the state is
    /// already Redis's.
    pub fn mirror_bucket(&self, id: u64, tat: Nanos, now: Nanos) {
        if self
            .buckets
            .get(id, |c| c.tat.fetch_max(tat, Ordering::AcqRel))
            .is_none()
            && self.reserve()
        {
            let meta = || Meta::new(Source::PLANS, now);
            let made = self.buckets.insert_with(
                id,
                || BucketCell::new(meta()),
                |c| c.tat.fetch_max(tat, Ordering::AcqRel),
            );
            self.settle(made, Source::PLANS, false);
        }
    }

    /// Sets counter `id` (a window ending at `window_end`) to at least
    /// `used` (a strict answer at `now`), creating it when there is room.
    /// Not journaled.
    pub fn mirror_counter(&self, id: u64, window_end: Nanos, used: u64, now: Nanos) {
        if self
            .quotas
            .get(id, |c| c.used.fetch_max(used, Ordering::AcqRel))
            .is_none()
            && used > 0
            && self.reserve()
        {
            let meta = || Meta::new(Source::PLANS, now);
            let made = self.quotas.insert_with(
                id,
                || QuotaCell::new(window_end, meta()),
                |c| c.used.fetch_max(used, Ordering::AcqRel),
            );
            self.settle(made, Source::PLANS, true);
        }
    }

    /// Accounts for a cell made in a slot taken beforehand: a new cell
    /// counts under its source; one that another check made first gives
    /// the slot back.
    fn settle<R>(&self, made: Inserted<R>, source: Source, quota: bool) -> R {
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

    /// Raises counter `id` to the global count Redis returned plus what
    /// this node counted since.
    pub fn adopt_counter(&self, id: u64, global_used: u64) {
        let pending = self.journal.as_ref().map_or(0, |j| j.pending(id));
        self.quotas.get(id, |c| {
            c.used
                .fetch_max(global_used.saturating_add_signed(pending), Ordering::AcqRel)
        });
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
    /// (end ≤ `now`) and empty counters. Runs shard by shard, so checks on
    /// other shards go on.
    pub fn sweep(&self, now: Nanos) -> SweepReport {
        let mut report = SweepReport::default();
        self.buckets.retain(|c| {
            let keep = c.tat.load(Ordering::Acquire) > now;
            if !keep {
                report.buckets += 1;
                self.budgets.remove(c.meta().source(), 1);
            }
            keep
        });
        self.quotas.retain(|q| {
            // A counter back at zero (everything refunded) holds nothing.
            let keep = q.window_end > now && q.used.load(Ordering::Acquire) > 0;
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
    fn reserve(&self) -> bool {
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
    /// maps' sizes.
    fn sample(&self, id: u64, asker: Source, now: Nanos, under: bool) -> Vec<Candidate> {
        let budgets = &self.budgets;
        let mut found = Vec::with_capacity(SAMPLES);
        let (pick, r) = (admission::random(), admission::random());
        let total = self.cells.load(Ordering::Relaxed).max(1) as u64;
        if pick % total < self.quota_cells.load(Ordering::Relaxed) as u64 {
            self.quotas.sample(id, r, SAMPLES, |id, c| {
                found.extend(Candidate::of(id, true, c, now, asker, budgets, under));
            });
        } else {
            self.buckets.sample(id, r, SAMPLES, |id, c| {
                found.extend(Candidate::of(id, false, c, now, asker, budgets, under));
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
        let still = |c: &dyn Cell| {
            Candidate::of(victim.id, victim.quota, c, now, asker, budgets, under)
                .is_some_and(|current| current.hits <= victim.hits)
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
    /// its bookkeeping) if needed: in free room, else in room the
    /// admission policy makes at `now`. When neither can be had, runs `f`
    /// on the limit's shared overflow cell `overflow_id` instead (created
    /// past the cap: there is one per limit). Says which cell it used, so
    /// a charge can be refunded exactly where it went.
    #[inline]
    pub fn upsert<R>(
        &self,
        (id, overflow_id): (u64, u64),
        source: Source,
        now: Nanos,
        make: impl FnOnce(Meta) -> V,
        f: impl Fn(&V, bool) -> R,
    ) -> (R, Landed) {
        if let Some(r) = self.cells.get(id, |c| f(c, false)) {
            return (r, Landed::Own);
        }
        let store = self.store;
        let arrival = if store.reserve() {
            Some(Arrival::Free)
        } else {
            store.make_room(source, id, now)
        };
        if let Some(arrival) = arrival {
            let meta = Meta::arrived(source, now, arrival);
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
