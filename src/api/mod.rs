//! The front doors: each turns its wire message into the engine's items,
//! calls the one engine entry ([`Engine::decide`](crate::engine::Engine::decide)),
//! and renders its [`Answer`](crate::engine::Answer) as its wire message.
//!
//! - `native`: `quotad.v1.RateLimiter` (Check, CheckBatch, CheckStream),
//!   with `report` (Report, ReportStream) and `leases`;
//! - `envoy_rls`: `envoy.service.ratelimit.v3.RateLimitService`, served
//!   by `rls_server`, its answers encoded by `rls_reply`;
//! - `rlqs`: `envoy.service.rate_limit_quota.v3.RateLimitQuotaService`
//!   (fair shares of global rates, streamed to Envoys);
//! - `validate` and `error`: caller input checks and the one mapping from
//!   request errors to `INVALID_ARGUMENT`; `codec` maps undecodable
//!   messages to `INVALID_ARGUMENT` too (both gRPC APIs).

pub mod answers;
pub mod codec;
pub mod envoy_descriptors;
mod envoy_metadata;
pub mod envoy_rls;
pub mod error;
pub mod headers;
pub mod http;
pub mod leases;
pub mod native;
pub mod report;
pub mod request_id;
pub mod rlqs;
pub mod rls_reply;
pub mod rls_server;
pub mod validate;
pub mod wire_header;

use crate::core::Nanos;
use crate::core::clock::NANOS_PER_SEC;

/// Code generated from `proto/quotad/v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::too_many_lines)]
    tonic::include_proto!("quotad.v1");
    pub use super::wire_header::Header;

    /// Encoded descriptor set of `quotad.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quotad_descriptor");
}

/// A nanosecond count as protobuf `Duration` parts (seconds, nanos).
/// Both our `prost_types::Duration` and envoy-types' own are built from it.
pub(crate) fn duration_parts(ns: Nanos) -> (i64, i32) {
    // u64::MAX / 1e9 ≈ 1.8e10 fits in i64; nanos < 1e9 fits in i32.
    ((ns / NANOS_PER_SEC) as i64, (ns % NANOS_PER_SEC) as i32)
}

/// A nanosecond count as a protobuf `Duration`.
pub(crate) fn duration(ns: Nanos) -> prost_types::Duration {
    let (seconds, nanos) = duration_parts(ns);
    prost_types::Duration { seconds, nanos }
}

/// A decision's reason as the wire's.
pub(crate) fn deny_reason(r: Option<crate::core::DenyReason>) -> pb::DenyReason {
    match r {
        None => pb::DenyReason::Unspecified,
        Some(crate::core::DenyReason::Limited) => pb::DenyReason::Limited,
        Some(crate::core::DenyReason::CostExceedsCapacity) => pb::DenyReason::CostExceedsCapacity,
        Some(crate::core::DenyReason::Unavailable) => pb::DenyReason::Unavailable,
        Some(crate::core::DenyReason::Blocked) => pb::DenyReason::Blocked,
    }
}

/// A response header as the native API sends it.
impl From<headers::Header> for pb::Header {
    fn from(h: headers::Header) -> Self {
        Self {
            name: std::borrow::Cow::Borrowed(h.name),
            value: h.value,
        }
    }
}

/// A Unix time in nanoseconds as a protobuf `Timestamp`.
pub fn timestamp(t: Nanos) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (t / NANOS_PER_SEC) as i64,
        nanos: (t % NANOS_PER_SEC) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_without_overflow() {
        let d = duration(1_500_000_000);
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
        let d = duration(u64::MAX);
        assert_eq!(d.seconds, 18_446_744_073);
        assert_eq!(d.nanos, 709_551_615);
    }
}
