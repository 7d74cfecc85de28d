//! `quotad.v1.RateLimiter`: our own API. Unary `Check`, `CheckBatch` (many
//! independent checks, answered in order) and `CheckStream` (a long-lived
//! bidirectional stream; responses carry the request's `id`).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::decide::{self, Strict};
use super::error::RequestError;
use super::headers::{self, HeaderStyle, Standing};
use super::pb::rate_limiter_server::RateLimiter;
use super::pb::{
    CheckBatchRequest, CheckBatchResponse, CheckRequest, CheckResponse, DenyReason, Header,
};
use super::{duration, request_id, validate};
use crate::config::RequestCaps;
use crate::control::LiveConfig;
use crate::core::clock::Stopwatch;
use crate::core::{self, Decision, Limiter, Snapshot};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{Api, plan_label};

/// The native service.
#[derive(Debug, Clone)]
pub struct NativeService {
    limiter: Arc<Limiter>,
    config: LiveConfig,
    strict: Option<Strict>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
}

impl NativeService {
    /// A service deciding with `limiter`, refusing requests beyond the
    /// caps of the config in effect (`requests`) and answering with its
    /// `response_headers`, both read per check so a reload applies at
    /// once. Open streams end cleanly when `shutdown` fires. Every check
    /// is counted in `metrics`.
    pub fn new(
        limiter: Arc<Limiter>,
        config: LiveConfig,
        shutdown: Shutdown,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            limiter,
            config,
            strict: None,
            shutdown,
            metrics,
        }
    }

    /// The caps and header style in effect now.
    fn settings(&self) -> (RequestCaps, HeaderStyle) {
        settings(&self.config)
    }

    /// The service deciding plans with strict limits in Redis.
    pub fn with_strict(mut self, strict: Strict) -> Self {
        self.strict = Some(strict);
        self
    }
}

fn settings(config: &LiveConfig) -> (RequestCaps, HeaderStyle) {
    let c = config.load();
    (c.live.requests.clone(), c.live.response_headers)
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
    Ok(())
}

/// What deciding a check needs besides the check.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    limiter: &'a Limiter,
    strict: Option<&'a Strict>,
    metrics: &'a Metrics,
    api: Api,
}

/// Decides one already validated check, and counts it.
async fn decide(ctx: Ctx<'_>, req: &CheckRequest, style: HeaderStyle) -> CheckResponse {
    let request = core::Request::new(&req.key, req.cost.max(1));
    let (d, snap) = decide::decide(ctx.limiter, ctx.strict, &request).await;
    ctx.metrics
        .checked(ctx.api, plan_label(snap.table(), &d), &d);
    let heavy = ctx.metrics.heavy();
    if heavy.enabled() {
        heavy.note(ctx.limiter.hasher().key_hash(req.key.as_bytes()));
    }
    response(&snap, &d, req.id, style)
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

/// A decision as the wire response.
pub fn response(snap: &Snapshot<'_>, d: &Decision, id: u64, style: HeaderStyle) -> CheckResponse {
    let limit = snap.limit(d);
    let standing = limit.map(|l| Standing::of(d, l));
    let headers = headers::for_decision(style, standing.as_slice(), d)
        .into_iter()
        .map(|h| Header {
            name: h.name.to_owned(),
            value: h.value,
        })
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
        reason: match d.reason {
            core::DenyReason::None => DenyReason::Unspecified,
            core::DenyReason::Limited => DenyReason::Limited,
            core::DenyReason::CostExceedsCapacity => DenyReason::CostExceedsCapacity,
            core::DenyReason::Unavailable => DenyReason::Unavailable,
            core::DenyReason::Blocked => DenyReason::Blocked,
        } as i32,
        window_seconds: limit.map_or(0, |l| l.window_seconds()),
        headers,
    }
}

/// What a `CheckStream` answer stream carries between polls.
struct StreamState {
    inbound: Streaming<CheckRequest>,
    limiter: Arc<Limiter>,
    config: LiveConfig,
    strict: Option<Strict>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    /// The stream's request id, for the log of refused messages.
    request_id: String,
    done: bool,
}

type CheckStreamOut = Pin<Box<dyn Stream<Item = Result<CheckResponse, Status>> + Send>>;

impl NativeService {
    fn ctx(&self, api: Api) -> Ctx<'_> {
        Ctx {
            limiter: &self.limiter,
            strict: self.strict.as_ref(),
            metrics: &self.metrics,
            api,
        }
    }

    /// A refused call: counted, logged with its request id, tagged.
    fn refuse(&self, api: Api, meta: &tonic::metadata::MetadataMap, e: RequestError) -> Status {
        self.metrics.refused(api);
        request_id::refuse(meta, api.as_str(), e.into())
    }
}

#[tonic::async_trait]
impl RateLimiter for NativeService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Stopwatch::start();
        let (meta, _, req) = request.into_parts();
        let (caps, style) = self.settings();
        if let Err(e) = validate_check(&req, String::new, &caps) {
            return Err(self.refuse(Api::Native, &meta, e));
        }
        let answer = decide(self.ctx(Api::Native), &req, style).await;
        self.metrics.took(Api::Native, started);
        Ok(Response::new(answer))
    }

    async fn check_batch(
        &self,
        request: Request<CheckBatchRequest>,
    ) -> Result<Response<CheckBatchResponse>, Status> {
        let started = Stopwatch::start();
        let (meta, _, batch) = request.into_parts();
        let (caps, style) = self.settings();
        // Validate everything first: a bad check fails the whole batch
        // before any of it is charged.
        let valid = validate::count(|| "checks".into(), batch.checks.len(), caps.max_batch)
            .and_then(|()| {
                batch
                    .checks
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, c)| validate_check(c, || format!("checks[{i}]."), &caps))
            });
        if let Err(e) = valid {
            return Err(self.refuse(Api::Batch, &meta, e));
        }
        // Strict checks wait for Redis together (one pipelined round trip);
        // the others are ready at once.
        let ctx = self.ctx(Api::Batch);
        let results =
            futures_util::future::join_all(batch.checks.iter().map(|c| decide(ctx, c, style)))
                .await;
        self.metrics.took(Api::Batch, started);
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
        // pushes back on it. An invalid check gets an answer with `error`
        // set and the stream goes on. Shutdown ends the stream with
        // UNAVAILABLE, so the caller knows to resend what was not answered.
        // The stream's id: logged with refused messages, and sent back in
        // the response metadata so the caller can quote it.
        let request_id = request_id::of(request.metadata());
        let tag = tonic::metadata::MetadataValue::try_from(request_id.as_str()).ok();
        let state = StreamState {
            inbound: request.into_inner(),
            limiter: Arc::clone(&self.limiter),
            config: Arc::clone(&self.config),
            strict: self.strict.clone(),
            shutdown: self.shutdown.clone(),
            metrics: Arc::clone(&self.metrics),
            request_id,
            done: false,
        };
        let out = futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let next = tokio::select! {
                biased;
                _ = st.shutdown.wait() => {
                    st.done = true;
                    let status = Status::unavailable(
                        "quotad is shutting down: resend unanswered checks to another instance",
                    );
                    return Some((Err(status), st));
                }
                next = st.inbound.message() => next,
            };
            let answer = match next {
                Ok(Some(req)) => {
                    let started = Stopwatch::start();
                    let (caps, style) = settings(&st.config);
                    match validate_check(&req, String::new, &caps) {
                        Ok(()) => {
                            let ctx = Ctx {
                                limiter: &st.limiter,
                                strict: st.strict.as_ref(),
                                metrics: &st.metrics,
                                api: Api::Stream,
                            };
                            let answer = decide(ctx, &req, style).await;
                            st.metrics.took(Api::Stream, started);
                            answer
                        }
                        Err(e) => {
                            st.metrics.refused(Api::Stream);
                            tracing::debug!(request_id = %st.request_id, id = req.id, error = %e, "check stream message refused");
                            refused(&req, &e)
                        }
                    }
                }
                Ok(None) => return None,
                Err(status) => {
                    // A message we could not decode (or a broken stream):
                    // end with the reason rather than a silent OK.
                    tracing::debug!(%status, "check stream ended with an inbound error");
                    st.done = true;
                    return Some((Err(status), st));
                }
            };
            Some((Ok(answer), st))
        });
        let mut response = Response::new(Box::pin(out) as Self::CheckStreamStream);
        if let Some(tag) = tag {
            response.metadata_mut().insert(request_id::HEADER, tag);
        }
        Ok(response)
    }
}
