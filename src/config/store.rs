//! The config's `store` section: the cap on tracked buckets and on
//! concurrency leases, the idle
//! sweep and the secret API keys are hashed with; its raw form,
//! validation and summary line. The secret never appears in `Debug`
//! output, messages or the summary.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::values::{Dur, format_duration};
use crate::diag::{Issue, Seg};
use crate::limits::file::Positive;

/// The `store` section.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Hard cap on tracked buckets (cells).
    pub max_tracked_keys: usize,
    /// How often idle buckets are dropped.
    pub sweep_interval: Duration,
    /// Hard cap on concurrency leases this node holds (`store.max_leases`).
    pub max_leases: usize,
    /// Secret for keyed hashing of API keys; random per process when `None`.
    /// `Debug` prints `<redacted>`.
    pub hash_secret: Option<[u8; 16]>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            max_tracked_keys: 1_000_000,
            sweep_interval: Duration::from_secs(10),
            max_leases: 1_000_000,
            hash_secret: None,
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("max_tracked_keys", &self.max_tracked_keys)
            .field("sweep_interval", &self.sweep_interval)
            .field("max_leases", &self.max_leases)
            .field(
                "hash_secret",
                &format_args!(
                    "{}",
                    if self.hash_secret.is_some() {
                        "<redacted>"
                    } else {
                        "None"
                    }
                ),
            )
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the store section (a mapping)")]
pub(super) struct StoreRaw {
    max_tracked_keys: Option<Positive>,
    sweep_interval: Option<Dur>,
    max_leases: Option<Positive>,
    hash_secret: Option<Secret>,
}

impl StoreRaw {
    /// Validates the section.
    pub(super) fn build(self) -> Result<StoreSettings, Issue> {
        let mut store = StoreSettings::default();
        if let Some(p) = self.max_tracked_keys {
            store.max_tracked_keys = usize::try_from(p.0.get()).map_err(|_| {
                Issue::new(
                    vec![Seg::key("store"), Seg::key("max_tracked_keys")],
                    format!("{} is too large for this platform", p.0),
                )
            })?;
        }
        if let Some(p) = self.max_leases {
            store.max_leases = usize::try_from(p.0.get()).map_err(|_| {
                Issue::new(
                    vec![Seg::key("store"), Seg::key("max_leases")],
                    format!("{} is too large for this platform", p.0),
                )
            })?;
        }
        if let Some(d) = self.sweep_interval {
            store.sweep_interval = d.0;
        }
        store.hash_secret = self.hash_secret.map(|s| s.0);
        Ok(store)
    }
}

impl StoreSettings {
    /// The summary's `store:` line: whether there is a secret, never it.
    pub(super) fn summary_line(&self) -> String {
        format!(
            "store: max tracked keys {}, max leases {}, sweep every {}, hash secret {}",
            self.max_tracked_keys,
            self.max_leases,
            format_duration(self.sweep_interval),
            if self.hash_secret.is_some() {
                "set"
            } else {
                "random per process"
            }
        )
    }
}

/// `hash_secret`: exactly 32 hex digits. Messages never echo the value.
struct Secret([u8; 16]);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_hash_secret(&s).map(Secret).map_err(de::Error::custom)
    }
}

/// The hash secret from outside the config file: `env` (the value of
/// `QUOTAD_HASH_SECRET`) or `file` (`--hash-secret-file`), not both;
/// `None` without either. Errors name where the secret came from, never
/// its value.
pub fn outside_hash_secret(
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<[u8; 16]>, String> {
    match (env, file) {
        (Some(_), Some(_)) => Err(
            "QUOTAD_HASH_SECRET and --hash-secret-file both give the hash secret: give one"
                .to_owned(),
        ),
        (Some(text), None) => parse_hash_secret(text)
            .map(Some)
            .map_err(|why| format!("QUOTAD_HASH_SECRET: {why}")),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--hash-secret-file: cannot read {}: {e}", path.display()))?;
            parse_hash_secret(&text)
                .map(Some)
                .map_err(|why| format!("--hash-secret-file {}: {why}", path.display()))
        }
        (None, None) => Ok(None),
    }
}

/// A hash secret as written (`store.hash_secret`, `QUOTAD_HASH_SECRET`, a
/// `--hash-secret-file`): exactly 32 hex digits, surrounding whitespace
/// ignored. Errors never echo the value.
pub fn parse_hash_secret(s: &str) -> Result<[u8; 16], String> {
    let s = s.trim();
    let n = s.chars().count();
    if n != 32 {
        return Err(format!(
            "expected 32 hex digits (a 128-bit secret, such as `openssl rand -hex 16` prints), got {n} characters"
        ));
    }
    let not_hex = || "expected 32 hex digits (0-9, a-f), found another character".to_owned();
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_hex());
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| not_hex())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| not_hex())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::error;

    #[test]
    fn hash_secret_is_never_echoed() {
        let secret = "00112233445566778899aabbccddeeffXX";
        let e = error(&format!("store:\n  hash_secret: \"{secret}\"\n"));
        assert!(!e.contains("00112233"), "{e}");
    }
}
