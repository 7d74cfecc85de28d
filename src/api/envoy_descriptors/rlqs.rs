//! Protobuf descriptors of Envoy's Rate Limit Quota Service (RLQS) v3,
//! `envoy.service.rate_limit_quota.v3.RateLimitQuotaService`, for server
//! reflection: `envoy/type/v3/token_bucket.proto`,
//! `envoy/type/v3/ratelimit_strategy.proto` and
//! `envoy/service/rate_limit_quota/v3/rlqs.proto`.
//!
//! Built in code with [`envoy_descriptors`](super)'s
//! helpers and in its style: every message, field number, type and enum
//! value on the wire is Envoy's own (taken from the `envoy-types` tags);
//! validation and status annotations are left out. The Google and
//! `ratelimit_unit.proto` files these depend on are `envoy_descriptors`'s,
//! which puts these files in its set after them.

use prost_types::field_descriptor_proto::Type;
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, MessageOptions,
    MethodDescriptorProto, OneofDescriptorProto, ServiceDescriptorProto,
};

use super::{enum_field, enumeration, file, message, message_field, repeated_message, scalar};

/// The package of `rlqs.proto`, as a type name prefix.
const RLQS: &str = ".envoy.service.rate_limit_quota.v3";

/// A field as a member of its message's `index`th oneof.
fn in_oneof(mut fd: FieldDescriptorProto, index: i32) -> FieldDescriptorProto {
    fd.oneof_index = Some(index);
    fd
}

/// A oneof declaration.
fn oneof(name: &str) -> OneofDescriptorProto {
    OneofDescriptorProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn envoy_token_bucket() -> FileDescriptorProto {
    let mut f = file(
        "envoy/type/v3/token_bucket.proto",
        "envoy.type.v3",
        &[
            "google/protobuf/duration.proto",
            "google/protobuf/wrappers.proto",
        ],
    );
    f.message_type = vec![message(
        "TokenBucket",
        vec![
            scalar("max_tokens", 1, Type::Uint32),
            message_field("tokens_per_fill", 2, ".google.protobuf.UInt32Value"),
            message_field("fill_interval", 3, ".google.protobuf.Duration"),
        ],
    )];
    f
}

fn envoy_ratelimit_strategy() -> FileDescriptorProto {
    let mut f = file(
        "envoy/type/v3/ratelimit_strategy.proto",
        "envoy.type.v3",
        &[
            "envoy/type/v3/ratelimit_unit.proto",
            "envoy/type/v3/token_bucket.proto",
        ],
    );
    let s = ".envoy.type.v3.RateLimitStrategy";
    let mut strategy = message(
        "RateLimitStrategy",
        vec![
            in_oneof(
                enum_field("blanket_rule", 1, &format!("{s}.BlanketRule")),
                0,
            ),
            in_oneof(
                message_field(
                    "requests_per_time_unit",
                    2,
                    &format!("{s}.RequestsPerTimeUnit"),
                ),
                0,
            ),
            in_oneof(
                message_field("token_bucket", 3, ".envoy.type.v3.TokenBucket"),
                0,
            ),
        ],
    );
    strategy.nested_type = vec![message(
        "RequestsPerTimeUnit",
        vec![
            scalar("requests_per_time_unit", 1, Type::Uint64),
            enum_field("time_unit", 2, ".envoy.type.v3.RateLimitUnit"),
        ],
    )];
    strategy.enum_type = vec![enumeration(
        "BlanketRule",
        &[("ALLOW_ALL", 0), ("DENY_ALL", 1)],
    )];
    strategy.oneof_decl = vec![oneof("strategy")];
    f.message_type = vec![strategy];
    f
}

/// `BucketId { map<string, string> bucket = 1; }`: a map is a repeated
/// nested `BucketEntry { key = 1; value = 2; }` marked as a map entry.
fn bucket_id() -> DescriptorProto {
    let mut entry = message(
        "BucketEntry",
        vec![
            scalar("key", 1, Type::String),
            scalar("value", 2, Type::String),
        ],
    );
    entry.options = Some(MessageOptions {
        map_entry: Some(true),
        ..Default::default()
    });
    let mut id = message(
        "BucketId",
        vec![repeated_message(
            "bucket",
            1,
            &format!("{RLQS}.BucketId.BucketEntry"),
        )],
    );
    id.nested_type = vec![entry];
    id
}

fn usage_reports() -> DescriptorProto {
    let mut reports = message(
        "RateLimitQuotaUsageReports",
        vec![
            scalar("domain", 1, Type::String),
            repeated_message(
                "bucket_quota_usages",
                2,
                &format!("{RLQS}.RateLimitQuotaUsageReports.BucketQuotaUsage"),
            ),
        ],
    );
    reports.nested_type = vec![message(
        "BucketQuotaUsage",
        vec![
            message_field("bucket_id", 1, &format!("{RLQS}.BucketId")),
            message_field("time_elapsed", 2, ".google.protobuf.Duration"),
            scalar("num_requests_allowed", 3, Type::Uint64),
            scalar("num_requests_denied", 4, Type::Uint64),
        ],
    )];
    reports
}

fn quota_response() -> DescriptorProto {
    let a = format!("{RLQS}.RateLimitQuotaResponse.BucketAction");
    let mut action = message(
        "BucketAction",
        vec![
            message_field("bucket_id", 1, &format!("{RLQS}.BucketId")),
            in_oneof(
                message_field(
                    "quota_assignment_action",
                    2,
                    &format!("{a}.QuotaAssignmentAction"),
                ),
                0,
            ),
            in_oneof(
                message_field("abandon_action", 3, &format!("{a}.AbandonAction")),
                0,
            ),
        ],
    );
    action.nested_type = vec![
        message(
            "QuotaAssignmentAction",
            vec![
                message_field("assignment_time_to_live", 2, ".google.protobuf.Duration"),
                message_field("rate_limit_strategy", 3, ".envoy.type.v3.RateLimitStrategy"),
            ],
        ),
        message("AbandonAction", vec![]),
    ];
    action.oneof_decl = vec![oneof("bucket_action")];
    let mut response = message(
        "RateLimitQuotaResponse",
        vec![repeated_message("bucket_action", 1, &a)],
    );
    response.nested_type = vec![action];
    response
}

fn envoy_rlqs() -> FileDescriptorProto {
    let mut f = file(
        "envoy/service/rate_limit_quota/v3/rlqs.proto",
        "envoy.service.rate_limit_quota.v3",
        &[
            "envoy/type/v3/ratelimit_strategy.proto",
            "google/protobuf/duration.proto",
        ],
    );
    f.message_type = vec![usage_reports(), quota_response(), bucket_id()];
    f.service = vec![ServiceDescriptorProto {
        name: Some("RateLimitQuotaService".into()),
        method: vec![MethodDescriptorProto {
            name: Some("StreamRateLimitQuotas".into()),
            input_type: Some(format!("{RLQS}.RateLimitQuotaUsageReports")),
            output_type: Some(format!("{RLQS}.RateLimitQuotaResponse")),
            client_streaming: Some(true),
            server_streaming: Some(true),
            ..Default::default()
        }],
        ..Default::default()
    }];
    f
}

/// The RLQS files, dependencies first. They also depend on
/// `google/protobuf/{duration,wrappers}.proto` and
/// `envoy/type/v3/ratelimit_unit.proto`, which the caller's set holds.
pub(super) fn files() -> Vec<FileDescriptorProto> {
    vec![
        envoy_token_bucket(),
        envoy_ratelimit_strategy(),
        envoy_rlqs(),
    ]
}
