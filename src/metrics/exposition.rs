//! What every renderer of `/metrics` shares, below both [`crate::metrics`]
//! and [`super::heavy`]: the metric names, and the text format's label
//! escaping and `# HELP`/`# TYPE` lines.

use std::fmt::Write as _;

/// Metric names.
pub mod names {
    /// Checks answered.
    pub const CHECKS: &str = "quotad_checks_total";
    /// Denials by reason.
    pub const DENIALS: &str = "quotad_denials_total";
    /// Server-side time per call.
    pub const CHECK_SECONDS: &str = "quotad_check_duration_seconds";
    /// Cells in memory.
    pub const TRACKED: &str = "quotad_tracked_cells";
    /// The cap on cells.
    pub const TRACKED_LIMIT: &str = "quotad_tracked_cells_limit";
    /// Whether the cap is reached.
    pub const STORE_FULL: &str = "quotad_store_full";
    /// Idle cells dropped by the sweeper.
    pub const EVICTED: &str = "quotad_evicted_cells_total";
    /// Charges that went to an overflow cell.
    pub const OVERFLOW: &str = "quotad_overflow_charges_total";
    /// Checks an overflow cell judged.
    pub const OVERFLOW_CHECKS: &str = "quotad_overflow_checks_total";
    /// Cells displaced to make room for a new key, by kind.
    pub const DISPLACED: &str = "quotad_store_displaced_cells_total";
    /// Units displaced counters held.
    pub const DISPLACED_UNITS: &str = "quotad_store_displaced_units_total";
    /// Debt displaced buckets held.
    pub const DISPLACED_DEBT: &str = "quotad_store_displaced_debt_seconds_total";
    /// New keys refused a cell.
    pub const ADMISSIONS_REFUSED: &str = "quotad_store_admissions_refused_total";
    /// Cells per source of keys.
    pub const SOURCE_CELLS: &str = "quotad_store_source_cells";
    /// Reloads by result.
    pub const RELOADS: &str = "quotad_config_reloads_total";
    /// The config version in effect.
    pub const CONFIG_VERSION: &str = "quotad_config_version";
    /// When it was loaded.
    pub const CONFIG_LOADED: &str = "quotad_config_loaded_timestamp_seconds";
    /// Whether the last reload succeeded.
    pub const CONFIG_LAST_OK: &str = "quotad_config_last_reload_successful";
    /// Overrides in force.
    pub const OVERRIDES: &str = "quotad_overrides";
    /// Concurrency leases held, by plan.
    pub const LEASES_ACTIVE: &str = "quotad_leases_active";
    /// The cap on leases.
    pub const LEASES_LIMIT: &str = "quotad_leases_limit";
    /// Lease acquires by plan and result.
    pub const LEASE_ACQUIRES: &str = "quotad_lease_acquires_total";
    /// Leases that expired instead of being released.
    pub const LEASE_EXPIRIES: &str = "quotad_lease_expiries_total";
    /// Open Envoy RLQS streams.
    pub const RLQS_STREAMS: &str = "quotad_rlqs_streams";
    /// Global RLQS buckets reported here.
    pub const RLQS_BUCKETS: &str = "quotad_rlqs_buckets";
    /// (Envoy, bucket) pairs tracked here.
    pub const RLQS_TRACKED: &str = "quotad_rlqs_tracked";
    /// Assignments sent, by action and kind (changed, renewed).
    pub const RLQS_ASSIGNMENTS: &str = "quotad_rlqs_assignments_total";
    /// Abandon actions sent, by reason.
    pub const RLQS_ABANDONS: &str = "quotad_rlqs_abandons_total";
    /// Streams refused or ended for bad input or caps, by reason.
    pub const RLQS_REFUSED: &str = "quotad_rlqs_refused_total";
    /// Demand of the Envoys here, per rule, requests per second.
    pub const RLQS_DEMAND: &str = "quotad_rlqs_demand";
    /// Rate the Envoys here hold, per rule, per second.
    pub const RLQS_ASSIGNED: &str = "quotad_rlqs_assigned_rate";
    /// Whether the last flush reached Redis.
    pub const REDIS_UP: &str = "quotad_redis_up";
    /// Flush rounds by result.
    pub const REDIS_FLUSHES: &str = "quotad_redis_flushes_total";
    /// Pipelined batches sent.
    pub const REDIS_BATCHES: &str = "quotad_redis_flush_batches_total";
    /// Cells sent.
    pub const REDIS_CELLS: &str = "quotad_redis_flushed_cells_total";
    /// Time per flush round.
    pub const REDIS_FLUSH_SECONDS: &str = "quotad_redis_flush_duration_seconds";
    /// Deltas waiting for the next flush.
    pub const REDIS_PENDING: &str = "quotad_redis_pending_deltas";
    /// Deltas given up.
    pub const REDIS_DROPPED: &str = "quotad_redis_dropped_deltas_total";
    /// Strict checks decided by the fail mode.
    pub const STRICT_FAIL: &str = "quotad_strict_fail_mode_total";
    /// Admin changes.
    pub const ADMIN: &str = "quotad_admin_mutations_total";
    /// Admin calls refused before they ran, by reason.
    pub const ADMIN_REFUSED: &str = "quotad_admin_refused_total";
    /// Readiness.
    pub const READY: &str = "quotad_ready";
    /// Build information.
    pub const BUILD: &str = "quotad_build_info";
    /// Open connections by listener.
    pub const CONNECTIONS: &str = "quotad_connections_open";
    /// Connections closed at accept: the listener had `server.max_connections`.
    pub const CONNECTIONS_REFUSED: &str = "quotad_connections_refused_total";
    /// Connections closed after `server.idle_timeout` with no call.
    pub const CONNECTIONS_IDLE: &str = "quotad_connections_idle_closed_total";
    /// The heaviest keys.
    pub const HEAVY: &str = "quotad_heavy_key_checks";
    /// Resident memory.
    pub const RSS: &str = "process_resident_memory_bytes";
    /// Open file descriptors.
    pub const FDS: &str = "process_open_fds";
}

/// Escapes a label value for the text format.
pub fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes one `# HELP` and `# TYPE` pair.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
