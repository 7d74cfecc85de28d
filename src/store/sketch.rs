//! How often keys the store does not track have asked lately: a
//! count-min sketch of 4-bit counters that halves itself as it fills
//! (TinyLFU's frequency sketch). The admission policy asks it how often a
//! new key has asked, so a key that keeps coming back can win a cell from
//! one charged fewer times, while a one-shot flood key cannot.
//!
//! Sized at 16 counters per tracked cell and halved every 8 tracked cells'
//! worth of increments, a key never seen before reads 1 with probability
//! above 99.7 % however large the flood.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::core::hash::mix;

/// Counters per word.
const NIBBLES: u32 = 16;

/// The sketch. See the module docs.
#[derive(Debug)]
pub struct Sketch {
    words: Box<[AtomicU64]>,
    mask: usize,
    /// Increments since the last halving.
    added: AtomicUsize,
    /// Increments between halvings.
    period: usize,
}

impl Sketch {
    /// A sketch for a store of `cells` cells.
    pub fn new(cells: usize) -> Self {
        let words = cells.clamp(64, 1 << 26).next_power_of_two();
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            mask: words - 1,
            added: AtomicUsize::new(0),
            period: (words / 2).max(32),
        }
    }

    /// Counts one more ask of `key` (a keyed hash) and says how many the
    /// sketch has seen lately, this one included (1..=15).
    pub fn touch(&self, key: u64) -> u8 {
        let mut least = u8::MAX;
        for row in 0..4u64 {
            let h = mix(key, row);
            let word = &self.words[(h as usize) & self.mask];
            let shift = ((h >> 60) as u32 % NIBBLES) * 4;
            let mut seen = 0;
            // Saturating 4-bit add; a lost race only undercounts.
            let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                seen = ((w >> shift) & 0xf) as u8;
                (seen < 15).then(|| w + (1 << shift))
            });
            least = least.min(seen.saturating_add(1).min(15));
        }
        if self.added.fetch_add(1, Ordering::Relaxed) + 1 >= self.period {
            self.halve();
        }
        least
    }

    /// Halves every counter (the one caller that crossed the period does
    /// it; increments racing with it may be lost, which only undercounts).
    fn halve(&self) {
        self.added.store(0, Ordering::Relaxed);
        for w in self.words.iter() {
            let v = w.load(Ordering::Relaxed);
            w.store((v >> 1) & 0x7777_7777_7777_7777, Ordering::Relaxed);
        }
    }

    /// Bytes the sketch holds.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returning_key_counts_up_and_a_flood_does_not_inflate_new_keys() {
        let s = Sketch::new(1_000);
        let legit = mix(42, 42);
        assert_eq!(s.touch(legit), 1);
        assert_eq!(s.touch(legit), 2);
        assert_eq!(s.touch(legit), 3);
        // A flood of 100 000 one-shot keys (200 halvings): each reads 1
        // but for about 0.25 % that meet four busy counters (expected
        // ~250 read 2; reading 3 takes P < 1e-6 per key). The keys are
        // fixed, so this is not chance: it pins the sizing.
        let (mut two, mut more) = (0, 0);
        for k in 0..100_000u64 {
            match s.touch(mix(k, 7)) {
                1 => {}
                2 => two += 1,
                _ => more += 1,
            }
        }
        assert!(two < 1_000, "{two} of 100000 read 2");
        assert!(more <= 2, "{more} of 100000 read 3 or more");
        // The sketch halved meanwhile: the returning key is remembered
        // only as long as it keeps coming.
        assert!(s.touch(legit) <= 3);
        assert_eq!(s.bytes(), 1_024 * 8);
    }
}
