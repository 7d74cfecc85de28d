//! The store's side of Redis sync: the journal of what this node charged
//! since its last flush (the deltas live in the cells, see
//! [`super::journal`]), taking it for a flush, and taking in the global
//! states Redis answers with (adopted, or mirrored from a strict check).

use std::sync::atomic::Ordering;

use super::journal::{CellKind, Journal, Pending};
use super::{BucketCell, Cell, LocalStore, Meta, QuotaCell};
use crate::core::clock::Nanos;
use crate::core::source::Source;

impl LocalStore {
    /// Starts journaling charges for a sync task (see [`super::journal`]).
    pub fn enable_journal(&mut self) {
        self.journal = Some(Journal::new(self.limits.max_cells));
    }

    /// The sync journal, when enabled.
    #[inline]
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Whether cell `id` (a bucket, else a counter) has a change not yet
    /// taken for a flush.
    pub fn is_dirty(&self, id: u64, bucket: bool) -> bool {
        let dirty = if bucket {
            self.buckets.get(id, |c| c.delta().is_dirty())
        } else {
            self.quotas.get(id, |c| c.delta().is_dirty())
        };
        dirty.unwrap_or(false)
    }

    /// Journals a change of a cell the engine did not charge itself (an
    /// undo of a strict check): into the cell when the store holds it,
    /// else into the journal's short side list (bounded: beyond it the
    /// undo is dropped and counted).
    pub fn journal_undo(&self, id: u64, tag: u64, kind: CellKind, delta: i64, since: Nanos) {
        let Some(j) = &self.journal else {
            return;
        };
        let held = match kind {
            CellKind::Bucket => self
                .buckets
                .get(id, |c| j.charge(c.delta(), id, tag, kind, delta, since)),
            CellKind::Counter { .. } => self
                .quotas
                .get(id, |c| j.charge(c.delta(), id, tag, kind, delta, since)),
        };
        if held.is_none() {
            let pending = Pending {
                tag,
                kind,
                since,
                delta,
            };
            j.orphan(id, pending);
        }
    }

    /// Takes every dirty cell's change for a flush, leaving the cells
    /// clean and the journal empty: from the cell, or, for a cell the
    /// admission policy displaced, from the journal's side map. A listed
    /// cell the store dropped otherwise (an operator's reset) is skipped:
    /// its change went with it.
    pub fn drain_journal(&self) -> Vec<(u64, Pending)> {
        let Some(j) = &self.journal else {
            return Vec::new();
        };
        let buckets = j.take_listed(true);
        let counters = j.take_listed(false);
        let mut out = j.take_orphans();
        out.reserve(buckets.len() + counters.len());
        // A displaced cell's change waits in the side map; the cell may
        // have been made again since, with a change of its own: both are
        // sent, as one.
        let with_evicted = |id: u64, taken: Option<(i64, Nanos)>| match (taken, j.take_evicted(id))
        {
            (Some((d, end)), Some(e)) => Some((d.saturating_add(e.delta), end)),
            (None, Some(e)) => Some((e.delta, e.window_end)),
            (taken, None) => taken,
        };
        for l in buckets {
            let taken = self.buckets.get(l.id, |c| c.delta().take()).flatten();
            if let Some((delta, _)) = with_evicted(l.id, taken.map(|d| (d, 0))) {
                let pending = Pending {
                    tag: l.tag,
                    kind: CellKind::Bucket,
                    since: l.aux,
                    delta,
                };
                out.push((l.id, pending));
            }
        }
        for l in counters {
            let taken = self
                .quotas
                .get(l.id, |c| c.delta().take().map(|d| (d, c.window_end)))
                .flatten();
            if let Some((delta, window_end)) = with_evicted(l.id, taken) {
                let kind = CellKind::Counter {
                    window_end,
                    slack_ms: u32::try_from(l.aux).unwrap_or(u32::MAX),
                };
                let pending = Pending {
                    tag: l.tag,
                    kind,
                    since: 0,
                    delta,
                };
                out.push((l.id, pending));
            }
        }
        out
    }

    /// Raises bucket `id`'s arrival time to the global one Redis returned
    /// plus what this node charged since (still in the cell). A bucket
    /// swept meanwhile is left alone: the next check starts it fresh and
    /// its next flush brings it up to date.
    pub fn adopt_bucket(&self, id: u64, global_tat: Nanos) {
        let aside = self.set_aside(id);
        self.buckets.get(id, |c| {
            let pending = c.delta().pending().saturating_add(aside);
            let tat = global_tat.saturating_add_signed(pending);
            c.tat.fetch_max(tat, Ordering::AcqRel)
        });
    }

    /// Raises counter `id` to the global count Redis returned plus what
    /// this node counted since.
    pub fn adopt_counter(&self, id: u64, global_used: u64) {
        let aside = self.set_aside(id);
        self.quotas.get(id, |c| {
            let pending = c.delta().pending().saturating_add(aside);
            let used = global_used.saturating_add_signed(pending);
            c.used.fetch_max(used, Ordering::AcqRel)
        });
    }

    /// What this node charged cell `id` before the cell was displaced and
    /// made again, not sent yet.
    fn set_aside(&self, id: u64) -> i64 {
        self.journal.as_ref().map_or(0, |j| j.evicted_delta(id))
    }

    /// Sets bucket `id` to at least `tat` (a strict answer at `now`),
    /// creating it when there is room. Not journaled: the state is
    /// already Redis's.
    pub fn mirror_bucket(&self, id: u64, tat: Nanos, now: Nanos) {
        if self
            .buckets
            .get(id, |c| c.tat.fetch_max(tat, Ordering::AcqRel))
            .is_none()
            && self.reserve()
        {
            let meta = || Meta::new(Source::PLANS, now);
            let made = self.buckets.insert_with(
                id,
                || BucketCell::new(meta()),
                |c| c.tat.fetch_max(tat, Ordering::AcqRel),
            );
            self.settle(made, Source::PLANS, false);
        }
    }

    /// Sets counter `id` (a window ending at `window_end`) to at least
    /// `used` (a strict answer at `now`), creating it when there is room.
    /// Not journaled.
    pub fn mirror_counter(&self, id: u64, window_end: Nanos, used: u64, now: Nanos) {
        if self
            .quotas
            .get(id, |c| c.used.fetch_max(used, Ordering::AcqRel))
            .is_none()
            && used > 0
            && self.reserve()
        {
            let meta = || Meta::new(Source::PLANS, now);
            let made = self.quotas.insert_with(
                id,
                || QuotaCell::new(window_end, meta()),
                |c| c.used.fetch_max(used, Ordering::AcqRel),
            );
            self.settle(made, Source::PLANS, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Ids, Landed, StoreLimits};

    /// Charges bucket `id` (key tag `id` too) with `delta` ns at `now`,
    /// journaling the charge as the engine does; where it landed.
    fn charge(store: &LocalStore, id: u64, delta: u64, now: Nanos) -> Landed {
        let j = store.journal().expect("journal enabled");
        let ids = Ids {
            own: id,
            overflow: u64::MAX,
            prior: None,
        };
        let (_, landed) =
            store
                .buckets()
                .upsert(ids, Source::PLANS, now, BucketCell::new, |c, overflow| {
                    c.tat.fetch_max(now + delta, Ordering::AcqRel);
                    c.meta().hit();
                    if !overflow {
                        let d = i64::try_from(delta).expect("small");
                        j.charge(c.delta(), id, id, CellKind::Bucket, d, now);
                    }
                });
        landed
    }

    fn synced_store(cap: usize) -> LocalStore {
        let mut store = LocalStore::new(StoreLimits { max_cells: cap });
        store.enable_journal();
        store
    }

    #[test]
    fn a_flood_displaces_dirty_cells_only_as_far_as_their_changes_are_kept() {
        let store = synced_store(32);
        for id in 1..=32 {
            assert_eq!(charge(&store, id, 1_000 * id, 0), Landed::Own);
        }
        // Each cell was charged once, so a newcomer may take one; none
        // has been sent yet, so its change moves to the side map (32 / 16
        // + 16 = 18 of them); past that, newcomers share the overflow
        // cell.
        let mut own = Vec::new();
        for id in 100..200 {
            if charge(&store, id, 1, 10) == Landed::Own {
                own.push(id);
            }
        }
        let j = store.journal().expect("journal");
        assert_eq!((own.len(), j.evicted()), (18, 18));
        assert_eq!(j.len(), 32 + 18, "one entry per cell that held a change");
        let sent = store.drain_journal();
        let total: i64 = sent.iter().map(|(_, p)| p.delta).sum();
        let charged: i64 = (1..=32).map(|id| 1_000 * id).sum::<i64>() + 18;
        assert_eq!((sent.len(), total), (50, charged), "every charge, once");
        assert_eq!((j.dropped(), j.evicted()), (0, 0));
        assert!(j.is_empty());
        // Sent, the cells are clean: a newcomer takes one again.
        assert_eq!(charge(&store, 300, 1, 10), Landed::Own);
    }

    #[test]
    fn a_cell_displaced_and_made_again_before_a_drain_sends_both_changes() {
        let store = synced_store(1);
        charge(&store, 1, 10, 0);
        // Cell 2 displaces cell 1 (its 10 kept aside), then cell 1 comes
        // back, displacing cell 2, and is charged 5 more.
        assert_eq!(charge(&store, 2, 1, 1), Landed::Own);
        assert_eq!(charge(&store, 1, 5, 2), Landed::Own);
        let mut sent = store.drain_journal();
        sent.sort_by_key(|(id, _)| *id);
        let got: Vec<(u64, i64)> = sent.iter().map(|(id, p)| (*id, p.delta)).collect();
        assert_eq!(got, [(1, 15), (2, 1)]);
        assert_eq!(store.journal().map(Journal::evicted), Some(0));
    }

    #[test]
    fn a_cell_whose_last_change_is_still_aside_is_not_displaced_again() {
        let store = synced_store(1);
        charge(&store, 1, 10, 0);
        assert_eq!(charge(&store, 2, 1, 1), Landed::Own, "1 goes, its 10 aside");
        assert_eq!(charge(&store, 1, 5, 2), Landed::Own, "2 goes, its 1 aside");
        // 1's first change is still aside: displacing it again would list
        // it a third time, so it stays (one entry beyond the store's own).
        assert_eq!(charge(&store, 2, 1, 3), Landed::Overflow);
        let j = store.journal().expect("journal");
        assert_eq!((j.len(), j.evicted()), (3, 2));
        // Adopting a global state counts what is aside too.
        store.adopt_bucket(1, 100);
        let tat = store.buckets().get(1, |c| c.tat.load(Ordering::Acquire));
        assert_eq!(tat, Some(115));
    }

    #[test]
    fn a_dirty_cell_outlives_its_sweep_until_it_is_sent() {
        let store = synced_store(8);
        charge(&store, 1, 10, 0);
        charge(&store, 2, 10, 0);
        let _ = store.drain_journal();
        charge(&store, 2, 10, 20);
        // Both buckets are full again at 1 000; only the clean one goes.
        let report = store.sweep(1_000);
        assert_eq!((report.buckets, store.tracked()), (1, 1));
        assert!(store.is_dirty(2, true));
        assert_eq!(store.drain_journal().len(), 1);
        assert_eq!(store.sweep(1_000).buckets, 1);
        assert_eq!(store.tracked(), 0);
    }

    #[test]
    fn undos_go_into_a_held_cell_or_the_bounded_side_list() {
        let store = synced_store(16);
        charge(&store, 1, 10, 0);
        store.journal_undo(1, 1, CellKind::Bucket, -4, 0);
        // 16 / 16 + 16 = 17 undos of cells the store does not hold.
        for id in 100..120 {
            store.journal_undo(id, id, CellKind::Bucket, -1, 0);
        }
        let j = store.journal().expect("journal");
        assert_eq!(j.dropped(), 3);
        let sent = store.drain_journal();
        assert_eq!(sent.len(), 18);
        assert!(sent.contains(&(
            1,
            Pending {
                tag: 1,
                kind: CellKind::Bucket,
                since: 0,
                delta: 6
            }
        )));
    }

    #[test]
    fn a_reset_cell_takes_its_change_with_it() {
        let store = synced_store(1);
        charge(&store, 1, 10, 0);
        // Displaced (its 10 aside), made again: a reset forgets both.
        charge(&store, 2, 1, 1);
        charge(&store, 1, 7, 2);
        store.journal_undo(1, 1, CellKind::Bucket, -1, 2);
        assert!(store.remove_bucket(1));
        store.journal().expect("journal").forget(1);
        // Made again and charged: listed again, sent once.
        charge(&store, 1, 3, 5);
        let mut sent = store.drain_journal();
        sent.sort_by_key(|(id, _)| *id);
        let got: Vec<(u64, i64)> = sent.iter().map(|(id, p)| (*id, p.delta)).collect();
        assert_eq!(got, [(1, 3), (2, 1)]);
    }

    #[test]
    fn adopting_adds_what_was_charged_since_the_drain() {
        let store = synced_store(8);
        charge(&store, 1, 10, 0);
        let _ = store.drain_journal();
        charge(&store, 1, 7, 1);
        store.adopt_bucket(1, 500);
        let tat = store.buckets().get(1, |c| c.tat.load(Ordering::Acquire));
        assert_eq!(tat, Some(507));
    }
}
