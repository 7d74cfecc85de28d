//! The config's leaf values that several sections share, checked as they
//! are read (so a message names their line): socket addresses
//! (`127.0.0.1:8081`), durations (`500ms`, `10s`, `2m`, `1h`) and
//! non-empty strings; and how the summary writes a duration.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub(super) use crate::diag::parse_duration;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::diag::quoted;

/// Longest duration accepted for `shutdown_grace` and `sweep_interval`.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// A `host:port` socket address (an IP, not a host name).
#[derive(Clone, Copy)]
pub(super) struct Addr(pub(super) SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map(Addr).map_err(|_| {
            de::Error::custom(format!(
                "invalid address {} (expected ip:port such as 127.0.0.1:8081)",
                quoted(&s)
            ))
        })
    }
}

/// A duration written as an integer and a unit: `500ms`, `10s`, `2m`, `1h`;
/// more than zero and at most a day.
#[derive(Clone, Copy)]
pub(super) struct Dur(pub(super) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurVisitor)
    }
}

struct DurVisitor;

impl DurVisitor {
    fn bare_number<E: de::Error>(v: impl fmt::Display) -> E {
        E::custom(format!(
            "duration {v} has no unit (write for example {v}s; units: ms, s, m, h)"
        ))
    }
}

impl<'de> Visitor<'de> for DurVisitor {
    type Value = Dur;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 500ms, 10s or 2m")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
        let d = parse_duration(v).map_err(E::custom)?;
        if d.is_zero() {
            return Err(E::custom("duration must be more than 0"));
        }
        if d > MAX_DURATION {
            return Err(E::custom(format!(
                "duration must be at most 24h (got {})",
                v.trim()
            )));
        }
        Ok(Dur(d))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
        Err(Self::bare_number(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
        Err(Self::bare_number(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
        Err(Self::bare_number(v))
    }
}

/// `10s`, `2m`, `500ms`: the largest unit that divides the duration.
pub(super) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.is_zero() {
        "none".to_owned()
    } else if ms == 0 {
        format!("{}ns", d.as_nanos())
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// A string that is not empty or blank.
pub(super) struct NonEmpty(pub(super) String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        Ok(NonEmpty(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", 500),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("24h", 86_400_000),
            (" 3 s ", 3_000),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in [
            "",
            "s",
            "1.5s",
            "10 parsecs",
            "-1s",
            "10sec",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
