//! The one wait behind the engine entry: plans with a strict limit are
//! decided in Redis (the jobs of one call together, one pipelined round
//! trip; see [`super::strict`] and the Redis side, `sync::strict`). On no
//! answer in time, `redis.on_redis_error` decides: `local` (this node's
//! view), `allow` or `deny`.

use super::ask::{Item, Mode, Pairs};
use super::strict::{StrictAnswer, StrictClient, StrictFailure, StrictJob};
use super::view::View;
use super::{Engine, Rules};
use crate::config::OnRedisError;
use crate::core::Act;
use crate::core::clock::Nanos;
use crate::core::decision::{Decision, DenyReason, Request};
use crate::limits::Table;

/// Strict mode as the engine uses it.
#[derive(Debug, Clone)]
pub struct Strict {
    /// The batching Redis client.
    pub client: StrictClient,
    /// What to answer without Redis.
    pub on_error: OnRedisError,
    /// Quotas and fixed windows at least this long (ns) are decided in
    /// Redis on a node's first check of a key (`redis.first_read_min_window`).
    pub first_read: Option<Nanos>,
}

/// A strict job and the request it was built from (decided locally under
/// the `local` fail mode).
pub(super) type Job<'k> = Option<(StrictJob, Request<'k>)>;

impl Engine {
    /// The strict job of each item whose key's plan has a strict limit
    /// (items charging their key's plan; none bringing its own limit).
    pub(super) fn strict_jobs<'k, P: Pairs + ?Sized>(
        &self,
        view: &View<'_>,
        items: &[Item<'k, P>],
        first_read: Option<Nanos>,
    ) -> Vec<Job<'k>> {
        items
            .iter()
            .map(|item| match item.key {
                Some(key) if item.limit.is_none() && item.mode != Mode::Refund => {
                    let req = self.plan_request(view.live(), key, item);
                    // A charge of 0 asks Redis as a peek does.
                    let act = item.mode.act(item.cost);
                    view.strict_job(&req, first_read)
                        .map(|job| (StrictJob { act, ..job }, req))
                }
                _ => None,
            })
            .collect()
    }

    /// Sends `jobs` to Redis together, then decides each on the rules in
    /// effect once Redis answered. `before` is the rules the jobs were
    /// built with, held by the caller meanwhile (so their table's address
    /// cannot be reused while it is compared).
    pub(super) async fn wait_strict(
        &self,
        strict: &Strict,
        before: &Rules,
        jobs: Vec<Job<'_>>,
    ) -> (View<'_>, Vec<Option<Decision>>) {
        let answers = futures_util::future::join_all(jobs.iter().map(|job| async move {
            match job {
                Some((job, _)) => Some(strict.client.check(job.clone()).await),
                None => None,
            }
        }))
        .await;
        let view = self.view();
        // A job's plan id is its table's: say it only if that table is
        // still the one in effect; otherwise the check counts under
        // `(none)`.
        let same = std::ptr::eq::<Table>(&before.table, view.table());
        let decided = jobs
            .iter()
            .zip(answers)
            .map(|(job, answer)| {
                let (job, req) = job.as_ref()?;
                Some(self.strict_answer(strict, &view, same, (job, req), answer?))
            })
            .collect();
        (view, decided)
    }

    /// The decision for one strict job, from Redis's answer or the fail
    /// mode.
    fn strict_answer(
        &self,
        strict: &Strict,
        view: &View<'_>,
        same: bool,
        (job, req): (&StrictJob, &Request<'_>),
        answer: Result<StrictAnswer, StrictFailure>,
    ) -> Decision {
        let plan = same.then_some(job.plan);
        match answer {
            // The table changed while Redis answered: Redis's verdict
            // stands (it charged, or not), without the numbers of the old
            // table.
            Ok((ok, before)) => view.strict_decision(job, ok, &before).unwrap_or(Decision {
                allowed: ok,
                reason: (!ok).then_some(DenyReason::Limited),
                retry_after: Some(if ok { 0 } else { 1_000_000 }),
                plan,
                ..Decision::UNLIMITED
            }),
            Err(e) => {
                tracing::debug!(error = %e, fail_mode = strict.on_error.as_str(), "strict check without Redis");
                self.metrics.strict_fail(strict.on_error.as_str());
                match (job.act, strict.on_error) {
                    // What was spent is charged here, whatever the fail
                    // mode: the journal takes it to Redis once it is back.
                    (Act::Force, _) => view.report(req),
                    (Act::Dry, OnRedisError::Local) => view.decide(req, false),
                    (_, OnRedisError::Local) => view.check(req),
                    (_, OnRedisError::Allow) => Decision {
                        plan,
                        ..Decision::UNLIMITED
                    },
                    (_, OnRedisError::Deny) => Decision {
                        allowed: false,
                        reason: Some(DenyReason::Unavailable),
                        retry_after: Some(1_000_000_000),
                        plan,
                        ..Decision::UNLIMITED
                    },
                }
            }
        }
    }
}

impl Engine {
    /// Brings this node's view of the key with keyed hash `key_hash` up to
    /// what every node spent, read from Redis in one round trip (a peek:
    /// nothing charged), for an operator's usage query. `Ok(Some(at))`:
    /// read at `at`; `Ok(None)`: no Redis (or the key is blocked), this
    /// node's view is all there is.
    pub async fn read_usage(&self, key_hash: u64) -> Result<Option<Nanos>, StrictFailure> {
        let Some(strict) = self.strict.get() else {
            return Ok(None);
        };
        let Some(job) = self.view().peek_job(key_hash) else {
            return Ok(None);
        };
        let (ok, before) = strict.client.check(job.clone()).await?;
        // Mirrored into this node's cells (a peek of an empty state makes
        // none). A table changed meanwhile leaves them as they were.
        let _ = self.view().strict_decision(&job, ok, &before);
        Ok(Some(job.now))
    }
}
