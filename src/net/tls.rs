//! TLS for quotad's gRPC listeners (rustls with ring): a server config
//! built from PEM files, with optional client-certificate verification
//! (mTLS); an [`Acceptor`] whose config is swapped on reload, so a renewed
//! certificate serves new connections while open ones go on; the
//! handshake step after [`super::listen`]'s accept loop, which hands
//! finished handshakes on to the gate and tonic; and the subject of a
//! peer's certificate, for the audit log.
//!
//! Handshakes run concurrently, each bounded by
//! `server.tls_handshake_timeout`, capped per peer address and in all
//! ([`super::handshake`]: past a cap the oldest unfinished one is
//! dropped, so silent or slow clients cannot keep real ones out); a failed
//! handshake (a client without a certificate under mTLS, an untrusted
//! one, plain text on a TLS port) closes that connection and is logged at
//! debug level; one whose client certificate was refused is logged at
//! warn level, with rustls's reason (an X.509 v1 certificate, an unknown
//! issuer, an expired one), at most once per [`CERT_LOG_EVERY`] per
//! listener, so an operator whose `quotactl` was turned away can read why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::{Stream, StreamExt};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::handshake::{Handshakes, MAX_HANDSHAKES};

/// How TLS handshakes are bounded on one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeRules {
    /// How long a client may take to finish its handshake.
    pub timeout: Duration,
    /// Handshakes in progress from one peer address.
    pub per_peer: usize,
}

/// A listener's certificate, key and optional client CA, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// The certificate chain, leaf first.
    pub cert: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1). `Debug` hides it.
    pub key: Vec<u8>,
    /// CA certificates clients must present a certificate from (mTLS);
    /// `None` asks clients for none.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert", &format_args!("<{} bytes>", self.cert.len()))
            .field("key", &format_args!("<redacted>"))
            .field("client_ca", &self.client_ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// Why TLS material could not be used. Each names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain.
    #[error("{0}")]
    Cert(String),
    /// The private key, or its match with the certificate.
    #[error("{0}")]
    Key(String),
    /// The client CA.
    #[error("{0}")]
    ClientCa(String),
}

/// What is wrong with a PEM file, in words of our own: the parser's
/// would quote the offending line or bytes, and a key file's lines are
/// the key.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
        E::IllegalSectionStart { .. } => "a malformed BEGIN line".to_owned(),
        E::Base64Decode(_) => "a section is not valid base64".to_owned(),
        E::NoItemsFound => "no section of the expected kind".to_owned(),
        E::SectionTooLarge => "a section is too large".to_owned(),
        E::Io(e) => format!("cannot read: {}", e.kind()),
        _ => "cannot be read as PEM".to_owned(),
    }
}

/// How many certificates `pem` holds, or what is wrong with it (in words
/// that never quote the file).
pub fn count_certificates(pem: &[u8]) -> Result<usize, String> {
    CertificateDer::pem_slice_iter(pem).try_fold(0, |n, cert| match cert {
        Ok(_) => Ok(n + 1),
        Err(e) => Err(format!("not a PEM certificate: {}", pem_error(&e))),
    })
}

/// ALPN of a gRPC listener: HTTP/2 only.
pub const ALPN_H2: &[&[u8]] = &[b"h2"];

/// ALPN of an HTTP/1.1 listener (the HTTP check door).
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// Builds a server config for HTTP/2 (gRPC) from `pem`.
pub fn server_config(pem: &TlsPem) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_for(pem, ALPN_H2)
}

/// Builds a server config from `pem` offering the protocols `alpn`.
pub fn server_config_for(pem: &TlsPem, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(format!("not a PEM certificate: {}", pem_error(&e))))?;
    if certs.is_empty() {
        return Err(TlsError::Cert("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|e| TlsError::Key(format!("not a PEM private key: {}", pem_error(&e))))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Cert(e.to_string()))?;
    let builder = match &pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| {
                    TlsError::ClientCa(format!("not a PEM certificate: {}", pem_error(&e)))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::ClientCa(format!("not a usable CA certificate: {e}")))?;
                any = true;
            }
            if !any {
                return Err(TlsError::ClientCa("holds no PEM certificate".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::Key("does not match the certificate (cert_file)".into())
        }
        other => TlsError::Key(other.to_string()),
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A listener's TLS config, replaceable while it serves.
#[derive(Debug)]
pub struct Acceptor {
    current: ArcSwap<ServerConfig>,
    alpn: &'static [&'static [u8]],
}

impl Acceptor {
    /// An acceptor for `pem`, for gRPC (HTTP/2).
    pub fn new(pem: &TlsPem) -> Result<Self, TlsError> {
        Self::for_protocols(pem, ALPN_H2)
    }

    /// An acceptor for `pem` offering the protocols `alpn`.
    pub fn for_protocols(pem: &TlsPem, alpn: &'static [&'static [u8]]) -> Result<Self, TlsError> {
        Ok(Self {
            current: ArcSwap::new(server_config_for(pem, alpn)?),
            alpn,
        })
    }

    /// Serves new connections with `pem` from now on; open ones keep the
    /// config they were made with. On error the old config stays.
    pub fn replace(&self, pem: &TlsPem) -> Result<(), TlsError> {
        self.current.store(server_config_for(pem, self.alpn)?);
        Ok(())
    }

    /// Runs the TLS handshake of each connection `accepted` yields and
    /// yields those that succeeded, until the stream is dropped (the
    /// server stopped accepting). Runs as a task of its own; `displaced`
    /// counts handshakes dropped for newer ones.
    pub fn handshakes(
        self: Arc<Self>,
        accepted: impl Stream<Item = (TcpStream, SocketAddr)> + Send + 'static,
        what: &'static str,
        rules: HandshakeRules,
        displaced: metrics::Counter,
    ) -> ReceiverStream<TlsStream<TcpStream>> {
        let (tx, rx) = mpsc::channel(64);
        let cert_log = Arc::new(LogEvery::new(CERT_LOG_EVERY));
        tokio::spawn(async move {
            let handshakes = Handshakes::new(rules.per_peer, MAX_HANDSHAKES);
            let mut accepted = std::pin::pin!(accepted);
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    next = accepted.next() => match next {
                        Some(a) => a,
                        None => return,
                    },
                };
                let (pending, pushed_out) = handshakes.start(peer.ip());
                if pushed_out {
                    displaced.increment(1);
                    tracing::debug!(listener = what, %peer, "too many TLS handshakes in progress; the oldest was dropped");
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(self.current.load_full());
                let tx = tx.clone();
                let cert_log = Arc::clone(&cert_log);
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(rules.timeout, acceptor.accept(tcp));
                    let done = tokio::select! {
                        done = handshake => done,
                        _ = pending.displaced() => return,
                    };
                    drop(pending);
                    match done {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(stream).await;
                        }
                        Ok(Err(e)) if refused_client_cert(&e) => {
                            if let Some(suppressed) = cert_log.admit() {
                                tracing::warn!(listener = what, %peer, error = %e, suppressed, "TLS handshake refused the client's certificate: it must be an X.509 v3 certificate with extendedKeyUsage clientAuth, issued by the CA in client_ca_file");
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(listener = what, %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(listener = what, %peer, "TLS handshake timed out")
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// How often a listener logs a refused client certificate at most.
pub const CERT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether a failed handshake's error is rustls refusing the client's
/// certificate.
fn refused_client_cert(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// Lets one event through per interval; counts the rest.
struct LogEvery {
    every: u64,
    next: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogEvery {
    fn new(every: Duration) -> Self {
        Self {
            every: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            next: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(events suppressed since the last one let through)` when this
    /// one may be logged.
    fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = coarsetime::Clock::now_since_epoch().as_millis();
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(self.every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Nagle off (answers are small and latency-critical) and TCP keepalive
/// so dead peers are noticed, as for plain connections.
pub fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// The subject of a peer's leaf certificate, as `CN=alice, O=ops`.
pub fn peer_subject(certs: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject().to_string();
    // Plain text on one line, whatever the certificate says.
    Some(crate::limits::overrides::printable(&subject))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_logged_once_per_interval_and_the_rest_counted() {
        let log = LogEvery::new(Duration::from_secs(3_600));
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), None);
        assert_eq!(log.admit(), None);
        assert_eq!(log.suppressed.load(std::sync::atomic::Ordering::Relaxed), 2);
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(refused_client_cert(&refused));
        assert!(!refused_client_cert(&std::io::Error::other("reset")));
    }
    use rcgen::{CertificateParams, KeyPair};

    fn self_signed(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn builds_from_matching_pem_and_names_what_is_wrong() {
        let (cert, key) = self_signed("localhost");
        let (other_cert, other_key) = self_signed("other");
        let pem = |cert: &str, key: &str, ca: Option<&str>| TlsPem {
            cert: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
            client_ca: ca.map(|c| c.as_bytes().to_vec()),
        };
        let ok = server_config(&pem(&cert, &key, None)).unwrap();
        assert_eq!(ok.alpn_protocols, [b"h2".to_vec()]);
        assert!(server_config(&pem(&cert, &key, Some(&other_cert))).is_ok());
        assert_eq!(
            server_config(&pem(&cert, &other_key, None)).unwrap_err(),
            TlsError::Key("does not match the certificate (cert_file)".into())
        );
        assert_eq!(
            server_config(&pem("nothing here", &key, None)).unwrap_err(),
            TlsError::Cert("holds no PEM certificate".into())
        );
        assert!(matches!(
            server_config(&pem(&cert, "garbage", None)),
            Err(TlsError::Key(_))
        ));
        assert_eq!(
            server_config(&pem(&cert, &key, Some("none"))).unwrap_err(),
            TlsError::ClientCa("holds no PEM certificate".into())
        );
        let debug = format!("{:?}", pem(&cert, &key, None));
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn peer_subject_reads_the_leaf_certificate() {
        let (cert, _) = self_signed("alice");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(peer_subject(&[der]).as_deref(), Some("CN=alice"));
        assert_eq!(peer_subject(&[]), None);
    }
}
