//! `RateLimitResponse.dynamic_metadata`, shaped as envoyproxy/ratelimit
//! shapes it (its `RESPONSE_DYNAMIC_METADATA`; here
//! `envoy.response_dynamic_metadata`), for Envoy to put in the request's
//! dynamic metadata (`envoy.filters.http.ratelimit` namespace):
//!
//! ```text
//! { "domain": "shop",
//!   "descriptors": [ { "entries": ["user=alice", "path=/x"],
//!                      "limit": "requests_per_unit:5 unit:MINUTE",   // its limit override, if any
//!                      "hitsAddend": 3 } ],                           // its own hits_addend, if any
//!   "hitsAddend": 2,                      // the request's, if not 0
//!   "metadata": { ... },                  // the passed descriptors' `metadata`, merged
//!   "quotaModeEnabled": true,             // when a quota-mode descriptor was checked
//!   "quotaModeViolations": [0, 2] }       // quota-mode descriptors over their limits
//! ```
//!
//! `metadata` merges the `metadata` of every descriptor that was checked
//! against a limit and not answered OVER_LIMIT, in request order: a key
//! seen first wins, and two mappings under one key merge the same way.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as PbUnit;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};

use crate::engine::{Answer, Basis};
use crate::limits::rls::Metadata;

/// The dynamic metadata for `req`, answered with `answer`; `passed` says,
/// per descriptor, whether it was answered OK.
pub(super) fn build(req: &RateLimitRequest, answer: &Answer<'_>, passed: &[bool]) -> Struct {
    let mut fields = HashMap::new();
    fields.insert("domain".to_owned(), string(&req.domain));
    let descriptors = req
        .descriptors
        .iter()
        .map(|d| {
            let mut f = HashMap::new();
            let entries = d
                .entries
                .iter()
                .map(|e| string(&format!("{}={}", e.key, e.value)))
                .collect();
            f.insert("entries".to_owned(), list(entries));
            if let Some(l) = &d.limit {
                let unit = PbUnit::try_from(l.unit)
                    .map_or_else(|_| l.unit.to_string(), |u| u.as_str_name().to_owned());
                let text = format!("requests_per_unit:{} unit:{unit}", l.requests_per_unit);
                f.insert("limit".to_owned(), string(&text));
            }
            if let Some(h) = &d.hits_addend {
                f.insert("hitsAddend".to_owned(), number(h.value as f64));
            }
            structure(Struct { fields: f })
        })
        .collect();
    fields.insert("descriptors".to_owned(), list(descriptors));
    if req.hits_addend != 0 {
        fields.insert("hitsAddend".to_owned(), number(f64::from(req.hits_addend)));
    }
    let mut merged = Struct::default();
    for (o, ok) in answer.outcomes.iter().zip(passed) {
        if let (Basis::Rule { rule: Some(r), .. }, true) = (o.basis, ok)
            && let Some(m) = &r.metadata
        {
            merge(&mut merged, m);
        }
    }
    if !merged.fields.is_empty() {
        fields.insert("metadata".to_owned(), structure(merged));
    }
    let global = answer.live.envoy.quota_mode;
    if answer.outcomes.iter().any(|o| o.quota(global)) {
        fields.insert("quotaModeEnabled".to_owned(), boolean(true));
    }
    let violations: Vec<Value> = answer
        .quota_violations()
        .map(|i| number(i as f64))
        .collect();
    if !violations.is_empty() {
        fields.insert("quotaModeViolations".to_owned(), list(violations));
    }
    Struct { fields }
}

/// Adds `from`'s fields to `into`: new keys are added, a key `into`
/// has keeps its value, and two mappings under one key are merged so.
fn merge(into: &mut Struct, from: &Metadata) {
    for (k, v) in from {
        match (into.fields.get_mut(k), v) {
            (None, v) => {
                into.fields.insert(k.clone(), json(v));
            }
            (
                Some(Value {
                    kind: Some(Kind::StructValue(s)),
                }),
                serde_json::Value::Object(m),
            ) => merge(s, m),
            (Some(_), _) => {}
        }
    }
}

/// A JSON value (a YAML scalar, list or mapping from the config) as a
/// protobuf `Value`.
fn json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value {
            kind: Some(Kind::NullValue(0)),
        },
        serde_json::Value::Bool(b) => boolean(*b),
        serde_json::Value::Number(n) => number(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(a) => list(a.iter().map(json).collect()),
        serde_json::Value::Object(m) => {
            let mut s = Struct::default();
            merge(&mut s, m);
            structure(s)
        }
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn boolean(b: bool) -> Value {
    Value {
        kind: Some(Kind::BoolValue(b)),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn structure(s: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: serde_json::Value) -> Metadata {
        match v {
            serde_json::Value::Object(m) => m,
            other => panic!("not a mapping: {other}"),
        }
    }

    fn as_json(s: &Struct) -> serde_json::Value {
        fn value(v: &Value) -> serde_json::Value {
            match &v.kind {
                Some(Kind::StringValue(s)) => s.clone().into(),
                Some(Kind::NumberValue(n)) => (*n).into(),
                Some(Kind::BoolValue(b)) => (*b).into(),
                Some(Kind::StructValue(s)) => as_json(s),
                Some(Kind::ListValue(l)) => l.values.iter().map(value).collect(),
                Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
            }
        }
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    #[test]
    fn the_first_value_of_a_key_wins_and_mappings_merge() {
        let mut s = Struct::default();
        merge(
            &mut s,
            &meta(serde_json::json!({"name": "service_1", "svc": {"a": 1, "list": [1, "x"]}})),
        );
        merge(
            &mut s,
            &meta(
                serde_json::json!({"name": "service_2", "other": true, "svc": {"a": 2, "b": null}}),
            ),
        );
        assert_eq!(
            as_json(&s),
            serde_json::json!({
                "name": "service_1",
                "other": true,
                "svc": {"a": 1.0, "b": null, "list": [1.0, "x"]}
            })
        );
    }
}
