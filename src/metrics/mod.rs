//! Prometheus metrics: every metric's name, labels and help text, the
//! recorder that holds them, and `/metrics`'s text. Counted by the engine,
//! the listeners, sync and the admin API, so it sits below them all
//! (telemetry's scrape-time sampler and health endpoints sit on top).
//!
//! Each daemon has its own [`Metrics`] (a `metrics-exporter-prometheus`
//! recorder that is not installed globally), so several daemons in one
//! process (tests, embedders) count apart. The check path counts in
//! [`striped`] counters and histograms (one relaxed add on a
//! cache line of the thread's own), which a scrape sums into the
//! exporter's counters; what other parts already count (the store, the
//! sync journal, reloads) is read when `/metrics` is scraped, and rarer
//! events (flushes, admin changes, fail-mode answers) use the exporter's
//! handles directly. The latency histogram is rendered from its striped
//! buckets: the exporter would queue every sample until upkeep.
//!
//! **Cardinality is bounded by design.** Label values come from fixed
//! sets (`api`, `result`, `reason`, `kind`, `mode`, `action`, `outcome`)
//! or from the config (plan and domain names, at most [`MAX_NAMES`] each;
//! an RLS request for a domain not in the config counts as `(other)`).
//! Only the per-descriptor view of envoyproxy/ratelimit domains
//! ([`descriptors`]) takes label values from limits files (its stats
//! keys) and from requests, when a rule asks for them
//! (`detailed_metric`, `value_to_metric`), at most
//! [`descriptors::MAX_DESCRIPTORS`] per domain. The one per-key view is
//! the opt-in heaviest-keys gauge ([`heavy`]), bounded by
//! `metrics.heavy_keys` and labelled with keyed hashes only.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `quotad_checks_total` | counter | `api` (native, batch, stream, lease, report, report_stream, auth), `door` (grpc, http), `result`, `plan`; or `api="rls"`, `door`, `result`, `domain` |
//! | `quotad_rls_descriptor_hits_total` | counter | `domain`, `descriptor` (envoyproxy/ratelimit's stats key, [`descriptors`]), `result` |
//! | `quotad_denials_total` | counter | `api`, `door`, `reason` (limited, cost_exceeds_capacity, unavailable, blocked) |
//! | `quotad_check_duration_seconds` | histogram | `api`, `door` |
//! | `quotad_tracked_cells`, `quotad_tracked_cells_limit`, `quotad_store_full` | gauge | |
//! | `quotad_evicted_cells_total` | counter | `kind` (bucket, quota) |
//! | `quotad_overflow_charges_total` | counter | |
//! | `quotad_config_reloads_total` | counter | `result` (success, failure) |
//! | `quotad_config_version`, `quotad_config_loaded_timestamp_seconds`, `quotad_config_last_reload_successful`, `quotad_overrides` | gauge | |
//! | `quotad_redis_up`, `quotad_redis_pending_deltas` | gauge | |
//! | `quotad_redis_flushes_total` | counter | `result` |
//! | `quotad_redis_flush_batches_total`, `quotad_redis_flushed_cells_total`, `quotad_redis_dropped_deltas_total` | counter | |
//! | `quotad_redis_flush_duration_seconds` | histogram | |
//! | `quotad_strict_fail_mode_total` | counter | `mode` (local, allow, deny) |
//! | `quotad_admin_mutations_total` | counter | `action`, `outcome` (done, unconfirmed, refused) |
//! | `quotad_admin_refused_total` | counter | `reason` (no_token, malformed_token, bad_token, missing_scope) |
//! | `quotad_ready`, `quotad_build_info` | gauge | `version` (build info) |
//! | `quotad_heavy_key_checks` | gauge | `key` (keyed hash), `name` (operator's) |
//! | `process_resident_memory_bytes`, `process_open_fds` | gauge | |
//!
//! `result` is `allowed`, `denied`, `shadow_denied` (over a limit but
//! answered OK by shadow mode) or `error` (refused as invalid). `plan` is
//! the config plan's name, `(override)` for an override with limits of its
//! own, `(blocked)` for a blocked key and `(none)` for a refused check (or
//! a strict check whose table changed while Redis answered). A
//! refused call counts once (a refused `CheckBatch` is one error, however
//! many checks it held); a message that does not decode is refused by the
//! codec before any of this and is not counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub mod descriptors;
pub mod exposition;
pub mod heavy;
pub mod striped;

use crate::core::clock::Stopwatch;
use crate::core::{Decision, DenyReason};
use crate::limits::Table;
use crate::store::LocalStore;
use descriptors::{DESCRIPTOR_HITS, Descriptors, Hits};
use exposition::header;
use heavy::Heavy;
use striped::{Latency, Striped};

/// Most distinct plan (or domain) names counted; beyond, `(other)`. Plans
/// come from the config, so this only matters across many reloads that
/// rename plans.
pub const MAX_NAMES: usize = 256;

/// Which API answered, through which door (gRPC or HTTP): the `api` and
/// `door` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `quotad.v1.RateLimiter/Check`.
    Native = 0,
    /// `CheckBatch`, one per check in it.
    Batch = 1,
    /// `CheckStream`, one per message.
    Stream = 2,
    /// Envoy RLS v3 `ShouldRateLimit`, one per request.
    Rls = 3,
    /// `Acquire` and `Hold`: the request a new lease is (charged against
    /// the plan's rate limits and quotas).
    Lease = 4,
    /// `Report`, one per report.
    Report = 5,
    /// `ReportStream`, one per message.
    ReportStream = 6,
    /// The HTTP door's `/v1/auth` (forward auth for NGINX, Traefik,
    /// Caddy).
    HttpAuth = 7,
    /// The HTTP door's `POST /v1/check`.
    HttpCheck = 8,
    /// The HTTP door's `POST /v1/report`.
    HttpReport = 9,
    /// The HTTP door's `POST /json` (envoyproxy/ratelimit's), one per
    /// request.
    HttpRls = 10,
}

impl Api {
    /// How many there are.
    pub const COUNT: usize = 11;

    const ALL: [Api; Api::COUNT] = [
        Api::Native,
        Api::Batch,
        Api::Stream,
        Api::Rls,
        Api::Lease,
        Api::Report,
        Api::ReportStream,
        Api::HttpAuth,
        Api::HttpCheck,
        Api::HttpReport,
        Api::HttpRls,
    ];

    /// The `api` label: the same for a call through either door.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Native | Api::HttpCheck => "native",
            Api::Batch => "batch",
            Api::Stream => "stream",
            Api::Rls | Api::HttpRls => "rls",
            Api::Lease => "lease",
            Api::Report | Api::HttpReport => "report",
            Api::ReportStream => "report_stream",
            Api::HttpAuth => "auth",
        }
    }

    /// The `door` label: `grpc` or `http`.
    pub fn door(self) -> &'static str {
        match self {
            Api::HttpAuth | Api::HttpCheck | Api::HttpReport | Api::HttpRls => "http",
            _ => "grpc",
        }
    }

    /// Whether it answers Envoy RLS requests (counted by domain).
    pub fn is_rls(self) -> bool {
        matches!(self, Api::Rls | Api::HttpRls)
    }
}

/// What a check came to, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed.
    Allowed = 0,
    /// Denied.
    Denied = 1,
    /// Over a limit, answered OK by shadow mode.
    ShadowDenied = 2,
    /// Refused as invalid.
    Error = 3,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Allowed,
        Outcome::Denied,
        Outcome::ShadowDenied,
        Outcome::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::ShadowDenied => "shadow_denied",
            Outcome::Error => "error",
        }
    }
}

/// The APIs that answer checks and reports of API keys (counted by plan).
const PLAN_APIS: [Api; 9] = [
    Api::Native,
    Api::Batch,
    Api::Stream,
    Api::Lease,
    Api::Report,
    Api::ReportStream,
    Api::HttpAuth,
    Api::HttpCheck,
    Api::HttpReport,
];

/// The APIs whose denials are counted by reason.
const DENIAL_APIS: [Api; 5] = [
    Api::Native,
    Api::Batch,
    Api::Stream,
    Api::HttpAuth,
    Api::HttpCheck,
];

const REASONS: [(DenyReason, &str); 4] = [
    (DenyReason::Limited, "limited"),
    (DenyReason::CostExceedsCapacity, "cost_exceeds_capacity"),
    (DenyReason::Unavailable, "unavailable"),
    (DenyReason::Blocked, "blocked"),
];

pub use exposition::names;

use names::*;

/// What each metric means (the HELP lines) and its kind.
const DESCRIBED: &[(&str, Kind, &str)] = &[
    (
        CHECKS,
        Kind::Counter,
        "Checks answered: native, batch and stream per check (by plan), rls per request (by domain).",
    ),
    (
        DESCRIPTOR_HITS,
        Kind::Counter,
        "Hits per descriptor limit of domains from envoyproxy/ratelimit files, by its stats key (descriptor, at most 1000 per domain, then (other)) and result (total_hits, over_limit, near_limit, within_limit, shadow_mode).",
    ),
    (
        DENIALS,
        Kind::Counter,
        "Denied native, batch and stream checks by reason.",
    ),
    (
        TRACKED,
        Kind::Gauge,
        "Cells in memory: one per tracked key and limit (and window for quotas).",
    ),
    (
        TRACKED_LIMIT,
        Kind::Gauge,
        "The cap on tracked cells (store.max_tracked_keys).",
    ),
    (
        STORE_FULL,
        Kind::Gauge,
        "1 while the cap is reached and new keys share the overflow cells.",
    ),
    (EVICTED, Kind::Counter, "Idle cells dropped by the sweeper."),
    (
        OVERFLOW,
        Kind::Counter,
        "Charges that went to a shared overflow cell because the store was full.",
    ),
    (
        OVERFLOW_CHECKS,
        Kind::Counter,
        "Checks judged by a shared overflow cell: new keys that found the store full and could not win a cell.",
    ),
    (
        DISPLACED,
        Kind::Counter,
        "Cells forgotten to make room for a new key while the store was full, by kind (bucket, counter).",
    ),
    (
        DISPLACED_UNITS,
        Kind::Counter,
        "Units the displaced counters held: what their keys may spend again (without Redis).",
    ),
    (
        DISPLACED_DEBT,
        Kind::Counter,
        "Time the displaced buckets still needed to refill, in seconds: forgiven (without Redis).",
    ),
    (
        ADMISSIONS_REFUSED,
        Kind::Counter,
        "New keys refused a cell while the store was full: every cell sampled was worth more (they went to the overflow cell).",
    ),
    (
        SOURCE_CELLS,
        Kind::Gauge,
        "Cells held per source of keys: plans (native API and Envoy plan domains) or an envoyproxy/ratelimit domain.",
    ),
    (RELOADS, Kind::Counter, "Config reloads by result."),
    (
        CONFIG_VERSION,
        Kind::Gauge,
        "The version of the config in effect (1 at start, +1 per applied change).",
    ),
    (
        CONFIG_LOADED,
        Kind::Gauge,
        "When the config in effect was loaded, in Unix seconds.",
    ),
    (
        CONFIG_LAST_OK,
        Kind::Gauge,
        "1 if the last reload (or the start) succeeded, 0 if it was refused.",
    ),
    (OVERRIDES, Kind::Gauge, "Operators' overrides in force."),
    (
        LEASES_ACTIVE,
        Kind::Gauge,
        "Concurrency leases held that this node granted, by plan.",
    ),
    (
        LEASES_LIMIT,
        Kind::Gauge,
        "The cap on leases this node holds (store.max_leases).",
    ),
    (
        LEASE_ACQUIRES,
        Kind::Counter,
        "Acquires of concurrency leases (Acquire and Hold) by plan and result (granted, denied).",
    ),
    (
        LEASE_EXPIRIES,
        Kind::Counter,
        "Leases that timed out instead of being released: a sign of gateways that crash or stop renewing.",
    ),
    (RLQS_STREAMS, Kind::Gauge, "Open Envoy RLQS streams."),
    (
        RLQS_BUCKETS,
        Kind::Gauge,
        "Global RLQS buckets the Envoys connected here report.",
    ),
    (
        RLQS_TRACKED,
        Kind::Gauge,
        "(Envoy stream, bucket) pairs tracked here (rlqs.max_tracked caps them).",
    ),
    (
        RLQS_ASSIGNMENTS,
        Kind::Counter,
        "RLQS assignments sent, by action (token_bucket, deny_all, allow_all) and kind (changed: a new one; renewed: the same, extending its time to live).",
    ),
    (
        RLQS_ABANDONS,
        Kind::Counter,
        "RLQS abandon actions sent, by reason (idle, rule_removed).",
    ),
    (
        RLQS_REFUSED,
        Kind::Counter,
        "RLQS streams refused or ended, by reason (invalid, streams, connection_streams, buckets, node_full, idle).",
    ),
    (
        RLQS_DEMAND,
        Kind::Gauge,
        "Requests per second the Envoys connected here report, by domain and rule (its index in rlqs.domains).",
    ),
    (
        RLQS_ASSIGNED,
        Kind::Gauge,
        "Rate per second the Envoys connected here hold as token buckets, by domain and rule.",
    ),
    (
        REDIS_UP,
        Kind::Gauge,
        "1 if the last flush (or ping) reached Redis.",
    ),
    (
        REDIS_FLUSHES,
        Kind::Counter,
        "Flush rounds to Redis by result (an idle node's ping, once a second, counts as one).",
    ),
    (
        REDIS_BATCHES,
        Kind::Counter,
        "Pipelined batches of deltas sent to Redis.",
    ),
    (
        REDIS_CELLS,
        Kind::Counter,
        "Cells whose deltas reached Redis.",
    ),
    (
        REDIS_FLUSH_SECONDS,
        Kind::Histogram,
        "Time per flush round that sent deltas, in seconds.",
    ),
    (
        REDIS_PENDING,
        Kind::Gauge,
        "Cells with deltas waiting for the next flush.",
    ),
    (
        REDIS_DROPPED,
        Kind::Counter,
        "Deltas given up: undos of cells no longer held beyond the journal's side list, refused by Redis, or windows long over.",
    ),
    (
        STRICT_FAIL,
        Kind::Counter,
        "Strict checks Redis did not answer in time, decided by redis.on_redis_error.",
    ),
    (
        ADMIN,
        Kind::Counter,
        "Admin API changes by action and outcome: done, unconfirmed (Redis did not confirm), refused (nothing changed).",
    ),
    (
        ADMIN_REFUSED,
        Kind::Counter,
        "Admin API calls (reads and changes) refused before they ran, by reason: no_token, malformed_token, bad_token, missing_scope.",
    ),
    (READY, Kind::Gauge, "1 while the node reports ready."),
    (
        BUILD,
        Kind::Gauge,
        "Always 1; the labels say which build runs.",
    ),
    (
        RSS,
        Kind::Gauge,
        "Resident memory of the process, in bytes.",
    ),
    (FDS, Kind::Gauge, "Open file descriptors of the process."),
    (
        CONNECTIONS,
        Kind::Gauge,
        "Open connections by listener (grpc, admin, http).",
    ),
    (
        CONNECTIONS_REFUSED,
        Kind::Counter,
        "Connections closed as soon as accepted: the listener had its cap (server.max_connections; 256 for http) open.",
    ),
    (
        CONNECTIONS_IDLE,
        Kind::Counter,
        "Connections closed idle: server.idle_timeout without a call in flight (grpc, admin), 30 s without a byte (http).",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// HELP of the latency histogram (rendered from its stripes).
const CHECK_SECONDS_HELP: &str = "Server-side time to answer a call (a CheckBatch as a whole, each CheckStream message), in seconds.";

/// Histogram buckets for flush rounds: 100 µs to 5 s.
const FLUSH_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

static META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// A hook run before each scrape (sets gauges from other parts' counts).
pub type Sampler = Box<dyn Fn(&Metrics) + Send + Sync>;

/// One daemon's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    latency: [Latency; Api::COUNT],
    denials: [[Synced; 4]; DENIAL_APIS.len()],
    strict_fail: [Counter; 3],
    plans: Labelled,
    domains: Labelled,
    descriptors: Descriptors,
    heavy: Heavy,
    samplers: Mutex<Vec<Sampler>>,
}

/// A striped counter and the exporter's counter it is summed into.
struct Synced {
    striped: Striped,
    exported: Counter,
}

impl Synced {
    fn new(rec: &PrometheusRecorder, key: &Key) -> Self {
        Self {
            striped: Striped::default(),
            exported: rec.register_counter(key, &META),
        }
    }

    fn sync(&self) {
        self.exported.absolute(self.striped.sum());
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `redis.on_redis_error`'s values, in [`Metrics::strict_fail`]'s order.
const FAIL_MODES: [&str; 3] = ["local", "allow", "deny"];

impl Metrics {
    /// A recorder with every metric described, the build info set and
    /// readiness 0.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REDIS_FLUSH_SECONDS.into()), FLUSH_BUCKETS);
        // The bucket list is a constant and not empty: the builder cannot
        // refuse it; were it to, a summary would be rendered instead.
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        for (name, kind, help) in DESCRIBED {
            let key = KeyName::from_const_str(name);
            let help = SharedString::const_str(help);
            let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
            match kind {
                Kind::Counter => recorder.describe_counter(key, unit, help),
                Kind::Gauge => recorder.describe_gauge(key, unit, help),
                Kind::Histogram => recorder.describe_histogram(key, unit, help),
            }
        }
        let handle = recorder.handle();
        let denials = DENIAL_APIS.map(|api| {
            REASONS.map(|(_, reason)| {
                let labels = [
                    ("api", api.as_str()),
                    ("door", api.door()),
                    ("reason", reason),
                ];
                Synced::new(&recorder, &key(DENIALS, &labels))
            })
        });
        let strict_fail = FAIL_MODES
            .map(|mode| recorder.register_counter(&key(STRICT_FAIL, &[("mode", mode)]), &META));
        let m = Self {
            latency: Default::default(),
            denials,
            strict_fail,
            plans: Labelled::new("plan", &PLAN_APIS),
            domains: Labelled::new("domain", &[Api::Rls, Api::HttpRls]),
            descriptors: Descriptors::default(),
            heavy: Heavy::default(),
            samplers: Mutex::new(Vec::new()),
            recorder,
            handle,
        };
        m.gauge(BUILD, &[("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        m.gauge(READY, &[]).set(0.0);
        m
    }

    /// A counter by name and labels (registered on first use).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    /// A gauge by name and labels (registered on first use).
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &META)
    }

    /// A histogram by name and labels (registered on first use).
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &META)
    }

    /// Counts a check of a native door decided against `plan` (the
    /// label value: see the module docs).
    #[inline]
    pub fn checked(&self, api: Api, plan: &str, d: &Decision) {
        let outcome = if d.allowed {
            Outcome::Allowed
        } else {
            if let (Some(row), Some(i)) = (
                DENIAL_APIS
                    .iter()
                    .position(|a| *a == api)
                    .and_then(|a| self.denials.get(a)),
                REASONS.iter().position(|(r, _)| Some(*r) == d.reason),
            ) && let Some(c) = row.get(i)
            {
                c.striped.add(1);
            }
            Outcome::Denied
        };
        self.plans.count(&self.recorder, plan, api, outcome);
    }

    /// Counts a call refused as invalid: a native door's under plan
    /// `(none)`, an Envoy RLS request's under `domain` (a domain of the
    /// config, else `None`: `(other)`).
    pub fn refused(&self, api: Api, domain: Option<&str>) {
        if api.is_rls() {
            self.rls(api, domain, Outcome::Error);
        } else {
            self.plans
                .count(&self.recorder, "(none)", api, Outcome::Error);
        }
    }

    /// Counts an Envoy RLS request (of `api`: gRPC or HTTP's `/json`) for
    /// `domain` (a domain of the config, else `None`).
    #[inline]
    pub fn rls(&self, api: Api, domain: Option<&str>, outcome: Outcome) {
        self.domains
            .count(&self.recorder, domain.unwrap_or("(other)"), api, outcome);
    }

    /// Counts a descriptor limit's hits in `domain` (one read from
    /// envoyproxy/ratelimit files) under the series `name`
    /// ([`descriptors`]).
    #[inline]
    pub fn rls_hits(&self, domain: &str, name: &str, hits: Hits) {
        self.descriptors.count(&self.recorder, domain, name, hits);
    }

    /// Records how long a call of `api` took since `started`.
    #[inline]
    pub fn took(&self, api: Api, started: Stopwatch) {
        if let Some(h) = self.latency.get(api as usize) {
            h.record(started.nanos());
        }
    }

    /// The heaviest-keys tracker.
    pub fn heavy(&self) -> &Heavy {
        &self.heavy
    }

    /// Counts a strict check decided by the fail mode `mode` (`local`,
    /// `allow` or `deny`).
    pub fn strict_fail(&self, mode: &str) {
        if let Some(i) = FAIL_MODES.iter().position(|m| *m == mode)
            && let Some(c) = self.strict_fail.get(i)
        {
            c.increment(1);
        }
    }

    /// Counts an acquire of a lease under plan `plan` by result
    /// (`granted`, `denied`).
    pub fn lease_acquired(&self, plan: &str, result: &'static str) {
        self.counter(LEASE_ACQUIRES, &[("plan", plan), ("result", result)])
            .increment(1);
    }

    /// Counts an RLQS assignment sent: `action` is `token_bucket`,
    /// `deny_all` or `allow_all`; `changed` a new one, else a renewal.
    pub fn rlqs_assigned(&self, action: &'static str, changed: bool) {
        let kind = if changed { "changed" } else { "renewed" };
        self.counter(RLQS_ASSIGNMENTS, &[("action", action), ("kind", kind)])
            .increment(1);
    }

    /// Counts an RLQS abandon action, for `reason` (`idle`,
    /// `rule_removed`).
    pub fn rlqs_abandoned(&self, reason: &'static str) {
        self.counter(RLQS_ABANDONS, &[("reason", reason)])
            .increment(1);
    }

    /// Counts an RLQS stream refused or ended, for `reason`.
    pub fn rlqs_refused(&self, reason: &'static str) {
        self.counter(RLQS_REFUSED, &[("reason", reason)])
            .increment(1);
    }

    /// Counts an admin change.
    pub fn admin(&self, action: &str, outcome: &str) {
        self.counter(ADMIN, &[("action", action), ("outcome", outcome)])
            .increment(1);
    }

    /// Counts an admin call refused before it ran, for `reason` (one of
    /// a fixed set: see [`crate::admin::auth::Refusal`]).
    pub fn admin_refused(&self, reason: &'static str) {
        self.counter(ADMIN_REFUSED, &[("reason", reason)])
            .increment(1);
    }

    /// Adds `sampler` to what runs before each scrape.
    pub fn on_scrape(&self, sampler: Sampler) {
        self.samplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sampler);
    }

    /// Drains recorded histogram samples (Redis flush times) into their
    /// buckets, so memory stays flat between scrapes (run every few
    /// seconds).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The text `/metrics` answers: samplers run and striped counts are
    /// summed, then every metric in the Prometheus text format: the
    /// exporter's, the latency histogram, the heaviest keys.
    pub fn render(&self) -> String {
        {
            let samplers = self.samplers.lock().unwrap_or_else(|e| e.into_inner());
            for s in samplers.iter() {
                s(self);
            }
        }
        process(self);
        self.denials.iter().flatten().for_each(Synced::sync);
        self.plans.sync();
        self.domains.sync();
        self.descriptors.sync();
        let mut out = self.handle.render();
        header(&mut out, CHECK_SECONDS, "histogram", CHECK_SECONDS_HELP);
        for api in Api::ALL {
            if let Some(h) = self.latency.get(api as usize) {
                h.render(
                    &mut out,
                    CHECK_SECONDS,
                    &format!("api=\"{}\",door=\"{}\"", api.as_str(), api.door()),
                );
            }
        }
        out.push('\n');
        self.heavy.render(&mut out);
        out
    }
}

/// Resident memory and open descriptors, from `/proc` (Linux; elsewhere
/// the gauges are left out).
fn process(m: &Metrics) {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        m.gauge(RSS, &[]).set((kb * 1024) as f64);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        m.gauge(FDS, &[]).set(dir.count() as f64);
    }
}

/// The `plan` label of a decision made with `table`: the config plan's
/// name, `override` for an override's own limits, `(blocked)`.
#[inline]
pub fn plan_label<'t>(table: &'t Table, d: &Decision) -> &'t str {
    match d.plan {
        Some(id) if (id.0 as usize) < table.plans().len() => &table.plan(id).name,
        Some(_) => "(override)",
        None if d.reason == Some(DenyReason::Blocked) => "(blocked)",
        None => "(none)",
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

/// `quotad_checks_total` for one label (`plan` or `domain`): a read-mostly
/// map from the label's value to one counter per API and result.
struct Labelled {
    label: &'static str,
    apis: &'static [Api],
    map: ArcSwap<HashMap<Box<str>, Arc<[Synced]>, foldhash::fast::RandomState>>,
    grow: Mutex<()>,
}

impl Labelled {
    fn new(label: &'static str, apis: &'static [Api]) -> Self {
        Self {
            label,
            apis,
            map: ArcSwap::from_pointee(HashMap::default()),
            grow: Mutex::new(()),
        }
    }

    #[inline]
    fn count(&self, rec: &PrometheusRecorder, value: &str, api: Api, outcome: Outcome) {
        let Some(i) = self
            .apis
            .iter()
            .position(|a| *a == api)
            .map(|a| a * Outcome::ALL.len() + outcome as usize)
        else {
            return;
        };
        if let Some(c) = self.map.load().get(value).and_then(|c| c.get(i)) {
            c.striped.add(1);
            return;
        }
        self.add(rec, value, i);
    }

    /// The slow path: a value seen for the first time gets its counters
    /// (all of them, so every series starts at 0). Past [`MAX_NAMES`]
    /// values, a new one shares `(other)`'s counters (and, up to twice as
    /// many entries, is remembered as such, so it takes the fast path).
    #[cold]
    fn add(&self, rec: &PrometheusRecorder, value: &str, i: usize) {
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let map = self.map.load_full();
        if let Some(c) = map.get(value).and_then(|c| c.get(i)) {
            c.striped.add(1);
            return;
        }
        let mut next = HashMap::clone(&map);
        let counters = if map.len() < MAX_NAMES {
            self.counters(rec, value)
        } else {
            match map.get("(other)") {
                Some(c) => Arc::clone(c),
                None => {
                    let c = self.counters(rec, "(other)");
                    next.insert("(other)".into(), Arc::clone(&c));
                    c
                }
            }
        };
        if let Some(c) = counters.get(i) {
            c.striped.add(1);
        }
        if next.len() < 2 * MAX_NAMES {
            next.insert(value.into(), counters);
        } else if next.len() == map.len() {
            // Nothing new to remember: leave the map as it is.
            return;
        }
        self.map.store(Arc::new(next));
    }

    fn counters(&self, rec: &PrometheusRecorder, value: &str) -> Arc<[Synced]> {
        self.apis
            .iter()
            .flat_map(|a| {
                Outcome::ALL.map(|o| {
                    let labels = [
                        ("api", a.as_str()),
                        ("door", a.door()),
                        ("result", o.as_str()),
                        (self.label, value),
                    ];
                    Synced::new(rec, &key(CHECKS, &labels))
                })
            })
            .collect()
    }

    /// Sums the stripes into the exporter's counters (an alias shares
    /// its counters, so syncing them twice is harmless).
    fn sync(&self) {
        for counters in self.map.load().values() {
            counters.iter().for_each(Synced::sync);
        }
    }
}

/// What the scrape-time sampler ([`crate::telemetry::sampler`]) reads from
/// the engine (implemented by [`crate::engine::Engine`], which counts into
/// these metrics, so it is defined here, below both).
pub trait EngineState: Send + Sync {
    /// This node's store.
    fn store(&self) -> &LocalStore;
    /// Operators' overrides in force in the table in effect.
    fn overrides(&self) -> usize;
    /// This node's concurrency leases.
    fn leases(&self) -> &crate::store::leases::Leases;
    /// This node's RLQS streams and buckets.
    fn rlqs(&self) -> RlqsSample;
    /// The engine's clock's time.
    fn now(&self) -> crate::core::Nanos;
}

/// This node's Envoy RLQS state, as the sampler reports it.
#[derive(Debug, Clone, Default)]
pub struct RlqsSample {
    /// Open streams.
    pub streams: usize,
    /// (stream, bucket) pairs.
    pub tracked: usize,
    /// Global buckets.
    pub buckets: usize,
    /// Per (domain, rule index): demand and held rate, per second.
    pub rules: Vec<(String, String, f64, f64)>,
}
