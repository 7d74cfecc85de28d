//! The sync journal: what this node charged (or gave back) since the last
//! flush to Redis, for the sync task to send.
//!
//! The pending change of a cell lives in the cell itself ([`Delta`], one
//! word beside its state); the journal only lists which cells are dirty,
//! one entry per cell ([`Listed`]: its id, its key's tag, and when it was
//! first charged or how long its Redis key outlives its window). A charge
//! to a clean cell lists it; further charges until the next flush only
//! add to its word. So the journal holds at most one entry per tracked
//! cell, and the store's cap bounds it: a flood of new keys can fill the
//! store, never drop a tracked cell's delta. A dirty cell is not swept
//! until it has been sent; when the admission policy displaces one (a
//! flood's own cells, mostly, while a busy node's flush is behind), its
//! change moves to a side map of at most a sixteenth of the cap
//! ([`Journal::evict`]) where its entry finds it; with that map full,
//! dirty cells are not displaced.
//!
//! The sync task drains the lists every `sync_interval` (taking them
//! whole, so their memory goes with the round) and takes each listed
//! cell's delta. Undos of cells the store no longer holds (a strict check
//! whose answer was lost, on a node where the cell's mirror was swept)
//! wait in a short side list of at most a sixteenth of the cap; beyond
//! that one is dropped, counted ([`Journal::dropped`]) and logged by the
//! sync task, as are deltas Redis refused for good and those of windows
//! long over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use nohash_hasher::BuildNoHashHasher;
use parking_lot::Mutex;

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

/// One dirty cell's pending change, as the sync task sends it.
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

/// Largest pending change a [`Delta`] holds (either way): 2⁶¹, 73 years
/// of a bucket's arrival time or as many units. Changes saturate there
/// (no limit admits so much; a client's giant refunds cannot wrap it).
pub const MAX_DELTA: i64 = 1 << 61;

/// A cell's pending change since the last flush, and whether the cell is
/// listed in the journal: one word, the net change shifted left by one,
/// the low bit set while the cell is listed.
#[derive(Debug, Default)]
pub struct Delta(AtomicI64);

impl Delta {
    /// A clean cell's.
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }

    /// Adds `delta`; true when the cell was clean and the caller must
    /// list it (exactly one of the calls racing on a clean cell is told
    /// so). The change is added before the cell is marked, so a drain
    /// that finds it unmarked leaves it for the entry about to be made.
    #[inline]
    pub fn add(&self, delta: i64) -> bool {
        let add = |word: i64| {
            let sum = (word >> 1)
                .saturating_add(delta)
                .clamp(-MAX_DELTA, MAX_DELTA);
            Some((sum << 1) | (word & 1))
        };
        let before = match self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, add)
        {
            Ok(word) | Err(word) => word,
        };
        before & 1 == 0 && self.0.fetch_or(1, Ordering::AcqRel) & 1 == 0
    }

    /// Whether the cell is listed: changed since the last flush.
    #[inline]
    pub fn is_dirty(&self) -> bool {
        self.0.load(Ordering::Acquire) & 1 == 1
    }

    /// The net change not yet taken (0 when clean).
    #[inline]
    pub fn pending(&self) -> i64 {
        self.0.load(Ordering::Acquire) >> 1
    }

    /// Takes the pending change of a listed cell, leaving it clean; `None`
    /// when it is not listed. Only the sync task takes.
    #[inline]
    pub fn take(&self) -> Option<i64> {
        if self.0.load(Ordering::Acquire) & 1 == 0 {
            return None;
        }
        // Only `take` clears the mark, so it is still set: what the swap
        // returns is every charge added so far.
        Some(self.0.swap(0, Ordering::AcqRel) >> 1)
    }
}

/// A listed dirty cell: what its Redis key needs besides the cell itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// The cell's id.
    pub id: u64,
    /// Its key's tag ([`Pending::tag`]).
    pub tag: u64,
    /// For a bucket, when it was first charged since the last flush
    /// ([`Pending::since`]); for a counter, its slack in ms.
    pub aux: u64,
}

/// Stripes of each list: pushes from concurrent checks rarely meet.
const STRIPES: usize = 64;

/// One list of dirty cells, striped by cell id.
#[derive(Debug)]
struct List {
    stripes: Box<[Mutex<Vec<Listed>>]>,
}

impl List {
    fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    #[inline]
    fn push(&self, entry: Listed) {
        // Ids are keyed hashes: any bits pick a stripe evenly.
        self.stripes[(entry.id as usize) % STRIPES]
            .lock()
            .push(entry);
    }

    /// Takes every entry, leaving the list empty (and its memory freed).
    fn take(&self) -> Vec<Listed> {
        let mut out = Vec::new();
        for s in self.stripes.iter() {
            let taken = std::mem::take(&mut *s.lock());
            if out.is_empty() {
                out = taken;
            } else {
                out.extend_from_slice(&taken);
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().len()).sum()
    }
}

/// The change of a dirty cell the store displaced: what its listed
/// entry needs besides the entry itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The cell's pending change.
    pub delta: i64,
    /// A counter's window end (0 for a bucket).
    pub window_end: Nanos,
}

/// Which cells are dirty. See the module docs.
#[derive(Debug)]
pub struct Journal {
    buckets: List,
    counters: List,
    /// Undos of cells the store no longer holds.
    orphans: Mutex<Vec<(u64, Pending)>>,
    /// Changes of dirty cells displaced, by cell id.
    evicted: Mutex<HashMap<u64, Evicted, BuildNoHashHasher<u64>>>,
    /// Its length (kept by hand, so a drain skips the lock when empty).
    evicted_held: AtomicUsize,
    /// Room in each of the two side lists.
    side_cap: usize,
    dropped: AtomicU64,
    /// Cells of flush calls that failed, held by the sync task to be sent
    /// again as they were: pending too, outside the lists.
    aside: AtomicUsize,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl Journal {
    /// An empty journal for a store of at most `cap` cells.
    pub fn new(cap: usize) -> Self {
        Self {
            buckets: List::new(),
            counters: List::new(),
            orphans: Mutex::new(Vec::new()),
            evicted: Mutex::new(HashMap::default()),
            evicted_held: AtomicUsize::new(0),
            side_cap: cap / 16 + 16,
            dropped: AtomicU64::new(0),
            aside: AtomicUsize::new(0),
        }
    }

    /// Deltas dropped since start: undos beyond the side list's room,
    /// refused by Redis for good, or for windows long over.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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

    /// Adds `delta` to a cell's pending change (`at`, in the cell) and
    /// lists the cell if it was clean. `since` is when the charge was
    /// made (buckets); a counter's slack comes with its kind.
    #[inline]
    pub fn charge(&self, at: &Delta, id: u64, tag: u64, kind: CellKind, delta: i64, since: Nanos) {
        if at.add(delta) {
            match kind {
                CellKind::Bucket => self.buckets.push(Listed {
                    id,
                    tag,
                    aux: since,
                }),
                CellKind::Counter { slack_ms, .. } => self.counters.push(Listed {
                    id,
                    tag,
                    aux: u64::from(slack_ms),
                }),
            }
        }
    }

    /// Keeps an undo of a cell the store does not hold, to be sent with
    /// the next flush; false (and counted as dropped) when the side list
    /// is full.
    pub fn orphan(&self, id: u64, pending: Pending) -> bool {
        let mut orphans = self.orphans.lock();
        if orphans.len() >= self.side_cap {
            drop(orphans);
            self.note_dropped(1);
            return false;
        }
        orphans.push((id, pending));
        true
    }

    /// Keeps the change of dirty cell `id`, which the store is about to
    /// displace, for its listed entry to find; false when the side map is
    /// full (the cell must then stay). Called under the cell's shard
    /// lock, so a drain sees the cell or this, never neither.
    pub fn evict(&self, id: u64, evicted: Evicted) -> bool {
        let mut map = self.evicted.lock();
        // A cell displaced before, made again and dirty again, stays until
        // a drain has taken the first change: so each cell has at most
        // one listed entry beyond the store's own.
        if map.len() >= self.side_cap || map.contains_key(&id) {
            return false;
        }
        map.insert(id, evicted);
        self.evicted_held.store(map.len(), Ordering::Release);
        true
    }

    /// Whether the side map has room for one more displaced cell's change.
    pub fn can_evict(&self) -> bool {
        self.evicted_held.load(Ordering::Acquire) < self.side_cap
    }

    /// The change of displaced cell `id` not yet taken (0 when none).
    pub fn evicted_delta(&self, id: u64) -> i64 {
        if self.evicted_held.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.evicted.lock().get(&id).map_or(0, |e| e.delta)
    }

    /// Forgets every change kept aside for cell `id` (an operator reset
    /// it): displaced or undone, none is sent.
    pub fn forget(&self, id: u64) {
        let _ = self.take_evicted(id);
        self.orphans.lock().retain(|(o, _)| *o != id);
    }

    /// Takes the change of displaced cell `id`, if one is kept.
    pub fn take_evicted(&self, id: u64) -> Option<Evicted> {
        if self.evicted_held.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut map = self.evicted.lock();
        let e = map.remove(&id);
        let held = map.len();
        self.evicted_held.store(held, Ordering::Release);
        if held == 0 && map.capacity() > 1_024 {
            map.shrink_to_fit();
        }
        e
    }

    /// Takes every listed bucket (true) or counter (false), leaving the
    /// list empty.
    pub fn take_listed(&self, buckets: bool) -> Vec<Listed> {
        if buckets {
            self.buckets.take()
        } else {
            self.counters.take()
        }
    }

    /// Takes the undos kept for cells the store does not hold.
    pub fn take_orphans(&self) -> Vec<(u64, Pending)> {
        std::mem::take(&mut *self.orphans.lock())
    }

    /// Entries listed (locks every stripe; not for the request path).
    pub fn len(&self) -> usize {
        self.buckets.len() + self.counters.len() + self.orphans.lock().len()
    }

    /// Changes of displaced cells waiting for their entries.
    pub fn evicted(&self) -> usize {
        self.evicted_held.load(Ordering::Acquire)
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_lists_its_cell_once_until_taken() {
        let d = Delta::new();
        assert_eq!(d.take(), None, "a clean cell has nothing to take");
        assert!(d.add(5), "the first charge lists the cell");
        assert!(!d.add(-7), "later ones only add");
        assert!(!d.add(0));
        assert!(d.is_dirty());
        assert_eq!(d.pending(), -2);
        assert_eq!(d.take(), Some(-2));
        assert!(!d.is_dirty());
        assert_eq!(d.pending(), 0);
        // A charge netting zero is still a change to send (its answer is
        // the global state).
        assert!(d.add(0));
        assert_eq!(d.take(), Some(0));
    }

    #[test]
    fn a_delta_saturates_instead_of_wrapping() {
        let d = Delta::new();
        d.add(i64::MAX);
        d.add(i64::MIN);
        assert_eq!(d.take(), Some(-MAX_DELTA));
        for _ in 0..100 {
            d.add(-(1 << 60));
        }
        assert!(d.is_dirty());
        assert_eq!(d.take(), Some(-MAX_DELTA), "giant refunds stay giant");
        d.add(i64::MAX);
        assert_eq!(d.take(), Some(MAX_DELTA));
    }

    #[test]
    fn racing_charges_list_a_clean_cell_exactly_once_and_lose_nothing() {
        let d = Delta::new();
        let listed = AtomicUsize::new(0);
        let (taken, takes) = (AtomicI64::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if d.add(1) {
                            listed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..1_000 {
                    if let Some(v) = d.take() {
                        taken.fetch_add(v, Ordering::Relaxed);
                        takes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        });
        let rest = d.take();
        assert_eq!(taken.load(Ordering::Relaxed) + rest.unwrap_or(0), 40_000);
        // Each listing is ended by exactly one take: no entry is made
        // twice for one dirty spell, and none is missing.
        assert_eq!(
            listed.load(Ordering::Relaxed),
            takes.load(Ordering::Relaxed) + usize::from(rest.is_some())
        );
    }

    #[test]
    fn charges_list_each_dirty_cell_once_and_a_take_empties_the_lists() {
        let j = Journal::new(100);
        let cells: Vec<Delta> = (0..10).map(|_| Delta::new()).collect();
        let counter = CellKind::Counter {
            window_end: 9,
            slack_ms: 2_000,
        };
        for round in 0..3 {
            for (i, d) in cells.iter().enumerate() {
                let kind = if i % 2 == 0 {
                    CellKind::Bucket
                } else {
                    counter
                };
                j.charge(d, i as u64, 7, kind, 1, 100 + round);
            }
        }
        assert_eq!(j.len(), 10);
        let buckets = j.take_listed(true);
        assert_eq!(buckets.len(), 5);
        assert!(
            buckets.iter().all(|l| l.aux == 100),
            "since the first charge"
        );
        let counters = j.take_listed(false);
        assert!(counters.iter().all(|l| l.aux == 2_000 && l.tag == 7));
        assert!(j.is_empty());
        assert!(cells.iter().all(|d| d.take() == Some(3)));
    }

    #[test]
    fn orphans_are_bounded_and_counted() {
        let j = Journal::new(32);
        let p = Pending {
            tag: 1,
            kind: CellKind::Bucket,
            since: 0,
            delta: -1,
        };
        // 32 / 16 + 16 = 18 undos of cells the store lost.
        let kept = (0..20).filter(|i| j.orphan(*i, p)).count();
        assert_eq!((kept, j.dropped(), j.len()), (18, 2, 18));
        assert_eq!(j.take_orphans().len(), 18);
        assert!(j.is_empty());
    }
}
