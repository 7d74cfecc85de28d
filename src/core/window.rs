//! Calendar windows in UTC for quotas: which window an instant falls in, and
//! where that window starts and ends.
//!
//! Minute, hour and day windows are fixed lengths from the Unix epoch (UTC
//! has no leap seconds in Unix time). Weeks start on Monday 00:00 UTC (ISO
//! 8601). Months start on the 1st at 00:00 UTC; their lengths follow the
//! Gregorian calendar, computed with Howard Hinnant's `days_from_civil`
//! algorithms (public domain).

use super::clock::{NANOS_PER_SEC, Nanos};

const DAY: Nanos = 86_400 * NANOS_PER_SEC;

/// The unit of a calendar window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// 1 second.
    Second,
    /// 60 seconds, aligned to the minute.
    Minute,
    /// 3600 seconds, aligned to the hour.
    Hour,
    /// A UTC day.
    Day,
    /// Monday 00:00 UTC to the next Monday.
    Week,
    /// The 1st of a month 00:00 UTC to the 1st of the next.
    Month,
}

/// One concrete window: `[start, end)` in Unix-epoch nanoseconds, and an
/// index that is unique per window of the same unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Window number since the epoch (months since January 1970, weeks
    /// since the Monday before the epoch, ...).
    pub index: u64,
    /// First nanosecond of the window.
    pub start: Nanos,
    /// First nanosecond after the window.
    pub end: Nanos,
}

/// The shortest [`Span::slack`]: the clock skew between nodes that every
/// window tolerates.
pub const MIN_SLACK: Nanos = 2 * 1_000_000_000;

/// The longest [`Span::slack`].
pub const MAX_SLACK: Nanos = 60 * 1_000_000_000;

impl Span {
    /// How long a window's shared count (in Redis) outlives the window:
    /// its length, at least [`MIN_SLACK`] (2 s) and at most [`MAX_SLACK`]
    /// (1 min). A node whose clock lags by less still counts into the
    /// same count; past it, a lagging node's hits of the window start a
    /// count of their own. Short windows, which can hold many keys, so
    /// keep few dead ones: a per-second counter lives at most 3 s.
    pub fn slack(&self) -> Nanos {
        self.end
            .saturating_sub(self.start)
            .clamp(MIN_SLACK, MAX_SLACK)
    }

    /// [`Span::slack`] in milliseconds.
    pub fn slack_ms(&self) -> u32 {
        u32::try_from(self.slack() / 1_000_000).unwrap_or(u32::MAX)
    }
}

impl Window {
    /// The window containing `now`.
    pub fn span(self, now: Nanos) -> Span {
        match self {
            Window::Second => fixed(now, NANOS_PER_SEC, 0),
            Window::Minute => fixed(now, 60 * NANOS_PER_SEC, 0),
            Window::Hour => fixed(now, 3_600 * NANOS_PER_SEC, 0),
            Window::Day => fixed(now, DAY, 0),
            // 1970-01-01 was a Thursday; the Monday before it is 3 days
            // earlier, so shift by 3 days before dividing.
            Window::Week => fixed(now, 7 * DAY, 3 * DAY),
            Window::Month => month(now),
        }
    }

    /// Nominal length in seconds (a 30-day month), for display and headers.
    pub fn nominal_seconds(self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
            Window::Week => 7 * 86_400,
            Window::Month => 30 * 86_400,
        }
    }

    /// The lowercase name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
        }
    }
}

/// The window of length `len` (non-zero) containing `now`, windows being
/// aligned to the Unix epoch: envoyproxy/ratelimit's "divider" windows.
pub fn epoch_span(now: Nanos, len: Nanos) -> Span {
    fixed(now, len.max(1), 0)
}

fn fixed(now: Nanos, len: Nanos, shift: Nanos) -> Span {
    let shifted = now.saturating_add(shift);
    let index = shifted / len;
    let start = (index * len).saturating_sub(shift);
    Span {
        index,
        start,
        end: start.saturating_add(len),
    }
}

fn month(now: Nanos) -> Span {
    let days = (now / DAY) as i64;
    let (y, m, _) = civil_from_days(days);
    let index = ((y - 1970) * 12 + (m as i64 - 1)) as u64;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let start = days_from_civil(y, m, 1) as u64 * DAY;
    let end = days_from_civil(ny, nm, 1) as u64 * DAY;
    Span { index, start, end }
}

/// Days since 1970-01-01 of the given proleptic Gregorian date.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a count of days since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(y: i64, m: u32, d: u32, secs: u64) -> Nanos {
        days_from_civil(y, m, d) as u64 * DAY + secs * NANOS_PER_SEC
    }

    #[test]
    fn civil_round_trips_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 27), 20_784);
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn day_window_boundaries() {
        let s = Window::Day.span(at(2026, 11, 27, 86_399));
        assert_eq!(s.start, at(2026, 11, 27, 0));
        assert_eq!(s.end, at(2026, 11, 28, 0));
        let next = Window::Day.span(s.end);
        assert_eq!(next.index, s.index + 1);
        assert_eq!(next.start, s.end);
    }

    #[test]
    fn week_starts_on_monday() {
        // 2026-11-23 is a Monday; 2026-11-29 a Sunday.
        let s = Window::Week.span(at(2026, 11, 29, 86_399));
        assert_eq!(s.start, at(2026, 11, 23, 0));
        assert_eq!(s.end, at(2026, 11, 30, 0));
        assert_eq!(Window::Week.span(at(2026, 11, 30, 0)).start, s.end);
    }

    #[test]
    fn month_lengths_follow_the_calendar() {
        let feb_leap = Window::Month.span(at(2024, 2, 29, 3_600));
        assert_eq!(feb_leap.start, at(2024, 2, 1, 0));
        assert_eq!(feb_leap.end, at(2024, 3, 1, 0));
        let feb = Window::Month.span(at(2026, 2, 10, 0));
        assert_eq!(feb.end - feb.start, 28 * DAY);
        let dec = Window::Month.span(at(2026, 12, 31, 86_399));
        assert_eq!(dec.end, at(2027, 1, 1, 0));
        assert_eq!(Window::Month.span(dec.end).index, dec.index + 1);
        assert_eq!(Window::Month.span(0).index, 0);
    }

    #[test]
    fn last_nanosecond_belongs_to_the_old_window() {
        for w in [
            Window::Second,
            Window::Minute,
            Window::Hour,
            Window::Day,
            Window::Week,
            Window::Month,
        ] {
            let s = w.span(at(2026, 11, 27, 12_345));
            assert_eq!(w.span(s.end - 1), s, "{w:?}");
            assert_eq!(w.span(s.end).index, s.index + 1, "{w:?}");
        }
    }

    proptest! {
        #[test]
        fn span_contains_now(now in 0u64..4_102_444_800 * NANOS_PER_SEC, w in 0usize..6) {
            let w = [Window::Second, Window::Minute, Window::Hour, Window::Day, Window::Week, Window::Month][w];
            let s = w.span(now);
            prop_assert!(s.start <= now && now < s.end);
        }

        #[test]
        fn civil_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn slack_is_the_window_length_between_two_seconds_and_a_minute() {
        const S: Nanos = 1_000_000_000;
        let span = |len: Nanos| Span {
            index: 0,
            start: 10 * S,
            end: 10 * S + len,
        };
        assert_eq!(span(S).slack(), 2 * S);
        assert_eq!(span(S).slack_ms(), 2_000);
        assert_eq!(span(10 * S).slack(), 10 * S);
        assert_eq!(span(60 * S).slack(), 60 * S);
        assert_eq!(span(86_400 * S).slack(), 60 * S);
    }
}
