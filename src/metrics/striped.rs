//! Counters and a latency histogram for the check path, striped across
//! cache lines so that threads counting the same series at once do not
//! fight over one line: each thread adds to its own stripe with one
//! relaxed atomic add, and a scrape sums the stripes.
//!
//! The exporter's own handles cost two to four shared atomic operations a
//! sample (and a histogram sample is queued until upkeep); at millions of
//! checks a second that is the largest part of what metrics cost, so the
//! check path counts here and `/metrics` reads the sums: counters through
//! the exporter (`absolute`), the histogram rendered in the text format
//! directly.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per series: as many as the threads a small machine runs checks
/// on, so most threads have one to themselves (more threads share).
const STRIPES: usize = 8;

/// One cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

/// The stripe this thread adds to.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    SLOT.with(|s| *s)
}

/// A counter.
#[derive(Debug, Default)]
pub struct Striped([Line; STRIPES]);

impl Striped {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        if let Some(line) = self.0.get(stripe()) {
            line.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The total so far.
    pub fn sum(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |a, l| a.wrapping_add(l.0.load(Ordering::Relaxed)))
    }
}

/// Upper bounds of the latency buckets, in nanoseconds: 10 µs to 1 s.
pub const LATENCY_BOUNDS_NS: [u64; 15] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

const BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// One thread's share of a histogram: a count per bucket (the last is
/// `+Inf`) and the sum, on lines of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Share {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

/// A histogram of durations with [`LATENCY_BOUNDS_NS`] buckets.
#[derive(Debug, Default)]
pub struct Latency([Share; STRIPES]);

impl Latency {
    /// Records one duration.
    #[inline]
    pub fn record(&self, ns: u64) {
        let i = LATENCY_BOUNDS_NS.partition_point(|b| *b < ns);
        if let Some(share) = self.0.get(stripe())
            && let Some(bucket) = share.buckets.get(i)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
            share.sum_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Per bucket (not cumulative) counts, and the sum in nanoseconds.
    fn totals(&self) -> ([u64; BUCKETS], u64) {
        let mut counts = [0u64; BUCKETS];
        let mut sum = 0u64;
        for share in &self.0 {
            for (c, b) in counts.iter_mut().zip(&share.buckets) {
                *c = c.wrapping_add(b.load(Ordering::Relaxed));
            }
            sum = sum.wrapping_add(share.sum_ns.load(Ordering::Relaxed));
        }
        (counts, sum)
    }

    /// Appends the series of `name{labels}` (`_bucket`, `_sum`, `_count`)
    /// in the text format; `labels` is `key="value"` pairs, already
    /// escaped, without braces.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let (counts, sum_ns) = self.totals();
        let mut cumulative = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            let le = LATENCY_BOUNDS_NS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| (*b as f64 / 1e9).to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let c = Striped::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        c.add(1);
                    }
                });
            }
        });
        assert_eq!(c.sum(), 8_000);
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_its_sum_and_count() {
        let h = Latency::default();
        for ns in [5_000, 10_000, 10_001, 2_000_000_000] {
            h.record(ns);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "api=\"native\"");
        assert!(
            out.contains("x_seconds_bucket{api=\"native\",le=\"0.00001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{api=\"native\",le=\"0.000025\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{api=\"native\",le=\"1\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{api=\"native\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{api=\"native\"} 4\n"), "{out}");
        assert!(
            out.contains("x_seconds_sum{api=\"native\"} 2.000025001\n"),
            "{out}"
        );
    }
}
