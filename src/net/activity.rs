//! One connection's state, shared by the connection and its calls: when
//! it last did something, how many calls the server is working on, the
//! request bytes it buffers, and the answer bytes produced but not yet
//! written to the peer.
//!
//! **Activity** is a call starting, a request body's bytes arriving, an
//! answer's bytes going out, and a call the server finishes. HTTP/2 pings
//! are not: every live client answers them, so they cannot tell a
//! working client from one that only holds a connection. A call waiting
//! for its caller (a stream with nothing to say, a body that stopped
//! arriving) is not activity either: the connection is idle when nothing
//! happened for `server.idle_timeout` and no call is being worked on.
//!
//! Activity is noted several times per call, so its time comes from the
//! kernel's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`, through
//! `coarsetime`): a read of a shared page, where the precise clock costs
//! about 25 ns a read here (about 100 ns per call, issue 24's profile).
//! It moves in ticks of the kernel's timer (1–4 ms), which an idle
//! timeout of seconds does not notice; kept in whole milliseconds, a
//! touch in the same millisecond as the last one is one load.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::budget::Budget;

/// A connection's shared state. See the module docs.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    /// `born` on the coarse clock.
    born_coarse: coarsetime::Instant,
    /// Milliseconds from `born_coarse` to the last activity.
    last: AtomicU64,
    /// Calls whose answer the server is working on.
    busy: AtomicUsize,
    /// Request bytes this connection's calls hold.
    buffered: Budget,
    /// Answer bytes handed to HTTP/2 and not yet written to the socket.
    unsent: AtomicUsize,
    unsent_cap: usize,
    /// Answers waiting for `unsent` to go down.
    waiters: Mutex<Vec<Waker>>,
    /// Whether `waiters` may hold any: a write looks here first, so the
    /// common case (nobody waiting) takes no lock.
    waiting: AtomicBool,
}

impl Activity {
    /// A new connection's state: `buffered_cap` request bytes at most,
    /// answers held back past `unsent_cap` unwritten bytes.
    pub fn new(buffered_cap: usize, unsent_cap: usize) -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            born_coarse: coarsetime::Instant::now_without_cache_update(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            buffered: Budget::new(buffered_cap),
            unsent: AtomicUsize::new(0),
            unsent_cap,
            waiters: Mutex::new(Vec::new()),
            waiting: AtomicBool::new(false),
        })
    }

    /// When the connection was accepted.
    pub fn born(&self) -> Instant {
        self.born
    }

    /// Notes activity now.
    #[inline]
    pub fn touch(&self) {
        let now = coarsetime::Instant::now_without_cache_update();
        let since = now.duration_since(self.born_coarse).as_millis();
        if since > self.last.load(Ordering::Acquire) {
            self.last.fetch_max(since, Ordering::AcqRel);
        }
    }

    /// A call the server works on until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.touch();
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Since when the connection has done nothing; `None` while the
    /// server works on a call.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.born + Duration::from_millis(self.last.load(Ordering::Acquire)))
    }

    /// The connection's budget of buffered request bytes.
    pub fn buffered(&self) -> &Budget {
        &self.buffered
    }

    /// Whether an answer may hand more bytes to HTTP/2 now; if not, the
    /// task is woken when some are written.
    pub fn may_send(&self, cx: &Context<'_>) -> bool {
        if self.unsent.load(Ordering::Acquire) < self.unsent_cap {
            return true;
        }
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cx.waker().clone());
        self.waiting.store(true, Ordering::Release);
        // Written meanwhile: the waker may never be called.
        self.unsent.load(Ordering::Acquire) < self.unsent_cap
    }

    /// An answer handed `n` bytes to HTTP/2.
    #[inline]
    pub fn handed(&self, n: usize) {
        self.unsent.fetch_add(n, Ordering::AcqRel);
        self.touch();
    }

    /// `n` bytes were written to the socket (answers, and HTTP/2's own
    /// frames, which only make the count err low).
    #[inline]
    pub fn written(&self, n: usize) {
        let _ = self
            .unsent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u > 0).then(|| u.saturating_sub(n))
            });
        let waiting =
            std::mem::take(&mut *self.waiters.lock().unwrap_or_else(PoisonError::into_inner));
        waiting.into_iter().for_each(Waker::wake);
    }

    /// Answer bytes not yet written.
    pub fn unsent(&self) -> usize {
        self.unsent.load(Ordering::Acquire)
    }
}

/// A call being worked on; ends (as activity) when dropped.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_idle_only_while_no_call_is_worked_on() {
        let a = Activity::new(0, 0);
        assert!(a.idle_since().is_some());
        let one = a.begin();
        let two = a.begin();
        assert!(a.idle_since().is_none());
        drop(one);
        assert!(a.idle_since().is_none(), "one call still worked on");
        drop(two);
        let since = a.idle_since().expect("idle once every call ended");
        assert!(since >= a.born());
    }

    #[tokio::test]
    async fn a_touch_moves_the_idle_time_on_by_the_coarse_clock() {
        let a = Activity::new(0, 0);
        std::thread::sleep(Duration::from_millis(50));
        a.touch();
        let since = a.idle_since().expect("no call is worked on");
        // Each coarse reading lags the precise clock by up to one kernel
        // tick (10 ms at the slowest timer, 100 Hz), so a span measured
        // on it is off by at most a tick either way: 15 ms of margin.
        let moved = since - a.born();
        assert!(moved >= Duration::from_millis(35), "moved {moved:?}");
        let tick = Duration::from_millis(10);
        assert!(since <= Instant::now() + tick, "at most a tick ahead");
    }

    #[test]
    fn answers_wait_past_the_cap_until_bytes_are_written() {
        let a = Activity::new(0, 100);
        let waker = futures_util::task::noop_waker();
        let cx = Context::from_waker(&waker);
        assert!(a.may_send(&cx));
        a.handed(150);
        assert!(!a.may_send(&cx));
        assert_eq!(a.waiters.lock().unwrap().len(), 1);
        a.written(60);
        assert_eq!(a.unsent(), 90);
        assert!(a.waiters.lock().unwrap().is_empty(), "woken");
        assert!(a.may_send(&cx));
        a.written(1_000);
        assert_eq!(a.unsent(), 0, "never below zero");
    }
}
