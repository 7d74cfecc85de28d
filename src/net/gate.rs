//! Accepted connections: the cap on how many are open at once on each
//! listener, closing those idle for `server.idle_timeout`, and what a call
//! knows about its connection ([`ConnInfo`]).
//!
//! - [`Gate::admit`] takes each accepted connection. Over
//!   `server.max_connections` it is closed at once and counted
//!   (`quotad_connections_refused_total`), so a caller that opens
//!   connections without end costs one accept each, not memory.
//! - A [`Conn`] that has been idle (see [`super::activity`]) for the idle
//!   timeout reports end of file on its next read, and the HTTP/2 server
//!   closes it (`quotad_connections_idle_closed_total`). gRPC clients
//!   reconnect on their next call. Connections that never send a call at
//!   all (a half-open flood), calls that never finish sending and streams
//!   with nothing to say are closed the same way: holding a connection
//!   open takes doing something with it.
//! - Every byte a [`Conn`] writes is reported to its [`Activity`], which
//!   lets answers held back for a slow reader go on.
//! - On gRPC listeners a [`Conn`] batches h2's writes
//!   ([`super::coalesce`]): an answer's frames leave together, and the
//!   answers of the calls queued on the thread share a write.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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

use super::activity::Activity;
use super::coalesce::Coalesce;
use crate::metrics::Metrics;
use crate::metrics::names;

/// What one listener lets each connection do.
#[derive(Debug, Clone, Copy)]
pub struct GateRules {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a connection may do nothing.
    pub idle_timeout: Duration,
    /// Request bytes one connection's calls may buffer.
    pub max_buffered_bytes_per_connection: usize,
    /// Answer bytes one connection may have unwritten before answers
    /// wait.
    pub max_unsent_bytes_per_connection: usize,
    /// Whether bytes read count as activity (HTTP/1, where calls are not
    /// tracked); otherwise pings would.
    pub reads_are_activity: bool,
    /// Whether to batch h2's writes (HTTP/2; see [`super::coalesce`]).
    pub coalesce_writes: bool,
}

/// Admits connections to one listener, up to its cap.
pub struct Gate {
    permits: Arc<Semaphore>,
    rules: GateRules,
    open: Gauge,
    refused: Counter,
    idle_closed: Counter,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("available", &self.permits.available_permits())
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate for the listener named `listener` (the metrics label).
    pub fn new(listener: &'static str, rules: GateRules, metrics: &Metrics) -> Arc<Gate> {
        let labels = [("listener", listener)];
        Arc::new(Gate {
            permits: Arc::new(Semaphore::new(
                rules.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            rules,
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
        let activity = Activity::new(
            self.rules.max_buffered_bytes_per_connection,
            self.rules.max_unsent_bytes_per_connection,
        );
        let idle = Box::pin(tokio::time::sleep_until(
            activity.born() + self.rules.idle_timeout,
        ));
        let info = ConnInfo {
            remote_addr: io.remote_addr(),
            peer_certs: io.peer_certs(),
            activity,
        };
        Some(Conn {
            io,
            info,
            idle,
            closed: false,
            armed: false,
            coalesce: Coalesce::new(self.rules.coalesce_writes),
            gate: Arc::clone(self),
            _permit: permit,
        })
    }

    /// Counts a connection this listener refused on its own account.
    pub fn refuse(&self) {
        self.refused.increment(1);
    }

    /// The counter of refused connections (for those refused before they
    /// reach the gate: TLS handshakes dropped for newer ones).
    pub fn refusals(&self) -> Counter {
        self.refused.clone()
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

/// What a call knows about its connection: in each request's extensions
/// ([`super::serve`] puts a connection's [`Connected::connect_info`] there).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    remote_addr: Option<SocketAddr>,
    peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// The connection's shared state.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

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
    coalesce: Coalesce,
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
            let timeout = self.gate.rules.idle_timeout;
            let deadline = match self.info.activity.idle_since() {
                Some(since) => since + timeout,
                None => now + timeout,
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
                if this.gate.rules.reads_are_activity && buf.filled().len() > before {
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
        let this = self.get_mut();
        if this.coalesce.hold(cx, || this.info.activity.unsent()) {
            return Poll::Pending;
        }
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.info.activity.written(n);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.coalesce.flushed();
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.coalesce.hold(cx, || this.info.activity.unsent()) {
            return Poll::Pending;
        }
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            this.info.activity.written(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.coalesce.vectored(self.io.is_write_vectored())
    }
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(coalesce_writes: bool) -> GateRules {
        GateRules {
            max_connections: 4,
            idle_timeout: Duration::from_secs(60),
            max_buffered_bytes_per_connection: 1 << 20,
            max_unsent_bytes_per_connection: 1 << 20,
            reads_are_activity: false,
            coalesce_writes,
        }
    }

    #[tokio::test]
    async fn http2_connections_hide_vectored_writes_so_small_answers_are_copied() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        for (coalesce, vectored) in [(true, false), (false, true)] {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            assert!(socket.is_write_vectored(), "a TCP socket writes vectored");
            let gate = Gate::new("check", rules(coalesce), &metrics);
            let conn = gate.admit(socket).expect("under the cap");
            assert_eq!(
                conn.is_write_vectored(),
                vectored,
                "coalesce_writes {coalesce}"
            );
        }
    }
}
