//! What operators' overrides cost: on the check path, and per change.
//!
//! - `check/*`: `Engine::check` of 1 000 keys in turn on a one-limit
//!   plan, with no override in force, with 10 000 overrides in force (for
//!   other keys), and with the checked keys overridden themselves. The
//!   first two should be equal: a key without an override pays one hash
//!   lookup, and none when there are no overrides.
//! - `apply-one/<n>`: one override set while `n` are in force, as every
//!   node does for every change (it rebuilds the override map), through
//!   `Control::apply`.
//! - `reload`: a reload of an unchanged config: load, validate, compare.
//!
//! Run with `cargo bench --bench overrides -- --noplot`; results in
//! BENCHMARKS.md. Under `cargo test --benches` every case runs once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quotad::config::Config;
use quotad::control::{Change, Control};
use quotad::core::{KeyHasher, Request, SystemClock};
use quotad::engine::Engine;
use quotad::limits::{Override, Target};
use quotad::store::StoreLimits;

const CONFIG: &str = "default_plan: p\nplans:\n  p: { limits: [ { name: per-second, rate: 1000000000, per: second, burst: 1000000000 } ] }\n  q: { limits: [ { name: per-second, rate: 1000000000, per: second, burst: 1000000000 } ] }\n";

/// Keys the check cases cycle through.
const KEYS: usize = 1_000;

fn setup() -> (Arc<Engine>, Arc<Control>) {
    let config = Config::from_yaml(CONFIG, "bench.yaml").expect("bench config");
    let hasher = KeyHasher::with_secret([3; 16]);
    let table = config.live.limits.table(&hasher).expect("table");
    let engine = Arc::new(Engine::new(
        table,
        hasher,
        StoreLimits {
            max_cells: 1_000_000,
        },
        Arc::new(SystemClock::new()),
    ));
    let control = Control::new(Arc::clone(&engine), config, String::new());
    (engine, control)
}

fn record(key_hash: u64, plan: &str) -> Override {
    Override {
        key_hash,
        target: Target::Plan(plan.into()),
        expires_at: None,
        reason: "bench".into(),
        author: "bench".into(),
        updated_at: 0,
    }
}

/// `n` overrides for keys `over-<i>`, and the bench keys too if `mine`.
fn overrides(engine: &Engine, n: usize, mine: bool) -> Vec<Override> {
    let h = engine.hasher();
    let mut out: Vec<Override> = (0..n)
        .map(|i| record(h.key_hash(format!("over-{i}").as_bytes()), "q"))
        .collect();
    if mine {
        out.extend((0..KEYS).map(|i| record(h.key_hash(format!("k-{i:04}").as_bytes()), "q")));
    }
    out
}

fn checks(c: &mut Criterion) {
    let names: Vec<String> = (0..KEYS).map(|i| format!("k-{i:04}")).collect();
    let mut g = c.benchmark_group("check");
    g.throughput(Throughput::Elements(1));
    for (case, n, mine) in [
        ("no-overrides", 0, false),
        ("10k-overrides-for-others", 10_000, false),
        ("key-overridden", 10_000, true),
    ] {
        let (engine, control) = setup();
        control.replace_all(overrides(&engine, n, mine));
        let mut i = 0;
        g.bench_function(case, |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(engine.check(&Request::new(&names[i], 1)))
            })
        });
        let want = if mine { "q" } else { "p" };
        let d = engine.check(&Request::new(&names[0], 1));
        let snap = engine.view();
        let plan = snap.limit(&d).map(|l| l.policy.as_str());
        assert_eq!(plan, Some(format!("{want}/per-second").as_str()));
    }
    g.finish();
}

fn apply_one(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply-one");
    g.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000, 100_000] {
        let (engine, control) = setup();
        control.replace_all(overrides(&engine, n, false));
        let key = engine.hasher().key_hash(b"changing");
        let mut flip = false;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                flip = !flip;
                let plan = if flip { "q" } else { "p" };
                control.apply(&[Change::Set(record(key, plan))]);
            })
        });
        assert_eq!(engine.view().table().overrides(), n + 1);
    }
    g.finish();
}

fn reload(c: &mut Criterion) {
    let (_, control) = setup();
    c.bench_function("reload/unchanged", |b| {
        b.iter(|| {
            let config = Config::from_yaml(CONFIG, "bench.yaml").expect("bench config");
            black_box(control.reload(config, String::new()).expect("reload"))
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = checks, apply_one, reload
}
criterion_main!(benches);
