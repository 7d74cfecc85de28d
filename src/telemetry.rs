//! Health of the process as seen from outside: the readiness latch and the
//! HTTP listener's `/livez` and `/readyz` endpoints.
//!
//! `/livez` answers 200 while the process serves HTTP at all. `/readyz`
//! answers 200 only once the limits are loaded and the gRPC listener is up,
//! and 503 again once shutdown starts, so load balancers stop sending
//! before we stop answering. gRPC health (`grpc.health.v1`) follows the
//! same latch (wired in [`crate::app`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// A ready/not-ready flag shared by the app and the health endpoints.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Marks the process ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The HTTP routes: `/livez` and `/readyz`.
pub fn router(ready: Readiness) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, &'static str) {
    if ready.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
