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
//! wrong, and nothing is charged; bodies are read within a budget
//! ([`body`]). The listener (connections, TLS, timeouts) is
//! [`crate::app`]'s.

pub mod auth;
pub mod body;
pub mod json;
pub mod rls_json;

use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::error::RequestError;
use super::{envoy_rls, native, report};
use crate::engine::Engine;
use crate::metrics::Api;
use body::{Bodies, BodyError};

/// What every answer of the door is.
pub type Answer = Response<Full<Bytes>>;

/// The door: the engine, and how it reads bodies.
#[derive(Debug, Clone)]
pub struct HttpDoor {
    engine: Arc<Engine>,
    bodies: Bodies,
}

impl HttpDoor {
    /// A door deciding with `engine`, reading bodies as `bodies` says.
    pub fn new(engine: Arc<Engine>, bodies: Bodies) -> Self {
        Self { engine, bodies }
    }

    /// Answers one request.
    pub async fn serve<B>(&self, req: Request<B>) -> Answer
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let api = match req.uri().path() {
            "/v1/auth" => {
                let head = req.method() == Method::HEAD;
                let answer = auth::answer(&self.engine, req.uri().query(), req.headers()).await;
                return if head { without_body(answer) } else { answer };
            }
            "/v1/check" | "/v1/report" if req.method() != Method::POST => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST"));
                return r;
            }
            "/v1/check" => Api::HttpCheck,
            "/v1/report" => Api::HttpReport,
            "/json" => Api::HttpRls,
            _ => {
                return text(
                    StatusCode::NOT_FOUND,
                    "not found: quotad's HTTP door serves /v1/auth, /v1/check, /v1/report and /json\n",
                );
            }
        };
        let body = match self.bodies.read(req).await {
            Ok(b) => b,
            Err(e) => {
                self.count_refused(api);
                return match (e, api) {
                    (BodyError::Busy, _) => busy(),
                    (BodyError::Bad(why), Api::HttpRls) => bad_request(&why),
                    (BodyError::Bad(why), _) => invalid(&why),
                };
            }
        };
        match api {
            Api::HttpRls => self.rls(&body.bytes).await,
            Api::HttpCheck => self.check(&body.bytes).await,
            _ => self.report(&body.bytes).await,
        }
    }

    /// Counts a request refused before the engine saw it.
    fn count_refused(&self, api: Api) {
        self.engine.metrics().refused(api, None);
    }

    /// `POST /v1/check`.
    async fn check(&self, body: &[u8]) -> Answer {
        let req = match json::check_request(body) {
            Ok(r) => r,
            Err(e) => {
                self.count_refused(Api::HttpCheck);
                return invalid(&e.to_string());
            }
        };
        // A refusal is counted by the engine.
        match native::check_one(&self.engine, Api::HttpCheck, &req).await {
            Ok(a) => with_json(StatusCode::OK, &json::check_response(&a)),
            Err(e) => refusal(&e),
        }
    }

    /// `POST /v1/report`.
    async fn report(&self, body: &[u8]) -> Answer {
        let req = match json::report_request(body) {
            Ok(r) => r,
            Err(e) => {
                self.count_refused(Api::HttpReport);
                return invalid(&e.to_string());
            }
        };
        match report::report_one(&self.engine, Api::HttpReport, &req).await {
            Ok(a) => with_json(StatusCode::OK, &json::report_response(&a)),
            Err(e) => refusal(&e),
        }
    }

    /// `/json`: envoyproxy/ratelimit's.
    async fn rls(&self, body: &[u8]) -> Answer {
        let request = match rls_json::request(body) {
            Ok(r) => r,
            Err(e) => {
                self.count_refused(Api::HttpRls);
                return bad_request(&e.to_string());
            }
        };
        match envoy_rls::decide(&self.engine, Api::HttpRls, &request).await {
            Ok(r) => {
                let r = r.into_response();
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
            Err(e) => bad_request(&e.to_string()),
        }
    }
}

/// An RLS answer's `Retry-After` (among its headers to add), onto the
/// HTTP answer.
fn copy_retry_after(r: &RateLimitResponse, answer: &mut Answer) {
    let wait = r
        .response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("retry-after"))
        .and_then(|h| HeaderValue::from_str(&h.value).ok());
    if let Some(v) = wait {
        answer.headers_mut().insert(RETRY_AFTER, v);
    }
}

/// envoyproxy/ratelimit's 400, saying what was wrong.
fn bad_request(why: &str) -> Answer {
    text(StatusCode::BAD_REQUEST, &format!("Bad Request: {why}\n"))
}

/// 503: the door holds as many bodies as it may; try again in a second.
fn busy() -> Answer {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy: the HTTP door holds server.http_check.max_buffered_bytes of request bodies\n",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON answer.
pub(crate) fn with_json(status: StatusCode, v: &serde_json::Value) -> Answer {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The engine's refusal, with the gRPC status a gRPC door would have
/// given, as JSON: 400 for a wrong request; 503 while the config defines
/// no plans (the request is fine, this quotad cannot answer it).
pub(crate) fn refusal(e: &RequestError) -> Answer {
    match e {
        RequestError::NoPlans(_) => with_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "code": "FAILED_PRECONDITION", "message": e.to_string() }),
        ),
        e => invalid(&e.to_string()),
    }
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
