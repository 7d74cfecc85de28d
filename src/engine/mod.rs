//! The engine: the one entry every front door calls ([`Engine::decide`]),
//! and the state it decides with: the [`Rules`] in effect (the limits
//! [`Table`] and the config it was built from, swapped together as one),
//! this node's [`LocalStore`], the clock, the key hasher, the metrics and,
//! with Redis, strict mode.
//!
//! A front door turns its wire message into [`Item`]s (given the settings
//! in effect), the engine resolves each to limits (a key's plan, an
//! Envoy descriptor's rule), decides against the store, counts metrics
//! and heavy keys once, and hands the door an [`Answer`] to render.
//! Nothing here awaits anything but strict mode's Redis round trip
//! ([`wait`]).
//!
//! | file | owns |
//! | --- | --- |
//! | `entry.rs` | [`Engine::decide`]: admit, resolve, decide, count, render |
//! | `ask.rs` | what a door asks ([`Call`], [`Item`]) and what it gets ([`Answer`]) |
//! | `view.rs` | [`View`]: one call's consistent rules, the plan decision |
//! | `cells.rs` | one limit applied to one key's cell: charge, refund, journal |
//! | `strict.rs`, `wait.rs` | strict mode: the job for Redis, its answer, fail modes |
//! | `leases.rs` | concurrency limits: acquire, renew, release; their Redis client |
//! | `rlqs/` | Envoy RLQS: global buckets, their reporters, fair shares |

mod ask;
mod cells;
mod entry;
pub mod leases;
pub mod rlqs;
pub mod strict;
mod view;
pub mod wait;

#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

pub use ask::{Admitted, Answer, Basis, Call, Item, Items, Kind, Mode, NoPlans, Outcome, Pairs};
pub use view::{Usage, View};
pub use wait::Strict;

use crate::config::Config;
use crate::core::clock::{Clock, Nanos};
use crate::core::decision::{Decision, Request};
use crate::core::gcra::Verdict;
use crate::core::hash::KeyHasher;
use crate::core::source::Source as KeySource;
use crate::limits::{Limit, Table};
use crate::metrics::Metrics;
use crate::store::journal::CellKind;
use crate::store::leases::Leases;
use crate::store::{Landed, LocalStore, StoreLimits, SweepReport};

/// `store.max_leases`'s default.
pub const DEFAULT_MAX_LEASES: usize = 1_000_000;

/// What the engine decides with, swapped as one: a reload changes the
/// table and the settings front doors validate against in one step, so
/// no call sees one without the other.
#[derive(Debug)]
pub struct Rules {
    /// Plans, overrides and Envoy descriptor trees.
    pub table: Table,
    /// The config in effect (caps on requests, Envoy settings, response
    /// headers, ...).
    pub config: Arc<Config>,
}

/// See the module docs.
///
/// ```
/// use std::num::NonZeroU64;
/// use std::sync::Arc;
/// use quotad::core::{KeyHasher, ManualClock, Request};
/// use quotad::core::clock::NANOS_PER_SEC;
/// use quotad::engine::Engine;
/// use quotad::limits::{Limit, LimitKind, Plan, Rate, Table};
/// use quotad::store::StoreLimits;
///
/// // 10 per second, bursting to 20.
/// let rate = Rate::new(NonZeroU64::new(10).unwrap(), NANOS_PER_SEC, NonZeroU64::new(20).unwrap()).unwrap();
/// let plan = Plan { name: "free".into(), limits: vec![Limit::new("free", "per-second", LimitKind::Rate(rate))], concurrency: None };
/// let hasher = KeyHasher::random();
/// let table = Table::new(vec![plan], "free", [], &hasher).unwrap();
/// let clock = Arc::new(ManualClock::new(1_700_000_000 * NANOS_PER_SEC));
/// let engine = Engine::new(table, hasher, StoreLimits::default(), clock.clone());
///
/// let d = engine.check(&Request::new("alice", 20));
/// assert!(d.allowed && d.remaining == 0);
/// let d = engine.check(&Request::new("alice", 1));
/// assert!(!d.allowed);
/// assert_eq!(d.retry_after, Some(100_000_000)); // one token every 100 ms
/// clock.advance(100_000_000);
/// assert!(engine.check(&Request::new("alice", 1)).allowed);
/// ```
pub struct Engine {
    rules: ArcSwap<Rules>,
    store: LocalStore,
    clock: Arc<dyn Clock>,
    hasher: KeyHasher,
    metrics: Arc<Metrics>,
    /// Set once Redis sync starts, when the config has a `redis` section.
    strict: OnceLock<Strict>,
    /// Concurrency leases this node granted (all of them without Redis).
    leases: Leases,
    /// Set once Redis sync starts: leases then live in Redis.
    lease_client: OnceLock<leases::LeaseClient>,
    /// Envoy RLQS: buckets, their reporters and shares.
    rlqs: rlqs::Hub,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("plans", &self.rules.load().table.plans().len())
            .field("tracked", &self.store.tracked())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `table` under the embedded default settings
    /// ([`crate::config::EMBEDDED_DEFAULT`]'s caps, Envoy domains and
    /// headers) until [`Engine::with_config`] or [`Engine::install`] says
    /// otherwise. `hasher` must be the one the table's static keys were
    /// hashed with.
    pub fn new(
        table: Table,
        hasher: KeyHasher,
        limits: StoreLimits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            rules: ArcSwap::from_pointee(Rules {
                table,
                config: embedded_default(),
            }),
            store: LocalStore::new(limits),
            clock,
            hasher,
            metrics: Arc::new(Metrics::new()),
            strict: OnceLock::new(),
            leases: Leases::new(DEFAULT_MAX_LEASES),
            lease_client: OnceLock::new(),
            rlqs: rlqs::Hub::default(),
        }
    }

    /// The engine holding at most `max` leases (`store.max_leases`).
    /// Call before sharing the engine.
    pub fn with_max_leases(mut self, max: usize) -> Self {
        self.leases = Leases::new(max);
        self
    }

    /// This node's lease table.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The engine deciding under `config` (the one its table was built
    /// from). Call before sharing the engine.
    pub fn with_config(self, config: Arc<Config>) -> Self {
        let table = self.rules.load().table.clone();
        self.rules.store(Arc::new(Rules { table, config }));
        self
    }

    /// The engine counting in `metrics`. Call before sharing the engine.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Journals every charge for a Redis sync task (see
    /// [`crate::sync`]). Call before sharing the engine.
    pub fn enable_sync(&mut self) {
        self.store.enable_journal();
    }

    /// Decides plans with strict limits in Redis from now on. Only the
    /// first call counts (there is one Redis sync per process).
    pub fn set_strict(&self, strict: Strict) {
        let _ = self.strict.set(strict);
    }

    /// The plan decision for one key, synchronously, on the rules in
    /// effect: no strict mode, nothing counted. The building block
    /// [`Engine::decide`] uses for each key; for benches and embedders.
    #[inline]
    pub fn check(&self, req: &Request<'_>) -> Decision {
        self.view().check(req)
    }

    /// [`Engine::check`] as a peek: the answer a charge would get,
    /// changing nothing (`CHECK_MODE_PEEK`).
    #[inline]
    pub fn peek(&self, req: &Request<'_>) -> Decision {
        self.view().decide(req, false)
    }

    /// [`Engine::check`] as a report: `req.cost` charged to every limit
    /// whatever it holds ([`View::report`]).
    #[inline]
    pub fn report(&self, req: &Request<'_>) -> Decision {
        self.view().report(req)
    }

    /// A consistent view of the rules in effect for one call. Cheap; do
    /// not hold it for long (nor across a wait).
    #[inline]
    pub fn view(&self) -> View<'_> {
        View::new(self.rules.load(), self)
    }

    /// Puts a new table and the config it was built from in effect, in
    /// one step. Calls in flight finish on the old ones.
    pub fn install(&self, table: Table, config: Arc<Config>) {
        self.rules.store(Arc::new(Rules { table, config }));
    }

    /// Replaces the table, keeping the config (operators' overrides
    /// changed). A read, then a store: callers serialize it with
    /// [`Engine::install`] (the control plane holds its lock across both),
    /// or a reload's config could be put back.
    pub(crate) fn swap_table(&self, table: Table) {
        let config = Arc::clone(&self.rules.load().config);
        self.install(table, config);
    }

    /// The config in effect now.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.rules.load().config)
    }

    /// Drops idle cells (see [`LocalStore::sweep`]) and expired leases.
    pub fn sweep(&self) -> SweepReport {
        let now = self.clock.now();
        self.leases.sweep(now);
        self.store.sweep(now)
    }

    /// This node's store (for sizes and counters).
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// The keyed hasher for API keys (for logs).
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// Where decisions are counted.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The engine's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    /// The current time according to the engine's clock.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// Gives `cost` units back to one limit's cell for `key` (creating
    /// nothing), then reports its state, as [`Engine::check_limit`] with
    /// cost 0 would.
    pub(crate) fn refund_limit(&self, limit: &Limit, key: u64, cost: u64) -> Verdict {
        let now = self.clock.now();
        self.refund(limit, key, now, cost, Landed::Own);
        self.apply(limit, (key, KeySource::PLANS), now, 0, false).0
    }

    /// Forgets what the key with keyed hash `key_hash` has spent against
    /// every limit of its plan on this node (see [`Engine::cells_of`]):
    /// its own cells go, as do their pending Redis deltas, so its next
    /// check starts full.
    /// Cells of Envoy descriptors with more entries than the key, and
    /// charges that went to the shared overflow cell, stay. Returns how
    /// many cells were dropped.
    pub fn reset(&self, key_hash: u64) -> usize {
        let mut dropped = 0;
        for (id, kind) in self.cells_of(key_hash) {
            let gone = match kind {
                CellKind::Bucket => self.store.remove_bucket(id),
                CellKind::Counter { .. } => self.store.remove_quota(id),
            };
            // What was set aside for it (displaced, or undone) goes too.
            if let Some(j) = self.store.journal() {
                j.forget(id);
            }
            dropped += usize::from(gone);
        }
        // Leases this node granted go too (Redis's are freed by the
        // admin call that asked for the reset).
        self.reset_lease_mirrors(key_hash);
        dropped
    }

    /// How many of [`Engine::cells_of`]'s cells this node tracks.
    pub fn tracked_cells(&self, key_hash: u64) -> usize {
        self.cells_of(key_hash)
            .into_iter()
            .filter(|(id, kind)| self.store.tracks(*id, *kind == CellKind::Bucket))
            .count()
    }

    /// The ids and kinds of the cells the key with keyed hash `key_hash`
    /// has now, one per limit of its current plan (its cells are filed
    /// under `key_hash` itself; a blocked key's are those of the plan the
    /// config gives it, which it is back on when the block ends): what
    /// [`Engine::reset`] drops, and what Redis names them by.
    pub fn cells_of(&self, key_hash: u64) -> Vec<(u64, CellKind)> {
        self.view().cells_of(key_hash)
    }
}

/// The embedded default config, parsed once per process: every engine
/// starts under it until its own config is put in effect.
fn embedded_default() -> Arc<Config> {
    static DEFAULT: OnceLock<Arc<Config>> = OnceLock::new();
    Arc::clone(DEFAULT.get_or_init(|| Arc::new(Config::embedded_default())))
}

impl crate::metrics::EngineState for Engine {
    fn store(&self) -> &LocalStore {
        &self.store
    }

    fn overrides(&self) -> usize {
        self.view().table().overrides()
    }

    fn leases(&self) -> &Leases {
        &self.leases
    }

    fn rlqs(&self) -> crate::metrics::RlqsSample {
        let (streams, tracked, buckets) = self.rlqs.sizes();
        crate::metrics::RlqsSample {
            streams,
            tracked,
            buckets,
            rules: self
                .rlqs_rule_stats()
                .into_iter()
                .map(|r| {
                    (
                        r.domain.to_string(),
                        r.rule.to_string(),
                        r.demand,
                        r.assigned,
                    )
                })
                .collect(),
        }
    }

    fn now(&self) -> Nanos {
        self.clock.now()
    }
}
