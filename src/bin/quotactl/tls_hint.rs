//! What a failed TLS handshake means for the operator: rustls's reason,
//! found in a connection error's causes, said as what to do about it
//! (`--ca-file`, `--tls-server-name`, a client certificate fit for mTLS).

use std::error::Error;

use rustls::{AlertDescription, CertificateError};

/// The advice for `error`'s TLS failure, if one of its causes is one;
/// `client_cert`: whether quotactl presented a certificate.
pub fn hint(error: &(dyn Error + 'static), client_cert: bool) -> Option<String> {
    let cause = rustls_cause(error)?;
    Some(match cause {
        rustls::Error::InvalidCertificate(c) => server_certificate(c),
        rustls::Error::AlertReceived(alert) => refused(*alert, client_cert)?,
        _ => return None,
    })
}

/// The advice for a client certificate or key that TLS settings refused
/// before connecting, if `error`'s causes say why.
pub fn settings_hint(error: &(dyn Error + 'static)) -> Option<&'static str> {
    match rustls_cause(error)? {
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if format!("{other:?}").contains("UnsupportedCertVersion") =>
        {
            Some(
                "the client certificate (--cert-file) is an X.509 v1 certificate, as a plain `openssl x509 -req` makes: issue a v3 one with extendedKeyUsage clientAuth (scripts/make-certs.sh does)",
            )
        }
        rustls::Error::InvalidCertificate(_) => Some(
            "the client certificate (--cert-file) is not one TLS accepts: it must be an X.509 v3 certificate with extendedKeyUsage clientAuth (scripts/make-certs.sh makes one)",
        ),
        _ => None,
    }
}

/// The first cause of `error` (itself included) that is a rustls error,
/// directly or inside an I/O error.
fn rustls_cause<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

/// Why quotactl refused the server's certificate.
fn server_certificate(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => "the server's certificate is not signed by a CA quotactl trusts: pass that CA with --ca-file (QUOTACTL_CA_FILE)".to_owned(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => "the server's certificate does not name the host in --server: connect by a name it carries, or give that name with --tls-server-name".to_owned(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired: renew it (a reload picks it up)".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet: check both machines' clocks".to_owned()
        }
        other => format!("quotactl refused the server's certificate ({other:?})"),
    }
}

/// What the server's alert says about quotactl's certificate.
fn refused(alert: AlertDescription, client_cert: bool) -> Option<String> {
    let refused_cert = matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnknownCA
            | AlertDescription::DecodeError
            | AlertDescription::AccessDenied
    );
    if client_cert && refused_cert {
        return Some(format!(
            "the server refused quotactl's client certificate (TLS alert {alert:?}): it must be an X.509 v3 certificate (a plain `openssl x509 -req` makes v1) with extendedKeyUsage clientAuth, issued by the CA in the server's client_ca_file; scripts/make-certs.sh makes one"
        ));
    }
    let wants_cert = matches!(
        alert,
        AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure
    );
    (!client_cert && (wants_cert || refused_cert)).then(|| {
        format!(
            "the server requires a client certificate (mTLS; TLS alert {alert:?}): pass --cert-file and --key-file"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn each_failure_says_what_to_do() {
        let unknown = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert!(hint(&unknown, false).is_some_and(|h| h.contains("--ca-file")));
        let name = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        assert!(hint(&name, false).is_some_and(|h| h.contains("--tls-server-name")));
        let bad = wrapped(rustls::Error::AlertReceived(
            AlertDescription::BadCertificate,
        ));
        assert!(hint(&bad, true).is_some_and(|h| h.contains("X.509 v3")));
        let required = wrapped(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert!(hint(&required, false).is_some_and(|h| h.contains("--cert-file")));
        let other = std::io::Error::other("connection refused");
        assert_eq!(hint(&other, true), None);
    }
}
