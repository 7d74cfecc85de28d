//! The config's `server` section: the check (gRPC) and HTTP listeners,
//! shutdown timing, the check listener's TLS, and the limits on every
//! connection to the gRPC listeners ([`ConnLimits`]: how many, how big a
//! message, buffers, timeouts); its raw form, validation and summary
//! lines. The listeners, their connection limits and whether the check
//! listener speaks TLS are [`ServerBoot`] (a restart applies them); the
//! shutdown timing and the TLS files are [`ServerLive`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::admin::{TlsFiles, TlsRaw, describe_tls};
use super::http_check::{HttpCheckBoot, HttpCheckLive, HttpCheckRaw};
use super::values::{Addr, Dur, format_duration};
use crate::diag::{Issue, Seg};
use crate::limits::file::Positive;

/// The `server` settings only a restart applies: the listeners are
/// bound and built with them once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBoot {
    /// gRPC listen address (native API and Envoy RLS).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (health).
    pub http_addr: SocketAddr,
    /// Whether the gRPC (check) listener speaks TLS (its files are
    /// [`ServerLive::tls`], renewed on reload).
    pub tls_on: bool,
    /// Limits on each connection to the gRPC listeners (keys under
    /// `server` in the file).
    pub conns: ConnLimits,
    /// The HTTP check door (`server.http_check`); off without an address.
    pub http_check: HttpCheckBoot,
}

/// The `server` settings a reload applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLive {
    /// How long in-flight calls may run after shutdown starts.
    pub shutdown_grace: Duration,
    /// How long, on shutdown, to keep serving while reporting not ready, so
    /// load balancers and health-checking clients move away before
    /// connections are refused. 0 (the default) stops accepting at once.
    pub drain_delay: Duration,
    /// TLS files of the gRPC (check) listener; `Some` exactly when
    /// [`ServerBoot::tls_on`]. The HTTP check door uses them too.
    pub tls: Option<TlsFiles>,
    /// The HTTP check door's reloadable settings.
    pub http_check: HttpCheckLive,
}

/// Limits on the connections to the gRPC listeners (the check and the
/// admin listener): how many, how big a message, how long idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once on each gRPC listener; more are
    /// closed as soon as they are accepted.
    pub max_connections: usize,
    /// Most calls in flight on one connection (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Largest request message, in bytes; a bigger one is refused
    /// (`OUT_OF_RANGE`) from its length prefix, before it is read.
    pub max_message_bytes: usize,
    /// A connection with no call in flight for this long is closed (also
    /// one that never sends a call).
    pub idle_timeout: Duration,
    /// How often each connection is sent an HTTP/2 ping.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Connections older than this are asked to go away (GOAWAY), so
    /// clients spread over new nodes; `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// Request bytes (messages being received, headers of calls not yet
    /// answered) all connections of the process may buffer at once.
    pub max_buffered_bytes: usize,
    /// Of those, what one connection may buffer.
    pub max_buffered_bytes_per_connection: usize,
    /// Answer bytes one connection may have that its peer has not read
    /// yet; past them, its answers wait.
    pub max_unsent_bytes_per_connection: usize,
    /// HTTP/2 receive window of each connection (and each call on it):
    /// what a peer may send ahead of the server reading it.
    pub receive_window_bytes: u32,
    /// How long a request message may take to arrive, from its first
    /// byte (for calls that are not streams, from the call's start).
    pub request_body_timeout: Duration,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in progress from one peer address; past it the
    /// peer's oldest is dropped.
    pub max_handshakes_per_peer: usize,
}

impl ConnLimits {
    /// How TLS handshakes are bounded.
    pub fn handshakes(&self) -> crate::net::tls::HandshakeRules {
        crate::net::tls::HandshakeRules {
            timeout: self.tls_handshake_timeout,
            per_peer: self.max_handshakes_per_peer,
        }
    }

    /// The most memory connections can hold by these settings, in bytes,
    /// with `admin_connections` more on the admin listener (see
    /// [`crate::net`]).
    pub fn worst_case_bytes(&self, admin_connections: usize) -> u64 {
        let per_conn = u64::from(self.receive_window_bytes)
            + self.max_unsent_bytes_per_connection as u64
            + crate::net::CONN_OVERHEAD as u64;
        let http = (crate::net::http::HTTP_MAX_CONNECTIONS
            * (crate::net::http::HTTP_MAX_HEADER_BYTES + crate::net::CONN_OVERHEAD / 4))
            as u64;
        let conns = (self.max_connections + admin_connections) as u64;
        self.max_buffered_bytes as u64 + conns * per_conn + http
    }
}

/// Largest `server.max_connections`.
const MAX_CONNECTIONS_CAP: u64 = 1_000_000;
/// Largest `server.max_concurrent_streams`.
const MAX_STREAMS_CAP: u64 = 1_000_000;
/// Smallest and largest `server.max_message_bytes`.
const MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=(64 << 20);
/// Largest `server.max_buffered_bytes` (and per connection).
const BUFFERED_BYTES_CAP: u64 = 64 << 30;
/// Smallest and largest `server.max_unsent_bytes_per_connection`.
const UNSENT_BYTES_RANGE: std::ops::RangeInclusive<u64> = (4 << 10)..=(64 << 20);
/// Smallest and largest `server.receive_window_bytes` (HTTP/2 allows
/// up to 2³¹ − 1).
const RECEIVE_WINDOW_RANGE: std::ops::RangeInclusive<u64> = (16 << 10)..=((1 << 31) - 1);
/// What one call's request may need buffered beyond its message: the
/// message prefix and the largest header list.
const CALL_OVERHEAD_BYTES: u64 = 5 + crate::net::MAX_HEADER_LIST as u64;

/// The connection budgets as written (checked against each other once
/// all are known).
struct ConnBudgetsRaw {
    max_buffered_bytes: Option<u64>,
    per_connection: Option<u64>,
    unsent: Option<u64>,
    window: Option<u64>,
    per_peer: Option<u64>,
}

impl ConnBudgetsRaw {
    /// Sets the budgets of `c` (whose `max_message_bytes` is final): one
    /// largest message must fit a connection's budget, and a
    /// connection's the process's. Defaults grow to fit; values written
    /// that do not fit are errors naming the field.
    fn apply(self, c: &mut ConnLimits) -> Result<(), Issue> {
        let need = c.max_message_bytes as u64 + CALL_OVERHEAD_BYTES;
        let per_connection = match self.per_connection {
            Some(n) if n < need => {
                return Err(Issue::new(
                    at("max_buffered_bytes_per_connection"),
                    format!(
                        "must be at least max_message_bytes + {CALL_OVERHEAD_BYTES} = {need}, so one largest message fits (got {n})"
                    ),
                ));
            }
            Some(n) => n,
            None => (c.max_buffered_bytes_per_connection as u64).max(need),
        };
        let total = match self.max_buffered_bytes {
            Some(n) if n < per_connection => {
                return Err(Issue::new(
                    at("max_buffered_bytes"),
                    format!(
                        "must be at least max_buffered_bytes_per_connection ({per_connection}) (got {n})"
                    ),
                ));
            }
            Some(n) => n,
            None => (c.max_buffered_bytes as u64).max(per_connection),
        };
        c.max_buffered_bytes_per_connection = usize::try_from(per_connection).unwrap_or(usize::MAX);
        c.max_buffered_bytes = usize::try_from(total).unwrap_or(usize::MAX);
        if let Some(n) = self.unsent {
            c.max_unsent_bytes_per_connection = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.window {
            c.receive_window_bytes = u32::try_from(n).unwrap_or(u32::MAX >> 1);
        }
        if let Some(n) = self.per_peer {
            c.max_handshakes_per_peer = usize::try_from(n).unwrap_or(usize::MAX);
        }
        Ok(())
    }
}

impl Default for ServerBoot {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8081)),
            http_addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090)),
            tls_on: false,
            conns: ConnLimits::default(),
            http_check: HttpCheckBoot::default(),
        }
    }
}

impl Default for ServerLive {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            tls: None,
            http_check: HttpCheckLive::default(),
        }
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_concurrent_streams: 100,
            max_message_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: None,
            max_buffered_bytes: 64 << 20,
            max_buffered_bytes_per_connection: 2 << 20,
            max_unsent_bytes_per_connection: 128 << 10,
            receive_window_bytes: 128 << 10,
            request_body_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(5),
            max_handshakes_per_peer: 64,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the server section (a mapping)")]
pub(super) struct ServerRaw {
    grpc_addr: Option<Addr>,
    http_addr: Option<Addr>,
    shutdown_grace: Option<Dur>,
    drain_delay: Option<Dur>,
    tls: Option<TlsRaw>,
    max_connections: Option<Positive>,
    max_concurrent_streams: Option<Positive>,
    max_message_bytes: Option<Positive>,
    idle_timeout: Option<Dur>,
    keepalive_interval: Option<Dur>,
    keepalive_timeout: Option<Dur>,
    max_connection_age: Option<Dur>,
    max_buffered_bytes: Option<Positive>,
    max_buffered_bytes_per_connection: Option<Positive>,
    max_unsent_bytes_per_connection: Option<Positive>,
    receive_window_bytes: Option<Positive>,
    request_body_timeout: Option<Dur>,
    tls_handshake_timeout: Option<Dur>,
    max_handshakes_per_peer: Option<Positive>,
    http_check: Option<HttpCheckRaw>,
}

/// `server.<field>`.
fn at(field: &str) -> Vec<Seg> {
    vec![Seg::key("server"), Seg::key(field)]
}

/// The value of `server.<field>`, if written, when it is within `range`.
fn within(
    v: Option<Positive>,
    field: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, Issue> {
    v.map(|p| {
        let n = p.0.get();
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(Issue::new(
                at(field),
                format!(
                    "must be from {} to {} (got {n})",
                    range.start(),
                    range.end()
                ),
            ))
        }
    })
    .transpose()
}

impl ServerRaw {
    /// Validates the section; TLS files are read relative to `base`.
    pub(super) fn build(self, base: &Path) -> Result<(ServerBoot, ServerLive), Issue> {
        let (mut boot, mut live) = (ServerBoot::default(), ServerLive::default());
        if let Some(a) = self.grpc_addr {
            boot.grpc_addr = a.0;
        }
        if let Some(a) = self.http_addr {
            boot.http_addr = a.0;
        }
        if let Some(d) = self.shutdown_grace {
            live.shutdown_grace = d.0;
        }
        if let Some(d) = self.drain_delay {
            live.drain_delay = d.0;
        }
        self.conns(&mut boot.conns)?;
        live.tls = self
            .tls
            .map(|t| t.build(base, &["server", "tls"]))
            .transpose()?;
        boot.tls_on = live.tls.is_some();
        if let Some(h) = self.http_check {
            (boot.http_check, live.http_check) = h.build()?;
        }
        Ok((boot, live))
    }

    /// Sets the connection limits written, in the order errors are
    /// reported.
    fn conns(&self, conns: &mut ConnLimits) -> Result<(), Issue> {
        if let Some(n) = within(
            self.max_connections,
            "max_connections",
            1..=MAX_CONNECTIONS_CAP,
        )? {
            conns.max_connections = n as usize;
        }
        if let Some(n) = within(
            self.max_concurrent_streams,
            "max_concurrent_streams",
            1..=MAX_STREAMS_CAP,
        )? {
            conns.max_concurrent_streams = n as u32;
        }
        if let Some(n) = within(
            self.max_message_bytes,
            "max_message_bytes",
            MESSAGE_BYTES_RANGE,
        )? {
            conns.max_message_bytes = n as usize;
        }
        if let Some(d) = self.idle_timeout {
            conns.idle_timeout = d.0;
        }
        if let Some(d) = self.keepalive_interval {
            conns.keepalive_interval = d.0;
        }
        if let Some(d) = self.keepalive_timeout {
            conns.keepalive_timeout = d.0;
        }
        conns.max_connection_age = self.max_connection_age.map(|d| d.0);
        self.budgets()?.apply(conns)?;
        for (value, field, target) in [
            (
                self.request_body_timeout,
                "request_body_timeout",
                &mut conns.request_body_timeout,
            ),
            (
                self.tls_handshake_timeout,
                "tls_handshake_timeout",
                &mut conns.tls_handshake_timeout,
            ),
        ] {
            if let Some(d) = value {
                if d.0.is_zero() {
                    return Err(Issue::new(at(field), "must be longer than 0"));
                }
                *target = d.0;
            }
        }
        Ok(())
    }

    /// The connection budgets written, each within its range.
    fn budgets(&self) -> Result<ConnBudgetsRaw, Issue> {
        Ok(ConnBudgetsRaw {
            max_buffered_bytes: within(
                self.max_buffered_bytes,
                "max_buffered_bytes",
                1..=BUFFERED_BYTES_CAP,
            )?,
            per_connection: within(
                self.max_buffered_bytes_per_connection,
                "max_buffered_bytes_per_connection",
                1..=BUFFERED_BYTES_CAP,
            )?,
            unsent: within(
                self.max_unsent_bytes_per_connection,
                "max_unsent_bytes_per_connection",
                UNSENT_BYTES_RANGE,
            )?,
            window: within(
                self.receive_window_bytes,
                "receive_window_bytes",
                RECEIVE_WINDOW_RANGE,
            )?,
            per_peer: within(
                self.max_handshakes_per_peer,
                "max_handshakes_per_peer",
                1..=crate::net::handshake::MAX_HANDSHAKES as u64,
            )?,
        })
    }
}

/// The summary's `server:`, `connections:` and `buffers:` lines, with
/// `admin_connections` more on the admin listener in the worst case.
pub(super) fn summary(
    boot: &ServerBoot,
    live: &ServerLive,
    admin_connections: usize,
    lines: &mut Vec<String>,
) {
    lines.push(format!(
        "server: grpc {}, http {}, shutdown grace {}, drain delay {}, tls {}",
        boot.grpc_addr,
        boot.http_addr,
        format_duration(live.shutdown_grace),
        format_duration(live.drain_delay),
        describe_tls(live.tls.as_ref())
    ));
    lines.push(super::http_check::summary(
        &boot.http_check,
        &live.http_check,
        boot.tls_on,
    ));
    let c = &boot.conns;
    lines.push(format!(
            "connections: max {} ({} calls each), max message {} bytes, idle timeout {}, keepalive every {} (timeout {}), max age {}",
            c.max_connections,
            c.max_concurrent_streams,
            c.max_message_bytes,
            format_duration(c.idle_timeout),
            format_duration(c.keepalive_interval),
            format_duration(c.keepalive_timeout),
            c.max_connection_age.map_or("none".to_owned(), format_duration)
        ));
    lines.push(format!(
            "buffers: requests {} bytes in all, {} per connection (within {}), unsent answers {} per connection, receive window {}; worst case for connections {} MiB",
            c.max_buffered_bytes,
            c.max_buffered_bytes_per_connection,
            format_duration(c.request_body_timeout),
            c.max_unsent_bytes_per_connection,
            c.receive_window_bytes,
            c.worst_case_bytes(admin_connections) >> 20
        ));
}
