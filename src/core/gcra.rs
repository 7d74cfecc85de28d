//! The token bucket, kept GCRA-style: one theoretical arrival time (TAT)
//! per bucket in an `AtomicU64`, updated by compare-and-swap.
//!
//! A bucket with TAT ≤ now is full. Spending `c` tokens moves the TAT to
//! `max(TAT, now) + emission(c)`; that is allowed while the TAT stays within
//! `tau = emission(burst)` of now. All arithmetic is integer nanoseconds.
//!
//! Guarantees (checked by the proptests below): over any schedule of checks
//! within `[t0, t1]` starting from any state, the tokens admitted are at most
//! `burst + rate · (t1 − t0 + n) / period`, where `n` is the number of
//! admitted checks (each may gain at most 1 ns of rounding), and a full
//! bucket always admits `burst` tokens at once.

use std::sync::atomic::{AtomicU64, Ordering};

use super::clock::Nanos;
use super::limit::Rate;

/// What a check does to a limit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Evaluates only: the answer a charge would get, nothing changed.
    Dry,
    /// Spends the cost if the limit has room (a fixed window counts
    /// refused hits too, as envoyproxy/ratelimit does).
    Commit,
    /// Spends the cost whatever the limit holds: a report of what was
    /// really spent. A bucket may go into debt, a quota past its amount.
    Force,
}

/// The answer of one limit to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the tokens were (or would be) taken.
    pub allowed: bool,
    /// Tokens left after this check.
    pub remaining: u64,
    /// Time until the limit is back to full capacity.
    pub reset_after: Nanos,
    /// Time until the cost would fit: `Some(0)` when allowed, `None` when it
    /// never fits (cost above capacity).
    pub retry_after: Option<Nanos>,
    /// Of a refused check's cost, the units beyond the limit: all of them
    /// for a bucket or quota (a refusal takes nothing); for a fixed window,
    /// which counts refused hits too, those past the limit (a check that
    /// crosses it has the rest within). 0 when allowed.
    pub excess: u64,
}

/// Decides a check of `cost` tokens against a bucket whose TAT is `tat`.
/// Returns the verdict and, when tokens are taken, the new TAT. A `cost`
/// of 0 only reports the state (refused while the bucket is in debt).
#[inline]
pub fn decide(rate: &Rate, tat: Nanos, now: Nanos, cost: u64) -> (Verdict, Option<Nanos>) {
    let tau = rate.tau();
    // How far the bucket is drained, as time to refill.
    let used = tat.saturating_sub(now);
    let left = tau.saturating_sub(used);
    if cost == 0 {
        // Only reports the state: refused only while in debt (a report
        // drove the bucket past empty), until it has refilled to zero.
        let debt = used.saturating_sub(tau);
        return (
            Verdict {
                allowed: debt == 0,
                remaining: rate.tokens_in(left),
                reset_after: used,
                retry_after: Some(debt),
                excess: 0,
            },
            None,
        );
    }
    let inc = rate.emission(cost);
    if inc > tau {
        return (
            Verdict {
                allowed: false,
                remaining: rate.tokens_in(left),
                reset_after: used,
                retry_after: None,
                excess: cost,
            },
            None,
        );
    }
    let after = used.saturating_add(inc);
    if after <= tau {
        (
            Verdict {
                allowed: true,
                remaining: rate.tokens_in(tau - after),
                reset_after: after,
                retry_after: Some(0),
                excess: 0,
            },
            Some(now.saturating_add(after)),
        )
    } else {
        (
            Verdict {
                allowed: false,
                remaining: rate.tokens_in(left),
                reset_after: used,
                retry_after: Some(after - tau),
                excess: cost,
            },
            None,
        )
    }
}

/// Applies [`decide`] to a shared bucket with a compare-and-swap loop.
/// With `commit == false` it only evaluates (a dry run).
#[inline]
pub fn check(rate: &Rate, cell: &AtomicU64, now: Nanos, cost: u64, commit: bool) -> Verdict {
    let mut tat = cell.load(Ordering::Acquire);
    loop {
        let (verdict, next) = decide(rate, tat, now, cost);
        let Some(next) = next.filter(|_| commit) else {
            return verdict;
        };
        match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return verdict,
            Err(actual) => tat = actual,
        }
    }
}

/// Charges `cost` tokens whatever the bucket holds (a report of what was
/// really spent): the TAT moves to `max(TAT, now) + emission(cost)`, past
/// `tau` if need be, which is debt: every check is then denied until the
/// bucket has refilled past zero. Returns the state after ([`after`]).
#[inline]
pub fn force(rate: &Rate, cell: &AtomicU64, now: Nanos, cost: u64) -> Verdict {
    let step = |tat: Nanos| forced(rate, tat, now, cost);
    let prev = match cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(step(t))) {
        Ok(t) | Err(t) => t,
    };
    after(rate, step(prev), now)
}

/// The TAT after [`force`] charged `cost` tokens to a bucket at `tat`:
/// `max(tat, now) + emission(cost)`, saturating.
#[inline]
pub fn forced(rate: &Rate, tat: Nanos, now: Nanos, cost: u64) -> Nanos {
    tat.max(now).saturating_add(rate.emission(cost))
}

/// A bucket's standing after a report left its TAT at `tat`: allowed (a
/// report is never refused), the tokens left (0 in debt), until full, until
/// a check of one token passes (`Some(0)`: now), and in `excess` the debt
/// in whole tokens, rounded up.
#[inline]
pub fn after(rate: &Rate, tat: Nanos, now: Nanos) -> Verdict {
    let (one, _) = decide(rate, tat, now, 1);
    let used = tat.saturating_sub(now);
    let over = used.saturating_sub(rate.tau());
    Verdict {
        allowed: true,
        remaining: rate.tokens_in(rate.tau().saturating_sub(used)),
        reset_after: used,
        retry_after: one.retry_after,
        excess: rate.tokens_for(over),
    }
}

/// [`check`] (a dry run or a commit) or [`force`], as `act` says.
#[inline]
pub fn apply(rate: &Rate, cell: &AtomicU64, now: Nanos, cost: u64, act: Act) -> Verdict {
    match act {
        Act::Dry => check(rate, cell, now, cost, false),
        Act::Commit => check(rate, cell, now, cost, true),
        Act::Force => force(rate, cell, now, cost),
    }
}

/// Gives back `cost` tokens taken by an earlier [`check`] whose check as a
/// whole was then denied by another limit.
#[inline]
pub fn refund(rate: &Rate, cell: &AtomicU64, cost: u64) {
    let inc = rate.emission(cost);
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
        Some(tat.saturating_sub(inc))
    });
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use proptest::prelude::*;

    use super::*;
    use crate::core::clock::NANOS_PER_SEC;

    const T0: Nanos = 1_700_000_000 * NANOS_PER_SEC;

    fn rate(r: u64, per: Nanos, b: u64) -> Rate {
        Rate::new(
            NonZeroU64::new(r).unwrap(),
            per,
            NonZeroU64::new(b).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn full_bucket_admits_burst_then_denies() {
        let r = rate(10, NANOS_PER_SEC, 20);
        let cell = AtomicU64::new(0);
        for i in 0..20 {
            let v = check(&r, &cell, T0, 1, true);
            assert!(v.allowed, "token {i}");
            assert_eq!(v.remaining, 19 - i);
        }
        let v = check(&r, &cell, T0, 1, true);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        // One token refills every 100 ms.
        assert_eq!(v.retry_after, Some(100_000_000));
        assert_eq!(v.reset_after, 2 * NANOS_PER_SEC);
    }

    #[test]
    fn refill_is_exact() {
        let r = rate(10, NANOS_PER_SEC, 20);
        let cell = AtomicU64::new(0);
        assert!(check(&r, &cell, T0, 20, true).allowed);
        assert!(!check(&r, &cell, T0 + 99_999_999, 1, true).allowed);
        let v = check(&r, &cell, T0 + 100_000_000, 1, true);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        // After 2 s the bucket is full again.
        let v = check(&r, &cell, T0 + 2_100_000_000, 0, true);
        assert_eq!(v.remaining, 20);
        assert_eq!(v.reset_after, 0);
    }

    #[test]
    fn cost_above_remaining_is_denied_and_takes_nothing() {
        let r = rate(10, NANOS_PER_SEC, 20);
        let cell = AtomicU64::new(0);
        assert!(check(&r, &cell, T0, 15, true).allowed);
        let before = cell.load(Ordering::SeqCst);
        let v = check(&r, &cell, T0, 6, true);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 5);
        // 1 token short: 100 ms.
        assert_eq!(v.retry_after, Some(100_000_000));
        assert_eq!(cell.load(Ordering::SeqCst), before);
        // ... and exactly then it passes.
        assert!(check(&r, &cell, T0 + 100_000_000, 6, true).allowed);
    }

    #[test]
    fn cost_above_burst_never_fits() {
        let r = rate(10, NANOS_PER_SEC, 20);
        let cell = AtomicU64::new(0);
        let v = check(&r, &cell, T0, 21, true);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, None);
        assert_eq!(v.remaining, 20);
        assert_eq!(cell.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn non_dividing_rate_still_admits_full_burst() {
        let r = rate(3, NANOS_PER_SEC, 3);
        let cell = AtomicU64::new(0);
        for _ in 0..3 {
            assert!(check(&r, &cell, T0, 1, true).allowed);
        }
        assert!(!check(&r, &cell, T0, 1, true).allowed);
    }

    #[test]
    fn dry_run_and_peek_take_nothing() {
        let r = rate(10, NANOS_PER_SEC, 20);
        let cell = AtomicU64::new(0);
        assert!(check(&r, &cell, T0, 5, false).allowed);
        assert_eq!(check(&r, &cell, T0, 0, true).remaining, 20);
        assert_eq!(cell.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn refund_restores_tokens() {
        let r = rate(10, NANOS_PER_SEC, 20);
        let cell = AtomicU64::new(0);
        assert!(check(&r, &cell, T0, 20, true).allowed);
        refund(&r, &cell, 20);
        assert_eq!(check(&r, &cell, T0, 0, true).remaining, 20);
    }

    #[test]
    fn a_report_goes_into_debt_and_checks_wait_until_it_is_repaid() {
        let r = rate(10, NANOS_PER_SEC, 20);
        let cell = AtomicU64::new(0);
        // 25 tokens from a bucket of 20: 5 in debt.
        let v = force(&r, &cell, T0, 25);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.excess), (0, 5));
        assert_eq!(v.reset_after, 2_500_000_000);
        // One token needs the debt repaid and one more: 600 ms.
        assert_eq!(v.retry_after, Some(600_000_000));
        assert!(
            !check(&r, &cell, T0, 0, false).allowed,
            "in debt, even a peek of 0"
        );
        assert_eq!(
            check(&r, &cell, T0, 0, false).retry_after,
            Some(500_000_000)
        );
        assert!(!check(&r, &cell, T0 + 599_999_999, 1, true).allowed);
        assert!(check(&r, &cell, T0 + 600_000_000, 1, true).allowed);
        // A report on a bucket with room is a plain charge.
        let cell = AtomicU64::new(0);
        let v = force(&r, &cell, T0, 3);
        assert_eq!((v.remaining, v.excess, v.retry_after), (17, 0, Some(0)));
        // Saturates at the end of time rather than wrapping.
        let v = force(&r, &cell, u64::MAX - 1, u64::MAX);
        assert_eq!(cell.load(Ordering::SeqCst), u64::MAX);
        assert!(v.allowed);
    }

    #[test]
    fn u64_extremes_do_not_overflow() {
        let r = rate(1_000_000_000, NANOS_PER_SEC, 1_000_000_000);
        let (v, _) = decide(&r, u64::MAX, u64::MAX, u64::MAX);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, None);
        let (v, next) = decide(&r, 0, u64::MAX, 1);
        assert!(v.allowed);
        assert_eq!(next, Some(u64::MAX));
        let (v, _) = decide(&r, u64::MAX, 0, 1);
        assert!(!v.allowed);
        let r = rate(1, 86_400 * NANOS_PER_SEC, 1);
        let (v, _) = decide(&r, 0, T0, u64::MAX);
        assert_eq!(v.retry_after, None);
    }

    proptest! {
        /// Over any schedule, admitted ≤ burst + rate·(elapsed + n)/period.
        #[test]
        fn admitted_never_exceeds_burst_plus_rate(
            r in 1u64..1_000,
            per_ms in 1u64..10_000,
            b in 1u64..200,
            steps in prop::collection::vec((0u64..50_000_000, 0u64..20), 1..300),
        ) {
            let per = per_ms * 1_000_000;
            prop_assume!(r <= per);
            let rt = rate(r, per, b);
            let cell = AtomicU64::new(0);
            let mut now = T0;
            let mut admitted: u128 = 0;
            let mut n: u128 = 0;
            for (dt, cost) in steps {
                now += dt;
                let v = check(&rt, &cell, now, cost, true);
                if v.allowed && cost > 0 {
                    admitted += u128::from(cost);
                    n += 1;
                }
                let elapsed = u128::from(now - T0);
                let bound = u128::from(b) * u128::from(per)
                    + u128::from(r) * (elapsed + n);
                // admitted · per ≤ burst · per + rate · (elapsed + n)
                prop_assert!(admitted * u128::from(per) <= bound,
                    "admitted {} by {} ns (n = {})", admitted, elapsed, n);
            }
        }

        /// A denial's retry_after is exact: one ns earlier still fails,
        /// at retry_after it passes.
        #[test]
        fn retry_after_is_exact(
            r in 1u64..1_000,
            b in 1u64..100,
            drain in 0u64..100,
            cost in 1u64..100,
        ) {
            let rt = rate(r, NANOS_PER_SEC, b);
            let cell = AtomicU64::new(0);
            check(&rt, &cell, T0, drain.min(b), true);
            let v = check(&rt, &cell, T0, cost, false);
            match v.retry_after {
                None => prop_assert!(cost > b),
                Some(0) => prop_assert!(v.allowed),
                Some(wait) => {
                    prop_assert!(!check(&rt, &cell, T0 + wait - 1, cost, false).allowed);
                    prop_assert!(check(&rt, &cell, T0 + wait, cost, false).allowed);
                }
            }
        }

        /// A full bucket admits `burst` single tokens at one instant.
        #[test]
        fn full_bucket_admits_burst(r in 1u64..1_000_000, per_s in 1u64..3_600, b in 1u64..500) {
            let rt = rate(r, per_s * NANOS_PER_SEC, b);
            let cell = AtomicU64::new(0);
            for _ in 0..b {
                prop_assert!(check(&rt, &cell, T0, 1, true).allowed);
            }
            prop_assert!(!check(&rt, &cell, T0, 1, true).allowed);
        }
    }
}
