//! The HTTP check door: the same engine as the gRPC doors, for gateways
//! and scripts that speak HTTP/1.1.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /v1/auth` (any method) | forward auth for NGINX `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth` ([`auth`]) |
//! | `POST /v1/check` | a `quotad.v1.CheckRequest` as JSON, answered with a `CheckResponse` |
//! | `POST /v1/report` | a `quotad.v1.ReportRequest` as JSON, answered with a `ReportResponse` |
//! | `POST /json` (any method) | envoyproxy/ratelimit's JSON endpoint ([`rls_json`]) |
//!
//! Every request is validated with the caps in effect, as the gRPC doors
//! validate theirs, and counted under its own `api` with `door="http"`. A
//! body that is not JSON, has a wrong type or unknown field, or is bigger
//! than `server.http_check.max_body_bytes` is answered 400 with what was
//! wrong, and nothing is charged. The listener (connections, TLS,
//! timeouts) is [`crate::app`]'s.

pub mod auth;
pub mod json;
pub mod rls_json;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde_json::json;

use super::error::RequestError;
use super::{envoy_rls, native, report};
use crate::engine::Engine;
use crate::metrics::Api;

/// What every answer of the door is.
pub type Answer = Response<Full<Bytes>>;

/// The door: the engine, and how much of a body it reads, how fast.
#[derive(Debug, Clone)]
pub struct HttpDoor {
    engine: Arc<Engine>,
    max_body_bytes: usize,
    body_timeout: Duration,
}

impl HttpDoor {
    /// A door deciding with `engine`, reading bodies of at most
    /// `max_body_bytes` that arrive within `body_timeout`.
    pub fn new(engine: Arc<Engine>, max_body_bytes: usize, body_timeout: Duration) -> Self {
        Self {
            engine,
            max_body_bytes,
            body_timeout,
        }
    }

    /// Answers one request.
    pub async fn serve<B>(&self, req: Request<B>) -> Answer
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path();
        match path {
            "/v1/auth" => {
                let head = req.method() == Method::HEAD;
                let answer = auth::answer(&self.engine, req.headers()).await;
                if head {
                    return without_body(answer);
                }
                answer
            }
            "/v1/check" | "/v1/report" if req.method() != Method::POST => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
                r.headers_mut()
                    .insert(ALLOW, http::HeaderValue::from_static("POST"));
                r
            }
            "/v1/check" => self.native(req, Api::HttpCheck).await,
            "/v1/report" => self.native(req, Api::HttpReport).await,
            "/json" => self.rls(req).await,
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: quotad's HTTP door serves /v1/auth, /v1/check, /v1/report and /json\n",
            ),
        }
    }

    /// Reads a body: at most `max_body_bytes`, within `body_timeout`.
    async fn body<B>(&self, req: Request<B>) -> Result<Bytes, String>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let max = self.max_body_bytes;
        if let Some(len) = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && len > max as u64
        {
            return Err(format!(
                "body: {len} bytes exceeds the maximum of {max} bytes"
            ));
        }
        let limited = Limited::new(req.into_body(), max);
        match tokio::time::timeout(self.body_timeout, limited.collect()).await {
            Err(_) => Err(format!(
                "body: did not arrive within {} s",
                self.body_timeout.as_secs_f64()
            )),
            Ok(Err(e)) if e.is::<LengthLimitError>() => {
                Err(format!("body: exceeds the maximum of {max} bytes"))
            }
            Ok(Err(e)) => Err(format!("body: could not be read: {e}")),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    /// `POST /v1/check` and `POST /v1/report`.
    async fn native<B>(&self, req: Request<B>, api: Api) -> Answer
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let refused = |why: String| {
            self.engine.metrics().refused(api);
            invalid(&why)
        };
        let value = match self
            .body(req)
            .await
            .and_then(|b| json::parse(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(why) => return refused(why),
        };
        let answer = if api == Api::HttpCheck {
            match json::check_request(&value) {
                Ok(r) => native::check_one(&self.engine, api, &r)
                    .await
                    .map(|a| json::check_response(&a)),
                Err(e) => return refused(e.to_string()),
            }
        } else {
            match json::report_request(&value) {
                Ok(r) => report::report_one(&self.engine, api, &r)
                    .await
                    .map(|a| json::report_response(&a)),
                Err(e) => return refused(e.to_string()),
            }
        };
        match answer {
            Ok(v) => with_json(StatusCode::OK, &v),
            // Counted by the engine.
            Err(e) => invalid(&e.to_string()),
        }
    }

    /// `/json`: envoyproxy/ratelimit's.
    async fn rls<B>(&self, req: Request<B>) -> Answer
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let request = self
            .body(req)
            .await
            .and_then(|b| json::parse(&b).map_err(|e| e.to_string()))
            .and_then(|v| rls_json::request(&v).map_err(|e| e.to_string()));
        let request = match request {
            Ok(r) => r,
            Err(why) => {
                self.engine
                    .metrics()
                    .rls(Api::HttpRls, None, crate::metrics::Outcome::Error);
                return text(StatusCode::BAD_REQUEST, &format!("Bad Request: {why}\n"));
            }
        };
        match envoy_rls::decide(&self.engine, Api::HttpRls, &request).await {
            Ok(r) => {
                use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
                let status = match Code::try_from(r.overall_code) {
                    Ok(Code::Ok) => StatusCode::OK,
                    Ok(Code::OverLimit) => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let mut answer = with_json(status, &rls_json::response(&r));
                if status == StatusCode::TOO_MANY_REQUESTS {
                    copy_retry_after(&r, &mut answer);
                }
                answer
            }
            Err(e) => text(
                StatusCode::BAD_REQUEST,
                &format!("Bad Request: {}\n", refusal(&e)),
            ),
        }
    }
}

/// An RLS answer's `Retry-After` (among its headers to add), onto the
/// HTTP answer.
fn copy_retry_after(
    r: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse,
    answer: &mut Answer,
) {
    let wait = r
        .response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("retry-after"))
        .and_then(|h| http::HeaderValue::from_str(&h.value).ok());
    if let Some(v) = wait {
        answer.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
}

fn refusal(e: &RequestError) -> String {
    e.to_string()
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON answer.
pub(crate) fn with_json(status: StatusCode, v: &serde_json::Value) -> Answer {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// 400 with the gRPC status a gRPC door would have given, as JSON.
pub(crate) fn invalid(why: &str) -> Answer {
    with_json(
        StatusCode::BAD_REQUEST,
        &json!({ "code": "INVALID_ARGUMENT", "message": why }),
    )
}

/// The answer to a HEAD: its head only.
fn without_body(answer: Answer) -> Answer {
    let (parts, _) = answer.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}
