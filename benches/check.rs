//! Benchmarks of the decision path, [`Engine::check`], with 1, 1 000 and
//! 1 000 000 distinct keys on 1 and 2 threads. Results and how to read them:
//! `BENCHMARKS.md`.
//!
//! Run with `cargo bench --bench check -- --noplot`. Under `cargo test
//! --benches` (no `--bench` argument) criterion runs every case once and the
//! large key count shrinks to [`TEST_KEYS`], so the test run takes seconds.
//!
//! Groups: `one-limit` and `two-limits` (a rate, or a rate plus a daily
//! quota) run `check` at each key count on 1 and 2 threads, keys read from a
//! pre-generated buffer; at the large key count they also run
//! `check-fmt-key`, the same with the key formatted in registers instead
//! (no harness cache miss), and `check-zipf`, keys drawn from a Zipf
//! distribution (s = 1) like real traffic. `denied` is one hot key on a tight bucket,
//! `modes` a charge, a peek and a report side by side,
//! `insert` checks keys never seen, `components` times pieces of the path.
//!
//! Every case times its own loop (`iter_custom`) and reports wall time divided
//! by the decisions made, so with 2 threads the figure is the *amortized* time
//! per decision of the aggregate throughput (per-thread latency is about twice
//! that when both threads get a core).

use std::fmt::Write as _;
use std::hint::black_box;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use quotad::core::clock::NANOS_PER_SEC;
use quotad::core::window::Window;
use quotad::core::{Clock, KeyHasher, Request, SystemClock};
use quotad::engine::Engine;
use quotad::limits::{Limit, LimitKind, Plan, Quota, Rate, Table};
use quotad::store::StoreLimits;

/// The large key count under `cargo bench`.
const BENCH_KEYS: usize = 1_000_000;
/// The large key count in test mode (`cargo test --benches`).
const TEST_KEYS: usize = 10_000;
/// Every key is `key-` and 8 digits, so key `i` sits at `i * KEY_WIDTH` in
/// one contiguous buffer: fetching a key costs one cache line, not a
/// `String` header plus a heap block.
const KEY_WIDTH: usize = 12;
/// Above the cells any case needs (1M keys × 2 limits, plus a UTC day
/// rollover's worth of new quota cells), so no check is judged by an
/// overflow cell.
const MAX_CELLS: usize = 4_000_000;

/// True under `cargo bench` (criterion's benchmark mode: `--bench` and not
/// `--test`/`--list`); false under `cargo test --benches`.
fn bench_mode() -> bool {
    static MODE: OnceLock<bool> = OnceLock::new();
    *MODE.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        has("--bench") && !has("--test") && !has("--list")
    })
}

fn big_keys() -> usize {
    if bench_mode() { BENCH_KEYS } else { TEST_KEYS }
}

/// The key counts of the check groups.
fn key_counts() -> [usize; 3] {
    [1, 1_000, big_keys()]
}

/// Pre-generated keys `key-00000000`, `key-00000001`, … in one buffer, built
/// once per process.
struct Keys {
    buf: String,
}

impl Keys {
    fn get() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let n = big_keys();
            let mut buf = String::with_capacity(n * KEY_WIDTH);
            for i in 0..n {
                write!(buf, "key-{i:08}").expect("writing to a String");
            }
            assert_eq!(buf.len(), n * KEY_WIDTH);
            Keys { buf }
        })
    }

    #[inline]
    fn key(&self, i: usize) -> &str {
        &self.buf[i * KEY_WIDTH..(i + 1) * KEY_WIDTH]
    }
}

/// xorshift64 step mapped onto `0..n` by multiply-shift: a few cycles, and
/// the order defeats the prefetcher, so the 1M case really misses cache.
#[inline]
fn next_index(state: &mut u64, n: usize) -> usize {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (((x >> 32) * n as u64) >> 32) as usize
}

fn seed(thread: usize) -> u64 {
    0x9e37_79b9_7f4a_7c15 ^ ((thread as u64 + 1) << 17)
}

/// Times `f` with the monotonic clock. `Instant` is banned in the library
/// (time goes through `Clock` there); a bench harness needs a stopwatch.
#[allow(clippy::disallowed_types)]
fn timed<R>(f: impl FnOnce() -> R) -> (Duration, R) {
    let start = std::time::Instant::now();
    let r = f();
    (start.elapsed(), r)
}

fn nz(v: u64) -> NonZeroU64 {
    NonZeroU64::new(v).expect("non-zero")
}

/// A token bucket of `rate` per second holding `burst`.
fn rate_limit(name: &str, rate: u64, burst: u64) -> Limit {
    let rate = Rate::new(nz(rate), NANOS_PER_SEC, nz(burst)).expect("valid rate");
    Limit::new("bench", name, LimitKind::Rate(rate))
}

/// One bucket of 10⁹ tokens/s, burst 10⁹: each check moves the bucket 1 ns,
/// less than a check takes even with 2 threads on one key, so every check is
/// *allowed* at every key count and the cases compare the same path (the
/// common one in production). The allowed share is printed per case.
fn one_limit_plan() -> Plan {
    Plan {
        concurrency: None,
        name: "bench".into(),
        limits: vec![rate_limit("per-second", 1_000_000_000, 1_000_000_000)],
    }
}

/// The same bucket plus a daily quota too large to run out (2⁵⁰ a day): the
/// cost of a second limit (second cell id, second lookup, calendar span).
fn two_limit_plan() -> Plan {
    let mut plan = one_limit_plan();
    plan.limits.push(Limit::new(
        "bench",
        "daily",
        LimitKind::Quota(Quota {
            quota: nz(1 << 50),
            window: Window::Day,
        }),
    ));
    plan
}

/// A realistic bucket (1000/s, burst 1000) that one hot key drains at once:
/// nearly every check is denied.
fn tight_plan() -> Plan {
    Plan {
        concurrency: None,
        name: "bench".into(),
        limits: vec![rate_limit("per-second", 1_000, 1_000)],
    }
}

/// A engine on the real clock with keys `0..n` already tracked, so the
/// timed checks are lookups of existing cells.
fn engine(plan: Plan, n: usize) -> Arc<Engine> {
    let cells_per_key = plan.limits.len();
    let hasher = KeyHasher::with_secret(*b"quotad-bench-key");
    let table = Table::new(vec![plan], "bench", [], &hasher).expect("valid table");
    let limits = StoreLimits {
        max_cells: MAX_CELLS,
    };
    let engine = Engine::new(table, hasher, limits, Arc::new(SystemClock::new()));
    let keys = Keys::get();
    for i in 0..n {
        engine.check(&Request::new(keys.key(i), 1));
    }
    assert_eq!(engine.store().tracked(), n * cells_per_key);
    assert_eq!(engine.store().overflowed(), 0);
    Arc::new(engine)
}

/// Writes key `i` (`key-` and 8 digits, the same text as [`Keys::key`])
/// into `buf`: a few ns of arithmetic in registers, no memory traffic, like
/// a key that just arrived in a request buffer.
#[inline]
fn format_key(buf: &mut [u8; KEY_WIDTH], i: usize) -> &str {
    buf[..4].copy_from_slice(b"key-");
    let mut v = i;
    for b in buf[4..].iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
    std::str::from_utf8(buf).expect("ASCII")
}

/// Where the timed loop gets its key text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeySource {
    /// Read from the pre-generated buffer: at 1M keys a random read in 12
    /// MB, so a cache (and TLB) miss the service would not have.
    Buffer,
    /// Formatted from the index each time ([`format_key`]): no extra miss.
    Formatted,
    /// Formatted, with the index drawn from a Zipf distribution (s = 1)
    /// instead of uniformly: a few keys are hot, as in real API traffic.
    Zipf,
}

/// Pre-drawn Zipf(s = 1) indices over `0..big_keys()`, cycled by the timed
/// loop (drawing takes a binary search, too slow to do while timing).
fn zipf_indices() -> &'static [u32] {
    static DRAWN: OnceLock<Vec<u32>> = OnceLock::new();
    DRAWN.get_or_init(|| {
        let n = big_keys();
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0f64;
        for k in 1..=n {
            total += 1.0 / k as f64;
            cdf.push(total);
        }
        let mut rng = seed(99);
        (0..1 << 20)
            .map(|_| {
                // A uniform draw in [0, total), then the first rank whose
                // cumulative weight exceeds it.
                let u = next_index(&mut rng, 1 << 30) as f64 / (1u64 << 30) as f64 * total;
                cdf.partition_point(|&c| c <= u).min(n - 1) as u32
            })
            .collect()
    })
}

impl KeySource {
    fn label(self) -> &'static str {
        match self {
            KeySource::Buffer => "check",
            KeySource::Formatted => "check-fmt-key",
            KeySource::Zipf => "check-zipf",
        }
    }
}

/// `iters` checks of cost 1 on keys drawn from `0..n`; returns how many
/// were allowed.
#[inline]
fn checks(engine: &Engine, n: usize, iters: u64, seed: u64, source: KeySource) -> u64 {
    let keys = Keys::get();
    let zipf = if source == KeySource::Zipf {
        zipf_indices()
    } else {
        &[]
    };
    let mut rng = seed;
    let mut allowed = 0;
    let mut buf = [0u8; KEY_WIDTH];
    // Zipf draws are read in order (prefetched, no harness miss), each
    // thread from its own offset.
    let mut z = seed as usize;
    for _ in 0..iters {
        let i = next_index(&mut rng, n);
        let key = match source {
            KeySource::Buffer => keys.key(i),
            KeySource::Formatted => format_key(&mut buf, i),
            KeySource::Zipf => {
                z = z.wrapping_add(1);
                format_key(&mut buf, zipf[z % zipf.len()] as usize)
            }
        };
        let d = engine.check(&Request::new(key, 1));
        allowed += u64::from(d.allowed);
    }
    allowed
}

/// Decisions made and allowed over all of a case's runs (warm-up included).
#[derive(Default)]
struct Tally {
    total: AtomicU64,
    allowed: AtomicU64,
}

impl Tally {
    fn add(&self, total: u64, allowed: u64) {
        self.total.fetch_add(total, Ordering::Relaxed);
        self.allowed.fetch_add(allowed, Ordering::Relaxed);
    }

    fn print(&self, what: &str) {
        let total = self.total.load(Ordering::Relaxed);
        let allowed = self.allowed.load(Ordering::Relaxed);
        if bench_mode() && total > 0 {
            let pct = 100.0 * allowed as f64 / total as f64;
            println!("  {what}: {pct:.2}% of {total} checks allowed");
        }
    }
}

/// Benches `iters` checks over `threads` threads sharing `engine`; the
/// sample time is the wall time of the slowest thread, measured from a
/// common start (a barrier), so thread spawning is not counted.
fn bench_checks(
    g: &mut BenchmarkGroup<'_, WallTime>,
    source: KeySource,
    engine: &Arc<Engine>,
    n: usize,
    threads: usize,
) {
    let name = source.label();
    let tally = Tally::default();
    g.bench_function(BenchmarkId::new(format!("{name}/t{threads}"), n), |b| {
        b.iter_custom(|iters| {
            if threads == 1 {
                let (t, allowed) = timed(|| checks(engine, n, iters, seed(0), source));
                tally.add(iters, allowed);
                return t;
            }
            let barrier = Barrier::new(threads);
            let base = iters / threads as u64;
            let extra = iters % threads as u64;
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let mine = base + u64::from((t as u64) < extra);
                        let engine: &Engine = engine;
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            timed(|| checks(engine, n, mine, seed(t), source))
                        })
                    })
                    .collect();
                let mut wall = Duration::ZERO;
                let mut allowed = 0;
                for h in handles {
                    let (t, a) = h.join().expect("bench thread panicked");
                    wall = wall.max(t);
                    allowed += a;
                }
                tally.add(iters, allowed);
                wall
            })
        });
    });
    tally.print(&format!("{name}/t{threads}/{n}"));
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// One group per plan; each key count's engine (and the shared key buffer)
/// is built once and used by both thread counts.
fn check_group(c: &mut Criterion, group: &str, plan: fn() -> Plan) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    for n in key_counts() {
        let engine = engine(plan(), n);
        for threads in [1, 2] {
            bench_checks(&mut g, KeySource::Buffer, &engine, n, threads);
        }
        if n == big_keys() {
            for source in [KeySource::Formatted, KeySource::Zipf] {
                for threads in [1, 2] {
                    bench_checks(&mut g, source, &engine, n, threads);
                }
            }
        }
    }
    g.finish();
}

fn one_limit(c: &mut Criterion) {
    check_group(c, "one-limit", one_limit_plan);
}

fn two_limits(c: &mut Criterion) {
    check_group(c, "two-limits", two_limit_plan);
}

/// One hot key on a 1000/s bucket: the denied path (a denied decision
/// consumes nothing, so it is a load and a compare, no CAS).
fn denied(c: &mut Criterion) {
    let mut g = c.benchmark_group("denied");
    g.throughput(Throughput::Elements(1));
    let engine = engine(tight_plan(), 1);
    bench_checks(&mut g, KeySource::Buffer, &engine, 1, 1);
    g.finish();
}

/// The two-limit plan at 1 000 keys on one thread, each way of asking:
/// a charge, a peek (`CHECK_MODE_PEEK`: both limits evaluated, nothing
/// written) and a report (`Report`: both limits charged whatever they
/// hold, so the keys sink into debt and stay there).
fn modes(c: &mut Criterion) {
    let mut g = c.benchmark_group("modes");
    g.throughput(Throughput::Elements(1));
    let n = 1_000;
    let keys = Keys::get();
    let engine = engine(two_limit_plan(), n);
    type Ask = fn(&Engine, &Request<'_>) -> quotad::core::Decision;
    let ways: [(&str, Ask); 3] = [
        ("charge", |e, r| e.check(r)),
        ("peek", |e, r| e.peek(r)),
        ("report", |e, r| e.report(r)),
    ];
    for (name, ask) in ways {
        g.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter_custom(|iters| {
                let mut rng = seed(0);
                let (t, ()) = timed(|| {
                    for _ in 0..iters {
                        let key = keys.key(next_index(&mut rng, n));
                        black_box(ask(&engine, &Request::new(key, 1)));
                    }
                });
                t
            });
        });
    }
    g.finish();
}

/// Checks of keys never seen before: each inserts a cell. The store fills
/// from empty to the large key count, then is replaced (untimed) by an empty
/// one, so the figure averages inserts over a map growing 0 → 1M, resizes
/// included.
fn inserts(c: &mut Criterion) {
    let mut g = c.benchmark_group("insert");
    g.throughput(Throughput::Elements(1));
    let n = big_keys();
    let keys = Keys::get();
    let mut fresh = engine(one_limit_plan(), 0);
    let mut next = 0;
    g.bench_function(BenchmarkId::new("one-limit/fill-to", n), |b| {
        b.iter_custom(|iters| {
            let mut left = iters;
            let mut total = Duration::ZERO;
            while left > 0 {
                if next == n {
                    fresh = engine(one_limit_plan(), 0);
                    next = 0;
                }
                let k = (left as usize).min(n - next);
                let (t, ()) = timed(|| {
                    for i in next..next + k {
                        black_box(fresh.check(&Request::new(keys.key(i), 1)));
                    }
                });
                total += t;
                next += k;
                left -= k as u64;
            }
            total
        });
    });
    g.finish();
}

/// Pieces of the 1M-key hot path measured alone, to see where the time
/// goes: the harness itself (random index + key fetch from the buffer;
/// alone, consecutive fetches overlap their misses, so this understates the
/// fetch inside the check loop), the harness with a formatted key, the
/// harness plus the keyed SipHash of the key, and one `SystemClock` read.
fn components(c: &mut Criterion) {
    let mut g = c.benchmark_group("components");
    g.throughput(Throughput::Elements(1));
    let n = big_keys();
    let keys = Keys::get();
    g.bench_function(BenchmarkId::new("harness", n), |b| {
        b.iter_custom(|iters| {
            let mut rng = seed(0);
            let (t, _) = timed(|| {
                let mut acc = 0u8;
                for _ in 0..iters {
                    let key = black_box(keys.key(next_index(&mut rng, n)));
                    acc ^= key.as_bytes()[KEY_WIDTH - 1];
                }
                black_box(acc)
            });
            t
        });
    });
    g.bench_function(BenchmarkId::new("harness-fmt-key", n), |b| {
        b.iter_custom(|iters| {
            let mut rng = seed(0);
            let mut buf = [0u8; KEY_WIDTH];
            let (t, _) = timed(|| {
                let mut acc = 0u8;
                for _ in 0..iters {
                    let key = black_box(format_key(&mut buf, next_index(&mut rng, n)));
                    acc ^= key.as_bytes()[KEY_WIDTH - 1];
                }
                black_box(acc)
            });
            t
        });
    });
    let hasher = KeyHasher::with_secret(*b"quotad-bench-key");
    g.bench_function(BenchmarkId::new("harness+key_hash", n), |b| {
        b.iter_custom(|iters| {
            let mut rng = seed(0);
            let (t, _) = timed(|| {
                let mut acc = 0u64;
                for _ in 0..iters {
                    let key = keys.key(next_index(&mut rng, n));
                    acc ^= hasher.key_hash(key.as_bytes());
                }
                black_box(acc)
            });
            t
        });
    });
    let clock = SystemClock::new();
    g.bench_function("system_clock_now", |b| {
        b.iter(|| black_box(&clock).now());
    });
    g.finish();
}

/// A key flood's hot path: a store at its cap (100 000 cells; 1 000 in
/// test mode) of one-shot keys on a bucket of 1 a day (each cell holds a
/// debt), and checks of keys never seen before, on 1 thread. Each must win
/// a cell by displacing a one-shot one (or, where no cell may be taken,
/// go to the overflow bucket). The same source builds against earlier
/// versions, which sent every such check to the overflow bucket: compare
/// `flood/new-keys` before and after.
fn flood(c: &mut Criterion) {
    let cap = if bench_mode() { 100_000 } else { 1_000 };
    let daily = Rate::new(nz(1), 86_400 * NANOS_PER_SEC, nz(1_000)).expect("valid rate");
    let plan = Plan {
        concurrency: None,
        name: "bench".into(),
        limits: vec![Limit::new("bench", "daily", LimitKind::Rate(daily))],
    };
    let hasher = KeyHasher::with_secret(*b"quotad-bench-key");
    let table = Table::new(vec![plan], "bench", [], &hasher).expect("valid table");
    let limits = StoreLimits { max_cells: cap };
    let engine = Engine::new(table, hasher, limits, Arc::new(SystemClock::new()));
    let mut buf = [0u8; KEY_WIDTH];
    for i in 0..cap {
        engine.check(&Request::new(format_key(&mut buf, i), 1));
    }
    let mut next = cap;
    let mut g = c.benchmark_group("flood");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("new-keys", cap), |b| {
        b.iter_custom(|iters| {
            let (t, ()) = timed(|| {
                for _ in 0..iters {
                    // Eight digits: after 10⁸ keys they repeat, long since
                    // displaced.
                    next = (next + 1) % 100_000_000;
                    black_box(engine.check(&Request::new(format_key(&mut buf, next), 1)));
                }
            });
            t
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = one_limit, two_limits, denied, modes, inserts, components, flood
}
criterion_main!(benches);
