//! `Report` and `ReportStream` on `quotad.v1.RateLimiter`: what was really
//! spent, charged once it is known (an LLM completion's tokens, a
//! download's bytes), whatever the key's limits hold. Buckets may go into
//! debt and quotas past their amount; the answer says where the key
//! stands after it. The HTTP door's `POST /v1/report` answers through the
//! same functions.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::error::RequestError;
use super::headers::{self, HeaderStyle, Standing};
use super::pb::{DenyReason, Header, ReportRequest, ReportResponse};
use super::{duration, request_id, validate};
use crate::config::{Live, RequestCaps};
use crate::core::Decision;
use crate::engine::{Basis, Call, Engine, Item, Kind, Mode, Outcome};
use crate::metrics::Api;
use crate::shutdown::Shutdown;

/// Validates one report against the caps in effect.
pub(crate) fn validate(req: &ReportRequest, caps: &RequestCaps) -> Result<(), RequestError> {
    validate::key(|| "key".into(), &req.key, caps)?;
    validate::cost(|| "cost".into(), req.cost, caps)?;
    Ok(())
}

/// Charges one report through the engine (`door` says which API counts
/// it); the error is the refusal, nothing charged.
pub(crate) async fn report_one(
    engine: &Engine,
    door: Api,
    req: &ReportRequest,
) -> Result<ReportResponse, RequestError> {
    engine
        .decide(
            Call::keys(door),
            |live: &Live, _: Kind<'_>| {
                validate(req, &live.requests)?;
                let item = Item {
                    mode: Mode::Report,
                    ..Item::key(&req.key, req.cost.max(1))
                };
                Ok((smallvec::smallvec![item], live.response_headers))
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

/// A report's outcome as the wire response. Its headers carry
/// `Retry-After` while a check of one unit would be denied.
pub fn response(o: &Outcome<'_>, id: u64, style: HeaderStyle) -> ReportResponse {
    let d = &o.decision;
    let limit = match o.basis {
        Basis::Plan(limit) => limit,
        _ => None,
    };
    let blocked = d.reason == Some(crate::core::DenyReason::Blocked);
    // As the next check of one unit would see it.
    let shown = Decision {
        allowed: !blocked && d.retry_after == Some(0),
        ..*d
    };
    let standing = limit.map(|l| Standing::of(&shown, l));
    let headers = headers::for_decision(style, standing.as_slice(), &shown)
        .into_iter()
        .map(Header::from)
        .collect();
    ReportResponse {
        limit: d.limit,
        remaining: d.remaining,
        reset_after: Some(duration(d.reset_after)),
        policy: limit.map(|l| l.policy.clone()).unwrap_or_default(),
        id,
        headers,
        retry_after: d.retry_after.map(duration),
        debt: d.over,
        window_seconds: limit.map_or(0, |l| l.window_seconds()),
        error: String::new(),
        reason: if blocked {
            DenyReason::Blocked as i32
        } else {
            DenyReason::Unspecified as i32
        },
    }
}

/// The answer to an invalid report inside a stream: the stream goes on.
fn refused(req: &ReportRequest, e: &RequestError) -> ReportResponse {
    ReportResponse {
        id: req.id,
        reason: DenyReason::InvalidRequest as i32,
        error: e.to_string(),
        ..Default::default()
    }
}

/// `ReportStream`'s answers.
pub type ReportStreamOut = Pin<Box<dyn Stream<Item = Result<ReportResponse, Status>> + Send>>;

/// What a `ReportStream` answer stream carries between polls.
struct StreamState {
    inbound: Streaming<ReportRequest>,
    engine: Arc<Engine>,
    shutdown: Shutdown,
    request_id: String,
    done: bool,
}

/// `ReportStream`: each report answered as tonic pulls the answers (no
/// task, no queue: a caller that stops reading stops us reading, and
/// HTTP/2 flow control pushes back). An invalid report is answered with
/// `error` set; a message that does not decode ends the stream with
/// INVALID_ARGUMENT; shutdown ends it with UNAVAILABLE (resend what was
/// not answered).
pub fn stream(
    engine: &Arc<Engine>,
    request: Request<Streaming<ReportRequest>>,
    shutdown: Shutdown,
) -> Response<ReportStreamOut> {
    let request_id = request_id::of(request.metadata());
    let tag = tonic::metadata::MetadataValue::try_from(request_id.as_str()).ok();
    let state = StreamState {
        inbound: request.into_inner(),
        engine: Arc::clone(engine),
        shutdown,
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
                    "quotad is shutting down: resend unanswered reports to another instance",
                );
                return Some((Err(status), st));
            }
            next = st.inbound.message() => next,
        };
        let answer = match next {
            Ok(Some(req)) => match report_one(&st.engine, Api::ReportStream, &req).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!(request_id = %st.request_id, id = req.id, error = %e, "report stream message refused");
                    refused(&req, &e)
                }
            },
            Ok(None) => return None,
            Err(status) => {
                st.done = true;
                return Some((Err(status), st));
            }
        };
        Some((Ok(answer), st))
    });
    let mut response = Response::new(Box::pin(out) as ReportStreamOut);
    if let Some(tag) = tag {
        response.metadata_mut().insert(request_id::HEADER, tag);
    }
    response
}
