//! Envoy RLS requests that fail to decode are the caller's mistake.
//!
//! Envoy's generated `RateLimitService` server (from `envoy-types`)
//! decodes with prost's stock codec, which answers a malformed message
//! (invalid UTF-8, a truncated field, nesting past prost's recursion
//! limit) with `INTERNAL`, as if quotad had failed. [`Malformed`] wraps
//! that server and turns exactly those answers into `INVALID_ARGUMENT`
//! with a `malformed request: ` message, as the native API's codec
//! ([`super::codec`]) does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::server::NamedService;

/// What prost's codec says about a message it could not decode, as tonic
/// percent-encodes it into `grpc-message` (spaces as `%20`).
const DECODE_FAILED: &[u8] = b"failed%20to%20decode%20Protobuf%20message";

/// The prefix of our own message, encoded the same way.
const PREFIX: &[u8] = b"malformed%20request:%20";

/// A gRPC server whose decode failures are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct Malformed<S>(pub S);

impl<S: NamedService> NamedService for Malformed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Malformed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Answer {
            inner: self.0.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The wrapped server's answer, its status corrected.
    pub struct Answer<F> {
        #[pin]
        inner: F,
    }
}

impl<F, RB, E> Future for Answer<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_ok(|mut response| {
            correct(response.headers_mut());
            response
        })
    }
}

/// Rewrites a trailers-only decode failure (`grpc-status: 13` with
/// prost's message) to `grpc-status: 3`, `malformed request: …`.
fn correct(headers: &mut http::HeaderMap) {
    // Answers that are not errors carry their status in the trailers:
    // one lookup, and done.
    if headers
        .get("grpc-status")
        .is_none_or(|s| s.as_bytes() != b"13")
    {
        return;
    }
    let Some(message) = headers.get("grpc-message") else {
        return;
    };
    if !message.as_bytes().starts_with(DECODE_FAILED) {
        return;
    }
    // The rest stays as it was encoded.
    let mut text = PREFIX.to_vec();
    text.extend_from_slice(message.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&text) {
        headers.insert("grpc-message", value);
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &'static str, message: &'static str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(status));
        h.insert("grpc-message", HeaderValue::from_static(message));
        h
    }

    #[test]
    fn only_decode_failures_become_invalid_argument() {
        let mut h = headers(
            "13",
            "failed%20to%20decode%20Protobuf%20message:%20recursion%20limit%20reached",
        );
        correct(&mut h);
        assert_eq!(h["grpc-status"], "3");
        assert_eq!(
            h["grpc-message"],
            "malformed%20request:%20failed%20to%20decode%20Protobuf%20message:%20recursion%20limit%20reached"
        );
        // Any other INTERNAL is left alone, and so is an OK.
        let mut h = headers("13", "something else");
        correct(&mut h);
        assert_eq!(h["grpc-status"], "13");
        let mut h = headers("0", "failed%20to%20decode%20Protobuf%20message");
        correct(&mut h);
        assert_eq!(h["grpc-status"], "0");
        let mut h = http::HeaderMap::new();
        correct(&mut h);
        assert!(h.is_empty());
    }
}
