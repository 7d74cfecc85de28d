//! The audit trail: one record for every change made through the admin
//! API, saying who (token id, client certificate subject, address), what
//! (the call and the key's hash), when, and the state before and after.
//!
//! Each record is a log line at target `quotad::audit` and, with
//! `admin.audit_file`, one JSON object appended to that file (a line
//! each, flushed as written), for a retention of its own. Records name
//! keys by their keyed hash only; the operator's `reason` is kept as
//! given (it is checked to be one line).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::core::Nanos;
use crate::core::clock::rfc3339;
use crate::telemetry::Metrics;

use super::auth::Caller;

/// One admin change.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When (RFC 3339 UTC).
    pub at: String,
    /// Who: the token's id, and its certificate's subject.
    pub who: String,
    /// From where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The call: `override.set`, `override.delete`, `usage.reset`,
    /// `config.reload`.
    pub action: &'static str,
    /// The key's hash, for changes to a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    /// The state before (`plan free`, `none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    /// The state after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    /// The operator's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `done`, or why it may not have been (Redis did not confirm it: it
    /// may or may not have happened).
    pub outcome: String,
}

impl Record {
    /// A record of `action` by `caller` at `now`.
    pub fn new(caller: &Caller, action: &'static str, now: Nanos) -> Self {
        Record {
            at: rfc3339(now),
            who: caller.who(),
            peer: caller.peer.map(|p| p.to_string()),
            action,
            key_hash: None,
            old: None,
            new: None,
            reason: None,
            outcome: "done".to_owned(),
        }
    }

    /// Not confirmed: `why`.
    pub fn unconfirmed(mut self, why: &str) -> Self {
        self.outcome = format!("unconfirmed: {why}");
        self
    }

    /// About the key with hash `key_hash`.
    pub fn key(mut self, key_hash: u64) -> Self {
        self.key_hash = Some(crate::core::hash::hex16(key_hash));
        self
    }

    /// From `old` to `new`.
    pub fn change(mut self, old: impl Into<String>, new: impl Into<String>) -> Self {
        self.old = Some(old.into());
        self.new = Some(new.into());
        self
    }

    /// Because of `reason`.
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_owned());
        self
    }
}

/// Where audit records go.
#[derive(Debug)]
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
    metrics: Option<Arc<Metrics>>,
}

impl Audit {
    /// Records to the log, and appended to `file` when given (created if
    /// missing).
    pub fn open(file: Option<&Path>) -> std::io::Result<Audit> {
        let file = match file {
            None => None,
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        };
        Ok(Audit {
            file,
            metrics: None,
        })
    }

    /// Counts one admin change (`done`, `unconfirmed`) or refusal
    /// (`refused`: nothing changed, so no record) in the metrics.
    pub fn count(&self, action: &'static str, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.admin(action, outcome);
        }
    }

    /// The metrics records are counted in, if any.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Counts every record in `metrics` too
    /// (`quotad_admin_mutations_total{action, outcome}`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes `record`. A file that cannot be written is logged as an
    /// error; the log line is written regardless.
    pub fn write(&self, record: &Record) {
        let outcome = if record.outcome.starts_with("unconfirmed") {
            "unconfirmed"
        } else {
            "done"
        };
        self.count(record.action, outcome);
        tracing::info!(
            target: "quotad::audit",
            at = %record.at,
            who = %record.who,
            peer = record.peer.as_deref().unwrap_or("-"),
            action = record.action,
            key = record.key_hash.as_deref().unwrap_or("-"),
            old = record.old.as_deref().unwrap_or("-"),
            new = record.new.as_deref().unwrap_or("-"),
            reason = record.reason.as_deref().unwrap_or("-"),
            outcome = %record.outcome,
            "admin change"
        );
        let Some(file) = &self.file else { return };
        // A struct of strings always serializes.
        let mut line = serde_json::to_string(record).unwrap_or_default();
        line.push('\n');
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.flush()) {
            tracing::error!(error = %e, "cannot write the audit file; the record is in the log only");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_append_one_json_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(Some(&path)).unwrap();
        let caller = Caller {
            token: "ops".into(),
            cert_subject: Some("CN=alice".into()),
            peer: Some("127.0.0.1:5000".parse().unwrap()),
        };
        let t = 1_798_761_600 * 1_000_000_000;
        audit.write(
            &Record::new(&caller, "override.set", t)
                .key(0xab)
                .change("none", "plan gold")
                .reason("ticket 7"),
        );
        audit.write(&Record::new(&caller, "config.reload", t));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["who"], "ops (CN=alice)");
        assert_eq!(lines[0]["at"], "2027-01-01T00:00:00Z");
        assert_eq!(lines[0]["key_hash"], "00000000000000ab");
        assert_eq!(lines[0]["old"], "none");
        assert_eq!(lines[0]["new"], "plan gold");
        assert_eq!(lines[0]["reason"], "ticket 7");
        assert_eq!(lines[0]["outcome"], "done");
        assert_eq!(lines[1]["action"], "config.reload");
        assert!(lines[1].get("key_hash").is_none());
    }
}
