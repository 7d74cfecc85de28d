//! `quotad.v1.RateLimiter`: our own API. Unary `Check`, `CheckBatch` (many
//! independent checks, answered in order) and `CheckStream` (a long-lived
//! bidirectional stream; responses carry the request's `id`).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::pb::rate_limiter_server::RateLimiter;
use super::pb::{CheckBatchRequest, CheckBatchResponse, CheckRequest, CheckResponse, DenyReason};
use super::{duration, validate};
use crate::config::RequestCaps;
use crate::core::{self, Decision, Limiter, Snapshot};
use crate::shutdown::Shutdown;

/// The native service.
#[derive(Debug, Clone)]
pub struct NativeService {
    limiter: Arc<Limiter>,
    caps: RequestCaps,
    shutdown: Shutdown,
}

impl NativeService {
    /// A service deciding with `limiter`, refusing requests beyond `caps`.
    /// Open streams end cleanly when `shutdown` fires.
    pub fn new(limiter: Arc<Limiter>, caps: RequestCaps, shutdown: Shutdown) -> Self {
        Self {
            limiter,
            caps,
            shutdown,
        }
    }
}

/// Validates one check; `at` prefixes field paths (`checks[3].`).
fn validate_check(req: &CheckRequest, at: &str, caps: &RequestCaps) -> Result<(), Status> {
    validate::key(|| format!("{at}key"), &req.key, caps)?;
    validate::cost(|| format!("{at}cost"), req.cost, caps)?;
    Ok(())
}

/// Decides one already validated check.
fn decide(snap: &Snapshot<'_>, req: &CheckRequest) -> CheckResponse {
    let cost = req.cost.max(1);
    let d = snap.check(&core::Request {
        key: &req.key,
        cost,
    });
    response(snap, &d, req.id)
}

/// A decision as the wire response.
pub fn response(snap: &Snapshot<'_>, d: &Decision, id: u64) -> CheckResponse {
    let limit = snap.limit(d);
    CheckResponse {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset_after: Some(duration(d.reset_after)),
        retry_after: d.retry_after.map(duration),
        policy: limit.map(|l| l.policy.clone()).unwrap_or_default(),
        id,
        reason: match d.reason {
            core::DenyReason::None => DenyReason::Unspecified,
            core::DenyReason::Limited => DenyReason::Limited,
            core::DenyReason::CostExceedsCapacity => DenyReason::CostExceedsCapacity,
        } as i32,
        window_seconds: limit.map_or(0, |l| l.window_seconds()),
    }
}

type CheckStreamOut = Pin<Box<dyn Stream<Item = Result<CheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RateLimiter for NativeService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let req = request.into_inner();
        validate_check(&req, "", &self.caps)?;
        Ok(Response::new(decide(&self.limiter.snapshot(), &req)))
    }

    async fn check_batch(
        &self,
        request: Request<CheckBatchRequest>,
    ) -> Result<Response<CheckBatchResponse>, Status> {
        let batch = request.into_inner();
        validate::count(|| "checks".into(), batch.checks.len(), self.caps.max_batch)?;
        // Validate everything first: a bad check fails the whole batch
        // before any of it is charged.
        for (i, c) in batch.checks.iter().enumerate() {
            validate_check(c, &format!("checks[{i}]."), &self.caps)?;
        }
        let snap = self.limiter.snapshot();
        let results = batch.checks.iter().map(|c| decide(&snap, c)).collect();
        Ok(Response::new(CheckBatchResponse { results }))
    }

    type CheckStreamStream = CheckStreamOut;

    async fn check_stream(
        &self,
        request: Request<Streaming<CheckRequest>>,
    ) -> Result<Response<Self::CheckStreamStream>, Status> {
        // Responses are computed as tonic pulls them, straight from the
        // inbound stream: no task and no queue. A caller that stops reading
        // responses stops us reading its requests, and HTTP/2 flow control
        // pushes back on it. Shutdown ends the stream cleanly (status OK).
        let inbound = request.into_inner();
        let limiter = Arc::clone(&self.limiter);
        let caps = self.caps.clone();
        let mut shutdown = self.shutdown.clone();
        let stop = Box::pin(async move { shutdown.wait().await });
        let out = inbound.take_until(stop).map(move |item| {
            let req = item?;
            validate_check(&req, &format!("id {}: ", req.id), &caps)?;
            Ok(decide(&limiter.snapshot(), &req))
        });
        Ok(Response::new(Box::pin(out) as Self::CheckStreamStream))
    }
}
