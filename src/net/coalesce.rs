//! Batching an HTTP/2 connection's socket writes: an answer's frames
//! leave in one write, and the answers of every call queued on the
//! connection's thread share one.
//!
//! **Frames copied, not chained** ([`Coalesce::vectored`]). A coalescing
//! connection reports that its socket cannot write vectored. h2 then
//! copies a DATA frame of less than 1 KiB into its write buffer instead
//! of chaining it from 256 B, and a chained frame is written before
//! anything can follow it: quotad's answers are 200–300 B, so one just
//! over 256 B went out as two writes (its HEADERS and DATA, then its
//! trailers with the next answer).
//!
//! **A write put off once** ([`Coalesce::hold`]). h2 writes a
//! connection's frames from the connection's task, which every answering
//! call wakes. Tokio runs a task woken by the running one next (its LIFO
//! slot), so without help the connection task runs after each call and
//! writes that call's answer alone: one `sendto`, one loopback delivery
//! and one wake-up of the peer per answer (BENCHMARKS.md, "Performance
//! (issue 24)").
//!
//! So the first write after each flush is put off once: the connection
//! task wakes itself and returns `Pending`, which sends it to the back of
//! its worker's run queue. The calls queued there answer first, and the
//! next poll writes all their frames at once. An idle server answers a
//! lone call after one extra pass through an empty run queue; a busy one
//! waits only for the work already queued.
//!
//! **Only while little waits.** Put off without a limit, every
//! connection of a server streaming at full speed filled its whole
//! allowance of unwritten answers (`server.max_unsent_bytes_per_connection`)
//! before its task wrote, all at once, and the process passed the
//! documented worst case memory. A write is put off only while fewer
//! than [`HOLD_UNDER`] bytes of answers wait on the connection: the
//! answers of unary calls, not a stream's backlog.

use std::task::Context;

/// Answer bytes waiting on a connection (handed to HTTP/2, not yet
/// written) under which its next write may be put off: about fifty
/// unary answers of 300 bytes.
pub const HOLD_UNDER: usize = 16 << 10;

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

    /// Whether to put this write off, `unsent` telling the answer bytes
    /// waiting on the connection (read only when it matters): true at
    /// most once per flush, and only under [`HOLD_UNDER`], having woken
    /// the task so it is polled again after the tasks queued before it.
    #[inline]
    pub fn hold(&mut self, cx: &Context<'_>, unsent: impl FnOnce() -> usize) -> bool {
        if !self.on || self.held || unsent() >= HOLD_UNDER {
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

    /// Whether the connection offers vectored writes, its socket
    /// offering them or not: never while coalescing.
    pub fn vectored(&self, socket: bool) -> bool {
        socket && !self.on
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

    /// A waker that counts its wakes.
    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    #[test]
    fn a_write_is_put_off_once_per_flush_and_wakes_its_task() {
        let (count, waker) = counting();
        let cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(true);
        assert!(c.hold(&cx, || 300), "the first write waits");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "and its task is woken");
        assert!(!c.hold(&cx, || 300), "the next goes out");
        assert!(!c.hold(&cx, || 0), "and so does the rest of the flush");
        c.flushed();
        assert!(
            c.hold(&cx, || 0),
            "after a flush, the first write waits again"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_backlog_is_written_at_once() {
        let (count, waker) = counting();
        let cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(true);
        assert!(
            !c.hold(&cx, || HOLD_UNDER),
            "a stream's backlog is not held"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "nor its task woken");
        assert!(c.hold(&cx, || HOLD_UNDER - 1), "under the mark it is");
    }

    #[test]
    fn off_lets_every_write_through() {
        let waker = futures_util::task::noop_waker();
        let cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(false);
        assert!(!c.hold(&cx, || 0));
        assert!(c.vectored(true), "vectored writes stay when off");
        assert!(!Coalesce::new(true).vectored(true), "and go when on");
    }
}
