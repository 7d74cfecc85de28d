//! Hits per descriptor limit of the domains read from envoyproxy/ratelimit
//! files: its per-limit stats (`total_hits`, `over_limit`, `near_limit`,
//! `within_limit`, `shadow_mode`) as
//! `quotad_rls_descriptor_hits_total{domain, descriptor, result}`.
//!
//! `descriptor` is envoyproxy/ratelimit's stats key without the domain
//! (`key1_value1.subkey1`; with `detailed_metric` or `value_to_metric`,
//! request values go in it: `route_draw.http_method_GET`), so these
//! series can take values from requests. They are bounded per domain: the
//! first [`MAX_DESCRIPTORS`] names seen get series of their own, later
//! ones (and names longer than [`MAX_NAME_BYTES`]) share
//! `descriptor="(other)"`. Counts are in hits (a descriptor's
//! cost), not calls, as envoyproxy/ratelimit counts them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusRecorder;

use super::{Synced, key};

/// Distinct `descriptor` label values per domain; beyond, `(other)`.
pub const MAX_DESCRIPTORS: usize = 1000;

/// The longest `descriptor` label value; a longer name counts under
/// `(other)`.
pub const MAX_NAME_BYTES: usize = 256;

/// The metric's name.
pub const DESCRIPTOR_HITS: &str = "quotad_rls_descriptor_hits_total";

/// The `result` label's values, in [`Hits`]' order.
const RESULTS: [&str; 5] = [
    "total_hits",
    "over_limit",
    "near_limit",
    "within_limit",
    "shadow_mode",
];

/// What one descriptor check adds to its series, in hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    /// Every hit checked.
    pub total: u64,
    /// Hits of a descriptor answered over its limit (shadow mode or not).
    pub over: u64,
    /// Hits past the near-limit share of the limit
    /// (`envoy.near_limit_ratio`) that were still within it.
    pub near: u64,
    /// Hits within the limit.
    pub within: u64,
    /// Hits over the limit that a shadow-mode rule answered OK.
    pub shadow: u64,
}

impl Hits {
    fn values(self) -> [u64; 5] {
        [self.total, self.over, self.near, self.within, self.shadow]
    }
}

type Series = Arc<[Synced; 5]>;

/// One domain's series.
struct Domain {
    named: HashMap<String, Series>,
    other: Series,
}

/// Every domain's series.
#[derive(Default)]
pub(super) struct Descriptors {
    map: ArcSwap<HashMap<String, Arc<Domain>>>,
    grow: Mutex<()>,
}

fn series(rec: &PrometheusRecorder, domain: &str, name: &str) -> Series {
    Arc::new(RESULTS.map(|r| {
        let labels = [("domain", domain), ("descriptor", name), ("result", r)];
        Synced::new(rec, &key(DESCRIPTOR_HITS, &labels))
    }))
}

fn add(s: &Series, hits: Hits) {
    for (c, n) in s.iter().zip(hits.values()) {
        if n > 0 {
            c.striped.add(n);
        }
    }
}

impl Descriptors {
    /// Adds `hits` to `domain`'s series `name`.
    #[inline]
    pub(super) fn count(&self, rec: &PrometheusRecorder, domain: &str, name: &str, hits: Hits) {
        if let Some(d) = self.map.load().get(domain) {
            match d.named.get(name) {
                Some(s) => return add(s, hits),
                // Full: no lock, no copy, whatever requests send.
                None if d.named.len() >= MAX_DESCRIPTORS || name.len() > MAX_NAME_BYTES => {
                    return add(&d.other, hits);
                }
                None => {}
            }
        }
        self.grow(rec, domain, name, hits);
    }

    /// The slow path: a name (or domain) seen for the first time gets
    /// its series (all five, so each starts at 0).
    #[cold]
    fn grow(&self, rec: &PrometheusRecorder, domain: &str, name: &str, hits: Hits) {
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let map = self.map.load_full();
        let (mut named, other) = match map.get(domain) {
            Some(d) => {
                if let Some(s) = d.named.get(name) {
                    return add(s, hits);
                }
                if d.named.len() >= MAX_DESCRIPTORS || name.len() > MAX_NAME_BYTES {
                    return add(&d.other, hits);
                }
                (d.named.clone(), Arc::clone(&d.other))
            }
            None => (HashMap::new(), series(rec, domain, "(other)")),
        };
        if name.len() > MAX_NAME_BYTES {
            add(&other, hits);
        } else {
            let s = series(rec, domain, name);
            add(&s, hits);
            named.insert(name.to_owned(), s);
        }
        let mut next = HashMap::clone(&map);
        next.insert(domain.to_owned(), Arc::new(Domain { named, other }));
        self.map.store(Arc::new(next));
    }

    /// Sums the stripes into the exporter's counters.
    pub(super) fn sync(&self) {
        for d in self.map.load().values() {
            d.named
                .values()
                .chain(std::iter::once(&d.other))
                .flat_map(|s| s.iter())
                .for_each(Synced::sync);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn one() -> Hits {
        Hits {
            total: 1,
            within: 1,
            ..Hits::default()
        }
    }

    #[test]
    fn each_domain_names_at_most_max_descriptors_then_other() {
        let m = Metrics::new();
        for i in 0..MAX_DESCRIPTORS + 5 {
            m.rls_hits("d", &format!("k_{i}"), one());
        }
        m.rls_hits("d", "k_0", one());
        m.rls_hits("d", &"x".repeat(MAX_NAME_BYTES + 1), one());
        m.rls_hits("e", "k_0", one());
        let text = m.render();
        let series = |d: &str, name: &str| {
            format!(
                "quotad_rls_descriptor_hits_total{{domain=\"{d}\",descriptor=\"{name}\",result=\"total_hits\"}}"
            )
        };
        let value = |s: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(s)?.trim().parse::<f64>().ok())
        };
        assert_eq!(value(&series("d", "k_0")), Some(2.0));
        assert_eq!(
            value(&series("d", &format!("k_{}", MAX_DESCRIPTORS - 1))),
            Some(1.0)
        );
        assert_eq!(value(&series("d", &format!("k_{MAX_DESCRIPTORS}"))), None);
        // 5 past the cap and one too long.
        assert_eq!(value(&series("d", "(other)")), Some(6.0));
        assert_eq!(value(&series("e", "k_0")), Some(1.0));
        let named = text
            .lines()
            .filter(|l| {
                l.starts_with("quotad_rls_descriptor_hits_total{domain=\"d\"")
                    && l.contains("total_hits")
            })
            .count();
        assert_eq!(named, MAX_DESCRIPTORS + 1, "the named series and (other)");
    }
}
