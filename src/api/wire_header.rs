//! `quotad.v1.Header`, the response header the native API returns, as the
//! generated code holds it (`extern_path` in `build.rs`).
//!
//! prost would make its name a `String`, copied from a `&'static str` for
//! each header of each answer. Here the name is a `Cow`: borrowed for
//! the headers quotad sends, owned for those a client decodes. That copy
//! and its free were half of what the RateLimit headers cost a native
//! `Check` (`BENCHMARKS.md`, issue 24, "Lever 8"). The wire is the
//! message's: fields 1 and 2, strings, left out when empty, and a test
//! checks the bytes against a prost-derived twin.
//!
//! It implements [`prost::Message`] by hand with prost's own encoding
//! functions (public, if left out of prost's documentation).

use std::borrow::Cow;

use prost::DecodeError;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    self, DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

/// One response header: a field name and its value.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct Header {
    /// Field name.
    pub name: Cow<'static, str>,
    /// Field value.
    pub value: String,
}

const NAME: u32 = 1;
const VALUE: u32 = 2;

fn put(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// Writes a header's fields, `name` and `value`. They are also Envoy's
/// `HeaderValue` `key` (1) and `value` (2), which the RLS route writes
/// with this ([`super::rls_reply`]).
pub(crate) fn encode_fields(name: &str, value: &str, buf: &mut impl BufMut) {
    put(NAME, name, buf);
    put(VALUE, value, buf);
}

/// What [`encode_fields`] writes, in bytes.
pub(crate) fn fields_len(name: &str, value: &str) -> usize {
    len(NAME, name) + len(VALUE, value)
}

impl prost::Message for Header {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_fields(&self.name, &self.value, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            NAME => {
                let mut name = match std::mem::take(&mut self.name) {
                    Cow::Owned(s) => s,
                    Cow::Borrowed(_) => String::new(),
                };
                let merged = encoding::string::merge(wire_type, &mut name, buf, ctx);
                self.name = Cow::Owned(name);
                merged.map_err(|mut e| {
                    e.push("Header", "name");
                    e
                })
            }
            VALUE => {
                encoding::string::merge(wire_type, &mut self.value, buf, ctx).map_err(|mut e| {
                    e.push("Header", "value");
                    e
                })
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        fields_len(&self.name, &self.value)
    }

    fn clear(&mut self) {
        self.name = Cow::Borrowed("");
        self.value.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    /// What prost derives for the message.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        value: String,
    }

    proptest! {
        /// The same bytes as prost's, both ways, for any strings
        /// (empty ones, long ones with two-byte lengths).
        #[test]
        fn reads_and_writes_as_prost_does(name in ".{0,200}", value in ".{0,200}", borrowed: bool) {
            let ours = Header {
                name: if borrowed { Cow::Borrowed("RateLimit-Policy") } else { Cow::Owned(name.clone()) },
                value: value.clone(),
            };
            let theirs = Derived { name: ours.name.to_string(), value };
            prop_assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());
            prop_assert_eq!(ours.encoded_len(), theirs.encoded_len());
            let back = Header::decode(theirs.encode_to_vec().as_slice()).expect("decodes");
            prop_assert_eq!(back, ours);
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_bad_utf8_is_an_error() {
        // name "a", an unknown varint field 3, value "b".
        let bytes = [0x0a, 1, b'a', 0x18, 7, 0x12, 1, b'b'];
        let h = Header::decode(&bytes[..]).expect("decodes");
        assert_eq!((h.name.as_ref(), h.value.as_str()), ("a", "b"));
        let bad = [0x0a, 2, 0xff, 0xfe];
        assert!(Header::decode(&bad[..]).is_err());
    }
}
