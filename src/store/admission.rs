//! Who gets a cell when the store is full: the admission and eviction
//! policy, in the spirit of W-TinyLFU (a frequency sketch in front of a
//! sampled, approximate eviction).
//!
//! A key that would be charged but has no cell asks for room. The policy
//! samples [`SAMPLES`] cells at random positions and keeps those it may
//! take: cells of the asker's own source, and, while the asker is under
//! its budget, cells of sources over theirs ([`super::budget`]). Of those
//! it picks the cheapest to forget: a cell that holds nothing (a full
//! bucket, an empty counter) at once; else another source's cell before
//! its own, then the one charged fewest times (a counter of a window just
//! over counts as charged as often as it was: its key's next window takes
//! its place, see [`super::cell::Cell::renews`]), then one with nothing
//! waiting for Redis (a dirty cell goes only if the journal can keep its
//! change aside). Of cells charged
//! equally often it goes by how they got in ([`Arrival`], told by
//! [`Turnover`]): first those that displaced another while the store was
//! turning over fast (a flood's own cells), oldest first; then those
//! that found free room, newest first (so the cells a flood filled the
//! store with go before the customers it found there); last those that
//! displaced another while the store was calm (new customers after a
//! flood), oldest first. It takes that cell only if it was charged no more often
//! than the asker has asked lately ([`super::sketch`], at least once): a
//! one-shot flood key can displace another one-shot key, or a new
//! customer's first charge can, but neither can displace a key charged
//! twice; a key that keeps asking earns its place. Otherwise the check
//! goes to the shared overflow cell, the last resort.
//!
//! What a displaced cell loses is counted: a counter's units (the key may
//! spend them again: at most its count) and a bucket's debt (it starts
//! full). With Redis sync, a displaced cell's pending delta is still sent
//! and its count comes back from Redis when the key returns.

use std::cell::Cell as StdCell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::budget::Budgets;
use super::cell::{Arrival, Cell, Loss, MAX_HITS};
use crate::core::clock::Nanos;
use crate::core::source::Source;

/// Cells looked at for one newcomer.
pub const SAMPLES: usize = 8;

/// A sampled cell the newcomer may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub id: u64,
    /// In the quota map (else the bucket map).
    pub quota: bool,
    /// The asker's own source's (else a source over its budget).
    pub own: bool,
    /// Charges, 0 when forgetting it loses nothing.
    pub hits: u8,
    /// Holds a change not yet sent to Redis: displacing it moves the
    /// change to the journal's side map, which is bounded.
    pub dirty: bool,
    pub arrival: Arrival,
    pub born: u64,
}

impl Candidate {
    /// Reads `cell` as a candidate, if the asker may take it.
    pub(crate) fn of<V: Cell + ?Sized>(
        id: u64,
        quota: bool,
        cell: &V,
        now: Nanos,
        asker: Source,
        budgets: &Budgets,
        asker_under: bool,
    ) -> Option<Candidate> {
        let meta = cell.meta();
        let source = meta.source();
        let takeable = source != Source::OVERFLOW
            && (source == asker || (asker_under && budgets.over_share(source)));
        takeable.then(|| Candidate {
            id,
            quota,
            own: source == asker,
            // A counter of a window just over holds nothing, but its key
            // is as established as it was: its next window's cell takes
            // its place (and the sweep drops it otherwise).
            hits: match cell.loss(now) {
                Loss::Nothing if !cell.renews(now) => 0,
                _ => meta.hits().max(1),
            },
            dirty: cell.delta().is_dirty(),
            arrival: meta.arrival(),
            born: meta.born(),
        })
    }

    /// Whether `self` is a better pick than `other`: holds nothing, else
    /// another source's, else charged fewer times, else one with nothing
    /// waiting for Redis, else by arrival (see the module docs).
    pub(crate) fn cheaper_than(&self, other: &Candidate) -> bool {
        let order = |c: &Candidate| {
            let (rank, age) = match c.arrival {
                Arrival::InBurst => (0, c.born),
                Arrival::Free => (1, u64::MAX - c.born),
                Arrival::Calm => (2, c.born),
            };
            (c.hits > 0, c.own, c.hits, c.dirty, rank, age)
        };
        order(self) < order(other)
    }
}

/// Picks the cell to displace among `candidates` for an asker that has
/// asked `asked` times lately; `None` when every one is worth more.
pub(crate) fn choose(
    candidates: impl IntoIterator<Item = Candidate>,
    asked: u8,
) -> Option<Candidate> {
    let mut best: Option<Candidate> = None;
    let worth = asked.clamp(1, MAX_HITS);
    for c in candidates.into_iter().filter(|c| c.hits <= worth) {
        if c.hits == 0 && !c.dirty {
            return Some(c);
        }
        if best.is_none_or(|b| c.cheaper_than(&b)) {
            best = Some(c);
        }
    }
    best
}

/// How fast the store turns over: displacements in the current second
/// (of the store's clock). Up to `calm_max` a second (a 64th of the cap,
/// at least 16) the store is calm, and a cell that gets in counts as a
/// new customer's; past that a flood is under way.
#[derive(Debug)]
pub struct Turnover {
    /// The second (Unix, of the store's clock) being counted.
    second: AtomicU64,
    count: AtomicU64,
    calm_max: u64,
}

impl Turnover {
    /// For a store of `cap` cells.
    pub fn new(cap: usize) -> Self {
        Self {
            second: AtomicU64::new(0),
            count: AtomicU64::new(0),
            calm_max: (cap as u64 / 64).max(1),
        }
    }

    /// Counts one displacement at `now`; how the newcomer got in.
    pub(crate) fn displaced(&self, now: Nanos) -> Arrival {
        let second = now / 1_000_000_000;
        let seen = self.second.load(Ordering::Relaxed);
        if second > seen
            && self
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.calm_max {
            Arrival::Calm
        } else {
            Arrival::InBurst
        }
    }
}

/// What displacing cells has cost, since start.
#[derive(Debug, Default)]
pub struct Displaced {
    buckets: AtomicU64,
    counters: AtomicU64,
    units: AtomicU64,
    debt: AtomicU64,
    refused: AtomicU64,
}

/// A snapshot of [`Displaced`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DisplacedCounts {
    /// Buckets displaced.
    pub buckets: u64,
    /// Window counters displaced.
    pub counters: u64,
    /// Units counters held when displaced: what their keys may spend again.
    pub units: u64,
    /// Debt buckets held when displaced, in nanoseconds (forgiven).
    pub debt: u64,
    /// Newcomers refused a cell (sent to the overflow cell).
    pub refused: u64,
}

impl Displaced {
    /// Counts one displaced cell that lost `loss`.
    pub(crate) fn note(&self, quota: bool, loss: Loss) {
        let kind = if quota { &self.counters } else { &self.buckets };
        kind.fetch_add(1, Ordering::Relaxed);
        match loss {
            Loss::Nothing => {}
            Loss::Units(n) => {
                self.units.fetch_add(n, Ordering::Relaxed);
            }
            Loss::Debt(ns) => {
                self.debt.fetch_add(ns, Ordering::Relaxed);
            }
        }
    }

    /// Counts one newcomer refused a cell.
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> DisplacedCounts {
        DisplacedCounts {
            buckets: self.buckets.load(Ordering::Relaxed),
            counters: self.counters.load(Ordering::Relaxed),
            units: self.units.load(Ordering::Relaxed),
            debt: self.debt.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// A random 64-bit number: xorshift64* per thread, seeded from the OS.
/// Sampling positions need to be unpredictable to callers, not
/// cryptographic.
pub(crate) fn random() -> u64 {
    thread_local! {
        static STATE: StdCell<u64> = StdCell::new(rand::random::<u64>() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, hits: u8, born: u64) -> Candidate {
        Candidate {
            id,
            quota: true,
            own: true,
            hits,
            dirty: false,
            arrival: Arrival::Free,
            born,
        }
    }

    #[test]
    fn takes_a_free_cell_else_the_least_charged_newest() {
        assert_eq!(
            choose([c(1, 3, 0), c(2, 0, 0), c(3, 1, 0)], 1).map(|c| c.id),
            Some(2)
        );
        assert_eq!(
            choose([c(1, 1, 5), c(2, 1, 9), c(3, 2, 9)], 1).map(|c| c.id),
            Some(2)
        );
        // A one-shot asker cannot take a cell charged twice ...
        assert!(choose([c(1, 2, 0), c(2, 5, 0)], 1).is_none());
        // ... a key that asked twice can.
        assert_eq!(choose([c(1, 2, 0), c(2, 5, 0)], 2).map(|c| c.id), Some(1));
        assert!(choose([], 15).is_none());
        // Of cells charged as often: a flood's (oldest first), then those
        // that found room (newest first), then calm newcomers.
        let came = |id, arrival, born| Candidate {
            arrival,
            ..c(id, 1, born)
        };
        let all = [
            came(1, Arrival::Calm, 1),
            came(2, Arrival::Free, 5),
            came(3, Arrival::Free, 6),
            came(4, Arrival::InBurst, 8),
            came(5, Arrival::InBurst, 7),
        ];
        assert_eq!(choose(all, 1).map(|c| c.id), Some(5));
        assert_eq!(choose(all[..3].to_vec(), 1).map(|c| c.id), Some(3));
        assert_eq!(
            choose([all[0], came(6, Arrival::Calm, 0)], 1).map(|c| c.id),
            Some(6)
        );
        // Another source's cell (over its budget) goes before an own one.
        let other = Candidate {
            own: false,
            ..c(4, 1, 0)
        };
        assert_eq!(choose([c(1, 1, 9), other], 1).map(|c| c.id), Some(4));
        // ... but not one worth more than the asker.
        let dear = Candidate {
            own: false,
            ..c(5, 3, 0)
        };
        assert_eq!(choose([dear, c(1, 1, 0)], 1).map(|c| c.id), Some(1));
        // Of cells alike, one with nothing waiting for Redis goes first,
        // even among those that hold nothing.
        let dirty = |id, hits| Candidate {
            dirty: true,
            ..c(id, hits, 9)
        };
        assert_eq!(choose([dirty(1, 1), c(2, 1, 0)], 1).map(|c| c.id), Some(2));
        assert_eq!(choose([dirty(1, 0), c(2, 0, 0)], 1).map(|c| c.id), Some(2));
        assert_eq!(choose([dirty(1, 0)], 1).map(|c| c.id), Some(1));
    }

    #[test]
    fn a_store_is_calm_until_a_64th_of_it_turns_over_in_a_second() {
        let t = Turnover::new(64 * 20);
        let second = 1_000_000_000;
        let arrivals: Vec<Arrival> = (0..21).map(|_| t.displaced(5 * second)).collect();
        assert!(arrivals[..20].iter().all(|a| *a == Arrival::Calm));
        assert_eq!(arrivals[20], Arrival::InBurst);
        assert_eq!(t.displaced(6 * second), Arrival::Calm, "a new second");
    }

    #[test]
    fn random_numbers_differ() {
        let a: Vec<u64> = (0..100).map(|_| random()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), 100);
    }
}
