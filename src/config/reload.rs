//! The config's `reload` section: whether and how often the files the
//! config was read from are watched for changes, its defaults and its
//! summary line.
//!
//! ```yaml
//! reload: { watch: true, poll_interval: 1s, debounce: 250ms }
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::values::{Dur, format_duration};

/// The `reload` section: watching the config's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSettings {
    /// Reload when the config, limits or TLS files change (SIGHUP and the
    /// admin API's Reload work either way).
    pub watch: bool,
    /// How often the files are looked at.
    pub poll_interval: Duration,
    /// How long a change must stay put before it is loaded (editors and
    /// ConfigMap updates write in steps).
    pub debounce: Duration,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(250),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the reload section (a mapping)")]
pub(super) struct ReloadRaw {
    watch: Option<bool>,
    poll_interval: Option<Dur>,
    debounce: Option<Dur>,
}

impl ReloadRaw {
    pub(super) fn build(self) -> ReloadSettings {
        let d = ReloadSettings::default();
        ReloadSettings {
            watch: self.watch.unwrap_or(d.watch),
            poll_interval: self.poll_interval.map_or(d.poll_interval, |p| p.0),
            debounce: self.debounce.map_or(d.debounce, |p| p.0),
        }
    }
}

impl ReloadSettings {
    /// The summary's `reload:` line.
    pub(super) fn summary_line(&self) -> String {
        if self.watch {
            format!(
                "reload: on SIGHUP, admin Reload, and file changes (polled every {}, debounce {})",
                format_duration(self.poll_interval),
                format_duration(self.debounce)
            )
        } else {
            "reload: on SIGHUP and admin Reload".to_owned()
        }
    }
}
