//! The config's `requests` section: caps on what a caller may send (key
//! length, cost, batch size, RLS descriptors and entries); its raw form,
//! validation and summary line.

use serde::Deserialize;

use crate::diag::{Issue, Seg};
use crate::limits::file::Positive;

/// Largest `requests.max_key_bytes`.
const MAX_KEY_BYTES_CAP: u64 = 65_536;

/// The `requests` section: caps on what a caller may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCaps {
    /// Longest API key, in bytes.
    pub max_key_bytes: usize,
    /// Largest cost (units) in one check.
    pub max_cost: u64,
    /// Checks in one `CheckBatch`.
    pub max_batch: usize,
    /// Descriptors in one Envoy RLS request.
    pub max_descriptors: usize,
    /// Entries in one RLS descriptor.
    pub max_entries: usize,
    /// Longest RLS descriptor entry key or value, in bytes (the API key
    /// entry is held to `max_key_bytes`).
    pub max_entry_bytes: usize,
}

impl Default for RequestCaps {
    fn default() -> Self {
        Self {
            max_key_bytes: 256,
            max_cost: 1_000_000_000,
            max_batch: 1000,
            max_descriptors: 64,
            max_entries: 32,
            max_entry_bytes: 4096,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the requests section (a mapping)")]
pub(super) struct RequestsRaw {
    max_key_bytes: Option<Positive>,
    max_cost: Option<Positive>,
    max_batch: Option<Positive>,
    max_descriptors: Option<Positive>,
    max_entries: Option<Positive>,
    max_entry_bytes: Option<Positive>,
}

impl RequestsRaw {
    /// Validates the section.
    pub(super) fn build(self) -> Result<RequestCaps, Issue> {
        let r = self;
        let d = RequestCaps::default();
        let size = |v: Option<Positive>, field: &str, default: usize| -> Result<usize, Issue> {
            v.map_or(Ok(default), |p| {
                usize::try_from(p.0.get()).map_err(|_| {
                    Issue::new(
                        vec![Seg::key("requests"), Seg::key(field)],
                        format!("{} is too large for this platform", p.0),
                    )
                })
            })
        };
        if let Some(k) = r.max_key_bytes
            && k.0.get() > MAX_KEY_BYTES_CAP
        {
            return Err(Issue::new(
                vec![Seg::key("requests"), Seg::key("max_key_bytes")],
                format!("must be at most {MAX_KEY_BYTES_CAP} (got {})", k.0),
            ));
        }
        Ok(RequestCaps {
            max_key_bytes: size(r.max_key_bytes, "max_key_bytes", d.max_key_bytes)?,
            max_cost: r.max_cost.map_or(d.max_cost, |p| p.0.get()),
            max_batch: size(r.max_batch, "max_batch", d.max_batch)?,
            max_descriptors: size(r.max_descriptors, "max_descriptors", d.max_descriptors)?,
            max_entries: size(r.max_entries, "max_entries", d.max_entries)?,
            max_entry_bytes: size(r.max_entry_bytes, "max_entry_bytes", d.max_entry_bytes)?,
        })
    }
}

impl RequestCaps {
    /// The summary's `requests:` line.
    pub(super) fn summary_line(&self) -> String {
        let r = self;
        format!(
            "requests: max key {} bytes, max cost {}, max batch {}, max descriptors {}, max entries {}, max entry {} bytes",
            r.max_key_bytes,
            r.max_cost,
            r.max_batch,
            r.max_descriptors,
            r.max_entries,
            r.max_entry_bytes
        )
    }
}
