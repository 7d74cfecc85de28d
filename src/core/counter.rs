//! envoyproxy/ratelimit's fixed-window counter: at most `limit` hits per
//! window of `period` aligned to the Unix epoch (the window of `now` starts
//! at `⌊now / period⌋ · period`).
//!
//! Unlike a [`super::quota`], every hit is counted, over the limit or not,
//! as envoyproxy/ratelimit's `INCRBY` does: once a window is over its limit
//! it stays over until the window ends, and `remaining` reports 0. Limit 0
//! is over for every hit (a blocklist); a peek (`hits_addend: 0`) of such a
//! window is over only once a hit was counted in it, as in envoyproxy.

use super::clock::Nanos;
use super::gcra::{Act, Verdict};
use super::limit::FixedWindow;
use super::quota;
use super::window::Span;

/// Decides `cost` hits against a window that has counted `used`. Returns
/// the verdict and the new count (`None` when `cost` is 0: nothing to add).
#[inline]
pub fn decide(
    window: &FixedWindow,
    used: u64,
    span: Span,
    now: Nanos,
    cost: u64,
) -> (Verdict, Option<u64>) {
    let after = used.saturating_add(cost);
    let reset_after = span.end.saturating_sub(now);
    let next = (cost > 0).then_some(after);
    // Over once the hits pass the limit, as envoyproxy's
    // `limitAfterIncrease > requests_per_unit`: limit 0 is over for any
    // hit, and a peek of a window with none counted is not.
    if after > window.limit {
        // Waiting helps only if the hits fit in an empty window.
        let retry_after = (cost <= window.limit && window.limit > 0).then_some(reset_after);
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            reset_after,
            retry_after,
            excess: (after - window.limit).min(cost),
        };
        return (verdict, next);
    }
    let verdict = Verdict {
        allowed: true,
        remaining: window.limit - after,
        reset_after,
        retry_after: Some(0),
        excess: 0,
    };
    (verdict, next)
}

/// Applies [`decide`] to a shared counter; `commit == false` only
/// evaluates. A committed check adds its hits whether or not it is over.
#[inline]
pub fn check(
    window: &FixedWindow,
    used: &std::sync::atomic::AtomicU64,
    span: Span,
    now: Nanos,
    cost: u64,
    commit: bool,
) -> Verdict {
    quota::update(used, commit, |u| decide(window, u, span, now, cost))
}

/// [`check`] (a dry run or a commit, which counts refused hits too) or,
/// for a report, the hits added and the window's standing after them
/// ([`quota::counted`]).
#[inline]
pub fn apply(
    window: &FixedWindow,
    used: &std::sync::atomic::AtomicU64,
    span: Span,
    now: Nanos,
    cost: u64,
    act: Act,
) -> Verdict {
    match act {
        Act::Dry => check(window, used, span, now, cost, false),
        Act::Commit => check(window, used, span, now, cost, true),
        Act::Force => quota::force(used, window.limit, span.end.saturating_sub(now), cost),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::core::clock::NANOS_PER_SEC;
    use crate::core::window::epoch_span;

    const MINUTE: Nanos = 60 * NANOS_PER_SEC;

    fn setup(limit: u64, now: Nanos) -> (FixedWindow, Span, AtomicU64) {
        let w = FixedWindow {
            limit,
            period: MINUTE,
        };
        let span = epoch_span(now, MINUTE);
        let cell = AtomicU64::new(0);
        (w, span, cell)
    }

    #[test]
    fn counts_every_hit_like_incrby() {
        let now = 1_795_780_810 * NANOS_PER_SEC; // 10 s into a minute
        let (w, span, c) = setup(10, now);
        let v = check(&w, &c, span, now, 6, true);
        assert!(v.allowed);
        assert_eq!(v.remaining, 4);
        // 12 > 10: over, and counted, so a later single hit is over too.
        let v = check(&w, &c, span, now, 6, true);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_after, Some(50 * NANOS_PER_SEC));
        assert!(!check(&w, &c, span, now, 1, true).allowed);
        assert_eq!(c.load(Ordering::SeqCst), 13);
        // A peek (0 hits) reports without counting.
        let v = check(&w, &c, span, now, 0, true);
        assert!(!v.allowed);
        assert_eq!(c.load(Ordering::SeqCst), 13);
    }

    #[test]
    fn the_last_unit_is_allowed_and_a_peek_at_the_limit_is_ok() {
        let (w, span, c) = setup(2, 0);
        assert_eq!(check(&w, &c, span, 0, 2, true).remaining, 0);
        assert!(check(&w, &c, span, 0, 0, true).allowed);
        assert!(!check(&w, &c, span, 0, 1, true).allowed);
    }

    #[test]
    fn zero_limit_is_over_for_every_hit_and_never_retryable() {
        let (w, span, c) = setup(0, 0);
        // A peek of a window with nothing counted is within 0, as
        // envoyproxy's `0 > 0` is false.
        let v = check(&w, &c, span, 0, 0, true);
        assert!(v.allowed && v.remaining == 0);
        let v = check(&w, &c, span, 0, 1, true);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, None);
        // The hit was counted: from now on a peek is over too.
        assert!(!check(&w, &c, span, 0, 0, true).allowed);
    }

    #[test]
    fn saturates_at_u64_max() {
        let (w, span, _) = setup(u64::MAX - 1, 0);
        let (v, next) = decide(&w, u64::MAX - 1, span, 0, 5);
        assert!(!v.allowed);
        assert_eq!(next, Some(u64::MAX));
    }
}
