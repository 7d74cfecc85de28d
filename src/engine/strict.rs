//! The engine's side of strict mode: what a check of a plan with a strict
//! limit asks Redis ([`StrictJob`]), and how Redis's answer becomes a
//! [`Decision`] and refreshes this node's cells. The Redis side is
//! [`crate::sync::strict`].
//!
//! A plan with a strict limit is decided in Redis as a whole, by one
//! atomic script over every limit of the plan (all charged or none), so
//! it is exact across nodes. Redis holds buckets as arrival times in
//! microseconds: emission is rounded up and the tolerance down to whole
//! microseconds, so Redis is never more generous than the engine. The
//! node's own cells mirror the last answer, so the `local` fail mode
//! decides on the freshest state it knows.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::view::{Reported, Seen, View};
use crate::core::Act;
use crate::core::clock::{NANOS_PER_SEC, Nanos};
use crate::core::decision::{Decision, DenyReason, PlanId, Request};
use crate::core::gcra::{self, Verdict};
use crate::core::{counter, quota, window};
use crate::limits::{Assigned, Limit, LimitKind};

/// Redis's answer to one job: whether it charged, and each cell's state
/// before the check.
pub type StrictAnswer = (bool, Vec<u64>);

/// Why a strict check got no answer from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StrictFailure {
    /// No answer within the deadline.
    #[error("redis did not answer within the strict deadline")]
    Timeout,
    /// Redis answered with an error, or with a reply that is not the
    /// script's, or the queue was full.
    #[error("redis is unavailable")]
    Unavailable,
}

/// One strict job queued for the Redis task, with where its answer goes.
#[derive(Debug)]
pub struct StrictAsk {
    /// The job.
    pub job: StrictJob,
    /// Where Redis's answer goes (closed: the caller gave up).
    pub reply: oneshot::Sender<Result<StrictAnswer, StrictFailure>>,
}

/// A handle for checking strict jobs; cheap to clone.
#[derive(Debug, Clone)]
pub struct StrictClient {
    tx: mpsc::Sender<StrictAsk>,
    deadline: Duration,
}

impl StrictClient {
    /// A client whose jobs queue (at most `queue` of them) for whoever
    /// serves the receiver (the Redis sync task), each waiting at most
    /// `deadline` for its answer.
    pub fn channel(queue: usize, deadline: Duration) -> (Self, mpsc::Receiver<StrictAsk>) {
        let (tx, rx) = mpsc::channel(queue);
        (Self { tx, deadline }, rx)
    }

    /// Checks `job` in Redis, waiting at most the deadline.
    pub async fn check(&self, job: StrictJob) -> Result<StrictAnswer, StrictFailure> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(StrictAsk { job, reply })
            .map_err(|_| StrictFailure::Unavailable)?;
        let mut answer = answer;
        match tokio::time::timeout(self.deadline, &mut answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StrictFailure::Unavailable),
            Err(_) => {
                // Closing first settles a race with a reply arriving now:
                // either it is here (and used), or the task's send fails
                // and it gives the charge back.
                answer.close();
                answer.try_recv().unwrap_or(Err(StrictFailure::Timeout))
            }
        }
    }
}

/// A window counter's time to live in Redis: the rest of its window plus
/// its slack for clock skew ([`window::Span::slack`]).
fn ttl_ms(span: &window::Span, now: Nanos) -> u64 {
    span.end.saturating_sub(now) / 1_000_000 + u64::from(span.slack_ms())
}

/// One limit of a strict check, as the Redis script needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrictCell {
    /// The key's cell id (the Redis key is named after it).
    pub id: u64,
    /// The limit's uid, to tell whether the table changed under the job.
    pub uid: u64,
    /// What to check.
    pub kind: StrictKind,
}

/// How one strict cell is checked in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictKind {
    /// A token bucket: the cost's emission and the tolerance, in µs.
    Bucket {
        /// `emission(cost)`, rounded up to µs.
        emission_us: u64,
        /// `tau`, rounded down to µs.
        tau_us: u64,
    },
    /// A window counter.
    Counter {
        /// Units allowed in the window.
        quota: u64,
        /// End of the window (Unix ns).
        window_end: Nanos,
        /// How long the Redis key must live: the rest of the window plus
        /// slack (a duration, so clock offsets cannot cut it short).
        ttl_ms: u64,
        /// The slack alone ([`window::Span::slack`]), in ms.
        slack_ms: u32,
    },
}

/// A strict check to send to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictJob {
    /// The key's plan in the table the job was built from.
    pub plan: PlanId,
    /// The key its cells are filed under (the Redis Cluster hash tag).
    pub tag: u64,
    /// The plan's limits, in order.
    pub cells: Vec<StrictCell>,
    /// Units asked for (0: report only).
    pub cost: u64,
    /// A charge ([`Act::Commit`]), a peek ([`Act::Dry`]: read, never
    /// charged) or a report ([`Act::Force`]: charged whatever the cells
    /// hold).
    pub act: Act,
    /// The time of the check.
    pub now: Nanos,
}

impl StrictJob {
    /// The time of the check in µs, as Redis keeps arrival times.
    pub fn now_us(&self) -> u64 {
        self.now / 1_000
    }
}

impl View<'_> {
    /// The strict job for `req`, when its key's plan has a strict limit,
    /// or (`first_read`: the shortest window read so) a quota or fixed
    /// window at least that long whose cell this node does not track yet
    /// (and the store has room for it): the first check of a key on a node
    /// is decided in Redis, so a node that just started does not spend
    /// what the others already did.
    pub fn strict_job(&self, req: &Request<'_>, first_read: Option<Nanos>) -> Option<StrictJob> {
        let (assigned, cell_key, now) = self.resolve(req);
        let Assigned::Plan(plan) = assigned else {
            return None;
        };
        let limits = &self.table().plan(plan).limits;
        let unseen = |min: Nanos| {
            limits.iter().any(|l| {
                let long = match &l.kind {
                    LimitKind::Rate(_) => false,
                    LimitKind::Quota(q) => {
                        let span = q.window.span(now);
                        span.end.saturating_sub(span.start) >= min
                    }
                    LimitKind::Window(w) => w.period >= min,
                };
                long && !self.store().tracks(self.cell_id(l, cell_key, now), false)
            })
        };
        // With the store full, a new key may get no cell of its own (it
        // shares an overflow cell): it would be read from Redis on every
        // check. First reads wait until there is room again.
        let first = first_read.is_some_and(|min| !self.store().is_full() && unseen(min));
        if !limits.iter().any(|l| l.strict) && !first {
            return None;
        }
        Some(StrictJob {
            plan,
            tag: cell_key,
            cells: self.strict_cells(limits, cell_key, req.cost, now),
            cost: req.cost,
            act: Act::Commit,
            now,
        })
    }

    /// A peek in Redis at every limit of the plan of the key with keyed
    /// hash `key_hash` (its own cells: no scope), charging nothing: what
    /// every node spent, as of their last flushes. `None` while the key
    /// is blocked.
    pub fn peek_job(&self, key_hash: u64) -> Option<StrictJob> {
        let now = self.engine.clock.now();
        let Assigned::Plan(plan) = self.table().assign(key_hash, now).0 else {
            return None;
        };
        let limits = &self.table().plan(plan).limits;
        Some(StrictJob {
            plan,
            tag: key_hash,
            cells: self.strict_cells(limits, key_hash, 0, now),
            cost: 0,
            act: Act::Dry,
            now,
        })
    }

    /// The cells of a check of `cost` against `limits` for the key whose
    /// cells are filed under `cell_key`, at `now`, as the script needs
    /// them.
    fn strict_cells(
        &self,
        limits: &[Limit],
        cell_key: u64,
        cost: u64,
        now: Nanos,
    ) -> Vec<StrictCell> {
        limits
            .iter()
            .map(|l| {
                let id = self.cell_id(l, cell_key, now);
                let kind = match &l.kind {
                    LimitKind::Rate(r) => StrictKind::Bucket {
                        emission_us: r.emission(cost).div_ceil(1_000),
                        tau_us: r.tau() / 1_000,
                    },
                    LimitKind::Quota(q) => {
                        let span = q.window.span(now);
                        StrictKind::Counter {
                            quota: q.quota.get(),
                            window_end: span.end,
                            ttl_ms: ttl_ms(&span, now),
                            slack_ms: span.slack_ms(),
                        }
                    }
                    LimitKind::Window(w) => {
                        let span = window::epoch_span(now, w.period);
                        StrictKind::Counter {
                            quota: w.limit,
                            window_end: span.end,
                            ttl_ms: ttl_ms(&span, now),
                            slack_ms: span.slack_ms(),
                        }
                    }
                };
                StrictCell {
                    id,
                    uid: l.uid,
                    kind,
                }
            })
            .collect()
    }

    /// The decision for a job Redis answered: `ok` is whether it charged,
    /// `before` each cell's state before the check (arrival time in µs, or
    /// count). Mirrors the state after the check into this node's cells.
    /// `None` if the table changed under the job (the caller decides
    /// again).
    pub fn strict_decision(&self, job: &StrictJob, ok: bool, before: &[u64]) -> Option<Decision> {
        let limits = &self.table().plan(job.plan).limits;
        let same = limits.len() == job.cells.len()
            && before.len() == job.cells.len()
            && limits.iter().zip(&job.cells).all(|(l, c)| l.uid == c.uid);
        if !same {
            return None;
        }
        let charge = ok && job.cost > 0 && job.act != Act::Dry;
        let verdicts = limits
            .iter()
            .zip(&job.cells)
            .zip(before)
            .map(|((limit, cell), state)| self.strict_verdict(limit, cell, *state, job, charge));
        if job.act == Act::Force {
            // A report is never refused: where each limit stands after it.
            let mut reported = Reported::default();
            for (i, v) in verdicts.enumerate() {
                reported.note(i, v);
            }
            return Some(reported.answer(job.plan, limits));
        }
        let mut seen = Seen::default();
        for (i, v) in verdicts.enumerate() {
            // Redis decided; the engine's arithmetic (in ns, where Redis
            // rounds to µs) only fills in the numbers.
            let v = match (ok, v.allowed) {
                (true, false) => Verdict {
                    allowed: true,
                    remaining: 0,
                    retry_after: Some(0),
                    excess: 0,
                    ..v
                },
                (false, true) if v.remaining < job.cost.max(1) => Verdict {
                    allowed: false,
                    retry_after: Some(NANOS_PER_SEC / 1_000),
                    excess: job.cost,
                    ..v
                },
                _ => v,
            };
            seen.note(i, v);
        }
        let mut d = seen.answer(job.plan, limits);
        if !ok && d.allowed {
            // Redis refused, yet by the engine's rounding every limit had
            // room: refuse, with a short wait.
            d.allowed = false;
            d.reason = Some(DenyReason::Limited);
            d.retry_after = Some(NANOS_PER_SEC / 1_000);
        }
        Some(d)
    }

    /// One limit's verdict from its `state` in Redis before the job (a
    /// report's: where it stands after), this node's cell brought up to
    /// the state after (`charge`: the job was charged). A peek of an
    /// empty state makes no cell: a flood of peeks of random keys must not
    /// take the store.
    fn strict_verdict(
        &self,
        limit: &Limit,
        cell: &StrictCell,
        state: u64,
        job: &StrictJob,
        charge: bool,
    ) -> Verdict {
        let now = job.now;
        let force = job.act == Act::Force;
        let (decide, cap, span) = match &limit.kind {
            LimitKind::Rate(r) => {
                let tat = state.saturating_mul(1_000);
                let (v, next) = gcra::decide(r, tat, now, job.cost);
                let after = match (charge, force) {
                    (false, _) => tat,
                    (true, true) => gcra::forced(r, tat, now, job.cost),
                    (true, false) => next.unwrap_or(tat),
                };
                if job.act != Act::Dry || tat > now {
                    self.store().mirror_bucket(cell.id, after, now);
                }
                return if force { gcra::after(r, after, now) } else { v };
            }
            LimitKind::Quota(q) => {
                let span = q.window.span(now);
                (
                    quota::decide(q, state, span, now, job.cost).0,
                    q.quota.get(),
                    span,
                )
            }
            LimitKind::Window(w) => {
                let span = window::epoch_span(now, w.period);
                (
                    counter::decide(w, state, span, now, job.cost).0,
                    w.limit,
                    span,
                )
            }
        };
        let after = if charge {
            state.saturating_add(job.cost)
        } else {
            state
        };
        if job.act != Act::Dry || state > 0 {
            self.store().mirror_counter(cell.id, span.end, after, now);
        }
        if force {
            quota::counted(cap, after, span.end.saturating_sub(now))
        } else {
            decide
        }
    }
}
