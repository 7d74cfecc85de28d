//! The HTTP check door's listener (`server.http_check`): bound at start
//! (TLS with `server.tls`'s files when the gRPC listener has them, offering
//! HTTP/1.1), its connections admitted through a [`Gate`] (at most
//! `max_connections`, closed after `idle_timeout` without a byte), each
//! served by hyper's HTTP/1.1 with keep-alive: a request's head must arrive
//! within `request_timeout` and fit in 16 KiB, its body within
//! `request_timeout` too (the door's). On shutdown it stops accepting and
//! lets each connection finish the request it is answering.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;

use super::AppError;
use super::servers::Listener;
use crate::api::http::HttpDoor;
use crate::api::http::body::Bodies;
use crate::config::{Config, HttpCheckBoot};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::net::gate::GateRules;
use crate::net::tls::ALPN_HTTP1;
use crate::net::{Gate, listen};
use crate::shutdown::Shutdown;

/// Largest request head (request line and headers).
const MAX_HEAD_BYTES: usize = 16 << 10;

/// Binds the door's listener, when `server.http_check.addr` is set.
pub(super) async fn bind_door(config: &Config) -> Result<Option<Listener>, AppError> {
    let Some(addr) = config.boot.server.http_check.addr else {
        return Ok(None);
    };
    let tls = (config.live.server.tls.as_ref(), ALPN_HTTP1);
    let listener = Listener::bind("http check", addr, tls).await?;
    tracing::info!(
        http_check_addr = %listener.addr,
        security = listener.security(config.live.server.tls.as_ref()),
        "HTTP check listener bound (/v1/auth, /v1/check, /v1/report, /json)"
    );
    Ok(Some(listener))
}

/// Serves the door on `listener` until `stop` fires.
pub(super) fn serve(
    listener: Listener,
    engine: Arc<Engine>,
    (settings, handshakes): (&HttpCheckBoot, crate::net::tls::HandshakeRules),
    metrics: &Metrics,
    stop: Shutdown,
) -> impl Future<Output = Result<(), AppError>> + Send + 'static {
    let bodies = Bodies::new(
        settings.max_body_bytes,
        settings.request_timeout,
        settings.max_buffered_bytes,
    );
    let door = Arc::new(HttpDoor::new(engine, bodies));
    let gate = Gate::new(
        "http_check",
        GateRules {
            max_connections: settings.max_connections,
            idle_timeout: settings.idle_timeout,
            max_buffered_bytes_per_connection: 0,
            max_unsent_bytes_per_connection: usize::MAX,
            reads_are_activity: true,
            coalesce_writes: false,
        },
        metrics,
    );
    let head_timeout = settings.request_timeout;
    async move {
        match listener.tls {
            None => {
                let conns = listen::plain(listener.tcp, gate);
                run(conns, door, head_timeout, stop).await;
            }
            Some(tls) => {
                let conns = listen::tls(listener.tcp, "http check", tls, handshakes, gate);
                run(conns, door, head_timeout, stop).await;
            }
        }
        Ok(())
    }
}

/// Accepts from `conns` until `stop`, then waits for the connections to
/// finish what they are answering.
async fn run<IO>(
    conns: impl Stream<Item = std::io::Result<IO>> + Send,
    door: Arc<HttpDoor>,
    head_timeout: std::time::Duration,
    mut stop: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conns = std::pin::pin!(conns);
    let mut open = JoinSet::new();
    loop {
        let io = tokio::select! {
            _ = stop.wait() => break,
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            next = conns.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        open.spawn(connection(
            io,
            Arc::clone(&door),
            head_timeout,
            stop.clone(),
        ));
    }
    while open.join_next().await.is_some() {}
}

/// Serves one connection until it closes, or shutdown asks it to finish.
async fn connection<IO>(
    io: IO,
    door: Arc<HttpDoor>,
    head_timeout: std::time::Duration,
    mut stop: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let door = Arc::clone(&door);
        async move { Ok::<_, Infallible>(door.serve(request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    tokio::select! {
        _ = &mut served => return,
        _ = stop.wait() => served.as_mut().graceful_shutdown(),
    }
    let _ = served.await;
}
