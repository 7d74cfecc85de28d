//! The connection to a quotad admin listener: address, TLS (a CA to
//! trust, a client certificate for mTLS), the bearer token (from
//! `QUOTACTL_TOKEN` or `--token-file`, never a command-line argument),
//! and the mapping of every failure to an exit code a script can trust.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quotad::api::pb::quota_admin_client::QuotaAdminClient;
use quotad::cli::endpoint::{ClientTls, EndpointError, grpc_endpoint};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Exit codes besides 0 (sysexits.h where one fits).
pub mod exit {
    /// The key has no override (get, rm).
    pub const NOT_FOUND: u8 = 1;
    /// A wrong command line: a flag, a missing token, a malformed value.
    pub const USAGE: u8 = quotad::cli::EX_USAGE;
    /// Refused input: the server's INVALID_ARGUMENT, FAILED_PRECONDITION
    /// (a reload of invalid files), RESOURCE_EXHAUSTED; an invalid file
    /// for check-config.
    pub const DATA: u8 = 65;
    /// A file named on the command line cannot be read, or does not hold
    /// what it should (a PEM certificate or key).
    pub const NO_INPUT: u8 = 66;
    /// The server cannot be reached, or is unavailable (Redis down for a
    /// change, shutting down), or did not answer in time.
    pub const UNAVAILABLE: u8 = 69;
    /// Any other server error.
    pub const SOFTWARE: u8 = 70;
    /// The token is missing, wrong, or lacks the scope.
    pub const NO_PERMISSION: u8 = 77;
}

/// A failure: a message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// More for `-o json` (an invalid config file's mistakes, located),
    /// beside `code` and `message`.
    pub details: Option<(&'static str, serde_json::Value)>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// This failure with `value` under `name` in its JSON form.
    pub fn with_detail(mut self, name: &'static str, value: serde_json::Value) -> Self {
        self.details = Some((name, value));
        self
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    /// A server's refusal, by its gRPC code; `hint` goes after an
    /// unavailable server's reason.
    pub fn status(s: &tonic::Status, server: &str, hint: &str) -> Self {
        use tonic::Code;
        let message = s.message();
        match s.code() {
            Code::NotFound => Self::new(exit::NOT_FOUND, message),
            Code::InvalidArgument | Code::FailedPrecondition | Code::ResourceExhausted => {
                Self::new(exit::DATA, message)
            }
            Code::Unauthenticated => Self::new(
                exit::NO_PERMISSION,
                format!(
                    "not authenticated by {server}: {message} (check QUOTACTL_TOKEN or --token-file)"
                ),
            ),
            Code::PermissionDenied => {
                Self::new(exit::NO_PERMISSION, format!("permission denied: {message}"))
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Self::new(
                exit::UNAVAILABLE,
                format!("{server} is unavailable: {}{hint}", describe_unavailable(s)),
            ),
            // A connection the server dropped (an mTLS server refusing a
            // client without a certificate) is sometimes reported as an
            // unknown transport error rather than as unavailable.
            Code::Unknown if message.starts_with("transport error") => {
                Self::status(&tonic::Status::unavailable(message), server, hint)
            }
            Code::Unimplemented => Self::new(
                exit::SOFTWARE,
                format!(
                    "{server} does not serve the admin API here (is this the admin address?): {message}"
                ),
            ),
            other => Self::new(exit::SOFTWARE, format!("{server}: {other:?}: {message}")),
        }
    }
}

fn describe_unavailable(s: &tonic::Status) -> String {
    quotad::cli::chain(s.message().to_owned(), std::error::Error::source(s))
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub server: String,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub timeout: Duration,
    /// Send the token over `http://` to a host that is not loopback.
    pub insecure: bool,
}

impl Target {
    /// What to say after an unavailable server's reason: over TLS, that a
    /// server requiring client certificates closes the connection of a
    /// client without one, or with one it does not accept (TLS 1.3 says
    /// so only after the handshake, so quotactl sees a closed connection).
    pub fn hint(&self) -> &'static str {
        match (
            self.server.starts_with("https://"),
            self.cert_file.is_some(),
        ) {
            (true, false) => {
                " (a server that requires client certificates closes the connection: give --cert-file and --key-file)"
            }
            (true, true) => {
                " (a server that requires client certificates closes the connection of one it does not accept: the certificate must be X.509 v3 with extendedKeyUsage clientAuth, issued by the CA in the server's client_ca_file; the server's log says why; scripts/make-certs.sh makes one)"
            }
            _ => "",
        }
    }
}

/// The bearer token would cross the network in clear: `http://` to a
/// host that is not loopback (127.0.0.0/8, ::1, `localhost`) is refused
/// unless `--insecure` says the link is encrypted by other means. Checked
/// before the token is even read.
fn refuse_plain_text(target: &Target) -> Result<(), Failure> {
    let server = &target.server;
    if target.insecure || !server.starts_with("http://") {
        return Ok(());
    }
    // A server that is not a URL is refused as such by the endpoint.
    let Some(host) = server
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
    else {
        return Ok(());
    };
    if loopback(&host) {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "refusing to send the admin token in plain text to {server}: {host} is not a loopback address, so anyone on the way could read the token and use it. Use https:// (the admin listener's admin.tls), or add --insecure if the link is encrypted by other means (a VPN, a service mesh, an SSH tunnel)"
    )))
}

/// `localhost`, or an IP address on the loopback interface (IPv4 mapped
/// into IPv6 too).
fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Client = QuotaAdminClient<InterceptedService<Channel, Bearer>>;

fn read(what: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        Failure::new(
            exit::NO_INPUT,
            format!("{what} {}: cannot read: {e}", path.display()),
        )
    })
}

/// The token: `--token-file`'s first line, else `QUOTACTL_TOKEN`.
fn token(target: &Target) -> Result<String, Failure> {
    let token = match &target.token_file {
        Some(path) => {
            let text = read("--token-file", path)?;
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        None => std::env::var("QUOTACTL_TOKEN")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    if token.is_empty() {
        return Err(Failure::usage(match &target.token_file {
            Some(p) => format!("--token-file {}: the file is empty", p.display()),
            None => "no admin token: set QUOTACTL_TOKEN or pass --token-file FILE (tokens are never taken as arguments)".to_owned(),
        }));
    }
    Ok(token)
}

/// Connects to the admin listener (bounded by the timeout).
pub async fn connect(target: &Target) -> Result<Client, Failure> {
    refuse_plain_text(target)?;
    let token = token(target)?;
    let bearer = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| Failure::usage("the admin token must be printable ASCII"))?;
    let server = &target.server;
    let tls = ClientTls {
        ca_file: target.ca_file.as_deref(),
        cert_file: target.cert_file.as_deref(),
        key_file: target.key_file.as_deref(),
        server_name: target.tls_server_name.as_deref(),
    };
    let endpoint =
        grpc_endpoint("--server", server, &tls, target.timeout).map_err(|e| match e {
            EndpointError::Usage(message) => Failure::usage(message),
            EndpointError::Unreadable(message) => Failure::new(exit::NO_INPUT, message),
            // The files were read: what they hold is not a usable
            // certificate or key.
            EndpointError::Unusable(ref cause) => {
                let message = match crate::tls_hint::settings_hint(cause) {
                    Some(hint) => format!("{hint} ({})", quotad::cli::error_text(cause)),
                    None => e.to_string(),
                };
                Failure::new(exit::NO_INPUT, message)
            }
        })?;
    let channel = endpoint.connect().await.map_err(|e| {
        let text = quotad::cli::chain(e.to_string(), std::error::Error::source(&e));
        match crate::tls_hint::hint(&e, target.cert_file.is_some()) {
            Some(hint) => Failure::new(
                exit::UNAVAILABLE,
                format!("cannot connect to {server}: {hint} ({text})"),
            ),
            None => Failure::new(exit::UNAVAILABLE, format!("cannot reach {server}: {text}")),
        }
    })?;
    Ok(QuotaAdminClient::with_interceptor(channel, Bearer(bearer)))
}
