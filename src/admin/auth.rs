//! Who may call the admin API: bearer tokens checked against the SHA-256
//! hashes in `admin.tokens`, in constant time, and each call's scope.
//!
//! A call without `authorization: Bearer <token>`, or with a token no
//! configured hash matches, gets `UNAUTHENTICATED`; a known token without
//! the call's scope gets `PERMISSION_DENIED`. The token itself is never
//! logged; the caller is named by the token's id, plus the subject of its
//! client certificate when the listener uses mTLS.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::config::{AdminToken, Scope};
use crate::tls::peer_subject;

/// The authenticated caller of one admin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The id of the token it presented.
    pub token: String,
    /// Its client certificate's subject (mTLS), if any.
    pub cert_subject: Option<String>,
    /// Where it called from.
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// How the audit log and overrides name it: `ops-alice`, or
    /// `ops-alice (CN=alice, O=ops)`, cut to fit
    /// [`MAX_AUTHOR_BYTES`](crate::limits::overrides::MAX_AUTHOR_BYTES).
    pub fn who(&self) -> String {
        let mut who = match &self.cert_subject {
            Some(s) => format!("{} ({s})", self.token),
            None => self.token.clone(),
        };
        let max = crate::limits::overrides::MAX_AUTHOR_BYTES;
        if who.len() > max {
            let mut cut = max - 3;
            while !who.is_char_boundary(cut) {
                cut -= 1;
            }
            who.truncate(cut);
            who.push_str("...");
        }
        who
    }
}

/// Checks `request`'s bearer token against `tokens` and that it grants
/// `scope` for `call` (named in the refusal).
pub fn authorize<T>(
    tokens: &[AdminToken],
    request: &Request<T>,
    scope: Scope,
    call: &str,
) -> Result<Caller, Status> {
    let (peer, certs) = crate::net::ConnInfo::peer_of(request);
    let refuse = |why: &str| {
        tracing::warn!(peer = ?peer, call, "admin call refused: {why}");
        Status::unauthenticated(why.to_owned())
    };
    let Some(value) = request.metadata().get("authorization") else {
        return Err(refuse(
            "missing bearer token: send the header 'authorization: Bearer <token>'",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(bearer)
        .ok_or_else(|| refuse("malformed authorization header: expected 'Bearer <token>'"))?;
    let token = matching(tokens, token).ok_or_else(|| refuse("invalid token"))?;
    if !token.allows(scope) {
        tracing::warn!(peer = ?peer, call, token = %token.id, "admin call refused: missing scope {}", scope.as_str());
        return Err(Status::permission_denied(format!(
            "token '{}' lacks the {} scope that {call} needs",
            token.id,
            scope.as_str()
        )));
    }
    let cert_subject = certs.and_then(|certs| peer_subject(&certs));
    Ok(Caller {
        token: token.id.clone(),
        cert_subject,
        peer,
    })
}

/// The token of a `Bearer <token>` header value (scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The configured token whose hash is `token`'s. Every hash is compared,
/// each in constant time, so timing tells nothing about which (or how
/// much of one) matched.
fn matching<'t>(tokens: &'t [AdminToken], token: &str) -> Option<&'t AdminToken> {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        if bool::from(t.sha256.ct_eq(&hash)) {
            found = Some(t);
        }
    }
    found
}

/// The hex SHA-256 of `token`: what `admin.tokens[].sha256` holds.
pub fn token_hash(token: &str) -> String {
    crate::core::hash::hex(&Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::admin::parse_sha256;

    fn token(id: &str, secret: &str, scopes: &[Scope]) -> AdminToken {
        AdminToken {
            id: id.into(),
            sha256: parse_sha256(&token_hash(secret)).unwrap(),
            scopes: scopes.to_vec(),
        }
    }

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_and_scopes_decide() {
        let tokens = [
            token("ops", "s3cret-ops", &[Scope::Read, Scope::Write]),
            token("grafana", "s3cret-ro", &[Scope::Read]),
        ];
        let ok = authorize(
            &tokens,
            &request(Some("Bearer s3cret-ops")),
            Scope::Write,
            "SetOverride",
        );
        assert_eq!(ok.unwrap().who(), "ops");
        let lower = authorize(
            &tokens,
            &request(Some("bearer s3cret-ro")),
            Scope::Read,
            "GetUsage",
        );
        assert_eq!(lower.unwrap().token, "grafana");
        let cases = [
            (None, tonic::Code::Unauthenticated, "missing bearer token"),
            (Some("Basic abc"), tonic::Code::Unauthenticated, "malformed"),
            (Some("Bearer "), tonic::Code::Unauthenticated, "malformed"),
            (
                Some("Bearer wrong"),
                tonic::Code::Unauthenticated,
                "invalid token",
            ),
            (
                Some("Bearer s3cret-ro"),
                tonic::Code::PermissionDenied,
                "token 'grafana' lacks the write scope that SetOverride needs",
            ),
        ];
        for (auth, code, text) in cases {
            let e = authorize(&tokens, &request(auth), Scope::Write, "SetOverride").unwrap_err();
            assert_eq!(e.code(), code, "{auth:?}");
            assert!(e.message().contains(text), "{auth:?}: {}", e.message());
            assert!(!e.message().contains("s3cret"), "never echo a token");
        }
    }

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
