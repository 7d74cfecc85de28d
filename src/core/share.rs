//! Fair shares of one global rate among the Envoys that report a bucket
//! (Envoy RLQS): what a reporter's demand is, how a rate is divided, and
//! how a share is written as the token bucket Envoy enforces.
//!
//! The division, for a rate `R` among `N` reporters:
//!
//! - a reporter not measured yet (it has reported once) gets the equal
//!   share `R / N`;
//! - the rest, `R_m = R · measured / N`, goes to the measured reporters,
//!   whose demands (requests per second, allowed + denied, each counted at
//!   most [`MAX_DEMAND_RATES`] times the rate) sum to `D`: [`FLOOR`] of
//!   `R_m` is split equally among them, so an idle reporter keeps a
//!   trickle and its next burst of traffic is reported rather than
//!   starved; the rest by demand: while `D` fits in it each gets its
//!   demand plus an equal part of what is left over; beyond, each gets
//!   its proportion `d / D` of it.
//!
//! What reporters that left still hold (until their assignments expire)
//! is taken off `R` first.
//!
//! Every reporter computing its share from the same totals gets shares
//! that sum to exactly `R`; writing them as whole tokens per whole-second
//! interval rounds down, so what Envoys are given sums to at most `R`.

/// The part of a rate split equally among all reporters whatever their
/// demand.
pub const FLOOR: f64 = 0.05;

/// A measured demand counts as at most this many times the rate: more
/// asks for nothing more (and an Envoy reporting absurd counts cannot
/// take more than its proportion of that).
pub const MAX_DEMAND_RATES: f64 = 10.0;

/// The shortest interval over which a demand is measured: Envoy's
/// reports come every 5 s; a report sooner than a second after the last
/// is measured over a second.
pub const MIN_MEASURED_NANOS: u64 = 1_000_000_000;

/// The reporters of one global bucket, summed (over one node's streams,
/// or over every node's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// The sum of the measured demands, in requests per second.
    pub measured: f64,
    /// Reporters whose demand is measured.
    pub reporters: u32,
    /// Reporters not measured yet (they have not reported twice).
    pub fresh: u32,
    /// The rate (per second) reporters that left still hold: theirs until
    /// their assignments expire, and so not shared among the others.
    pub reserved: f64,
}

impl Demand {
    /// Every reporter, measured or not.
    pub fn count(&self) -> u32 {
        self.reporters.saturating_add(self.fresh)
    }

    /// Adds one reporter with demand `d` (`None`: not measured yet).
    pub fn add(&mut self, d: Option<f64>) {
        match d {
            Some(d) => {
                self.measured += d;
                self.reporters = self.reporters.saturating_add(1);
            }
            None => self.fresh = self.fresh.saturating_add(1),
        }
    }

    /// Both sums together.
    #[must_use]
    pub fn plus(self, other: Demand) -> Demand {
        Demand {
            measured: self.measured + other.measured,
            reporters: self.reporters.saturating_add(other.reporters),
            fresh: self.fresh.saturating_add(other.fresh),
            reserved: self.reserved + other.reserved,
        }
    }

    /// The total demand, counting each fresh reporter at the equal share
    /// of `rate`.
    pub fn total(&self, rate: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        self.measured + f64::from(self.fresh) * rate / f64::from(n)
    }
}

/// A demand in requests per second: `requests` over `elapsed`
/// nanoseconds (at least [`MIN_MEASURED_NANOS`]).
pub fn rate_of(requests: u64, elapsed: u64) -> f64 {
    requests as f64 * 1e9 / elapsed.max(MIN_MEASURED_NANOS) as f64
}

/// A measured demand as it counts against `rate`: at most
/// [`MAX_DEMAND_RATES`] times it.
pub fn capped(demand: f64, rate: f64) -> f64 {
    if demand.is_nan() {
        return 0.0;
    }
    demand.clamp(0.0, MAX_DEMAND_RATES * rate.max(0.0))
}

/// One reporter's share of `rate` (per second) when all reporters
/// together are `all` (the reporter included) and its own demand is `own`
/// (`None`: not measured yet). See the module docs. What `all` says is
/// reserved is taken off the rate first.
pub fn share(rate: f64, all: Demand, own: Option<f64>) -> f64 {
    let rate = (rate - all.reserved).max(0.0);
    let n = all.count();
    if n == 0 || rate.is_nan() || rate <= 0.0 {
        return rate.max(0.0);
    }
    let equal = rate / f64::from(n);
    let Some(own) = own else {
        return equal;
    };
    let measured = all.reporters.max(1);
    let pool = rate * f64::from(measured) / f64::from(n);
    let m = f64::from(measured);
    let own = own.max(0.0);
    let total = all.measured.max(own);
    let by_demand = (1.0 - FLOOR) * pool;
    let part = if total <= by_demand {
        own + (by_demand - total) / m
    } else {
        by_demand * own / total
    };
    (FLOOR * pool / m + part).clamp(0.0, rate)
}

/// A share as Envoy's token bucket: `tokens_per_fill` tokens every
/// `fill_interval_secs` (whole seconds, at least 1) and `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fill {
    /// The bucket's size (its share of the burst, at least 1).
    pub max_tokens: u32,
    /// Tokens added each interval (always set: Envoy reads unset as 0).
    pub tokens_per_fill: u32,
    /// The interval, whole seconds.
    pub fill_interval_secs: u32,
}

impl Fill {
    /// The rate it refills at, per second.
    pub fn rate(&self) -> f64 {
        f64::from(self.tokens_per_fill) / f64::from(self.fill_interval_secs.max(1))
    }

    /// Whether `other` differs from this by more than `tolerance` (a
    /// fraction) in rate or size: worth pushing.
    pub fn differs(&self, other: &Fill, tolerance: f64) -> bool {
        let apart = |a: f64, b: f64| (a - b).abs() > tolerance * a.max(b);
        apart(self.rate(), other.rate())
            || apart(f64::from(self.max_tokens), f64::from(other.max_tokens))
    }
}

/// Intervals tried, shortest first, for a precision of [`PRECISION`]
/// tokens per fill.
const INTERVALS: [u32; 6] = [1, 2, 5, 10, 30, 60];

/// Intervals tried for rates too small to fill one token a minute.
const LONG_INTERVALS: [u32; 4] = [300, 900, 1_800, 3_600];

/// Tokens per fill that make rounding down cost at most 1 %.
const PRECISION: f64 = 100.0;

/// `rate` tokens per second as whole tokens per whole-second interval,
/// rounded down (so shares never sum past the rate), the shortest interval
/// that keeps the rounding under 1 % (at most a minute; an hour for rates
/// under a token a minute); `burst` tokens at most, at least 1.
pub fn token_bucket(rate: f64, burst: f64) -> Fill {
    let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
    let interval = INTERVALS
        .iter()
        .copied()
        .find(|&f| rate * f64::from(f) >= PRECISION)
        .or_else(|| (rate * 60.0 >= 1.0).then_some(60))
        .or_else(|| {
            LONG_INTERVALS
                .iter()
                .copied()
                .find(|&f| rate * f64::from(f) >= 1.0)
        })
        .unwrap_or(3_600);
    let tokens = (rate * f64::from(interval)).floor();
    let burst = if burst.is_finite() { burst } else { 0.0 };
    Fill {
        max_tokens: clamp_u32(burst.floor()).max(1),
        tokens_per_fill: clamp_u32(tokens),
        fill_interval_secs: interval,
    }
}

fn clamp_u32(v: f64) -> u32 {
    if v >= f64::from(u32::MAX) {
        u32::MAX
    } else if v > 0.0 {
        v as u32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(demands: &[Option<f64>]) -> Demand {
        let mut d = Demand::default();
        for x in demands {
            d.add(*x);
        }
        d
    }

    #[test]
    fn shares_follow_demand_and_sum_to_the_rate() {
        // 6:3:1 at five times the limit of 100/s.
        let ds = [Some(300.0), Some(150.0), Some(50.0)];
        let a = all(&ds);
        let s: Vec<f64> = ds.iter().map(|d| share(100.0, a, *d)).collect();
        assert!(s[0] > s[1] && s[1] > s[2], "{s:?}");
        assert!((s.iter().sum::<f64>() - 100.0).abs() < 1e-9, "{s:?}");
        // Proportional, beyond the equal floor.
        assert!((s[0] - (5.0 / 3.0 + 95.0 * 0.6)).abs() < 1e-9);
    }

    #[test]
    fn newcomers_get_an_equal_share_and_idle_reporters_a_trickle() {
        let a = all(&[None, None, None, None]);
        assert!((share(100.0, a, None) - 25.0).abs() < 1e-9);
        // A newcomer beside a busy reporter: still the equal share.
        let a = all(&[Some(1_000.0), None]);
        assert!((share(100.0, a, None) - 50.0).abs() < 1e-9);
        assert!((share(100.0, a, Some(1_000.0)) - 50.0).abs() < 1e-9);
        // One busy, one idle: the idle one keeps the floor's part.
        let a = all(&[Some(500.0), Some(0.0)]);
        assert!((share(100.0, a, Some(0.0)) - 2.5).abs() < 1e-9);
        assert!((share(100.0, a, Some(500.0)) - 97.5).abs() < 1e-9);
        // Little demand: each gets its demand and an equal part of the rest.
        let a = all(&[Some(10.0), Some(20.0)]);
        let s1 = share(100.0, a, Some(10.0));
        let s2 = share(100.0, a, Some(20.0));
        assert!((s1 + s2 - 100.0).abs() < 1e-9 && s2 - s1 > 9.9);
        // Absurd counts ask for no more than ten times the rate.
        let huge = capped(f64::MAX, 100.0);
        assert_eq!(
            (huge, capped(f64::NAN, 1.0), capped(-1.0, 1.0)),
            (1_000.0, 0.0, 0.0)
        );
        let a = all(&[Some(huge), Some(100.0)]);
        let greedy = share(100.0, a, Some(huge));
        assert!(
            (greedy - (2.5 + 95.0 * 1_000.0 / 1_100.0)).abs() < 1e-6,
            "{greedy}"
        );
    }

    #[test]
    fn token_buckets_are_whole_and_round_down() {
        let f = token_bucket(58.7, 117.4);
        assert_eq!(
            (f.tokens_per_fill, f.fill_interval_secs, f.max_tokens),
            (117, 2, 117)
        );
        let f = token_bucket(1_000.0, 2_000.0);
        assert_eq!((f.tokens_per_fill, f.fill_interval_secs), (1_000, 1));
        // Three tenths of a token a second: over a minute.
        let f = token_bucket(0.3, 0.2);
        assert_eq!(
            (f.tokens_per_fill, f.fill_interval_secs, f.max_tokens),
            (18, 60, 1)
        );
        // A token an hour shared by three.
        let f = token_bucket(1.0 / 10_800.0, 0.0);
        assert_eq!((f.tokens_per_fill, f.fill_interval_secs), (0, 3_600));
        let f = token_bucket(f64::NAN, f64::INFINITY);
        assert_eq!((f.tokens_per_fill, f.max_tokens), (0, 1));
        assert!(token_bucket(10.0, 10.0).differs(&token_bucket(12.0, 12.0), 0.1));
        assert!(!token_bucket(10.0, 10.0).differs(&token_bucket(10.5, 10.0), 0.1));
    }

    proptest! {
        #[test]
        fn shares_never_sum_past_the_rate(
            rate in 0.001f64..1e7,
            demands in proptest::collection::vec(proptest::option::of(0.0f64..1e7), 1..40),
        ) {
            let a = all(&demands);
            let total: f64 = demands.iter().map(|d| share(rate, a, *d)).sum();
            prop_assert!(total <= rate * (1.0 + 1e-9), "{total} > {rate}");
            let filled: f64 = demands
                .iter()
                .map(|d| token_bucket(share(rate, a, *d), 0.0).rate())
                .sum();
            prop_assert!(filled <= rate * (1.0 + 1e-9), "{filled} > {rate}");
        }
    }
}
