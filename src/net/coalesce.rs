//! Putting an HTTP/2 connection's writes off until the calls already
//! queued on its thread have answered, so one socket write carries many
//! answers.
//!
//! h2 writes a connection's frames from the connection's task, which
//! every answering call wakes. Tokio runs a task woken by the running
//! one next (its LIFO slot), so without help the connection task runs
//! after each call and writes that call's answer on its own: one `write`
//! syscall, one loopback delivery and one wake-up of the peer per answer
//! (BENCHMARKS.md, "Performance (issue 24)").
//!
//! [`Coalesce::hold`] puts the first write after each flush off once:
//! the connection task wakes itself and returns `Pending`, which sends it
//! to the back of its worker's run queue. The calls queued there answer
//! first, and the next poll writes all their frames at once. A write is
//! put off at most once per flush, so an idle server answers a lone call
//! after one extra pass through an empty run queue, and a busy one never
//! waits for more than the work already queued.
//!
//! The same connection reports writes as not vectored
//! ([`Coalesce::vectored`]): h2 copies a DATA frame of less than 1 KiB
//! into its write buffer instead of chaining it from 256 B, and a chained
//! frame is written before anything can follow it. quotad's answers are
//! 200–300 B, so vectored writes made one write per answer whatever
//! waited.

use std::task::Context;

/// One connection's write coalescing state.
#[derive(Debug, Clone, Copy)]
pub struct Coalesce {
    on: bool,
    /// A write was put off since the last flush.
    held: bool,
}

impl Coalesce {
    /// Coalescing when `on` (HTTP/2), else writes go straight through.
    pub fn new(on: bool) -> Self {
        Self { on, held: false }
    }

    /// Whether to put this write off: true once per flush when on, having
    /// woken the task so it is polled again after the tasks queued
    /// before it.
    #[inline]
    pub fn hold(&mut self, cx: &Context<'_>) -> bool {
        if !self.on || self.held {
            return false;
        }
        self.held = true;
        cx.waker().wake_by_ref();
        true
    }

    /// The writer flushed: its next write may be put off again.
    #[inline]
    pub fn flushed(&mut self) {
        self.held = false;
    }

    /// Whether the connection may offer vectored writes, given whether
    /// its socket supports them.
    pub fn vectored(&self, io_vectored: bool) -> bool {
        io_vectored && !self.on
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_write_is_put_off_once_per_flush_and_wakes_its_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(true);
        assert!(c.hold(&cx), "the first write waits");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "and its task is woken");
        assert!(!c.hold(&cx), "the next goes out");
        assert!(!c.hold(&cx), "and so does the rest of the flush");
        c.flushed();
        assert!(c.hold(&cx), "after a flush, the first write waits again");
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(!c.vectored(true), "coalescing writes are not vectored");
    }

    #[test]
    fn off_lets_every_write_through() {
        let waker = futures_util::task::noop_waker();
        let cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(false);
        assert!(!c.hold(&cx));
        assert!(c.vectored(true));
        assert!(!c.vectored(false));
    }
}
