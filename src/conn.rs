//! Accepted gRPC connections: the cap on how many are open at once,
//! closing those with no call in flight for `server.idle_timeout`, and
//! what a call knows about its connection ([`ConnInfo`]).
//!
//! - [`Gate::admit`] takes each accepted connection. Over
//!   `server.max_connections` it is closed at once and counted
//!   (`quotad_connections_refused_total`), so a caller that opens
//!   connections without end costs one accept each, not memory.
//! - [`CallLayer`] counts each connection's calls in flight; a call lasts
//!   until its response body (for `CheckStream`, the whole stream) is done.
//! - A [`Conn`] with no call in flight for the idle timeout reports end of
//!   file on its next read, and the HTTP/2 server closes it
//!   (`quotad_connections_idle_closed_total`). gRPC clients reconnect on
//!   their next call. Connections that never send a call at all (a
//!   half-open flood) are closed the same way. HTTP/2 pings, which every
//!   live client answers, do not count as calls.
//! - The HTTP listener (health, `/metrics`) goes through a gate of its own
//!   ([`HttpListener`]): at most [`HTTP_MAX_CONNECTIONS`], and a
//!   connection whose peer sends nothing for [`HTTP_IDLE`] is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Counter, Gauge};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::telemetry::Metrics;
use crate::telemetry::metrics::names;

/// Admits connections to one listener, up to its cap.
pub struct Gate {
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    /// Whether bytes read count as activity (HTTP/1, where calls are not
    /// counted); otherwise only calls in flight do.
    reads_are_activity: bool,
    open: Gauge,
    refused: Counter,
    idle_closed: Counter,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("available", &self.permits.available_permits())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate for the listener named `listener` (the metrics label).
    pub fn new(
        listener: &'static str,
        max_connections: usize,
        idle_timeout: Duration,
        metrics: &Metrics,
    ) -> Arc<Gate> {
        Gate::build(listener, max_connections, idle_timeout, false, metrics)
    }

    /// The gate of the HTTP listener (health and `/metrics`): at most
    /// [`HTTP_MAX_CONNECTIONS`], each closed after [`HTTP_IDLE`] without a
    /// byte from its peer.
    pub fn for_http(metrics: &Metrics) -> Arc<Gate> {
        Gate::build("http", HTTP_MAX_CONNECTIONS, HTTP_IDLE, true, metrics)
    }

    fn build(
        listener: &'static str,
        max_connections: usize,
        idle_timeout: Duration,
        reads_are_activity: bool,
        metrics: &Metrics,
    ) -> Arc<Gate> {
        let labels = [("listener", listener)];
        Arc::new(Gate {
            permits: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            idle_timeout,
            reads_are_activity,
            open: metrics.gauge(names::CONNECTIONS, &labels),
            refused: metrics.counter(names::CONNECTIONS_REFUSED, &labels),
            idle_closed: metrics.counter(names::CONNECTIONS_IDLE, &labels),
        })
    }

    /// `io`, counted as open until it is dropped; `None` (and `io` closed)
    /// when the listener already has as many as it may.
    pub fn admit<IO: Peer>(self: &Arc<Self>, io: IO) -> Option<Conn<IO>> {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.refused.increment(1);
            tracing::debug!(peer = ?io.remote_addr(), "too many connections open; connection closed");
            return None;
        };
        self.open.increment(1.0);
        let now = Instant::now();
        let info = ConnInfo {
            remote_addr: io.remote_addr(),
            peer_certs: io.peer_certs(),
            activity: Arc::new(Activity {
                calls: AtomicUsize::new(0),
                last: AtomicU64::new(0),
                born: now,
            }),
        };
        Some(Conn {
            io,
            info,
            idle: Box::pin(tokio::time::sleep_until(now + self.idle_timeout)),
            closed: false,
            armed: false,
            gate: Arc::clone(self),
            _permit: permit,
        })
    }
}

/// The soft limit on open files of this process (Linux: from
/// `/proc/self/limits`); `None` when unknown or unlimited.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&limits)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Most connections open at once on the HTTP listener: probes and
/// scrapers need a handful.
pub const HTTP_MAX_CONNECTIONS: usize = 256;

/// How long an HTTP connection may send nothing before it is closed (a
/// request's headers trickled in byte by byte keep it, the cap bounds it).
pub const HTTP_IDLE: Duration = Duration::from_secs(30);

/// The HTTP listener through its [`Gate`], for `axum::serve`.
pub struct HttpListener {
    tcp: tokio::net::TcpListener,
    gate: Arc<Gate>,
}

impl HttpListener {
    /// Accepts on `tcp` through `gate`.
    pub fn new(tcp: tokio::net::TcpListener, gate: Arc<Gate>) -> Self {
        HttpListener { tcp, gate }
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Conn<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn<TcpStream>, SocketAddr) {
        loop {
            // axum's accept logs and pauses on errors itself.
            let (tcp, addr) = axum::serve::Listener::accept(&mut self.tcp).await;
            if let Some(conn) = self.gate.admit(tcp) {
                return (conn, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// What a gated connection tells about its peer.
pub trait Peer: AsyncRead + AsyncWrite + Unpin {
    /// The peer's address.
    fn remote_addr(&self) -> Option<SocketAddr>;
    /// The certificates the peer showed in its TLS handshake, if any.
    fn peer_certs(&self) -> Option<Arc<Vec<CertificateDer<'static>>>>;
}

impl Peer for TcpStream {
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }

    fn peer_certs(&self) -> Option<Arc<Vec<CertificateDer<'static>>>> {
        None
    }
}

impl Peer for TlsStream<TcpStream> {
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.get_ref().0.peer_addr().ok()
    }

    fn peer_certs(&self) -> Option<Arc<Vec<CertificateDer<'static>>>> {
        let certs = self.get_ref().1.peer_certificates()?;
        Some(Arc::new(
            certs.iter().map(|c| c.clone().into_owned()).collect(),
        ))
    }
}

/// A connection's calls in flight and when the last one ended.
#[derive(Debug)]
struct Activity {
    calls: AtomicUsize,
    /// Nanoseconds from `born` to the end of the last call.
    last: AtomicU64,
    born: Instant,
}

impl Activity {
    /// Notes activity now (bytes read, where they count).
    fn touch(&self) {
        let since = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(since, Ordering::AcqRel);
    }

    fn begin(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(Arc::clone(self))
    }

    /// Since when the connection has had no call in flight; `None` while
    /// it has one.
    fn idle_since(&self) -> Option<Instant> {
        if self.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.born + Duration::from_nanos(self.last.load(Ordering::Acquire)))
    }
}

/// One call in flight; ends when dropped.
#[derive(Debug)]
struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a call knows about its connection: in each request's extensions
/// (tonic puts a connection's [`Connected::connect_info`] there).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    remote_addr: Option<SocketAddr>,
    peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// The peer's address and TLS certificates for `request`: from its
    /// gated connection, else what tonic knows.
    pub fn peer_of<T>(
        request: &tonic::Request<T>,
    ) -> (
        Option<SocketAddr>,
        Option<Arc<Vec<CertificateDer<'static>>>>,
    ) {
        match request.extensions().get::<ConnInfo>() {
            Some(info) => (info.remote_addr, info.peer_certs.clone()),
            None => (request.remote_addr(), request.peer_certs()),
        }
    }
}

/// An admitted connection: frees its place under the cap when dropped,
/// and ends itself when idle too long.
pub struct Conn<IO> {
    io: IO,
    info: ConnInfo,
    idle: Pin<Box<Sleep>>,
    closed: bool,
    /// The timer holds this task's waker and has not fired yet: a wait
    /// for the peer need not poll it again.
    armed: bool,
    gate: Arc<Gate>,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Conn<IO> {
    /// Whether the connection has been idle for the timeout; registers a
    /// wake-up for when it may be.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.closed {
            return true;
        }
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                self.armed = true;
                return false;
            }
            let now = Instant::now();
            let deadline = match self.info.activity.idle_since() {
                Some(since) => since + self.gate.idle_timeout,
                None => now + self.gate.idle_timeout,
            };
            if deadline <= now {
                self.closed = true;
                self.gate.idle_closed.increment(1);
                tracing::debug!(peer = ?self.info.remote_addr, "connection idle too long; closed");
                return true;
            }
            self.idle.as_mut().reset(deadline);
        }
    }
}

impl<IO> Drop for Conn<IO> {
    fn drop(&mut self) {
        self.gate.open.decrement(1.0);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            // Waiting for the peer: only now does the idle timer matter
            // (polling it on every read cost ~400 instructions a call).
            Poll::Pending if (!this.armed || this.idle.is_elapsed()) && this.idle_expired(cx) => {
                // End of file: the HTTP/2 server closes the connection.
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
            read => {
                if this.gate.reads_are_activity && buf.filled().len() > before {
                    this.info.activity.touch();
                }
                read
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Counts each call on its connection (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLayer;

impl<S> tower_layer::Layer<S> for CallLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls { inner }
    }
}

/// The service [`CallLayer`] makes.
#[derive(Debug, Clone)]
pub struct Calls<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Calls<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<Tracked<RB>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.activity.begin());
        CallFuture {
            inner: self.inner.call(request),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's response on its way; carries the call's guard into the body.
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
    }
}

impl<F, RB, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<Tracked<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(response)) => {
                let guard = this.guard.take();
                Poll::Ready(Ok(response.map(|body| Tracked {
                    body,
                    _guard: guard,
                })))
            }
        }
    }
}

/// A response body that holds its call open until it is done.
pub struct Tracked<B> {
    body: B,
    _guard: Option<CallGuard>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files(unlimited), None);
        assert_eq!(parse_open_files(""), None);
    }

    #[test]
    fn a_connection_is_idle_only_without_calls() {
        let a = Arc::new(Activity {
            calls: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            born: Instant::now(),
        });
        assert!(a.idle_since().is_some());
        let one = a.begin();
        let two = a.begin();
        assert!(a.idle_since().is_none());
        drop(one);
        assert!(a.idle_since().is_none(), "one call still in flight");
        let before = a.idle_since();
        drop(two);
        let since = a.idle_since().expect("idle once every call ended");
        assert!(before.is_none());
        assert!(since >= a.born);
    }
}
