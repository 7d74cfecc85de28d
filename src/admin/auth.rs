//! Who may call the admin API: bearer tokens checked against the SHA-256
//! hashes in `admin.tokens`, in constant time, and each call's scope.
//!
//! A call without `authorization: Bearer <token>`, or with a token no
//! configured hash matches, gets `UNAUTHENTICATED`; a known token without
//! the call's scope gets `PERMISSION_DENIED`. A refusal says why
//! ([`Refusal`], a fixed set) for the caller's counting, logging and
//! audit ([`super::refusals`]); nothing is logged here. The token itself
//! is never logged; the caller is named by the token's id, plus the
//! subject of its client certificate when the listener uses mTLS.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::config::{AdminToken, Scope};
use crate::net::tls::peer_subject;

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
            who.truncate(crate::diag::head(&who, max - 3).len());
            who.push_str("...");
        }
        who
    }
}

/// Why an admin call was refused before it ran. A fixed set: the values
/// of the `reason` label of `quotad_admin_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization` header.
    NoToken = 0,
    /// An `authorization` header that is not `Bearer <token>`.
    MalformedToken = 1,
    /// A token no configured hash matches.
    BadToken = 2,
    /// A known token without the call's scope.
    MissingScope = 3,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 4] = [
        Refusal::NoToken,
        Refusal::MalformedToken,
        Refusal::BadToken,
        Refusal::MissingScope,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::MalformedToken => "malformed_token",
            Refusal::BadToken => "bad_token",
            Refusal::MissingScope => "missing_scope",
        }
    }
}

/// A refused call: why, who (as far as known) and the caller's answer.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: Refusal,
    /// The token's id, when the token was known (a missing scope).
    pub token: Option<String>,
    /// Where the call came from.
    pub peer: Option<SocketAddr>,
    /// The caller's answer; its message never holds the token.
    pub status: Status,
}

/// Checks `request`'s bearer token against `tokens` and that it grants
/// `scope` for `call` (named in the refusal).
pub fn authorize<T>(
    tokens: &[AdminToken],
    request: &Request<T>,
    scope: Scope,
    call: &str,
) -> Result<Caller, Refused> {
    let (peer, certs) = crate::net::ConnInfo::peer_of(request);
    let refuse = |reason: Refusal, why: &str| Refused {
        reason,
        token: None,
        peer,
        status: Status::unauthenticated(why.to_owned()),
    };
    let Some(value) = request.metadata().get("authorization") else {
        return Err(refuse(
            Refusal::NoToken,
            "missing bearer token: send the header 'authorization: Bearer <token>'",
        ));
    };
    let token = value.to_str().ok().and_then(bearer).ok_or_else(|| {
        refuse(
            Refusal::MalformedToken,
            "malformed authorization header: expected 'Bearer <token>'",
        )
    })?;
    let token =
        matching(tokens, token).ok_or_else(|| refuse(Refusal::BadToken, "invalid token"))?;
    if !token.allows(scope) {
        return Err(Refused {
            reason: Refusal::MissingScope,
            token: Some(token.id.clone()),
            peer,
            status: Status::permission_denied(format!(
                "token '{}' lacks the {} scope that {call} needs",
                token.id,
                scope.as_str()
            )),
        });
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
            (
                None,
                Refusal::NoToken,
                tonic::Code::Unauthenticated,
                "missing bearer token",
            ),
            (
                Some("Basic abc"),
                Refusal::MalformedToken,
                tonic::Code::Unauthenticated,
                "malformed",
            ),
            (
                Some("Bearer "),
                Refusal::MalformedToken,
                tonic::Code::Unauthenticated,
                "malformed",
            ),
            (
                Some("Bearer wrong"),
                Refusal::BadToken,
                tonic::Code::Unauthenticated,
                "invalid token",
            ),
            (
                Some("Bearer s3cret-ro"),
                Refusal::MissingScope,
                tonic::Code::PermissionDenied,
                "token 'grafana' lacks the write scope that SetOverride needs",
            ),
        ];
        for (auth, reason, code, text) in cases {
            let r = authorize(&tokens, &request(auth), Scope::Write, "SetOverride").unwrap_err();
            assert_eq!(r.reason, reason, "{auth:?}");
            let known = (reason == Refusal::MissingScope).then(|| "grafana".to_owned());
            assert_eq!(r.token, known, "{auth:?}");
            let e = r.status;
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
