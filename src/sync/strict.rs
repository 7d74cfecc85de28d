//! Strict mode's Redis side: checks of plans with a strict limit go to
//! Redis, batched.
//!
//! Callers hand a [`StrictJob`] to [`StrictClient::check`], which waits at
//! most `redis.strict_deadline` (default 20 ms). One task takes every job
//! waiting at that moment (up to [`BATCH`]) and sends them in one pipelined
//! round trip through `strict.lua`, so throughput grows with concurrency
//! instead of paying one round trip per check. A job whose caller has
//! already given up is not sent, so a late Redis never charges a check
//! the fail mode already answered (one sent just before its caller gave
//! up may still be charged: the fail mode's answer and Redis's can differ
//! for it).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{ErrorKind, ServerErrorKind};
use tokio::sync::{mpsc, oneshot};

use crate::core::strict::{StrictJob, StrictKind};

/// The strict-mode script.
const SCRIPT: &str = include_str!("strict.lua");

/// Jobs sent in one round trip.
const BATCH: usize = 256;

/// Jobs that may wait for the task; beyond, checks get the fail mode at
/// once instead of queueing behind a slow Redis.
const QUEUE: usize = 4_096;

/// Redis's answer to one job: whether it charged, and each cell's state
/// before the check.
pub type StrictAnswer = (bool, Vec<u64>);

/// Why a strict check got no answer from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StrictFailure {
    /// No answer within the deadline.
    #[error("redis did not answer within the strict deadline")]
    Timeout,
    /// Redis answered with an error, or the queue was full.
    #[error("redis is unavailable")]
    Unavailable,
}

struct Ask {
    job: StrictJob,
    reply: oneshot::Sender<Result<StrictAnswer, StrictFailure>>,
}

/// A handle for checking strict jobs; cheap to clone.
#[derive(Debug, Clone)]
pub struct StrictClient {
    tx: mpsc::Sender<Ask>,
    deadline: Duration,
}

impl StrictClient {
    /// A client and the task that serves it (run it until shutdown).
    pub(crate) fn new(
        conn: ConnectionManager,
        key_prefix: String,
        deadline: Duration,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = serve(conn, key_prefix, rx);
        (Self { tx, deadline }, task)
    }

    /// Checks `job` in Redis, waiting at most the deadline.
    pub async fn check(&self, job: StrictJob) -> Result<StrictAnswer, StrictFailure> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Ask { job, reply })
            .map_err(|_| StrictFailure::Unavailable)?;
        match tokio::time::timeout(self.deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StrictFailure::Unavailable),
            Err(_) => Err(StrictFailure::Timeout),
        }
    }
}

async fn serve(mut conn: ConnectionManager, prefix: String, mut rx: mpsc::Receiver<Ask>) {
    let sha = redis::Script::new(SCRIPT).get_hash().to_owned();
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        batch.retain(|a: &Ask| !a.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let mut result = send(&mut conn, &sha, &prefix, &batch).await;
        if matches!(&result, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
            let loaded: redis::RedisResult<String> = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(SCRIPT)
                .query_async(&mut conn)
                .await;
            result = match loaded {
                Ok(_) => send(&mut conn, &sha, &prefix, &batch).await,
                Err(e) => Err(e),
            };
        }
        match result {
            Ok(answers) => {
                for (ask, answer) in batch.drain(..).zip(answers) {
                    let _ = ask.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, checks = batch.len(), "strict check failed in Redis");
                for ask in batch.drain(..) {
                    let _ = ask.reply.send(Err(StrictFailure::Unavailable));
                }
            }
        }
    }
}

/// One pipelined round trip for every job of the batch. A missing script
/// fails the whole batch (the caller loads it and sends again).
async fn send(
    conn: &mut ConnectionManager,
    sha: &str,
    prefix: &str,
    batch: &[Ask],
) -> redis::RedisResult<Vec<Result<StrictAnswer, StrictFailure>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for ask in batch {
        let job = &ask.job;
        let cmd = pipe.cmd("EVALSHA").arg(sha).arg(job.cells.len());
        for c in &job.cells {
            let kind = if matches!(c.kind, StrictKind::Bucket { .. }) {
                'b'
            } else {
                'c'
            };
            cmd.arg(format!("{prefix}{kind}:{:016x}", c.id));
        }
        cmd.arg(job.now_us()).arg(job.cost);
        for c in &job.cells {
            match c.kind {
                StrictKind::Bucket {
                    emission_us,
                    tau_us,
                } => cmd.arg("b").arg(emission_us).arg(tau_us),
                StrictKind::Counter { quota, expire_ms } => cmd.arg("c").arg(quota).arg(expire_ms),
            };
        }
    }
    let replies: Vec<redis::RedisResult<Vec<i64>>> = pipe.query_async(conn).await?;
    let mut out = Vec::with_capacity(replies.len());
    for reply in replies {
        match reply {
            Ok(values) => {
                let ok = values.first().is_some_and(|v| *v == 1);
                let states = values
                    .iter()
                    .skip(1)
                    .map(|v| u64::try_from(*v).unwrap_or(0))
                    .collect();
                out.push(Ok((ok, states)));
            }
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "strict check refused by Redis");
                out.push(Err(StrictFailure::Unavailable));
            }
        }
    }
    Ok(out)
}
