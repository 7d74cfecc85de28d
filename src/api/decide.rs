//! Deciding one check when strict mode may be involved: a plan with a
//! strict limit goes to Redis (see [`crate::sync::strict`]); on no answer
//! in time, `redis.on_redis_error` decides: `local` (this node's view),
//! `allow` or `deny`. Every other check is the engine's synchronous
//! [`Limiter::check`].

use std::sync::Arc;

use crate::config::OnRedisError;
use crate::core::{self, Decision, DenyReason, Limiter, Snapshot};
use crate::limits::Table;
use crate::sync::strict::StrictClient;
use crate::telemetry::Metrics;

/// Strict mode as the front doors use it.
#[derive(Debug, Clone)]
pub struct Strict {
    /// The batching Redis client.
    pub client: StrictClient,
    /// What to answer without Redis.
    pub on_error: OnRedisError,
    /// Where fail-mode answers are counted.
    pub metrics: Arc<Metrics>,
}

/// Decides `req`; returns the decision and the snapshot of the table it
/// was made against, which the answer must be rendered with (its policy
/// names a plan of that table).
pub async fn decide<'l>(
    limiter: &'l Limiter,
    strict: Option<&Strict>,
    req: &core::Request<'_>,
) -> (Decision, Snapshot<'l>) {
    let snap = limiter.snapshot();
    let job = match strict {
        Some(strict) if snap.table().has_strict() => snap.strict_job(req).map(|j| (strict, j)),
        _ => None,
    };
    let Some((strict, job)) = job else {
        let d = snap.check(req);
        return (d, snap);
    };
    // The snapshot is not held across the wait: a job carries what it
    // needs, and the answer is read against the table of its time.
    let before = snap.table_arc();
    drop(snap);
    let answer = strict.client.check(job.clone()).await;
    let snap = limiter.snapshot();
    // The job's plan id is its table's: say it only if that table is
    // still the one in effect (held meanwhile, so its address cannot be
    // reused); otherwise the check counts under `(none)`.
    let same = std::ptr::eq::<Table>(&*before, snap.table());
    drop(before);
    let plan = same.then_some(job.plan);
    let d = match answer {
        // The table changed while Redis answered: Redis's verdict stands
        // (it charged, or not), without the numbers of the old table.
        Ok((ok, before)) => snap.strict_decision(&job, ok, &before).unwrap_or(Decision {
            allowed: ok,
            reason: if ok {
                DenyReason::None
            } else {
                DenyReason::Limited
            },
            retry_after: Some(if ok { 0 } else { 1_000_000 }),
            plan,
            ..Decision::UNLIMITED
        }),
        Err(e) => {
            tracing::debug!(error = %e, fail_mode = strict.on_error.as_str(), "strict check without Redis");
            strict.metrics.strict_fail(strict.on_error.as_str());
            match strict.on_error {
                OnRedisError::Local => snap.check(req),
                OnRedisError::Allow => Decision {
                    plan,
                    ..Decision::UNLIMITED
                },
                OnRedisError::Deny => Decision {
                    allowed: false,
                    reason: DenyReason::Unavailable,
                    retry_after: Some(1_000_000_000),
                    plan,
                    ..Decision::UNLIMITED
                },
            }
        }
    };
    (d, snap)
}
