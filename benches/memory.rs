//! Memory per tracked key. Not a criterion bench: a plain `main` that
//! inserts keys and reports, two ways, what the store costs per tracked
//! cell:
//!
//! 1. a counting global allocator (live heap bytes after − before);
//! 2. the resident set size from `/proc/self/status` (`VmRSS`).
//!
//! It then sweeps (all buckets full again) and reports what is left, and
//! runs once more with a cap of a tenth of the keys to show the admission
//! policy at work (each new key displaces one charged once), and once in
//! sync mode with every cell dirty (store and journal together), buckets
//! then window counters. Targets:
//! ≤ 64 bytes per tracked key at 1M keys; ≤ 96 in sync mode (issue 20).
//!
//! `cargo bench --bench memory` uses 1 000 000 keys; without `--bench`
//! (`cargo test --benches`, `cargo test --all-targets`) it uses 10 000 keys
//! and only asserts sanity. See `BENCHMARKS.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use quotad::core::clock::NANOS_PER_SEC;
use quotad::core::limit::FixedWindow;
use quotad::core::{Clock, KeyHasher, ManualClock, Request};
use quotad::engine::Engine;
use quotad::limits::{Limit, LimitKind, Plan, Rate, Table};
use quotad::store::StoreLimits;

/// Live heap bytes and their high-water mark.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// `System`, counting the bytes it hands out.
struct Counting;

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(n: usize) {
    CURRENT.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; the counting only touches
// atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as `GlobalAlloc::alloc`, passed through.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as `GlobalAlloc::alloc_zeroed`, passed through.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (so by `System`)
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as `GlobalAlloc::realloc`, passed through.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// 2023-11-14T22:13:20Z, in Unix nanoseconds.
const T0: u64 = 1_700_000_000 * NANOS_PER_SEC;
/// Target from the issue: bytes per tracked key at 1M keys.
const TARGET_BYTES_PER_KEY: f64 = 64.0;

fn bench_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    has("--bench") && !has("--test")
}

/// Live heap bytes right now.
fn heap() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Resident set size in bytes, from `/proc/self/status` (Linux only).
fn rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One bucket, 1000/s with a burst of 1000: a single check leaves it 1 ms
/// from full.
fn new_limiter(max_cells: usize, clock: &Arc<ManualClock>) -> Engine {
    limiter_of(per_second(), max_cells, clock)
}

/// 1 000 a second, burst 1 000.
fn per_second() -> LimitKind {
    let rate = Rate::new(
        NonZeroU64::new(1_000).expect("non-zero"),
        NANOS_PER_SEC,
        NonZeroU64::new(1_000).expect("non-zero"),
    )
    .expect("valid rate");
    LimitKind::Rate(rate)
}

/// An engine whose one plan has one limit of `kind`.
fn limiter_of(kind: LimitKind, max_cells: usize, clock: &Arc<ManualClock>) -> Engine {
    let plan = Plan {
        concurrency: None,
        name: "bench".into(),
        limits: vec![Limit::new("bench", "limit", kind)],
    };
    let hasher = KeyHasher::with_secret(*b"quotad-bench-key");
    let table = Table::new(vec![plan], "bench", [], &hasher).expect("valid table");
    let clock: Arc<dyn Clock> = clock.clone();
    Engine::new(table, hasher, StoreLimits { max_cells }, clock)
}

/// One check of cost 1 for each of the keys `key-00000000` … `key-{n-1}`.
/// The key is formatted into one reused buffer, so the keys themselves add
/// nothing to the heap.
fn insert_keys(engine: &Engine, n: usize) {
    let mut key = String::with_capacity(32);
    for i in 0..n {
        key.clear();
        write!(key, "key-{i:08}").expect("writing to a String");
        engine.check(&Request::new(&key, 1));
    }
}

fn per_key(bytes: isize, cells: usize) -> f64 {
    if cells == 0 {
        0.0
    } else {
        bytes as f64 / cells as f64
    }
}

fn fmt_rss(before: Option<usize>, after: Option<usize>, cells: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) => {
            let d = a as isize - b as isize;
            format!(
                "{:.1} B/key ({:+.1} MiB)",
                per_key(d, cells),
                d as f64 / (1024.0 * 1024.0)
            )
        }
        _ => "n/a (no /proc/self/status)".into(),
    }
}

fn main() {
    let bench = bench_mode();
    let n: usize = if bench { 1_000_000 } else { 10_000 };
    println!(
        "memory bench: {n} keys ({} mode), one 1000/s bucket per key",
        if bench { "bench" } else { "test" },
    );

    // 1. Memory per tracked key.
    let clock = Arc::new(ManualClock::new(T0));
    let heap_base = heap();
    let engine = new_limiter(2_000_000, &clock);
    let heap_before = heap();
    let rss_before = rss();
    PEAK.store(heap_before, Ordering::Relaxed);
    insert_keys(&engine, n);
    let heap_after = heap();
    let rss_after = rss();
    let peak = PEAK.load(Ordering::Relaxed);
    let tracked = engine.store().tracked();
    let heap_delta = heap_after as isize - heap_before as isize;
    let by_alloc = per_key(heap_delta, tracked);

    println!();
    println!("== insert ==");
    println!("keys checked:            {n}");
    println!("tracked cells:           {tracked}");
    println!("empty engine:           {} B heap", heap_before - heap_base);
    println!(
        "heap after − before:     {:.1} MiB  → {by_alloc:.1} B/key (allocator)",
        mib(heap_delta.max(0) as usize)
    );
    println!(
        "heap peak during insert: {:.1} MiB  → {:.1} B/key (transient, table resizes)",
        mib(peak - heap_before),
        per_key((peak - heap_before) as isize, tracked)
    );
    println!(
        "RSS after − before:      {}",
        fmt_rss(rss_before, rss_after, tracked)
    );
    println!(
        "target ≤ {TARGET_BYTES_PER_KEY} B/key (allocator): {}",
        if by_alloc <= TARGET_BYTES_PER_KEY {
            "MET"
        } else {
            "NOT MET"
        }
    );

    assert!(tracked >= n, "every key tracked: {tracked} < {n}");
    assert_eq!(engine.store().overflowed(), 0);
    assert!(by_alloc > 0.0, "the store must cost something per key");

    // 2. After a sweep: every bucket is full again 1 ms later; a minute on,
    // the sweep drops them all.
    clock.set(T0 + 60 * NANOS_PER_SEC);
    let report = engine.sweep();
    let heap_swept = heap();
    let rss_swept = rss();
    println!();
    println!("== after sweep (clock +60 s) ==");
    println!("buckets dropped:         {}", report.buckets);
    println!("tracked cells:           {}", engine.store().tracked());
    let kept = heap_swept as isize - heap_before as isize;
    println!(
        "heap vs before insert:   {:+.1} MiB ({})",
        kept as f64 / (1024.0 * 1024.0),
        if kept * 2 > heap_delta {
            "most capacity kept: retain drops entries, not table capacity"
        } else {
            "capacity released"
        }
    );
    match (rss_before, rss_swept) {
        (Some(b), Some(a)) => println!(
            "RSS vs before insert:    {:+.1} MiB (freed memory may stay with the process)",
            (a as isize - b as isize) as f64 / (1024.0 * 1024.0)
        ),
        _ => println!("RSS vs before insert:    n/a"),
    }
    assert_eq!(report.buckets, n);
    assert_eq!(engine.store().tracked(), 0);
    drop(engine);
    println!(
        "heap after drop vs base: {:+} B",
        heap() as isize - heap_base as isize
    );

    // 3. With a cap of n/10 cells: the first n/10 keys get cells; each
    // later one-shot key displaces one charged once (the admission
    // policy), so none needs the overflow cell.
    let cap = n / 10;
    let clock = Arc::new(ManualClock::new(T0));
    let heap_before = heap();
    let engine = new_limiter(cap, &clock);
    insert_keys(&engine, n);
    let tracked = engine.store().tracked();
    let overflowed = engine.store().overflowed();
    let displaced = engine.store().displaced();
    println!();
    println!("== capped: max_cells = {cap}, {n} distinct keys ==");
    println!("tracked cells:           {tracked} (the cap)");
    println!(
        "displaced:               {} buckets ({:.3} s of debt forgiven)",
        displaced.buckets,
        displaced.debt as f64 / 1e9
    );
    println!("charged to overflow:     {overflowed}");
    println!(
        "heap:                    {:.1} MiB (with the admission sketch)",
        mib(heap() - heap_before)
    );
    assert_eq!(tracked, cap, "cap respected");
    assert_eq!(displaced.buckets, (n - cap) as u64);
    assert_eq!(overflowed, 0);
    drop(engine);

    // 4. Sync mode with every cell dirty (Redis unreachable: nothing
    // drains the journal): store and journal together. Target (issue 20):
    // <= 96 B per tracked cell.
    all_dirty("every cell dirty (nothing drained)", per_second(), n);
    // 5. The same with one window counter per key (a minute's fixed
    // window): a counter cell is a word larger than a bucket's.
    let window = FixedWindow {
        limit: 1_000,
        period: 60 * NANOS_PER_SEC,
    };
    all_dirty(
        "window counters, every cell dirty",
        LimitKind::Window(window),
        n,
    );
    // 6. Concurrency leases (issue 21): one lease per key, each key's
    // cell its own, in this node's lease table.
    leases(n);
    // 7. Envoy RLQS (issue 22): (Envoy stream, bucket) pairs, 1 000
    // streams of 100 buckets each (a tenth of that without --bench), every
    // pair its own bucket, then every stream reporting the same buckets.
    let (streams, buckets) = if bench_mode() {
        (1_000, 100)
    } else {
        (100, 10)
    };
    rlqs_pairs("every pair its own bucket", streams, buckets, true);
    rlqs_pairs("every stream the same buckets", streams, buckets, false);
}

/// `streams` RLQS streams reporting `buckets` buckets each (`{tenant:
/// tenant-<i>}`, ids of 14–20 bytes), twice (so each pair is measured):
/// the engine's bytes per (stream, bucket) pair, the streams' own state
/// included.
fn rlqs_pairs(title: &str, streams: usize, buckets: usize, distinct: bool) {
    use quotad::engine::rlqs::Usage;
    let yaml = "plans: { p: {} }\ndefault_plan: p\nrlqs:\n  domains:\n    shop:\n      - { match: { tenant: \"*\" }, rate: 1000, per: second }\n";
    let config = quotad::config::Config::from_yaml(yaml, "bench.yaml").expect("valid");
    let clock = Arc::new(ManualClock::new(T0));
    let heap_before = heap();
    let engine = Arc::new(new_limiter(1_000, &clock).with_config(Arc::new(config)));
    let mut open = Vec::with_capacity(streams);
    for s in 0..streams {
        let stream = engine
            .rlqs_open(format!("127.0.0.1:{}", 10_000 + s), s)
            .expect("under the caps");
        for round in 0..2u64 {
            let usages = (0..buckets)
                .map(|b| Usage {
                    id: [(
                        "tenant".to_owned(),
                        format!("tenant-{}", if distinct { s * buckets + b } else { b }),
                    )]
                    .into_iter()
                    .collect(),
                    allowed: 10,
                    denied: 1,
                    elapsed: round * 5 * NANOS_PER_SEC,
                })
                .collect();
            stream.report("shop", usages).expect("under the caps");
        }
        open.push(stream);
    }
    let bytes = heap() as isize - heap_before as isize;
    let (n_streams, pairs, n_buckets) = engine.rlqs().sizes();
    println!();
    println!("== Envoy RLQS, {title} ==");
    println!("streams {n_streams}, buckets {n_buckets}, (stream, bucket) pairs {pairs}");
    println!(
        "heap:                    {:.1} MiB  → {:.1} B/pair (allocator)",
        mib(bytes.max(0) as usize),
        per_key(bytes, pairs)
    );
    assert_eq!(pairs, streams * buckets);
    drop(open);
}

/// `n` leases of one slot, each of its own key: the lease table's bytes
/// per lease (without the stream a Hold adds; see BENCHMARKS.md).
fn leases(n: usize) {
    use quotad::store::leases::{Acquired, Ask, Leases};
    let heap_before = heap();
    let table = Leases::new(n);
    let plan: Arc<str> = Arc::from("free");
    for cell in 0..n as u64 {
        let ask = Ask {
            cell: cell.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            limit: 10,
            slots: 1,
            ttl: 30 * NANOS_PER_SEC,
            plan: Arc::clone(&plan),
            over: false,
        };
        assert!(matches!(table.acquire(&ask, T0), Acquired::Granted { .. }));
    }
    let bytes = heap() as isize - heap_before as isize;
    println!();
    println!("== concurrency leases, one per key ==");
    println!("leases held:             {}", table.held());
    println!(
        "heap:                    {:.1} MiB  → {:.1} B/lease (allocator)",
        mib(bytes.max(0) as usize),
        per_key(bytes, n)
    );
    assert_eq!(table.held(), n);
}

/// Sync mode, `n` keys charged once against one limit of `kind`, nothing
/// drained: prints the store and journal's bytes per tracked cell.
fn all_dirty(title: &str, kind: LimitKind, n: usize) {
    let clock = Arc::new(ManualClock::new(T0));
    let heap_before = heap();
    let mut engine = limiter_of(kind, 2_000_000, &clock);
    engine.enable_sync();
    insert_keys(&engine, n);
    let tracked = engine.store().tracked();
    let dirty = engine.store().journal().map_or(0, |j| j.len());
    let bytes = heap() as isize - heap_before as isize;
    println!();
    println!("== sync mode, {title} ==");
    println!("tracked cells:           {tracked}, journal entries {dirty}");
    println!(
        "heap:                    {:.1} MiB  -> {:.1} B per tracked cell, store and journal (target <= 96)",
        mib(bytes.max(0) as usize),
        per_key(bytes, tracked)
    );
    assert_eq!(dirty, tracked, "every cell dirty");
}
