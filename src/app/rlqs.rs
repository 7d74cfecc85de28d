//! Envoy RLQS between reports: every [`TICK`], the engine follows the
//! rules in effect (reloads, operators' blocks and their ends reach the
//! streams within a tick) and abandons idle buckets.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::shutdown::Shutdown;

/// How often RLQS buckets are looked at between reports.
pub const TICK: Duration = Duration::from_millis(100);

/// Ticks until `shutdown`.
pub async fn run(engine: Arc<Engine>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => engine.rlqs_tick(),
        }
    }
}
