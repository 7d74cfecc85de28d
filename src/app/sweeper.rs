//! The sweeper: every `store.sweep_interval`, drops overrides that ended
//! and idle cells (counted in `quotad_evicted_cells_total`), and logs what
//! the store did while full since the last sweep.

use std::sync::Arc;
use std::time::Duration;

use crate::control::Control;
use crate::metrics::Metrics;
use crate::metrics::names;
use crate::shutdown::Shutdown;
use crate::store::LocalStore;
use crate::store::admission::DisplacedCounts;

/// Drops idle buckets and ended overrides every `every` until shutdown.
pub async fn run(
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut shutdown: Shutdown,
) {
    let evicted =
        ["bucket", "quota"].map(|kind| metrics.counter(names::EVICTED, &[("kind", kind)]));
    let engine = Arc::clone(control.engine());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut full = FullStore::of(engine.store());
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {
                let ended = control.expire(engine.now());
                if ended > 0 {
                    tracing::info!(overrides = ended, "overrides ended");
                }
                let l = Arc::clone(&engine);
                // Sweeping a million cells takes milliseconds: keep it off
                // the request threads' executor slots.
                match tokio::task::spawn_blocking(move || l.sweep()).await {
                    Ok(r) => {
                        evicted[0].increment(r.buckets as u64);
                        evicted[1].increment(r.quotas as u64);
                        tracing::debug!(
                        buckets = r.buckets,
                        quotas = r.quotas,
                        tracked = engine.store().tracked(),
                        "swept idle cells"
                    )
                    }
                    Err(e) => tracing::error!(error = %e, "sweep failed"),
                }
                full = full.report(engine.store());
            }
        }
    }
}

/// What the store did while full, as of the last sweep: logged once per
/// sweep interval in which anything happened, not per check.
#[derive(Clone, Copy)]
struct FullStore {
    displaced: DisplacedCounts,
    overflow_checks: u64,
}

impl FullStore {
    fn of(store: &LocalStore) -> Self {
        Self {
            displaced: store.displaced(),
            overflow_checks: store.overflow_checks(),
        }
    }

    /// Logs what changed since `self`; returns the new state.
    fn report(self, store: &LocalStore) -> Self {
        let now = Self::of(store);
        let (a, b) = (self.displaced, now.displaced);
        let displaced = (b.buckets + b.counters) - (a.buckets + a.counters);
        let overflow = now.overflow_checks - self.overflow_checks;
        if displaced > 0 || overflow > 0 {
            tracing::warn!(
                displaced_cells = displaced,
                units_forgotten = b.units - a.units,
                bucket_debt_forgiven_s = (b.debt - a.debt) as f64 / 1e9,
                checks_judged_by_overflow = overflow,
                tracked = store.tracked(),
                max_tracked_keys = store.limits().max_cells,
                "store full: cells cheap to forget were displaced for new keys (a displaced counter's key may spend its units again; with Redis they come back), and keys that could not win a cell shared the overflow cells"
            );
        }
        now
    }
}
