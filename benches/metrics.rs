//! What the metrics cost: counting one check (the atomic add behind
//! `quotad_checks_total` and the latency sample), from one thread and from
//! two at once on the same series, the heaviest-keys tracker off and on,
//! and rendering `/metrics`. Results: `BENCHMARKS.md`.
//!
//! Run with `cargo bench --bench metrics -- --noplot`; under `cargo test
//! --benches` every case runs once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
#[allow(clippy::disallowed_types)]
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use quotad::core::clock::Stopwatch;
use quotad::core::{Decision, DenyReason};
use quotad::limits::PlanId;
use quotad::metrics::Metrics;
use quotad::metrics::{Api, Outcome};

fn allowed() -> Decision {
    Decision {
        plan: Some(PlanId(0)),
        ..Decision::UNLIMITED
    }
}

fn denied() -> Decision {
    Decision {
        allowed: false,
        reason: Some(DenyReason::Limited),
        ..allowed()
    }
}

fn record(c: &mut Criterion) {
    let m = Metrics::new();
    let (ok, no) = (allowed(), denied());
    m.checked(Api::Native, "gold", &ok);
    let mut g = c.benchmark_group("record");
    g.bench_function("checked-allowed", |b| {
        b.iter(|| m.checked(Api::Native, black_box("gold"), black_box(&ok)))
    });
    g.bench_function("checked-denied", |b| {
        b.iter(|| m.checked(Api::Native, black_box("gold"), black_box(&no)))
    });
    g.bench_function("rls-request", |b| {
        b.iter(|| m.rls(Api::Rls, black_box(Some("edge")), Outcome::Allowed))
    });
    g.bench_function("stopwatch", |b| {
        b.iter(|| black_box(Stopwatch::start()).seconds())
    });
    let h = m.histogram("bench_seconds", &[]);
    g.bench_function("histogram-record", |b| {
        b.iter(|| h.record(black_box(0.000_1)))
    });
    g.bench_function("stopwatch+latency-sample", |b| {
        b.iter(|| m.took(Api::Native, black_box(Stopwatch::start())))
    });
    // What a native check pays in all, with the heaviest keys off.
    g.bench_function("check-total", |b| {
        b.iter(|| {
            let t = Stopwatch::start();
            m.checked(Api::Native, black_box("gold"), black_box(&ok));
            if m.heavy().enabled() {
                m.heavy().note(1);
            }
            m.took(Api::Native, t);
        })
    });
    let heavy = Metrics::new();
    heavy.heavy().configure(10, Default::default());
    let mut i = 0u64;
    g.bench_function("heavy-note-k10", |b| {
        b.iter(|| {
            // 1 000 keys in turn, as a handful of heavy callers would be.
            i = (i + 1) % 1_000;
            heavy
                .heavy()
                .note(black_box(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        })
    });
    let mut i = 0u64;
    g.bench_function("heavy-note-k10-distinct-keys", |b| {
        b.iter(|| {
            // Every key new: the flood case, with its pruning.
            i += 1;
            heavy
                .heavy()
                .note(black_box(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        })
    });
    g.finish();
    m.upkeep();
}

/// Two threads counting checks of one plan at once: the contended case
/// (one cache line for the series); time per check per thread.
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
fn contended(c: &mut Criterion) {
    let m = Arc::new(Metrics::new());
    let ok = allowed();
    let mut g = c.benchmark_group("record-2-threads");
    g.bench_function("checked+latency", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let m = Arc::clone(&m);
                    s.spawn(move || {
                        for _ in 0..iters {
                            let t = Stopwatch::start();
                            m.checked(Api::Native, "gold", &ok);
                            m.took(Api::Native, t);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
    m.upkeep();
}

fn render(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    for plans in [4usize, 256] {
        let m = Metrics::new();
        let ok = allowed();
        for p in 0..plans {
            m.checked(Api::Native, &format!("plan-{p}"), &ok);
            m.rls(Api::Rls, Some(&format!("domain-{p}")), Outcome::Allowed);
        }
        for _ in 0..10_000 {
            m.took(Api::Native, Stopwatch::start());
        }
        g.bench_function(format!("plans-and-domains-{plans}"), |b| {
            b.iter(|| black_box(m.render().len()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = record, contended, render
}
criterion_main!(benches);
