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
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tower_layer::{Identity, Stack};

use crate::admin::AdminService;
use crate::admin::audit::{Audit, Record};
use crate::api::decide::Strict;
use crate::api::envoy_descriptors;
use crate::api::envoy_rls::EnvoyRlsService;
use crate::api::malformed::Malformed;
use crate::api::native::NativeService;
use crate::api::pb;
use crate::api::pb::quota_admin_server::QuotaAdminServer;
use crate::api::pb::rate_limiter_server::RateLimiterServer;
use crate::config::{Config, ConnLimits, TlsFiles};
use crate::control::Control;
use crate::control::reload::{Cause, Loader, Reloader, fingerprint};
use crate::core::{Clock, KeyHasher, Limiter, SystemClock};
use crate::net::body::BodyRules;
use crate::net::budget::Budget;
use crate::net::gate::GateRules;
use crate::net::tls::{Acceptor, TlsError};
use crate::net::{CallLayer, Gate, MAX_HEADER_LIST, listen};
use crate::shutdown::{self, Shutdown};
use crate::store::StoreLimits;
use crate::sync::{RedisSync, SyncHandle};
use crate::telemetry::metrics::names;
use crate::telemetry::{self, HealthService, Metrics, Readiness};
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
    limiter: Arc<Limiter>,
    grpc: Listener,
    http: TcpListener,
    admin: Option<Listener>,
    http_addr: SocketAddr,
    ready: Readiness,
    sync: Option<(RedisSync, SyncHandle)>,
    loader: Option<Loader>,
    hangups: Option<Hangups>,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
}

/// A stream of reload requests (SIGHUP).
type Hangups = Pin<Box<dyn Stream<Item = ()> + Send>>;

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("grpc", &self.grpc.addr)
            .field("http", &self.http_addr)
            .field("admin", &self.admin.as_ref().map(|a| a.addr))
            .finish_non_exhaustive()
    }
}

/// A bound gRPC listener and, with TLS, its acceptor.
struct Listener {
    tcp: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<Acceptor>>,
}

impl Listener {
    async fn bind(
        what: &'static str,
        addr: SocketAddr,
        tls: Option<&TlsFiles>,
    ) -> Result<Listener, AppError> {
        let tls = tls
            .map(|t| Acceptor::new(&t.pem).map(Arc::new))
            .transpose()
            .map_err(|source| AppError::Tls { what, source })?;
        let tcp = bind(what, addr).await?;
        let addr = local_addr(what, &tcp, addr)?;
        Ok(Listener { tcp, addr, tls })
    }

    /// `plain text` or `TLS` or `mTLS`, for the log.
    fn security(&self, files: Option<&TlsFiles>) -> &'static str {
        match files {
            Some(f) if f.client_ca_file.is_some() => "mTLS",
            Some(_) => "TLS",
            None => "plain text",
        }
    }

    /// Serves `router` on this listener until `stop` fires, admitting
    /// connections through `gate` (TLS handshakes bounded by `limits`).
    fn serve(
        self,
        router: Routes,
        what: &'static str,
        gate: Arc<Gate>,
        limits: &ConnLimits,
        stop: Shutdown,
    ) -> BoxedServe {
        match self.tls {
            None => {
                let conns = listen::plain(self.tcp, what, gate);
                Box::pin(router.serve_with_incoming_shutdown(conns, wait(stop)))
            }
            Some(tls) => {
                let conns = listen::tls(self.tcp, what, tls, limits.handshakes(), gate);
                Box::pin(router.serve_with_incoming_shutdown(conns, wait(stop)))
            }
        }
    }
}

type BoxedServe = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// The gRPC servers' routes, with each call counted on its connection.
type Routes = Router<Stack<CallLayer, Identity>>;

/// A gRPC server builder with the connection limits of `c`, its request
/// bodies drawn from the process's budget `process`.
fn server(c: &ConnLimits, process: &Arc<Budget>) -> Server<Stack<CallLayer, Identity>> {
    let builder = Server::builder()
        .max_concurrent_streams(c.max_concurrent_streams)
        .http2_keepalive_interval(Some(c.keepalive_interval))
        .http2_keepalive_timeout(Some(c.keepalive_timeout))
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .initial_connection_window_size(c.receive_window_bytes)
        .initial_stream_window_size(c.receive_window_bytes);
    let builder = match c.max_connection_age {
        Some(age) => builder
            .max_connection_age(age)
            .max_connection_age_grace(MAX_AGE_GRACE),
        None => builder,
    };
    let rules = BodyRules {
        process: Arc::clone(process),
        timeout: c.request_body_timeout,
        max_message: c.max_message_bytes,
    };
    builder.layer(CallLayer::new(rules, STREAMS))
}

/// The methods whose callers stream requests: they may open a call and
/// send its first message later.
const STREAMS: &[&str] = &[
    "/quotad.v1.RateLimiter/CheckStream",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// What each connection of a gRPC listener may hold and do.
fn gate_rules(c: &ConnLimits) -> GateRules {
    GateRules {
        max_connections: c.max_connections,
        idle_timeout: c.idle_timeout,
        max_buffered_bytes_per_connection: c.max_buffered_bytes_per_connection,
        max_unsent_bytes_per_connection: c.max_unsent_bytes_per_connection,
        reads_are_activity: false,
    }
}

/// Warns when the connection caps exceed what the open-files limit
/// allows: accepts would fail (and be retried every 50 ms) before the cap
/// is reached.
fn warn_if_short_of_files(config: &Config) {
    let per_listener = config.server.conns.max_connections as u64;
    let admin = config
        .admin
        .as_ref()
        .map_or(0, |a| a.max_connections as u64);
    // Listeners, the HTTP listener's connections, Redis, config files,
    // logs.
    let needed = per_listener + admin + crate::net::http::HTTP_MAX_CONNECTIONS as u64 + 64;
    if let Some(limit) = crate::net::open_files_limit()
        && limit < needed
    {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = per_listener,
            "server.max_connections exceeds the open-files limit (ulimit -n): raise the limit or lower max_connections, or accepts fail before the cap"
        );
    }
}

/// How long a connection past `server.max_connection_age` may finish its
/// calls before it is closed.
const MAX_AGE_GRACE: Duration = Duration::from_secs(30);

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
        // The stopwatch's clock calibrates on first use (up to 200 ms):
        // here, not in the first request.
        let _ = crate::core::clock::Stopwatch::start();
        let metrics = Arc::new(Metrics::new());
        let m = &config.metrics;
        metrics.heavy().configure(m.heavy_keys, m.key_names.clone());
        let sync = match &config.redis {
            Some(settings) => {
                let (sync, handle) = RedisSync::new(Arc::clone(&limiter), settings.clone())?;
                Some((sync.with_metrics(Arc::clone(&metrics)), handle))
            }
            None => None,
        };
        let audit_file = config.admin.as_ref().and_then(|a| a.audit_file.clone());
        let audit = Audit::open(audit_file.as_deref())
            .map_err(|source| AppError::Audit {
                path: audit_file.clone().unwrap_or_default(),
                source,
            })?
            .with_metrics(Arc::clone(&metrics));
        let grpc =
            Listener::bind("grpc", config.server.grpc_addr, config.server.tls.as_ref()).await?;
        let http = bind("http", config.server.http_addr).await?;
        let http_addr = local_addr("http", &http, config.server.http_addr)?;
        let admin = match &config.admin {
            Some(a) => Some(Listener::bind("admin", a.addr, a.tls.as_ref()).await?),
            None => None,
        };
        tracing::info!(
            grpc_addr = %grpc.addr,
            security = grpc.security(config.server.tls.as_ref()),
            "gRPC listener bound (quotad.v1.RateLimiter, envoy RLS v3, health, reflection)"
        );
        tracing::info!(%http_addr, "HTTP listener bound (/livez, /readyz, /metrics)");
        match (&admin, &config.admin) {
            (Some(l), Some(a)) => tracing::info!(
                admin_addr = %l.addr,
                security = l.security(a.tls.as_ref()),
                tokens = a.tokens.len(),
                "admin listener bound (quotad.v1.QuotaAdmin)"
            ),
            _ => tracing::info!("admin API off (no admin section in the config)"),
        }
        warn_if_short_of_files(&config);
        for skipped in &config.skipped {
            tracing::warn!("limits directory entry skipped: {skipped}");
        }
        let files = config.watched_files();
        let digest = tokio::task::spawn_blocking(move || fingerprint(&files))
            .await
            .unwrap_or_default();
        let control = Control::new(Arc::clone(&limiter), config, digest);
        Ok(App {
            control,
            limiter,
            grpc,
            http,
            admin,
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

    /// The engine, for embedding and tests.
    pub fn limiter(&self) -> Arc<Limiter> {
        Arc::clone(&self.limiter)
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
            limiter,
            grpc,
            http,
            admin,
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
        let mut rest = JoinSet::new();

        let reloader = Arc::new(reloader(
            &control,
            loader,
            &grpc,
            admin.as_ref(),
            &metrics,
            &audit,
        ));

        let health = HealthService::new(ready.clone(), SERVICES, grpc_stop.clone());
        let mut native = NativeService::new(
            Arc::clone(&limiter),
            control.live(),
            grpc_stop.clone(),
            Arc::clone(&metrics),
        );
        let mut rls =
            EnvoyRlsService::new(Arc::clone(&limiter), control.live(), Arc::clone(&metrics));
        // Strict mode whenever Redis is configured: a plan, a reload or an
        // override may ask for it. Its connection is made on first use.
        if let (Some((sync, _)), Some(settings)) = (&sync, &config.redis) {
            let (client, task) = sync.strict()?;
            let strict = Strict {
                client,
                on_error: settings.on_redis_error,
                metrics: Arc::clone(&metrics),
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
        // Overrides through Redis: read before ready (bounded), then
        // followed until shutdown.
        let redis_overrides = match &sync {
            Some((sync, _)) => {
                let (writer, mut follower) =
                    sync.overrides(Arc::clone(&control) as Arc<dyn crate::sync::OverrideStore>)?;
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
                let stop = rest_stop.clone();
                rest.spawn(async move {
                    follower.run(stop).await;
                    Ok(())
                });
                Some(Arc::new(writer))
            }
            None => None,
        };

        let conns = &config.server.conns;
        let max = conns.max_message_bytes;
        // One budget of buffered request bytes for both listeners.
        let process = Arc::new(Budget::new(conns.max_buffered_bytes));
        let grpc_server = grpc.serve(
            server(conns, &process)
                .add_service(HealthServer::new(health).max_decoding_message_size(max))
                .add_service(reflection().build_v1()?.max_decoding_message_size(max))
                .add_service(reflection().build_v1alpha()?.max_decoding_message_size(max))
                .add_service(RateLimiterServer::new(native).max_decoding_message_size(max))
                .add_service(Malformed(
                    RateLimitServiceServer::new(rls).max_decoding_message_size(max),
                )),
            "grpc",
            Gate::new("grpc", gate_rules(conns), &metrics),
            conns,
            grpc_stop.clone(),
        );
        let mut grpc_task = tokio::spawn(async move {
            grpc_server.await.map_err(|e| AppError::Serve {
                what: "gRPC",
                source: Box::new(e),
            })
        });
        if let Some(admin) = admin {
            let service = AdminService::new(
                Arc::clone(&control),
                Arc::clone(&reloader),
                audit,
                redis_overrides,
            );
            let admin_server = admin.serve(
                server(conns, &process)
                    .add_service(QuotaAdminServer::new(service).max_decoding_message_size(max))
                    .add_service(reflection().build_v1()?.max_decoding_message_size(max))
                    .add_service(reflection().build_v1alpha()?.max_decoding_message_size(max)),
                "admin",
                Gate::new(
                    "admin",
                    GateRules {
                        max_connections: config
                            .admin
                            .as_ref()
                            .map_or(conns.max_connections, |a| a.max_connections),
                        ..gate_rules(conns)
                    },
                    &metrics,
                ),
                conns,
                grpc_stop.clone(),
            );
            rest.spawn(async move {
                admin_server.await.map_err(|e| AppError::Serve {
                    what: "admin",
                    source: Box::new(e),
                })
            });
        }

        let redis_state = sync.as_ref().map(|(_, h)| h.clone());
        metrics.on_scrape(sampler(&control, redis_state.clone(), ready.clone()));
        if let Some(handle) = redis_state.clone() {
            // Plans with strict limits need Redis to be decided: not ready
            // while it is unreachable (held from the start, before the
            // daemon first says ready, then followed).
            ready.hold(redis_hold(&control, &handle));
            rest.spawn(hold_for_redis(
                Arc::clone(&control),
                handle,
                ready.clone(),
                rest_stop.clone(),
            ));
        }
        rest.spawn(upkeep(
            Arc::clone(&metrics),
            Arc::clone(&control),
            rest_stop.clone(),
        ));
        let router = telemetry::router(
            ready.clone(),
            redis_state,
            details(&control),
            Arc::clone(&metrics),
        );
        let http_metrics = Arc::clone(&metrics);
        let http_stop = rest_stop.clone();
        rest.spawn(async move {
            crate::net::http::serve(http, router, &http_metrics, http_stop)
                .await
                .map_err(|e| AppError::Serve {
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
            Arc::clone(&control),
            Arc::clone(&metrics),
            config.store.sweep_interval,
            rest_stop.clone(),
        ));
        let watcher = Arc::clone(&reloader);
        let stop = rest_stop.clone();
        rest.spawn(async move {
            watcher.watch(stop).await;
            Ok(())
        });
        if let Some(hangups) = hangups {
            rest.spawn(reload_on_hangups(Arc::clone(&reloader), hangups, rest_stop));
        }

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

/// How long start-up waits to read the overrides from Redis before it
/// serves without them (and keeps trying).
const INITIAL_OVERRIDES: Duration = Duration::from_secs(2);

/// The reloader: through `loader`, or the config's own file; reloads
/// hand the listeners' acceptors their new certificates, and refused ones
/// started by SIGHUP or the watcher go to the audit trail (the admin API
/// audits its own, naming the caller).
fn reloader(
    control: &Arc<Control>,
    loader: Option<Loader>,
    grpc: &Listener,
    admin: Option<&Listener>,
    metrics: &Arc<Metrics>,
    audit: &Arc<Audit>,
) -> Reloader {
    let config = control.config();
    let loader = loader.unwrap_or_else(|| match config.source.clone() {
        Some(path) => Arc::new(move || Config::load(&path).map_err(|e| e.to_string())),
        None => {
            let fixed = Config::clone(&config);
            Arc::new(move || Ok(fixed.clone()))
        }
    });
    let mut reloader = Reloader::new(Arc::clone(control), loader);
    let (trail, c) = (Arc::clone(audit), Arc::clone(control));
    reloader.on_failure(Box::new(move |cause: Cause, error: &str| {
        if cause != Cause::Admin {
            let now = c.limiter().now();
            let record = Record::by("-".to_owned(), None, "config.reload", now);
            trail.write(&record.failed(cause.as_str(), error));
        }
    }));
    let m = Arc::clone(metrics);
    reloader.on_reload(Box::new(move |c: &Config| {
        m.heavy()
            .configure(c.metrics.heavy_keys, c.metrics.key_names.clone());
    }));
    let server_tls: fn(&Config) -> Option<&TlsFiles> = |c| c.server.tls.as_ref();
    let admin_tls: fn(&Config) -> Option<&TlsFiles> =
        |c| c.admin.as_ref().and_then(|a| a.tls.as_ref());
    let listeners = [
        (Some(grpc), "server.tls", server_tls),
        (admin, "admin.tls", admin_tls),
    ];
    for (listener, section, files_of) in listeners {
        if let Some(tls) = listener.and_then(|l| l.tls.clone()) {
            reloader.on_reload(Box::new(move |c: &Config| {
                if let Some(files) = files_of(c) {
                    renew(&tls, files, section);
                }
            }));
        }
    }
    reloader
}

/// Gives `tls` the certificate in `files` (already checked by the config).
fn renew(tls: &Acceptor, files: &TlsFiles, section: &str) {
    match tls.replace(&files.pem) {
        Ok(()) => tracing::info!(
            section,
            cert = %files.cert_file.display(),
            "TLS certificate in use for new connections"
        ),
        Err(e) => {
            tracing::error!(section, error = %e, "TLS certificate refused; the old one stays")
        }
    }
}

/// `/readyz`'s lines about the config and overrides.
fn details(control: &Arc<Control>) -> telemetry::Details {
    let control = Arc::clone(control);
    Arc::new(move || {
        let v = control.version();
        let stats = control.stats();
        let mut out = format!(
            "config: version {} (digest {}), reloads {} ok, {} failed\n",
            v.number,
            v.short_digest(),
            stats.ok,
            stats.failed
        );
        let overrides = control.limiter().snapshot().table().overrides();
        out.push_str(&format!("overrides: {overrides} in force\n"));
        out
    })
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

/// Reloads whenever `hangups` yields, until `stop` fires; a reload in
/// progress does not hold up the shutdown.
async fn reload_on_hangups(
    reloader: Arc<Reloader>,
    mut hangups: Hangups,
    mut stop: Shutdown,
) -> Result<(), AppError> {
    loop {
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            next = hangups.next() => match next {
                Some(()) => {}
                None => return Ok(()),
            },
        }
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            // Logged (and counted) by the reloader.
            _ = reloader.reload(Cause::Signal) => {}
        }
    }
}

/// Drops idle buckets and ended overrides every `every` until shutdown.
async fn sweeper(
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut shutdown: Shutdown,
) -> Result<(), AppError> {
    let evicted =
        ["bucket", "quota"].map(|kind| metrics.counter(names::EVICTED, &[("kind", kind)]));
    let limiter = Arc::clone(control.limiter());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut full = FullStore::of(limiter.store());
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tick.tick() => {
                let ended = control.expire(limiter.now());
                if ended > 0 {
                    tracing::info!(overrides = ended, "overrides ended");
                }
                let l = Arc::clone(&limiter);
                // Sweeping a million cells takes milliseconds: keep it off
                // the request threads' executor slots.
                match tokio::task::spawn_blocking(move || l.sweep()).await {
                    Ok(r) => {
                        evicted[0].increment(r.buckets as u64);
                        evicted[1].increment(r.quotas as u64);
                        tracing::debug!(
                        buckets = r.buckets,
                        quotas = r.quotas,
                        tracked = limiter.store().tracked(),
                        "swept idle cells"
                    )
                    }
                    Err(e) => tracing::error!(error = %e, "sweep failed"),
                }
                full = full.report(limiter.store());
            }
        }
    }
}

/// What the store did while full, as of the last sweep: logged once per
/// sweep interval in which anything happened, not per check.
#[derive(Clone, Copy)]
struct FullStore {
    displaced: crate::store::admission::DisplacedCounts,
    overflow_checks: u64,
}

impl FullStore {
    fn of(store: &crate::store::LocalStore) -> Self {
        Self {
            displaced: store.displaced(),
            overflow_checks: store.overflow_checks(),
        }
    }

    /// Logs what changed since `self`; returns the new state.
    fn report(self, store: &crate::store::LocalStore) -> Self {
        let now = Self::of(store);
        let (a, b) = (self.displaced, now.displaced);
        let displaced = (b.buckets + b.counters) - (a.buckets + a.counters);
        let overflow = now.overflow_checks - self.overflow_checks;
        if displaced > 0 || overflow > 0 {
            tracing::warn!(
                displaced_cells = displaced,
                units_forgotten = b.units - a.units,
                bucket_debt_forgiven_s = (b.debt - a.debt) as f64 / 1e9,
                checks_judged_by_overflow = overflow,
                tracked = store.tracked(),
                max_tracked_keys = store.limits().max_cells,
                "store full: cells cheap to forget were displaced for new keys (a displaced counter's key may spend its units again; with Redis they come back), and keys that could not win a cell shared the overflow cells"
            );
        }
        now
    }
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

/// Sets, before each scrape, the gauges and counters whose counts live
/// elsewhere: the store, reloads, overrides, Redis sync, readiness.
fn sampler(
    control: &Arc<Control>,
    redis: Option<SyncHandle>,
    ready: Readiness,
) -> telemetry::metrics::Sampler {
    let control = Arc::clone(control);
    let sources = std::sync::Mutex::new(Vec::new());
    Box::new(move |m: &Metrics| {
        let limiter = control.limiter();
        let store = limiter.store();
        m.gauge(names::TRACKED, &[]).set(store.tracked() as f64);
        m.gauge(names::TRACKED_LIMIT, &[])
            .set(store.limits().max_cells as f64);
        m.gauge(names::STORE_FULL, &[])
            .set(f64::from(u8::from(store.is_full())));
        m.counter(names::OVERFLOW, &[]).absolute(store.overflowed());
        let mut seen = sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sample_store(m, store, &mut seen);
        let stats = control.stats();
        m.counter(names::RELOADS, &[("result", "success")])
            .absolute(stats.ok);
        m.counter(names::RELOADS, &[("result", "failure")])
            .absolute(stats.failed);
        m.gauge(names::CONFIG_LAST_OK, &[])
            .set(f64::from(u8::from(!stats.last_failed)));
        let v = control.version();
        m.gauge(names::CONFIG_VERSION, &[]).set(v.number as f64);
        m.gauge(names::CONFIG_LOADED, &[])
            .set(v.loaded_at as f64 / 1e9);
        m.gauge(names::OVERRIDES, &[])
            .set(limiter.snapshot().table().overrides() as f64);
        m.gauge(names::READY, &[])
            .set(f64::from(u8::from(ready.is_ready())));
        if let Some(h) = &redis {
            let up = h.state() == crate::sync::SyncState::Synced;
            m.gauge(names::REDIS_UP, &[]).set(f64::from(u8::from(up)));
            if let Some(j) = store.journal() {
                m.gauge(names::REDIS_PENDING, &[]).set(j.len() as f64);
                m.counter(names::REDIS_DROPPED, &[]).absolute(j.dropped());
            }
        }
    })
}

/// The store's admission counts, and the cells of each source holding
/// any (the largest [`telemetry::metrics::MAX_NAMES`], the rest as
/// `(other)`); a source seen at the last scrape and gone now reads 0.
fn sample_store(m: &Metrics, store: &crate::store::LocalStore, seen: &mut Vec<String>) {
    let d = store.displaced();
    m.counter(names::OVERFLOW_CHECKS, &[])
        .absolute(store.overflow_checks());
    m.counter(names::DISPLACED, &[("kind", "bucket")])
        .absolute(d.buckets);
    m.counter(names::DISPLACED, &[("kind", "counter")])
        .absolute(d.counters);
    m.counter(names::DISPLACED_UNITS, &[]).absolute(d.units);
    m.counter(names::DISPLACED_DEBT, &[])
        .absolute(d.debt / 1_000_000_000);
    m.counter(names::ADMISSIONS_REFUSED, &[])
        .absolute(d.refused);
    let mut holders = store.budgets().holders();
    holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.1));
    let keep = telemetry::metrics::MAX_NAMES - 1;
    let other: usize = holders.iter().skip(keep).map(|(_, n)| n).sum();
    let mut now: Vec<(String, usize)> = holders
        .iter()
        .take(keep)
        .map(|(s, n)| (s.name(), *n))
        .collect();
    if other > 0 {
        now.push(("(other)".to_owned(), other));
    }
    for name in seen.iter() {
        if !now.iter().any(|(n, _)| n == name) {
            m.gauge(names::SOURCE_CELLS, &[("source", name)]).set(0.0);
        }
    }
    for (name, n) in &now {
        m.gauge(names::SOURCE_CELLS, &[("source", name)])
            .set(*n as f64);
    }
    *seen = now.into_iter().map(|(n, _)| n).collect();
}

/// How often histogram samples are folded into buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// Folds histogram samples into their buckets every [`UPKEEP`] (memory
/// stays flat without scrapes) and ends each heaviest-keys window (its
/// length read from the config in effect each time).
async fn upkeep(
    metrics: Arc<Metrics>,
    control: Arc<Control>,
    mut shutdown: Shutdown,
) -> Result<(), AppError> {
    let mut tick = tokio::time::interval(UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window = || control.config().metrics.heavy_window;
    let mut roll_at = tokio::time::Instant::now() + window();
    loop {
        let roll = tokio::time::sleep_until(roll_at);
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tick.tick() => metrics.upkeep(),
            () = roll => {
                metrics.heavy().roll();
                roll_at = tokio::time::Instant::now() + window();
            }
        }
    }
}

/// How often readiness looks at Redis and the table.
const HOLD_CHECK: Duration = Duration::from_millis(100);

/// Why readiness is held back for Redis now, if it is: the table has
/// strict limits and Redis is not reachable (or not reached yet).
fn redis_hold(control: &Control, redis: &SyncHandle) -> Option<&'static str> {
    let strict = control.limiter().snapshot().table().has_strict();
    match redis.state() {
        crate::sync::SyncState::Synced => None,
        _ if !strict => None,
        crate::sync::SyncState::Starting => {
            Some("redis not reached yet, and limits in mode strict are decided there")
        }
        crate::sync::SyncState::Degraded => {
            Some("redis unreachable, and limits in mode strict are decided there")
        }
    }
}

/// Holds readiness back while the table has strict limits and Redis is
/// not reachable (or not reached yet); see [`telemetry::health`].
async fn hold_for_redis(
    control: Arc<Control>,
    redis: SyncHandle,
    ready: Readiness,
    mut shutdown: Shutdown,
) -> Result<(), AppError> {
    let mut tick = tokio::time::interval(HOLD_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let held = redis_hold(&control, &redis);
        if held != ready.held() {
            match held {
                Some(why) => tracing::warn!(why, "not ready"),
                None => tracing::info!("nothing holds readiness back any more"),
            }
            ready.hold(held);
        }
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tick.tick() => {}
        }
    }
}
