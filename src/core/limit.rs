//! What a limit counts with, as the algorithms need it: a token bucket's
//! [`Rate`], a calendar [`Quota`], envoyproxy/ratelimit's [`FixedWindow`].
//! Types that cannot hold a bad limit: rates and bursts are non-zero and
//! their nanosecond arithmetic is known to fit in 64 bits. Plans and
//! tables of them are [`crate::limits`]'.

use std::num::NonZeroU64;

use super::clock::{NANOS_PER_SEC, Nanos};
use super::window::Window;

/// A token-bucket limit: `rate` tokens per `period`, holding at most `burst`.
///
/// Stored GCRA-style: each token "costs" `period / rate` nanoseconds of
/// theoretical arrival time and the bucket tolerates `burst` tokens' worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    rate: NonZeroU64,
    period: Nanos,
    burst: NonZeroU64,
    /// `emission(burst)`: how far ahead of now the theoretical arrival time
    /// may run. Cached because every check compares against it.
    tau: Nanos,
}

/// Why a rate could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// More than one token per nanosecond cannot be represented.
    #[error("rate {rate} per {period_ns} ns exceeds one token per nanosecond")]
    TooFast {
        /// tokens
        rate: u64,
        /// period in nanoseconds
        period_ns: u64,
    },
    /// burst × period / rate does not fit in 64-bit nanoseconds (~584 years).
    #[error("burst {burst} at rate {rate} spans more than 500 years")]
    TooLong {
        /// tokens
        rate: u64,
        /// tokens
        burst: u64,
    },
}

/// Largest span a bucket may cover: 500 years, well inside u64 nanoseconds
/// even when added to today's Unix time.
const MAX_SPAN: Nanos = 500 * 365 * 86_400 * NANOS_PER_SEC;

impl Rate {
    /// `rate` tokens per `period_ns` nanoseconds, bursting to `burst`.
    pub fn new(rate: NonZeroU64, period_ns: Nanos, burst: NonZeroU64) -> Result<Self, RateError> {
        if period_ns == 0 || rate.get() > period_ns {
            return Err(RateError::TooFast {
                rate: rate.get(),
                period_ns,
            });
        }
        let tau = u128::from(burst.get()) * u128::from(period_ns) / u128::from(rate.get());
        if tau > u128::from(MAX_SPAN) {
            return Err(RateError::TooLong {
                rate: rate.get(),
                burst: burst.get(),
            });
        }
        Ok(Self {
            rate,
            period: period_ns,
            burst,
            tau: tau as Nanos,
        })
    }

    /// Tokens added per period.
    pub fn rate(&self) -> u64 {
        self.rate.get()
    }
    /// The refill period in nanoseconds.
    pub fn period(&self) -> Nanos {
        self.period
    }
    /// Bucket capacity in tokens.
    pub fn burst(&self) -> u64 {
        self.burst.get()
    }
    /// Theoretical-arrival-time tolerance: `emission(burst)`.
    pub fn tau(&self) -> Nanos {
        self.tau
    }

    /// Nanoseconds of arrival time that `cost` tokens take:
    /// `⌊cost · period / rate⌋`, saturating. Rounding down at most 1 ns per
    /// check keeps `burst` single-token checks always within `tau`.
    #[inline]
    pub fn emission(&self, cost: u64) -> Nanos {
        let e = u128::from(cost) * u128::from(self.period) / u128::from(self.rate.get());
        u64::try_from(e).unwrap_or(u64::MAX)
    }

    /// How many whole tokens refill in `span` nanoseconds, rounded up
    /// (a debt of `span` is this many tokens): the least `c` with
    /// `emission(c) >= span`, saturating.
    #[inline]
    pub fn tokens_for(&self, span: Nanos) -> u64 {
        let c = (u128::from(span) * u128::from(self.rate.get())).div_ceil(u128::from(self.period));
        u64::try_from(c).unwrap_or(u64::MAX)
    }

    /// How many tokens fit in `slack` nanoseconds: the largest `c` with
    /// `emission(c) <= slack`, capped at `burst`.
    #[inline]
    pub fn tokens_in(&self, slack: Nanos) -> u64 {
        // emission(c) <= slack  <=>  c·period < (slack+1)·rate
        let n = (u128::from(slack) + 1) * u128::from(self.rate.get()) - 1;
        let c = n / u128::from(self.period);
        u64::try_from(c).unwrap_or(u64::MAX).min(self.burst.get())
    }
}

/// A fixed-window quota: at most `quota` units per calendar `window` (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Units allowed per window.
    pub quota: NonZeroU64,
    /// The calendar window.
    pub window: Window,
}

/// envoyproxy/ratelimit's counter: at most `limit` hits per window of
/// `period` aligned to the Unix epoch, every hit counted (see
/// [`super::counter`]). `limit` 0 is over for every hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedWindow {
    /// Hits allowed per window.
    pub limit: u64,
    /// The window length in nanoseconds (non-zero).
    pub period: Nanos,
}
