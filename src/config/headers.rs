//! The config's `response_headers` setting: which rate-limit headers
//! answers carry (off, draft03, draft11 or both), as written and as used,
//! and its summary line.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::diag::one_of;

/// Which rate-limit headers answers carry (`response_headers`); rendered
/// by [`crate::api::headers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeaderStyle {
    /// None at all (envoyproxy/ratelimit's default).
    Off,
    /// `RateLimit-Limit`, `-Remaining`, `-Reset` and `Retry-After`.
    Draft03,
    /// `RateLimit-Policy`, `RateLimit` and `Retry-After`.
    Draft11,
    /// Both sets (one `Retry-After`).
    #[default]
    Both,
}

impl HeaderStyle {
    /// Every style, in the order messages list them.
    pub const ALL: [HeaderStyle; 4] = [
        HeaderStyle::Off,
        HeaderStyle::Draft03,
        HeaderStyle::Draft11,
        HeaderStyle::Both,
    ];

    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderStyle::Off => "off",
            HeaderStyle::Draft03 => "draft03",
            HeaderStyle::Draft11 => "draft11",
            HeaderStyle::Both => "both",
        }
    }

    /// Whether the draft-03 fields are sent.
    pub fn draft03(self) -> bool {
        matches!(self, HeaderStyle::Draft03 | HeaderStyle::Both)
    }

    /// Whether the draft-11 fields are sent.
    pub fn draft11(self) -> bool {
        matches!(self, HeaderStyle::Draft11 | HeaderStyle::Both)
    }
}

/// `response_headers`: off, draft03, draft11 or both.
pub(super) struct StyleRaw(pub(super) HeaderStyle);

impl<'de> Deserialize<'de> for StyleRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StyleRaw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("off, draft03, draft11 or both")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StyleRaw, E> {
                one_of("header style", v, HeaderStyle::ALL, HeaderStyle::as_str)
                    .map(StyleRaw)
                    .map_err(E::custom)
            }
            // YAML 1.1 reads a bare `off` as false.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<StyleRaw, E> {
                if v {
                    Err(E::custom(
                        "expected off, draft03, draft11 or both (got true)",
                    ))
                } else {
                    Ok(StyleRaw(HeaderStyle::Off))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl HeaderStyle {
    /// The summary's `response headers:` line.
    pub(super) fn summary_line(self) -> String {
        format!("response headers: {}", self.as_str())
    }
}
