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

use super::json::{Fields, JsonError, path, unsigned};

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

/// A `RateLimitRequest` from its JSON form.
pub fn request(v: &Value) -> Result<RateLimitRequest, JsonError> {
    let f = Fields::of(v, "", &["domain", "descriptors", "hits_addend"])?;
    let hits = f.u64("hits_addend")?;
    let hits_addend = u32::try_from(hits)
        .map_err(|_| JsonError::new("hits_addend", format!("{hits} does not fit in 32 bits")))?;
    let descriptors = match f.get("descriptors") {
        None => Vec::new(),
        Some((Value::Array(items), at)) => items
            .iter()
            .enumerate()
            .map(|(i, d)| descriptor(d, &format!("{at}[{i}]")))
            .collect::<Result<_, _>>()?,
        Some((other, at)) => {
            return Err(JsonError::new(
                at,
                format!("expected an array, got {}", super::json::kind(other)),
            ));
        }
    };
    Ok(RateLimitRequest {
        domain: f.string("domain")?.to_owned(),
        descriptors,
        hits_addend,
    })
}

fn descriptor(v: &Value, at: &str) -> Result<RateLimitDescriptor, JsonError> {
    let f = Fields::of(
        v,
        at,
        &["entries", "limit", "hits_addend", "is_negative_hits"],
    )?;
    let entries = match f.get("entries") {
        None => Vec::new(),
        Some((Value::Array(items), at)) => items
            .iter()
            .enumerate()
            .map(|(j, e)| {
                let e = Fields::of(e, &format!("{at}[{j}]"), &["key", "value"])?;
                Ok(Entry {
                    key: e.string("key")?.to_owned(),
                    value: e.string("value")?.to_owned(),
                })
            })
            .collect::<Result<_, JsonError>>()?,
        Some((other, at)) => {
            return Err(JsonError::new(
                at,
                format!("expected an array, got {}", super::json::kind(other)),
            ));
        }
    };
    let limit = f
        .get("limit")
        .map(|(v, at)| {
            let l = Fields::of(v, &at, &["requests_per_unit", "unit"])?;
            let rpu = l.u64("requests_per_unit")?;
            Ok::<_, JsonError>(RateLimitOverride {
                requests_per_unit: u32::try_from(rpu).map_err(|_| {
                    JsonError::new(
                        path(&at, "requests_per_unit"),
                        format!("{rpu} does not fit in 32 bits"),
                    )
                })?,
                unit: l.enumeration("unit", UNITS)?,
            })
        })
        .transpose()?;
    let hits_addend = f
        .get("hits_addend")
        .map(|(v, at)| unsigned(v, &at).map(|value| UInt64Value { value }))
        .transpose()?;
    Ok(RateLimitDescriptor {
        entries,
        limit,
        hits_addend,
        is_negative_hits: f.bool("is_negative_hits")?,
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
        let v = super::super::json::parse(
            br#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}],"hits_addend":"0","limit":{"requestsPerUnit":5,"unit":"MINUTE"}}],"hitsAddend":3}"#,
        )
        .unwrap();
        let r = request(&v).unwrap();
        assert_eq!(r.domain, "d");
        assert_eq!(r.hits_addend, 3);
        let d = &r.descriptors[0];
        assert_eq!(d.hits_addend, Some(UInt64Value { value: 0 }));
        assert_eq!(d.limit.map(|l| (l.requests_per_unit, l.unit)), Some((5, 2)));
        assert_eq!(d.entries[0].key, "k");
    }

    #[test]
    fn mistakes_name_the_field() {
        let err = |body: &[u8]| {
            super::super::json::parse(body)
                .and_then(|v| request(&v))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(br#"{"domain":"d","descriptors":[{"entries":[{"key":1}]}]}"#),
            "descriptors[0].entries[0].key: expected a string, got a number"
        );
        assert_eq!(
            err(br#"{"domain":"d","descriptors":{}}"#),
            "descriptors: expected an array, got an object"
        );
        assert_eq!(
            err(br#"{"domain":"d","hitsAddend":4294967296}"#),
            "hits_addend: 4294967296 does not fit in 32 bits"
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
