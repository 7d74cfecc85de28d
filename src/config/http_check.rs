//! The config's `server.http_check` section: the HTTP check door (forward
//! auth for NGINX, Traefik and Caddy; the native API and
//! envoyproxy/ratelimit's `/json` as JSON), off unless it has an address.
//! Its listener and connection limits are [`HttpCheckBoot`] (a restart
//! applies them); the header the API key comes from is
//! [`HttpCheckLive`] (a reload applies it). It speaks TLS exactly when
//! the gRPC check listener does (`server.tls`), with the same files.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::values::{Addr, Dur, format_duration};
use crate::diag::{Issue, Seg};
use crate::limits::file::Positive;

/// The HTTP check door's settings only a restart applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheckBoot {
    /// Where it listens; `None`: the door is off.
    pub addr: Option<SocketAddr>,
    /// Most connections open at once; more are closed as soon as they
    /// are accepted.
    pub max_connections: usize,
    /// Largest request body (`POST` doors), in bytes: a bigger one is
    /// answered 400, unread (or cut off as it arrives).
    pub max_body_bytes: usize,
    /// Request body bytes all the door's requests may hold at once (at
    /// least `max_body_bytes`; a body counts its `Content-Length`, or
    /// `max_body_bytes` without one); past it, a request gets 503 at once.
    pub max_buffered_bytes: usize,
    /// How long a request's head may take to arrive once the connection
    /// is ready for it (a kept-alive connection waiting for its next
    /// request included), and then its body.
    pub request_timeout: Duration,
    /// A connection that sends nothing for this long is closed (however
    /// slowly it trickles a request).
    pub idle_timeout: Duration,
}

impl Default for HttpCheckBoot {
    fn default() -> Self {
        Self {
            addr: None,
            max_connections: 1024,
            max_body_bytes: 64 << 10,
            max_buffered_bytes: 16 << 20,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Where `GET /v1/auth` finds the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHeader {
    /// `authorization: Bearer <key>`.
    Bearer,
    /// The value of this header (lower case).
    Named(String),
}

impl KeyHeader {
    /// The header's name, lower case.
    pub fn name(&self) -> &str {
        match self {
            KeyHeader::Bearer => "authorization",
            KeyHeader::Named(n) => n,
        }
    }
}

/// The HTTP check door's settings a reload applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheckLive {
    /// Where `/v1/auth` finds the API key (`key_header`).
    pub key_header: KeyHeader,
}

impl Default for HttpCheckLive {
    fn default() -> Self {
        Self {
            key_header: KeyHeader::Named("x-api-key".into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the http_check section (a mapping)")]
pub(super) struct HttpCheckRaw {
    addr: Option<Addr>,
    key_header: Option<String>,
    max_connections: Option<Positive>,
    max_body_bytes: Option<Positive>,
    max_buffered_bytes: Option<Positive>,
    request_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
}

/// Largest `server.http_check.max_connections`.
const MAX_CONNECTIONS_CAP: u64 = 1_000_000;
/// Largest `server.http_check.max_buffered_bytes`.
const BUFFERED_BYTES_CAP: u64 = 4 << 30;
/// Smallest and largest `server.http_check.max_body_bytes`.
const BODY_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=(64 << 20);

/// `server.http_check.<field>`.
fn at(field: &str) -> Vec<Seg> {
    vec![Seg::key("server"), Seg::key("http_check"), Seg::key(field)]
}

impl HttpCheckRaw {
    /// Validates the section: the door (off without `addr`, its other
    /// settings kept for `--http-check-addr`) and its live part.
    pub(super) fn build(self) -> Result<(HttpCheckBoot, HttpCheckLive), Issue> {
        let mut live = HttpCheckLive::default();
        if let Some(h) = self.key_header {
            live.key_header = key_header(&h)?;
        }
        let mut boot = HttpCheckBoot {
            addr: self.addr.map(|a| a.0),
            ..HttpCheckBoot::default()
        };
        if let Some(n) = self.max_connections {
            let n = n.0.get();
            if n > MAX_CONNECTIONS_CAP {
                return Err(Issue::new(
                    at("max_connections"),
                    format!("must be at most {MAX_CONNECTIONS_CAP} (got {n})"),
                ));
            }
            boot.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.max_body_bytes {
            let n = n.0.get();
            if !BODY_BYTES_RANGE.contains(&n) {
                return Err(Issue::new(
                    at("max_body_bytes"),
                    format!(
                        "must be from {} to {} (got {n})",
                        BODY_BYTES_RANGE.start(),
                        BODY_BYTES_RANGE.end()
                    ),
                ));
            }
            boot.max_body_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.max_buffered_bytes {
            let n = n.0.get();
            if n < boot.max_body_bytes as u64 || n > BUFFERED_BYTES_CAP {
                return Err(Issue::new(
                    at("max_buffered_bytes"),
                    format!(
                        "must be from max_body_bytes ({}) to {BUFFERED_BYTES_CAP} (got {n})",
                        boot.max_body_bytes
                    ),
                ));
            }
            boot.max_buffered_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        } else {
            boot.max_buffered_bytes = boot.max_buffered_bytes.max(boot.max_body_bytes);
        }
        if let Some(d) = self.request_timeout {
            boot.request_timeout = d.0;
        }
        if let Some(d) = self.idle_timeout {
            boot.idle_timeout = d.0;
        }
        Ok((boot, live))
    }
}

/// `key_header`: a header name (any case; `authorization` means the
/// Bearer token).
fn key_header(name: &str) -> Result<KeyHeader, Issue> {
    let lower = name.trim().to_ascii_lowercase();
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() || lower.is_empty() {
        return Err(Issue::new(
            at("key_header"),
            format!("{name:?} is not an HTTP header name"),
        ));
    }
    Ok(if lower == "authorization" {
        KeyHeader::Bearer
    } else {
        KeyHeader::Named(lower)
    })
}

/// The summary's `http check:` line.
pub(super) fn summary(boot: &HttpCheckBoot, live: &HttpCheckLive, tls: bool) -> String {
    match boot.addr {
        None => "http check: off (server.http_check.addr, --http-check-addr)".into(),
        Some(addr) => format!(
            "http check: {addr} ({}), key from {}, max {} connections, body {} bytes ({} at once), request timeout {}, idle timeout {}",
            if tls { "TLS" } else { "plain text" },
            match &live.key_header {
                KeyHeader::Bearer => "authorization: Bearer".to_owned(),
                KeyHeader::Named(n) => n.clone(),
            },
            boot.max_connections,
            boot.max_body_bytes,
            boot.max_buffered_bytes,
            format_duration(boot.request_timeout),
            format_duration(boot.idle_timeout),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_header_is_lower_case_and_authorization_is_bearer() {
        assert_eq!(
            key_header("X-Api-Key").unwrap(),
            KeyHeader::Named("x-api-key".into())
        );
        assert_eq!(key_header("Authorization").unwrap(), KeyHeader::Bearer);
        assert!(key_header("bad header").is_err());
        assert!(key_header("").is_err());
    }
}
