//! Fixed calendar-window quotas: a counter per (limit, key, window) that
//! starts at zero when the window starts and admits while
//! `used + cost ≤ quota`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::clock::Nanos;
use super::gcra::{Act, Verdict};
use super::limit::Quota;
use super::window::Span;

/// Decides a check of `cost` units against a window that has `used` units
/// spent. Returns the verdict and, when units are taken, the new count.
#[inline]
pub fn decide(
    quota: &Quota,
    used: u64,
    span: Span,
    now: Nanos,
    cost: u64,
) -> (Verdict, Option<u64>) {
    let q = quota.quota.get();
    let reset_after = span.end.saturating_sub(now);
    let left = q.saturating_sub(used);
    let denied = |retry_after| Verdict {
        allowed: false,
        remaining: left,
        reset_after,
        retry_after,
        excess: cost,
    };
    if cost > q {
        return (denied(None), None);
    }
    // A cost of 0 only reports the state: refused once reports took the
    // window past its quota.
    if cost > left || used > q {
        return (denied(Some(reset_after)), None);
    }
    let verdict = Verdict {
        allowed: true,
        remaining: left - cost,
        reset_after,
        retry_after: Some(0),
        excess: 0,
    };
    (verdict, (cost > 0).then_some(used + cost))
}

/// Applies [`decide`] to a shared counter; `commit == false` only evaluates.
#[inline]
pub fn check(
    quota: &Quota,
    used: &AtomicU64,
    span: Span,
    now: Nanos,
    cost: u64,
    commit: bool,
) -> Verdict {
    update(used, commit, |u| decide(quota, u, span, now, cost))
}

/// Adds `cost` units whatever the count (a report of what was really
/// spent), even past `limit`. Returns the state after ([`counted`]).
#[inline]
pub(crate) fn force(used: &AtomicU64, limit: u64, reset_after: Nanos, cost: u64) -> Verdict {
    let prev = match used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
        Some(u.saturating_add(cost))
    }) {
        Ok(u) | Err(u) => u,
    };
    counted(limit, prev.saturating_add(cost), reset_after)
}

/// A counter's standing once it holds `used` of `limit` after a report:
/// allowed (never refused), units left (0 when over), until the window
/// ends, until a check of one unit passes (`Some(0)`: now; else at the
/// window's end, or never for a limit of 0), and in `excess` the overrun.
#[inline]
pub(crate) fn counted(limit: u64, used: u64, reset_after: Nanos) -> Verdict {
    let retry_after = if used < limit {
        Some(0)
    } else {
        (limit > 0).then_some(reset_after)
    };
    Verdict {
        allowed: true,
        remaining: limit.saturating_sub(used),
        reset_after,
        retry_after,
        excess: used.saturating_sub(limit),
    }
}

/// [`check`] (a dry run or a commit) or [`force`], as `act` says.
#[inline]
pub fn apply(
    quota: &Quota,
    used: &AtomicU64,
    span: Span,
    now: Nanos,
    cost: u64,
    act: Act,
) -> Verdict {
    match act {
        Act::Dry => check(quota, used, span, now, cost, false),
        Act::Commit => check(quota, used, span, now, cost, true),
        Act::Force => force(used, quota.quota.get(), span.end.saturating_sub(now), cost),
    }
}

/// The compare-and-swap loop of every counter kind: `decide` maps the
/// count to a verdict and, when units are taken, the new count, which is
/// stored if `commit`. Retries with the fresh count if another check won.
#[inline]
pub(crate) fn update(
    used: &AtomicU64,
    commit: bool,
    decide: impl Fn(u64) -> (Verdict, Option<u64>),
) -> Verdict {
    let mut seen = used.load(Ordering::Acquire);
    loop {
        let (verdict, next) = decide(seen);
        let Some(next) = next.filter(|_| commit) else {
            return verdict;
        };
        match used.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return verdict,
            Err(actual) => seen = actual,
        }
    }
}

/// Gives back `cost` units taken by an earlier [`check`].
#[inline]
pub fn refund(used: &AtomicU64, cost: u64) {
    let _ = used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
        Some(u.saturating_sub(cost))
    });
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::core::clock::NANOS_PER_SEC;
    use crate::core::window::Window;

    fn q(n: u64, w: Window) -> Quota {
        Quota {
            quota: NonZeroU64::new(n).unwrap(),
            window: w,
        }
    }

    fn cell(_end: Nanos) -> AtomicU64 {
        AtomicU64::new(0)
    }

    #[test]
    fn counts_up_to_the_quota_then_denies_until_window_end() {
        let quota = q(3, Window::Day);
        let now = 1_764_201_600 * NANOS_PER_SEC + 3_600 * NANOS_PER_SEC; // 01:00 UTC
        let span = Window::Day.span(now);
        let c = cell(span.end);
        for left in (0..3).rev() {
            let v = check(&quota, &c, span, now, 1, true);
            assert!(v.allowed);
            assert_eq!(v.remaining, left);
        }
        let v = check(&quota, &c, span, now, 1, true);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Some(23 * 3_600 * NANOS_PER_SEC));
        assert_eq!(v.reset_after, 23 * 3_600 * NANOS_PER_SEC);
        assert_eq!(c.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn cost_above_quota_never_fits_and_takes_nothing() {
        let quota = q(10, Window::Hour);
        let span = Window::Hour.span(0);
        let c = cell(span.end);
        let v = check(&quota, &c, span, 0, 11, true);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, None);
        assert_eq!(v.remaining, 10);
        assert_eq!(c.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn partial_cost_is_all_or_nothing_and_refund_restores() {
        let quota = q(10, Window::Minute);
        let span = Window::Minute.span(0);
        let c = cell(span.end);
        assert!(check(&quota, &c, span, 0, 7, true).allowed);
        assert!(!check(&quota, &c, span, 0, 4, true).allowed);
        assert_eq!(c.load(Ordering::SeqCst), 7);
        refund(&c, 7);
        assert_eq!(check(&quota, &c, span, 0, 0, true).remaining, 10);
    }

    #[test]
    fn a_report_counts_past_the_quota_and_checks_wait_for_the_window() {
        let quota = q(10, Window::Minute);
        let span = Window::Minute.span(0);
        let c = cell(span.end);
        let v = apply(&quota, &c, span, 0, 14, Act::Force);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.excess), (0, 4));
        assert_eq!(v.retry_after, Some(span.end));
        // Over: even a peek of 0 is refused until the window ends.
        let v = check(&quota, &c, span, 0, 0, false);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Some(span.end));
        // Exactly at the quota a peek of 0 passes (nothing past it).
        let c = cell(span.end);
        apply(&quota, &c, span, 0, 10, Act::Force);
        assert!(check(&quota, &c, span, 0, 0, false).allowed);
        assert!(!check(&quota, &c, span, 0, 1, false).allowed);
    }

    #[test]
    fn u64_extremes() {
        let quota = q(u64::MAX, Window::Month);
        let span = Window::Month.span(u64::MAX / 2);
        let (v, next) = decide(&quota, u64::MAX - 1, span, u64::MAX / 2, 1);
        assert!(v.allowed);
        assert_eq!(next, Some(u64::MAX));
        let (v, _) = decide(&quota, u64::MAX, span, u64::MAX / 2, u64::MAX);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
    }
}
