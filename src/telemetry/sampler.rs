//! Metrics whose counts live elsewhere, and the metrics' upkeep: the
//! [`sampler`] sets, before each scrape, the gauges and counters read from
//! the store, the config in effect, Redis sync and readiness; [`upkeep`]
//! folds histogram samples and ends heaviest-keys windows until shutdown.
//! What they read is handed in by the app, so telemetry imports neither
//! the control plane nor sync.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::core::Nanos;
use crate::metrics::{EngineState, MAX_NAMES, Metrics, RlqsSample, Sampler, names};
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;
use crate::store::LocalStore;
use crate::store::leases::Leases;

/// The config in effect and its reloads, as the sampler reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigState {
    /// Reloads that took effect (or found nothing changed).
    pub reloads_ok: u64,
    /// Reloads refused.
    pub reloads_failed: u64,
    /// Whether the latest reload was refused.
    pub last_failed: bool,
    /// The config version in effect.
    pub version: u64,
    /// When it was loaded (Unix ns).
    pub loaded_at: Nanos,
}

/// Where the sampler reads what it reports.
pub struct Sources {
    /// The engine, with its store and table.
    pub engine: Arc<dyn EngineState>,
    /// The config in effect and its reloads.
    pub config: Box<dyn Fn() -> ConfigState + Send + Sync>,
    /// Whether the last flush reached Redis, when Redis is configured.
    pub redis_up: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// The readiness latch.
    pub ready: Readiness,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("redis", &self.redis_up.is_some())
            .finish_non_exhaustive()
    }
}

/// Sets, before each scrape, the gauges and counters whose counts live
/// elsewhere: the store, reloads, overrides, Redis sync, readiness.
pub fn sampler(sources: Sources) -> Sampler {
    let seen = Mutex::new((Vec::new(), Vec::new(), Vec::new()));
    Box::new(move |m: &Metrics| {
        let store = sources.engine.store();
        m.gauge(names::TRACKED, &[]).set(store.tracked() as f64);
        m.gauge(names::TRACKED_LIMIT, &[])
            .set(store.limits().max_cells as f64);
        m.gauge(names::STORE_FULL, &[])
            .set(f64::from(u8::from(store.is_full())));
        m.counter(names::OVERFLOW, &[]).absolute(store.overflowed());
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        sample_store(m, store, &mut seen.0);
        let now = sources.engine.now();
        sample_leases(m, (sources.engine.leases(), now), &mut seen.1);
        sample_rlqs(m, &sources.engine.rlqs(), &mut seen.2);
        let c = (sources.config)();
        m.counter(names::RELOADS, &[("result", "success")])
            .absolute(c.reloads_ok);
        m.counter(names::RELOADS, &[("result", "failure")])
            .absolute(c.reloads_failed);
        m.gauge(names::CONFIG_LAST_OK, &[])
            .set(f64::from(u8::from(!c.last_failed)));
        m.gauge(names::CONFIG_VERSION, &[]).set(c.version as f64);
        m.gauge(names::CONFIG_LOADED, &[])
            .set(c.loaded_at as f64 / 1e9);
        m.gauge(names::OVERRIDES, &[])
            .set(sources.engine.overrides() as f64);
        m.gauge(names::READY, &[])
            .set(f64::from(u8::from(sources.ready.is_ready())));
        if let Some(redis_up) = &sources.redis_up {
            m.gauge(names::REDIS_UP, &[])
                .set(f64::from(u8::from(redis_up())));
            if let Some(j) = store.journal() {
                m.gauge(names::REDIS_PENDING, &[])
                    .set((j.len() + j.aside()) as f64);
                m.counter(names::REDIS_DROPPED, &[]).absolute(j.dropped());
            }
        }
    })
}

/// The store's admission counts, and the cells of each source holding
/// any (the largest [`MAX_NAMES`], the rest as `(other)`); a source seen
/// at the last scrape and gone now reads 0.
fn sample_store(m: &Metrics, store: &LocalStore, seen: &mut Vec<String>) {
    let d = store.displaced();
    m.counter(names::OVERFLOW_CHECKS, &[])
        .absolute(store.overflow_checks());
    m.counter(names::DISPLACED, &[("kind", "bucket")])
        .absolute(d.buckets);
    m.counter(names::DISPLACED, &[("kind", "counter")])
        .absolute(d.counters);
    m.counter(names::DISPLACED_UNITS, &[]).absolute(d.units);
    m.counter(names::DISPLACED_DEBT, &[])
        .absolute(d.debt / 1_000_000_000);
    m.counter(names::ADMISSIONS_REFUSED, &[])
        .absolute(d.refused);
    let mut holders = store.budgets().holders();
    holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.1));
    let keep = MAX_NAMES - 1;
    let other: usize = holders.iter().skip(keep).map(|(_, n)| n).sum();
    let mut now: Vec<(String, usize)> = holders
        .iter()
        .take(keep)
        .map(|(s, n)| (s.name(), *n))
        .collect();
    if other > 0 {
        now.push(("(other)".to_owned(), other));
    }
    set_by_label(m, (names::SOURCE_CELLS, "source"), now, seen);
}

/// Sets gauge `name` with label `label` to each value of `now`; a label
/// value set at the last scrape (`seen`) and absent now reads 0.
fn set_by_label(
    m: &Metrics,
    (name, label): (&'static str, &'static str),
    now: Vec<(String, usize)>,
    seen: &mut Vec<String>,
) {
    for value in seen.iter() {
        if !now.iter().any(|(v, _)| v == value) {
            m.gauge(name, &[(label, value)]).set(0.0);
        }
    }
    for (value, n) in &now {
        m.gauge(name, &[(label, value)]).set(*n as f64);
    }
    *seen = now.into_iter().map(|(v, _)| v).collect();
}

/// The leases this node granted and holds, by plan (a plan seen at the
/// last scrape and without leases now reads 0), the cap, the expiries.
fn sample_leases(m: &Metrics, (leases, at): (&Leases, Nanos), seen: &mut Vec<String>) {
    let now: Vec<(String, usize)> = leases
        .by_plan(at)
        .into_iter()
        .map(|(plan, n)| (plan.to_string(), n))
        .collect();
    set_by_label(m, (names::LEASES_ACTIVE, "plan"), now, seen);
    m.gauge(names::LEASES_LIMIT, &[]).set(leases.max() as f64);
    m.counter(names::LEASE_EXPIRIES, &[])
        .absolute(leases.expired());
}

/// RLQS streams, buckets and pairs, and each rule's demand and held
/// rate (a rule seen at the last scrape and without reporters now reads
/// 0).
fn sample_rlqs(m: &Metrics, r: &RlqsSample, seen: &mut Vec<(String, String)>) {
    m.gauge(names::RLQS_STREAMS, &[]).set(r.streams as f64);
    m.gauge(names::RLQS_BUCKETS, &[]).set(r.buckets as f64);
    m.gauge(names::RLQS_TRACKED, &[]).set(r.tracked as f64);
    for (domain, rule) in seen.iter() {
        if !r.rules.iter().any(|(d, i, ..)| d == domain && i == rule) {
            let labels = [("domain", domain.as_str()), ("rule", rule.as_str())];
            m.gauge(names::RLQS_DEMAND, &labels).set(0.0);
            m.gauge(names::RLQS_ASSIGNED, &labels).set(0.0);
        }
    }
    for (domain, rule, demand, assigned) in &r.rules {
        let labels = [("domain", domain.as_str()), ("rule", rule.as_str())];
        m.gauge(names::RLQS_DEMAND, &labels).set(*demand);
        m.gauge(names::RLQS_ASSIGNED, &labels).set(*assigned);
    }
    *seen = r
        .rules
        .iter()
        .map(|(d, i, ..)| (d.clone(), i.clone()))
        .collect();
}

/// How often histogram samples are folded into buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// Folds histogram samples into their buckets every 5 s (memory
/// stays flat without scrapes) and ends each heaviest-keys window (its
/// length, `window`, read from the config in effect each time), until
/// `shutdown`.
pub async fn upkeep(
    metrics: Arc<Metrics>,
    window: impl Fn() -> Duration + Send,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut roll_at = tokio::time::Instant::now() + window();
    loop {
        let roll = tokio::time::sleep_until(roll_at);
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => metrics.upkeep(),
            () = roll => {
                metrics.heavy().roll();
                roll_at = tokio::time::Instant::now() + window();
            }
        }
    }
}
