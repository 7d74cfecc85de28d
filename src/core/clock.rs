//! Time for the engine: a [`Clock`] trait returning Unix-epoch nanoseconds,
//! the real [`SystemClock`] and a [`ManualClock`] for tests.
//!
//! This is the only module allowed to read the machine's clocks (see
//! `.clippy.toml`): everything else receives time through a `Clock`, so the
//! algorithms are tested by moving a manual clock, never by sleeping.

use std::sync::atomic::{AtomicU64, Ordering};

/// Nanoseconds. Absolute times are nanoseconds since the Unix epoch (UTC);
/// durations are plain nanosecond counts.
pub type Nanos = u64;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: Nanos = 1_000_000_000;
/// Nanoseconds per millisecond.
pub const NANOS_PER_MS: Nanos = 1_000_000;

/// A source of time for the engine.
///
/// `now` must never go backwards: token buckets compare against earlier
/// readings. It is Unix-epoch based (not merely monotonic) because quotas use
/// calendar windows in UTC.
pub trait Clock: Send + Sync + 'static {
    /// The current time in nanoseconds since the Unix epoch.
    fn now(&self) -> Nanos;
}

/// The real clock: the wall time read once at start-up, advanced by the
/// monotonic clock. A wall-clock step (NTP, operator) therefore cannot make
/// buckets jump; the cost is that a long-running process may drift from the
/// wall clock by whatever NTP corrects, which only shifts calendar-window
/// boundaries by that drift.
#[derive(Debug)]
pub struct SystemClock {
    base_unix: Nanos,
    #[allow(clippy::disallowed_types)]
    start: std::time::Instant,
}

impl SystemClock {
    /// Reads the wall clock and the monotonic clock once.
    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    pub fn new() -> Self {
        let base_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            base_unix,
            start: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Nanos {
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_unix.saturating_add(elapsed)
    }
}

/// A clock that only moves when told to. For tests and benches.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `now` (Unix-epoch nanoseconds).
    pub fn new(now: Nanos) -> Self {
        Self {
            now: AtomicU64::new(now),
        }
    }

    /// Moves the clock forward by `by` nanoseconds.
    pub fn advance(&self, by: Nanos) {
        self.now.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock. Going backwards is the caller's responsibility: the
    /// engine tolerates it (it never underflows) but answers as if no time
    /// had passed.
    pub fn set(&self, now: Nanos) {
        self.now.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    #[inline]
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

/// Real elapsed time for measurements (server-side latency), whatever
/// clock the engine decides with: a manual clock in tests does not move,
/// yet a histogram of how long a call took must. Reads the CPU's
/// timestamp counter where it is invariant (`quanta`; a few ns), else the
/// OS's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(quanta::Instant);

impl Stopwatch {
    /// Starts measuring now.
    #[inline]
    pub fn start() -> Self {
        Self(quanta::Instant::now())
    }

    /// Nanoseconds since [`Stopwatch::start`].
    #[inline]
    pub fn nanos(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Seconds since [`Stopwatch::start`].
    #[inline]
    pub fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// `t` (Unix ns) as an RFC 3339 UTC time to the second, as
/// `2026-12-31T00:00:00Z`: how audit lines and listings show times.
#[allow(clippy::disallowed_types)]
pub fn rfc3339(t: Nanos) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(t);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Parses an RFC 3339 UTC time (`2026-12-31T00:00:00Z`, fractions of a
/// second allowed) into Unix ns.
#[allow(clippy::disallowed_types)]
pub fn parse_rfc3339(text: &str) -> Result<Nanos, String> {
    let at = humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
        format!("invalid time '{text}' ({e}; expected RFC 3339 UTC such as 2026-12-31T00:00:00Z)")
    })?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .map_err(|_| format!("invalid time '{text}' (before 1970)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_to_the_second() {
        let t = 1_798_761_600 * NANOS_PER_SEC; // 2027-01-01T00:00:00Z
        assert_eq!(rfc3339(t), "2027-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Ok(t));
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00.5Z"), Ok(t + 500_000_000));
        assert!(parse_rfc3339("tomorrow").is_err());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now(), 5);
        c.advance(10);
        assert_eq!(c.now(), 15);
        c.set(100);
        assert_eq!(c.now(), 100);
    }

    #[test]
    fn system_clock_is_unix_based_and_monotonic() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        // After 2020-01-01 and before 2200-01-01.
        assert!(a > 1_577_836_800 * NANOS_PER_SEC);
        assert!(a < 7_258_118_400 * NANOS_PER_SEC);
    }
}
