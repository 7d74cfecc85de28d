//! The proto3 JSON mapping of the messages the HTTP door reads and
//! writes: reading (a field by its proto name or its lowerCamelCase JSON
//! name, 64-bit integers as numbers or decimal strings, enums by name or
//! number, `null` as the default, unknown fields refused) with errors that
//! name the field, and writing `quotad.v1`'s check and report answers
//! (every field, 64-bit integers as strings, durations as `"1.5s"`).
//!
//! Written by hand rather than generated: a generated mapping (pbjson)
//! would swap the well-known types under every message of the crate, and
//! four messages do not need it.

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::api::pb::{
    CheckMode, CheckRequest, CheckResponse, DenyReason, Header, ReportRequest, ReportResponse,
};

/// What is wrong with a JSON body: the field path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {why}")]
pub struct JsonError {
    /// Where (`descriptors[0].entries[1].key`; `body` for the whole).
    pub path: String,
    /// Why.
    pub why: String,
}

impl JsonError {
    pub(crate) fn new(path: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            why: why.into(),
        }
    }
}

/// A field's value as the body holds it: borrowed, read only when asked.
pub(crate) type Raw<'a> = Option<&'a RawValue>;

/// Reads `body` as the JSON object `T`, whose fields are the message's
/// (by proto name or lowerCamelCase alias) as [`Raw`] values: a field not
/// in `T` or given twice is refused as it is met, and nothing is parsed
/// but the object's own structure, so a body costs about its own size
/// however it nests.
pub fn object<'a, T: serde::Deserialize<'a>>(body: &'a [u8], at: &str) -> Result<T, JsonError> {
    // (serde would also read a struct from an array, by position.)
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(JsonError::new(name(at), "must be a JSON object")),
        None => return Err(JsonError::new(name(at), "empty (expected a JSON object)")),
    }
    serde_json::from_slice(body).map_err(|e| {
        let why = e.to_string();
        let why = match e.classify() {
            serde_json::error::Category::Data => why,
            _ => format!("not valid JSON: {why}"),
        };
        JsonError::new(name(at), why)
    })
}

/// A field's value unless it is absent or `null` (proto3 JSON: the same).
pub(crate) fn present(raw: Raw<'_>) -> Raw<'_> {
    raw.filter(|r| r.get() != "null")
}

/// The raw value as a `T` (`null`, like an absent field, is the default).
fn scalar<T: serde::de::DeserializeOwned + Default>(
    raw: Raw<'_>,
    at: &str,
    expected: &str,
) -> Result<T, JsonError> {
    let Some(raw) = present(raw) else {
        return Ok(T::default());
    };
    serde_json::from_str(raw.get())
        .map_err(|_| JsonError::new(at, format!("expected {expected}, got {}", shown(raw))))
}

/// A string field ("" when absent).
pub(crate) fn string(raw: Raw<'_>, at: &str) -> Result<String, JsonError> {
    scalar(raw, at, "a string")
}

/// A bool field (false when absent).
pub(crate) fn boolean(raw: Raw<'_>, at: &str) -> Result<bool, JsonError> {
    scalar(raw, at, "true or false")
}

/// An unsigned 64-bit field (0 when absent): a JSON number without a
/// fraction, or a string of decimal digits.
pub(crate) fn unsigned(raw: Raw<'_>, at: &str) -> Result<u64, JsonError> {
    let Some(raw) = present(raw) else {
        return Ok(0);
    };
    let text = raw.get();
    let digits = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    digits.parse::<u64>().map_err(|_| {
        JsonError::new(
            at,
            format!("expected a non-negative integer, got {}", shown(raw)),
        )
    })
}

/// An enum field by name or number (0 when absent).
pub(crate) fn enumeration(raw: Raw<'_>, at: &str, names: &[(&str, i32)]) -> Result<i32, JsonError> {
    let Some(raw) = present(raw) else {
        return Ok(0);
    };
    let text = raw.get();
    let found = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(name) => names.iter().find(|(n, _)| *n == name).map(|(_, i)| *i),
        None => text
            .parse::<i32>()
            .ok()
            .filter(|i| names.iter().any(|(_, j)| j == i)),
    };
    found.ok_or_else(|| {
        let expected: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        JsonError::new(
            at,
            format!(
                "unknown value {} (expected {})",
                shown(raw),
                expected.join(", ")
            ),
        )
    })
}

/// A list field's items, each still raw (empty when absent).
pub(crate) fn list<'a>(raw: Raw<'a>, at: &str) -> Result<Vec<&'a RawValue>, JsonError> {
    let Some(raw) = present(raw) else {
        return Ok(Vec::new());
    };
    serde_json::from_str(raw.get())
        .map_err(|_| JsonError::new(at, format!("expected an array, got {}", shown(raw))))
}

/// A raw value as a message shows it: short ones whole, long ones by kind.
fn shown(raw: &RawValue) -> String {
    let text = raw.get();
    if text.len() <= 40 {
        return text.to_owned();
    }
    match text.as_bytes().first() {
        Some(b'"') => "a string".into(),
        Some(b'[') => "an array".into(),
        Some(b'{') => "an object".into(),
        _ => "a value".into(),
    }
}

fn name(at: &str) -> String {
    if at.is_empty() {
        "body".into()
    } else {
        at.into()
    }
}

/// `at.field`, or `field` at the top.
pub(crate) fn path(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// A duration in the proto3 JSON form: seconds with 0, 3, 6 or 9
/// fractional digits and an `s`.
pub(crate) fn duration(d: &prost_types::Duration) -> String {
    let (s, n) = (d.seconds, d.nanos);
    if n == 0 {
        format!("{s}s")
    } else if n % 1_000_000 == 0 {
        format!("{s}.{:03}s", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!("{s}.{:06}s", n / 1_000)
    } else {
        format!("{s}.{n:09}s")
    }
}

const MODES: &[(&str, i32)] = &[
    ("CHECK_MODE_CHARGE", CheckMode::Charge as i32),
    ("CHECK_MODE_PEEK", CheckMode::Peek as i32),
];

/// `quotad.v1.CheckRequest`'s fields as the body has them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckJson<'a> {
    #[serde(borrow, default)]
    key: Raw<'a>,
    #[serde(borrow, default)]
    cost: Raw<'a>,
    #[serde(borrow, default)]
    id: Raw<'a>,
    #[serde(borrow, default)]
    mode: Raw<'a>,
}

/// A `quotad.v1.CheckRequest`.
pub fn check_request(body: &[u8]) -> Result<CheckRequest, JsonError> {
    let f: CheckJson<'_> = object(body, "")?;
    Ok(CheckRequest {
        key: string(f.key, "key")?,
        cost: unsigned(f.cost, "cost")?,
        id: unsigned(f.id, "id")?,
        mode: enumeration(f.mode, "mode", MODES)?,
    })
}

/// `quotad.v1.ReportRequest`'s fields as the body has them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportJson<'a> {
    #[serde(borrow, default)]
    key: Raw<'a>,
    #[serde(borrow, default)]
    cost: Raw<'a>,
    #[serde(borrow, default)]
    id: Raw<'a>,
}

/// A `quotad.v1.ReportRequest`.
pub fn report_request(body: &[u8]) -> Result<ReportRequest, JsonError> {
    let f: ReportJson<'_> = object(body, "")?;
    Ok(ReportRequest {
        key: string(f.key, "key")?,
        cost: unsigned(f.cost, "cost")?,
        id: unsigned(f.id, "id")?,
    })
}

fn reason(r: i32) -> &'static str {
    DenyReason::try_from(r).map_or("DENY_REASON_UNSPECIFIED", |r| r.as_str_name())
}

fn headers(h: &[Header]) -> Value {
    Value::Array(
        h.iter()
            .map(|h| json!({ "name": h.name, "value": h.value }))
            .collect(),
    )
}

/// Adds `field` as a duration when set.
fn put_duration(out: &mut Map<String, Value>, field: &str, d: Option<&prost_types::Duration>) {
    if let Some(d) = d {
        out.insert(field.to_owned(), Value::String(duration(d)));
    }
}

/// A `quotad.v1.CheckResponse`.
pub fn check_response(r: &CheckResponse) -> Value {
    let mut out = Map::new();
    out.insert("allowed".into(), Value::Bool(r.allowed));
    out.insert("limit".into(), Value::String(r.limit.to_string()));
    out.insert("remaining".into(), Value::String(r.remaining.to_string()));
    put_duration(&mut out, "resetAfter", r.reset_after.as_ref());
    put_duration(&mut out, "retryAfter", r.retry_after.as_ref());
    out.insert("policy".into(), Value::String(r.policy.clone()));
    out.insert("id".into(), Value::String(r.id.to_string()));
    out.insert("reason".into(), Value::String(reason(r.reason).into()));
    out.insert(
        "windowSeconds".into(),
        Value::String(r.window_seconds.to_string()),
    );
    out.insert("error".into(), Value::String(r.error.clone()));
    out.insert("headers".into(), headers(&r.headers));
    Value::Object(out)
}

/// A `quotad.v1.ReportResponse`.
pub fn report_response(r: &ReportResponse) -> Value {
    let mut out = Map::new();
    out.insert("limit".into(), Value::String(r.limit.to_string()));
    out.insert("remaining".into(), Value::String(r.remaining.to_string()));
    put_duration(&mut out, "resetAfter", r.reset_after.as_ref());
    out.insert("policy".into(), Value::String(r.policy.clone()));
    out.insert("id".into(), Value::String(r.id.to_string()));
    out.insert("headers".into(), headers(&r.headers));
    put_duration(&mut out, "retryAfter", r.retry_after.as_ref());
    out.insert("debt".into(), Value::String(r.debt.to_string()));
    out.insert(
        "windowSeconds".into(),
        Value::String(r.window_seconds.to_string()),
    );
    out.insert("error".into(), Value::String(r.error.clone()));
    out.insert("reason".into(), Value::String(reason(r.reason).into()));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_request_reads_both_names_numbers_as_strings_and_enum_forms() {
        let r =
            check_request(br#"{"key":"k","cost":"5","id":7,"mode":"CHECK_MODE_PEEK"}"#).unwrap();
        assert_eq!((r.key.as_str(), r.cost, r.id, r.mode), ("k", 5, 7, 1));
        let r = check_request(br#"{"key":"k","mode":1,"cost":null}"#).unwrap();
        assert_eq!((r.mode, r.cost), (1, 0));
    }

    #[test]
    fn mistakes_name_the_field() {
        let err = |body: &[u8]| check_request(body).unwrap_err().to_string();
        assert!(
            err(b"{").starts_with("body: not valid JSON"),
            "{}",
            err(b"{")
        );
        assert_eq!(err(b"[1]"), "body: must be a JSON object");
        assert_eq!(err(b" "), "body: empty (expected a JSON object)");
        assert_eq!(
            err(br#"{"key":"k","cost":-1}"#),
            "cost: expected a non-negative integer, got -1"
        );
        assert_eq!(
            err(br#"{"key":"k","cost":1.5}"#),
            "cost: expected a non-negative integer, got 1.5"
        );
        assert_eq!(err(br#"{"key":5}"#), "key: expected a string, got 5");
        assert!(err(br#"{"key":"k","cots":1}"#).starts_with("body: unknown field `cots`"));
        assert!(err(br#"{"key":"k","key":"j"}"#).starts_with("body: duplicate field `key`"));
        assert!(err(br#"{"key":"k","mode":"PEEK"}"#).starts_with("mode: unknown value \"PEEK\""));
    }

    #[test]
    fn durations_take_the_fewest_fraction_digits() {
        let d = |seconds, nanos| duration(&prost_types::Duration { seconds, nanos });
        assert_eq!(d(46, 0), "46s");
        assert_eq!(d(1, 500_000_000), "1.500s");
        assert_eq!(d(0, 1_000), "0.000001s");
        assert_eq!(d(0, 1), "0.000000001s");
    }
}
