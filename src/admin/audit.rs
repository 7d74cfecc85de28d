//! The audit trail: one record for every change made through the admin
//! API, saying who (token id, client certificate subject, address), what
//! (the call and the key's hash), when, and the state before and after;
//! and for what was tried and did not happen: a reload refused (by
//! SIGHUP, the watcher or the admin API: its cause and error) and a
//! change refused for its token (no token, a bad one, a missing scope).
//! `outcome` tells them apart: `done`, `unconfirmed: ...`, `failed`,
//! `refused: <reason>`.
//!
//! Each record is a log line at target `quotad::audit` and, with
//! `admin.audit_file`, one JSON object appended to that file (a line
//! each, flushed as written), for a retention of its own. Records name
//! keys by their keyed hash only; the operator's `reason` is kept as
//! given (it is checked to be one line); errors are the messages callers
//! and the log get, which never hold a secret. Refused changes are
//! recorded at most once a second per reason, with the number left out
//! since ([`super::refusals`]), so a flood of them cannot flood the file.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::core::Nanos;
use crate::core::clock::rfc3339;
use crate::metrics::Metrics;

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
    /// `done`; or why it may not have been (`unconfirmed: ...`: Redis did
    /// not confirm it, it may or may not have happened); `failed` (a
    /// reload refused: the running config stayed); `refused: <reason>`
    /// (a change refused for its token: `no_token`, `malformed_token`,
    /// `bad_token`, `missing_scope`).
    pub outcome: String,
    /// What started a reload: `SIGHUP`, `admin Reload`, `file change`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    /// Why it failed or was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a refusal: how many refusals of its reason were left out of the
    /// trail since the previous record of that reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

impl Record {
    /// A record of `action` by `caller` at `now`.
    pub fn new(caller: &Caller, action: &'static str, now: Nanos) -> Self {
        Self::by(caller.who(), caller.peer, action, now)
    }

    /// A record of `action` by `who` (`-`: no one known) from `peer` at
    /// `now`.
    pub fn by(who: String, peer: Option<SocketAddr>, action: &'static str, now: Nanos) -> Self {
        Record {
            at: rfc3339(now),
            who,
            peer: peer.map(|p| p.to_string()),
            action,
            key_hash: None,
            old: None,
            new: None,
            reason: None,
            outcome: "done".to_owned(),
            cause: None,
            error: None,
            suppressed: None,
        }
    }

    /// A reload started by `cause` that was refused with `error`.
    pub fn failed(mut self, cause: &'static str, error: &str) -> Self {
        self.outcome = "failed".to_owned();
        self.cause = Some(cause);
        self.error = Some(error.to_owned());
        self
    }

    /// Refused for `reason` (a label value) with `error`; `suppressed`
    /// more were left out since the previous record of that reason.
    pub fn refused(mut self, reason: &str, error: &str, suppressed: u64) -> Self {
        self.outcome = format!("refused: {reason}");
        self.error = Some(error.to_owned());
        self.suppressed = Some(suppressed);
        self
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
    /// error; the log line is written regardless. Changes made (or maybe
    /// made) count in `quotad_admin_mutations_total`; failures and
    /// refusals are counted where they happen.
    pub fn write(&self, record: &Record) {
        let outcome = record.outcome.as_str();
        let message = if outcome == "done" {
            self.count(record.action, "done");
            "admin change"
        } else if outcome.starts_with("unconfirmed") {
            self.count(record.action, "unconfirmed");
            "admin change"
        } else {
            "admin change not made"
        };
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
            cause = record.cause.unwrap_or("-"),
            error = record.error.as_deref().unwrap_or("-"),
            suppressed = record.suppressed.unwrap_or(0),
            "{message}"
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
        audit.write(&Record::by("-".into(), None, "config.reload", t).failed("SIGHUP", "bad"));
        audit.write(&Record::by("-".into(), None, "usage.reset", t).refused(
            "no_token",
            "missing bearer token",
            7,
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["who"], "ops (CN=alice)");
        assert_eq!(lines[0]["at"], "2027-01-01T00:00:00Z");
        assert_eq!(lines[0]["key_hash"], "00000000000000ab");
        assert_eq!(lines[0]["old"], "none");
        assert_eq!(lines[0]["new"], "plan gold");
        assert_eq!(lines[0]["reason"], "ticket 7");
        assert_eq!(lines[0]["outcome"], "done");
        assert_eq!(lines[1]["action"], "config.reload");
        assert!(lines[1].get("key_hash").is_none());
        assert!(lines[1].get("error").is_none());
        assert_eq!(lines[2]["outcome"], "failed");
        assert_eq!(lines[2]["cause"], "SIGHUP");
        assert_eq!(lines[2]["error"], "bad");
        assert_eq!(lines[3]["outcome"], "refused: no_token");
        assert_eq!(lines[3]["suppressed"], 7);
        assert_eq!(lines[3]["who"], "-");
    }
}
