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

/// Parses a request body as one JSON object.
pub fn parse(body: &[u8]) -> Result<Value, JsonError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| JsonError::new("body", format!("not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(JsonError::new("body", "must be a JSON object"));
    }
    Ok(v)
}

/// A JSON object read as one proto3 message.
pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    /// The path of the message (`""` for the body itself).
    at: String,
}

impl<'a> Fields<'a> {
    /// `v` as a message at `at`, whose fields are `known` (proto names;
    /// their lowerCamelCase forms are accepted too). `null` is an empty
    /// message.
    pub(crate) fn of(v: &'a Value, at: &str, known: &[&str]) -> Result<Self, JsonError> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let obj = match v {
            Value::Object(o) => o,
            Value::Null => EMPTY.get_or_init(Map::new),
            other => {
                return Err(JsonError::new(
                    name(at),
                    format!("expected an object, got {}", kind(other)),
                ));
            }
        };
        for key in obj.keys() {
            if !known.iter().any(|k| *k == key || camel(k) == *key) {
                return Err(JsonError::new(
                    path(at, key),
                    format!("unknown field (expected one of {})", known.join(", ")),
                ));
            }
        }
        Ok(Self {
            obj,
            at: at.to_owned(),
        })
    }

    /// The field's value and path (`None` when absent or `null`).
    pub(crate) fn get(&self, field: &str) -> Option<(&'a Value, String)> {
        let camel = camel(field);
        let v = self.obj.get(field).or_else(|| self.obj.get(&camel))?;
        (!v.is_null()).then(|| (v, path(&self.at, field)))
    }

    /// A string field ("" when absent).
    pub(crate) fn string(&self, field: &str) -> Result<&'a str, JsonError> {
        match self.get(field) {
            None => Ok(""),
            Some((Value::String(s), _)) => Ok(s),
            Some((other, at)) => Err(JsonError::new(
                at,
                format!("expected a string, got {}", kind(other)),
            )),
        }
    }

    /// An unsigned 64-bit field (0 when absent).
    pub(crate) fn u64(&self, field: &str) -> Result<u64, JsonError> {
        self.get(field).map_or(Ok(0), |(v, at)| unsigned(v, &at))
    }

    /// A bool field (false when absent).
    pub(crate) fn bool(&self, field: &str) -> Result<bool, JsonError> {
        match self.get(field) {
            None => Ok(false),
            Some((Value::Bool(b), _)) => Ok(*b),
            Some((other, at)) => Err(JsonError::new(
                at,
                format!("expected true or false, got {}", kind(other)),
            )),
        }
    }

    /// An enum field by name or number (0 when absent).
    pub(crate) fn enumeration(&self, field: &str, names: &[(&str, i32)]) -> Result<i32, JsonError> {
        let Some((v, at)) = self.get(field) else {
            return Ok(0);
        };
        let expected = || names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
        match v {
            Value::String(s) => names
                .iter()
                .find(|(n, _)| n == s)
                .map(|(_, i)| *i)
                .ok_or_else(|| {
                    JsonError::new(at, format!("unknown value {s:?} (expected {})", expected()))
                }),
            Value::Number(n) => n
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .filter(|i| names.iter().any(|(_, j)| j == i))
                .ok_or_else(|| {
                    JsonError::new(at, format!("unknown value {n} (expected {})", expected()))
                }),
            other => Err(JsonError::new(
                at,
                format!("expected a name or a number, got {}", kind(other)),
            )),
        }
    }
}

/// An unsigned 64-bit integer: a JSON number without a fraction, or a
/// string of decimal digits.
pub(crate) fn unsigned(v: &Value, at: &str) -> Result<u64, JsonError> {
    let bad =
        |what: String| JsonError::new(at, format!("expected a non-negative integer, got {what}"));
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| bad(n.to_string())),
        Value::String(s) => s.parse::<u64>().map_err(|_| bad(format!("{s:?}"))),
        other => Err(bad(kind(other).to_owned())),
    }
}

/// The JSON type of `v`, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The lowerCamelCase JSON name of a proto field name.
fn camel(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
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

/// A `quotad.v1.CheckRequest`.
pub fn check_request(v: &Value) -> Result<CheckRequest, JsonError> {
    let f = Fields::of(v, "", &["key", "cost", "id", "mode"])?;
    Ok(CheckRequest {
        key: f.string("key")?.to_owned(),
        cost: f.u64("cost")?,
        id: f.u64("id")?,
        mode: f.enumeration("mode", MODES)?,
    })
}

/// A `quotad.v1.ReportRequest`.
pub fn report_request(v: &Value) -> Result<ReportRequest, JsonError> {
    let f = Fields::of(v, "", &["key", "cost", "id"])?;
    Ok(ReportRequest {
        key: f.string("key")?.to_owned(),
        cost: f.u64("cost")?,
        id: f.u64("id")?,
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
        let v = parse(br#"{"key":"k","cost":"5","id":7,"mode":"CHECK_MODE_PEEK"}"#).unwrap();
        let r = check_request(&v).unwrap();
        assert_eq!((r.key.as_str(), r.cost, r.id, r.mode), ("k", 5, 7, 1));
        let v = parse(br#"{"key":"k","mode":1,"cost":null}"#).unwrap();
        assert_eq!(check_request(&v).unwrap().mode, 1);
    }

    #[test]
    fn mistakes_name_the_field() {
        let err = |body: &[u8]| {
            parse(body)
                .and_then(|v| check_request(&v))
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"{").starts_with("body: not valid JSON"));
        assert_eq!(err(b"[1]"), "body: must be a JSON object");
        assert_eq!(
            err(br#"{"key":"k","cost":-1}"#),
            "cost: expected a non-negative integer, got -1"
        );
        assert_eq!(
            err(br#"{"key":"k","cost":1.5}"#),
            "cost: expected a non-negative integer, got 1.5"
        );
        assert_eq!(err(br#"{"key":5}"#), "key: expected a string, got a number");
        assert!(err(br#"{"key":"k","cots":1}"#).starts_with("cots: unknown field"));
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
