//! A gRPC client's endpoint from its command line (quotactl's `--server`,
//! `quotad probe`'s `--grpc`): the URL and its scheme, and with https://
//! the TLS flags (a CA to trust instead of the system's, a client
//! certificate for mTLS, the name the server's certificate must carry).
//! Each binary maps an [`EndpointError`] to its own exit code.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A client's TLS flags, as given.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTls<'a> {
    /// `--ca-file`: CA certificate(s) (PEM) to trust.
    pub ca_file: Option<&'a Path>,
    /// `--cert-file`: the client certificate (PEM), for mTLS.
    pub cert_file: Option<&'a Path>,
    /// `--key-file`: its private key (PEM).
    pub key_file: Option<&'a Path>,
    /// `--tls-server-name`: the name the server's certificate must carry.
    pub server_name: Option<&'a str>,
}

impl ClientTls<'_> {
    fn any(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some()
    }
}

/// Why a client's endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The command line is wrong: the URL, TLS flags without https://,
    /// half a client certificate.
    #[error("{0}")]
    Usage(String),
    /// A file a flag names cannot be read.
    #[error("{0}")]
    Unreadable(String),
    /// The files were read, but hold no usable certificate or key.
    #[error(
        "--ca-file, --cert-file or --key-file: not a usable PEM certificate or key (certificates: X.509 v3 PEM; keys: PKCS#8, PKCS#1 or SEC1 PEM): {}",
        super::error_text(.0)
    )]
    Unusable(tonic::transport::Error),
}

/// The endpoint `url` (given as `flag`) names, with `tls` for an
/// https:// URL, each connection attempt and call bounded by `timeout`.
pub fn grpc_endpoint(
    flag: &str,
    url: &str,
    tls: &ClientTls<'_>,
    timeout: Duration,
) -> Result<Endpoint, EndpointError> {
    use EndpointError::{Unreadable, Unusable, Usage};
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Usage(format!("{flag} {url}: not a URL: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if url.starts_with("https://") {
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Unreadable(format!("{what} {}: cannot read: {e}", path.display())))
        };
        let mut config = match tls.ca_file {
            Some(ca) => {
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca-file", ca)?))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match (tls.cert_file, tls.key_file) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read("--cert-file", cert)?,
                    read("--key-file", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(Usage(
                    "--cert-file and --key-file go together (a client certificate for mTLS)"
                        .to_owned(),
                ));
            }
        }
        if let Some(name) = tls.server_name {
            config = config.domain_name(name);
        }
        endpoint.tls_config(config).map_err(Unusable)
    } else if !url.starts_with("http://") {
        Err(Usage(format!(
            "{flag} {url}: expected http://host:port or https://host:port"
        )))
    } else if tls.any() {
        Err(Usage(format!(
            "--ca-file, --cert-file, --key-file and --tls-server-name need an https:// server (got {url})"
        )))
    } else {
        Ok(endpoint)
    }
}
