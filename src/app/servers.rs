//! The gRPC listeners and their servers: binding (with TLS), the server
//! settings every gRPC listener shares (connection limits, the call layer
//! with its body budgets), and the two servers' entries, [`grpc`] (the
//! front doors, health, reflection) and [`admin`] (`quotad.v1.QuotaAdmin`),
//! each serving until its shutdown fires. Connections come in through
//! [`crate::net::listen`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_server::RateLimitQuotaServiceServer;
use tokio::net::TcpListener;
use tonic_health::pb::health_server::HealthServer;

use super::AppError;
use crate::admin::AdminService;
use crate::api::envoy_descriptors;
use crate::api::envoy_rls::EnvoyRlsService;
use crate::api::native::NativeService;
use crate::api::pb;
use crate::api::pb::quota_admin_server::QuotaAdminServer;
use crate::api::pb::rate_limiter_server::RateLimiterServer;
use crate::api::rlqs::RlqsService;
use crate::api::rls_server::RlsServer;
use crate::config::{Config, ConnLimits, TlsFiles};
use crate::metrics::Metrics;
use crate::net::body::BodyRules;
use crate::net::budget::Budget;
use crate::net::files::{Needs, open_files_limit, raise_open_files_limit};
use crate::net::gate::GateRules;
use crate::net::serve::{Routes, Server, Settings};
use crate::net::tls::Acceptor;
use crate::net::{Calls, Gate, listen};
use crate::shutdown::Shutdown;
use crate::telemetry::HealthService;

/// What the check listener serves besides reflection.
pub(super) struct Front {
    /// gRPC health.
    pub health: HealthService,
    /// `quotad.v1.RateLimiter`.
    pub native: NativeService,
    /// Envoy RLS v3.
    pub rls: EnvoyRlsService,
    /// Envoy RLQS v3.
    pub rlqs: RlqsService,
}

/// What both gRPC servers draw on.
pub(super) struct Shared<'a> {
    /// The connection limits (`server.*`).
    pub conns: &'a ConnLimits,
    /// The process's budget of buffered request bytes, one for both.
    pub process: &'a Arc<Budget>,
    /// Where connections are counted.
    pub metrics: &'a Metrics,
}

/// The check listener's server: serves `front` and reflection on
/// `listener` until `stop` fires, then lets in-flight calls finish.
pub(super) fn grpc(
    listener: Listener,
    front: Front,
    shared: &Shared<'_>,
    stop: Shutdown,
) -> Result<impl Future<Output = Result<(), AppError>> + Send + 'static, AppError> {
    let conns = shared.conns;
    let max = conns.max_message_bytes;
    let routes = Routes::new()
        .with(HealthServer::new(front.health).max_decoding_message_size(max))
        .with(RateLimiterServer::new(front.native).max_decoding_message_size(max))
        .with(RlsServer::new(front.rls, max))
        .with(RateLimitQuotaServiceServer::new(front.rlqs).max_decoding_message_size(max));
    let routes = with_reflection(routes, max)?;
    let serve = listener.serve(
        server(routes, conns, shared.process),
        "grpc",
        Gate::new("grpc", gate_rules(conns), shared.metrics),
        conns,
        stop,
    );
    Ok(async move {
        serve.await;
        Ok(())
    })
}

/// The admin listener's server: serves `service` and reflection on
/// `listener`, at most `max_connections` open, until `stop` fires.
pub(super) fn admin(
    listener: Listener,
    service: AdminService,
    max_connections: usize,
    shared: &Shared<'_>,
    stop: Shutdown,
) -> Result<impl Future<Output = Result<(), AppError>> + Send + 'static, AppError> {
    let conns = shared.conns;
    let max = conns.max_message_bytes;
    let routes = Routes::new().with(QuotaAdminServer::new(service).max_decoding_message_size(max));
    let routes = with_reflection(routes, max)?;
    let serve = listener.serve(
        server(routes, conns, shared.process),
        "admin",
        Gate::new(
            "admin",
            GateRules {
                max_connections,
                ..gate_rules(conns)
            },
            shared.metrics,
        ),
        conns,
        stop,
    );
    Ok(async move {
        serve.await;
        Ok(())
    })
}

/// A bound gRPC listener and, with TLS, its acceptor.
pub(super) struct Listener {
    pub(super) tcp: TcpListener,
    pub(super) addr: SocketAddr,
    pub(super) tls: Option<Arc<Acceptor>>,
}

impl Listener {
    /// Binds `addr`, with TLS from `tls` offering the protocols `alpn`
    /// (gRPC's `h2`, the HTTP check door's `http/1.1`).
    pub(super) async fn bind(
        what: &'static str,
        addr: SocketAddr,
        (tls, alpn): (Option<&TlsFiles>, &'static [&'static [u8]]),
    ) -> Result<Listener, AppError> {
        let tls = tls
            .map(|t| Acceptor::for_protocols(&t.pem, alpn).map(Arc::new))
            .transpose()
            .map_err(|source| AppError::Tls { what, source })?;
        let tcp = bind(what, addr).await?;
        let addr = local_addr(what, &tcp, addr)?;
        Ok(Listener { tcp, addr, tls })
    }

    /// `plain text` or `TLS` or `mTLS`, for the log.
    pub(super) fn security(&self, files: Option<&TlsFiles>) -> &'static str {
        match files {
            Some(f) if f.client_ca_file.is_some() => "mTLS",
            Some(_) => "TLS",
            None => "plain text",
        }
    }

    /// Serves with `server` on this listener until `stop` fires,
    /// admitting connections through `gate` (TLS handshakes bounded by
    /// `limits`).
    fn serve(
        self,
        server: Server,
        what: &'static str,
        gate: Arc<Gate>,
        limits: &ConnLimits,
        stop: Shutdown,
    ) -> BoxedServe {
        match self.tls {
            None => {
                let conns = listen::plain(self.tcp, gate);
                Box::pin(server.serve(conns, wait(stop)))
            }
            Some(tls) => {
                let conns = listen::tls(self.tcp, what, tls, limits.handshakes(), gate);
                Box::pin(server.serve(conns, wait(stop)))
            }
        }
    }
}

type BoxedServe = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A gRPC server of `routes` with the connection limits of `c`, its
/// request bodies drawn from the process's budget `process`.
fn server(routes: Routes, c: &ConnLimits, process: &Arc<Budget>) -> Server {
    let rules = BodyRules {
        process: Arc::clone(process),
        timeout: c.request_body_timeout,
        max_message: c.max_message_bytes,
    };
    let settings = Settings {
        max_concurrent_streams: c.max_concurrent_streams,
        keepalive_interval: c.keepalive_interval,
        keepalive_timeout: c.keepalive_timeout,
        receive_window_bytes: c.receive_window_bytes,
        max_connection_age: c.max_connection_age,
    };
    Server::new(routes, Calls::new(rules, STREAMS), &settings)
}

/// The methods whose callers stream requests: they may open a call and
/// send its first message later.
const STREAMS: &[&str] = &[
    "/quotad.v1.RateLimiter/CheckStream",
    "/quotad.v1.RateLimiter/Hold",
    "/envoy.service.rate_limit_quota.v3.RateLimitQuotaService/StreamRateLimitQuotas",
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
        coalesce_writes: true,
    }
}

/// Raises the open-files soft limit to the hard one, and warns when it
/// is still below what the connection caps add up to: accepts would fail
/// (and be retried every 50 ms) before the caps are reached.
pub(super) fn ensure_open_files(config: &Config) {
    let boot = &config.boot;
    let needs = Needs {
        grpc: boot.server.conns.max_connections as u64,
        admin: boot.admin.as_ref().map_or(0, |a| a.max_connections as u64),
        http: 2 * crate::net::http::HTTP_MAX_CONNECTIONS as u64,
        http_check: match boot.server.http_check.addr {
            Some(_) => boot.server.http_check.max_connections as u64,
            None => 0,
        },
    };
    match raise_open_files_limit() {
        Ok((before, after)) if after > before => {
            tracing::debug!(
                before,
                after,
                "raised the open-files soft limit to the hard limit"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "could not raise the open-files soft limit"),
    }
    if let Some((soft, hard)) = open_files_limit()
        && soft < needs.total()
    {
        tracing::warn!(
            open_files_limit = soft,
            hard_limit = hard,
            needed = needs.total(),
            "the open-files limit (ulimit -n, already raised to the hard limit) is below what the connection caps need: {}; raise the hard limit (systemd LimitNOFILE=, Kubernetes: the runtime's default) or lower server.max_connections, or accepts fail before the caps are reached",
            needs.sum()
        );
    }
}

/// The services gRPC health reports on (besides the server as a whole):
/// ours, and `ratelimit`, the name envoyproxy/ratelimit reports its
/// health under, so its probes keep working.
pub(super) const SERVICES: &[&str] = &[
    "quotad.v1.RateLimiter",
    "envoy.service.ratelimit.v3.RateLimitService",
    "envoy.service.rate_limit_quota.v3.RateLimitQuotaService",
    "ratelimit",
];

/// Server reflection over our API, gRPC health and Envoy's RLS v3 and
/// RLQS v3.
/// `routes` and server reflection (v1 and v1alpha) listing exactly what
/// they serve, reflection included: a listener describes only its own
/// services (the check listener not the admin API, and the other way
/// round).
fn with_reflection(routes: Routes, max: usize) -> Result<Routes, AppError> {
    let mut names: Vec<&'static str> = routes.names().collect();
    names.extend(REFLECTION);
    let reflection = || {
        names.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_file_descriptor_set(envoy_descriptors::file_descriptor_set()),
            |builder, name| builder.with_service_name(*name),
        )
    };
    Ok(routes
        .with(reflection().build_v1()?.max_decoding_message_size(max))
        .with(reflection().build_v1alpha()?.max_decoding_message_size(max)))
}

/// The reflection services' own names.
const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn wait(mut shutdown: Shutdown) {
    shutdown.wait().await;
}

pub(super) async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

pub(super) fn local_addr(
    what: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, AppError> {
    l.local_addr()
        .map_err(|source| AppError::Bind { what, addr, source })
}
