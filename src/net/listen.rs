//! The one accept loop every listener uses, and what a gRPC listener puts
//! after it: accepted connections, with a pause after a failed accept;
//! for gRPC, TCP tuning, the TLS handshake when the listener has TLS
//! ([`super::tls`]) and the [`Gate`] of the listener.
//!
//! A failed accept (out of file descriptors, say) is logged, in the words
//! of the listener's kind, and accepting pauses for [`ACCEPT_BACKOFF`]:
//! retrying at once would spin while the listener stays readable.

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
/// until the stream is dropped; an accept error goes to `failed` (which
/// logs it in the listener's words) and is followed by
/// [`ACCEPT_BACKOFF`].
pub fn accepts(
    listener: TcpListener,
    failed: impl Fn(&std::io::Error) + Send + Sync + 'static,
) -> impl Stream<Item = (TcpStream, SocketAddr)> + Send + 'static {
    let failed = Arc::new(failed);
    futures_util::stream::unfold(listener, move |listener| {
        let failed = Arc::clone(&failed);
        async move {
            loop {
                match listener.accept().await {
                    Ok(accepted) => return Some((accepted, listener)),
                    Err(e) => {
                        failed(&e);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        }
    })
}

/// A plain-text gRPC listener's connections: tuned ([`tune`]) and
/// admitted through `gate`.
pub fn plain(
    listener: TcpListener,
    gate: Arc<Gate>,
) -> impl Stream<Item = std::io::Result<Conn<TcpStream>>> + Send + 'static {
    let failed = |e: &std::io::Error| {
        tracing::warn!(error = %e, "accept failed; pausing accepts for 50 ms");
    };
    accepts(listener, failed).filter_map(move |(tcp, _)| {
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
    let failed = move |e: &std::io::Error| {
        tracing::warn!(listener = what, error = %e, "accept failed");
    };
    let tuned = accepts(listener, failed).map(|(tcp, peer)| {
        tune(&tcp);
        (tcp, peer)
    });
    acceptor
        .handshakes(tuned, what, rules, gate.refusals())
        .filter_map(move |tls| std::future::ready(gate.admit(tls).map(Ok)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_yields_each_connection_with_its_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(accepts(listener, |_: &std::io::Error| {}));
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) = accepted.next().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(server.peer_addr().unwrap(), peer);
    }
}
