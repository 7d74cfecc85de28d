//! `quotad.v1.RateLimiter`: our own API. Unary `Check`, `CheckBatch` (many
//! independent checks, answered in order) and `CheckStream` (a long-lived
//! bidirectional stream; responses carry the request's `id`), each check a
//! charge or a peek (`mode`); `Report` and `ReportStream` are in
//! [`super::report`], the leases in [`super::leases`].

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::error::RequestError;
use super::headers::{self, HeaderStyle, Standing};
use super::pb::rate_limiter_server::RateLimiter;
use super::pb::{
    AcquireRequest, AcquireResponse, CheckBatchRequest, CheckBatchResponse, CheckMode,
    CheckRequest, CheckResponse, DenyReason, Header, HoldRequest, ReleaseRequest, ReleaseResponse,
    RenewRequest, RenewResponse, ReportRequest, ReportResponse,
};
use super::{answers, duration, leases, report, request_id, validate};
use crate::config::{Live, RequestCaps};
use crate::engine::{Basis, Call, Engine, Item, Kind, Mode, Outcome};
use crate::metrics::Api;
use crate::shutdown::Shutdown;

/// The native service.
#[derive(Debug, Clone)]
pub struct NativeService {
    engine: Arc<Engine>,
    shutdown: Shutdown,
}

impl NativeService {
    /// A service deciding with `engine`, which validates each call against
    /// the caps of the config in effect and answers with its
    /// `response_headers`, so a reload applies at once. Open streams end
    /// cleanly when `shutdown` fires.
    pub fn new(engine: Arc<Engine>, shutdown: Shutdown) -> Self {
        Self { engine, shutdown }
    }
}

/// Validates one check; `at` names where it sits (`checks[3].`), built
/// only when there is an error to report.
fn validate_check(
    req: &CheckRequest,
    at: impl Fn() -> String,
    caps: &RequestCaps,
) -> Result<(), RequestError> {
    validate::key(|| format!("{}key", at()), &req.key, caps)?;
    validate::cost(|| format!("{}cost", at()), req.cost, caps)?;
    mode(req.mode).map_err(|why| RequestError::Invalid {
        field: format!("{}mode", at()),
        why,
    })?;
    Ok(())
}

/// A check's mode on the wire as the engine's.
pub(crate) fn mode(wire: i32) -> Result<Mode, String> {
    match CheckMode::try_from(wire) {
        Ok(CheckMode::Charge) => Ok(Mode::Charge),
        Ok(CheckMode::Peek) => Ok(Mode::Peek),
        Err(_) => Err(format!(
            "unknown value {wire} (CHECK_MODE_CHARGE = 0, CHECK_MODE_PEEK = 1)"
        )),
    }
}

/// A validated check as the engine's item: cost 0 means 1.
pub(crate) fn item(req: &CheckRequest) -> Item<'_, ()> {
    Item {
        mode: mode(req.mode).unwrap_or(Mode::Charge),
        ..Item::key(&req.key, req.cost.max(1))
    }
}

/// Decides one check through the engine; the error is the refusal.
pub(crate) async fn check_one(
    engine: &Engine,
    door: Api,
    req: &CheckRequest,
) -> Result<CheckResponse, RequestError> {
    engine
        .decide(
            Call::keys(door),
            |live: &Live, _: Kind<'_>| {
                validate_check(req, String::new, &live.requests)?;
                Ok((smallvec::smallvec![item(req)], live.response_headers))
            },
            |answer, style| {
                answer
                    .outcomes
                    .first()
                    .map(|o| response(o, req.id, style))
                    .unwrap_or_default()
            },
        )
        .await
}

/// The answer to an invalid check inside a stream: the stream goes on.
fn refused(req: &CheckRequest, e: &RequestError) -> CheckResponse {
    CheckResponse {
        id: req.id,
        reason: DenyReason::InvalidRequest as i32,
        error: e.to_string(),
        ..Default::default()
    }
}

/// `CheckStream`'s messages: checks, answered as `Check` answers them.
struct Checks;

impl answers::Handler for Checks {
    type In = CheckRequest;
    type Out = CheckResponse;
    const WHAT: &'static str = "check";

    async fn answer(engine: &Engine, msg: &CheckRequest) -> Result<CheckResponse, RequestError> {
        check_one(engine, Api::Stream, msg).await
    }

    fn refused(msg: &CheckRequest, e: &RequestError) -> CheckResponse {
        refused(msg, e)
    }
}

/// An outcome as the wire response.
pub fn response(o: &Outcome<'_>, id: u64, style: HeaderStyle) -> CheckResponse {
    let d = &o.decision;
    let limit = match o.basis {
        Basis::Plan(limit) => limit,
        _ => None,
    };
    let standing = limit.map(|l| Standing::of(d, l));
    let headers = headers::for_decision(style, standing.as_slice(), d)
        .into_iter()
        .map(Header::from)
        .collect();
    CheckResponse {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        reset_after: Some(duration(d.reset_after)),
        retry_after: d.retry_after.map(duration),
        policy: limit.map(|l| l.policy.clone()).unwrap_or_default(),
        id,
        error: String::new(),
        reason: super::deny_reason(d.reason) as i32,
        window_seconds: limit.map_or(0, |l| l.window_seconds()),
        headers,
    }
}

/// A refused call, logged with its request id, tagged.
fn refuse(api: Api, meta: &tonic::metadata::MetadataMap, e: RequestError) -> Status {
    request_id::refuse(meta, api.as_str(), e.into())
}

#[tonic::async_trait]
impl RateLimiter for NativeService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        match check_one(&self.engine, Api::Native, &req).await {
            Ok(answer) => Ok(Response::new(answer)),
            Err(e) => Err(refuse(Api::Native, &meta, e)),
        }
    }

    async fn check_batch(
        &self,
        request: Request<CheckBatchRequest>,
    ) -> Result<Response<CheckBatchResponse>, Status> {
        let (meta, _, batch) = request.into_parts();
        // Everything is validated first: a bad check fails the whole
        // batch before any of it is charged. Strict checks wait for Redis
        // together (one pipelined round trip).
        let checks = &batch.checks;
        let decided = self
            .engine
            .decide(
                Call::keys(Api::Batch),
                |live: &Live, _: Kind<'_>| {
                    let caps = &live.requests;
                    validate::count(|| "checks".into(), checks.len(), caps.max_batch)?;
                    for (i, c) in checks.iter().enumerate() {
                        validate_check(c, || format!("checks[{i}]."), caps)?;
                    }
                    Ok((checks.iter().map(item).collect(), live.response_headers))
                },
                |answer, style| {
                    let results = checks
                        .iter()
                        .zip(&answer.outcomes)
                        .map(|(c, o)| response(o, c.id, style))
                        .collect();
                    CheckBatchResponse { results }
                },
            )
            .await;
        match decided {
            Ok(answer) => Ok(Response::new(answer)),
            Err(e) => Err(refuse(Api::Batch, &meta, e)),
        }
    }

    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        match leases::acquire(&self.engine, &req).await {
            Ok(answer) => Ok(Response::new(answer)),
            Err(status) => Err(request_id::refuse(&meta, "acquire", status)),
        }
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let expires = leases::renew(&self.engine, request.get_ref()).await?;
        Ok(Response::new(RenewResponse {
            expires_at: Some(super::timestamp(expires)),
        }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let token = leases::lease(&request.get_ref().lease)?;
        let released = self.engine.release(token).await;
        Ok(Response::new(ReleaseResponse { released }))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        match report::report_one(&self.engine, Api::Report, &req).await {
            Ok(answer) => Ok(Response::new(answer)),
            Err(e) => Err(refuse(Api::Report, &meta, e)),
        }
    }

    type ReportStreamStream = answers::Answers<ReportResponse>;

    async fn report_stream(
        &self,
        request: Request<Streaming<ReportRequest>>,
    ) -> Result<Response<Self::ReportStreamStream>, Status> {
        let shutdown = self.shutdown.clone();
        Ok(answers::stream::<report::Reports>(
            &self.engine,
            request,
            shutdown,
        ))
    }

    type HoldStream = leases::HoldOut;

    async fn hold(
        &self,
        request: Request<Streaming<HoldRequest>>,
    ) -> Result<Response<Self::HoldStream>, Status> {
        let out = leases::hold(&self.engine, request.into_inner(), self.shutdown.clone()).await?;
        Ok(Response::new(out))
    }

    type CheckStreamStream = answers::Answers<CheckResponse>;

    async fn check_stream(
        &self,
        request: Request<Streaming<CheckRequest>>,
    ) -> Result<Response<Self::CheckStreamStream>, Status> {
        Ok(answers::stream::<Checks>(
            &self.engine,
            request,
            self.shutdown.clone(),
        ))
    }
}
