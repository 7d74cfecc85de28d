//! What the app hands telemetry, and the telemetry tasks it spawns: the
//! sampler's sources (the config in effect, Redis's state), `/readyz`'s
//! lines (the config and overrides, Redis), the Redis readiness hold,
//! metrics upkeep and the HTTP listener.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::{AppError, Rest};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::sync::readiness::{hold_for_redis, readyz_line};
use crate::sync::{SyncHandle, SyncState};
use crate::telemetry;
use crate::telemetry::sampler::{self, ConfigState, Sources};

/// Starts telemetry: the sampler on each scrape, the Redis readiness hold
/// (when Redis is configured), metrics upkeep and the HTTP listener
/// (`/livez`, `/readyz`, `/metrics`), all in `rest`.
pub(super) fn start(
    control: &Arc<Control>,
    redis: Option<SyncHandle>,
    ready: &Readiness,
    metrics: &Arc<Metrics>,
    http: TcpListener,
    rest: &mut Rest,
) {
    metrics.on_scrape(sampler::sampler(Sources {
        engine: Arc::clone(control.engine()) as _,
        config: config_state(control),
        redis_up: redis.clone().map(|h| {
            Box::new(move || h.state() == SyncState::Synced) as Box<dyn Fn() -> bool + Send + Sync>
        }),
        ready: ready.clone(),
    }));
    if let Some(handle) = redis.clone() {
        // Plans with strict limits need Redis to be decided: not ready
        // while it is unreachable (held from the start, before the
        // daemon first says ready, then followed).
        let hold = hold_for_redis(
            Arc::clone(control.engine()),
            handle,
            ready.clone(),
            rest.stop(),
        );
        rest.spawn(hold);
    }
    let c = Arc::clone(control);
    let window = move || c.config().live.metrics.heavy_window;
    rest.spawn(sampler::upkeep(Arc::clone(metrics), window, rest.stop()));
    let router = telemetry::router(
        ready.clone(),
        redis.map(readyz_line),
        details(control),
        Arc::clone(metrics),
    );
    let (m, stop) = (Arc::clone(metrics), rest.stop());
    rest.spawn_server(async move {
        crate::net::http::serve(http, router, &m, stop)
            .await
            .map_err(|e| AppError::Serve {
                what: "HTTP",
                source: Box::new(e),
            })
    });
}

/// The config in effect and its reloads, for the sampler.
fn config_state(control: &Arc<Control>) -> Box<dyn Fn() -> ConfigState + Send + Sync> {
    let control = Arc::clone(control);
    Box::new(move || {
        let stats = control.stats();
        let v = control.version();
        ConfigState {
            reloads_ok: stats.ok,
            reloads_failed: stats.failed,
            last_failed: stats.last_failed,
            version: v.number,
            loaded_at: v.loaded_at,
        }
    })
}

/// `/readyz`'s lines about the config and overrides.
fn details(control: &Arc<Control>) -> telemetry::Details {
    let control = Arc::clone(control);
    Arc::new(move || {
        let v = control.version();
        let stats = control.stats();
        let mut out = format!(
            "config: version {} (digest {}), reloads {} ok, {} failed\n",
            v.number,
            v.short_digest(),
            stats.ok,
            stats.failed
        );
        let overrides = control.engine().view().table().overrides();
        out.push_str(&format!("overrides: {overrides} in force\n"));
        out
    })
}
