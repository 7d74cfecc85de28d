//! Checks a caller's values against the configured [`RequestCaps`] before
//! anything reaches the engine.

use super::error::RequestError;
use crate::config::RequestCaps;

/// An API key: non-empty and at most `max_key_bytes` bytes.
pub fn key(
    field: impl FnOnce() -> String,
    key: &str,
    caps: &RequestCaps,
) -> Result<(), RequestError> {
    if key.is_empty() {
        return Err(RequestError::Empty { field: field() });
    }
    if key.len() > caps.max_key_bytes {
        return Err(RequestError::TooLong {
            field: field(),
            len: key.len(),
            max: caps.max_key_bytes,
        });
    }
    Ok(())
}

/// A cost: at most `max_cost`.
pub fn cost(
    field: impl FnOnce() -> String,
    cost: u64,
    caps: &RequestCaps,
) -> Result<(), RequestError> {
    if cost > caps.max_cost {
        return Err(RequestError::CostTooHigh {
            field: field(),
            value: cost,
            max: caps.max_cost,
        });
    }
    Ok(())
}

/// A repeated field: at most `max` items.
pub fn count(field: impl FnOnce() -> String, count: usize, max: usize) -> Result<(), RequestError> {
    if count > max {
        return Err(RequestError::TooMany {
            field: field(),
            count,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_the_reason() {
        let caps = RequestCaps::default();
        let e = key(|| "checks[2].key".into(), "", &caps).unwrap_err();
        assert_eq!(e.to_string(), "checks[2].key: must not be empty");
        let long = "k".repeat(caps.max_key_bytes + 1);
        let e = key(|| "key".into(), &long, &caps).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "key: {} bytes exceeds the maximum of {} bytes",
                long.len(),
                caps.max_key_bytes
            )
        );
        let e = cost(|| "cost".into(), u64::MAX, &caps).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cost: 18446744073709551615 exceeds the maximum cost of ")
        );
        assert!(count(|| "checks".into(), 3, 2).is_err());
        assert!(count(|| "checks".into(), 2, 2).is_ok());
    }
}
