//! The one accept loop every listener uses, and what a gRPC listener puts
//! after it: accepted connections, with a pause after a failed accept;
//! for gRPC, TCP tuning, the TLS handshake when the listener has TLS
//! ([`super::tls`]) and the [`Gate`] of the listener.
//!
//! A failed accept (out of file descriptors, say) is logged and accepting
//! pauses for [`ACCEPT_BACKOFF`]: retrying at once would spin while the
//! listener stays readable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use super::gate::{Conn, Gate};
use super::tls::{Acceptor, HandshakeRules, tune};

/// How long accepting pauses after it failed.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The connections `listener` accepts, with each one's peer address,
/// until the stream is dropped; accept errors are logged (naming the
/// listener `what`) and followed by [`ACCEPT_BACKOFF`].
pub fn accepts(
    listener: TcpListener,
    what: &'static str,
) -> impl Stream<Item = (TcpStream, SocketAddr)> + Send + 'static {
    futures_util::stream::unfold(listener, move |listener| async move {
        loop {
            match listener.accept().await {
                Ok(accepted) => return Some((accepted, listener)),
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed; pausing accepts for 50 ms");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    })
}

/// A plain-text gRPC listener's connections: tuned ([`tune`]) and
/// admitted through `gate`.
pub fn plain(
    listener: TcpListener,
    what: &'static str,
    gate: Arc<Gate>,
) -> impl Stream<Item = std::io::Result<Conn<TcpStream>>> + Send + 'static {
    accepts(listener, what).filter_map(move |(tcp, _)| {
        tune(&tcp);
        std::future::ready(gate.admit(tcp).map(Ok))
    })
}

/// A TLS gRPC listener's connections: tuned, their handshakes run by
/// `acceptor` under `rules` (handshakes dropped for newer ones counted by
/// the gate's refusals), then admitted through `gate`.
pub fn tls(
    listener: TcpListener,
    what: &'static str,
    acceptor: Arc<Acceptor>,
    rules: HandshakeRules,
    gate: Arc<Gate>,
) -> impl Stream<Item = std::io::Result<Conn<TlsStream<TcpStream>>>> + Send + 'static {
    let tuned = accepts(listener, what).map(|(tcp, peer)| {
        tune(&tcp);
        (tcp, peer)
    });
    acceptor
        .handshakes(tuned, what, rules, gate.refusals())
        .filter_map(move |tls| std::future::ready(gate.admit(tls).map(Ok)))
}
