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
//! slow Redis never counts a check twice. A check whose answer was lost
//! (Redis killed, the connection dropped) is given up in Redis
//! (`strict_cancel.lua`, retried until Redis answers): a charge Redis made
//! is given back, and the check, marked, charges nothing if it arrives
//! later. Either way a check the fail mode answered ends up not charged in
//! Redis (with `local`, this node's own count of it is flushed as usual). A reply of any other shape than
//! the script's is a failure, answered by the fail mode like an error
//! (never read as a denial), and logged at most once every 10 s.

use std::time::Duration;

use tokio::sync::mpsc;

use std::sync::Arc;

use super::connection::{Lua, RedisConn, key};
use super::reply::{self, Throttle};
use crate::config::redis_url::Scrub;
use crate::core::Act;
use crate::engine::Engine;
pub use crate::engine::strict::StrictClient;
use crate::engine::strict::{StrictAsk, StrictFailure, StrictJob, StrictKind};
use crate::store::journal::CellKind;

/// The strict-mode script.
const SCRIPT: &str = include_str!("strict.lua");

/// Gives up a strict check whose answer was lost.
const CANCEL: &str = include_str!("strict_cancel.lua");

/// How long Redis remembers a strict check's marker (ms): a check's
/// cancellation must reach Redis within it (a minute: one small key per
/// strict check, so 60 000 of them at 1 000 strict checks a second).
const MARKER_TTL_MS: u64 = 60_000;

/// Checks whose answer was lost waiting to be given up, at most; beyond
/// (a long outage under heavy strict traffic), one is dropped and logged.
const MAX_CANCELS: usize = 65_536;

/// How often cancellations are tried while some wait.
const CANCEL_RETRY: Duration = Duration::from_millis(100);

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
    let cancel = Lua::new(CANCEL);
    let mut batch = Vec::with_capacity(BATCH);
    let mut log = Throttle::default();
    let node: u64 = rand::random();
    let mut seq = 0u64;
    // Checks whose answer was lost (Redis may or may not have charged
    // them), to be given up in Redis.
    let mut lost: Vec<(StrictJob, u64)> = Vec::new();
    loop {
        let got = if lost.is_empty() {
            rx.recv_many(&mut batch, BATCH).await
        } else {
            tokio::select! {
                got = rx.recv_many(&mut batch, BATCH) => got,
                () = tokio::time::sleep(CANCEL_RETRY) => usize::MAX,
            }
        };
        if got == 0 {
            break;
        }
        if !lost.is_empty() {
            give_up(&mut conn, &cancel, (&prefix, node), &mut lost, &mut log).await;
        }
        batch.retain(|a: &StrictAsk| !a.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let seqs: Vec<u64> = batch
            .iter()
            .map(|_| {
                seq += 1;
                seq
            })
            .collect();
        let answers = send(&mut conn, &script, (&prefix, node), &batch, &seqs).await;
        let mut failed = false;
        for ((ask, answer), seq) in batch.drain(..).zip(answers).zip(seqs) {
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
            let unknown = matches!(reply, Err(StrictFailure::Unavailable));
            if let Err(Ok((true, _))) = ask.reply.send(reply) {
                // Charged in Redis after the caller gave up: give it back.
                undo(&engine, &ask.job);
            }
            if unknown && ask.job.cost > 0 && ask.job.act != Act::Dry {
                // Answered by the fail mode; whether Redis charged it is
                // unknown: give it up there, so it ends up not charged.
                if lost.len() < MAX_CANCELS {
                    lost.push((ask.job, seq));
                } else {
                    log.warn(
                        "strict check: too many lost answers to give up",
                        &format_args!("one dropped (it may stay charged in Redis)"),
                    );
                }
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
    at: (&str, u64),
    jobs: &[StrictAsk],
    seqs: &[u64],
) -> Vec<redis::RedisResult<redis::Value>> {
    let jobs: Vec<&StrictJob> = jobs.iter().map(|a| &a.job).collect();
    run_jobs(conn, script, at, &jobs, seqs).await
}

/// The check's marker: this run's id and the check's sequence number, in
/// its key's slot.
fn marker(prefix: &str, node: u64, job: &StrictJob, seq: u64) -> String {
    format!("{prefix}{{{:016x}}}s:{node:016x}:{seq}", job.tag)
}

/// Runs `script` (the check, or its cancellation) for each job, whose
/// arguments are the same.
async fn run_jobs(
    conn: &mut RedisConn,
    script: &Lua,
    (prefix, node): (&str, u64),
    jobs: &[&StrictJob],
    seqs: &[u64],
) -> Vec<redis::RedisResult<redis::Value>> {
    let name = |i: usize, c: usize| {
        let job = jobs[i];
        let cell = &job.cells[c];
        key(
            prefix,
            job.tag,
            matches!(cell.kind, StrictKind::Bucket { .. }),
            cell.id,
        )
    };
    let args = |pipe: &mut redis::Pipeline, i: usize| {
        let job = jobs[i];
        pipe.arg(job.cells.len() + 1);
        for c in 0..job.cells.len() {
            pipe.arg(name(i, c));
        }
        pipe.arg(marker(prefix, node, job, seqs[i]));
        let mode = match job.act {
            Act::Commit => "c",
            Act::Dry => "p",
            Act::Force => "f",
        };
        pipe.arg(job.now_us())
            .arg(job.cost)
            .arg(MARKER_TTL_MS)
            .arg(mode);
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

/// Gives up, in Redis, checks whose answer was lost
/// (`strict_cancel.lua`): a charge Redis made is given back, and a check
/// still on its way will not charge. Those Redis did not answer for stay
/// in `lost`, tried again later.
async fn give_up(
    conn: &mut RedisConn,
    cancel: &Lua,
    at: (&str, u64),
    lost: &mut Vec<(StrictJob, u64)>,
    log: &mut Throttle,
) {
    let jobs: Vec<&StrictJob> = lost.iter().map(|(j, _)| j).collect();
    let seqs: Vec<u64> = lost.iter().map(|(_, s)| *s).collect();
    let answers = run_jobs(conn, cancel, at, &jobs, &seqs).await;
    let mut kept = Vec::new();
    let mut refunded = 0u64;
    for ((job, seq), answer) in lost.drain(..).zip(answers) {
        match answer {
            Ok(redis::Value::Int(1)) => refunded += 1,
            Ok(_) => {}
            Err(_) => kept.push((job, seq)),
        }
    }
    if refunded > 0 {
        log.warn(
            "strict checks whose answer was lost were given back in Redis",
            &format_args!("{refunded} checks"),
        );
    }
    if !kept.is_empty() {
        conn.reset();
    }
    *lost = kept;
}

/// Gives back a job's charge through the sync journal (the next flush
/// applies it to the same Redis keys).
fn undo(engine: &Engine, job: &StrictJob) {
    let store = engine.store();
    if job.cost == 0 || job.act == Act::Dry {
        return;
    }
    let cost = i64::try_from(job.cost).unwrap_or(i64::MAX);
    for c in &job.cells {
        let (kind, delta) = match c.kind {
            StrictKind::Bucket { emission_us, .. } => (
                CellKind::Bucket,
                -i64::try_from(emission_us.saturating_mul(1_000)).unwrap_or(i64::MAX),
            ),
            StrictKind::Counter {
                window_end,
                slack_ms,
                ..
            } => (
                CellKind::Counter {
                    window_end,
                    slack_ms,
                },
                -cost,
            ),
        };
        store.journal_undo(c.id, job.tag, kind, delta, job.now);
    }
}
