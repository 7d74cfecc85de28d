//! Cells held per source of keys, and each source's budget: its fair
//! share of the store, `max_cells / sources holding cells`.
//!
//! A source may grow past its share while there is room. Once the store
//! is full, a source at or over its share can only make room among its
//! own cells; one under its share may also take cells of sources over
//! theirs. So a flood through one domain, however large, cannot take a
//! cell from a domain (or the plans) within its share.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::core::source::Source;

/// Per-source counts. See the module docs.
#[derive(Debug)]
pub struct Budgets {
    held: Box<[AtomicUsize]>,
    /// Sources holding at least one cell.
    active: AtomicUsize,
    cap: usize,
}

impl Budgets {
    /// Budgets for a store of `cap` cells.
    pub fn new(cap: usize) -> Self {
        Self {
            held: (0..Source::MAX).map(|_| AtomicUsize::new(0)).collect(),
            active: AtomicUsize::new(0),
            cap,
        }
    }

    /// A cell of `source` was made.
    #[inline]
    pub fn add(&self, source: Source) {
        if let Some(i) = source.index()
            && self.held[i].fetch_add(1, Ordering::AcqRel) == 0
        {
            self.active.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// `n` cells of `source` went.
    #[inline]
    pub fn remove(&self, source: Source, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(i) = source.index()
            && self.held[i].fetch_sub(n, Ordering::AcqRel) == n
        {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Cells `source` holds.
    pub fn held(&self, source: Source) -> usize {
        source
            .index()
            .map_or(0, |i| self.held[i].load(Ordering::Acquire))
    }

    /// The share of each source when `sources` hold cells.
    fn share(&self, sources: usize) -> usize {
        self.cap / sources.max(1)
    }

    /// Whether `source` is under its share, counting itself among the
    /// sources holding cells even if it holds none yet.
    pub fn under_share(&self, source: Source) -> bool {
        let held = self.held(source);
        let active = self.active.load(Ordering::Acquire) + usize::from(held == 0);
        held < self.share(active)
    }

    /// Whether `source` holds more than its share.
    pub fn over_share(&self, source: Source) -> bool {
        self.held(source) > self.share(self.active.load(Ordering::Acquire))
    }

    /// Every source holding cells, with how many.
    pub fn holders(&self) -> Vec<(Source, usize)> {
        self.held
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then_some((Source::from_index(i)?, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_sources_holding_cells() {
        let b = Budgets::new(100);
        let (a, d) = (Source::from_bits(1), Source::from_bits(2));
        for _ in 0..90 {
            b.add(a);
        }
        // Alone, `a` may hold everything; a newcomer halves its share.
        assert!(!b.over_share(a));
        assert!(b.under_share(d));
        for _ in 0..10 {
            b.add(d);
        }
        assert!(b.over_share(a), "90 of 100 with two sources");
        assert!(b.under_share(d));
        assert!(!b.under_share(a));
        b.remove(a, 90);
        assert_eq!(b.holders(), vec![(d, 10)]);
        b.add(Source::OVERFLOW);
        assert_eq!(b.held(Source::OVERFLOW), 0, "overflow cells count nowhere");
    }
}
