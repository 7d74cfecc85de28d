//! An Envoy RLS answer on its way out, and its wire encoding.
//!
//! [`RlsReply`] is a `RateLimitResponse` whose RateLimit headers are still
//! quotad's [`Header`]s (a static name, a value rendered for this call).
//! The gRPC route writes them straight into the frame
//! ([`RlsReply::encode`]) instead of copying each into Envoy's
//! `HeaderValue` (two `String`s each) for prost to walk: that conversion
//! was most of what the headers cost per call (`BENCHMARKS.md`, issue 24,
//! "Lever 7"). The bytes are exactly prost's for the same response, field
//! by field in tag order; the HTTP door's JSON takes the
//! `RateLimitResponse` ([`RlsReply::into_response`]).

use bytes::BufMut;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use prost::{Message, encode_length_delimiter, length_delimiter_len};

use super::headers::Header;
use super::wire_header;

/// An RLS answer: the response, and the headers to add after any it holds
/// in `response_headers_to_add`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RlsReply {
    /// Everything but [`RlsReply::headers`].
    pub response: RateLimitResponse,
    /// `response_headers_to_add`, after the response's own.
    pub headers: Vec<Header>,
}

/// The buffer has less room than the answer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the answer needs {need} bytes, the buffer has room for {room}")]
pub struct NoRoom {
    /// The answer's length.
    pub need: usize,
    /// What the buffer had left.
    pub room: usize,
}

/// The key of `RateLimitResponse.response_headers_to_add` (field 3,
/// length-delimited).
const HEADERS_TO_ADD: u8 = 3 << 3 | 2;

impl RlsReply {
    /// The answer as Envoy's message, the headers moved into
    /// `response_headers_to_add`.
    pub fn into_response(self) -> RateLimitResponse {
        let mut response = self.response;
        response
            .response_headers_to_add
            .extend(self.headers.into_iter().map(|h| HeaderValue {
                key: h.name.to_owned(),
                value: h.value,
                ..Default::default()
            }));
        response
    }

    /// Writes the answer as prost writes [`RlsReply::into_response`]'s
    /// message: the fields before `response_headers_to_add`, the headers,
    /// then the fields after it.
    pub fn encode(self, buf: &mut impl BufMut) -> Result<(), NoRoom> {
        let RateLimitResponse {
            overall_code,
            statuses,
            response_headers_to_add,
            request_headers_to_add,
            raw_body,
            dynamic_metadata,
            quota,
        } = self.response;
        let head = RateLimitResponse {
            overall_code,
            statuses,
            response_headers_to_add,
            ..Default::default()
        };
        let tail = RateLimitResponse {
            request_headers_to_add,
            raw_body,
            dynamic_metadata,
            quota,
            ..Default::default()
        };
        let headers: usize = self.headers.iter().map(field_len).sum();
        let need = head.encoded_len() + headers + tail.encoded_len();
        let room = buf.remaining_mut();
        if room < need {
            return Err(NoRoom { need, room });
        }
        // With room for all of it checked, none of these can fail.
        let no_room = |_| NoRoom { need, room };
        head.encode(buf).map_err(no_room)?;
        for h in &self.headers {
            buf.put_u8(HEADERS_TO_ADD);
            encode_length_delimiter(wire_header::fields_len(h.name, &h.value), buf)
                .map_err(no_room)?;
            wire_header::encode_fields(h.name, &h.value, buf);
        }
        tail.encode(buf).map_err(no_room)
    }
}

/// A header's `response_headers_to_add` field on the wire.
fn field_len(h: &Header) -> usize {
    let body = wire_header::fields_len(h.name, &h.value);
    1 + length_delimiter_len(body) + body
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        Code, DescriptorStatus,
    };
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use proptest::prelude::*;

    const NAMES: [&str; 4] = ["RateLimit", "RateLimit-Policy", "Retry-After", ""];

    fn reply(statuses: usize, headers: &[(usize, String)], tail: bool) -> RlsReply {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: (0..statuses)
                .map(|i| DescriptorStatus {
                    code: Code::Ok as i32,
                    limit_remaining: i as u32,
                    ..Default::default()
                })
                .collect(),
            response_headers_to_add: if tail {
                vec![HeaderValue {
                    key: "x-own".into(),
                    value: "1".into(),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            raw_body: if tail { b"body".to_vec() } else { Vec::new() },
            dynamic_metadata: tail.then(|| Struct {
                fields: [(
                    "k".to_owned(),
                    Value {
                        kind: Some(Kind::StringValue("v".into())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        };
        RlsReply {
            response,
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: NAMES[n % NAMES.len()],
                    value: v.clone(),
                })
                .collect(),
        }
    }

    fn encoded(r: RlsReply) -> Vec<u8> {
        let mut buf = Vec::new();
        r.encode(&mut buf).expect("a Vec has room");
        buf
    }

    #[test]
    fn the_headers_sit_between_the_fields_before_and_after_them() {
        let headers = [(0, "\"p\";r=5;t=1".to_owned()), (2, "7".to_owned())];
        for tail in [false, true] {
            let r = reply(2, &headers, tail);
            let whole = r.clone().into_response();
            assert_eq!(encoded(r), whole.encode_to_vec(), "tail: {tail}");
            let back =
                RateLimitResponse::decode(whole.encode_to_vec().as_slice()).expect("decodes");
            assert_eq!(back, whole);
        }
    }

    #[test]
    fn a_buffer_without_room_is_an_error_not_a_panic() {
        let r = reply(1, &[(0, "x".repeat(100))], false);
        let mut buf = [0u8; 16];
        assert!(r.encode(&mut &mut buf[..]).is_err());
    }

    proptest! {
        /// Byte for byte what prost writes, for any headers (empty names
        /// and values, values long enough for two-byte lengths).
        #[test]
        fn encodes_as_prost_does(
            statuses in 0usize..4,
            headers in proptest::collection::vec((0usize..4, ".{0,200}"), 0..7),
            tail: bool,
        ) {
            let r = reply(statuses, &headers, tail);
            let whole = r.clone().into_response();
            prop_assert_eq!(encoded(r), whole.encode_to_vec());
        }
    }
}
