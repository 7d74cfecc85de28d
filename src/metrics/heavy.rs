//! The opt-in "heaviest keys" gauge: which API keys made the most checks
//! over the last window, reported as `quotad_heavy_key_checks{key, name}`
//! for the top `metrics.heavy_keys` (default 0: off, and the check path
//! does nothing).
//!
//! Keys are counted by keyed hash in a few shards, each a map that keeps
//! only its heaviest entries: when a shard holds more than twice its
//! share, it keeps the heaviest half and forgets the rest. A flood of
//! distinct keys therefore costs bounded memory (8 shards of at most
//! `2·max(4K, 64)` keys). Counts are exact for a key never pushed out;
//! a key that is pushed out starts again from 1, so one that arrives in a
//! window already crowded by a flood may be under-counted, or missed,
//! until it outweighs what is kept. At the end of each window the shards
//! are merged, the top K are kept for the gauge, and counting starts
//! over. Each counted check takes its shard's lock (K > 0 only) and hashes
//! the key once more.
//!
//! Labels: `key`, the 16-hex keyed hash `quotactl` shows, and `name`, the
//! operator's name for it from `metrics.key_names` (empty otherwise). A
//! raw key never appears.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nohash_hasher::BuildNoHashHasher;

use super::exposition::{escape, header, names};
use crate::core::hash::hex16;

/// Shards (a power of two): checks of different keys rarely share a lock.
const SHARDS: usize = 8;

/// Each shard keeps at least this many keys (more for a larger K).
const MIN_PER_SHARD: usize = 64;

type Counts = HashMap<u64, u64, BuildNoHashHasher<u64>>;

/// The tracker. Cheap when off: one relaxed load per check.
#[derive(Debug, Default)]
pub struct Heavy {
    k: AtomicUsize,
    shards: [Mutex<Counts>; SHARDS],
    state: Mutex<Reported>,
}

#[derive(Debug, Default)]
struct Reported {
    /// The top K of the last complete window, heaviest first.
    top: Vec<(u64, u64)>,
    names: BTreeMap<u64, String>,
}

impl Heavy {
    /// Reports the top `k` keys (0: off), naming those in `names`. Takes
    /// effect for the next check (a reload applies it at once).
    pub fn configure(&self, k: usize, names: BTreeMap<u64, String>) {
        self.k.store(k, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.names = names;
        if k == 0 {
            state.top.clear();
            for s in &self.shards {
                s.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
        } else {
            state.top.truncate(k);
        }
    }

    /// Whether keys are being counted.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.k.load(Ordering::Relaxed) > 0
    }

    /// Counts one check of the key with keyed hash `key_hash`.
    #[inline]
    pub fn note(&self, key_hash: u64) {
        let k = self.k.load(Ordering::Relaxed);
        if k == 0 {
            return;
        }
        let keep = (k * 4).max(MIN_PER_SHARD);
        // The hash's top bits pick the shard; the map uses its low bits.
        let Some(shard) = self.shards.get((key_hash >> 59) as usize % SHARDS) else {
            return;
        };
        let mut counts = shard.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(key_hash).or_insert(0) += 1;
        if counts.len() > 2 * keep {
            prune(&mut counts, keep);
        }
    }

    /// Ends the window: its top K become the gauge's values, and counting
    /// starts over.
    pub fn roll(&self) {
        let k = self.k.load(Ordering::Relaxed);
        let mut all: Vec<(u64, u64)> = Vec::new();
        for s in &self.shards {
            let counts = std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()));
            all.extend(counts);
        }
        // Heaviest first; equal counts by hash, so the answer is stable.
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        self.state.lock().unwrap_or_else(|e| e.into_inner()).top = all;
    }

    /// The top of the last complete window, heaviest first.
    pub fn top(&self) -> Vec<(u64, u64)> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .top
            .clone()
    }

    /// Appends the gauge to `out` in the text format (nothing when off).
    pub(super) fn render(&self, out: &mut String) {
        if !self.enabled() {
            return;
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        header(
            out,
            names::HEAVY,
            "gauge",
            "Checks of the heaviest keys over the last complete metrics.heavy_window, by keyed hash (top metrics.heavy_keys).",
        );
        for (hash, checks) in &state.top {
            out.push_str(names::HEAVY);
            out.push_str("{key=\"");
            out.push_str(&hex16(*hash));
            out.push_str("\",name=\"");
            escape(state.names.get(hash).map_or("", String::as_str), out);
            out.push_str("\"} ");
            out.push_str(&checks.to_string());
            out.push('\n');
        }
    }
}

/// Keeps the `keep` heaviest entries of `counts` (of equals, the ones
/// seen first in the map's order: arbitrary, as any of them may be next).
fn prune(counts: &mut Counts, keep: usize) {
    let mut all: Vec<(u64, u64)> = counts.drain().collect();
    all.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
    all.truncate(keep);
    counts.extend(all);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_counts_nothing_and_renders_nothing() {
        let h = Heavy::default();
        h.note(1);
        h.roll();
        assert!(h.top().is_empty());
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn reports_the_top_k_of_the_last_window_exactly() {
        let h = Heavy::default();
        h.configure(2, BTreeMap::from([(7, "acme".to_owned())]));
        for (key, n) in [(7u64, 30), (8, 20), (9, 10)] {
            for _ in 0..n {
                h.note(key);
            }
        }
        assert!(h.top().is_empty(), "nothing before the window ends");
        h.roll();
        assert_eq!(h.top(), vec![(7, 30), (8, 20)]);
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("quotad_heavy_key_checks{key=\"0000000000000007\",name=\"acme\"} 30\n"),
            "{out}"
        );
        assert!(
            out.contains("quotad_heavy_key_checks{key=\"0000000000000008\",name=\"\"} 20\n"),
            "{out}"
        );
        // The next window starts from zero.
        h.roll();
        assert!(h.top().is_empty());
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded_and_keeps_the_heavy_one() {
        let h = Heavy::default();
        h.configure(1, BTreeMap::new());
        let heavy = 0xdead_beef_u64 << 20;
        for i in 0..200_000u64 {
            h.note(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            if i % 100 == 0 {
                h.note(heavy);
            }
        }
        let held: usize = h
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        assert!(
            held <= SHARDS * 2 * MIN_PER_SHARD + SHARDS,
            "{held} keys held"
        );
        h.roll();
        assert_eq!(h.top().first().map(|t| t.0), Some(heavy));
    }
}
