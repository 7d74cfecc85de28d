//! A budget of bytes shared by many holders: taken all or nothing, given
//! back when done. The process's budget of buffered request bytes is one;
//! each connection has its own too.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A byte budget. See the module docs.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    cap: usize,
}

impl Budget {
    /// A budget of `cap` bytes, none taken.
    pub fn new(cap: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            cap,
        }
    }

    /// Takes `n` bytes if they fit; false (and nothing taken) if not.
    #[inline]
    pub fn take(&self, n: usize) -> bool {
        n == 0
            || self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    u.checked_add(n).filter(|&t| t <= self.cap)
                })
                .is_ok()
    }

    /// Gives back `n` bytes taken earlier.
    #[inline]
    pub fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_all_or_nothing_and_gives_back() {
        let b = Budget::new(10);
        assert!(b.take(6));
        assert!(!b.take(5), "6 + 5 is over 10");
        assert_eq!(b.used(), 6);
        assert!(b.take(4));
        assert!(b.take(0));
        b.give(10);
        assert_eq!(b.used(), 0);
        assert!(!b.take(usize::MAX));
    }
}
