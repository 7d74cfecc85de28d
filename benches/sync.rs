//! Redis `sync` mode against pure in-memory: decisions per second with the
//! same load, and what the sync task costs Redis. Not a criterion bench: a
//! plain `main` (results in `BENCHMARKS.md`).
//!
//! For each key count it runs 2 threads of `Engine::check` for a fixed
//! time on (1) an in-memory engine, (2) one that journals its charges
//! with nobody draining them (the request path's own cost), and (3) one
//! whose charges are journaled and flushed every 50 ms to a real `redis-server` (started on
//! a free loopback port) by the real sync task, then reports the ratio,
//! the flush rounds and the sync script's calls (each up to 500 cells) per
//! round and per second from `INFO commandstats`. Target: sync ≥ 90 % of
//! in-memory. Then it times one flush round of many dirty cells against
//! the same Redis: cells per second and Redis's CPU per cell (`INFO
//! cpu`), targets ≥ 300 000 cells/s and ≤ 2 µs.
//!
//! `cargo bench --bench sync` runs 3 s per case over 1 000 and 100 000
//! keys; without `--bench` (test mode) it runs 0.2 s over 1 000 keys. It
//! skips with a message when `redis-server` is not installed
//! (`scripts/test.sh` installs it).

use std::hint::black_box;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quotad::config::RedisSettings;
use quotad::core::clock::NANOS_PER_SEC;
use quotad::core::{KeyHasher, Request, SystemClock};
use quotad::engine::Engine;
use quotad::limits::{Limit, LimitKind, Plan, Rate, Table};
use quotad::shutdown;
use quotad::store::StoreLimits;
use quotad::sync::RedisSync;

mod common;

use common::{Redis, bench_mode};

const THREADS: usize = 2;

fn engine(sync: bool) -> Arc<Engine> {
    let rate = Rate::new(
        NonZeroU64::new(1_000_000).unwrap_or(NonZeroU64::MIN),
        NANOS_PER_SEC,
        NonZeroU64::new(1_000_000).unwrap_or(NonZeroU64::MIN),
    )
    .expect("valid rate");
    let plan = Plan {
        concurrency: None,
        name: "p".into(),
        limits: vec![Limit::new("p", "per-second", LimitKind::Rate(rate))],
    };
    let hasher = KeyHasher::with_secret([7; 16]);
    let table = Table::new(vec![plan], "p", [], &hasher).expect("table");
    let mut l = Engine::new(
        table,
        hasher,
        StoreLimits {
            max_cells: 1_000_000,
        },
        Arc::new(SystemClock::new()),
    );
    if sync {
        l.enable_sync();
    }
    Arc::new(l)
}

/// Checks per second over `keys` keys for `run`, on [`THREADS`] threads.
fn throughput(l: &Engine, keys: usize, run: Duration) -> f64 {
    let names: Vec<String> = (0..keys).map(|i| format!("key-{i:08}")).collect();
    let stop = AtomicBool::new(false);
    let total: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (names, stop) = (&names, &stop);
                s.spawn(move || {
                    let mut n = 0u64;
                    let mut i = t * 7919;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            i = (i + 104_729) % names.len();
                            black_box(l.check(&Request::new(&names[i], 1)));
                        }
                        n += 256;
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(run);
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    total as f64 / run.as_secs_f64()
}

fn main() {
    let bench = bench_mode();
    let run = Duration::from_millis(if bench { 3_000 } else { 200 });
    let key_counts: &[usize] = if bench { &[1_000, 100_000] } else { &[1_000] };
    let Some(redis) = Redis::start() else {
        println!("sync bench: skipped (redis-server not installed; scripts/test.sh installs it)");
        return;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("sync bench: skipped (no tokio runtime: {e})");
            return;
        }
    };
    println!(
        "sync bench: {THREADS} threads, {} ms per case, sync_interval 50 ms",
        run.as_millis()
    );
    println!(
        "| keys | in-memory checks/s | journal only | sync checks/s | sync / in-memory | flush rounds | script calls/round | script calls/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &keys in key_counts {
        let local = throughput(&engine(false), keys, run);
        // The request path's own cost: journaling, with no task draining.
        let journal_only = throughput(&engine(true), keys, run);

        let l = engine(true);
        let mut settings = RedisSettings::new(format!("redis://127.0.0.1:{}", redis.port));
        settings.sync_interval = Duration::from_millis(50);
        // The connection manager needs the runtime's reactor.
        let entered = rt.enter();
        let created = RedisSync::new(Arc::clone(&l), settings);
        drop(entered);
        let (sync, handle) = match created {
            Ok(s) => s,
            Err(e) => {
                println!("sync bench: skipped ({e})");
                return;
            }
        };
        let (trigger, stop) = shutdown::channel();
        let task = rt.spawn(sync.run(stop));
        let calls_before = redis.calls("evalsha");
        let rounds_before = handle.rounds();
        let synced = throughput(&l, keys, run);
        let rounds = handle.rounds() - rounds_before;
        trigger.fire();
        let _ = rt.block_on(task);
        let calls = redis.calls("evalsha") - calls_before;
        println!(
            "| {keys} | {local:.0} | {journal_only:.0} ({:.2}) | {synced:.0} | {:.2} | {rounds} | {:.0} | {:.0} |",
            journal_only / local,
            synced / local,
            calls as f64 / rounds.max(1) as f64,
            calls as f64 / run.as_secs_f64()
        );
        assert!(calls > 0, "the sync task sent nothing to Redis");
    }
    flush_throughput(&redis, &rt, if bench { 200_000 } else { 2_000 });
}

/// Redis's CPU time so far (`used_cpu_sys` + `used_cpu_user`), in seconds.
fn redis_cpu(redis: &Redis) -> f64 {
    let info = redis.command("INFO cpu").unwrap_or_default();
    ["used_cpu_sys:", "used_cpu_user:"]
        .iter()
        .filter_map(|f| {
            info.lines()
                .find_map(|l| l.strip_prefix(f))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .sum()
}

/// How fast one node's sync task sends dirty cells to one local
/// `redis-server`: `cells` distinct keys charged once each (every cell
/// dirty), then one flush round timed; and what Redis spent on them
/// (`INFO cpu`). Three rounds: new cells (keys Redis has not seen), the
/// same cells again, new cells again. Targets: >= 300 000 cells/s, Redis
/// CPU <= 2 µs per cell.
fn flush_throughput(redis: &Redis, rt: &tokio::runtime::Runtime, cells: usize) {
    let l = engine(true);
    let mut settings = RedisSettings::new(format!("redis://127.0.0.1:{}", redis.port));
    settings.sync_interval = Duration::from_secs(3_600);
    let entered = rt.enter();
    let created = RedisSync::new(Arc::clone(&l), settings);
    drop(entered);
    let Ok((mut sync, _)) = created else {
        println!("sync bench: flush throughput skipped (no sync task)");
        return;
    };
    println!();
    println!(
        "flush throughput: one flush round of {cells} dirty cells (bucket deltas), one node, local redis-server"
    );
    println!("| round | cells | seconds | cells/s | Redis CPU µs/cell | script calls |");
    println!("|---|---|---|---|---|---|");
    for (round, offset) in [("new keys", 0), ("same keys", 0), ("new keys", cells)] {
        for i in 0..cells {
            black_box(l.check(&Request::new(&format!("flush-{:09}", i + offset), 1)));
        }
        let calls_before = redis.calls("evalsha") + redis.calls("eval");
        let cpu_before = redis_cpu(redis);
        let started = quotad::core::clock::Stopwatch::start();
        let sent = rt.block_on(sync.flush_all());
        let took = started.seconds();
        let cpu = redis_cpu(redis) - cpu_before;
        let calls = redis.calls("evalsha") + redis.calls("eval") - calls_before;
        match sent {
            Ok(n) => println!(
                "| {round} | {n} | {took:.3} | {:.0} | {:.2} | {calls} |",
                n as f64 / took,
                cpu * 1e6 / n.max(1) as f64
            ),
            Err(e) => println!("| {round} | failed: {e} | | | | |"),
        }
    }
}
