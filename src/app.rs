//! Builds the daemon from a [`Config`] and runs it: the only place tasks
//! are spawned, and the owner of the shutdown order.
//!
//! Start-up: build the table and limiter (config already validated), bind
//! every listener (so a taken port fails before anything serves), log each
//! bound address, then mark ready.
//!
//! Shutdown, in order: mark not ready (`/readyz` 503, gRPC health
//! NOT_SERVING, pushed to `Watch` streams); keep serving for
//! `server.drain_delay` so balancers move away; stop accepting gRPC
//! connections, end open `CheckStream`s with UNAVAILABLE and health
//! watches cleanly; let in-flight calls finish, giving up after
//! `server.shutdown_grace`; then stop the HTTP listener and the sweeper.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::api::decide::Strict;
use crate::api::envoy_descriptors;
use crate::api::envoy_rls::EnvoyRlsService;
use crate::api::native::NativeService;
use crate::api::pb;
use crate::api::pb::rate_limiter_server::RateLimiterServer;
use crate::config::Config;
use crate::core::{Clock, KeyHasher, Limiter, SystemClock};
use crate::shutdown::{self, Shutdown};
use crate::store::StoreLimits;
use crate::sync::{RedisSync, SyncHandle};
use crate::telemetry::{self, HealthService, Readiness};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tonic_health::pb::health_server::HealthServer;

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
    /// The Redis sync task could not be set up.
    #[error("{0}")]
    Sync(#[from] crate::sync::SyncError),
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
    sync: Option<(RedisSync, SyncHandle)>,
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
        let table = config.limits.table(&hasher)?.with_rls(config.rls.clone());
        let limits = StoreLimits {
            max_cells: config.store.max_tracked_keys,
        };
        let mut limiter = Limiter::new(table, hasher, limits, clock);
        if config.redis.is_some() {
            limiter.enable_sync();
        }
        let limiter = Arc::new(limiter);
        let sync = match &config.redis {
            Some(settings) => Some(RedisSync::new(Arc::clone(&limiter), settings.clone())?),
            None => None,
        };
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
            sync,
        })
    }

    /// The Redis sync task's state, when Redis is configured.
    pub fn sync(&self) -> Option<SyncHandle> {
        self.sync.as_ref().map(|(_, h)| h.clone())
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

    /// Serves until `signal` resolves, then drains: see the module docs.
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
            sync,
            ..
        } = self;
        // Two stages: the gRPC side (listener, CheckStreams, health
        // watches) stops first; HTTP health and the sweeper last.
        let (grpc_trigger, grpc_stop) = shutdown::channel();
        let (rest_trigger, rest_stop) = shutdown::channel();

        let health = HealthService::new(ready.clone(), SERVICES, grpc_stop.clone());
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let mut native = NativeService::new(
            Arc::clone(&limiter),
            config.requests.clone(),
            config.response_headers,
            grpc_stop.clone(),
        );
        let mut rls = EnvoyRlsService::new(
            Arc::clone(&limiter),
            config.requests.clone(),
            config.envoy.clone(),
            config.response_headers,
        );
        let mut rest = JoinSet::new();
        // Strict mode only when a plan asks for it: its client shares the
        // sync task's Redis connection.
        let any_strict = config
            .limits
            .plans
            .iter()
            .any(|p| p.limits.iter().any(|l| l.strict));
        if let (Some((sync, _)), Some(settings), true) = (&sync, &config.redis, any_strict) {
            let (client, task) = sync.strict()?;
            let strict = Strict {
                client,
                on_error: settings.on_redis_error,
            };
            native = native.with_strict(strict.clone());
            rls = rls.with_strict(strict);
            let mut stop = rest_stop.clone();
            rest.spawn(async move {
                tokio::select! {
                    _ = task => {}
                    _ = stop.wait() => {}
                }
                Ok(())
            });
        }
        let grpc_server = Server::builder()
            .add_service(HealthServer::new(health))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(RateLimiterServer::new(native))
            .add_service(RateLimitServiceServer::new(rls))
            .serve_with_incoming_shutdown(incoming(grpc), wait(grpc_stop));
        let mut grpc_task = tokio::spawn(async move {
            grpc_server.await.map_err(|e| AppError::Serve {
                what: "gRPC",
                source: Box::new(e),
            })
        });

        let redis_state = sync.as_ref().map(|(_, h)| h.clone());
        let http_server = axum::serve(http, telemetry::router(ready.clone(), redis_state))
            .with_graceful_shutdown(wait(rest_stop.clone()));
        rest.spawn(async move {
            http_server.await.map_err(|e| AppError::Serve {
                what: "HTTP",
                source: Box::new(e),
            })
        });
        if let Some((sync, _)) = sync {
            // Stops with the rest, after gRPC has answered its last call,
            // so the final flush carries every charge.
            let stop = rest_stop.clone();
            rest.spawn(async move {
                sync.run(stop).await;
                Ok(())
            });
        }
        rest.spawn(sweeper(
            Arc::clone(&limiter),
            config.store.sweep_interval,
            rest_stop,
        ));

        ready.set(true);
        tracing::info!(
            plans = limiter.snapshot().table().plans().len(),
            "quotad ready"
        );

        // Run until the signal, or until a server fails on its own.
        // A server that returns before the signal, even without an error,
        // has stopped serving: that is a failure.
        let mut result = Ok(());
        let grpc_done = tokio::select! {
            _ = signal => None,
            done = &mut grpc_task => Some(done),
            Some(done) = rest.join_next() => {
                result = flatten(done).and(Err(stopped("HTTP or sweeper")));
                None
            }
        };
        let grpc_running = grpc_done.is_none();
        if let Some(done) = grpc_done {
            result = flatten(done).and(Err(stopped("gRPC")));
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "a server stopped unexpectedly; shutting down");
        }

        let server = &config.server;
        tracing::info!(
            drain_delay_ms = server.drain_delay.as_millis() as u64,
            grace_ms = server.shutdown_grace.as_millis() as u64,
            "shutting down: not ready from now on"
        );
        ready.set(false);
        if grpc_running && !server.drain_delay.is_zero() {
            tokio::time::sleep(server.drain_delay).await;
        }
        grpc_trigger.fire();
        if grpc_running {
            match tokio::time::timeout(server.shutdown_grace, &mut grpc_task).await {
                Ok(done) => {
                    keep_first(&mut result, flatten(done));
                    tracing::info!("drained: every in-flight call answered");
                }
                Err(_) => {
                    grpc_task.abort();
                    tracing::warn!(
                        grace_ms = server.shutdown_grace.as_millis() as u64,
                        "grace period expired with calls still in flight; exiting anyway"
                    );
                }
            }
        }
        rest_trigger.fire();
        // HTTP health requests are tiny; a client that stalls one must not
        // keep the process alive.
        let rest_done = async {
            while let Some(done) = rest.join_next().await {
                keep_first(&mut result, flatten(done));
            }
        };
        if tokio::time::timeout(REST_GRACE, rest_done).await.is_err() {
            tracing::warn!("HTTP listener did not close in time; exiting anyway");
        }
        result
    }
}

/// How long the HTTP listener, the sweeper and the Redis sync task (its
/// round in progress, then its final flush, bounded by
/// [`crate::sync::FINAL_FLUSH`]) get to stop, after gRPC.
const REST_GRACE: Duration = Duration::from_secs(4);

fn stopped(what: &'static str) -> AppError {
    AppError::Serve {
        what,
        source: "stopped serving before shutdown was asked for".into(),
    }
}

/// The services gRPC health reports on (besides the server as a whole).
const SERVICES: &[&str] = &[
    "quotad.v1.RateLimiter",
    "envoy.service.ratelimit.v3.RateLimitService",
];

fn keep_first(result: &mut Result<(), AppError>, next: Result<(), AppError>) {
    if let Err(e) = next {
        tracing::error!(error = %e, "server failed while draining");
        if result.is_ok() {
            *result = Err(e);
        }
    }
}

/// Server reflection over our API, gRPC health and Envoy's RLS v3.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(envoy_descriptors::file_descriptor_set())
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
    let mut overflowed = limiter.store().overflowed();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tick.tick() => {
                let l = Arc::clone(&limiter);
                // Sweeping a million cells takes milliseconds: keep it off
                // the request threads' executor slots.
                match tokio::task::spawn_blocking(move || l.sweep()).await {
                    Ok(r) => tracing::debug!(
                        buckets = r.buckets,
                        quotas = r.quotas,
                        tracked = limiter.store().tracked(),
                        "swept idle cells"
                    ),
                    Err(e) => tracing::error!(error = %e, "sweep failed"),
                }
                let now = limiter.store().overflowed();
                if now > overflowed {
                    let store = limiter.store();
                    tracing::warn!(
                        new_keys_judged_by_overflow = now - overflowed,
                        tracked = store.tracked(),
                        max_tracked_keys = store.limits().max_cells,
                        "store full: keys not yet tracked share one overflow bucket per limit"
                    );
                    overflowed = now;
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
