//! The HTTP listener (`/livez`, `/readyz`, `/metrics`): HTTP/1.1 for
//! probes and scrapers, which must get through while someone tries to
//! keep them out.
//!
//! - A request's headers must arrive within [`HTTP_HEADER_TIMEOUT`] of
//!   the connection (or its previous request) being ready for them, and
//!   fit in [`HTTP_MAX_HEADER_BYTES`]: a client that trickles them byte by
//!   byte is dropped.
//! - At most [`HTTP_MAX_CONNECTIONS`] are open. A new connection past the
//!   cap ends the one that has waited longest for a request (one being
//!   answered is never ended), so trickling connections, however many,
//!   only ever displace each other, and a probe, whose request takes a
//!   millisecond, gets through.
//! - A connection that sends nothing for [`HTTP_IDLE`] is closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

use super::gate::{Gate, GateRules};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Most connections open at once.
pub const HTTP_MAX_CONNECTIONS: usize = 256;

/// How long a request's headers may take to arrive.
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head (request line and headers).
pub const HTTP_MAX_HEADER_BYTES: usize = 16 << 10;

/// How long a connection may send nothing before it is closed.
pub const HTTP_IDLE: Duration = Duration::from_secs(30);

/// One open connection, as the cap sees it.
#[derive(Debug)]
struct Slot {
    /// Requests being answered.
    serving: AtomicUsize,
    /// Nanoseconds from the listener's start to when it last began
    /// waiting for a request.
    waiting_since: AtomicU64,
    end: Notify,
}

/// The open connections.
#[derive(Debug)]
struct Open {
    started: Instant,
    next: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
}

impl Open {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A slot for a new connection, ending the longest-waiting one past
    /// the cap; `None` when every open connection is being answered.
    fn admit(&self) -> Option<(u64, Arc<Slot>, bool)> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut displaced = false;
        if slots.len() >= HTTP_MAX_CONNECTIONS {
            let oldest = slots
                .iter()
                .filter(|(_, s)| s.serving.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, s)| s.waiting_since.load(Ordering::Acquire))
                .map(|(id, _)| *id)?;
            if let Some(slot) = slots.remove(&oldest) {
                slot.end.notify_one();
                displaced = true;
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            serving: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(self.now()),
            end: Notify::new(),
        });
        slots.insert(id, Arc::clone(&slot));
        Some((id, slot, displaced))
    }

    fn close(&self, id: u64) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// A request on its way: counted as being answered until dropped.
struct Serving {
    slot: Arc<Slot>,
    open: Arc<Open>,
}

impl Serving {
    fn new(slot: &Arc<Slot>, open: &Arc<Open>) -> Self {
        slot.serving.fetch_add(1, Ordering::AcqRel);
        Self {
            slot: Arc::clone(slot),
            open: Arc::clone(open),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.slot
            .waiting_since
            .store(self.open.now(), Ordering::Release);
        self.slot.serving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `router` on `listener` until `stop`, then lets the open
/// connections finish their requests (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    metrics: &Metrics,
    mut stop: Shutdown,
) -> std::io::Result<()> {
    // The gate's own cap is only a ceiling: displaced connections may
    // take a moment to close.
    let gate = Gate::new(
        "http",
        GateRules {
            max_connections: 2 * HTTP_MAX_CONNECTIONS,
            idle_timeout: HTTP_IDLE,
            max_buffered_bytes_per_connection: 0,
            max_unsent_bytes_per_connection: usize::MAX,
            reads_are_activity: true,
            coalesce_writes: false,
        },
        metrics,
    );
    let open = Arc::new(Open {
        started: Instant::now(),
        next: AtomicU64::new(0),
        slots: Mutex::new(HashMap::new()),
    });
    let mut conns = JoinSet::new();
    let failed = |e: &std::io::Error| {
        tracing::warn!(error = %e, "HTTP accept failed; pausing accepts for 50 ms");
    };
    let mut accepts = Box::pin(super::listen::accepts(listener, failed));
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.wait() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = accepts.next() => match accepted {
                Some(a) => a,
                None => break,
            },
        };
        let Some((id, slot, displaced)) = open.admit() else {
            gate.refuse();
            continue;
        };
        if displaced {
            gate.refuse();
        }
        let Some(conn) = gate.admit(tcp) else {
            open.close(id);
            continue;
        };
        conns.spawn(connection(
            conn,
            router.clone(),
            id,
            slot,
            Arc::clone(&open),
            stop.clone(),
        ));
    }
    drop(accepts);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection until it closes, is displaced, or shutdown asks
/// it to finish.
async fn connection(
    conn: super::gate::Conn<tokio::net::TcpStream>,
    router: axum::Router,
    id: u64,
    slot: Arc<Slot>,
    open: Arc<Open>,
    mut stop: Shutdown,
) {
    let service = {
        let slot = Arc::clone(&slot);
        let open = Arc::clone(&open);
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let serving = Serving::new(&slot, &open);
            let mut router = router.clone();
            async move {
                let response = match router.call(request.map(axum::body::Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                drop(serving);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_TIMEOUT)
        .max_buf_size(HTTP_MAX_HEADER_BYTES);
    let served = builder.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(served);
    let mut finishing = false;
    loop {
        tokio::select! {
            _ = &mut served => break,
            _ = slot.end.notified() => break,
            _ = stop.wait(), if !finishing => {
                // Nothing being answered: nothing to finish (a client
                // trickling a request's head would hold shutdown up to
                // the header deadline).
                if slot.serving.load(Ordering::Acquire) == 0 {
                    break;
                }
                finishing = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
    open.close(id);
}
