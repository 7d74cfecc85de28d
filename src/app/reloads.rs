//! Reloads as the running daemon wires them: the [`Reloader`] with its
//! hooks (new certificates for the listeners' acceptors, the heaviest-keys
//! settings, failed reloads to the audit trail), and reloads on SIGHUP.
//! The file watcher itself is [`Reloader::watch`].

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use super::servers::Listener;
use crate::admin::audit::{Audit, Record};
use crate::config::{Config, TlsFiles};
use crate::control::Control;
use crate::control::reload::{Cause, Loader, Reloader};
use crate::metrics::Metrics;
use crate::net::tls::Acceptor;
use crate::shutdown::Shutdown;

/// A stream of reload requests (SIGHUP).
pub type Hangups = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// The reloader: through `loader`, or the config's own file; reloads
/// hand the listeners' acceptors (gRPC, the HTTP check door's, admin)
/// their new certificates, and refused ones
/// started by SIGHUP or the watcher go to the audit trail (the admin API
/// audits its own, naming the caller).
pub(super) fn reloader(
    control: &Arc<Control>,
    loader: Option<Loader>,
    [grpc, http_check, admin]: [Option<&Listener>; 3],
    metrics: &Arc<Metrics>,
    audit: &Arc<Audit>,
) -> Reloader {
    let config = control.config();
    let loader = loader.unwrap_or_else(|| match config.source.clone() {
        Some(path) => Arc::new(move || Config::load(&path).map_err(|e| e.to_string())),
        None => {
            let fixed = Config::clone(&config);
            Arc::new(move || Ok(fixed.clone()))
        }
    });
    let mut reloader = Reloader::new(Arc::clone(control), loader);
    let (trail, c) = (Arc::clone(audit), Arc::clone(control));
    reloader.on_failure(Box::new(move |cause: Cause, error: &str| {
        if cause != Cause::Admin {
            let now = c.engine().now();
            let record = Record::by("-".to_owned(), None, "config.reload", now);
            trail.write(&record.failed(cause.as_str(), error));
        }
    }));
    let m = Arc::clone(metrics);
    reloader.on_reload(Box::new(move |c: &Config| {
        m.heavy()
            .configure(c.live.metrics.heavy_keys, c.live.metrics.key_names.clone());
    }));
    let server_tls: fn(&Config) -> Option<&TlsFiles> = |c| c.live.server.tls.as_ref();
    let admin_tls: fn(&Config) -> Option<&TlsFiles> =
        |c| c.live.admin.as_ref().and_then(|a| a.tls.as_ref());
    let listeners = [
        (grpc, "server.tls", server_tls),
        (http_check, "server.tls", server_tls),
        (admin, "admin.tls", admin_tls),
    ];
    for (listener, section, files_of) in listeners {
        if let Some(tls) = listener.and_then(|l| l.tls.clone()) {
            reloader.on_reload(Box::new(move |c: &Config| {
                if let Some(files) = files_of(c) {
                    renew(&tls, files, section);
                }
            }));
        }
    }
    reloader
}

/// Gives `tls` the certificate in `files` (already checked by the config).
fn renew(tls: &Acceptor, files: &TlsFiles, section: &str) {
    match tls.replace(&files.pem) {
        Ok(()) => tracing::info!(
            section,
            cert = %files.cert_file.display(),
            "TLS certificate in use for new connections"
        ),
        Err(e) => {
            tracing::error!(section, error = %e, "TLS certificate refused; the old one stays")
        }
    }
}

/// Reloads whenever `hangups` yields, until `stop` fires; a reload in
/// progress does not hold up the shutdown.
pub(super) async fn on_hangups(reloader: Arc<Reloader>, mut hangups: Hangups, mut stop: Shutdown) {
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            next = hangups.next() => match next {
                Some(()) => {}
                None => return,
            },
        }
        tokio::select! {
            _ = stop.wait() => return,
            // Logged (and counted) by the reloader.
            _ = reloader.reload(Cause::Signal) => {}
        }
    }
}
