//! Builds the daemon from a [`Config`] and runs it: the only place tasks
//! are spawned, and the owner of the shutdown order.
//!
//! Start-up: build the table and engine (config already validated), bind
//! every listener (so a taken port fails before anything serves), log each
//! bound address, then mark ready.
//!
//! Shutdown, in order: mark not ready (`/readyz` 503, gRPC health
//! NOT_SERVING, pushed to `Watch` streams); keep serving for
//! `server.drain_delay` so balancers move away; stop accepting gRPC
//! connections, end open `CheckStream`s with UNAVAILABLE and health
//! watches cleanly; let in-flight calls finish, giving up after
//! `server.shutdown_grace`; then stop the HTTP listener and the sweeper.
//!
//! Each subsystem has its own entry, which runs until its shutdown fires;
//! this file only binds, spawns them and drains:
//!
//! | subsystem | entry |
//! | --- | --- |
//! | gRPC and admin servers | `servers.rs` (connections through [`crate::net::listen`]) |
//! | HTTP check door (`server.http_check`) | `http_check.rs` ([`crate::api::http::HttpDoor`]) |
//! | HTTP listener, sampler, metrics upkeep, Redis readiness hold | `reporting.rs` ([`crate::net::http::serve`], [`crate::telemetry::sampler`], [`crate::sync::readiness`]) |
//! | Redis sync, strict checks, overrides across nodes | [`crate::sync::RedisSync::run`], [`crate::sync::overrides::OverrideSync::run`] |
//! | reloads: file watcher, SIGHUP | `reloads.rs` ([`crate::control::reload::Reloader::watch`]) |
//! | sweeper | `sweeper.rs` |
//! | Envoy RLQS between reports; its demand across nodes | `rlqs.rs`, [`crate::sync::rlqs::DemandExchange::run`] |

mod http_check;
mod reloads;
mod reporting;
mod rlqs;
mod servers;
mod sweeper;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::AdminService;
use crate::admin::audit::Audit;
use crate::api::envoy_rls::EnvoyRlsService;
use crate::api::native::NativeService;
use crate::api::rlqs::RlqsService;
use crate::config::{Config, RedisSettings};
use crate::control::Control;
use crate::control::reload::{Loader, fingerprint};
use crate::core::{Clock, KeyHasher, SystemClock};
use crate::engine::Engine;
use crate::engine::Strict;
use crate::metrics::Metrics;
use crate::net::budget::Budget;
use crate::net::tls::{ALPN_H2, TlsError};
use crate::readiness::Readiness;
use crate::shutdown::{self, Shutdown, Trigger};
use crate::store::StoreLimits;
use crate::sync::overrides::RedisOverrides;
use crate::sync::{OverrideStore, RedisSync, SyncHandle};
use crate::telemetry::HealthService;
use reloads::Hangups;
use servers::{Listener, bind, ensure_open_files, local_addr};

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
    /// A listener's TLS files could not be used.
    #[error("{what} TLS: {source}")]
    Tls {
        /// Which listener.
        what: &'static str,
        /// What is wrong.
        source: TlsError,
    },
    /// The audit file could not be opened.
    #[error("admin.audit_file {}: {source}", path.display())]
    Audit {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
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
pub struct App {
    control: Arc<Control>,
    engine: Arc<Engine>,
    grpc: Listener,
    http: TcpListener,
    admin: Option<Listener>,
    /// The HTTP check door's listener, when `server.http_check.addr` is set.
    http_check: Option<Listener>,
    http_addr: SocketAddr,
    ready: Readiness,
    sync: Option<(RedisSync, SyncHandle)>,
    loader: Option<Loader>,
    hangups: Option<Hangups>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("grpc", &self.grpc.addr)
            .field("http", &self.http_addr)
            .field("admin", &self.admin.as_ref().map(|a| a.addr))
            .finish_non_exhaustive()
    }
}
impl App {
    /// Builds the engine and binds the listeners, using the real clock.
    pub async fn bind(config: Config) -> Result<App, AppError> {
        Self::bind_with_clock(config, Arc::new(SystemClock::new())).await
    }

    /// [`App::bind`] with a given clock (tests drive time by hand).
    pub async fn bind_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<App, AppError> {
        let hasher = match config.boot.store.hash_secret {
            Some(secret) => KeyHasher::with_secret(secret),
            None => KeyHasher::random(),
        };
        let table = config
            .live
            .limits
            .table(&hasher)?
            .with_rls(config.live.rls.clone());
        let limits = StoreLimits {
            max_cells: config.boot.store.max_tracked_keys,
        };
        // The stopwatch's clock calibrates on first use (up to 200 ms):
        // here, not in the first request.
        let _ = crate::core::clock::Stopwatch::start();
        let metrics = Arc::new(Metrics::new());
        let m = &config.live.metrics;
        metrics.heavy().configure(m.heavy_keys, m.key_names.clone());
        let mut engine = Engine::new(table, hasher, limits, clock)
            .with_metrics(Arc::clone(&metrics))
            .with_max_leases(config.boot.store.max_leases);
        if config.boot.redis.is_some() {
            engine.enable_sync();
        }
        let engine = Arc::new(engine);
        let sync = match &config.boot.redis {
            Some(settings) => {
                let (sync, handle) = RedisSync::new(Arc::clone(&engine), settings.clone())?;
                Some((sync.with_metrics(Arc::clone(&metrics)), handle))
            }
            None => None,
        };
        let audit_file = config
            .boot
            .admin
            .as_ref()
            .and_then(|a| a.audit_file.clone());
        let audit = Audit::open(audit_file.as_deref())
            .map_err(|source| AppError::Audit {
                path: audit_file.clone().unwrap_or_default(),
                source,
            })?
            .with_metrics(Arc::clone(&metrics));
        let server_tls = (config.live.server.tls.as_ref(), ALPN_H2);
        let grpc = Listener::bind("grpc", config.boot.server.grpc_addr, server_tls).await?;
        let http = bind("http", config.boot.server.http_addr).await?;
        let http_addr = local_addr("http", &http, config.boot.server.http_addr)?;
        let admin_tls = config.live.admin.as_ref().and_then(|a| a.tls.as_ref());
        let admin = match &config.boot.admin {
            Some(a) => Some(Listener::bind("admin", a.addr, (admin_tls, ALPN_H2)).await?),
            None => None,
        };
        tracing::info!(
            grpc_addr = %grpc.addr,
            security = grpc.security(config.live.server.tls.as_ref()),
            "gRPC listener bound (quotad.v1.RateLimiter, envoy RLS v3, envoy RLQS v3, health, reflection)"
        );
        tracing::info!(%http_addr, "HTTP listener bound (/livez, /readyz, /metrics)");
        let http_check = http_check::bind_door(&config).await?;
        match (&admin, &config.live.admin) {
            (Some(l), Some(a)) => tracing::info!(
                admin_addr = %l.addr,
                security = l.security(a.tls.as_ref()),
                tokens = a.tokens.len(),
                "admin listener bound (quotad.v1.QuotaAdmin)"
            ),
            _ => tracing::info!("admin API off (no admin section in the config)"),
        }
        ensure_open_files(&config);
        for skipped in &config.live.skipped {
            tracing::warn!("limits directory entry skipped: {skipped}");
        }
        let files = config.watched_files();
        let seed = config.digest_seed();
        let digest = tokio::task::spawn_blocking(move || fingerprint(seed, &files))
            .await
            .unwrap_or_default();
        let control = Control::new(Arc::clone(&engine), config, digest);
        Ok(App {
            control,
            engine,
            grpc,
            http,
            admin,
            http_check,
            http_addr,
            ready: Readiness::new(),
            sync,
            loader: None,
            hangups: None,
            audit: Arc::new(audit),
            metrics,
        })
    }

    /// Reloads read the config with `loader` (the binary's replays its
    /// flags). Without one, a config from a file is read from that file
    /// again, and the embedded default stays as it is.
    pub fn with_loader(mut self, loader: Loader) -> Self {
        self.loader = Some(loader);
        self
    }

    /// Reloads the config whenever `hangups` yields (SIGHUP).
    pub fn reload_on(mut self, hangups: impl Stream<Item = ()> + Send + 'static) -> Self {
        self.hangups = Some(Box::pin(hangups));
        self
    }

    /// The Redis sync task's state, when Redis is configured.
    pub fn sync(&self) -> Option<SyncHandle> {
        self.sync.as_ref().map(|(_, h)| h.clone())
    }

    /// The bound gRPC address (the real port when 0 was asked for).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound admin address, when the admin API is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The bound HTTP check door's address, when it is on.
    pub fn http_check_addr(&self) -> Option<SocketAddr> {
        self.http_check.as_ref().map(|l| l.addr)
    }

    /// The engine, for embedding and tests.
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    /// This daemon's metrics (what `/metrics` renders).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The control plane: config in effect, overrides, reloads.
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// Serves until `signal` resolves, then drains: see the module docs.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let App {
            control,
            engine,
            grpc,
            http,
            admin,
            http_check,
            ready,
            sync,
            loader,
            hangups,
            audit,
            metrics,
            ..
        } = self;
        let config = control.config();
        // Two stages: the gRPC side (listeners, CheckStreams, health
        // watches) stops first; HTTP health and the background tasks last.
        let (grpc_trigger, grpc_stop) = shutdown::channel();
        let (rest_trigger, rest_stop) = shutdown::channel();
        let mut rest = Rest {
            set: JoinSet::new(),
            stop: rest_stop,
        };
        let reloader = Arc::new(reloads::reloader(
            &control,
            loader,
            [Some(&grpc), http_check.as_ref(), admin.as_ref()],
            &metrics,
            &audit,
        ));

        let sync_task = sync.as_ref().map(|(s, _)| s);
        let (front, redis_overrides) = front_doors(
            &control,
            &ready,
            sync_task,
            config.boot.redis.as_ref(),
            grpc_stop.clone(),
            &mut rest,
        )
        .await?;

        let conns = &config.boot.server.conns;
        // One budget of buffered request bytes for both listeners.
        let process = Arc::new(Budget::new(conns.max_buffered_bytes));
        let shared = servers::Shared {
            conns,
            process: &process,
            metrics: &metrics,
        };
        let grpc_task = tokio::spawn(servers::grpc(grpc, front, &shared, grpc_stop.clone())?);
        if let Some(listener) = http_check {
            let settings = (&config.boot.server.http_check, conns.handshakes());
            let engine = Arc::clone(&engine);
            let serve = http_check::serve(listener, engine, settings, &metrics, grpc_stop.clone());
            rest.spawn_server(serve);
        }
        if let Some(admin) = admin {
            let service = AdminService::new(
                Arc::clone(&control),
                Arc::clone(&reloader),
                audit,
                redis_overrides,
            );
            let max_connections = config
                .boot
                .admin
                .as_ref()
                .map_or(conns.max_connections, |a| a.max_connections);
            let serve = servers::admin(admin, service, max_connections, &shared, grpc_stop);
            rest.spawn_server(serve?);
        }

        let handle = sync.as_ref().map(|(_, h)| h.clone());
        reporting::start(&control, handle, &ready, &metrics, http, &mut rest);
        if let Some((sync, _)) = sync {
            // Stops with the rest, after gRPC has answered its last call,
            // so the final flush carries every charge.
            rest.spawn(sync.run(rest.stop()));
        }
        let every = config.boot.store.sweep_interval;
        let sweep = sweeper::run(
            Arc::clone(&control),
            Arc::clone(&metrics),
            every,
            rest.stop(),
        );
        rest.spawn(sweep);
        rest.spawn(rlqs::run(Arc::clone(&engine), rest.stop()));
        rest.spawn(Arc::clone(&reloader).watch(rest.stop()));
        if let Some(hangups) = hangups {
            rest.spawn(reloads::on_hangups(reloader, hangups, rest.stop()));
        }

        ready.set(true);
        tracing::info!(plans = engine.view().table().plans().len(), "quotad ready");
        let stages = Stages {
            grpc: grpc_task,
            grpc_trigger,
            rest,
            rest_trigger,
        };
        stages.drain(signal, &control, &ready).await
    }
}

/// The tasks that stop in the second stage, after gRPC: the admin and
/// HTTP servers and every background task.
struct Rest {
    set: JoinSet<Result<(), AppError>>,
    stop: Shutdown,
}

impl Rest {
    /// The second stage's shutdown signal.
    fn stop(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Spawns a task that runs until the second stage's shutdown.
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(async move {
            task.await;
            Ok(())
        });
    }

    /// Spawns a server, which may fail.
    fn spawn_server(
        &mut self,
        server: impl Future<Output = Result<(), AppError>> + Send + 'static,
    ) {
        self.set.spawn(server);
    }
}

/// The check listener's services. With Redis, strict checks' client and
/// the overrides' follower start here (in `rest`), the overrides read
/// before anything serves; returns the admin API's overrides writer too.
async fn front_doors(
    control: &Arc<Control>,
    ready: &Readiness,
    sync: Option<&RedisSync>,
    settings: Option<&RedisSettings>,
    grpc_stop: Shutdown,
    rest: &mut Rest,
) -> Result<(servers::Front, Option<Arc<RedisOverrides>>), AppError> {
    let front = servers::Front {
        health: HealthService::new(ready.clone(), servers::SERVICES, grpc_stop.clone()),
        native: NativeService::new(Arc::clone(control.engine()), grpc_stop.clone()),
        rls: EnvoyRlsService::new(Arc::clone(control.engine())),
        rlqs: RlqsService::new(Arc::clone(control.engine()), grpc_stop),
    };
    let mut redis_overrides = None;
    if let Some(sync) = sync {
        // Strict mode whenever Redis is configured: a plan, a reload
        // or an override may ask for it.
        if let Some(settings) = settings {
            let strict = start_strict(sync, settings, rest)?;
            control.engine().set_strict(strict);
            start_leases(sync, control.engine(), rest)?;
        }
        rest.spawn(sync.rlqs()?.run(rest.stop()));
        redis_overrides = Some(start_overrides(sync, control, rest).await?);
    }
    Ok((front, redis_overrides))
}

/// Strict checks' Redis client for the engine; its connection is
/// made on first use, by a task that stops with the rest.
fn start_strict(
    sync: &RedisSync,
    settings: &RedisSettings,
    rest: &mut Rest,
) -> Result<Strict, AppError> {
    let (client, task) = sync.strict()?;
    let mut stop = rest.stop();
    rest.spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = stop.wait() => {}
        }
    });
    Ok(Strict {
        client,
        on_error: settings.on_redis_error,
        first_read: settings
            .first_read_min_window
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    })
}

/// Concurrency leases in Redis from now on; the client's connection is
/// made on first use, by a task that stops with the rest.
fn start_leases(sync: &RedisSync, engine: &Arc<Engine>, rest: &mut Rest) -> Result<(), AppError> {
    // The task ends itself at the second stage, after one last round
    // for the releases still waiting.
    let (client, task) = sync.leases(engine.clock(), rest.stop())?;
    rest.spawn(task);
    engine.set_lease_client(client);
    Ok(())
}

/// Overrides through Redis: read before ready (bounded by
/// [`INITIAL_OVERRIDES`]), then followed until shutdown. Returns the
/// admin API's writer.
async fn start_overrides(
    sync: &RedisSync,
    control: &Arc<Control>,
    rest: &mut Rest,
) -> Result<Arc<RedisOverrides>, AppError> {
    let store: Arc<dyn OverrideStore> = Arc::clone(control) as Arc<dyn OverrideStore>;
    let (writer, mut follower) = sync.overrides(store)?;
    match tokio::time::timeout(INITIAL_OVERRIDES, follower.resync()).await {
        Ok(Ok(n)) => tracing::info!(overrides = n, "overrides read from Redis"),
        Ok(Err(e)) => tracing::warn!(
            error = %sync.scrub().text(&e.to_string()),
            "overrides not read from Redis yet; serving without them and retrying"
        ),
        Err(_) => tracing::warn!(
            "overrides not read from Redis in time; serving without them and retrying"
        ),
    }
    rest.spawn(follower.run(rest.stop()));
    Ok(Arc::new(writer))
}

/// The running servers, in the two stages they stop in.
struct Stages {
    grpc: JoinHandle<Result<(), AppError>>,
    grpc_trigger: Trigger,
    rest: Rest,
    rest_trigger: Trigger,
}

impl Stages {
    /// Runs until `signal`, or until a server fails on its own, then
    /// drains in the order the module docs give.
    async fn drain(
        mut self,
        signal: impl Future<Output = ()> + Send,
        control: &Control,
        ready: &Readiness,
    ) -> Result<(), AppError> {
        // A server that returns before the signal, even without an error,
        // has stopped serving: that is a failure.
        let mut result = Ok(());
        let grpc_done = tokio::select! {
            _ = signal => None,
            done = &mut self.grpc => Some(done),
            Some(done) = self.rest.set.join_next() => {
                result = flatten(done).and(Err(stopped("admin, HTTP or a background task")));
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

        // The settings in effect now: a reload may have changed them.
        let config = control.config();
        let server = &config.live.server;
        tracing::info!(
            drain_delay_ms = server.drain_delay.as_millis() as u64,
            grace_ms = server.shutdown_grace.as_millis() as u64,
            "shutting down: not ready from now on"
        );
        ready.set(false);
        if grpc_running && !server.drain_delay.is_zero() {
            tokio::time::sleep(server.drain_delay).await;
        }
        self.grpc_trigger.fire();
        if grpc_running {
            match tokio::time::timeout(server.shutdown_grace, &mut self.grpc).await {
                Ok(done) => {
                    keep_first(&mut result, flatten(done));
                    tracing::info!("drained: every in-flight call answered");
                }
                Err(_) => {
                    self.grpc.abort();
                    tracing::warn!(
                        grace_ms = server.shutdown_grace.as_millis() as u64,
                        "grace period expired with calls still in flight; exiting anyway"
                    );
                }
            }
        }
        self.rest_trigger.fire();
        // HTTP health requests are tiny; a client that stalls one must not
        // keep the process alive.
        let rest_done = async {
            while let Some(done) = self.rest.set.join_next().await {
                keep_first(&mut result, flatten(done));
            }
        };
        if tokio::time::timeout(REST_GRACE, rest_done).await.is_err() {
            tracing::warn!("HTTP listener did not close in time; exiting anyway");
        }
        result
    }
}

/// How long start-up waits to read the overrides from Redis before it
/// serves without them (and keeps trying).
const INITIAL_OVERRIDES: Duration = Duration::from_secs(2);

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

fn keep_first(result: &mut Result<(), AppError>, next: Result<(), AppError>) {
    if let Err(e) = next {
        tracing::error!(error = %e, "server failed while draining");
        if result.is_ok() {
            *result = Err(e);
        }
    }
}

fn flatten(done: Result<Result<(), AppError>, tokio::task::JoinError>) -> Result<(), AppError> {
    done.unwrap_or_else(|e| {
        Err(AppError::Serve {
            what: "task",
            source: Box::new(e),
        })
    })
}
