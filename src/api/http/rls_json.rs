//! envoyproxy/ratelimit's `POST /json` in quotad's HTTP door: a
//! `RateLimitRequest` in the proto3 JSON mapping, decided as gRPC's
//! `ShouldRateLimit` decides it, answered as that service answers: the
//! `RateLimitResponse` in JSON with default values left out (as Go's
//! `protojson.Marshal`), 200 when OK, 429 when OVER_LIMIT, 400 for a
//! request that cannot be read or is refused. Unlike envoyproxy, the 400's
//! body says what was wrong, and an OVER_LIMIT answer carries
//! `Retry-After` when the configured headers include it.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Duration, Struct, UInt64Value, Value as PbValue};
use serde_json::{Map, Value, json};

use serde_json::value::RawValue;

use super::json::{
    JsonError, Raw, boolean, enumeration, list, object, path, present, string, unsigned,
};

const UNITS: &[(&str, i32)] = &[
    ("UNKNOWN", Unit::Unknown as i32),
    ("SECOND", Unit::Second as i32),
    ("MINUTE", Unit::Minute as i32),
    ("HOUR", Unit::Hour as i32),
    ("DAY", Unit::Day as i32),
    ("MONTH", Unit::Month as i32),
    ("YEAR", Unit::Year as i32),
    ("WEEK", Unit::Week as i32),
];

/// `RateLimitRequest`'s fields as the body has them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson<'a> {
    #[serde(borrow, default)]
    domain: Raw<'a>,
    #[serde(borrow, default)]
    descriptors: Raw<'a>,
    #[serde(borrow, default, alias = "hitsAddend")]
    hits_addend: Raw<'a>,
}

/// `RateLimitDescriptor`'s.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorJson<'a> {
    #[serde(borrow, default)]
    entries: Raw<'a>,
    #[serde(borrow, default)]
    limit: Raw<'a>,
    #[serde(borrow, default, alias = "hitsAddend")]
    hits_addend: Raw<'a>,
    #[serde(borrow, default, alias = "isNegativeHits")]
    is_negative_hits: Raw<'a>,
}

/// An entry's.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson<'a> {
    #[serde(borrow, default)]
    key: Raw<'a>,
    #[serde(borrow, default)]
    value: Raw<'a>,
}

/// `RateLimitOverride`'s.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideJson<'a> {
    #[serde(borrow, default, alias = "requestsPerUnit")]
    requests_per_unit: Raw<'a>,
    #[serde(borrow, default)]
    unit: Raw<'a>,
}

/// A 32-bit field.
fn u32_field(raw: Raw<'_>, at: &str) -> Result<u32, JsonError> {
    let n = unsigned(raw, at)?;
    u32::try_from(n).map_err(|_| JsonError::new(at, format!("{n} does not fit in 32 bits")))
}

/// A `RateLimitRequest` from its JSON form.
pub fn request(body: &[u8]) -> Result<RateLimitRequest, JsonError> {
    let f: RequestJson<'_> = object(body, "")?;
    let descriptors = list(f.descriptors, "descriptors")?
        .into_iter()
        .enumerate()
        .map(|(i, d)| descriptor(d, &format!("descriptors[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(RateLimitRequest {
        domain: string(f.domain, "domain")?,
        descriptors,
        hits_addend: u32_field(f.hits_addend, "hits_addend")?,
    })
}

fn descriptor(raw: &RawValue, at: &str) -> Result<RateLimitDescriptor, JsonError> {
    let f: DescriptorJson<'_> = object(raw.get().as_bytes(), at)?;
    let entries = list(f.entries, &path(at, "entries"))?
        .into_iter()
        .enumerate()
        .map(|(j, e)| {
            let at = format!("{at}.entries[{j}]");
            let e: EntryJson<'_> = object(e.get().as_bytes(), &at)?;
            Ok(Entry {
                key: string(e.key, &path(&at, "key"))?,
                value: string(e.value, &path(&at, "value"))?,
            })
        })
        .collect::<Result<_, JsonError>>()?;
    let limit = match present(f.limit) {
        None => None,
        Some(raw) => {
            let at = path(at, "limit");
            let l: OverrideJson<'_> = object(raw.get().as_bytes(), &at)?;
            Some(RateLimitOverride {
                requests_per_unit: u32_field(l.requests_per_unit, &path(&at, "requests_per_unit"))?,
                unit: enumeration(l.unit, &path(&at, "unit"), UNITS)?,
            })
        }
    };
    let hits_addend = match present(f.hits_addend) {
        None => None,
        Some(raw) => Some(UInt64Value {
            value: unsigned(Some(raw), &path(at, "hits_addend"))?,
        }),
    };
    Ok(RateLimitDescriptor {
        entries,
        limit,
        hits_addend,
        is_negative_hits: boolean(f.is_negative_hits, &path(at, "is_negative_hits"))?,
    })
}

/// A `RateLimitResponse` in JSON, default values left out.
pub fn response(r: &RateLimitResponse) -> Value {
    let mut out = Map::new();
    if let Some(code) = code_name(r.overall_code) {
        out.insert("overallCode".into(), json!(code));
    }
    if !r.statuses.is_empty() {
        out.insert(
            "statuses".into(),
            Value::Array(r.statuses.iter().map(status).collect()),
        );
    }
    for (field, list) in [
        ("responseHeadersToAdd", &r.response_headers_to_add),
        ("requestHeadersToAdd", &r.request_headers_to_add),
    ] {
        if !list.is_empty() {
            let headers = list
                .iter()
                .map(|h| json!({ "key": h.key, "value": h.value }))
                .collect();
            out.insert(field.into(), Value::Array(headers));
        }
    }
    if let Some(m) = &r.dynamic_metadata {
        out.insert("dynamicMetadata".into(), structure(m));
    }
    Value::Object(out)
}

fn code_name(code: i32) -> Option<&'static str> {
    match Code::try_from(code) {
        Ok(Code::Ok) => Some("OK"),
        Ok(Code::OverLimit) => Some("OVER_LIMIT"),
        _ => None,
    }
}

fn status(s: &DescriptorStatus) -> Value {
    let mut out = Map::new();
    if let Some(code) = code_name(s.code) {
        out.insert("code".into(), json!(code));
    }
    if let Some(l) = &s.current_limit {
        out.insert("currentLimit".into(), limit(l));
    }
    if s.limit_remaining > 0 {
        out.insert("limitRemaining".into(), json!(s.limit_remaining));
    }
    if let Some(d) = &s.duration_until_reset {
        out.insert("durationUntilReset".into(), json!(duration(d)));
    }
    Value::Object(out)
}

fn limit(l: &RateLimit) -> Value {
    let mut out = Map::new();
    if !l.name.is_empty() {
        out.insert("name".into(), json!(l.name));
    }
    if l.requests_per_unit > 0 {
        out.insert("requestsPerUnit".into(), json!(l.requests_per_unit));
    }
    if let Some((name, _)) = UNITS.iter().find(|(_, u)| *u == l.unit && *u != 0) {
        out.insert("unit".into(), json!(name));
    }
    Value::Object(out)
}

fn duration(d: &Duration) -> String {
    super::json::duration(&prost_types::Duration {
        seconds: d.seconds,
        nanos: d.nanos,
    })
}

fn structure(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

fn value(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => structure(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_as_protojson_would() {
        let r = request(
            br#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}],"hits_addend":"0","limit":{"requestsPerUnit":5,"unit":"MINUTE"}}],"hitsAddend":3}"#,
        )
        .unwrap();
        assert_eq!(r.domain, "d");
        assert_eq!(r.hits_addend, 3);
        let d = &r.descriptors[0];
        assert_eq!(d.hits_addend, Some(UInt64Value { value: 0 }));
        assert_eq!(d.limit.map(|l| (l.requests_per_unit, l.unit)), Some((5, 2)));
        assert_eq!(d.entries[0].key, "k");
    }

    #[test]
    fn mistakes_name_the_field() {
        let err = |body: &[u8]| request(body).unwrap_err().to_string();
        assert_eq!(
            err(br#"{"domain":"d","descriptors":[{"entries":[{"key":1}]}]}"#),
            "descriptors[0].entries[0].key: expected a string, got 1"
        );
        assert_eq!(
            err(br#"{"domain":"d","descriptors":{}}"#),
            "descriptors: expected an array, got {}"
        );
        assert_eq!(
            err(br#"{"domain":"d","hitsAddend":4294967296}"#),
            "hits_addend: 4294967296 does not fit in 32 bits"
        );
        assert!(
            err(br#"{"domain":"d","descriptors":[{"entries":[],"nope":1}]}"#)
                .starts_with("descriptors[0]: unknown field `nope`")
        );
    }

    #[test]
    fn a_response_leaves_defaults_out() {
        let r = RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: 10,
                    unit: Unit::Minute as i32,
                }),
                limit_remaining: 9,
                duration_until_reset: Some(Duration {
                    seconds: 46,
                    nanos: 0,
                }),
                quota: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            response(&r),
            json!({"overallCode":"OK","statuses":[{"code":"OK","currentLimit":{"requestsPerUnit":10,"unit":"MINUTE"},"limitRemaining":9,"durationUntilReset":"46s"}]})
        );
    }
}
