//! Concurrency limits: acquiring, renewing and releasing leases for the
//! front doors (`Acquire`, `Renew`, `Release`, `Hold`), and the operators'
//! view of them (usage, reset).
//!
//! A key's leases are filed under its cell: the keyed hash of the key
//! mixed with the concurrency limit's *name* id, so a key moved to another
//! plan keeps its leases counted against a limit of the same name.
//! Without Redis they live in this node's lease table
//! ([`crate::store::leases`]). With Redis they live there, one sorted set
//! per cell changed by one atomic script, exact across nodes
//! ([`LeaseClient`], served by `sync::leases`); this node mirrors those it
//! granted. When Redis cannot answer within `redis.strict_deadline`,
//! `redis.on_redis_error` decides an acquire: `local` counts this node's
//! leases against the limit, `allow` grants (a lease of this node's),
//! `deny` refuses with `DENY_REASON_UNAVAILABLE`.
//!
//! Acquiring also charges the plan's rate limits and quotas one request
//! (a new connection is a request). The slots are taken first (a lease is
//! exact to give back); then the plan decides the request as a check
//! would; if it denies, the lease is released and nothing was charged.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Engine;
use super::ask::{Basis, Call, Item};
use super::view::blocked;
use crate::config::OnRedisError;
use crate::core::clock::{NANOS_PER_MS, Nanos};
use crate::core::decision::{Decision, DenyReason};
use crate::core::hash::mix;
use crate::limits::{Assigned, Concurrency, Limit};
use crate::metrics::Api;
use crate::store::leases::{Acquired, Ask, LeaseError, Token};

/// One lease operation for Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    /// Take `slots` of `limit` for `ttl_ms` under `token`.
    Acquire {
        /// The new lease's token (its cell names the Redis key).
        token: Token,
        /// The limit's slots.
        limit: u32,
        /// Slots wanted.
        slots: u32,
        /// Time to live (ms).
        ttl_ms: u64,
    },
    /// Put back lease `token` that this node holds and Redis lost
    /// (granted as [`LeaseOp::Acquire`] would, unless an operator freed
    /// the cell's leases within the hour).
    Restore {
        /// The lease's token.
        token: Token,
        /// The limit's slots.
        limit: u32,
        /// Its slots.
        slots: u32,
        /// Time to live (ms).
        ttl_ms: u64,
        /// When it was granted (Unix ms): an operator's reset since then
        /// keeps it out.
        granted_ms: u64,
    },
    /// Extend `token` by `ttl_ms` from now (0: its own time to live).
    Renew {
        /// The lease.
        token: Token,
        /// Time to live (ms), 0 for the lease's own.
        ttl_ms: u64,
    },
    /// Free `token`.
    Release {
        /// The lease.
        token: Token,
    },
    /// The leases of a cell.
    Count {
        /// The cell.
        cell: u64,
    },
    /// Free every lease of a cell.
    Drop {
        /// The cell.
        cell: u64,
    },
}

/// Redis's answer to a [`LeaseOp`], and how many leases of the cell it
/// found expired (timed out instead of being released).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReply {
    /// The answer.
    pub answer: LeaseAnswer,
    /// Leases pruned as expired.
    pub pruned: u64,
}

/// What Redis said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// Acquired; slots in use now, expiry (Unix ms).
    Granted {
        /// Slots in use, the new lease's included.
        in_use: u64,
        /// Expiry (Unix ms).
        expires_ms: u64,
    },
    /// Not enough free slots.
    Denied {
        /// Slots in use.
        in_use: u64,
        /// How long until enough expire (ms).
        wait_ms: u64,
    },
    /// Renewed until (Unix ms).
    Renewed(u64),
    /// No such lease.
    Gone,
    /// Leases removed (release, drop).
    Removed(u64),
    /// Slots in use and each lease's (slots, expiry ms), soonest first.
    Counted(u64, Vec<(u32, u64)>),
}

/// Why Redis gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseFailure {
    /// Not within `redis.strict_deadline`, or Redis failed.
    #[error("redis did not answer in time")]
    Unavailable,
}

/// One operation queued for the Redis task, with where its answer goes.
#[derive(Debug)]
pub struct LeaseCall {
    /// The operation.
    pub op: LeaseOp,
    /// Where the answer goes (closed: the caller gave up).
    pub reply: oneshot::Sender<Result<LeaseReply, LeaseFailure>>,
}

/// A handle for lease operations in Redis; cheap to clone.
#[derive(Debug, Clone)]
pub struct LeaseClient {
    tx: mpsc::Sender<LeaseCall>,
    forget: mpsc::Sender<Token>,
    deadline: Duration,
    on_error: OnRedisError,
}

/// What the Redis task serves: operations with callers, and releases
/// nobody waits for.
#[derive(Debug)]
pub struct LeaseQueues {
    /// Operations, each with where its answer goes.
    pub calls: mpsc::Receiver<LeaseCall>,
    /// Releases to make without a caller (a Hold stream dropped, a
    /// release Redis did not answer in time), until Redis takes them.
    pub forgotten: mpsc::Receiver<Token>,
}

impl LeaseClient {
    /// A client whose operations queue (at most `queue`, and as many
    /// releases without a caller) for whoever serves the receivers, each
    /// waiting at most `deadline`; `on_error` decides acquires Redis does
    /// not answer.
    pub fn channel(
        queue: usize,
        deadline: Duration,
        on_error: OnRedisError,
    ) -> (Self, LeaseQueues) {
        let (tx, calls) = mpsc::channel(queue);
        let (forget, forgotten) = mpsc::channel(queue);
        (
            Self {
                tx,
                forget,
                deadline,
                on_error,
            },
            LeaseQueues { calls, forgotten },
        )
    }

    /// Releases `token` in Redis without waiting (retried until Redis
    /// takes it); false if the queue is full (the lease then expires at
    /// its time to live).
    pub fn forget(&self, token: Token) -> bool {
        self.forget.try_send(token).is_ok()
    }

    /// Runs `op` in Redis, waiting at most the deadline. An acquire
    /// whose grant arrives when nobody waits for it any more (the
    /// deadline passed, or the caller went away) is released.
    pub async fn call(&self, op: LeaseOp) -> Result<LeaseReply, LeaseFailure> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(LeaseCall { op, reply })
            .map_err(|_| LeaseFailure::Unavailable)?;
        let mut waiting = Waiting {
            answer: Some(answer),
            op,
            client: self,
        };
        let Some(answer) = waiting.answer.as_mut() else {
            return Err(LeaseFailure::Unavailable);
        };
        match tokio::time::timeout(self.deadline, answer).await {
            Ok(Ok(result)) => {
                waiting.answer = None;
                result
            }
            _ => Err(LeaseFailure::Unavailable),
        }
    }
}

/// An answer still to come: dropped unread (a deadline, a caller gone),
/// a grant in it is released, and one that comes later is released by
/// the Redis task (whose reply then finds no receiver).
struct Waiting<'c> {
    answer: Option<oneshot::Receiver<Result<LeaseReply, LeaseFailure>>>,
    op: LeaseOp,
    client: &'c LeaseClient,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut answer) = self.answer.take() else {
            return;
        };
        answer.close();
        if let (
            Ok(Ok(LeaseReply {
                answer: LeaseAnswer::Granted { .. },
                ..
            })),
            LeaseOp::Acquire { token, .. },
        ) = (answer.try_recv(), self.op)
        {
            self.client.forget(token);
        }
    }
}

/// What a door asks to acquire.
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'k> {
    /// The API key.
    pub key: &'k str,
    /// Slots (at least 1).
    pub slots: u64,
    /// Time to live, if the caller gave one (the door checked its range).
    pub ttl: Option<Nanos>,
}

/// The answer to an acquire, as the doors render it.
#[derive(Debug, Clone, Default)]
pub struct Acquisition {
    /// Whether the lease was granted.
    pub granted: bool,
    /// The lease, when granted under a concurrency limit.
    pub token: Option<Token>,
    /// The concurrency limit (None: the plan has none).
    pub concurrency: Option<Arc<Concurrency>>,
    /// Slots in use (this lease's included when granted).
    pub in_use: u64,
    /// When the lease expires unless renewed (Unix ns).
    pub expires: Option<Nanos>,
    /// Its time to live.
    pub ttl: Nanos,
    /// When denied: how long until it could pass; `None`: never.
    pub retry_after: Option<Nanos>,
    /// Why it was denied.
    pub reason: Option<DenyReason>,
    /// The plan's decision on the request's rate limits and quotas (not
    /// made when the slots were refused first), and its deciding limit.
    pub rate: Option<(Decision, Option<Limit>)>,
    /// The deciding policy (`plan/limit`).
    pub policy: String,
    /// A note for the caller (why a denial that is not a limit's).
    pub note: &'static str,
}

/// Why a lease could not be renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    /// Released, expired, freed by an operator, or never granted.
    #[error("no such lease: it was released, expired or freed (acquire again)")]
    NotFound,
    /// Redis could not say, and this node does not hold it.
    #[error("redis did not answer in time; renew again")]
    Unavailable,
}

/// A renewal's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// When the lease now expires (Unix ns).
    pub expires: Nanos,
    /// Whether Redis (or, without Redis, this node's table) renewed it;
    /// false: only this node's record, Redis did not answer.
    pub confirmed: bool,
}

/// Where a key stands against its concurrency limit (for operators).
#[derive(Debug, Clone)]
pub struct LeaseUsage {
    /// The limit.
    pub concurrency: Arc<Concurrency>,
    /// Slots held.
    pub in_use: u64,
    /// Each lease's slots and expiry (Unix ns), soonest first.
    pub leases: Vec<(u32, Nanos)>,
}

/// The cell a key's leases of `c` are filed under.
pub fn lease_cell(c: &Concurrency, key_hash: u64) -> u64 {
    mix(key_hash, c.uid)
}

fn ms(ns: Nanos) -> u64 {
    ns / NANOS_PER_MS
}

impl Engine {
    /// Uses Redis for leases from now on (only the first call counts).
    pub fn set_lease_client(&self, client: LeaseClient) {
        let _ = self.lease_client.set(client);
    }

    /// The concurrency limit of the plan the key with hash `key_hash` is
    /// on now (a blocked key: of the plan its config gives it).
    fn concurrency_of(&self, key_hash: u64) -> Option<Arc<Concurrency>> {
        let view = self.view();
        view.table()
            .home_plan(key_hash, self.now())
            .concurrency
            .clone()
    }

    /// Acquires a lease for `ask` (see the module docs).
    pub async fn acquire(&self, ask: LeaseAsk<'_>) -> Acquisition {
        let key_hash = self.hasher.key_hash(ask.key.as_bytes());
        let (concurrency, plan) = {
            let view = self.view();
            let table = view.table();
            let now = self.now();
            match table.assign(key_hash, now).0 {
                Assigned::Plan(id) => {
                    let plan = table.plan(id);
                    (
                        plan.concurrency.clone(),
                        Arc::<str>::from(plan.name.as_str()),
                    )
                }
                Assigned::Blocked { until } => {
                    let d = blocked(until, now);
                    let out = Acquisition {
                        retry_after: d.retry_after,
                        reason: d.reason,
                        note: "blocked by an operator",
                        ..Acquisition::default()
                    };
                    return self.counted("(blocked)", out);
                }
            }
        };
        let Some(c) = concurrency else {
            // Nothing to hold: the request's limits alone decide.
            let mut out = self.charge_request(ask.key, Acquisition::default()).await;
            out.granted = out.reason.is_none();
            return self.counted(&plan, out);
        };
        let out = self.take_slots(&c, key_hash, &plan, ask).await;
        let out = if out.granted {
            // Should the caller go away while the plan decides (a strict
            // plan waits for Redis), the slots are freed all the same.
            let mut taken = LeaseGuard::new(self, out.token);
            let out = self.charge_request(ask.key, out).await;
            let token = taken.disarm();
            if out.reason.is_some()
                && let Some(token) = token
            {
                self.release(token).await;
                // The request's own slots are not in use after all.
                return self.counted(
                    &plan,
                    Acquisition {
                        in_use: out.in_use.saturating_sub(ask.slots),
                        token: None,
                        ..out
                    },
                );
            }
            Acquisition {
                granted: true,
                token,
                ..out
            }
        } else {
            out
        };
        self.counted(&plan, out)
    }

    /// Counts an acquire's answer, and returns it.
    fn counted(&self, plan: &str, out: Acquisition) -> Acquisition {
        let result = if out.granted { "granted" } else { "denied" };
        self.metrics.lease_acquired(plan, result);
        out
    }

    /// Decides the acquire's request (cost 1) against the plan's rate
    /// limits and quotas, as a check; a denial sets `out`'s reason.
    async fn charge_request(&self, key: &str, mut out: Acquisition) -> Acquisition {
        let decided = self
            .decide(
                Call::keys(Api::Lease),
                |live, _| {
                    Ok::<_, super::NoPlans>((
                        smallvec::smallvec![Item::key(key, 1)],
                        live.response_headers,
                    ))
                },
                |answer, _| {
                    answer.outcomes.first().map(|o| {
                        let limit = match o.basis {
                            Basis::Plan(l) => l.cloned(),
                            _ => None,
                        };
                        (o.decision, limit)
                    })
                },
            )
            .await;
        let Ok(Some((d, limit))) = decided else {
            return out;
        };
        if !d.allowed {
            out.reason = d.reason;
            out.retry_after = d.retry_after;
            out.policy = limit.as_ref().map(|l| l.policy.clone()).unwrap_or_default();
            out.granted = false;
        }
        out.rate = Some((d, limit));
        out
    }

    /// Takes the slots: in Redis when it is configured (the fail mode
    /// deciding without it), else in this node's table.
    async fn take_slots(
        &self,
        c: &Arc<Concurrency>,
        key_hash: u64,
        plan: &Arc<str>,
        ask: LeaseAsk<'_>,
    ) -> Acquisition {
        let ttl = ask.ttl.unwrap_or(c.lease_ttl);
        let base = Acquisition {
            concurrency: Some(Arc::clone(c)),
            ttl,
            policy: c.policy.clone(),
            ..Acquisition::default()
        };
        let slots = match u32::try_from(ask.slots) {
            Ok(slots) if slots <= c.slots => slots,
            _ => return too_many(base),
        };
        let local = Ask {
            cell: lease_cell(c, key_hash),
            limit: c.slots,
            slots,
            ttl,
            plan: Arc::clone(plan),
            over: false,
        };
        let now = self.now();
        let Some(client) = self.lease_client.get() else {
            return self.take_here(local, base, now);
        };
        if self.leases.held() >= self.leases.max() {
            // This node could not keep (renew, count) one more.
            return full(base);
        }
        let token = Token::new(local.cell);
        let op = LeaseOp::Acquire {
            token,
            limit: c.slots,
            slots,
            ttl_ms: ms(ttl),
        };
        match client.call(op).await {
            Ok(reply) => self.taken_in_redis(reply, token, &local, base),
            Err(LeaseFailure::Unavailable) => match client.on_error {
                OnRedisError::Local => self.take_here(local, base, now),
                OnRedisError::Allow => self.take_here(
                    Ask {
                        over: true,
                        ..local
                    },
                    base,
                    now,
                ),
                OnRedisError::Deny => Acquisition {
                    reason: Some(DenyReason::Unavailable),
                    retry_after: Some(0),
                    note: "redis did not answer in time",
                    ..base
                },
            },
        }
    }

    /// Takes the slots in this node's table.
    fn take_here(&self, ask: Ask, base: Acquisition, now: Nanos) -> Acquisition {
        match self.leases.acquire(&ask, now) {
            Acquired::Granted {
                token,
                in_use,
                expires,
            } => Acquisition {
                granted: true,
                token: Some(token),
                in_use: u64::from(in_use),
                expires: Some(expires),
                ..base
            },
            Acquired::Denied {
                in_use,
                retry_after,
            } => Acquisition {
                in_use: u64::from(in_use),
                retry_after: Some(retry_after),
                reason: Some(DenyReason::Limited),
                ..base
            },
            Acquired::TooMany => too_many(base),
            Acquired::Full => full(base),
        }
    }

    /// Redis's answer to an acquire; a grant is mirrored here.
    fn taken_in_redis(
        &self,
        reply: LeaseReply,
        token: Token,
        ask: &Ask,
        base: Acquisition,
    ) -> Acquisition {
        self.leases.count_expired(reply.pruned);
        match reply.answer {
            LeaseAnswer::Granted { in_use, expires_ms } => {
                let expires = expires_ms.saturating_mul(NANOS_PER_MS);
                self.leases.mirror(token, ask, expires);
                Acquisition {
                    granted: true,
                    token: Some(token),
                    in_use,
                    expires: Some(expires),
                    ..base
                }
            }
            LeaseAnswer::Denied { in_use, wait_ms } => Acquisition {
                in_use,
                retry_after: Some(wait_ms.saturating_mul(NANOS_PER_MS)),
                reason: Some(DenyReason::Limited),
                ..base
            },
            _ => Acquisition {
                reason: Some(DenyReason::Unavailable),
                retry_after: Some(0),
                note: "redis's answer was not the script's",
                ..base
            },
        }
    }

    /// Extends lease `token` to `ttl` from now (`None`: its own time to
    /// live); when it now expires (Unix ns).
    pub async fn renew(&self, token: Token, ttl: Option<Nanos>) -> Result<Nanos, RenewError> {
        self.renew_lease(token, ttl).await.map(|r| r.expires)
    }

    /// [`Engine::renew`], saying whether Redis confirmed it (false: Redis
    /// did not answer, and the fail mode renewed this node's own record
    /// of the lease; renew again soon).
    pub async fn renew_lease(
        &self,
        token: Token,
        ttl: Option<Nanos>,
    ) -> Result<Renewed, RenewError> {
        let now = self.now();
        let here = |confirmed: bool, missing: RenewError| {
            self.leases
                .renew(token, ttl, now)
                .map(|expires| Renewed { expires, confirmed })
                .map_err(|LeaseError::NotFound| missing)
        };
        let Some(client) = self.lease_client.get() else {
            return here(true, RenewError::NotFound);
        };
        let op = LeaseOp::Renew {
            token,
            ttl_ms: ttl.map_or(0, ms),
        };
        match client.call(op).await {
            Ok(reply) => {
                self.leases.count_expired(reply.pruned);
                match reply.answer {
                    LeaseAnswer::Renewed(expires_ms) => {
                        // The mirror follows (if this node granted it).
                        let _ = self.leases.renew(token, ttl, now);
                        Ok(Renewed {
                            expires: expires_ms.saturating_mul(NANOS_PER_MS),
                            confirmed: true,
                        })
                    }
                    _ => self.restore(client, token, ttl, now).await,
                }
            }
            Err(LeaseFailure::Unavailable) => match client.on_error {
                OnRedisError::Deny => Err(RenewError::Unavailable),
                // This node's own record of it, if any, decides.
                OnRedisError::Local | OnRedisError::Allow => here(false, RenewError::Unavailable),
            },
        }
    }

    /// A lease Redis does not have: if this node still holds it (Redis
    /// restarted empty, or the lease was granted here while Redis was
    /// out), it is put back in Redis when its slots are free and no
    /// operator freed the key's leases since; otherwise it is gone.
    async fn restore(
        &self,
        client: &LeaseClient,
        token: Token,
        ttl: Option<Nanos>,
        now: Nanos,
    ) -> Result<Renewed, RenewError> {
        let Some(held) = self.leases.get(token, now) else {
            return Err(RenewError::NotFound);
        };
        let ttl = ttl.unwrap_or(held.ttl);
        let op = LeaseOp::Restore {
            token,
            limit: held.limit,
            slots: held.slots,
            ttl_ms: ms(ttl),
            granted_ms: ms(held.granted),
        };
        let reply = client.call(op).await;
        if let Ok(r) = &reply {
            self.leases.count_expired(r.pruned);
        }
        match reply {
            Ok(LeaseReply {
                answer: LeaseAnswer::Granted { expires_ms, .. },
                ..
            }) => {
                let _ = self.leases.renew(token, Some(ttl), now);
                // Redis holds it again: its expiry is Redis's to count.
                self.leases.mark_mirror(token);
                Ok(Renewed {
                    expires: expires_ms.saturating_mul(NANOS_PER_MS),
                    confirmed: true,
                })
            }
            Ok(_) => {
                self.leases.release(token, now);
                Err(RenewError::NotFound)
            }
            Err(LeaseFailure::Unavailable) => Err(RenewError::Unavailable),
        }
    }

    /// Frees lease `token`; whether it was held. With Redis, a release
    /// Redis does not answer is retried by its task until it does.
    pub async fn release(&self, token: Token) -> bool {
        let here = self.leases.release(token, self.now());
        let Some(client) = self.lease_client.get() else {
            return here;
        };
        match client.call(LeaseOp::Release { token }).await {
            Ok(LeaseReply {
                answer: LeaseAnswer::Removed(n),
                pruned,
            }) => {
                self.leases.count_expired(pruned);
                n > 0 || here
            }
            _ => {
                // Not confirmed: released later, whatever happened.
                client.forget(token);
                here
            }
        }
    }

    /// Frees lease `token` without waiting: here at once, in Redis as
    /// soon as it takes it (a Hold stream dropped mid-call).
    pub fn forget_lease(&self, token: Token) {
        self.leases.release(token, self.now());
        if let Some(client) = self.lease_client.get() {
            client.forget(token);
        }
    }

    /// Where the key with hash `key_hash` stands against its plan's
    /// concurrency limit: across every node with Redis (`Err` when Redis
    /// does not answer), else this node's.
    pub async fn lease_usage(&self, key_hash: u64) -> Result<Option<LeaseUsage>, LeaseFailure> {
        let Some(c) = self.concurrency_of(key_hash) else {
            return Ok(None);
        };
        let cell = lease_cell(&c, key_hash);
        let now = self.now();
        let (in_use, leases) = match self.lease_client.get() {
            None => {
                let leases = self.leases.list(cell, now);
                let in_use = leases.iter().map(|(s, _)| u64::from(*s)).sum();
                (in_use, leases)
            }
            Some(client) => match client.call(LeaseOp::Count { cell }).await? {
                LeaseReply {
                    answer: LeaseAnswer::Counted(in_use, leases),
                    pruned,
                } => {
                    self.leases.count_expired(pruned);
                    let leases = leases
                        .into_iter()
                        .map(|(s, e)| (s, e.saturating_mul(NANOS_PER_MS)))
                        .collect();
                    (in_use, leases)
                }
                _ => return Err(LeaseFailure::Unavailable),
            },
        };
        Ok(Some(LeaseUsage {
            concurrency: c,
            in_use,
            leases,
        }))
    }

    /// Forgets the leases this node granted to the key with hash
    /// `key_hash` (every node does on an operator's reset: their Hold
    /// streams then end at their next renewal instead of putting the
    /// leases back).
    pub(super) fn reset_lease_mirrors(&self, key_hash: u64) {
        if let Some(c) = self.concurrency_of(key_hash) {
            self.leases.release_all(lease_cell(&c, key_hash));
        }
    }

    /// Frees every lease the key with hash `key_hash` holds against its
    /// plan's concurrency limit (every node's, with Redis); how many.
    pub async fn reset_leases(&self, key_hash: u64) -> Result<u64, LeaseFailure> {
        let Some(c) = self.concurrency_of(key_hash) else {
            return Ok(0);
        };
        let cell = lease_cell(&c, key_hash);
        let here = self.leases.release_all(cell) as u64;
        let Some(client) = self.lease_client.get() else {
            return Ok(here);
        };
        match client.call(LeaseOp::Drop { cell }).await? {
            LeaseReply {
                answer: LeaseAnswer::Removed(n),
                pruned,
            } => {
                self.leases.count_expired(pruned);
                Ok(n)
            }
            _ => Err(LeaseFailure::Unavailable),
        }
    }
}

/// A lease freed when dropped: its holder went away (an acquire's caller
/// while the plan decides, a Hold stream that ended in any way). Here at
/// once; in Redis as soon as it takes the release. `E` is how the holder
/// has the engine (`&Engine`, `Arc<Engine>`).
#[derive(Debug)]
pub struct LeaseGuard<E: Deref<Target = Engine>> {
    engine: E,
    token: Option<Token>,
}

impl<E: Deref<Target = Engine>> LeaseGuard<E> {
    /// Guards `token` (nothing if `None`).
    pub fn new(engine: E, token: Option<Token>) -> Self {
        Self { engine, token }
    }

    /// The lease guarded, if any.
    pub fn token(&self) -> Option<Token> {
        self.token
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Stops guarding the lease (kept, or already gone); it, if any.
    pub fn disarm(&mut self) -> Option<Token> {
        self.token.take()
    }

    /// Frees the lease now, waiting for Redis (boxed: a holder that waits
    /// far longer than it releases should not carry the call's state).
    pub async fn release(&mut self) {
        if let Some(token) = self.token.take() {
            Box::pin(self.engine.release(token)).await;
        }
    }
}

impl<E: Deref<Target = Engine>> Drop for LeaseGuard<E> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.engine.forget_lease(token);
        }
    }
}

/// A denial because this node holds `store.max_leases` leases.
fn full(base: Acquisition) -> Acquisition {
    Acquisition {
        reason: Some(DenyReason::Unavailable),
        retry_after: Some(NANOS_PER_MS * 1_000),
        note: "this node holds store.max_leases leases",
        ..base
    }
}

/// A denial for a cost the limit can never grant.
fn too_many(base: Acquisition) -> Acquisition {
    Acquisition {
        reason: Some(DenyReason::CostExceedsCapacity),
        retry_after: None,
        note: "more slots than the concurrency limit has",
        ..base
    }
}
