//! The native API's concurrency calls: `Acquire`, `Renew`, `Release` and
//! `Hold` (a lease that lives as long as its stream). Validation, the
//! wire messages and the Hold stream's life; the decisions are the
//! engine's ([`crate::engine::leases`]).
//!
//! Headers: the concurrency limit is its own item of the IETF draft's
//! fields, `RateLimit-Policy: "plan/streams";q=10;w=30` (q the slots, w
//! the lease's time to live in seconds) and `RateLimit:
//! "plan/streams";r=7;t=0` (r the free slots, t when a slot frees if none
//! is: 0 while one is free), beside the plan's rate limit that decided
//! the request; `Retry-After` when denied and waiting can help.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tonic::{Status, Streaming};

use super::error::RequestError;
use super::headers::{self, HeaderStyle, Standing};
use super::pb::{
    AcquireRequest, AcquireResponse, DenyReason, Header, HoldRequest, HoldResponse, RenewRequest,
};
use super::{duration, timestamp, validate};
use crate::config::{Live, RequestCaps};
use crate::core;
use crate::core::clock::{NANOS_PER_SEC, Nanos};
use crate::engine::leases::{Acquisition, LeaseAsk, LeaseGuard, RenewError};
use crate::engine::{Engine, NoPlans};
use crate::limits::{MAX_LEASE_TTL, MIN_LEASE_TTL};
use crate::shutdown::Shutdown;
use crate::store::leases::Token;

/// How long a Hold stream may take to send its first message.
pub const HOLD_FIRST_MESSAGE: Duration = Duration::from_secs(10);

/// A lease's time to live as given, checked: 1 s ..= 1 h.
fn ttl(field: &str, d: Option<&prost_types::Duration>) -> Result<Option<Nanos>, RequestError> {
    let Some(d) = d else {
        return Ok(None);
    };
    let ns = i128::from(d.seconds) * i128::from(NANOS_PER_SEC) + i128::from(d.nanos);
    match u64::try_from(ns) {
        Ok(ns) if (MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&ns) => Ok(Some(ns)),
        _ => Err(RequestError::Invalid {
            field: field.to_owned(),
            why: format!(
                "must be between 1s and 1h (got {}s {}ns)",
                d.seconds, d.nanos
            ),
        }),
    }
}

/// A lease id as given: 48 hex digits.
pub fn lease(text: &str) -> Result<Token, RequestError> {
    Token::parse(text).ok_or(RequestError::Unsupported {
        field: "lease".to_owned(),
        why: "not a lease id (48 hex digits, as Acquire returned it)",
    })
}

/// Validates an acquire's key and cost; the engine's ask.
fn ask<'k>(
    key: &'k str,
    cost: u64,
    ttl: Option<Nanos>,
    caps: &RequestCaps,
) -> Result<LeaseAsk<'k>, RequestError> {
    validate::key(|| "key".to_owned(), key, caps)?;
    validate::cost(|| "cost".to_owned(), cost, caps)?;
    Ok(LeaseAsk {
        key,
        slots: cost.max(1),
        ttl,
    })
}

/// The settings in effect: the caps acquires are validated against and
/// the header style they are answered with; refused while the config
/// defines no plans (no key has a plan to lease from).
fn live(engine: &Engine) -> Result<(RequestCaps, HeaderStyle), RequestError> {
    let view = engine.view();
    if view.table().is_planless() {
        engine.metrics().refused(crate::metrics::Api::Lease, None);
        return Err(NoPlans.into());
    }
    let live: &Live = view.live();
    Ok((live.requests.clone(), live.response_headers))
}

/// Decides an `Acquire`.
pub async fn acquire(engine: &Engine, req: &AcquireRequest) -> Result<AcquireResponse, Status> {
    let (caps, style) = live(engine)?;
    let ttl = ttl("ttl", req.ttl.as_ref())?;
    let ask = ask(&req.key, req.cost, ttl, &caps)?;
    let a = engine.acquire(ask).await;
    Ok(response(&a, req.id, style))
}

/// Renews a lease.
pub async fn renew(engine: &Engine, req: &RenewRequest) -> Result<Nanos, Status> {
    let token = lease(&req.lease)?;
    let ttl = ttl("ttl", req.ttl.as_ref())?;
    engine.renew(token, ttl).await.map_err(|e| match e {
        RenewError::NotFound => Status::not_found(e.to_string()),
        RenewError::Unavailable => Status::unavailable(e.to_string()),
    })
}

/// An acquisition as the wire answer.
pub fn response(a: &Acquisition, id: u64, style: HeaderStyle) -> AcquireResponse {
    let limit = a.concurrency.as_ref().map_or(0, |c| u64::from(c.slots));
    AcquireResponse {
        granted: a.granted,
        lease: a.token.map(|t| t.to_string()).unwrap_or_default(),
        limit,
        in_use: a.in_use,
        expires_at: a.expires.map(timestamp),
        retry_after: if a.granted {
            None
        } else {
            a.retry_after.map(duration)
        },
        policy: a.policy.clone(),
        id,
        error: a.note.to_owned(),
        headers: answer_headers(a, style)
            .into_iter()
            .map(Header::from)
            .collect(),
        reason: super::deny_reason(a.reason) as i32,
    }
}

/// The headers of an answer: the concurrency limit's item, then the
/// plan's deciding rate limit's (see the module docs).
fn answer_headers(a: &Acquisition, style: HeaderStyle) -> Vec<headers::Header> {
    if a.reason == Some(core::DenyReason::Blocked) {
        let mut out = Vec::new();
        headers::add_block(style, &mut out, a.retry_after);
        return out;
    }
    // Refused for want of slots (not by a rate limit, a fail mode or a
    // full lease table).
    let by_slots = !a.granted
        && a.rate.is_none()
        && matches!(
            a.reason,
            Some(core::DenyReason::Limited | core::DenyReason::CostExceedsCapacity)
        );
    // The slots in use are known when granted, refused for want of them,
    // or counted before a rate limit refused the request; not when Redis
    // did not answer or the lease table is full.
    let known = a.granted || by_slots || a.rate.is_some();
    let mut standings = Vec::with_capacity(2);
    if let Some(c) = a.concurrency.as_ref().filter(|_| known) {
        let wait = if by_slots { a.retry_after } else { Some(0) };
        standings.push(Standing {
            name: &c.policy,
            limit: u64::from(c.slots),
            remaining: u64::from(c.slots).saturating_sub(a.in_use),
            reset: wait.unwrap_or(0),
            // The lease's time to live: the one asked for, else the limit's.
            window: if a.ttl > 0 { a.ttl } else { c.lease_ttl }.div_ceil(NANOS_PER_SEC),
            over: by_slots,
            retry_after: wait,
            text: None,
        });
    }
    if let Some((d, Some(limit))) = &a.rate {
        standings.push(Standing::of(d, limit));
    }
    headers::render(style, &standings, !a.granted)
}

/// A Hold's lease: freed when the stream ends in any way (the client's
/// end, a cancel, a dropped connection, shutdown).
type Held = LeaseGuard<Arc<Engine>>;

/// A Hold stream's answers.
pub type HoldOut = Pin<Box<dyn Stream<Item = Result<HoldResponse, Status>> + Send + 'static>>;

/// One Hold stream's state between answers.
struct HoldState {
    first: Option<HoldResponse>,
    held: Held,
    inbound: Streaming<HoldRequest>,
    shutdown: Shutdown,
    ttl: Nanos,
    renew_at: tokio::time::Instant,
    done: bool,
}

/// How long after a renewal the next: a third of the time to live, so
/// two more tries fit before it expires.
fn renew_after(ttl: Nanos) -> Duration {
    Duration::from_nanos(ttl / 3)
}

/// Serves a Hold stream: reads its first message (within
/// [`HOLD_FIRST_MESSAGE`]), acquires, answers, and keeps the lease until
/// the stream ends.
pub async fn hold(
    engine: &Arc<Engine>,
    mut inbound: Streaming<HoldRequest>,
    shutdown: Shutdown,
) -> Result<HoldOut, Status> {
    let mut stop = shutdown.clone();
    let first = tokio::select! {
        first = tokio::time::timeout(HOLD_FIRST_MESSAGE, inbound.message()) => first,
        _ = stop.wait() => {
            return Err(Status::unavailable("quotad is shutting down: hold on another instance"));
        }
    };
    let first = match first {
        Err(_) => {
            return Err(Status::deadline_exceeded(
                "no first message within 10s: send the key to hold a lease for",
            ));
        }
        Ok(Err(status)) => return Err(status),
        Ok(Ok(None)) => {
            return Err(Status::invalid_argument(
                "the stream ended before its first message",
            ));
        }
        Ok(Ok(Some(first))) => first,
    };
    let (caps, style) = live(engine)?;
    let ask = ask(&first.key, first.cost, None, &caps)?;
    let a = engine.acquire(ask).await;
    let answer = HoldResponse {
        answer: Some(response(&a, first.id, style)),
    };
    let state = HoldState {
        first: Some(answer),
        held: Held::new(Arc::clone(engine), a.token),
        inbound,
        shutdown,
        ttl: a.ttl,
        renew_at: tokio::time::Instant::now() + renew_after(a.ttl),
        // A denied Hold (or one without a lease to keep) answers once.
        done: !a.granted,
    };
    let out = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(first) = st.first.take() {
            return Some((Ok(first), st));
        }
        if st.done {
            st.held.release().await;
            return None;
        }
        let item = keep(&mut st).await;
        st.held.release().await;
        st.done = true;
        item.map(|i| (i, st))
    });
    Ok(Box::pin(out))
}

/// Keeps a granted Hold's lease until its stream ends: renews it, reads
/// (and ignores) the client's messages, and returns the stream's last
/// item, if any.
async fn keep(st: &mut HoldState) -> Option<Result<HoldResponse, Status>> {
    loop {
        tokio::select! {
            biased;
            _ = st.shutdown.wait() => {
                return Some(Err(Status::unavailable(
                    "quotad is shutting down: the lease is released; hold again on another instance",
                )));
            }
            next = st.inbound.message() => match next {
                Ok(Some(_)) => {}
                // The client's end, or its connection dropped.
                Ok(None) | Err(_) => return None,
            },
            // Without a lease (a plan with no concurrency limit) there is
            // nothing to renew: the stream just lasts.
            () = tokio::time::sleep_until(st.renew_at), if st.held.token().is_some() => {
                let token = st.held.token()?;
                // Boxed: the stream waits far longer than it renews, and
                // an open Hold should not carry the renewal's state.
                let engine = Arc::clone(st.held.engine());
                match Box::pin(engine.renew_lease(token, Some(st.ttl))).await {
                    Ok(r) if r.confirmed => {
                        st.renew_at = tokio::time::Instant::now() + renew_after(st.ttl);
                    }
                    Ok(_) | Err(RenewError::Unavailable) => {
                        st.renew_at = tokio::time::Instant::now()
                            + renew_after(st.ttl).min(Duration::from_secs(1));
                    }
                    Err(RenewError::NotFound) => {
                        st.held.disarm();
                        return Some(Ok(lost()));
                    }
                }
            }
        }
    }
}

/// The last answer of a Hold whose lease was freed under it.
fn lost() -> HoldResponse {
    HoldResponse {
        answer: Some(AcquireResponse {
            granted: false,
            error: "the lease was freed (an operator's reset, or it expired): hold again"
                .to_owned(),
            reason: DenyReason::Limited as i32,
            ..AcquireResponse::default()
        }),
    }
}
