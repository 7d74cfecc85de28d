//! Redis sync (`sync` mode): the only module that talks to Redis.
//!
//! Decisions stay local and synchronous: the engine records what each
//! check charged in the store's journal ([`crate::store::journal`]), and
//! this task, every `sync_interval`, drains the dirty cells and sends one
//! delta per cell, [`CALL_CELLS`] cells per call of one Lua script
//! (`sync.lua`, one Cluster slot per call), [`TRIP_CALLS`] calls per
//! pipelined round trip; the script applies the deltas to the cells' global states
//! in Redis atomically and returns them; the node then adopts each global
//! state plus whatever it charged meanwhile. No Redis call and no `.await`
//! is on the request path.
//!
//! **Exactly once.** Each call carries an id (a random id of this run and
//! a sequence number) that the script records in a marker key (in the
//! call's slot, for [`MARKER_TTL_MS`], five minutes): a call whose marker
//! exists is not applied again, only its states read. A call whose answer
//! did not come (Redis killed or restarted, paused or slower than the
//! round-trip timeout, a dropped connection) is kept aside as it was and
//! sent again first, before the journal is drained again, so a delta
//! Redis applied and whose answer was lost counts once. (A call kept
//! longer than the marker lives, through an outage of more than five
//! minutes that began just after Redis applied it, could count twice.)
//!
//! - Token buckets are kept in Redis as their theoretical arrival time in
//!   microseconds (Lua numbers are doubles: exact to 2⁵³), expiring when
//!   the bucket is full again.
//! - Window counters (quotas and envoyproxy/ratelimit fixed windows) are
//!   counts expiring their slack after their window ends (the window's
//!   length, 2 s to 1 min: [`crate::core::window::Span::slack`]): quotas survive
//!   restarts of every node.
//! - Key names (see `conn.rs`) hold only keyed hashes, never a raw API key;
//!   nodes must share `store.hash_secret` to name cells alike.
//! - Plans with a `mode: strict` limit skip all this: [`strict`] decides
//!   them in Redis on every check.
//!
//! **Accuracy.** A limit of `r` per second with burst `b` on `n` nodes
//! admits at most about `b + r·(t + n·sync_interval)` over any window `t`
//! long enough to repay the bursts the nodes took before they first heard
//! of each other: each node decides on the global state as of its last
//! flush, so for at most one interval each node can spend what the others
//! already spent. A node's first check of a key whose plan has a quota or
//! fixed window of at least `redis.first_read_min_window` (default 1 min)
//! is decided in Redis like a strict check and mirrored (see
//! [`crate::engine::strict`]); other keys start fresh on a node and learn
//! their global state on its first flush.
//!
//! **Outages**: in `sync` mode a node always decides locally: when a
//! flush fails, its calls are kept aside and new charges gather in the
//! cells (the journal lists each dirty cell once, and no tracked key's
//! delta is lost: see [`crate::store::journal`]), nodes keep deciding
//! locally, and the task retries with exponential backoff (to 5 s) on a
//! fresh connection, then sends the kept calls and everything pending
//! once Redis answers again. A bucket delta is applied as spent from its
//! oldest charge on, so a backlog counts as the traffic it was rather
//! than as a burst now. State changes are logged and visible through
//! [`SyncHandle::state`]. On shutdown the task
//! interrupts a round that is waiting on Redis (its calls stay held) and
//! makes a last flush, bounded by [`FINAL_FLUSH`], that sends them again.
//!
//! Besides: [`overrides`] keeps operators' overrides equal on every node
//! (applied through an [`OverrideStore`], which the control plane
//! implements: sync does not know it), and [`readiness`] says what Redis
//! means to the node's readiness.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::cluster_routing::Slot;
use redis::{IntoConnectionInfo, RedisError};
use tokio::sync::watch;

use crate::config::RedisSettings;
use crate::config::redis_url::Scrub;
use crate::core::clock::Stopwatch;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::metrics::names;
use crate::shutdown::Shutdown;
use crate::store::journal::{CellKind, Pending};
use connection::{Link, Lua, RedisConn, key, slot_of};

mod connection;
pub mod leases;
pub mod overrides;
pub mod readiness;
mod reply;
pub mod rlqs;
pub mod strict;

pub use overrides::{Change, OverrideStore};

/// The Lua script every flush runs, one call per [`CALL_CELLS`] dirty cells.
const SCRIPT: &str = include_str!("sync.lua");

/// Cells in one call of the sync script.
const CALL_CELLS: usize = 500;

/// Calls in one round trip: 16 000 cells, some 20 ms of Redis's time,
/// so a backlog after an outage goes out in round trips that each fit
/// the response timeout on a loaded Redis, instead of one that never
/// does.
const TRIP_CALLS: usize = 32;

/// How long Redis remembers that a call was applied (ms): a call sent
/// again within it (its answer was lost) is applied once. Five minutes:
/// at a node's most (about 20 rounds a second of a few calls) some
/// thousands of small keys.
const MARKER_TTL_MS: u64 = 300_000;

/// How long the last flush at shutdown may take.
pub const FINAL_FLUSH: Duration = Duration::from_millis(1_500);

/// The wait between tries of the final flush.
const FINAL_RETRY: Duration = Duration::from_millis(50);

/// An idle node pings Redis this often, so `redis_up` and readiness
/// notice a Redis that went away while nothing was sent.
const IDLE_PING: Duration = Duration::from_secs(1);

/// Rounds another connection asks for come at most this often.
const NUDGE_GAP: Duration = Duration::from_millis(50);

/// Longest wait between attempts while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait after a failed round that followed a wait of `backoff`:
/// doubled, at least `interval`, at most [`MAX_BACKOFF`] (or `interval`
/// when the config asks for a longer one: `clamp` would panic on it).
fn next_backoff(backoff: Duration, interval: Duration) -> Duration {
    backoff
        .saturating_mul(2)
        .min(MAX_BACKOFF.max(interval))
        .max(interval)
}

/// Why the sync task could not start or flush.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The URL could not be turned into connection settings.
    #[error("redis.url {url}: {reason}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// What redis-rs said, with the URL's secrets taken out (its
        /// errors may quote what they could not use).
        reason: String,
    },
    /// A Redis command failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

/// Whether the last flush reached Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Not tried yet.
    Starting,
    /// The last flush went through.
    Synced,
    /// Redis is unreachable or failing (a flush failed, or another of the
    /// node's connections found it gone); deciding locally.
    Degraded,
}

/// A view of a running sync task.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    state: watch::Receiver<SyncState>,
    rounds: watch::Receiver<u64>,
}

impl SyncHandle {
    /// The current state.
    pub fn state(&self) -> SyncState {
        *self.state.borrow()
    }

    /// Waits until the state is `want` (for tests and readiness).
    pub async fn wait_for(&mut self, want: SyncState) {
        let _ = self.state.wait_for(|s| *s == want).await;
    }

    /// Flush rounds completed so far (each sends everything pending).
    pub fn rounds(&self) -> u64 {
        *self.rounds.borrow()
    }

    /// Waits until at least `n` flush rounds have completed.
    pub async fn wait_rounds(&mut self, n: u64) {
        let _ = self.rounds.wait_for(|r| *r >= n).await;
    }
}

/// The sync task's metrics, registered once (a round may come every few
/// milliseconds).
struct FlushMetrics {
    /// `result="success"`, `result="failure"`.
    rounds: [metrics::Counter; 2],
    batches: metrics::Counter,
    cells: metrics::Counter,
    seconds: metrics::Histogram,
}

impl FlushMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            rounds: ["success", "failure"]
                .map(|result| m.counter(names::REDIS_FLUSHES, &[("result", result)])),
            batches: m.counter(names::REDIS_BATCHES, &[]),
            cells: m.counter(names::REDIS_CELLS, &[]),
            seconds: m.histogram(names::REDIS_FLUSH_SECONDS, &[]),
        }
    }
}

/// The sync task: the engine's journal on one side, Redis on the other.
pub struct RedisSync {
    engine: Arc<Engine>,
    settings: RedisSettings,
    /// Where Redis is (with credentials), for the strict client's own
    /// connection.
    info: redis::ConnectionInfo,
    /// Takes the URL's secrets out of Redis's errors before they are shown.
    scrub: Scrub,
    conn: RedisConn,
    script: Lua,
    /// The state, shared with the strict and overrides connections,
    /// which report what they learn of Redis between rounds.
    link: Arc<Link>,
    rounds: watch::Sender<u64>,
    metrics: Option<FlushMetrics>,
    /// When Redis last answered.
    contact: Option<tokio::time::Instant>,
    /// Dropped deltas are logged at most once every few seconds.
    log: reply::Throttle,
    /// This run's id in the calls' markers (random).
    node: u64,
    /// The last call's sequence number (with `node`, a call's id).
    seq: u64,
    /// Calls of a round that failed, sent again first, as they were.
    kept: Vec<SyncCall>,
}

impl std::fmt::Debug for RedisSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSync")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisSync {
    /// Prepares the task; connects lazily, so a Redis that is down at start
    /// does not stop the node from serving.
    pub fn new(
        engine: Arc<Engine>,
        settings: RedisSettings,
    ) -> Result<(Self, SyncHandle), SyncError> {
        let url_err = |e: RedisError| SyncError::Url {
            url: settings.redacted_url(),
            reason: settings.scrub().text(&e.to_string()),
        };
        let mut info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(url_err)?;
        if let Some(pw) = &settings.password {
            let redis = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(redis);
        }
        let conn = RedisConn::new(
            info.clone(),
            settings.cluster,
            settings.sentinel_master.as_deref(),
            settings.tls_ca.as_deref(),
            connection::RESPONSE_TIMEOUT,
        )
        .map_err(url_err)?;
        let (state, rx) = watch::channel(SyncState::Starting);
        let (rounds, rounds_rx) = watch::channel(0);
        let sync = Self {
            engine,
            scrub: settings.scrub(),
            settings,
            info,
            conn,
            script: Lua::new(SCRIPT),
            link: Arc::new(Link::new(state)),
            rounds,
            metrics: None,
            contact: None,
            log: reply::Throttle::default(),
            node: rand::random(),
            seq: 0,
            kept: Vec::new(),
        };
        let handle = SyncHandle {
            state: rx,
            rounds: rounds_rx,
        };
        Ok((sync, handle))
    }

    /// What takes the URL's secrets out of text quoting Redis's errors.
    pub fn scrub(&self) -> &Scrub {
        &self.scrub
    }

    /// Counts flush rounds, batches, cells and their time in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(FlushMetrics::new(&metrics));
        self
    }

    /// A strict-mode client, and the task that serves it (run it until
    /// shutdown). It has its own connection, so strict checks never queue
    /// behind a flush's pipelines.
    pub fn strict(
        &self,
    ) -> Result<
        (
            crate::engine::strict::StrictClient,
            impl Future<Output = ()> + Send + 'static,
        ),
        SyncError,
    > {
        let s = &self.settings;
        Ok(strict::StrictClient::start(
            self.connection(strict::RESPONSE_TIMEOUT)?,
            Arc::clone(&self.engine),
            s.key_prefix.clone(),
            s.strict_deadline,
            self.scrub.clone(),
        ))
    }

    /// A lease client for concurrency limits, and the task that serves
    /// it (run it until shutdown), on a connection of its own.
    pub fn leases(
        &self,
        clock: Arc<dyn crate::core::clock::Clock>,
        stop: crate::shutdown::Shutdown,
    ) -> Result<
        (
            crate::engine::leases::LeaseClient,
            impl Future<Output = ()> + Send + 'static,
        ),
        SyncError,
    > {
        let s = &self.settings;
        Ok(leases::LeaseClient::start(
            self.connection(strict::RESPONSE_TIMEOUT)?,
            clock,
            s.key_prefix.clone(),
            (s.strict_deadline, s.on_redis_error),
            (self.scrub.clone(), stop),
        ))
    }

    /// Operators' changes through Redis: the admin API's writer, and the
    /// task that keeps `store`'s overrides equal to Redis's (each on a
    /// connection of its own).
    pub fn overrides(
        &self,
        store: Arc<dyn OverrideStore>,
    ) -> Result<(overrides::RedisOverrides, overrides::OverrideSync), SyncError> {
        Ok(overrides::pair(
            self.connection(connection::RESPONSE_TIMEOUT)?,
            self.connection(connection::RESPONSE_TIMEOUT)?,
            &self.settings.key_prefix,
            store,
            self.scrub.clone(),
        ))
    }

    /// Envoy RLQS demand across nodes: the task that exchanges it (run
    /// it until shutdown), on a connection of its own.
    pub fn rlqs(&self) -> Result<rlqs::DemandExchange, SyncError> {
        Ok(rlqs::DemandExchange::new(
            self.connection(connection::RESPONSE_TIMEOUT)?,
            Arc::clone(&self.engine),
            self.settings.key_prefix.clone(),
            self.scrub.clone(),
        ))
    }

    /// A new lazy connection to the same Redis, giving up on an answer
    /// after `response_timeout`, reporting to the sync task's link.
    fn connection(&self, response_timeout: Duration) -> Result<RedisConn, SyncError> {
        let s = &self.settings;
        let conn = RedisConn::new(
            self.info.clone(),
            s.cluster,
            s.sentinel_master.as_deref(),
            s.tls_ca.as_deref(),
            response_timeout,
        )
        .map_err(|e| SyncError::Url {
            url: s.redacted_url(),
            reason: s.scrub().text(&e.to_string()),
        })?;
        Ok(conn.with_link(Arc::clone(&self.link)))
    }

    /// Waits `backoff`, or less when another connection asked for a round
    /// now (never sooner than [`NUDGE_GAP`] after the last one). Returns
    /// false when `stop` fired.
    async fn wait(
        &self,
        stop: &mut Shutdown,
        backoff: Duration,
        last: tokio::time::Instant,
    ) -> bool {
        tokio::select! {
            _ = stop.wait() => return false,
            _ = tokio::time::sleep(backoff) => return true,
            _ = self.link.nudged() => {}
        }
        tokio::select! {
            _ = stop.wait() => false,
            _ = tokio::time::sleep_until(last + NUDGE_GAP) => true,
        }
    }

    /// Flushes every `sync_interval` until `stop` fires, then makes a last
    /// flush. Never fails: Redis trouble is logged and retried.
    pub async fn run(mut self, mut stop: Shutdown) {
        tracing::info!(
            url = %self.settings.redacted_url(),
            interval_ms = self.settings.sync_interval.as_millis() as u64,
            "redis sync started"
        );
        let mut backoff = self.settings.sync_interval;
        let mut dropped = 0;
        let mut last = tokio::time::Instant::now();
        loop {
            if !self.wait(&mut stop, backoff, last).await {
                break;
            }
            last = tokio::time::Instant::now();
            // A round waiting on a Redis that does not answer gives way
            // to shutdown: its calls stay held, and the final flush sends
            // them again (applied at most once).
            let flushed = tokio::select! {
                flushed = self.flush_all() => flushed,
                _ = stop.wait() => break,
            };
            backoff = match flushed {
                Ok(_) => self.settings.sync_interval,
                Err(_) => next_backoff(backoff, self.settings.sync_interval),
            };
            let now_dropped = self.engine.store().journal().map_or(0, |j| j.dropped());
            if now_dropped > dropped {
                tracing::warn!(
                    dropped = now_dropped - dropped,
                    total = now_dropped,
                    "redis sync: deltas dropped (undos of cells no longer held beyond the journal's side list, refused by Redis, or windows long over)"
                );
                dropped = now_dropped;
            }
        }
        // The last flush: tried again (a round that failed keeps its
        // calls) until it goes through or its time is up.
        let deadline = tokio::time::Instant::now() + FINAL_FLUSH;
        loop {
            match tokio::time::timeout_at(deadline, self.flush_all()).await {
                Ok(Ok(sent)) => {
                    tracing::info!(cells = sent, "redis sync: final flush done");
                    break;
                }
                Ok(Err(_)) if tokio::time::Instant::now() + FINAL_RETRY < deadline => {
                    tokio::time::sleep(FINAL_RETRY).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        error = %self.scrub.text(&e.to_string()),
                        "redis sync: final flush failed; pending deltas are lost"
                    );
                    break;
                }
                Err(_) => {
                    tracing::warn!("redis sync: final flush timed out; pending deltas are lost");
                    break;
                }
            }
        }
    }

    /// One round: first the calls kept from a round that failed, as they
    /// were (same ids, same deltas); then, once those went through, every
    /// cell dirty now (each once; cells charged meanwhile wait for the next
    /// round), in calls of at most [`CALL_CELLS`] cells sent
    /// [`TRIP_CALLS`] per pipelined round trip (one per slot on a
    /// Cluster). Records the state
    /// change. A round with nothing to send pings Redis unless it answered
    /// within the last second (`IDLE_PING`), so an idle node reports a
    /// Redis that went down.
    pub async fn flush_all(&mut self) -> Result<usize, SyncError> {
        let engine = Arc::clone(&self.engine);
        let Some(journal) = engine.store().journal() else {
            return Ok(0);
        };
        let started = Stopwatch::start();
        let link = Arc::clone(&self.link);
        let state = link.state();
        let mut calls_sent = 0u64;
        let mut sent_cells = 0u64;
        let mut sending = false;
        let mut skipped = false;
        let mut result = Ok(0);
        if !self.kept.is_empty() {
            sending = true;
            calls_sent += self.kept.len() as u64;
            let (applied, sent) = self.send_kept(Resend::Kept).await;
            sent_cells += applied;
            result = sent.map(|()| applied as usize);
        }
        if result.is_ok() {
            let items = self.pending();
            if !items.is_empty() {
                sending = true;
                let calls = self.calls(items);
                calls_sent += calls.len() as u64;
                // Held until Redis answers for them: a round interrupted
                // (shutdown) or failed leaves them to be sent again.
                self.kept.extend(calls);
                journal.set_aside(self.kept.iter().map(|c| c.cells.len()).sum());
                let (applied, sent) = self.send_kept(Resend::Fresh).await;
                sent_cells += applied;
                result = sent.map(|()| sent_cells as usize);
            } else if !sending {
                let recent = self.contact.is_some_and(|t| t.elapsed() < IDLE_PING);
                skipped = *state.borrow() == SyncState::Synced && recent;
                if !skipped {
                    result = self.conn.ping().await.map(|()| 0).map_err(SyncError::Redis);
                }
            }
        }
        // A round that neither sent nor pinged is not a flush.
        if let Some(m) = &self.metrics
            && !skipped
        {
            let [ok, failed] = &m.rounds;
            if result.is_ok() { ok } else { failed }.increment(1);
            m.batches.increment(calls_sent);
            m.cells.increment(sent_cells);
            if sending {
                m.seconds.record(started.seconds());
            }
        }
        journal.set_aside(self.kept.iter().map(|c| c.cells.len()).sum());
        self.note_state(&result, state);
        if result.is_ok() {
            if !skipped {
                self.contact = Some(tokio::time::Instant::now());
            }
            self.rounds.send_modify(|r| *r += 1);
        }
        result
    }

    /// Logs and publishes a change of state after a round.
    fn note_state(&self, result: &Result<usize, SyncError>, state: &watch::Sender<SyncState>) {
        let next = if result.is_ok() {
            SyncState::Synced
        } else {
            SyncState::Degraded
        };
        let before = *state.borrow();
        if before == next {
            return;
        }
        match (result, before) {
            (Err(e), _) => tracing::warn!(
                error = %self.scrub.text(&e.to_string()),
                "redis sync: cannot reach Redis; deciding locally and keeping deltas"
            ),
            (Ok(sent), SyncState::Degraded) => {
                tracing::info!(
                    cells = sent,
                    "redis sync: Redis is back; pending deltas sent"
                )
            }
            (Ok(_), _) => tracing::info!("redis sync: connected"),
        }
        state.send_replace(next);
    }

    /// Every cell dirty now, with what is worth sending: a window long
    /// over is dropped (nobody will read its count again), a bucket's
    /// delta rounded to whole microseconds (Redis keeps those; at most
    /// half a microsecond per cell and round, either way).
    fn pending(&self) -> Vec<(u64, Pending)> {
        let now = self.engine.now();
        let store = self.engine.store();
        let mut items = store.drain_journal();
        let Some(journal) = store.journal() else {
            return items;
        };
        items.retain_mut(|(_, p)| match p.kind {
            CellKind::Counter {
                window_end,
                slack_ms,
            } if window_end.saturating_add(u64::from(slack_ms) * 1_000_000) < now => {
                journal.note_dropped(1);
                false
            }
            // A bucket delta that rounds to 0 is kept (its answer is the
            // bucket's global state), unless it was not 0 to begin with:
            // less than half a µs of arrival time is not worth a call.
            CellKind::Bucket => {
                let was = p.delta;
                p.delta = p.delta.saturating_add(p.delta.signum() * 500) / 1_000 * 1_000;
                p.delta != 0 || was == 0
            }
            CellKind::Counter { .. } => true,
        });
        items
    }

    /// `items` as script calls of at most [`CALL_CELLS`] cells, each of
    /// one Cluster slot, each with a sequence number of its own.
    fn calls(&mut self, items: Vec<(u64, Pending)>) -> Vec<SyncCall> {
        let mut groups: HashMap<Option<Slot>, Vec<(u64, Pending)>> = HashMap::new();
        for (id, p) in items {
            groups
                .entry(slot_of(&self.conn, p.tag))
                .or_default()
                .push((id, p));
        }
        let mut calls = Vec::new();
        for cells in groups.into_values() {
            for chunk in cells.chunks(CALL_CELLS) {
                self.seq += 1;
                calls.push(SyncCall {
                    seq: self.seq,
                    cells: chunk.to_vec(),
                });
            }
        }
        calls
    }

    /// The marker naming `call` in Redis (in its cells' slot).
    fn marker(&self, call: &SyncCall) -> String {
        let tag = call.cells.first().map_or(0, |(_, p)| p.tag);
        format!(
            "{}{{{tag:016x}}}r:{:016x}:{}",
            self.settings.key_prefix, self.node, call.seq
        )
    }

    /// Sends every call held (`kept`), [`TRIP_CALLS`] at a time, until
    /// one round trip fails (its calls, and those not sent yet, stay
    /// held). Returns how many cells' states were adopted.
    async fn send_kept(&mut self, resend: Resend) -> (u64, Result<(), SyncError>) {
        let mut adopted = 0;
        while !self.kept.is_empty() {
            let (n, result) = self.send_trip(resend).await;
            adopted += n;
            if result.is_err() {
                return (adopted, result);
            }
        }
        (adopted, Ok(()))
    }

    /// Sends the first [`TRIP_CALLS`] calls held in one pipelined round
    /// trip (one per slot on a Cluster, plus one for calls that met a
    /// Redis without the script cached) and adopts every state Redis
    /// returns. A call is
    /// let go once Redis answered for it; one whose answer did not come
    /// (transport trouble, a timeout, a Redis that is read-only, loading
    /// or failing over), or whose round was interrupted, stays held as it
    /// is, to be sent again first: its marker makes Redis apply it at most
    /// once. A cell whose key Redis cannot use (another type under our
    /// prefix), or a call the script fails on, is dropped and counted:
    /// sending it again cannot help. Returns how many cells' states were
    /// adopted.
    async fn send_trip(&mut self, resend: Resend) -> (u64, Result<(), SyncError>) {
        let now_us = self.engine.now() / 1_000;
        let prefix = self.settings.key_prefix.clone();
        let trip = self.kept.len().min(TRIP_CALLS);
        let markers: Vec<String> = self.kept[..trip].iter().map(|c| self.marker(c)).collect();
        let calls = &self.kept[..trip];
        let args = |pipe: &mut redis::Pipeline, i: usize| {
            let call = &calls[i];
            pipe.arg(call.cells.len() + 1).arg(&markers[i]);
            for (id, p) in &call.cells {
                pipe.arg(key(&prefix, p.tag, matches!(p.kind, CellKind::Bucket), *id));
            }
            pipe.arg(MARKER_TTL_MS).arg(now_us);
            for (_, p) in &call.cells {
                match p.kind {
                    // Applied as spent since the entry's oldest charge.
                    CellKind::Bucket => pipe.arg("b").arg(p.delta / 1_000).arg(p.since / 1_000),
                    // A time to live, not an instant: only the node's
                    // clock is involved, so an offset between it and
                    // Redis's cannot expire a window early.
                    CellKind::Counter {
                        window_end,
                        slack_ms,
                    } => pipe
                        .arg("c")
                        .arg(
                            window_end.saturating_sub(now_us * 1_000) / 1_000_000
                                + u64::from(slack_ms),
                        )
                        .arg(p.delta),
                };
            }
        };
        let answers: Vec<redis::RedisResult<redis::Value>> = self
            .conn
            .eval_all(&self.script, calls.len(), |i| markers[i].clone(), args)
            .await;
        let engine = Arc::clone(&self.engine);
        let store = engine.store();
        let mut adopted = 0u64;
        let mut first_error = None;
        let calls: Vec<SyncCall> = self.kept.drain(..trip).collect();
        let mut failed = Vec::new();
        for (call, answer) in calls.into_iter().zip(answers) {
            let cells = call.cells.len();
            match answer.and_then(|v| reply::batch(&v, cells).map_err(RedisError::from)) {
                Ok((applied, states)) => {
                    if !applied {
                        tracing::debug!(
                            seq = call.seq,
                            "redis sync: a call sent again was applied before; states read"
                        );
                    }
                    for ((id, p), state) in call.cells.iter().zip(states) {
                        match state {
                            // What the cell charged since: sent next, in
                            // this round, whose answer it adopts (its
                            // backlog is applied from its oldest charge
                            // on, which adding it here would not be).
                            Ok(_)
                                if resend == Resend::Kept
                                    && store.is_dirty(*id, p.kind == CellKind::Bucket) => {}
                            Ok(v) => {
                                adopted += 1;
                                match p.kind {
                                    CellKind::Bucket => {
                                        store.adopt_bucket(*id, v.saturating_mul(1_000));
                                    }
                                    CellKind::Counter { .. } => store.adopt_counter(*id, v),
                                }
                            }
                            Err(e) => self.dropped(&format_args!("cell {id:016x}: {e}"), 1),
                        }
                    }
                }
                Err(e) if e.code() == Some("ERR") && e.to_string().contains("script") => {
                    let shown = self.scrub.text(&e.to_string());
                    self.dropped(&format_args!("{cells} cells: {shown}"), cells as u64);
                }
                Err(e) => {
                    failed.push(call);
                    first_error.get_or_insert(e);
                }
            }
        }
        // Held again first, ahead of the calls not sent yet.
        self.kept.splice(0..0, failed);
        let result = match first_error {
            None => Ok(()),
            Some(e) => {
                self.conn.reset();
                Err(SyncError::Redis(e))
            }
        };
        (adopted, result)
    }

    /// Logs (throttled) and counts deltas given up.
    fn dropped(&mut self, what: &dyn std::fmt::Display, cells: u64) {
        self.log.warn("redis sync: delta dropped", what);
        if let Some(j) = self.engine.store().journal() {
            j.note_dropped(cells);
        }
    }
}

/// Whether calls are sent for the first time or again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Cells just drained from the journal.
    Fresh,
    /// Calls kept from a round that failed.
    Kept,
}

/// One call of the sync script: its sequence number (with the node's id,
/// its marker in Redis) and the cells it carries, kept as they were when
/// its round failed.
#[derive(Debug)]
struct SyncCall {
    seq: u64,
    cells: Vec<(u64, Pending)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{KeyHasher, ManualClock};
    use crate::limits::{Plan, Table};
    use crate::store::StoreLimits;

    #[tokio::test]
    async fn a_url_redis_cannot_read_is_refused_without_its_secrets() {
        let hasher = KeyHasher::with_secret([7; 16]);
        let plan = Plan {
            concurrency: None,
            name: "p".into(),
            limits: vec![],
        };
        let table = Table::new(vec![plan], "p", [], &hasher).expect("a table");
        let clock = Arc::new(ManualClock::new(0));
        let engine = Arc::new(Engine::new(table, hasher, StoreLimits::default(), clock));
        // A raw `/` in the password: the crate cannot read it.
        let mut settings = RedisSettings::new("redis://:sek/ret@127.0.0.1:1/0");
        settings.password = Some("filepw".into());
        let Err(e) = RedisSync::new(engine, settings) else {
            panic!("the redis crate read a URL with a raw '/' in its password");
        };
        let shown = e.to_string();
        assert!(
            shown.starts_with("redis.url redis://<redacted>@127.0.0.1:1/0: "),
            "{shown}"
        );
        assert!(
            !shown.contains("sek") && !shown.contains("filepw"),
            "{shown}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds_or_the_interval_when_longer() {
        let ms = Duration::from_millis;
        assert_eq!(next_backoff(ms(50), ms(50)), ms(100));
        assert_eq!(next_backoff(ms(4_000), ms(50)), MAX_BACKOFF);
        assert_eq!(next_backoff(MAX_BACKOFF, ms(50)), MAX_BACKOFF);
        // An interval over 5 s (`sync_interval: 1h`) is the wait, not a
        // panic.
        let hour = Duration::from_secs(3_600);
        assert_eq!(next_backoff(hour, hour), hour);
        assert_eq!(next_backoff(Duration::MAX, hour), hour);
    }
}
