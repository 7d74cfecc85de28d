//! Health of the process as seen from outside: the readiness latch, the
//! HTTP listener's `/livez`, `/readyz` and `/metrics`, and gRPC health
//! checking (`grpc.health.v1.Health`), all reading the same latch.
//!
//! `/livez` answers 200 while the process serves HTTP at all. `/readyz` and
//! gRPC health (and `/healthcheck`, envoyproxy/ratelimit's probe: `OK` or
//! an empty 500) say ready (200 / SERVING) once the limits are loaded and
//! the gRPC listener is up, and not ready (503 / NOT_SERVING) from the
//! moment shutdown starts; with `server.drain_delay` the daemon keeps
//! serving for that long while saying so. gRPC `Watch` streams receive the
//! change, then end when the server stops, so they never hold up shutdown.
//!
//! `/readyz` also says which config is in effect (`config: version 3
//! (digest 1a2b3c4d5e6f), reloads 2 ok, 1 failed`) and how many overrides
//! are in force. With Redis, it adds a line `redis: synced`, `redis:
//! degraded` or `redis: starting`.
//!
//! Redis matters to readiness only when the table has strict limits
//! (`mode: strict`): those are decided in Redis, so while Redis is
//! unreachable (or not reached yet) the node is not ready (`waiting:
//! ...` in the body) and balancers send checks to nodes that can reach
//! it; `redis.on_redis_error` still answers what arrives. Any Redis
//! connection of the node that fails for want of Redis turns the state
//! degraded at once (see `sync::conn::Link`). In `sync` mode
//! Redis trouble does not make the node unready: it decides locally, and
//! taking every replica out of service would stop the API. That policy
//! and the Redis line live with sync ([`crate::sync::readiness`]); this
//! module only holds the latch and prints the line it is handed.
//!
//! A reload that fails keeps the config in effect and the node ready (the
//! failure shows in `/readyz`'s reload counts and in
//! `quotad_config_last_reload_successful`): the limits are still loaded,
//! and a bad file pushed to every replica must not take them all out of
//! service at once. A config or limits file that fails at start stops
//! the daemon before anything listens (exit 64), so it is never ready.

use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::metrics::Metrics;
use crate::readiness::{Readiness, StateLine};
use crate::shutdown::Shutdown;

/// More lines for `/readyz`'s body (the config version and reloads,
/// overrides in force), computed per request.
pub type Details = Arc<dyn Fn() -> String + Send + Sync>;

/// The HTTP routes: `/livez`, `/readyz` (with the Redis sync state's
/// line, when there is Redis, and `details`), `/healthcheck`
/// (envoyproxy/ratelimit's) and `/metrics` (Prometheus text format).
pub fn router(
    ready: Readiness,
    redis: Option<StateLine>,
    details: Details,
    metrics: Arc<Metrics>,
) -> Router {
    let scrape = move || {
        let metrics = Arc::clone(&metrics);
        async move {
            (
                [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                metrics.render(),
            )
        }
    };
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/healthcheck", get(healthcheck))
        .with_state((ready, redis, details))
        .route("/metrics", get(scrape))
}

/// envoyproxy/ratelimit's `GET /healthcheck`, so its probes keep working:
/// `OK` (200) while ready, an empty 500 otherwise.
async fn healthcheck(
    State((ready, _, _)): State<(Readiness, Option<StateLine>, Details)>,
) -> (StatusCode, &'static str) {
    if ready.is_ready() {
        (StatusCode::OK, "OK")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "")
    }
}

async fn readyz(
    State((ready, redis, details)): State<(Readiness, Option<StateLine>, Details)>,
) -> (StatusCode, String) {
    let (status, mut body) = if ready.is_ready() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        let mut body = "not ready\n".to_owned();
        if let Some(why) = ready.held() {
            body.push_str("waiting: ");
            body.push_str(why);
            body.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    };
    if let Some(line) = redis {
        body.push_str(line());
    }
    body.push_str(&details());
    (status, body)
}

/// `grpc.health.v1.Health` over the readiness latch. Knows the server as a
/// whole (`""`) and the listed services.
#[derive(Debug, Clone)]
pub struct HealthService {
    ready: Readiness,
    services: &'static [&'static str],
    shutdown: Shutdown,
}

impl HealthService {
    /// Health for `services` (fully qualified names), following `ready`;
    /// `Watch` streams end when `shutdown` fires.
    pub fn new(ready: Readiness, services: &'static [&'static str], shutdown: Shutdown) -> Self {
        Self {
            ready,
            services,
            shutdown,
        }
    }

    fn known(&self, service: &str) -> bool {
        service.is_empty() || self.services.contains(&service)
    }
}

fn status_of(ready: bool) -> ServingStatus {
    if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchOut = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !self.known(&service) {
            return Err(Status::not_found(format!("unknown service '{service}'")));
        }
        Ok(Response::new(answer(status_of(self.ready.is_ready()))))
    }

    type WatchStream = WatchOut;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let mut changes = self.ready.subscribe();
        if !self.known(&service) {
            // The health protocol's answer for an unknown service: say so
            // once and keep the call open (a closed call makes clients
            // re-watch in a loop) until shutdown.
            let mut shutdown = self.shutdown.clone();
            let once = futures_util::stream::iter([Ok(answer(ServingStatus::ServiceUnknown))]);
            let park = futures_util::stream::once(async move { shutdown.wait().await })
                .filter_map(|()| async { None });
            return Ok(Response::new(Box::pin(once.chain(park))));
        }
        // Send the current status, then every change, until shutdown.
        let first = status_of(*changes.borrow_and_update());
        let state = (Some(first), changes, self.shutdown.clone());
        let out = futures_util::stream::unfold(
            state,
            |(pending, mut changes, mut shutdown)| async move {
                if let Some(status) = pending {
                    return Some((Ok(answer(status)), (None, changes, shutdown)));
                }
                // Changes first: the NOT_SERVING that starts a shutdown is
                // delivered before the stream ends.
                tokio::select! {
                    biased;
                    changed = changes.changed() => match changed {
                        Ok(()) => {
                            let status = status_of(*changes.borrow_and_update());
                            Some((Ok(answer(status)), (None, changes, shutdown)))
                        }
                        Err(_) => None,
                    },
                    _ = shutdown.wait() => None,
                }
            },
        );
        Ok(Response::new(Box::pin(out)))
    }
}
