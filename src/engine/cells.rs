//! One limit applied to one key's cell: where the cell is ([`Cell`]),
//! the evaluate-then-charge path every cell kind shares (free room, room
//! the store's admission policy makes, or the overflow cell), refunds,
//! and the sync journal's entry for each charge.

use super::Engine;
use crate::core::Act;
use crate::core::clock::Nanos;
use crate::core::gcra::{self, Verdict};
use crate::core::hash::mix;
use crate::core::source::Source as KeySource;
use crate::core::{counter, quota, window};
use crate::limits::{FixedWindow, Limit, LimitKind, Quota, Rate};
use crate::store::journal::{CellKind, Delta};
use crate::store::{BucketCell, Cell as StoreCell, Ids, Landed, Map, Meta, QuotaCell};

/// Stands in for the key hash of the shared overflow cells.
const OVERFLOW_KEY: u64 = 0x6f76_6572_666c_6f77;

/// Where one limit keeps one key's state right now.
#[derive(Clone, Copy)]
pub(super) enum Cell<'l> {
    Bucket {
        rate: &'l Rate,
        id: u64,
        overflow: u64,
    },
    Quota {
        quota: &'l Quota,
        span: window::Span,
        id: u64,
        overflow: u64,
        /// The key's cell of the window before.
        prior: u64,
    },
    Counter {
        window: &'l FixedWindow,
        span: window::Span,
        id: u64,
        overflow: u64,
        /// The key's cell of the window before.
        prior: u64,
    },
}

impl<'l> Cell<'l> {
    #[inline]
    pub(super) fn of(limit: &'l Limit, key_hash: u64, now: Nanos) -> Self {
        match &limit.kind {
            LimitKind::Rate(rate) => Cell::Bucket {
                rate,
                id: mix(key_hash, limit.uid),
                overflow: mix(OVERFLOW_KEY, limit.uid),
            },
            LimitKind::Quota(quota) => {
                let span = quota.window.span(now);
                let key = mix(key_hash, limit.uid);
                Cell::Quota {
                    quota,
                    span,
                    id: mix(key, span.index),
                    overflow: mix(mix(OVERFLOW_KEY, limit.uid), span.index),
                    prior: mix(key, span.index.wrapping_sub(1)),
                }
            }
            LimitKind::Window(window) => {
                let span = window::epoch_span(now, window.period);
                // Counters of one unit share `uid` (a descriptor's counter
                // is the same whichever rule applies), so the overflow
                // counter also keys on the limit: one per (unit, limit).
                let shape = mix(limit.uid, window.limit);
                let key = mix(key_hash, limit.uid);
                Cell::Counter {
                    window,
                    span,
                    id: mix(key, span.index),
                    overflow: mix(mix(OVERFLOW_KEY, shape), span.index),
                    prior: mix(key, span.index.wrapping_sub(1)),
                }
            }
        }
    }
}

impl Cell<'_> {
    /// The key's own cell id.
    pub(super) fn id(&self) -> u64 {
        match *self {
            Cell::Bucket { id, .. } | Cell::Quota { id, .. } | Cell::Counter { id, .. } => id,
        }
    }

    /// What a charge (or, negated, a refund) of `cost` to the key's own
    /// cell adds to the sync journal: the cell, its kind, the delta.
    pub(super) fn journal_entry(&self, cost: u64) -> (u64, CellKind, i64) {
        let units = i64::try_from(cost).unwrap_or(i64::MAX);
        match *self {
            Cell::Bucket { rate, id, .. } => (
                id,
                CellKind::Bucket,
                i64::try_from(rate.emission(cost)).unwrap_or(i64::MAX),
            ),
            Cell::Quota { span, id, .. } | Cell::Counter { span, id, .. } => (
                id,
                CellKind::Counter {
                    window_end: span.end,
                    slack_ms: span.slack_ms(),
                },
                units,
            ),
        }
    }
}

impl Engine {
    /// Checks one limit for one key (its keyed hash and the source a new
    /// cell counts under); `commit == false` is a dry run. Says where the
    /// units were charged, if anywhere.
    #[inline]
    pub(super) fn apply(
        &self,
        limit: &Limit,
        key: (u64, KeySource),
        now: Nanos,
        cost: u64,
        commit: bool,
    ) -> (Verdict, Landed) {
        let act = if commit { Act::Commit } else { Act::Dry };
        self.apply_as(limit, key, now, cost, act)
    }

    /// [`Engine::apply`] for any [`Act`]: a report ([`Act::Force`])
    /// charges the key's own cell whatever it holds. Should the store be
    /// full and the key win no cell of its own, a report charges the
    /// shared overflow cell only as a check would (never into debt, which
    /// would hold every other new key back), and one it has no room for
    /// is absorbed: answered, not charged.
    #[inline]
    pub(super) fn apply_as(
        &self,
        limit: &Limit,
        (key, source): (u64, KeySource),
        now: Nanos,
        cost: u64,
        act: Act,
    ) -> (Verdict, Landed) {
        let cell = Cell::of(limit, key, now);
        let journal = self.store.journal();
        // What a charge to the key's own cell leaves for Redis sync: added
        // to the cell's pending change under the same lock as the charge.
        let note = |pending: &Delta| {
            if let Some(j) = journal {
                let (id, kind, delta) = cell.journal_entry(cost);
                j.charge(pending, id, key, kind, delta, now);
            }
        };
        let at = Charge { source, now, act };
        let (v, landed) = match cell {
            Cell::Bucket { rate, id, overflow } => at.charge(
                self.store.buckets(),
                Ids {
                    own: id,
                    overflow,
                    prior: None,
                },
                BucketCell::new,
                |c, act| gcra::apply(rate, &c.tat, now, cost, act),
                (false, note),
            ),
            Cell::Quota {
                quota: q,
                span,
                id,
                overflow,
                prior,
            } => at.charge(
                self.store.quotas(),
                Ids {
                    own: id,
                    overflow,
                    prior: Some(prior),
                },
                |m| QuotaCell::new(span.end, m),
                |c, act| quota::apply(q, &c.used, span, now, cost, act),
                (false, note),
            ),
            Cell::Counter {
                window: w,
                span,
                id,
                overflow,
                prior,
            } => at.charge(
                self.store.quotas(),
                Ids {
                    own: id,
                    overflow,
                    prior: Some(prior),
                },
                |m| QuotaCell::new(span.end, m),
                |c, act| counter::apply(w, &c.used, span, now, cost, act),
                (true, note),
            ),
        };
        if landed == Landed::Overflow {
            self.store.note_overflow();
        }
        (v, landed)
    }

    /// Gives back `cost` units to the cell `at` names (the key's own, or
    /// the overflow cell a charge went to). Creates nothing; a cell swept
    /// meanwhile was full, so has nothing to give back.
    pub(super) fn refund(&self, limit: &Limit, key: u64, now: Nanos, cost: u64, at: Landed) {
        let pick = |id: u64, overflow: u64| match at {
            Landed::Own => Some(id),
            Landed::Overflow => Some(overflow),
            Landed::Nowhere => None,
        };
        let cell = Cell::of(limit, key, now);
        // Only a key's own cells are synced: overflow cells are this
        // node's flood guard.
        let journal = self.store.journal().filter(|_| at == Landed::Own);
        let note = |pending: &Delta| {
            if let Some(j) = journal {
                let (id, kind, delta) = cell.journal_entry(cost);
                j.charge(pending, id, key, kind, -delta, now);
            }
        };
        match cell {
            Cell::Bucket { rate, id, overflow } => pick(id, overflow).and_then(|id| {
                self.store.buckets().get(id, |c| {
                    gcra::refund(rate, &c.tat, cost);
                    note(c.delta());
                })
            }),
            Cell::Quota { id, overflow, .. } | Cell::Counter { id, overflow, .. } => {
                pick(id, overflow).and_then(|id| {
                    self.store.quotas().get(id, |c| {
                        quota::refund(&c.used, cost);
                        note(c.delta());
                    })
                })
            }
        };
    }
}

/// What one charge is made for: the source a new cell counts under, the
/// time, and what it does.
#[derive(Clone, Copy)]
struct Charge {
    source: KeySource,
    now: Nanos,
    act: Act,
}

impl Charge {
    /// The one evaluate-then-charge path of every cell kind: a tracked
    /// cell is updated in place; an untracked key is first evaluated as a
    /// new cell, and a cell is created (in free room, or room the store's
    /// admission policy makes) only when the check is a commit and would
    /// pass (a report always does), or, for kinds that count denied hits
    /// too (`counts_denied`), when it is a commit at all and the store is
    /// not nearly full. Without room the charge goes to the limit's
    /// overflow cell (a report's as a check's: see [`Engine::apply_as`]).
    #[inline]
    fn charge<V: StoreCell>(
        self,
        map: Map<'_, V>,
        ids: Ids,
        make: impl Fn(Meta) -> V,
        eval: impl Fn(&V, Act) -> Verdict,
        (counts_denied, note): (bool, impl Fn(&Delta)),
    ) -> (Verdict, Landed) {
        let counted = |v: &Verdict, act: Act| match act {
            Act::Dry => false,
            Act::Commit => v.allowed || counts_denied,
            Act::Force => true,
        };
        let landed = |v: &Verdict, at: Landed| {
            if counted(v, self.act) {
                at
            } else {
                Landed::Nowhere
            }
        };
        let tracked = map.get(ids.own, |c| {
            let v = eval(c, self.act);
            if counted(&v, self.act) {
                c.meta().hit();
                note(c.delta());
            }
            v
        });
        if let Some(v) = tracked {
            return (v, landed(&v, Landed::Own));
        }
        let v = eval(&make(Meta::new(self.source, self.now)), Act::Dry);
        let create = match self.act {
            Act::Dry => false,
            Act::Commit => v.allowed || (counts_denied && !map.is_nearly_full()),
            Act::Force => true,
        };
        if !create {
            return (v, Landed::Nowhere);
        }
        let ((v, charged), at) = map.upsert(ids, self.source, self.now, make, |c, overflow| {
            // A shared overflow cell is charged as a check would be, a
            // report's too: never into debt.
            let act = match self.act {
                Act::Force if overflow => Act::Commit,
                act => act,
            };
            // A denied hit is never counted in a shared overflow cell,
            // where it would hold every other new key over the limit.
            if overflow && counts_denied {
                let v = eval(c, Act::Dry);
                if !v.allowed {
                    return (v, false);
                }
            }
            let v = eval(c, act);
            let charged = counted(&v, act);
            if charged {
                c.meta().hit();
                if !overflow {
                    note(c.delta());
                }
            }
            (v, charged)
        });
        // A report the overflow cell had no room for is absorbed there:
        // never refused (a report is not), never debt on the shared cell.
        let v = match self.act {
            Act::Force if !v.allowed => Verdict {
                allowed: true,
                retry_after: v.retry_after.or(Some(0)),
                excess: 0,
                ..v
            },
            _ => v,
        };
        (v, if charged { at } else { Landed::Nowhere })
    }
}
