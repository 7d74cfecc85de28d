//! `Report` and `ReportStream` on `quotad.v1.RateLimiter`: what was really
//! spent, charged once it is known (an LLM completion's tokens, a
//! download's bytes), whatever the key's limits hold. Buckets may go into
//! debt and quotas past their amount; the answer says where the key
//! stands after it. The HTTP door's `POST /v1/report` answers through the
//! same functions.

use super::error::RequestError;
use super::headers::{self, HeaderStyle, Standing};
use super::pb::{DenyReason, Header, ReportRequest, ReportResponse};
use super::{answers, duration, validate};
use crate::config::{Live, RequestCaps};
use crate::core::Decision;
use crate::engine::{Basis, Call, Engine, Item, Kind, Mode, Outcome};
use crate::metrics::Api;

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

/// `ReportStream`'s messages: reports, answered as `Report` answers them.
pub struct Reports;

impl answers::Handler for Reports {
    type In = ReportRequest;
    type Out = ReportResponse;
    const WHAT: &'static str = "report";

    async fn answer(engine: &Engine, msg: &ReportRequest) -> Result<ReportResponse, RequestError> {
        report_one(engine, Api::ReportStream, msg).await
    }

    fn refused(msg: &ReportRequest, e: &RequestError) -> ReportResponse {
        refused(msg, e)
    }
}
