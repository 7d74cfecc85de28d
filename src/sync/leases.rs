//! Concurrency leases' Redis side: the engine's [`LeaseClient`] queues
//! lease operations; one task sends every operation waiting at that
//! moment (up to 256) in one pipelined round trip through `leases.lua`,
//! one atomic call per operation on the cell's keys, so leases are exact
//! across nodes. A cell's keys (`<prefix>{<cell>}l`, `...lh`, `...lr`,
//! `...lx`)
//! share its hash tag: one slot per call on a Cluster.
//!
//! Two things are never left to chance. A grant whose caller gave up
//! waiting (the fail mode answered it) is released at once: nobody holds
//! its token. A release Redis did not answer is retried every 100 ms
//! until it does (at most [`MAX_RETRIES`] wait, each for at most an hour,
//! the longest lease; beyond, the lease expires at its time to live), so a
//! Redis blip does not keep slots taken. An acquire whose answer was lost
//! is released the same way (Redis may have granted it). At shutdown what
//! waits is sent once more.

use std::sync::Arc;
use std::time::Duration;

use super::connection::{Lua, RedisConn};
use super::reply::{self, Throttle};
use crate::config::OnRedisError;
use crate::config::redis_url::Scrub;
use crate::core::clock::{Clock, NANOS_PER_MS};
pub use crate::engine::leases::LeaseClient;
use crate::engine::leases::{LeaseAnswer, LeaseCall, LeaseFailure, LeaseOp, LeaseQueues};
use crate::shutdown::Shutdown;
use crate::store::leases::Token;

/// The lease script.
const SCRIPT: &str = include_str!("leases.lua");

/// Operations sent in one round trip.
const BATCH: usize = 256;

/// Operations that may wait for the task; beyond, callers get the fail
/// mode at once.
const QUEUE: usize = 4_096;

/// Releases Redis did not answer, waiting to be sent again, at most.
const MAX_RETRIES: usize = 65_536;

/// How long the last round at shutdown may take.
const LAST_ROUND: Duration = Duration::from_secs(1);

/// How often waiting releases are sent again.
const RETRY: Duration = Duration::from_millis(100);

impl LeaseClient {
    /// A client and the task that serves it until `stop`, then sends
    /// what waits once more.
    pub(crate) fn start(
        conn: RedisConn,
        clock: Arc<dyn Clock>,
        key_prefix: String,
        (deadline, on_error): (Duration, OnRedisError),
        (scrub, stop): (Scrub, Shutdown),
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (client, queues) = LeaseClient::channel(QUEUE, deadline, on_error);
        let task = Server {
            conn,
            clock,
            prefix: key_prefix,
            script: Lua::new(SCRIPT),
            log: Throttle::default(),
            scrub,
            retry: Vec::new(),
        }
        .serve(queues, stop);
        (client, task)
    }
}

/// The Redis key of a cell's lease set.
fn set_key(prefix: &str, cell: u64) -> String {
    format!("{prefix}{{{cell:016x}}}l")
}

/// The Redis keys of a cell's lease details, reset mark and released
/// leases (same slot).
fn other_keys(prefix: &str, cell: u64) -> [String; 3] {
    [
        format!("{prefix}{{{cell:016x}}}lh"),
        format!("{prefix}{{{cell:016x}}}lr"),
        format!("{prefix}{{{cell:016x}}}lx"),
    ]
}

fn cell_of(op: &LeaseOp) -> u64 {
    match *op {
        LeaseOp::Acquire { token, .. }
        | LeaseOp::Restore { token, .. }
        | LeaseOp::Renew { token, .. }
        | LeaseOp::Release { token } => token.cell,
        LeaseOp::Count { cell } | LeaseOp::Drop { cell } => cell,
    }
}

/// The task's state.
struct Server {
    conn: RedisConn,
    clock: Arc<dyn Clock>,
    prefix: String,
    script: Lua,
    log: Throttle,
    scrub: Scrub,
    /// Releases to send (again), each until when it is worth trying:
    /// the longest lease's time to live.
    retry: Vec<(Token, tokio::time::Instant)>,
}

impl Server {
    async fn serve(mut self, mut q: LeaseQueues, mut stop: Shutdown) {
        let mut batch: Vec<LeaseCall> = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                got = q.calls.recv_many(&mut batch, BATCH) => if got == 0 { break },
                Some(token) = q.forgotten.recv() => self.keep(token, None),
                () = tokio::time::sleep(RETRY), if !self.retry.is_empty() => {}
                _ = stop.wait() => {
                    // Last rounds: everything that waits, then done;
                    // bounded, so a Redis that is down cannot hold up
                    // shutdown.
                    let _ = tokio::time::timeout(LAST_ROUND, self.drain(&mut q, &mut batch)).await;
                    break;
                }
            }
            self.take_forgotten(&mut q);
            self.round(&mut batch).await;
        }
    }

    /// Queues the releases without a caller that wait now.
    fn take_forgotten(&mut self, q: &mut LeaseQueues) {
        while let Ok(token) = q.forgotten.try_recv() {
            self.keep(token, None);
        }
    }

    /// Rounds until no call and no release waits.
    async fn drain(&mut self, q: &mut LeaseQueues, batch: &mut Vec<LeaseCall>) {
        loop {
            self.take_forgotten(q);
            while batch.len() < BATCH
                && let Ok(call) = q.calls.try_recv()
            {
                batch.push(call);
            }
            if batch.is_empty() && self.retry.is_empty() {
                return;
            }
            self.round(batch).await;
        }
    }

    /// Sends the calls in `batch` (those whose caller still waits, and
    /// every release) and up to a batch of waiting releases.
    async fn round(&mut self, batch: &mut Vec<LeaseCall>) {
        batch.retain(|c| !c.reply.is_closed() || matches!(c.op, LeaseOp::Release { .. }));
        let now = tokio::time::Instant::now();
        self.retry.retain(|(_, until)| *until > now);
        let mut ops: Vec<LeaseOp> = batch.iter().map(|c| c.op).collect();
        let mut until: Vec<Option<tokio::time::Instant>> = vec![None; ops.len()];
        let resent = self.retry.len().min(BATCH);
        for (token, by) in self.retry.drain(..resent) {
            ops.push(LeaseOp::Release { token });
            until.push(Some(by));
        }
        if ops.is_empty() {
            return;
        }
        let now_ms = self.clock.now() / NANOS_PER_MS;
        let replies = run(&mut self.conn, &self.script, &self.prefix, &ops, now_ms).await;
        let mut failed = false;
        let mut calls = batch.drain(..);
        for ((op, got), by) in ops.iter().zip(replies).zip(until) {
            let answer = match got {
                Ok(v) => reply::lease(&v, op).map_err(|e| {
                    self.log.warn(
                        "lease operation failed: Redis's reply is not the script's",
                        &e,
                    );
                    LeaseFailure::Unavailable
                }),
                Err(e) => {
                    let text = self.scrub.text(&e.to_string());
                    self.log.warn("lease operation failed in Redis", &text);
                    failed = true;
                    Err(LeaseFailure::Unavailable)
                }
            };
            // A release not confirmed goes again; so does an acquire
            // whose answer was lost (Redis may have granted it: nobody
            // holds its token).
            if answer.is_err()
                && let LeaseOp::Release { token } | LeaseOp::Acquire { token, .. } = *op
            {
                self.keep(token, by);
            }
            // The resent releases come last and have no caller.
            let Some(call) = calls.next() else { continue };
            if let Err(Ok(r)) = call.reply.send(answer)
                && let (LeaseOp::Acquire { token, .. }, LeaseAnswer::Granted { .. }) =
                    (op, r.answer)
            {
                // Granted after its caller gave up: nobody holds it.
                self.keep(*token, None);
            }
        }
        drop(calls);
        if failed {
            self.conn.reset();
        }
    }

    /// Queues a release to send (again), until `until` (first time: an
    /// hour from now, the longest lease).
    fn keep(&mut self, token: Token, until: Option<tokio::time::Instant>) {
        if self.retry.len() < MAX_RETRIES {
            let until =
                until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3_600));
            self.retry.push((token, until));
        } else {
            self.log.warn(
                "lease release: too many waiting for Redis",
                &format_args!("one dropped (it expires at its time to live)"),
            );
        }
    }
}

/// One round trip (one per slot on a Cluster) for the operations.
async fn run(
    conn: &mut RedisConn,
    script: &Lua,
    prefix: &str,
    ops: &[LeaseOp],
    now_ms: u64,
) -> Vec<redis::RedisResult<redis::Value>> {
    let name = |i: usize| set_key(prefix, cell_of(&ops[i]));
    let args = |pipe: &mut redis::Pipeline, i: usize| {
        let cell = cell_of(&ops[i]);
        pipe.arg(4).arg(name(i)).arg(&other_keys(prefix, cell)[..]);
        match ops[i] {
            LeaseOp::Acquire {
                token,
                limit,
                slots,
                ttl_ms,
            } => pipe
                .arg("a")
                .arg(now_ms)
                .arg(limit)
                .arg(slots)
                .arg(ttl_ms)
                .arg(token.secret_hex()),
            LeaseOp::Restore {
                token,
                limit,
                slots,
                ttl_ms,
                granted_ms,
            } => pipe
                .arg("s")
                .arg(now_ms)
                .arg(limit)
                .arg(slots)
                .arg(ttl_ms)
                .arg(token.secret_hex())
                .arg(granted_ms),
            LeaseOp::Renew { token, ttl_ms } => pipe
                .arg("r")
                .arg(now_ms)
                .arg(token.secret_hex())
                .arg(ttl_ms),
            LeaseOp::Release { token } => pipe.arg("x").arg(now_ms).arg(token.secret_hex()),
            LeaseOp::Count { .. } => pipe.arg("n").arg(now_ms),
            LeaseOp::Drop { .. } => pipe.arg("d").arg(now_ms),
        };
    };
    conn.eval_all(script, ops.len(), name, args).await
}
