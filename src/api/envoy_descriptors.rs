//! Protobuf descriptors of Envoy's Rate Limit Service v3, for server
//! reflection, so `grpcurl` and other reflection clients can call
//! `envoy.service.ratelimit.v3.RateLimitService` without Envoy's `.proto`
//! files.
//!
//! The `envoy-types` crate ships Envoy's generated Rust types but not their
//! descriptors, and we do not vendor Envoy's protos. Instead this module
//! describes, in code, the subset of each file that the service reaches:
//! every message, field number, type and enum value on the wire is Envoy's
//! own (taken from the `envoy-types` tags; `tests/health.rs` fetches these
//! descriptors through reflection and round-trips real requests and
//! responses through them); validation annotations and unrelated messages
//! are left out.

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

fn scalar(name: &str, number: i32, ty: Type) -> FieldDescriptorProto {
    field(name, number, ty, Label::Optional, None)
}

fn message_field(name: &str, number: i32, type_name: &str) -> FieldDescriptorProto {
    field(
        name,
        number,
        Type::Message,
        Label::Optional,
        Some(type_name),
    )
}

fn repeated_message(name: &str, number: i32, type_name: &str) -> FieldDescriptorProto {
    field(
        name,
        number,
        Type::Message,
        Label::Repeated,
        Some(type_name),
    )
}

fn enum_field(name: &str, number: i32, type_name: &str) -> FieldDescriptorProto {
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

fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..Default::default()
    }
}

fn enumeration(name: &str, values: &[(&str, i32)]) -> EnumDescriptorProto {
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

fn file(name: &str, package: &str, deps: &[&str]) -> FileDescriptorProto {
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
    f.message_type = vec![message(
        "UInt64Value",
        vec![scalar("value", 1, Type::Uint64)],
    )];
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

/// The descriptor set: Envoy's RLS v3 service and everything it reaches,
/// dependencies first.
pub fn file_descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet {
        file: vec![
            google_duration(),
            google_timestamp(),
            google_wrappers(),
            google_struct(),
            envoy_ratelimit_unit(),
            envoy_core_base(),
            envoy_common_ratelimit(),
            envoy_rls(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_lower_camel_case() {
        assert_eq!(json_name("duration_until_reset"), "durationUntilReset");
        assert_eq!(json_name("domain"), "domain");
    }

    #[test]
    fn every_referenced_type_is_defined() {
        let set = file_descriptor_set();
        let mut defined = std::collections::HashSet::new();
        fn walk(prefix: &str, m: &DescriptorProto, out: &mut std::collections::HashSet<String>) {
            let name = format!("{prefix}.{}", m.name());
            for e in &m.enum_type {
                out.insert(format!("{name}.{}", e.name()));
            }
            for n in &m.nested_type {
                walk(&name, n, out);
            }
            out.insert(name);
        }
        for f in &set.file {
            let p = format!(".{}", f.package());
            for m in &f.message_type {
                walk(&p, m, &mut defined);
            }
            for e in &f.enum_type {
                defined.insert(format!("{p}.{}", e.name()));
            }
        }
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
        let mut used = Vec::new();
        for f in &set.file {
            for m in &f.message_type {
                refs(m, &mut used);
            }
        }
        for u in used {
            assert!(defined.contains(&u), "{u} is referenced but not defined");
        }
    }
}
