//! Admin calls refused before they ran (no token, a malformed header, an
//! unknown token, a missing scope): each is counted, and logged (and, for
//! changes, audited) without letting a flood of them flood the log or the
//! audit file.
//!
//! Every refusal counts in `quotad_admin_refused_total{reason}` (the
//! reasons are a fixed set, [`Refusal`]; neither the token nor the peer is
//! a label). The log gets at most one line per reason per second
//! ([`Throttle`]), a WARN naming the call, the peer, the reason and the
//! token's id when it was known (never the token), with `suppressed`: how
//! many refusals of that reason went unlogged since the previous line. So
//! one client hammering with a bad token writes a line a second, and the
//! metric still counts every call.
//!
//! A refused *change* (SetOverride, DeleteOverride, ResetUsage, Reload)
//! is also an audit record (`outcome: "refused: <reason>"`, the call's
//! action, the token's id when known or `-`, the peer, the error), under
//! a throttle of its own with the same allowance: at most one record per
//! reason per second, with `suppressed` counting those left out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::clock::Stopwatch;
use crate::metrics::Metrics;
use crate::metrics::names;

use super::audit::{Audit, Record};
use super::auth::{Refusal, Refused};

/// How often each reason may write a log line, and an audit record.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// Lets through at most one event per reason every `every`, and counts
/// the ones it holds back, to be reported by the next one let through.
#[derive(Debug)]
pub struct Throttle {
    every: u64,
    slots: Mutex<[Slot; Refusal::ALL.len()]>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// When the last event was let through (ns on the caller's clock).
    last: Option<u64>,
    /// Events held back since.
    held: u64,
}

impl Throttle {
    /// At most one event per reason every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every: u64::try_from(every.as_nanos()).unwrap_or(u64::MAX),
            slots: Mutex::new([Slot::default(); Refusal::ALL.len()]),
        }
    }

    /// Whether an event of `reason` at `now` (ns on a monotonic clock) is
    /// let through: `Some(n)`, `n` events of that reason having been held
    /// back since the last one let through; `None` when it is held back
    /// (and counted for the next).
    pub fn admit(&self, reason: Refusal, now: u64) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[reason as usize];
        match slot.last {
            Some(last) if now.saturating_sub(last) < self.every => {
                slot.held += 1;
                None
            }
            _ => {
                slot.last = Some(now);
                Some(std::mem::take(&mut slot.held))
            }
        }
    }
}

/// Where refusals are counted and logged; see the module docs.
#[derive(Debug)]
pub struct Refusals {
    audit: Arc<Audit>,
    metrics: Option<Arc<Metrics>>,
    clock: Stopwatch,
    log: Throttle,
    trail: Throttle,
}

impl Refusals {
    /// Auditing refused changes in `audit`, counting in its metrics
    /// (every reason from 0).
    pub fn new(audit: Arc<Audit>) -> Self {
        let metrics = audit.metrics().cloned();
        if let Some(m) = &metrics {
            for r in Refusal::ALL {
                m.counter(names::ADMIN_REFUSED, &[("reason", r.as_str())])
                    .increment(0);
            }
        }
        Self {
            audit,
            metrics,
            clock: Stopwatch::start(),
            log: Throttle::new(LOG_EVERY),
            trail: Throttle::new(LOG_EVERY),
        }
    }

    /// Counts `refused`, a call to `call`, logs it unless its reason
    /// logged a line less than [`LOG_EVERY`] ago, and, for a change,
    /// audits it unless its reason was audited less than that ago.
    /// `now` dates the audit record.
    pub fn note(&self, refused: &Refused, call: &str, now: crate::core::Nanos) {
        let reason = refused.reason.as_str();
        if let Some(m) = &self.metrics {
            m.admin_refused(reason);
        }
        if let Some(suppressed) = self.log.admit(refused.reason, self.clock.nanos()) {
            tracing::warn!(
                peer = %refused.peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                call,
                reason,
                token = refused.token.as_deref().unwrap_or("-"),
                suppressed,
                "admin call refused: {}",
                refused.status.message()
            );
        }
        let Some(action) = change(call) else { return };
        if let Some(suppressed) = self.trail.admit(refused.reason, self.clock.nanos()) {
            let who = refused.token.clone().unwrap_or_else(|| "-".to_owned());
            self.audit
                .write(&Record::by(who, refused.peer, action, now).refused(
                    reason,
                    refused.status.message(),
                    suppressed,
                ));
        }
    }
}

/// The audit action of `call` when it is a change; `None` for reads.
fn change(call: &str) -> Option<&'static str> {
    match call {
        "SetOverride" => Some("override.set"),
        "DeleteOverride" => Some("override.delete"),
        "ResetUsage" => Some("usage.reset"),
        "Reload" => Some("config.reload"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_reason_and_period_and_the_rest_counted_for_the_next() {
        let t = Throttle::new(Duration::from_secs(1));
        let s = 1_000_000_000;
        assert_eq!(t.admit(Refusal::BadToken, 5 * s), Some(0));
        for i in 1..=1000 {
            assert_eq!(t.admit(Refusal::BadToken, 5 * s + i), None);
        }
        // Another reason has its own allowance.
        assert_eq!(t.admit(Refusal::NoToken, 5 * s + 1), Some(0));
        assert_eq!(t.admit(Refusal::NoToken, 5 * s + 2), None);
        // A period later: through, with the count held back.
        assert_eq!(t.admit(Refusal::BadToken, 6 * s - 1), None);
        assert_eq!(t.admit(Refusal::BadToken, 6 * s), Some(1001));
        assert_eq!(t.admit(Refusal::BadToken, 6 * s + 1), None);
        assert_eq!(t.admit(Refusal::NoToken, 9 * s), Some(1));
        assert_eq!(t.admit(Refusal::MissingScope, 0), Some(0));
    }
}
