//! The config's `metrics` section: the opt-in "heaviest keys" gauge.
//!
//! ```yaml
//! metrics:
//!   heavy_keys: 10        # report the 10 keys with the most checks (default 0: off)
//!   heavy_window: 1m      # ... counted over this window (default 1m)
//!   key_names:            # operators' names for keys, by keyed hash
//!     "3f1c9a0b7d2e4c65": acme-prod
//! ```
//!
//! Every other metric's labels come from the config (plan and domain
//! names) or from fixed sets, so nothing grows with the number of API
//! keys. The heaviest-keys gauge is the one per-key view, bounded by
//! `heavy_keys` and labelled only with the key's 16-hex keyed hash (as
//! `quotactl` shows it) and, when given here, the operator's name for it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::values::Dur;
use crate::diag::{Issue, Seg, check_name};

/// Most keys `metrics.heavy_keys` may ask for: the gauge is for the top
/// of the list, not a per-key export.
pub const MAX_HEAVY_KEYS: usize = 100;

/// The `metrics` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// How many of the heaviest keys to report (0: off, and nothing is
    /// tracked on the check path).
    pub heavy_keys: usize,
    /// The window their checks are counted over.
    pub heavy_window: Duration,
    /// Operators' names for keys, by keyed hash (16 lowercase hex digits).
    pub key_names: BTreeMap<u64, String>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            heavy_keys: 0,
            heavy_window: Duration::from_secs(60),
            key_names: BTreeMap::new(),
        }
    }
}

/// `metrics` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the metrics section (a mapping)")]
pub(super) struct MetricsRaw {
    heavy_keys: Option<u64>,
    heavy_window: Option<Dur>,
    key_names: Option<BTreeMap<String, String>>,
}

fn at(field: &str) -> Vec<Seg> {
    vec![Seg::key("metrics"), Seg::key(field)]
}

impl MetricsRaw {
    /// Validates the section.
    pub(super) fn build(self) -> Result<MetricsSettings, Issue> {
        let d = MetricsSettings::default();
        let heavy_keys = match self.heavy_keys {
            None => d.heavy_keys,
            Some(k) if k > MAX_HEAVY_KEYS as u64 => {
                return Err(Issue::new(
                    at("heavy_keys"),
                    format!(
                        "at most {MAX_HEAVY_KEYS} (got {k}): the gauge is for the top of the list, not a per-key export"
                    ),
                ));
            }
            Some(k) => k as usize,
        };
        let heavy_window = match self.heavy_window {
            None => d.heavy_window,
            Some(w) if w.0 < Duration::from_secs(1) => {
                return Err(Issue::new(at("heavy_window"), "must be at least 1s"));
            }
            Some(w) => w.0,
        };
        let mut key_names = BTreeMap::new();
        for (hash, name) in self.key_names.unwrap_or_default() {
            // The path leaves the entry's own text out: an operator who
            // wrote a key there by mistake must not see it logged.
            let path = || at("key_names");
            let parsed = (hash.len() == 16
                && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| u64::from_str_radix(&hash, 16).ok())
            .flatten()
            .ok_or_else(|| {
                Issue::new(
                    path(),
                    "a key's keyed hash is 16 lowercase hex digits (as `quotactl usage` shows it), never the key itself",
                )
            })?;
            check_name(&name).map_err(|why| Issue::new(path(), why))?;
            key_names.insert(parsed, name);
        }
        Ok(MetricsSettings {
            heavy_keys,
            heavy_window,
            key_names,
        })
    }
}

impl MetricsSettings {
    /// Naming keys needs `store.hash_secret` (`have_secret`): without it
    /// the hashes change at every start.
    pub(super) fn check_secret(&self, have_secret: bool) -> Result<(), Issue> {
        if !self.key_names.is_empty() && !have_secret {
            return Err(Issue::new(
                at("key_names"),
                "naming keys by hash needs store.hash_secret: without it the hashes change at every start",
            ));
        }
        Ok(())
    }
}
