//! hyper's clock for the gRPC servers ([`CoarseTimer`]): tokio's timers,
//! with `now` read from the coarse clock. hyper's `Timer` trait speaks
//! std's instants, so this module, and only it, names them.
#![allow(clippy::disallowed_types)]

use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

/// hyper's clock: tokio's timers, but `now` read from the coarse clock
/// (a read of a shared page; the precise clock costs a `vDSO` call with
/// `rdtsc`). hyper reads it for HTTP/2 keepalive on every frame it
/// receives, to know when the connection last heard from its peer; a few
/// milliseconds of error there are nothing beside a keepalive interval of
/// seconds.
#[derive(Clone, Debug, Default)]
pub struct CoarseTimer(TokioTimer);

/// Where the coarse clock's readings are taken from: a precise instant and
/// the coarse clock at it.
fn anchor() -> &'static (Instant, coarsetime::Instant) {
    static ANCHOR: OnceLock<(Instant, coarsetime::Instant)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        (
            Instant::now(),
            coarsetime::Instant::now_without_cache_update(),
        )
    })
}

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.0.sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.0.sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        self.0.reset(sleep, new_deadline);
    }

    fn now(&self) -> Instant {
        let (precise, coarse) = anchor();
        let since = coarsetime::Instant::now_without_cache_update().duration_since(*coarse);
        *precise + Duration::from(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_moves_with_the_precise_one() {
        let timer = CoarseTimer::default();
        let before = Instant::now();
        let coarse = timer.now();
        std::thread::sleep(Duration::from_millis(30));
        let later = timer.now();
        // The coarse clock ticks every few ms (at most 10 at HZ=100):
        // 30 ms later it has moved at least 20, and it stays within a
        // tick of the precise clock.
        assert!(later >= coarse + Duration::from_millis(20));
        let tick = Duration::from_millis(10);
        assert!(coarse + tick >= before, "{coarse:?} vs {before:?}");
        assert!(later <= Instant::now() + tick);
    }
}
