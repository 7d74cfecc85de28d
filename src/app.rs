//! Builds the daemon from a [`Config`] and runs it: the only place tasks
//! are spawned, and the owner of the shutdown order.
//!
//! Start-up: build the table and limiter (config already validated), bind
//! every listener (so a taken port fails before anything serves), log each
//! bound address, then mark ready. Shutdown: mark not ready (health turns
//! NOT_SERVING), stop accepting, end open `CheckStream`s cleanly, let
//! in-flight calls finish, and give up after `shutdown_grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::api::envoy_descriptors;
use crate::api::envoy_rls::EnvoyRlsService;
use crate::api::native::NativeService;
use crate::api::pb;
use crate::api::pb::rate_limiter_server::RateLimiterServer;
use crate::config::Config;
use crate::core::{Clock, KeyHasher, Limiter, SystemClock};
use crate::shutdown::{self, Shutdown, Trigger};
use crate::store::StoreLimits;
use crate::telemetry::{self, Readiness};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The limits table could not be built.
    #[error("limits: {0}")]
    Table(#[from] crate::limits::TableError),
    /// Server reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A server stopped with an error.
    #[error("{what} server: {source}")]
    Serve {
        /// Which server.
        what: &'static str,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A daemon with its listeners bound, ready to [`App::run`].
#[derive(Debug)]
pub struct App {
    config: Config,
    limiter: Arc<Limiter>,
    grpc: TcpListener,
    http: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    ready: Readiness,
}

impl App {
    /// Builds the limiter and binds the listeners, using the real clock.
    pub async fn bind(config: Config) -> Result<App, AppError> {
        Self::bind_with_clock(config, Arc::new(SystemClock::new())).await
    }

    /// [`App::bind`] with a given clock (tests drive time by hand).
    pub async fn bind_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<App, AppError> {
        let hasher = match config.store.hash_secret {
            Some(secret) => KeyHasher::with_secret(secret),
            None => KeyHasher::random(),
        };
        let table = config.limits.table(&hasher)?;
        let limits = StoreLimits {
            max_cells: config.store.max_tracked_keys,
        };
        let limiter = Arc::new(Limiter::new(table, hasher, limits, clock));
        let grpc = bind("grpc", config.server.grpc_addr).await?;
        let http = bind("http", config.server.http_addr).await?;
        let grpc_addr = local_addr("grpc", &grpc, config.server.grpc_addr)?;
        let http_addr = local_addr("http", &http, config.server.http_addr)?;
        tracing::info!(%grpc_addr, "gRPC listener bound (quotad.v1.RateLimiter, envoy RLS v3, health, reflection)");
        tracing::info!(%http_addr, "HTTP listener bound (/livez, /readyz)");
        Ok(App {
            config,
            limiter,
            grpc,
            http,
            grpc_addr,
            http_addr,
            ready: Readiness::new(),
        })
    }

    /// The bound gRPC address (the real port when 0 was asked for).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The engine, for embedding and tests.
    pub fn limiter(&self) -> Arc<Limiter> {
        Arc::clone(&self.limiter)
    }

    /// Serves until `signal` resolves, then drains within the grace period.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let App {
            config,
            limiter,
            grpc,
            http,
            ready,
            ..
        } = self;
        let grace = config.server.shutdown_grace;
        let (trigger, shutdown) = shutdown::channel();

        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let native = NativeService::new(
            Arc::clone(&limiter),
            config.requests.clone(),
            shutdown.clone(),
        );
        let rls = EnvoyRlsService::new(
            Arc::clone(&limiter),
            config.requests.clone(),
            config.envoy.clone(),
        );

        let mut tasks = JoinSet::new();
        let grpc_server = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(RateLimiterServer::new(native))
            .add_service(RateLimitServiceServer::new(rls))
            .serve_with_incoming_shutdown(incoming(grpc), wait(shutdown.clone()));
        tasks.spawn(async move {
            grpc_server.await.map_err(|e| AppError::Serve {
                what: "gRPC",
                source: Box::new(e),
            })
        });
        let http_server = axum::serve(http, telemetry::router(ready.clone()))
            .with_graceful_shutdown(wait(shutdown.clone()));
        tasks.spawn(async move {
            http_server.await.map_err(|e| AppError::Serve {
                what: "HTTP",
                source: Box::new(e),
            })
        });
        tasks.spawn(sweeper(
            Arc::clone(&limiter),
            config.store.sweep_interval,
            shutdown.clone(),
        ));

        health
            .set_serving::<RateLimiterServer<NativeService>>()
            .await;
        health
            .set_serving::<RateLimitServiceServer<EnvoyRlsService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        ready.set(true);
        tracing::info!(
            plans = limiter.snapshot().table().plans().len(),
            "quotad ready"
        );

        // Run until the signal, or until a server fails on its own.
        let first_error = tokio::select! {
            _ = signal => None,
            Some(done) = tasks.join_next() => Some(flatten(done)),
        };
        drain(&trigger, &ready, &health, tasks, grace, first_error).await
    }
}

/// Server reflection over our API, gRPC health and Envoy's RLS v3.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(envoy_descriptors::file_descriptor_set())
}

/// Ends the process's serving in order and returns the first error seen.
async fn drain(
    trigger: &Trigger,
    ready: &Readiness,
    health: &tonic_health::server::HealthReporter,
    mut tasks: JoinSet<Result<(), AppError>>,
    grace: Duration,
    first_error: Option<Result<(), AppError>>,
) -> Result<(), AppError> {
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight calls"
    );
    ready.set(false);
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<RateLimiterServer<NativeService>>()
        .await;
    health
        .set_not_serving::<RateLimitServiceServer<EnvoyRlsService>>()
        .await;
    trigger.fire();
    let mut result = first_error.unwrap_or(Ok(()));
    let all_done = async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = flatten(done) {
                tracing::error!(error = %e, "server failed while draining");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
    };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period expired with calls still in flight; exiting anyway"
        );
    } else {
        tracing::info!("drained");
    }
    result
}

fn flatten(done: Result<Result<(), AppError>, tokio::task::JoinError>) -> Result<(), AppError> {
    done.unwrap_or_else(|e| {
        Err(AppError::Serve {
            what: "task",
            source: Box::new(e),
        })
    })
}

async fn wait(mut shutdown: Shutdown) {
    shutdown.wait().await;
}

/// Drops idle buckets every `every` until shutdown.
async fn sweeper(
    limiter: Arc<Limiter>,
    every: Duration,
    mut shutdown: Shutdown,
) -> Result<(), AppError> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tick.tick() => {
                let limiter = Arc::clone(&limiter);
                // Sweeping a million cells takes milliseconds: keep it off
                // the request threads' executor slots.
                let report = tokio::task::spawn_blocking(move || limiter.sweep()).await;
                if let Ok(r) = report {
                    tracing::debug!(buckets = r.buckets, quotas = r.quotas, "swept idle cells");
                }
            }
        }
    }
}

/// Accepted gRPC connections, with Nagle off (answers are small and
/// latency-critical) and TCP keepalive so dead peers are noticed.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, AppError> {
    l.local_addr()
        .map_err(|source| AppError::Bind { what, addr, source })
}
