//! The cells the store holds, and what each says about itself to the
//! admission policy: its source, how often it was charged, when it was
//! made, what forgetting it now would lose, and (with Redis sync) what it
//! has not sent yet.

use std::sync::atomic::{AtomicU64, Ordering};

use super::journal::Delta;
use crate::core::clock::Nanos;
use crate::core::source::Source;

/// Bookkeeping packed into one word beside each cell's state: the source
/// (16 bits), charges so far (4 bits, saturating), how the cell got in
/// ([`Arrival`], 2 bits), and when it was made (42 bits of Unix
/// milliseconds, good for 130 years).
///
/// The charge count is bumped with a plain load and store rather than an
/// atomic add: two charges racing may count once, which only makes the
/// cell look a little cheaper to forget; and once saturated a busy cell's
/// charges write nothing here at all.
#[derive(Debug)]
pub struct Meta(AtomicU64);

const BORN_BITS: u32 = 42;
const ARRIVAL_SHIFT: u32 = BORN_BITS;
const HITS_SHIFT: u32 = 44;
const SOURCE_SHIFT: u32 = 48;
/// Charges a cell counts up to.
pub const MAX_HITS: u8 = 15;

impl Meta {
    /// A new cell's: from `source`, made at `now` into free room, not
    /// charged yet.
    pub fn new(source: Source, now: Nanos) -> Self {
        Self::arrived(source, now, Arrival::Free)
    }

    /// A new cell's, which got in as `arrival` says.
    pub fn arrived(source: Source, now: Nanos, arrival: Arrival) -> Self {
        let born = (now / 1_000_000) & ((1 << BORN_BITS) - 1);
        Meta(AtomicU64::new(
            (u64::from(source.bits()) << SOURCE_SHIFT) | ((arrival as u64) << ARRIVAL_SHIFT) | born,
        ))
    }

    /// How the cell got in.
    #[inline]
    pub fn arrival(&self) -> Arrival {
        match (self.0.load(Ordering::Relaxed) >> ARRIVAL_SHIFT) & 0b11 {
            1 => Arrival::InBurst,
            2 => Arrival::Calm,
            _ => Arrival::Free,
        }
    }

    /// Counts one charge.
    #[inline]
    pub fn hit(&self) {
        let m = self.0.load(Ordering::Relaxed);
        if ((m >> HITS_SHIFT) & 0xf) < u64::from(MAX_HITS) {
            self.0.store(m + (1 << HITS_SHIFT), Ordering::Relaxed);
        }
    }

    /// The same, counting `hits` charges already (a cell that takes the
    /// place of its key's cell of the window before).
    pub fn with_hits(self, hits: u8) -> Self {
        let hits = u64::from(hits.min(MAX_HITS));
        let m = self.0.into_inner() & !(0xf << HITS_SHIFT);
        Meta(AtomicU64::new(m | (hits << HITS_SHIFT)))
    }

    /// Charges so far, up to [`MAX_HITS`].
    #[inline]
    pub fn hits(&self) -> u8 {
        ((self.0.load(Ordering::Relaxed) >> HITS_SHIFT) & 0xf) as u8
    }

    /// The source the cell counts under.
    #[inline]
    pub fn source(&self) -> Source {
        Source::from_bits((self.0.load(Ordering::Relaxed) >> SOURCE_SHIFT) as u16)
    }

    /// When the cell was made, in Unix milliseconds.
    #[inline]
    pub fn born(&self) -> u64 {
        self.0.load(Ordering::Relaxed) & ((1 << BORN_BITS) - 1)
    }
}

/// How a cell got into the store: what the admission policy weighs when
/// choosing among cells charged equally often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Into free room (before the store filled, or after a sweep).
    Free = 0,
    /// By displacing another, while the store was turning over fast (a
    /// key flood): the flood's own cells, mostly.
    InBurst = 1,
    /// By displacing another, while the store was calm: a new key after
    /// (or between) floods.
    Calm = 2,
}

/// A token bucket: its theoretical arrival time (GCRA), in Unix ns.
#[derive(Debug)]
pub struct BucketCell {
    /// When the bucket is full again; at or before now it is full.
    pub tat: AtomicU64,
    meta: Meta,
    delta: Delta,
}

impl BucketCell {
    /// A full bucket.
    pub fn new(meta: Meta) -> Self {
        Self {
            tat: AtomicU64::new(0),
            meta,
            delta: Delta::new(),
        }
    }
}

/// A counter for one window (a quota or a fixed window).
#[derive(Debug)]
pub struct QuotaCell {
    /// Units counted in the window.
    pub used: AtomicU64,
    /// End of the window (Unix ns): after it the cell is idle.
    pub window_end: Nanos,
    meta: Meta,
    delta: Delta,
}

impl QuotaCell {
    /// An empty counter for a window ending at `window_end`.
    pub fn new(window_end: Nanos, meta: Meta) -> Self {
        Self {
            used: AtomicU64::new(0),
            window_end,
            meta,
            delta: Delta::new(),
        }
    }

    /// An empty counter outside any store (for the algorithms' tests).
    pub fn detached(window_end: Nanos) -> Self {
        Self::new(window_end, Meta::new(Source::PLANS, 0))
    }
}

/// What forgetting a cell now would lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Nothing: a full bucket, a window that is over or a counter at zero.
    Nothing,
    /// A counter's units: the key could spend them again.
    Units(u64),
    /// A bucket's debt in nanoseconds: it would start full instead.
    Debt(Nanos),
}

/// A cell the store holds.
pub trait Cell {
    /// Its bookkeeping.
    fn meta(&self) -> &Meta;
    /// Its change not yet sent to Redis (always clean without sync).
    fn delta(&self) -> &Delta;
    /// What forgetting it at `now` would lose.
    fn loss(&self, now: Nanos) -> Loss;
    /// A counter's window end (Unix ns); 0 for a bucket.
    fn window_end(&self) -> Nanos {
        0
    }
    /// Whether it is a counter of a window that is over, counted in: its
    /// key's next window takes its place (and how often it was charged)
    /// when that window's cell is made.
    fn renews(&self, _now: Nanos) -> bool {
        false
    }
}

impl Cell for BucketCell {
    #[inline]
    fn meta(&self) -> &Meta {
        &self.meta
    }

    #[inline]
    fn delta(&self) -> &Delta {
        &self.delta
    }

    fn loss(&self, now: Nanos) -> Loss {
        match self.tat.load(Ordering::Acquire).saturating_sub(now) {
            0 => Loss::Nothing,
            debt => Loss::Debt(debt),
        }
    }
}

impl Cell for QuotaCell {
    #[inline]
    fn meta(&self) -> &Meta {
        &self.meta
    }

    #[inline]
    fn delta(&self) -> &Delta {
        &self.delta
    }

    fn loss(&self, now: Nanos) -> Loss {
        match self.used.load(Ordering::Acquire) {
            0 => Loss::Nothing,
            _ if self.window_end <= now => Loss::Nothing,
            used => Loss::Units(used),
        }
    }

    #[inline]
    fn window_end(&self) -> Nanos {
        self.window_end
    }

    fn renews(&self, now: Nanos) -> bool {
        self.window_end <= now && self.used.load(Ordering::Acquire) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_packs_source_hits_and_birth() {
        let now = 1_795_780_800_123_456_789;
        let m = Meta::new(Source::from_bits(4095), now);
        assert_eq!(m.source(), Source::from_bits(4095));
        assert_eq!(m.born(), now / 1_000_000);
        assert_eq!(m.hits(), 0);
        for _ in 0..100 {
            m.hit();
        }
        assert_eq!(m.hits(), MAX_HITS);
        assert_eq!(m.source(), Source::from_bits(4095), "hits never spill");
        let carried = Meta::arrived(Source::PLANS, now, Arrival::Calm).with_hits(7);
        assert_eq!((carried.hits(), carried.arrival()), (7, Arrival::Calm));
        assert_eq!(carried.born(), now / 1_000_000);
        assert_eq!(m.born(), now / 1_000_000);
        assert_eq!(m.arrival(), Arrival::Free);
        for a in [Arrival::InBurst, Arrival::Calm] {
            let d = Meta::arrived(Source::OVERFLOW, now, a);
            d.hit();
            assert_eq!((d.arrival(), d.born(), d.hits()), (a, now / 1_000_000, 1));
            assert_eq!(d.source(), Source::OVERFLOW);
        }
        let overflow = Meta::new(Source::OVERFLOW, now);
        assert_eq!(overflow.source(), Source::OVERFLOW);
    }

    #[test]
    fn loss_says_what_forgetting_costs() {
        let b = BucketCell::new(Meta::new(Source::PLANS, 0));
        assert_eq!(b.loss(100), Loss::Nothing);
        b.tat.store(150, Ordering::Release);
        assert_eq!(b.loss(100), Loss::Debt(50));
        let q = QuotaCell::detached(1_000);
        assert_eq!(q.loss(10), Loss::Nothing);
        q.used.store(3, Ordering::Release);
        assert_eq!(q.loss(10), Loss::Units(3));
        assert_eq!(q.loss(1_000), Loss::Nothing, "the window is over");
    }
}
