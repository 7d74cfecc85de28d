//! Located diagnostics and capped file reads: the bottom layer that the
//! config file, the limits files and the YAML reader share.
//!
//! A validation failure found after deserializing is an `Issue`: a
//! reason and the field path (`Seg`s) it concerns, which the crate's YAML
//! reader turns into `file:line:col: path: reason`. `quoted` puts user
//! text into a one-line message, [`head`] cuts text to a byte budget, `one_of` reads a value from a
//! fixed set of names, and [`check_name`] checks plan, limit and token
//! names, [`parse_duration`] reads `10s`-style durations. [`files`] is the one reader of every file quotad is pointed at.
//!
//! This module imports no other module of the crate.

pub mod files;

use std::time::Duration;

/// Longest plan or limit name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// One step of a field path in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// The `nth` (from 0) occurrence of a mapping key; `nth > 0` only for
    /// duplicated keys.
    Key {
        /// The key as written.
        name: String,
        /// Which occurrence.
        nth: usize,
    },
    /// A list element.
    Index(usize),
}

impl Seg {
    /// The first occurrence of mapping key `name`.
    pub(crate) fn key(name: impl Into<String>) -> Self {
        Seg::Key {
            name: name.into(),
            nth: 0,
        }
    }
}

/// A validation failure found after deserializing: what is wrong and at
/// which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    /// The field the failure concerns.
    pub path: Vec<Seg>,
    /// Lowercase, single-line reason.
    pub reason: String,
    /// Point at the mapping key itself rather than its value (duplicates).
    pub at_key: bool,
    /// Where the other half of a duplicate is, for "first defined at line N".
    pub first: Option<Vec<Seg>>,
}

impl Issue {
    pub(crate) fn new(path: Vec<Seg>, reason: impl Into<String>) -> Self {
        Self {
            path,
            reason: reason.into(),
            at_key: false,
            first: None,
        }
    }

    pub(crate) fn duplicate(path: Vec<Seg>, first: Vec<Seg>, reason: impl Into<String>) -> Self {
        Self {
            path,
            reason: reason.into(),
            at_key: true,
            first: Some(first),
        }
    }
}

/// At most the first `max` bytes of `s`, cut at a character boundary.
pub fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Quotes user text for a message, shortened and with control characters
/// escaped so the message stays on one line.
pub(crate) fn quoted(s: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::from("'");
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Checks a plan or limit name: non-empty, at most 64 bytes, only
/// `[A-Za-z0-9_.-]`.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("name must not be empty".into());
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(format!(
            "name {} is {} bytes long (at most {MAX_NAME_BYTES})",
            quoted(s),
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        let c = if c.is_control() || c == ' ' {
            c.escape_default().to_string()
        } else {
            c.to_string()
        };
        return Err(format!(
            "invalid character '{c}' in name {} (use letters, digits, '_', '.' and '-')",
            quoted(s)
        ));
    }
    Ok(())
}

/// `text` (trimmed) as the one of `values` that `name` calls so, else
/// `unknown {what} 'text' (expected a, b or c)`.
pub(crate) fn one_of<T: Copy>(
    what: &str,
    text: &str,
    values: impl IntoIterator<Item = T> + Clone,
    name: impl Fn(T) -> &'static str,
) -> Result<T, String> {
    if let Some(v) = values.clone().into_iter().find(|v| name(*v) == text.trim()) {
        return Ok(v);
    }
    let names: Vec<&str> = values.into_iter().map(name).collect();
    let expected = match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!(
        "unknown {what} {} (expected {expected})",
        quoted(text)
    ))
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h` (space allowed
/// between). The caller checks the range.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {} (expected an integer and a unit ms, s, m or h, such as 500ms, 10s or 2m)",
            quoted(text)
        )
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(invalid());
    }
    let millis_per_unit: u64 = match unit.trim_start() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "duration {digits} has no unit (write for example {digits}s; units: ms, s, m, h)"
            ));
        }
        _ => return Err(invalid()),
    };
    let too_long = || format!("duration must be at most 24h (got {t})");
    let n: u64 = digits.parse().map_err(|_| too_long())?;
    let millis = n.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    Ok(Duration::from_millis(millis))
}
