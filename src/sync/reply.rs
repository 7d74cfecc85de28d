//! The exact shapes of the replies quotad's scripts and commands get from
//! Redis, and what a reply of any other shape becomes: a [`Malformed`]
//! error, which callers treat as a Redis failure (the strict fail mode
//! answers, a flush keeps its deltas, overrides keep the state last read),
//! never as an answer. redis-rs's own conversions are lenient (a nil or a
//! string becomes a list, a negative integer a huge unsigned one), which
//! made an empty reply read as "denied"; nothing here converts.
//!
//! Errors Redis returns in place of a reply are not handled here: they
//! arrive as errors already. An error nested inside a reply is malformed.
//!
//! Bad replies come in floods (every check of a batch, every cell of a
//! flush), so [`Throttle`] logs them at most once per [`LOG_EVERY`], with
//! how many it did not log.

use std::time::Duration;

use redis::Value;

use crate::engine::leases::{LeaseAnswer, LeaseOp, LeaseReply};

/// A reply of another shape than the one expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply from Redis to {to}: expected {expected}, got {got}")]
pub struct Malformed {
    /// What was asked (`the strict script`, ...).
    pub to: &'static str,
    /// The shape expected.
    pub expected: &'static str,
    /// A short description of what came (at most [`SHOWN`] characters).
    pub got: String,
}

/// How much of an unexpected reply an error shows.
const SHOWN: usize = 120;

impl Malformed {
    fn new(to: &'static str, expected: &'static str, got: &Value) -> Self {
        let mut shown = format!("{got:?}");
        if shown.len() > SHOWN {
            shown.truncate(crate::diag::head(&shown, SHOWN).len());
            shown.push('…');
        }
        Self {
            to,
            expected,
            got: shown,
        }
    }
}

impl From<Malformed> for redis::RedisError {
    fn from(m: Malformed) -> Self {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "malformed reply",
            m.to_string(),
        ))
    }
}

/// An integer of at least 0.
fn count(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// A bulk string of UTF-8.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// A flat list of field and value strings (`HGETALL` inside a script).
fn flat_pairs(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(items) if items.len() % 2 == 0 => items.iter().map(text).collect(),
        _ => None,
    }
}

/// `strict.lua`'s reply for a job of `cells` cells: exactly
/// `[ok, state_1, ..., state_cells]`, `ok` 0 or 1, every state an integer
/// of at least 0. Returns (charged, states).
pub(crate) fn strict(v: &Value, cells: usize) -> Result<(bool, Vec<u64>), Malformed> {
    const EXPECTED: &str = "an array of 0 or 1 then one integer >= 0 per cell";
    let bad = || Malformed::new("the strict script", EXPECTED, v);
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let Some((first, states)) = items.split_first() else {
        return Err(bad());
    };
    if states.len() != cells {
        return Err(bad());
    }
    let ok = match first {
        Value::Int(0) => false,
        Value::Int(1) => true,
        _ => return Err(bad()),
    };
    let states = states.iter().map(count).collect::<Option<Vec<u64>>>();
    states.map(|s| (ok, s)).ok_or_else(bad)
}

/// `leases.lua`'s reply to `op`: a flat array of integers >= 0 of the
/// operation's shape (see the script's header).
pub(crate) fn lease(v: &Value, op: &LeaseOp) -> Result<LeaseReply, Malformed> {
    const EXPECTED: &str = "the lease script's array of integers >= 0";
    let bad = || Malformed::new("the lease script", EXPECTED, v);
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let n = items
        .iter()
        .map(count)
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(bad)?;
    let (answer, pruned) = match (op, n.as_slice()) {
        (LeaseOp::Acquire { .. } | LeaseOp::Restore { .. }, [1, in_use, expires_ms, pruned]) => (
            LeaseAnswer::Granted {
                in_use: *in_use,
                expires_ms: *expires_ms,
            },
            *pruned,
        ),
        (LeaseOp::Acquire { .. } | LeaseOp::Restore { .. }, [0, in_use, wait_ms, pruned]) => (
            LeaseAnswer::Denied {
                in_use: *in_use,
                wait_ms: *wait_ms,
            },
            *pruned,
        ),
        (LeaseOp::Renew { .. }, [1, expires_ms, pruned]) => {
            (LeaseAnswer::Renewed(*expires_ms), *pruned)
        }
        (LeaseOp::Renew { .. }, [0, _, pruned]) => (LeaseAnswer::Gone, *pruned),
        (LeaseOp::Release { .. } | LeaseOp::Drop { .. }, [removed, pruned]) => {
            (LeaseAnswer::Removed(*removed), *pruned)
        }
        (LeaseOp::Count { .. }, [in_use, pruned, rest @ ..]) if rest.len() % 2 == 0 => {
            let leases = rest
                .chunks_exact(2)
                .map(|p| Some((u32::try_from(p[0]).ok()?, p[1])))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?;
            (LeaseAnswer::Counted(*in_use, leases), *pruned)
        }
        _ => return Err(bad()),
    };
    Ok(LeaseReply { answer, pruned })
}

/// One cell's answer in `sync.lua`'s reply: its state, or why Redis
/// could not use its key.
pub(crate) type CellState = Result<u64, String>;

/// `sync.lua`'s reply for a call of `cells` cells: whether it was applied
/// (false: a repeat of a call applied before, only read), and each
/// cell's state (an integer >= 0) or error (`"E <text>"`).
pub(crate) fn batch(v: &Value, cells: usize) -> Result<(bool, Vec<CellState>), Malformed> {
    const EXPECTED: &str = "[0 or 1, then per cell an integer >= 0 or \"E <error>\"]";
    let bad = || Malformed::new("the sync script", EXPECTED, v);
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let Some((applied, states)) = items.split_first() else {
        return Err(bad());
    };
    if states.len() != cells {
        return Err(bad());
    }
    let applied = match count(applied) {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(bad()),
    };
    let states = states
        .iter()
        .map(|s| match (count(s), text(s)) {
            (Some(n), _) => Ok(Ok(n)),
            (None, Some(t)) => match t.strip_prefix("E ") {
                Some(e) => Ok(Err(e.to_owned())),
                None => Err(bad()),
            },
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((applied, states))
}

/// `overrides_write.lua`'s reply: `[version, digest, old value or nil]`.
pub(crate) fn written(v: &Value) -> Result<(u64, String, Option<String>), Malformed> {
    const EXPECTED: &str = "[integer >= 0, string, string or nil]";
    let bad = || Malformed::new("the overrides write script", EXPECTED, v);
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let [version, digest, old] = items.as_slice() else {
        return Err(bad());
    };
    let old = match old {
        Value::Nil => None,
        other => Some(text(other).ok_or_else(bad)?),
    };
    match (count(version), text(digest)) {
        (Some(version), Some(digest)) => Ok((version, digest, old)),
        _ => Err(bad()),
    }
}

/// What `overrides_read.lua` returns: the version, the digest, and the
/// overrides and resets hashes as flat field/value lists.
pub(crate) type ReadAll = (u64, String, Vec<String>, Vec<String>);

/// `overrides_read.lua`'s reply: `[version, digest, [field, value, ...],
/// [field, value, ...]]`.
pub(crate) fn read_all(v: &Value) -> Result<ReadAll, Malformed> {
    const EXPECTED: &str = "[integer >= 0, string, [string pairs], [string pairs]]";
    let bad = || Malformed::new("the overrides read script", EXPECTED, v);
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let [version, digest, overrides, resets] = items.as_slice() else {
        return Err(bad());
    };
    match (
        count(version),
        text(digest),
        flat_pairs(overrides),
        flat_pairs(resets),
    ) {
        (Some(v), Some(d), Some(o), Some(r)) => Ok((v, d, o, r)),
        _ => Err(bad()),
    }
}

/// The reply to `MGET version digest`: `[decimal or nil, string or nil]`;
/// a missing version is 0, a missing digest empty.
pub(crate) fn version(v: &Value) -> Result<(u64, String), Malformed> {
    const EXPECTED: &str = "[decimal string or nil, string or nil]";
    let bad = || Malformed::new("MGET of the overrides version", EXPECTED, v);
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let [version, digest] = items.as_slice() else {
        return Err(bad());
    };
    let version = match version {
        Value::Nil => Some(0),
        other => text(other).and_then(|t| t.parse().ok()),
    };
    let digest = match digest {
        Value::Nil => Some(String::new()),
        other => text(other),
    };
    version.zip(digest).ok_or_else(bad)
}

/// `overrides_prune.lua`'s reply: how many records it deleted.
pub(crate) fn pruned(v: &Value) -> Result<u64, Malformed> {
    count(v).ok_or_else(|| Malformed::new("the overrides prune script", "an integer >= 0", v))
}

/// The overrides restore script's reply: how many records it wrote back,
/// or `None` when Redis changed since the node read it (`-1`).
pub(crate) fn restored(v: &Value) -> Result<Option<u64>, Malformed> {
    match v {
        Value::Int(-1) => Ok(None),
        v => count(v)
            .map(Some)
            .ok_or_else(|| Malformed::new("the overrides restore script", "an integer >= -1", v)),
    }
}

/// Bad replies and failures are logged at most this often.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a warning at most once per [`LOG_EVERY`], saying how many it
/// left out since the last one.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<tokio::time::Instant>,
    skipped: u64,
}

impl Throttle {
    /// Logs `error` with `message`, unless one was logged less than
    /// [`LOG_EVERY`] ago (then counts it).
    pub(crate) fn warn(&mut self, message: &'static str, error: &dyn std::fmt::Display) {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.skipped += 1;
            return;
        }
        tracing::warn!(
            error = %error,
            not_logged_since_last = self.skipped,
            "{message}"
        );
        self.last = Some(now);
        self.skipped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i64) -> Value {
        Value::Int(n)
    }
    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }
    fn arr(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
    /// An error reply inside an array, as Redis sends one.
    fn error() -> Value {
        match redis::parse_redis_value(b"*1\r\n-ERR boom\r\n") {
            Ok(Value::Array(mut items)) if items.len() == 1 => items.remove(0),
            other => panic!("an array holding an error: {other:?}"),
        }
    }

    /// Shapes that are wrong for every reply below: nil, each scalar
    /// type, an empty array, a nested error, a map, a set.
    fn wrong_everywhere() -> Vec<Value> {
        vec![
            Value::Nil,
            Value::Okay,
            Value::SimpleString("1".into()),
            bulk("1"),
            bulk("not a number"),
            Value::Double(1.0),
            Value::Boolean(true),
            int(-1),
            arr(vec![]),
            arr(vec![error()]),
            Value::Map(vec![(int(1), int(1))]),
            Value::Set(vec![int(1), int(1)]),
        ]
    }

    #[test]
    fn a_strict_reply_must_have_ok_then_one_state_per_cell() {
        assert_eq!(
            strict(&arr(vec![int(1), int(5), int(0)]), 2),
            Ok((true, vec![5, 0]))
        );
        assert_eq!(strict(&arr(vec![int(0), int(7)]), 1), Ok((false, vec![7])));
        let bad = [
            // Too short, too long.
            arr(vec![int(1)]),
            arr(vec![int(1), int(5), int(6)]),
            // `ok` not 0 or 1, or not an integer.
            arr(vec![int(2), int(5)]),
            arr(vec![int(-1), int(5)]),
            arr(vec![bulk("1"), int(5)]),
            arr(vec![Value::Nil, int(5)]),
            // A state negative, a string, nil, nested, an error.
            arr(vec![int(1), int(-3)]),
            arr(vec![int(1), bulk("5")]),
            arr(vec![int(1), Value::Nil]),
            arr(vec![int(1), arr(vec![int(5)])]),
            arr(vec![int(1), error()]),
            // A bare integer, as from a script that returned one.
            int(1),
            int(0),
        ];
        for v in bad.into_iter().chain(wrong_everywhere()) {
            let e = strict(&v, 1).expect_err(&format!("{v:?} is not a strict reply"));
            assert_eq!(e.to, "the strict script");
        }
    }

    #[test]
    fn a_sync_reply_is_applied_or_not_then_a_state_or_error_per_cell() {
        let v = arr(vec![
            int(1),
            int(0),
            int(1_795_780_800_000_000),
            bulk("E WRONGTYPE x"),
        ]);
        assert_eq!(
            batch(&v, 3),
            Ok((
                true,
                vec![
                    Ok(0),
                    Ok(1_795_780_800_000_000),
                    Err("WRONGTYPE x".to_owned())
                ]
            ))
        );
        assert_eq!(
            batch(&arr(vec![int(0), int(7)]), 1),
            Ok((false, vec![Ok(7)]))
        );
        let more = [
            // Too few or too many states, a flag that is not 0 or 1, a
            // negative state, text that is no error.
            arr(vec![int(1), int(5)]),
            arr(vec![int(2), int(5), int(5)]),
            arr(vec![int(1), int(-1), int(5)]),
            arr(vec![int(1), bulk("5"), int(5)]),
            arr(vec![]),
            int(5),
        ];
        for v in more.into_iter().chain(wrong_everywhere()) {
            assert!(batch(&v, 2).is_err(), "{v:?} is not a sync reply");
        }
    }

    #[test]
    fn an_overrides_write_reply_must_be_version_digest_and_old_value() {
        let d = "a".repeat(40);
        assert_eq!(
            written(&arr(vec![int(3), bulk(&d), Value::Nil])),
            Ok((3, d.clone(), None))
        );
        assert_eq!(
            written(&arr(vec![int(4), bulk(&d), bulk("3|{}")])),
            Ok((4, d.clone(), Some("3|{}".into())))
        );
        assert_eq!(
            written(&arr(vec![int(0), bulk(""), Value::Nil])),
            Ok((0, String::new(), None))
        );
        let more = [
            arr(vec![int(3), bulk(&d)]),
            arr(vec![int(3), bulk(&d), Value::Nil, Value::Nil]),
            arr(vec![int(-3), bulk(&d), Value::Nil]),
            arr(vec![bulk("3"), bulk(&d), Value::Nil]),
            arr(vec![int(3), int(7), Value::Nil]),
            arr(vec![int(3), Value::Nil, Value::Nil]),
            arr(vec![int(3), bulk(&d), int(1)]),
            arr(vec![int(3), bulk(&d), error()]),
            Value::BulkString(vec![0xff, 0xfe]),
            arr(vec![int(3), Value::BulkString(vec![0xff]), Value::Nil]),
        ];
        for v in more.into_iter().chain(wrong_everywhere()) {
            assert!(written(&v).is_err(), "{v:?} is not a write reply");
        }
    }

    #[test]
    fn an_overrides_read_reply_must_be_version_digest_and_two_flat_hashes() {
        let pairs = arr(vec![bulk("o:0000000000000001"), bulk("1|{}")]);
        assert_eq!(
            read_all(&arr(vec![int(1), bulk("d"), pairs.clone(), arr(vec![])])),
            Ok((
                1,
                "d".into(),
                vec!["o:0000000000000001".into(), "1|{}".into()],
                vec![]
            ))
        );
        let more = [
            // Lua stops an array at a nil: a version that is no number.
            arr(vec![]),
            arr(vec![int(1), bulk("d"), pairs.clone()]),
            arr(vec![int(-1), bulk("d"), pairs.clone(), arr(vec![])]),
            arr(vec![int(1), int(2), pairs.clone(), arr(vec![])]),
            arr(vec![int(1), bulk("d"), arr(vec![bulk("odd")]), arr(vec![])]),
            arr(vec![
                int(1),
                bulk("d"),
                arr(vec![int(1), int(2)]),
                arr(vec![]),
            ]),
            arr(vec![int(1), bulk("d"), pairs.clone(), Value::Nil]),
            arr(vec![int(1), bulk("d"), pairs, int(0)]),
        ];
        for v in more.into_iter().chain(wrong_everywhere()) {
            assert!(read_all(&v).is_err(), "{v:?} is not a read reply");
        }
    }

    #[test]
    fn a_version_reply_is_two_optional_strings_the_first_a_number() {
        assert_eq!(
            version(&arr(vec![Value::Nil, Value::Nil])),
            Ok((0, String::new()))
        );
        assert_eq!(
            version(&arr(vec![bulk("12"), bulk("ab")])),
            Ok((12, "ab".into()))
        );
        let more = [
            arr(vec![bulk("-1"), bulk("ab")]),
            arr(vec![bulk("x"), bulk("ab")]),
            arr(vec![int(12), bulk("ab")]),
            arr(vec![bulk("12")]),
            arr(vec![bulk("12"), bulk("ab"), bulk("cd")]),
            arr(vec![bulk("12"), int(1)]),
        ];
        for v in more.into_iter().chain(wrong_everywhere()) {
            assert!(version(&v).is_err(), "{v:?} is not a version reply");
        }
    }

    #[test]
    fn a_prune_reply_is_a_count() {
        assert_eq!(pruned(&int(2)), Ok(2));
        for v in wrong_everywhere() {
            assert!(pruned(&v).is_err(), "{v:?} is not a prune reply");
        }
    }

    #[test]
    fn an_error_shows_at_most_a_bounded_part_of_the_reply() {
        let huge = bulk(&"é".repeat(10_000));
        let e = batch(&huge, 1).expect_err("a string is no sync reply");
        assert!(e.got.chars().count() <= SHOWN + 1, "{}", e.got);
        assert!(e.to_string().contains("the sync script"));
        let r: redis::RedisError = e.into();
        assert_eq!(r.kind(), redis::ErrorKind::UnexpectedReturnType);
    }
}
