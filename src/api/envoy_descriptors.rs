//! Protobuf descriptors of Envoy's Rate Limit Service v3 and Rate Limit
//! Quota Service (RLQS) v3, for server reflection, so `grpcurl` and other
//! reflection clients can call `envoy.service.ratelimit.v3.RateLimitService`
//! and describe `envoy.service.rate_limit_quota.v3.RateLimitQuotaService`
//! without Envoy's `.proto` files.
//!
//! The `envoy-types` crate ships Envoy's generated Rust types but not their
//! descriptors, and we do not vendor Envoy's protos. Instead this module
//! describes, in code, the subset of each file that the services reach:
//! every message, field number, type and enum value on the wire is Envoy's
//! own (taken from the `envoy-types` tags; for RLS, `tests/health.rs`
//! fetches these descriptors through reflection and round-trips real
//! requests and responses through them); validation annotations and
//! unrelated messages are left out.
//!
//! This module holds the builders, the Google files, the shared
//! `ratelimit_unit.proto` and RLS's files, and composes the one set;
//! RLQS's own files (token bucket, rate limit strategy, `rlqs.proto`) are
//! `rlqs`'s (a child module), built with the builders here.

mod rlqs;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FileDescriptorProto, FileDescriptorSet, MessageOptions, MethodDescriptorProto,
    OneofDescriptorProto, ServiceDescriptorProto,
};

/// A field: (name, number, type, label, type name for messages and enums).
fn field(
    name: &str,
    number: i32,
    ty: Type,
    label: Label,
    type_name: Option<&str>,
) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        r#type: Some(ty as i32),
        label: Some(label as i32),
        type_name: type_name.map(Into::into),
        json_name: Some(json_name(name)),
        ..Default::default()
    }
}

pub(super) fn scalar(name: &str, number: i32, ty: Type) -> FieldDescriptorProto {
    field(name, number, ty, Label::Optional, None)
}

pub(super) fn message_field(name: &str, number: i32, type_name: &str) -> FieldDescriptorProto {
    field(
        name,
        number,
        Type::Message,
        Label::Optional,
        Some(type_name),
    )
}

pub(super) fn repeated_message(name: &str, number: i32, type_name: &str) -> FieldDescriptorProto {
    field(
        name,
        number,
        Type::Message,
        Label::Repeated,
        Some(type_name),
    )
}

pub(super) fn enum_field(name: &str, number: i32, type_name: &str) -> FieldDescriptorProto {
    field(name, number, Type::Enum, Label::Optional, Some(type_name))
}

fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
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

pub(super) fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..Default::default()
    }
}

pub(super) fn enumeration(name: &str, values: &[(&str, i32)]) -> EnumDescriptorProto {
    EnumDescriptorProto {
        name: Some(name.into()),
        value: values
            .iter()
            .map(|(n, v)| EnumValueDescriptorProto {
                name: Some((*n).into()),
                number: Some(*v),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

pub(super) fn file(name: &str, package: &str, deps: &[&str]) -> FileDescriptorProto {
    FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: deps.iter().map(|d| (*d).into()).collect(),
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

fn google_duration() -> FileDescriptorProto {
    let mut f = file("google/protobuf/duration.proto", "google.protobuf", &[]);
    f.message_type = vec![message(
        "Duration",
        vec![
            scalar("seconds", 1, Type::Int64),
            scalar("nanos", 2, Type::Int32),
        ],
    )];
    f
}

fn google_timestamp() -> FileDescriptorProto {
    let mut f = file("google/protobuf/timestamp.proto", "google.protobuf", &[]);
    f.message_type = vec![message(
        "Timestamp",
        vec![
            scalar("seconds", 1, Type::Int64),
            scalar("nanos", 2, Type::Int32),
        ],
    )];
    f
}

fn google_wrappers() -> FileDescriptorProto {
    let mut f = file("google/protobuf/wrappers.proto", "google.protobuf", &[]);
    f.message_type = vec![
        message("UInt64Value", vec![scalar("value", 1, Type::Uint64)]),
        message("UInt32Value", vec![scalar("value", 1, Type::Uint32)]),
    ];
    f
}

fn google_struct() -> FileDescriptorProto {
    let mut f = file("google/protobuf/struct.proto", "google.protobuf", &[]);
    let mut fields_entry = message(
        "FieldsEntry",
        vec![
            scalar("key", 1, Type::String),
            message_field("value", 2, ".google.protobuf.Value"),
        ],
    );
    fields_entry.options = Some(MessageOptions {
        map_entry: Some(true),
        ..Default::default()
    });
    let mut strukt = message(
        "Struct",
        vec![repeated_message(
            "fields",
            1,
            ".google.protobuf.Struct.FieldsEntry",
        )],
    );
    strukt.nested_type = vec![fields_entry];
    let oneof = |mut fd: FieldDescriptorProto| {
        fd.oneof_index = Some(0);
        fd
    };
    let mut value = message(
        "Value",
        vec![
            oneof(enum_field("null_value", 1, ".google.protobuf.NullValue")),
            oneof(scalar("number_value", 2, Type::Double)),
            oneof(scalar("string_value", 3, Type::String)),
            oneof(scalar("bool_value", 4, Type::Bool)),
            oneof(message_field("struct_value", 5, ".google.protobuf.Struct")),
            oneof(message_field("list_value", 6, ".google.protobuf.ListValue")),
        ],
    );
    value.oneof_decl = vec![OneofDescriptorProto {
        name: Some("kind".into()),
        ..Default::default()
    }];
    let list = message(
        "ListValue",
        vec![repeated_message("values", 1, ".google.protobuf.Value")],
    );
    f.message_type = vec![strukt, value, list];
    f.enum_type = vec![enumeration("NullValue", &[("NULL_VALUE", 0)])];
    f
}

/// Envoy's units, shared by `RateLimitUnit` and `RateLimit.Unit`.
const UNITS: &[(&str, i32)] = &[
    ("UNKNOWN", 0),
    ("SECOND", 1),
    ("MINUTE", 2),
    ("HOUR", 3),
    ("DAY", 4),
    ("MONTH", 5),
    ("YEAR", 6),
    ("WEEK", 7),
];

fn envoy_ratelimit_unit() -> FileDescriptorProto {
    let mut f = file("envoy/type/v3/ratelimit_unit.proto", "envoy.type.v3", &[]);
    f.enum_type = vec![enumeration("RateLimitUnit", UNITS)];
    f
}

fn envoy_core_base() -> FileDescriptorProto {
    let mut f = file(
        "envoy/config/core/v3/base.proto",
        "envoy.config.core.v3",
        &[],
    );
    f.message_type = vec![message(
        "HeaderValue",
        vec![
            scalar("key", 1, Type::String),
            scalar("value", 2, Type::String),
            scalar("raw_value", 3, Type::Bytes),
        ],
    )];
    f
}

fn envoy_common_ratelimit() -> FileDescriptorProto {
    let mut f = file(
        "envoy/extensions/common/ratelimit/v3/ratelimit.proto",
        "envoy.extensions.common.ratelimit.v3",
        &[
            "envoy/type/v3/ratelimit_unit.proto",
            "google/protobuf/wrappers.proto",
        ],
    );
    let d = ".envoy.extensions.common.ratelimit.v3.RateLimitDescriptor";
    let mut descriptor = message(
        "RateLimitDescriptor",
        vec![
            repeated_message("entries", 1, &format!("{d}.Entry")),
            message_field("limit", 2, &format!("{d}.RateLimitOverride")),
            message_field("hits_addend", 3, ".google.protobuf.UInt64Value"),
            scalar("is_negative_hits", 4, Type::Bool),
        ],
    );
    descriptor.nested_type = vec![
        message(
            "Entry",
            vec![
                scalar("key", 1, Type::String),
                scalar("value", 2, Type::String),
            ],
        ),
        message(
            "RateLimitOverride",
            vec![
                scalar("requests_per_unit", 1, Type::Uint32),
                enum_field("unit", 2, ".envoy.type.v3.RateLimitUnit"),
            ],
        ),
    ];
    f.message_type = vec![descriptor];
    f
}

fn envoy_rls() -> FileDescriptorProto {
    let mut f = file(
        "envoy/service/ratelimit/v3/rls.proto",
        "envoy.service.ratelimit.v3",
        &[
            "envoy/config/core/v3/base.proto",
            "envoy/extensions/common/ratelimit/v3/ratelimit.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
        ],
    );
    let r = ".envoy.service.ratelimit.v3.RateLimitResponse";
    let request = message(
        "RateLimitRequest",
        vec![
            scalar("domain", 1, Type::String),
            repeated_message(
                "descriptors",
                2,
                ".envoy.extensions.common.ratelimit.v3.RateLimitDescriptor",
            ),
            scalar("hits_addend", 3, Type::Uint32),
        ],
    );
    let mut rate_limit = message(
        "RateLimit",
        vec![
            scalar("name", 3, Type::String),
            scalar("requests_per_unit", 1, Type::Uint32),
            enum_field("unit", 2, &format!("{r}.RateLimit.Unit")),
        ],
    );
    rate_limit.enum_type = vec![enumeration("Unit", UNITS)];
    let mut valid_until = message_field("valid_until", 2, ".google.protobuf.Timestamp");
    valid_until.oneof_index = Some(0);
    let mut quota = message(
        "Quota",
        vec![
            scalar("requests", 1, Type::Uint32),
            valid_until,
            scalar("id", 3, Type::String),
        ],
    );
    quota.oneof_decl = vec![OneofDescriptorProto {
        name: Some("expiration_specifier".into()),
        ..Default::default()
    }];
    let status = message(
        "DescriptorStatus",
        vec![
            enum_field("code", 1, &format!("{r}.Code")),
            message_field("current_limit", 2, &format!("{r}.RateLimit")),
            scalar("limit_remaining", 3, Type::Uint32),
            message_field("duration_until_reset", 4, ".google.protobuf.Duration"),
            message_field("quota", 5, &format!("{r}.Quota")),
        ],
    );
    let mut response = message(
        "RateLimitResponse",
        vec![
            enum_field("overall_code", 1, &format!("{r}.Code")),
            repeated_message("statuses", 2, &format!("{r}.DescriptorStatus")),
            repeated_message(
                "response_headers_to_add",
                3,
                ".envoy.config.core.v3.HeaderValue",
            ),
            repeated_message(
                "request_headers_to_add",
                4,
                ".envoy.config.core.v3.HeaderValue",
            ),
            scalar("raw_body", 5, Type::Bytes),
            message_field("dynamic_metadata", 6, ".google.protobuf.Struct"),
            message_field("quota", 7, &format!("{r}.Quota")),
        ],
    );
    response.nested_type = vec![rate_limit, quota, status];
    response.enum_type = vec![enumeration(
        "Code",
        &[("UNKNOWN", 0), ("OK", 1), ("OVER_LIMIT", 2)],
    )];
    f.message_type = vec![request, response];
    f.service = vec![ServiceDescriptorProto {
        name: Some("RateLimitService".into()),
        method: vec![MethodDescriptorProto {
            name: Some("ShouldRateLimit".into()),
            input_type: Some(".envoy.service.ratelimit.v3.RateLimitRequest".into()),
            output_type: Some(r.into()),
            ..Default::default()
        }],
        ..Default::default()
    }];
    f
}

/// The descriptor set: Envoy's RLS v3 and RLQS v3 services and everything
/// they reach, dependencies first.
pub fn file_descriptor_set() -> FileDescriptorSet {
    let mut file = vec![
        google_duration(),
        google_timestamp(),
        google_wrappers(),
        google_struct(),
        envoy_ratelimit_unit(),
        envoy_core_base(),
        envoy_common_ratelimit(),
        envoy_rls(),
    ];
    file.extend(rlqs::files());
    FileDescriptorSet { file }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn json_names_are_lower_camel_case() {
        assert_eq!(json_name("duration_until_reset"), "durationUntilReset");
        assert_eq!(json_name("domain"), "domain");
    }

    /// The full names (`.package.Message.Nested`) of the messages and enums
    /// a file defines.
    fn defined(f: &FileDescriptorProto) -> HashSet<String> {
        fn walk(prefix: &str, m: &DescriptorProto, out: &mut HashSet<String>) {
            let name = format!("{prefix}.{}", m.name());
            for e in &m.enum_type {
                out.insert(format!("{name}.{}", e.name()));
            }
            for n in &m.nested_type {
                walk(&name, n, out);
            }
            out.insert(name);
        }
        let mut out = HashSet::new();
        let p = format!(".{}", f.package());
        for m in &f.message_type {
            walk(&p, m, &mut out);
        }
        for e in &f.enum_type {
            out.insert(format!("{p}.{}", e.name()));
        }
        out
    }

    /// The type names a file refers to: its fields' and its methods'.
    fn referenced(f: &FileDescriptorProto) -> Vec<String> {
        fn refs(m: &DescriptorProto, out: &mut Vec<String>) {
            for f in &m.field {
                if let Some(t) = &f.type_name {
                    out.push(t.clone());
                }
            }
            for n in &m.nested_type {
                refs(n, out);
            }
        }
        let mut out = Vec::new();
        for m in &f.message_type {
            refs(m, &mut out);
        }
        for s in &f.service {
            for m in &s.method {
                out.extend(m.input_type.clone());
                out.extend(m.output_type.clone());
            }
        }
        out
    }

    #[test]
    fn every_referenced_type_is_defined() {
        let set = file_descriptor_set();
        let all: HashSet<String> = set.file.iter().flat_map(defined).collect();
        for u in set.file.iter().flat_map(referenced) {
            assert!(all.contains(&u), "{u} is referenced but not defined");
        }
    }

    #[test]
    fn each_file_comes_once_after_its_dependencies_and_imports_what_it_uses() {
        let set = file_descriptor_set();
        let mut seen = HashSet::new();
        for f in &set.file {
            for d in &f.dependency {
                assert!(seen.contains(d), "{} needs {d} before it", f.name());
            }
            let mut visible = defined(f);
            for d in set
                .file
                .iter()
                .filter(|g| f.dependency.iter().any(|dep| dep == g.name()))
            {
                visible.extend(defined(d));
            }
            for u in referenced(f) {
                assert!(
                    visible.contains(&u),
                    "{} uses {u} without importing it",
                    f.name()
                );
            }
            assert!(seen.insert(f.name().to_owned()), "{} twice", f.name());
        }
    }

    #[test]
    fn rlqs_is_one_bidirectional_stream() {
        let set = file_descriptor_set();
        let services: Vec<_> = set
            .file
            .iter()
            .filter(|f| f.package() == "envoy.service.rate_limit_quota.v3")
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "RateLimitQuotaService")
            .collect();
        assert_eq!(services.len(), 1, "{services:?}");
        let methods = &services[0].method;
        assert_eq!(methods.len(), 1, "{methods:?}");
        let m = &methods[0];
        assert_eq!(m.name(), "StreamRateLimitQuotas");
        assert!(m.client_streaming() && m.server_streaming(), "{m:?}");
        let p = ".envoy.service.rate_limit_quota.v3";
        assert_eq!(m.input_type(), format!("{p}.RateLimitQuotaUsageReports"));
        assert_eq!(m.output_type(), format!("{p}.RateLimitQuotaResponse"));
    }

    /// Checks `m` and its nested messages: a repeated field `foo_bar` of
    /// nested type `FooBarEntry` is a map, whose entry must say so (with
    /// `key = 1` and `value = 2`). Returns how many maps it saw.
    fn check_map_entries(prefix: &str, m: &DescriptorProto) -> usize {
        let name = format!("{prefix}.{}", m.name());
        let mut maps = 0;
        for fd in &m.field {
            let camel = json_name(fd.name());
            let mut chars = camel.chars();
            let upper: String = chars
                .next()
                .into_iter()
                .flat_map(char::to_uppercase)
                .collect();
            let entry_name = format!("{upper}{}Entry", chars.as_str());
            let Some(entry) = m.nested_type.iter().find(|n| n.name() == entry_name) else {
                continue;
            };
            if fd.label() != Label::Repeated || fd.type_name() != format!("{name}.{entry_name}") {
                continue;
            }
            maps += 1;
            let marked = entry.options.as_ref().and_then(|o| o.map_entry);
            assert_eq!(
                marked,
                Some(true),
                "{name}.{entry_name} not marked a map entry"
            );
            let fields: Vec<_> = entry.field.iter().map(|f| (f.name(), f.number())).collect();
            assert_eq!(fields, [("key", 1), ("value", 2)], "{name}.{entry_name}");
        }
        maps + m
            .nested_type
            .iter()
            .map(|n| check_map_entries(&name, n))
            .sum::<usize>()
    }

    #[test]
    fn every_map_entry_is_marked_as_one() {
        let set = file_descriptor_set();
        let mut maps = 0;
        for f in &set.file {
            let p = format!(".{}", f.package());
            maps += f
                .message_type
                .iter()
                .map(|m| check_map_entries(&p, m))
                .sum::<usize>();
        }
        // Struct.fields and BucketId.bucket.
        assert_eq!(maps, 2);
    }
}
