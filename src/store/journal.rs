//! The dirty-cell journal for Redis sync: per cell, what this node charged
//! (or gave back) since the last flush.
//!
//! The engine adds to it on the request path (one shard-locked map update,
//! no allocation once the entry exists); the sync task drains it every
//! `sync_interval`, sends one delta per dirty cell, and puts back what it
//! could not send. It holds one entry per dirty cell, at most `cap` of
//! them (the store's cap); a charge for a new cell beyond that, during a
//! long outage, is dropped and counted ([`Journal::dropped`]), as are
//! deltas Redis refused for good and those of windows long over. An undo
//! (units given back) may take an entry past the cap, up to a sixteenth
//! more: only beyond that is it dropped (counted and logged). A drain
//! that leaves the map mostly empty shrinks it, so the memory a flood or
//! an outage took goes back.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use nohash_hasher::BuildNoHashHasher;

use crate::core::clock::Nanos;

/// What kind of cell a delta is for, and what its Redis key needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// A token bucket: deltas are nanoseconds of arrival time.
    Bucket,
    /// A window counter (quota or fixed window) ending at the given time:
    /// deltas are units.
    Counter {
        /// End of the window (Unix ns), for the Redis key's expiry.
        window_end: Nanos,
        /// How long the Redis key outlives the window, in ms
        /// ([`crate::core::window::Span::slack`]).
        slack_ms: u32,
    },
}

/// One dirty cell's pending change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The key the cell is filed under (all cells of one key share it):
    /// the Redis Cluster hash tag, so one key's cells share a slot.
    pub tag: u64,
    /// The cell's kind.
    pub kind: CellKind,
    /// When the oldest delta in it was charged: Redis applies a bucket's
    /// delta as spent from then on.
    pub since: Nanos,
    /// Net change since the last flush.
    pub delta: i64,
}

/// A dirty cell's entry: its kind and an atomic running delta, so
/// charges to a cell that is already dirty take only a shard read lock.
#[derive(Debug)]
struct Entry {
    tag: u64,
    kind: CellKind,
    since: AtomicU64,
    delta: AtomicI64,
}

/// Capacity (entries) the journal keeps after a drain without shrinking.
const SHRINK_ABOVE: usize = 16_384;

/// Shards of the journal: as many as the store's maps, so concurrent
/// checks rarely meet on one.
const SHARDS: usize = 256;

/// Pending deltas by cell id.
#[derive(Debug)]
pub struct Journal {
    cells: DashMap<u64, Entry, BuildNoHashHasher<u64>>,
    /// Entries held (kept by hand: `DashMap::len` locks every shard).
    entries: AtomicUsize,
    cap: usize,
    dropped: AtomicU64,
    /// Cells of flush calls that failed, held by the sync task to be sent
    /// again as they were: pending too, outside this map.
    aside: AtomicUsize,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl Journal {
    /// An empty journal holding at most `cap` dirty cells.
    pub fn new(cap: usize) -> Self {
        Self {
            cells: DashMap::with_hasher_and_shard_amount(BuildNoHashHasher::default(), SHARDS),
            entries: AtomicUsize::new(0),
            cap,
            dropped: AtomicU64::new(0),
            aside: AtomicUsize::new(0),
        }
    }

    /// Deltas dropped since start: beyond the cap, refused by Redis for
    /// good, or for windows long over.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Entries the journal may hold for undos: the cap and a sixteenth.
    fn undo_cap(&self) -> usize {
        self.cap.saturating_add(self.cap / 16 + 16)
    }

    /// Cells held aside by the sync task (calls to send again).
    pub fn aside(&self) -> usize {
        self.aside.load(Ordering::Relaxed)
    }

    /// Says how many cells the sync task holds aside now.
    pub fn set_aside(&self, cells: usize) {
        self.aside.store(cells, Ordering::Relaxed);
    }

    /// Counts `n` dropped deltas.
    pub fn note_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `delta` to cell `id`'s pending change.
    #[inline]
    pub fn add(&self, id: u64, tag: u64, kind: CellKind, delta: i64, since: Nanos) {
        if let Some(e) = self.cells.get(&id) {
            e.delta.fetch_add(delta, Ordering::Relaxed);
            e.since.fetch_min(since, Ordering::Relaxed);
            return;
        }
        let held = self.entries.load(Ordering::Relaxed);
        // An undo (units given back) may go past the cap by a sixteenth:
        // losing one would leave Redis counting what was returned.
        if held >= self.cap && (delta >= 0 || held >= self.undo_cap()) {
            self.note_dropped(1);
            return;
        }
        self.cells
            .entry(id)
            .or_insert_with(|| {
                self.entries.fetch_add(1, Ordering::Relaxed);
                Entry {
                    tag,
                    kind,
                    since: AtomicU64::new(since),
                    delta: AtomicI64::new(0),
                }
            })
            .delta
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// The pending change of cell `id` (0 when clean).
    #[inline]
    pub fn pending(&self, id: u64) -> i64 {
        self.cells
            .get(&id)
            .map_or(0, |e| e.delta.load(Ordering::Relaxed))
    }

    /// Takes up to `max` dirty cells out of the journal, leaving them clean.
    pub fn drain(&self, max: usize) -> Vec<(u64, Pending)> {
        let mut out = Vec::new();
        self.cells.retain(|id, e| {
            if out.len() >= max {
                return true;
            }
            // Counted down here, shard by shard, so cells charged during
            // a long drain are not refused for a cap already freed.
            self.entries.fetch_sub(1, Ordering::Relaxed);
            // A net change of 0 (charges given back) is sent too: Redis's
            // answer tells the node the cell's global state, which it
            // would otherwise learn only at its next charge.
            out.push((
                *id,
                Pending {
                    tag: e.tag,
                    kind: e.kind,
                    since: e.since.load(Ordering::Relaxed),
                    delta: e.delta.load(Ordering::Relaxed),
                },
            ));
            false
        });
        // A flood, or an outage, grew the map; once drained, its memory
        // goes back (not every round: only when most of it is empty).
        let held = self.entries.load(Ordering::Relaxed);
        if self.cells.capacity() > 4 * held + SHRINK_ABOVE {
            self.cells.shrink_to_fit();
        }
        out
    }

    /// Puts back deltas that could not be sent, merging with what was
    /// charged meanwhile.
    pub fn restore(&self, items: &[(u64, Pending)]) {
        for (id, p) in items {
            self.add(*id, p.tag, p.kind, p.delta, p.since);
        }
    }

    /// Drops cell `id`'s pending change (its state was reset): it is not
    /// sent. A flush already under way may still send it.
    pub fn forget(&self, id: u64) {
        if self.cells.remove(&id).is_some() {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Dirty cells (locks every shard; not for the request path).
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window counter's kind.
    const COUNTER: CellKind = CellKind::Counter {
        window_end: 9,
        slack_ms: 2_000,
    };

    #[test]
    fn adds_drains_and_restores() {
        let j = Journal::new(usize::MAX);
        j.add(1, 0, CellKind::Bucket, 5, 0);
        j.add(1, 0, CellKind::Bucket, 7, 0);
        j.add(2, 0, COUNTER, 1, 0);
        j.add(3, 0, CellKind::Bucket, 4, 0);
        j.add(3, 0, CellKind::Bucket, -4, 0);
        assert_eq!(j.pending(1), 12);
        let mut taken = j.drain(usize::MAX);
        taken.sort_by_key(|(id, _)| *id);
        // A cell whose charges cancelled out is sent too, with 0: its
        // answer is the cell's global state.
        assert_eq!(taken.len(), 3);
        assert_eq!(taken[0].1.delta, 12);
        assert_eq!((taken[2].0, taken[2].1.delta), (3, 0));
        assert!(j.is_empty());
        j.add(1, 0, CellKind::Bucket, 1, 0);
        j.restore(&taken);
        assert_eq!(j.pending(1), 13);
        assert_eq!(j.pending(2), 1);
    }

    #[test]
    fn beyond_the_cap_new_cells_are_dropped_and_counted() {
        let j = Journal::new(2);
        j.add(1, 0, COUNTER, 1, 0);
        j.add(2, 0, COUNTER, 1, 0);
        j.add(3, 0, COUNTER, 1, 0);
        // An entry already held still takes deltas.
        j.add(1, 0, COUNTER, 1, 0);
        assert_eq!((j.pending(1), j.pending(3), j.dropped()), (2, 0, 1));
        assert_eq!(j.drain(usize::MAX).len(), 2);
        j.add(3, 0, COUNTER, 1, 0);
        assert_eq!(j.pending(3), 1);
    }

    #[test]
    fn drain_takes_at_most_max() {
        let j = Journal::new(usize::MAX);
        for id in 0..10 {
            j.add(id, 0, CellKind::Bucket, 1, 0);
        }
        assert_eq!(j.drain(4).len(), 4);
        assert_eq!(j.len(), 6);
    }

    #[test]
    fn undos_go_past_the_cap_by_a_sixteenth_charges_do_not() {
        let j = Journal::new(32);
        for id in 0..32 {
            j.add(id, 0, CellKind::Bucket, 1, 0);
        }
        j.add(100, 0, CellKind::Bucket, 1, 0);
        assert_eq!((j.len(), j.dropped()), (32, 1), "a charge beyond the cap");
        // 32 + 32/16 + 16 = 50 entries for undos.
        for id in 200..230 {
            j.add(id, 0, CellKind::Bucket, -1, 0);
        }
        assert_eq!((j.len(), j.dropped()), (50, 13));
        assert_eq!(j.pending(200), -1);
    }

    #[test]
    fn a_drained_journal_gives_its_memory_back() {
        let j = Journal::new(usize::MAX);
        for id in 0..200_000 {
            j.add(id, 0, CellKind::Bucket, 1, 0);
        }
        assert!(j.cells.capacity() >= 200_000);
        assert_eq!(j.drain(usize::MAX).len(), 200_000);
        // At most SHRINK_ABOVE (and the shards' rounding) kept.
        assert!(
            j.cells.capacity() <= 2 * SHRINK_ABOVE,
            "{}",
            j.cells.capacity()
        );
        j.add(1, 0, CellKind::Bucket, 1, 0);
        assert_eq!(j.pending(1), 1);
    }
}
