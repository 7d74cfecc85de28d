//! The local store: every tracked bucket and quota counter of this node.
//!
//! Cells live in two [`DashMap`]s keyed by a 64-bit cell id (already a keyed
//! hash, so the maps use an identity hasher):
//! - token buckets: one `AtomicU64` theoretical arrival time per (limit, key);
//! - quota counters: one `AtomicU64` count per (limit, key, window), plus the
//!   window's end so the sweep knows when it is over.
//!
//! Memory is bounded by [`StoreLimits::max_cells`]: once that many cells are
//! tracked, checks for new (limit, key) pairs are judged by one shared
//! *overflow cell* per limit instead of getting their own, and
//! [`LocalStore::overflowed`] counts how often that happened. Existing keys
//! keep their own buckets, so legitimate traffic is unaffected by a flood of
//! random keys; the flood shares one bucket per limit and quickly limits
//! itself. Idle cells (a full bucket, a finished window) are dropped by
//! [`LocalStore::sweep`], so memory follows the active keys.

pub mod journal;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use nohash_hasher::BuildNoHashHasher;

use crate::core::clock::Nanos;
use journal::Journal;

type Cells<V> = DashMap<u64, V, BuildNoHashHasher<u64>>;

/// Shards per map. More shards than DashMap's default (4 × cores) keeps
/// each shard small, so the sweep, which write-locks one shard at a time,
/// holds any lock for microseconds even with millions of cells, and
/// concurrent inserts rarely contend.
const SHARDS: usize = 256;

fn cells<V>() -> Cells<V> {
    Cells::with_hasher_and_shard_amount(BuildNoHashHasher::default(), SHARDS)
}

/// A quota counter for one window.
#[derive(Debug)]
pub struct QuotaCell {
    /// Units consumed in the window.
    pub used: AtomicU64,
    /// End of the window (Unix ns): after it the cell is idle.
    pub window_end: Nanos,
}

impl QuotaCell {
    /// An empty counter for a window ending at `window_end`.
    pub fn new(window_end: Nanos) -> Self {
        Self {
            used: AtomicU64::new(0),
            window_end,
        }
    }
}

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
    buckets: Cells<AtomicU64>,
    quotas: Cells<QuotaCell>,
    /// Cells tracked, kept by hand: `DashMap::len` locks every shard.
    cells: AtomicUsize,
    limits: StoreLimits,
    overflowed: AtomicU64,
    /// Pending deltas for Redis sync; `None` on a node without Redis.
    journal: Option<Journal>,
}

impl LocalStore {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            buckets: cells(),
            quotas: cells(),
            cells: AtomicUsize::new(0),
            limits,
            overflowed: AtomicU64::new(0),
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
        if let Some(tat) = self.buckets.get(&id) {
            tat.fetch_max(global_tat.saturating_add_signed(pending), Ordering::AcqRel);
        }
    }

    /// Sets bucket `id` to at least `tat` (a strict answer), creating it
    /// when there is room. Not journaled: the state is already Redis's.
    pub fn mirror_bucket(&self, id: u64, tat: Nanos) {
        if let Some(c) = self.buckets.get(&id) {
            c.fetch_max(tat, Ordering::AcqRel);
        } else if self.reserve() {
            match self.buckets.entry(id) {
                Entry::Occupied(o) => {
                    self.release();
                    o.get().fetch_max(tat, Ordering::AcqRel);
                }
                Entry::Vacant(v) => {
                    v.insert(AtomicU64::new(tat));
                }
            }
        }
    }

    /// Sets counter `id` (a window ending at `window_end`) to at least
    /// `used`, creating it when there is room. Not journaled.
    pub fn mirror_counter(&self, id: u64, window_end: Nanos, used: u64) {
        if let Some(c) = self.quotas.get(&id) {
            c.used.fetch_max(used, Ordering::AcqRel);
        } else if used > 0 && self.reserve() {
            match self.quotas.entry(id) {
                Entry::Occupied(o) => {
                    self.release();
                    o.get().used.fetch_max(used, Ordering::AcqRel);
                }
                Entry::Vacant(v) => {
                    let cell = QuotaCell::new(window_end);
                    cell.used.store(used, Ordering::Release);
                    v.insert(cell);
                }
            }
        }
    }

    /// Raises counter `id` to the global count Redis returned plus what
    /// this node counted since.
    pub fn adopt_counter(&self, id: u64, global_used: u64) {
        let pending = self.journal.as_ref().map_or(0, |j| j.pending(id));
        if let Some(c) = self.quotas.get(&id) {
            c.used
                .fetch_max(global_used.saturating_add_signed(pending), Ordering::AcqRel);
        }
    }

    /// Whether cell `id` (a bucket, else a counter) is tracked.
    pub fn tracks(&self, id: u64, bucket: bool) -> bool {
        if bucket {
            self.buckets.contains_key(&id)
        } else {
            self.quotas.contains_key(&id)
        }
    }

    /// Drops bucket `id` (back to full); whether it was tracked.
    pub fn remove_bucket(&self, id: u64) -> bool {
        let gone = self.buckets.remove(&id).is_some();
        if gone {
            self.release();
        }
        gone
    }

    /// Drops counter `id` (back to zero); whether it was tracked.
    pub fn remove_quota(&self, id: u64) -> bool {
        let gone = self.quotas.remove(&id).is_some();
        if gone {
            self.release();
        }
        gone
    }

    /// The token buckets: one arrival time per (limit, key).
    #[inline]
    pub fn buckets(&self) -> Map<'_, AtomicU64> {
        Map {
            store: self,
            cells: &self.buckets,
        }
    }

    /// The quota counters: one count per (limit, key, window).
    #[inline]
    pub fn quotas(&self) -> Map<'_, QuotaCell> {
        Map {
            store: self,
            cells: &self.quotas,
        }
    }

    /// Whether the cap is reached (new keys go to overflow cells).
    #[inline]
    pub fn is_full(&self) -> bool {
        self.cells.load(Ordering::Acquire) >= self.limits.max_cells
    }

    /// Drops full buckets (arrival time ≤ `now`), finished windows
    /// (end ≤ `now`) and empty counters. Runs shard by shard, so checks on other shards go on.
    pub fn sweep(&self, now: Nanos) -> SweepReport {
        let mut report = SweepReport::default();
        self.buckets.retain(|_, tat| {
            let keep = tat.load(Ordering::Acquire) > now;
            if !keep {
                report.buckets += 1;
            }
            keep
        });
        self.quotas.retain(|_, q| {
            // A counter back at zero (everything refunded) holds nothing.
            let keep = q.window_end > now && q.used.load(Ordering::Acquire) > 0;
            if !keep {
                report.quotas += 1;
            }
            keep
        });
        self.cells
            .fetch_sub(report.buckets + report.quotas, Ordering::AcqRel);
        // Tables do not shrink by themselves: give memory back once they
        // are mostly empty, so memory follows the active keys, not the
        // peak. (Each shard is rehashed under its own lock, briefly.)
        shrink_if_sparse(&self.buckets);
        shrink_if_sparse(&self.quotas);
        report
    }

    /// Cells currently tracked (buckets + quota counters, including the few
    /// shared overflow cells).
    pub fn tracked(&self) -> usize {
        self.cells.load(Ordering::Relaxed)
    }

    /// How many charges went to an overflow cell since start (checks of
    /// keys that arrived while the store was full).
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Records one charge to an overflow cell.
    pub fn note_overflow(&self) {
        self.overflowed.fetch_add(1, Ordering::Relaxed);
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
}

fn shrink_if_sparse<V>(cells: &Cells<V>) {
    let capacity = cells.capacity();
    if capacity > 4 * 1024 && cells.len() < capacity / 4 {
        cells.shrink_to_fit();
    }
}

/// One of the store's two maps. Cells are created only by [`Map::upsert`],
/// which the engine calls only to charge an allowed check, so dry runs,
/// peeks, refunds and denials never grow memory.
#[derive(Clone, Copy)]
pub struct Map<'a, V> {
    store: &'a LocalStore,
    cells: &'a Cells<V>,
}

impl<V> Map<'_, V> {
    /// Whether the store's cap is reached.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.store.is_full()
    }

    /// Runs `f` on cell `id` if it is tracked. `f` runs while the cell's
    /// shard is read-locked, so it must only touch the cell's atomics.
    #[inline]
    pub fn get<R>(&self, id: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.cells.get(&id).map(|c| f(&c))
    }

    /// For a key that is not tracked: runs `f` on what a charge would use,
    /// without creating anything. That is the overflow cell when the store
    /// is full and the overflow cell exists, else `fresh` (a new cell's
    /// state).
    #[inline]
    pub fn untracked<R>(&self, overflow_id: u64, fresh: &V, f: impl FnOnce(&V) -> R) -> R {
        if self.store.is_full()
            && let Some(c) = self.cells.get(&overflow_id)
        {
            return f(&c);
        }
        f(fresh)
    }

    /// Runs `f` on cell `id`, creating it with `make` if needed. When the
    /// store is full and `id` is new, runs `f` on the shared overflow cell
    /// instead (created past the cap: there is one per limit). Says which
    /// cell it used, so a charge can be refunded exactly where it went.
    #[inline]
    pub fn upsert<R>(
        &self,
        id: u64,
        overflow_id: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> (R, Landed) {
        if let Some(cell) = self.cells.get(&id) {
            return (f(&cell), Landed::Own);
        }
        let store = self.store;
        let reserved = store.reserve();
        let (id, landed) = if reserved {
            (id, Landed::Own)
        } else {
            // The overflow cell is hot during a flood: read-lock it when
            // it exists rather than write-locking its shard.
            if let Some(cell) = self.cells.get(&overflow_id) {
                return (f(&cell), Landed::Overflow);
            }
            (overflow_id, Landed::Overflow)
        };
        let r = match self.cells.entry(id) {
            Entry::Occupied(o) => {
                // Another check created it first: give back our slot.
                if reserved {
                    store.release();
                }
                f(o.get())
            }
            Entry::Vacant(v) => {
                if !reserved {
                    // Count the overflow cell too, so sweeps stay exact.
                    store.cells.fetch_add(1, Ordering::AcqRel);
                }
                let cell = v.insert(make());
                f(cell.value())
            }
        };
        (r, landed)
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
