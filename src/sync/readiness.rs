//! What Redis means to the node's readiness: with strict limits in the
//! table, the node is not ready while Redis is unreachable (or not reached
//! yet), since those limits are decided there; in `sync` mode Redis
//! trouble never makes it unready (see [`crate::telemetry::health`]).
//! Also the Redis line of `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use super::{SyncHandle, SyncState};
use crate::engine::Engine;
use crate::readiness::{Readiness, StateLine};
use crate::shutdown::Shutdown;

/// How often readiness looks at Redis and the table.
const HOLD_CHECK: Duration = Duration::from_millis(100);

/// Why readiness is held back for Redis now, if it is: the table has
/// strict limits and Redis is not reachable (or not reached yet).
pub fn redis_hold(engine: &Engine, redis: &SyncHandle) -> Option<&'static str> {
    let strict = engine.view().table().has_strict();
    match redis.state() {
        SyncState::Synced => None,
        _ if !strict => None,
        SyncState::Starting => {
            Some("redis not reached yet, and limits in mode strict are decided there")
        }
        SyncState::Degraded => {
            Some("redis unreachable, and limits in mode strict are decided there")
        }
    }
}

/// Holds readiness back while the table has strict limits and Redis is
/// not reachable (or not reached yet), until `shutdown`: held from the
/// start, before the daemon first says ready, then followed.
pub fn hold_for_redis(
    engine: Arc<Engine>,
    redis: SyncHandle,
    ready: Readiness,
    mut shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + 'static {
    ready.hold(redis_hold(&engine, &redis));
    async move {
        let mut tick = tokio::time::interval(HOLD_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let held = redis_hold(&engine, &redis);
            if held != ready.held() {
                match held {
                    Some(why) => tracing::warn!(why, "not ready"),
                    None => tracing::info!("nothing holds readiness back any more"),
                }
                ready.hold(held);
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
        }
    }
}

/// `/readyz`'s line about the sync task's state.
pub fn readyz_line(redis: SyncHandle) -> StateLine {
    Arc::new(move || match redis.state() {
        SyncState::Starting => "redis: starting\n",
        SyncState::Synced => "redis: synced\n",
        SyncState::Degraded => "redis: degraded (deciding locally)\n",
    })
}
