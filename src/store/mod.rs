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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use nohash_hasher::BuildNoHashHasher;

use crate::core::clock::Nanos;

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
        }
    }

    /// Runs `f` on the bucket `id`, creating it (arrival time 0 = a full
    /// bucket) if needed. When the store is full and `id` is new, runs `f`
    /// on the shared bucket `overflow_id` instead.
    #[inline]
    pub fn with_bucket<R>(&self, id: u64, overflow_id: u64, f: impl FnOnce(&AtomicU64) -> R) -> R {
        self.with_cell(&self.buckets, id, overflow_id, || AtomicU64::new(0), f)
    }

    /// Runs `f` on the quota counter `id` for a window ending at
    /// `window_end`, with the same overflow rule as [`Self::with_bucket`].
    #[inline]
    pub fn with_quota<R>(
        &self,
        id: u64,
        overflow_id: u64,
        window_end: Nanos,
        f: impl FnOnce(&QuotaCell) -> R,
    ) -> R {
        let make = || QuotaCell {
            used: AtomicU64::new(0),
            window_end,
        };
        self.with_cell(&self.quotas, id, overflow_id, make, f)
    }

    /// The one lookup-or-insert path of both maps. `f` runs while the
    /// cell's shard is locked, so it must only touch the cell's atomics.
    #[inline]
    fn with_cell<V, R>(
        &self,
        map: &Cells<V>,
        id: u64,
        overflow_id: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        if let Some(cell) = map.get(&id) {
            return f(&cell);
        }
        let reserved = self.reserve();
        let id = if reserved {
            id
        } else {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            overflow_id
        };
        match map.entry(id) {
            Entry::Occupied(o) => {
                // Another check created it first (or it is the overflow
                // cell): give back the slot we took.
                if reserved {
                    self.release();
                }
                f(o.get())
            }
            Entry::Vacant(v) => {
                if !reserved {
                    // The overflow cell itself is counted, past the cap: there
                    // is one per limit, and counting it keeps sweeps exact.
                    self.cells.fetch_add(1, Ordering::AcqRel);
                }
                let cell = v.insert(make());
                f(cell.value())
            }
        }
    }

    /// Drops full buckets (arrival time ≤ `now`) and finished windows
    /// (end ≤ `now`). Runs shard by shard, so checks on other shards go on.
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
            let keep = q.window_end > now;
            if !keep {
                report.quotas += 1;
            }
            keep
        });
        self.cells
            .fetch_sub(report.buckets + report.quotas, Ordering::AcqRel);
        report
    }

    /// Cells currently tracked (buckets + quota counters, including the few
    /// shared overflow cells).
    pub fn tracked(&self) -> usize {
        self.cells.load(Ordering::Relaxed)
    }

    /// How many checks were judged by an overflow cell since start.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
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
