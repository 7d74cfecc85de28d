//! Strict mode's Redis side: checks of plans with a strict limit go to
//! Redis, batched.
//!
//! Callers hand a [`StrictJob`] to [`StrictClient::check`], which waits at
//! most `redis.strict_deadline` (default 20 ms). One task takes every job
//! waiting at that moment (up to 256) and sends them in one pipelined
//! round trip through `strict.lua`, so throughput grows with concurrency
//! instead of paying one round trip per check. A job whose caller has
//! already given up is not sent; one whose caller gave up while it was in
//! flight, and that Redis charged, is given back through the sync journal
//! (the fail mode has answered it: `local` counted it on this node), so a
//! slow Redis never counts a check twice. A reply of any other shape than
//! the script's is a failure, answered by the fail mode like an error
//! (never read as a denial), and logged at most once every 10 s.

use std::time::Duration;

use tokio::sync::mpsc;

use std::sync::Arc;

use super::connection::{Lua, RedisConn, key};
use super::reply::{self, Throttle};
use crate::config::redis_url::Scrub;
use crate::engine::Engine;
pub use crate::engine::strict::StrictClient;
use crate::engine::strict::{StrictAsk, StrictFailure, StrictJob, StrictKind};
use crate::store::journal::CellKind;

/// The strict-mode script.
const SCRIPT: &str = include_str!("strict.lua");

/// Jobs sent in one round trip.
const BATCH: usize = 256;

/// Jobs that may wait for the task; beyond, checks get the fail mode at
/// once instead of queueing behind a slow Redis.
const QUEUE: usize = 4_096;

/// How long the task waits for Redis to answer a round trip. Far longer
/// than any caller waits (`redis.strict_deadline`): only the answer says
/// whether Redis charged a job whose caller the fail mode has answered,
/// and so whether to give the charge back. A round trip given up sooner
/// would leave a stalled Redis (a long script, a slow fork, `DEBUG
/// SLEEP`) to charge its jobs afterwards, unseen: counted twice under
/// `local`, charged though refused under `deny`. Callers meanwhile get
/// the fail mode at their deadline, or at once when the queue is full.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

impl StrictClient {
    /// A client and the task that serves it (run it until shutdown).
    pub(crate) fn start(
        conn: RedisConn,
        engine: Arc<Engine>,
        key_prefix: String,
        deadline: Duration,
        scrub: Scrub,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (client, rx) = StrictClient::channel(QUEUE, deadline);
        let task = serve(conn, engine, key_prefix, rx, scrub);
        (client, task)
    }
}

async fn serve(
    mut conn: RedisConn,
    engine: Arc<Engine>,
    prefix: String,
    mut rx: mpsc::Receiver<StrictAsk>,
    scrub: Scrub,
) {
    let script = Lua::new(SCRIPT);
    let mut batch = Vec::with_capacity(BATCH);
    let mut log = Throttle::default();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        batch.retain(|a: &StrictAsk| !a.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let answers = send(&mut conn, &script, &prefix, &batch).await;
        let mut failed = false;
        for (ask, answer) in batch.drain(..).zip(answers) {
            let reply = match answer {
                Ok(v) => reply::strict(&v, ask.job.cells.len()).map_err(|e| {
                    // Not an answer: Redis failed, whatever the reply held.
                    log.warn("strict check failed: Redis's reply is not the script's", &e);
                    StrictFailure::Unavailable
                }),
                Err(e) => {
                    log.warn("strict check failed in Redis", &scrub.text(&e.to_string()));
                    failed = true;
                    Err(StrictFailure::Unavailable)
                }
            };
            if let Err(Ok((true, _))) = ask.reply.send(reply) {
                // Charged in Redis after the caller gave up: give it back.
                undo(&engine, &ask.job);
            }
        }
        if failed {
            // A fresh connection next time (a Cluster or Sentinel is
            // asked again after a failover).
            conn.reset();
        }
    }
}

/// One round trip (one per slot on a Cluster) for the jobs; each job's
/// cells share its key's hash tag, so one slot.
async fn send(
    conn: &mut RedisConn,
    script: &Lua,
    prefix: &str,
    jobs: &[StrictAsk],
) -> Vec<redis::RedisResult<redis::Value>> {
    let name = |i: usize, c: usize| {
        let job = &jobs[i].job;
        let cell = &job.cells[c];
        key(
            prefix,
            job.tag,
            matches!(cell.kind, StrictKind::Bucket { .. }),
            cell.id,
        )
    };
    let args = |pipe: &mut redis::Pipeline, i: usize| {
        let job = &jobs[i].job;
        pipe.arg(job.cells.len());
        for c in 0..job.cells.len() {
            pipe.arg(name(i, c));
        }
        pipe.arg(job.now_us()).arg(job.cost);
        for c in &job.cells {
            match c.kind {
                StrictKind::Bucket {
                    emission_us,
                    tau_us,
                } => pipe.arg("b").arg(emission_us).arg(tau_us),
                StrictKind::Counter { quota, ttl_ms, .. } => pipe.arg("c").arg(quota).arg(ttl_ms),
            };
        }
    };
    conn.eval_all(script, jobs.len(), |i| name(i, 0), args)
        .await
}

/// Gives back a job's charge through the sync journal (the next flush
/// applies it to the same Redis keys).
fn undo(engine: &Engine, job: &StrictJob) {
    let Some(journal) = engine.store().journal() else {
        return;
    };
    if job.cost == 0 {
        return;
    }
    let cost = i64::try_from(job.cost).unwrap_or(i64::MAX);
    for c in &job.cells {
        match c.kind {
            StrictKind::Bucket { emission_us, .. } => journal.add(
                c.id,
                job.tag,
                CellKind::Bucket,
                -i64::try_from(emission_us.saturating_mul(1_000)).unwrap_or(i64::MAX),
                job.now,
            ),
            StrictKind::Counter {
                window_end,
                slack_ms,
                ..
            } => journal.add(
                c.id,
                job.tag,
                CellKind::Counter {
                    window_end,
                    slack_ms,
                },
                -cost,
                job.now,
            ),
        }
    }
}
