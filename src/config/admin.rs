//! The config's operator sections: `admin` (the admin API's listener, its
//! bearer tokens, TLS, audit file and override cap) and the `tls` of the
//! check listener (`server.tls`) and of the admin listener: their raw
//! form, validation and summary lines. The admin listener (address,
//! whether it speaks TLS, plain text allowed, connection cap) and the
//! audit file are [`AdminBoot`] (a restart applies them); the tokens, TLS
//! files and override cap are [`AdminLive`].
//!
//! ```yaml
//! server:
//!   tls: { cert_file: tls/server.pem, key_file: tls/server.key }
//! admin:
//!   addr: 127.0.0.1:8082
//!   tokens:
//!     - { id: ops-alice, sha256: "<64 hex digits>", scopes: [read, write] }
//!   tls: { cert_file: tls/admin.pem, key_file: tls/admin.key, client_ca_file: tls/ops-ca.pem }
//!   audit_file: /var/log/quotad/audit.jsonl
//! ```
//!
//! Tokens are stored only as the SHA-256 of a high-entropy token (make
//! one with `quotactl token new`): the config holds no secret. TLS files
//! are read and checked (certificate, key, their match, the client CA)
//! when the config is, so a reload with a broken certificate is refused
//! like any other invalid config.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::values::{Addr, NonEmpty};
use crate::diag::{Issue, Seg, check_name, one_of};
use crate::limits::file::Positive;
use crate::net::tls::{self, TlsError, TlsPem};

/// Default admin listener.
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8082));
/// Default `admin.max_overrides`.
pub const DEFAULT_MAX_OVERRIDES: usize = 10_000;
/// Largest `admin.max_overrides`.
const MAX_OVERRIDES_CAP: u64 = 100_000;
/// Default `admin.max_connections`: operators and their tools need a
/// handful; each connection's buffers count in the worst case.
pub const DEFAULT_ADMIN_CONNECTIONS: usize = 64;
/// Largest `admin.max_connections`.
const ADMIN_CONNECTIONS_CAP: u64 = 100_000;

/// The `admin` settings only a restart applies: the admin listener is
/// bound and built with them once. The admin API runs only when the
/// config has an `admin` section (with at least one token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminBoot {
    /// The admin gRPC listener.
    pub addr: SocketAddr,
    /// Whether the admin listener speaks TLS (its files are
    /// [`AdminLive::tls`], renewed on reload).
    pub tls_on: bool,
    /// Serve plain text on a non-loopback address (behind a mesh that
    /// encrypts); refused otherwise, as bearer tokens would cross the
    /// network in clear.
    pub insecure_plaintext: bool,
    /// A file every admin change is appended to, one JSON object a line.
    pub audit_file: Option<PathBuf>,
    /// Most connections open at once on the admin listener (the rest of
    /// `server.*`'s connection limits apply to it as to the check
    /// listener).
    pub max_connections: usize,
}

impl AdminBoot {
    /// Why the admin listener may not serve as configured: plain text on
    /// an address other hosts can reach.
    pub fn plaintext_problem(&self) -> Option<String> {
        if self.tls_on || self.insecure_plaintext || self.addr.ip().is_loopback() {
            return None;
        }
        Some(format!(
            "{} is not a loopback address and admin.tls is not set: bearer tokens would cross the network in clear (add admin.tls, bind to 127.0.0.1, or set admin.insecure_plaintext: true behind an encrypting mesh)",
            self.addr
        ))
    }
}

/// The `admin` settings a reload applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminLive {
    /// Who may call it.
    pub tokens: Vec<AdminToken>,
    /// TLS files of the admin listener; `Some` exactly when
    /// [`AdminBoot::tls_on`].
    pub tls: Option<TlsFiles>,
    /// Most overrides at once (a cap on memory, and on Redis's hash).
    pub max_overrides: usize,
}

/// One bearer token of the admin API.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Who holds it, for the audit log (`ops-alice`).
    pub id: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("id", &self.id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl AdminToken {
    /// Whether it grants `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Look: overrides, usage, plans.
    Read,
    /// Change: overrides, resets, reloads.
    Write,
}

impl Scope {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// A listener's TLS files, as named and as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates of the client certificates to require (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// Their contents, checked to make a server config.
    pub pem: TlsPem,
}

impl TlsFiles {
    /// The files, for watching.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = vec![self.cert_file.as_path(), self.key_file.as_path()];
        out.extend(self.client_ca_file.as_deref());
        out
    }
}

// ---------------------------------------------------------------------------
// Raw (as written) structure and validation.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the admin section (a mapping)")]
pub(super) struct AdminRaw {
    addr: Option<Addr>,
    tokens: Option<Vec<TokenRaw>>,
    tls: Option<TlsRaw>,
    insecure_plaintext: Option<bool>,
    audit_file: Option<NonEmpty>,
    max_overrides: Option<Positive>,
    max_connections: Option<Positive>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a token (a mapping with id, sha256 and scopes)"
)]
struct TokenRaw {
    id: TokenId,
    sha256: Sha256Hex,
    scopes: Vec<ScopeRaw>,
}

/// A token id: a name (letters, digits, `_`, `.`, `-`).
struct TokenId(String);

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_name(&s).map_err(de::Error::custom)?;
        Ok(TokenId(s))
    }
}

/// 64 hex digits.
struct Sha256Hex([u8; 32]);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_sha256(s.trim())
            .map(Sha256Hex)
            .map_err(de::Error::custom)
    }
}

/// Parses 64 hex digits (a SHA-256).
pub fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let n = s.chars().count();
    if n != 64 {
        return Err(format!(
            "expected 64 hex digits (the SHA-256 of the token, from `quotactl token new`), got {n} characters"
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = s
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or("expected 64 hex digits (0-9, a-f), found another character")?;
    }
    Ok(out)
}

struct ScopeRaw(Scope);

impl<'de> Deserialize<'de> for ScopeRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        one_of("scope", &s, [Scope::Read, Scope::Write], Scope::as_str)
            .map(ScopeRaw)
            .map_err(de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a tls section (a mapping with cert_file and key_file)"
)]
pub(super) struct TlsRaw {
    cert_file: NonEmpty,
    key_file: NonEmpty,
    client_ca_file: Option<NonEmpty>,
}

fn path(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::key(*p)).collect()
}

impl AdminRaw {
    /// Validates the section; files are relative to `base`.
    pub(super) fn build(self, base: &Path) -> Result<(AdminBoot, AdminLive), Issue> {
        let tokens_raw = self.tokens.unwrap_or_default();
        if tokens_raw.is_empty() {
            return Err(Issue::new(
                path(&["admin", "tokens"]),
                "the admin API needs at least one token (remove the admin section to run without it)",
            ));
        }
        let mut tokens: Vec<AdminToken> = Vec::with_capacity(tokens_raw.len());
        for (i, t) in tokens_raw.into_iter().enumerate() {
            let at = |field: &str| {
                let mut p = path(&["admin", "tokens"]);
                p.extend([Seg::Index(i), Seg::key(field)]);
                p
            };
            if let Some(j) = tokens.iter().position(|o| o.id == t.id.0) {
                return Err(Issue::new(
                    at("id"),
                    format!("token id '{}' is used by tokens[{j}] too", t.id.0),
                ));
            }
            if let Some(j) = tokens.iter().position(|o| o.sha256 == t.sha256.0) {
                return Err(Issue::new(
                    at("sha256"),
                    format!("the same token as tokens[{j}] ('{}')", tokens[j].id),
                ));
            }
            if t.scopes.is_empty() {
                return Err(Issue::new(
                    at("scopes"),
                    "at least one scope is required (read, write)",
                ));
            }
            let mut scopes: Vec<Scope> = t.scopes.into_iter().map(|s| s.0).collect();
            scopes.dedup();
            tokens.push(AdminToken {
                id: t.id.0,
                sha256: t.sha256.0,
                scopes,
            });
        }
        let tls = self
            .tls
            .map(|t| t.build(base, &["admin", "tls"]))
            .transpose()?;
        let max_overrides = match self.max_overrides {
            None => DEFAULT_MAX_OVERRIDES,
            Some(p) if p.0.get() > MAX_OVERRIDES_CAP => {
                return Err(Issue::new(
                    path(&["admin", "max_overrides"]),
                    format!("must be at most {MAX_OVERRIDES_CAP} (got {})", p.0),
                ));
            }
            Some(p) => p.0.get() as usize,
        };
        let max_connections = match self.max_connections {
            None => DEFAULT_ADMIN_CONNECTIONS,
            Some(p) if p.0.get() > ADMIN_CONNECTIONS_CAP => {
                return Err(Issue::new(
                    path(&["admin", "max_connections"]),
                    format!("must be at most {ADMIN_CONNECTIONS_CAP} (got {})", p.0),
                ));
            }
            Some(p) => p.0.get() as usize,
        };
        let boot = AdminBoot {
            addr: self.addr.map_or(DEFAULT_ADMIN_ADDR, |a| a.0),
            tls_on: tls.is_some(),
            insecure_plaintext: self.insecure_plaintext.unwrap_or(false),
            audit_file: self.audit_file.map(|f| base.join(f.0)),
            max_connections,
        };
        if let Some(why) = boot.plaintext_problem() {
            return Err(Issue::new(path(&["admin", "addr"]), why));
        }
        let live = AdminLive {
            tokens,
            tls,
            max_overrides,
        };
        Ok((boot, live))
    }
}

impl TlsRaw {
    /// Reads and checks the files (relative to `base`); errors name the
    /// field under `at`.
    pub(super) fn build(self, base: &Path, at: &[&str]) -> Result<TlsFiles, Issue> {
        let field = |name: &str| {
            let mut p = path(at);
            p.push(Seg::key(name));
            p
        };
        let read = |name: &str, file: &Path| {
            crate::diag::files::read_file(file).map_err(|e| {
                Issue::new(field(name), format!("cannot read {}: {e}", file.display()))
            })
        };
        let cert_file = base.join(self.cert_file.0);
        let key_file = base.join(self.key_file.0);
        let client_ca_file = self.client_ca_file.map(|f| base.join(f.0));
        let pem = TlsPem {
            cert: read("cert_file", &cert_file)?,
            key: read("key_file", &key_file)?,
            client_ca: client_ca_file
                .as_deref()
                .map(|f| read("client_ca_file", f))
                .transpose()?,
        };
        tls::server_config(&pem).map_err(|e| {
            let (name, file) = match &e {
                TlsError::Cert(_) => ("cert_file", &cert_file),
                TlsError::Key(_) => ("key_file", &key_file),
                TlsError::ClientCa(_) => (
                    "client_ca_file",
                    client_ca_file.as_ref().unwrap_or(&cert_file),
                ),
            };
            Issue::new(field(name), format!("{}: {e}", file.display()))
        })?;
        Ok(TlsFiles {
            cert_file,
            key_file,
            client_ca_file,
            pem,
        })
    }
}

/// The summary's `admin:` line: token ids and scopes, never hashes.
pub(super) fn describe_admin(boot: Option<&AdminBoot>, live: Option<&AdminLive>) -> String {
    let (Some(b), Some(a)) = (boot, live) else {
        return "admin: off (no admin section)".to_owned();
    };
    let tokens: Vec<String> = a
        .tokens
        .iter()
        .map(|t| {
            let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
            format!("{} ({})", t.id, scopes.join(", "))
        })
        .collect();
    format!(
        "admin: {}, tokens {}, tls {}, audit file {}, max overrides {}",
        b.addr,
        tokens.join("; "),
        describe_tls(a.tls.as_ref()),
        b.audit_file
            .as_ref()
            .map_or("none".to_owned(), |f| f.display().to_string()),
        a.max_overrides
    )
}

/// How the summary shows a listener's TLS.
pub(super) fn describe_tls(tls: Option<&TlsFiles>) -> String {
    match tls {
        None => "off".to_owned(),
        Some(t) if t.client_ca_file.is_some() => {
            format!(
                "on, client certificates required (mTLS), cert {}",
                t.cert_file.display()
            )
        }
        Some(t) => format!("on, cert {}", t.cert_file.display()),
    }
}
