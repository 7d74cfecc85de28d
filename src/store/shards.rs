//! A concurrent map from 64-bit cell ids to cells: up to 512 shards, each
//! a `hashbrown` table behind its own read-write lock, as many as make
//! each table four fifths full when the store is at its cap.
//!
//! Why four fifths: a table has a power of two of buckets and holds at
//! most seven eighths of them, so the number of shards decides how full
//! the tables are at the cap, which is the memory an operator provisions
//! for. A cap of 2²⁰ cells in 256 shards would need 4 096 cells per
//! table, just past what 4 096 buckets hold: every table would double to
//! 8 192 buckets and stay half empty. Sized so that a table at the cap
//! holds four fifths of its buckets (and halving the cells halves the
//! tables), a cell costs about 1.25 times its entry at the cap, with
//! 5 standard deviations of room before any one table doubles.
//!
//! The ids are keyed hashes already, so they are their own hash. What it
//! has that `DashMap` has not: [`Shards::sample`] reads cells from a
//! random position in O(1), which the store's admission policy needs to
//! find a cell cheap to forget without scanning (Redis samples its
//! keyspace for eviction the same way). Cells in neighbouring buckets are
//! as random as any (their ids are keyed hashes), so a sample reads a run
//! of them under one lock.

use hashbrown::HashTable;
use parking_lot::RwLock;

/// Most shards per map. Many small shards keep the sweep, which
/// write-locks one shard at a time, to microseconds per lock even with
/// millions of cells, and let concurrent inserts rarely meet.
const MAX_SHARDS: usize = 512;

/// Fewest buckets a shard's table is sized for at the cap.
const MIN_BUCKETS: usize = 64;

/// How many shards a map of at most `cap` cells gets: each table at the
/// cap four fifths full of the fewest buckets (a power of two, from
/// [`MIN_BUCKETS`]) that keep the shards to [`MAX_SHARDS`].
fn shards_for(cap: usize) -> usize {
    let mut buckets = MIN_BUCKETS;
    loop {
        let n = cap.div_ceil(buckets * 4 / 5).max(1);
        if n <= MAX_SHARDS {
            return n;
        }
        buckets *= 2;
    }
}

/// One shard, on a cache line of its own so that locking one does not
/// slow its neighbours.
#[repr(align(64))]
struct Shard<V>(RwLock<HashTable<(u64, V)>>);

/// The map. See the module docs.
pub(crate) struct Shards<V> {
    shards: Box<[Shard<V>]>,
}

impl<V> std::fmt::Debug for Shards<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").finish_non_exhaustive()
    }
}

/// What finding `id` in a shard's table needs.
#[inline]
fn eq<V>(id: u64) -> impl Fn(&(u64, V)) -> bool {
    move |(k, _)| *k == id
}

#[inline]
fn hash<V>((k, _): &(u64, V)) -> u64 {
    *k
}

/// Makes room for one more cell in `table` at its size when tombstones,
/// not cells, have used the room up.
///
/// A cell taken out of a table four fifths full often leaves a tombstone
/// (its probe group has no empty bucket), and tombstones use up the room
/// for inserts as cells do. When the room is gone, `hashbrown` rehashes in
/// place only a table at most half full; a fuller one doubles. Under a
/// key flood a store at its cap displaces a cell for every new key, so
/// every table would double and stay half empty: 30 MiB more at 1M cells,
/// for no more cells. Here such a table is rebuilt at the same size
/// instead (a copy of one shard, a few thousand cells, under its write
/// lock). A table whose cells alone leave less than a 64th of its room
/// grows as `hashbrown` grows it (rebuilding it would buy too few
/// inserts). At a 1M-cell cap that is a table 4.4 standard deviations
/// fuller than the average.
fn room_for_one<V>(table: &mut HashTable<(u64, V)>) {
    let (len, buckets) = (table.len(), table.num_buckets());
    if len < table.capacity() || buckets < MIN_BUCKETS || len >= rebuilt_under(buckets) {
        return;
    }
    let mut fresh = HashTable::with_capacity(full_capacity(buckets));
    for cell in table.drain() {
        fresh.insert_unique(cell.0, cell, hash);
    }
    *table = fresh;
}

/// How many cells a table of `buckets` holds at most (hashbrown's seven
/// eighths).
fn full_capacity(buckets: usize) -> usize {
    buckets / 8 * 7
}

/// Cells under which a full table of `buckets` is rebuilt at its size by
/// [`room_for_one`] rather than doubled: all but a 64th of its room.
fn rebuilt_under(buckets: usize) -> usize {
    let full = full_capacity(buckets);
    full - full / 64
}

/// What [`Shards::insert_with`] found or made.
pub(crate) enum Inserted<R> {
    /// The cell existed: `f` ran on it, nothing was made.
    Existing(R),
    /// The cell was made, then `f` ran on it.
    New(R),
}

impl<V> Shards<V> {
    /// An empty map for a store of at most `cap` cells.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            shards: (0..shards_for(cap))
                .map(|_| Shard(RwLock::new(HashTable::new())))
                .collect(),
        }
    }

    /// A cell's shard: picked by bits 25 to 56, below the top seven,
    /// which `hashbrown` keeps for its control bytes, and above the low
    /// bits that pick a bucket (scaled to the number of shards by a
    /// multiplication, not a division).
    #[inline]
    fn shard(&self, id: u64) -> &RwLock<HashTable<(u64, V)>> {
        &self.shards[self.shard_index(id)].0
    }

    #[inline]
    fn shard_index(&self, id: u64) -> usize {
        let bits = (id >> 25) & 0xffff_ffff;
        ((bits * self.shards.len() as u64) >> 32) as usize
    }

    /// Runs `f` on cell `id` under its shard's read lock, if it is there.
    #[inline]
    pub(crate) fn get<R>(&self, id: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        let table = self.shard(id).read();
        table.find(id, eq(id)).map(|(_, v)| f(v))
    }

    /// Whether cell `id` is there.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.shard(id).read().find(id, eq(id)).is_some()
    }

    /// Runs `f` on cell `id`, first making it with `make` if it is not
    /// there (under the shard's write lock).
    pub(crate) fn insert_with<R>(
        &self,
        id: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> Inserted<R> {
        let mut table = self.shard(id).write();
        if let Some((_, v)) = table.find(id, eq(id)) {
            return Inserted::Existing(f(v));
        }
        room_for_one(&mut table);
        let entry = table.insert_unique(id, (id, make()), hash);
        Inserted::New(f(&entry.get().1))
    }

    /// Takes cell `id` out.
    pub(crate) fn remove(&self, id: u64) -> Option<V> {
        let mut table = self.shard(id).write();
        let entry = table.find_entry(id, eq(id)).ok()?;
        Some(entry.remove().0.1)
    }

    /// Takes cell `id` out if `pred` holds for it (checked under the
    /// write lock, so the cell cannot change between the two).
    pub(crate) fn remove_if(&self, id: u64, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut table = self.shard(id).write();
        let entry = table.find_entry(id, eq(id)).ok()?;
        if !pred(&entry.get().1) {
            return None;
        }
        Some(entry.remove().0.1)
    }

    /// Runs `f` on up to `max` cells found from a random position (`r`)
    /// of the shard cell `near` belongs in, under its read lock; when that
    /// shard holds fewer, the next shards make up the run. In a map of
    /// `max` cells or fewer, that is every one of them.
    pub(crate) fn sample(&self, near: u64, r: u64, max: usize, mut f: impl FnMut(u64, &V)) {
        let first = self.shard_index(near);
        let n = self.shards.len();
        let mut seen = 0;
        for i in 0..n {
            let table = self.shards[(first + i) % n].0.read();
            if table.is_empty() {
                continue;
            }
            let buckets = table.num_buckets();
            let start = (r as usize) & (buckets - 1);
            for (id, v) in (0..buckets)
                .filter_map(|b| table.get_bucket((start + b) & (buckets - 1)))
                .take(max - seen)
            {
                f(*id, v);
                seen += 1;
            }
            if seen >= max {
                return;
            }
        }
    }

    /// Keeps the cells for which `keep` holds, shard by shard (each shard
    /// write-locked while it is gone through), then gives memory back from
    /// shards that are mostly empty.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for shard in self.shards.iter() {
            let mut table = shard.0.write();
            table.retain(|(_, v)| keep(v));
            let capacity = table.capacity();
            if capacity > 64 && table.len() < capacity / 4 {
                table.shrink_to_fit(hash);
            }
        }
    }

    /// Cells in the map (locks every shard: tests only).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_finds_removes_and_samples() {
        let m: Shards<u32> = Shards::new(4_000);
        let ids: Vec<u64> = (0..2_000u64)
            .map(|i| crate::core::hash::mix(i, 7))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            let made = m.insert_with(*id, || n as u32, |v| *v);
            assert!(matches!(made, Inserted::New(v) if v == n as u32));
        }
        assert!(matches!(
            m.insert_with(ids[3], || 99, |v| *v),
            Inserted::Existing(3)
        ));
        assert_eq!(m.len(), 2_000);
        assert_eq!(m.get(ids[5], |v| *v), Some(5));
        assert!(m.contains(ids[5]));
        assert_eq!(m.remove_if(ids[5], |v| *v == 6), None);
        assert_eq!(m.remove_if(ids[5], |v| *v == 5), Some(5));
        assert_eq!(m.remove(ids[5]), None);
        assert_eq!(m.remove(ids[6]), Some(6));
        // Every sample is a cell that is there.
        let mut seen = 0;
        for r in 0..100u64 {
            m.sample(crate::core::hash::mix(r, 1), r, 8, |id, v| {
                assert_eq!(m.get(id, |x| *x), Some(*v));
                seen += 1;
            });
        }
        assert_eq!(seen, 800, "runs are made up to 8 cells");
        m.retain(|v| v % 2 == 0);
        assert_eq!(m.len(), 999);
        m.retain(|_| false);
        assert_eq!(m.len(), 0);
        m.sample(1, 1, 8, |_, _| panic!("an empty map has nothing to sample"));
    }

    #[test]
    fn churn_at_the_cap_does_not_double_the_tables() {
        // A map filled to its cap, then a flood's churn: each new cell
        // displaces one from its own shard (as the store's admission
        // does), 20 times the cap over, so every shard keeps its count.
        let cap = 20_000;
        let m: Shards<u64> = Shards::new(cap);
        let tables = |m: &Shards<u64>| -> Vec<(usize, usize)> {
            let t = m.shards.iter().map(|s| s.0.read());
            t.map(|t| (t.len(), t.num_buckets())).collect()
        };
        for i in 0..cap as u64 {
            m.insert_with(crate::core::hash::mix(i, 3), || i, |_| ());
        }
        let at_cap = tables(&m);
        for i in cap as u64..21 * cap as u64 {
            let id = crate::core::hash::mix(i, 3);
            let mut victim = None;
            m.sample(id, i, 1, |v, _| victim = Some(v));
            assert!(m.remove(victim.expect("the map is full")).is_some());
            m.insert_with(id, || i, |_| ());
        }
        assert_eq!(m.len(), cap, "every cell kept through the rebuilds");
        let (mut kept, mut fuller) = (0, 0);
        for ((len, before), (len_now, now)) in at_cap.iter().zip(tables(&m)) {
            assert_eq!(*len, len_now, "a shard keeps its count");
            if *len < rebuilt_under(*before) {
                assert_eq!(*before, now, "a table with room left is not doubled");
                kept += 1;
            } else {
                fuller += 1;
            }
        }
        assert!(
            kept > 9 * fuller,
            "{kept} tables with room, {fuller} nearly full"
        );
    }

    #[test]
    fn tables_at_the_cap_are_four_fifths_full() {
        assert_eq!(shards_for(0), 1);
        assert_eq!(shards_for(10), 1);
        assert_eq!(shards_for(1_000), 20);
        // 2²⁰-ish caps: 4 096 buckets of which 3 276 used.
        for (cap, n) in [(1_000_000, 306), (2_000_000, 306), (10_000_000, 382)] {
            let s = shards_for(cap);
            assert_eq!(s, n, "cap {cap}");
            let per = cap.div_ceil(s);
            let buckets = (per * 8 / 7 + 1).next_power_of_two();
            assert!(per * 5 <= buckets * 4 + 5, "cap {cap}: {per} in {buckets}");
        }
    }

    #[test]
    fn a_small_map_is_one_shard_and_a_sample_sees_all_of_it() {
        let m: Shards<u32> = Shards::new(10);
        for i in 0..5u64 {
            let _ = m.insert_with(crate::core::hash::mix(i, 3), || i as u32, |_| ());
        }
        let mut seen = Vec::new();
        m.sample(99, 12345, 8, |_, v| seen.push(*v));
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3, 4]);
    }
}
