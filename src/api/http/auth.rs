//! `/v1/auth`: forward auth. A gateway (NGINX `auth_request`, Traefik
//! `ForwardAuth`, Caddy `forward_auth`) asks before each request, with the
//! request's headers, and passes or refuses on the status:
//!
//! - the key comes from `server.http_check.key_header` (default
//!   `x-api-key`; `authorization` means the Bearer token); missing or
//!   empty: **401** (with `WWW-Authenticate: Bearer` for the Bearer form);
//!   sent twice: **400** (the gateway's upstream might read the other);
//! - the cost from the query's `cost` (`/v1/auth?cost=5`: the gateway's
//!   URL, out of the client's reach), else the `x-quotad-cost` header,
//!   else 1; the query's `mode=peek` only looks. The mode is never taken
//!   from a header: a client's own `x-quotad-mode: peek`, forwarded by the
//!   gateway, must not skip its charge;
//! - **200** when allowed, **429** with `Retry-After` when denied (also for
//!   a blocked key; without `Retry-After` when waiting cannot help), **503**
//!   with `Retry-After` when a strict limit could not be decided in Redis
//!   and the fail mode denies, **400** for a bad key, cost or mode;
//! - every decided answer carries the configured RateLimit headers
//!   (`response_headers`), plus `X-Quotad-Policy` naming the deciding
//!   limit when one decided; a refusal's body is a short JSON object,
//!   which Traefik and Caddy pass on to the client.

use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use super::{Answer, invalid, refusal, text, with_json};
use crate::api::native::check_one;
use crate::api::pb::{CheckMode, CheckRequest, CheckResponse, DenyReason};
use crate::config::KeyHeader;
use crate::engine::Engine;
use crate::metrics::Api;

/// The header a cost comes in.
pub const COST_HEADER: &str = "x-quotad-cost";

/// The header naming the deciding limit in answers.
pub const POLICY_HEADER: &str = "x-quotad-policy";

/// Answers one forward-auth request from its URL's `query` and headers.
pub async fn answer(engine: &Engine, query: Option<&str>, headers: &HeaderMap) -> Answer {
    // The config in effect, shared (not the view: it must not be held
    // across the check's wait), so the header name needs no copy.
    let config = engine.config();
    let key_header = &config.live.server.http_check.key_header;
    let key = match key(headers, key_header) {
        Ok(k) => k,
        Err(no_key) => {
            engine.metrics().refused(Api::HttpAuth, None);
            return match no_key {
                NoKey::Missing => unauthorized(key_header),
                NoKey::NotUtf8 => invalid(&format!("{}: the key is not UTF-8", key_header.name())),
                NoKey::Twice => invalid(&format!("{}: sent more than once", key_header.name())),
            };
        }
    };
    let req = match request(query, headers, key) {
        Ok(r) => r,
        Err(why) => {
            engine.metrics().refused(Api::HttpAuth, None);
            return invalid(&why);
        }
    };
    match check_one(engine, Api::HttpAuth, &req).await {
        Ok(r) => decided(&r),
        Err(e) => refusal(&e),
    }
}

/// Why a request has no key to check.
enum NoKey {
    /// None sent (or empty): 401.
    Missing,
    /// Not UTF-8: 400.
    NotUtf8,
    /// Sent twice: 400.
    Twice,
}

/// The key the request sends in `from`.
fn key(headers: &HeaderMap, from: &KeyHeader) -> Result<String, NoKey> {
    let mut all = headers.get_all(from.name()).iter();
    let raw = all.next().map(HeaderValue::as_bytes);
    if all.next().is_some() {
        return Err(NoKey::Twice);
    }
    let value = match (from, raw) {
        (_, None) => None,
        (KeyHeader::Bearer, Some(v)) => bearer(v),
        (KeyHeader::Named(_), Some(v)) => Some(v.trim_ascii()),
    };
    match value.filter(|v| !v.is_empty()) {
        None => Err(NoKey::Missing),
        Some(v) => String::from_utf8(v.to_vec()).map_err(|_| NoKey::NotUtf8),
    }
}

/// The token of `Bearer <token>` (the scheme in any case).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    let (scheme, rest) = v.split_at_checked(6)?;
    (scheme.eq_ignore_ascii_case(b"bearer") && rest.first() == Some(&b' '))
        .then(|| rest.trim_ascii())
}

fn unauthorized(from: &KeyHeader) -> Answer {
    let mut r = with_json(
        StatusCode::UNAUTHORIZED,
        &json!({ "error": format!("no API key: send it in the {} header", from.name()) }),
    );
    if matches!(from, KeyHeader::Bearer) {
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"quotad\""),
        );
    }
    r
}

/// The check the URL's query and the headers ask for (its key and cost
/// validated by the engine's call).
fn request(query: Option<&str>, headers: &HeaderMap, key: String) -> Result<CheckRequest, String> {
    let param = |name: &str| {
        query?
            .split('&')
            .filter_map(|p| p.split_once('=').or(Some((p, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let number = |what: &str, v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| format!("{what}: expected a non-negative integer, got {v:?}"))
    };
    let cost = match (param("cost"), headers.get(COST_HEADER)) {
        (Some(v), _) => number("cost", v)?,
        (None, Some(v)) => number(COST_HEADER, &String::from_utf8_lossy(v.as_bytes()))?,
        (None, None) => 1,
    };
    let mode = match param("mode") {
        None | Some("charge") => CheckMode::Charge,
        Some("peek") => CheckMode::Peek,
        Some(other) => return Err(format!("mode: expected charge or peek, got {other:?}")),
    };
    Ok(CheckRequest {
        key,
        cost,
        id: 0,
        mode: mode as i32,
    })
}

/// A decided check as the answer: its status, the RateLimit headers, and
/// for a refusal `Retry-After` and a JSON body.
fn decided(r: &CheckResponse) -> Answer {
    let wait = r.retry_after.as_ref().map(|d| {
        let s = u64::try_from(d.seconds).unwrap_or(0);
        s + u64::from(d.nanos > 0)
    });
    let mut answer = if r.allowed {
        text(StatusCode::OK, "")
    } else {
        let unavailable = r.reason == DenyReason::Unavailable as i32;
        let status = if unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        let reason = DenyReason::try_from(r.reason).map_or("", |d| d.as_str_name());
        let mut body = json!({ "error": "rate limited", "reason": reason, "policy": r.policy });
        if let Some(w) = wait {
            body["retry_after_seconds"] = json!(w);
        }
        with_json(status, &body)
    };
    let h = answer.headers_mut();
    for header in &r.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_str(&header.value),
        ) {
            h.append(name, value);
        }
    }
    if !r.allowed
        && !h.contains_key(RETRY_AFTER)
        && let Some(w) = wait
    {
        h.insert(RETRY_AFTER, HeaderValue::from(w));
    }
    if !r.policy.is_empty()
        && let Ok(v) = HeaderValue::from_str(&r.policy)
    {
        h.insert(HeaderName::from_static(POLICY_HEADER), v);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_in_any_case_of_the_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn cost_comes_from_the_query_then_the_header_and_mode_only_from_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(request(None, &h, "k".into()).unwrap().cost, 1);
        h.insert(COST_HEADER, HeaderValue::from_static("-3"));
        assert!(
            request(None, &h, "k".into())
                .unwrap_err()
                .starts_with("x-quotad-cost:")
        );
        h.insert(COST_HEADER, HeaderValue::from_static("7"));
        assert_eq!(request(None, &h, "k".into()).unwrap().cost, 7);
        let r = request(Some("cost=2&mode=peek"), &h, "k".into()).unwrap();
        assert_eq!((r.cost, r.mode), (2, CheckMode::Peek as i32));
        // A client's header cannot turn its check into a peek.
        h.insert("x-quotad-mode", HeaderValue::from_static("peek"));
        assert_eq!(
            request(None, &h, "k".into()).unwrap().mode,
            CheckMode::Charge as i32
        );
        assert!(
            request(Some("mode=spend"), &h, "k".into())
                .unwrap_err()
                .starts_with("mode:")
        );
        assert!(
            request(Some("cost=x"), &h, "k".into())
                .unwrap_err()
                .starts_with("cost:")
        );
    }

    #[test]
    fn a_key_sent_twice_is_refused() {
        let mut h = HeaderMap::new();
        h.append("x-api-key", HeaderValue::from_static("a"));
        assert!(matches!(key(&h, &KeyHeader::Named("x-api-key".into())), Ok(k) if k == "a"));
        h.append("x-api-key", HeaderValue::from_static("b"));
        assert!(matches!(
            key(&h, &KeyHeader::Named("x-api-key".into())),
            Err(NoKey::Twice)
        ));
    }
}
