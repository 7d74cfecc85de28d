//! Benchmarks of the Envoy RLS handler, `ShouldRateLimit`, called in
//! process (no network): validation, descriptor-tree matching, `replaces`,
//! the descriptor's keyed hash, the counter update, the response and its
//! headers. Results: `BENCHMARKS.md`.
//!
//! Run with `cargo bench --bench rls -- --noplot`; under `cargo test
//! --benches` every case runs once.
//!
//! The limits are `examples/envoy/limits/edge.yaml` (domain `edge`) read
//! as envoyproxy/ratelimit files, plus a plan domain `plans` for
//! comparison. Each iteration clones a prepared request (as decoding would
//! allocate one); `components/clone-request` times that clone alone.
//!
//! Cases: `one-descriptor` (`remote_address`, fixed window) over 1 and
//! 100 000 distinct IPs, with headers off and both; `three-descriptors`
//! (IP, API key, method+key) as Envoy sends for a POST; `token-bucket`
//! (the same file read with `algorithm: token_bucket`); `plans` (a plan
//! domain, one API key); `components` (the tree lookup, the descriptor
//! hash and header rendering alone); `peer-features` (envoyproxy/ratelimit's
//! `share_threshold`, `detailed_metric`, `quota_mode` and dynamic metadata).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use futures_util::FutureExt;
use prost::Message;
use quotad::api::envoy_rls::EnvoyRlsService;
use quotad::api::headers::{self, HeaderStyle, Standing};
use quotad::api::rls_reply::RlsReply;
use quotad::config::{Config, EnvoySettings, RequestCaps};
use quotad::core::{KeyHasher, SystemClock};
use quotad::engine::Engine;
use quotad::limits::header_text::HeaderText;
use quotad::limits::rls::Algorithm;
use quotad::store::StoreLimits;

/// Distinct client IPs in the many-keys case.
const MANY: usize = 100_000;

fn config(algorithm: Algorithm) -> Config {
    let limits = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy/limits/edge.yaml");
    let yaml = format!(
        "plans: {{ p: {{ limits: [ {{ name: per-second, rate: 1000000, per: second, burst: 1000000 }} ] }} }}\n\
         default_plan: p\nenvoy: {{ domains: [plans], algorithm: {} }}\nrls_files: [{}]\n",
        algorithm.as_str(),
        limits.display()
    );
    Config::from_yaml(&yaml, "bench.yaml").expect("bench config is valid")
}

fn service(algorithm: Algorithm, style: HeaderStyle) -> EnvoyRlsService {
    service_of(config(algorithm), style)
}

/// The service for `config`, with `style` headers in every domain.
fn service_of(config: Config, style: HeaderStyle) -> EnvoyRlsService {
    let hasher = KeyHasher::random();
    let table = config
        .live
        .limits
        .table(&hasher)
        .expect("table")
        .with_rls(config.live.rls.clone());
    let engine = Engine::new(
        table,
        hasher,
        StoreLimits {
            max_cells: 4 * MANY,
        },
        Arc::new(SystemClock::new()),
    );
    let mut config = config;
    config.live.envoy = EnvoySettings {
        domains: vec!["plans".into()],
        response_headers: style,
        ..config.live.envoy.clone()
    };
    config.live.requests = RequestCaps::default();
    config.live.response_headers = style;
    EnvoyRlsService::new(Arc::new(engine.with_config(Arc::new(config))))
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 1,
    }
}

/// One call (not its encoding: see `components/encode-answer-*`); the
/// handler never awaits, so it completes on first poll.
fn call(svc: &EnvoyRlsService, req: &RateLimitRequest) -> RlsReply {
    let fut = svc.should_rate_limit(tonic::Request::new(req.clone()));
    match fut.now_or_never() {
        Some(Ok(r)) => r.into_inner(),
        _ => panic!("the handler answered with an error or did not complete"),
    }
}

fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn one_descriptor(c: &mut Criterion) {
    let mut g = c.benchmark_group("one-descriptor");
    g.throughput(Throughput::Elements(1));
    for style in [HeaderStyle::Off, HeaderStyle::Both] {
        // Every limit is generous enough that the answers stay OK-ish;
        // over-limit answers cost the same work.
        let svc = service(Algorithm::FixedWindow, style);
        for n in [1, MANY] {
            let reqs: Vec<RateLimitRequest> = (0..n)
                .map(|i| {
                    let ip = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
                    request("edge", vec![descriptor(&[("remote_address", &ip)])])
                })
                .collect();
            let id = BenchmarkId::new(format!("headers-{}", style.as_str()), n);
            g.bench_function(id, |b| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % reqs.len();
                    black_box(call(&svc, &reqs[i]))
                })
            });
        }
    }
    g.finish();
}

fn three_descriptors(c: &mut Criterion) {
    let mut g = c.benchmark_group("three-descriptors");
    g.throughput(Throughput::Elements(1));
    let req = request(
        "edge",
        vec![
            descriptor(&[("remote_address", "10.0.0.1")]),
            descriptor(&[("api_key", "partner-key-123")]),
            descriptor(&[("method", "POST"), ("api_key", "partner-key-123")]),
        ],
    );
    for style in [HeaderStyle::Off, HeaderStyle::Both] {
        let svc = service(Algorithm::FixedWindow, style);
        g.bench_function(format!("headers-{}", style.as_str()), |b| {
            b.iter(|| black_box(call(&svc, &req)))
        });
    }
    g.finish();
}

fn token_bucket_and_plans(c: &mut Criterion) {
    let mut g = c.benchmark_group("compare");
    g.throughput(Throughput::Elements(1));
    let ip = request("edge", vec![descriptor(&[("remote_address", "10.0.0.1")])]);
    let svc = service(Algorithm::TokenBucket, HeaderStyle::Off);
    g.bench_function("token-bucket", |b| b.iter(|| black_box(call(&svc, &ip))));
    let svc = service(Algorithm::FixedWindow, HeaderStyle::Off);
    g.bench_function("fixed-window", |b| b.iter(|| black_box(call(&svc, &ip))));
    let key = request("plans", vec![descriptor(&[("api_key", "alice")])]);
    g.bench_function("plans", |b| b.iter(|| black_box(call(&svc, &key))));
    g.finish();
}

fn components(c: &mut Criterion) {
    let mut g = c.benchmark_group("components");
    let config = config(Algorithm::FixedWindow);
    let edge = config.live.rls.get("edge").expect("edge domain");
    let req = request(
        "edge",
        vec![descriptor(&[("method", "POST"), ("api_key", "k-1")])],
    );
    g.bench_function("clone-request", |b| b.iter(|| black_box(req.clone())));
    g.bench_function("tree-lookup-2-levels", |b| {
        b.iter(|| {
            let found = edge
                .root
                .lookup([("method", "POST"), (black_box("api_key"), "k-1")]);
            black_box(found.is_some())
        })
    });
    // One answer with the five `both` headers, encoded as the gRPC route
    // did (headers into Envoy's `HeaderValue`s, then prost) and does
    // (`RlsReply::encode`). Each takes a clone of the answer and drops it,
    // as a call does: compare the two, and `clone-answer` alone.
    let svc = service(Algorithm::FixedWindow, HeaderStyle::Both);
    let answer = call(
        &svc,
        &request("edge", vec![descriptor(&[("remote_address", "10.0.0.1")])]),
    );
    assert_eq!(answer.headers.len(), 5, "{answer:?}");
    let mut buf = Vec::with_capacity(512);
    g.bench_function("clone-answer", |b| b.iter(|| black_box(answer.clone())));
    g.bench_function("encode-answer-header-values-prost", |b| {
        b.iter(|| {
            buf.clear();
            let a = black_box(&answer).clone();
            a.into_response().encode(&mut buf).expect("room");
            black_box(buf.len())
        })
    });
    g.bench_function("encode-answer-rls-reply", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&answer).clone().encode(&mut buf).expect("room");
            black_box(buf.len())
        })
    });
    let hasher = KeyHasher::random();
    g.bench_function("descriptor-hash-2-entries", |b| {
        b.iter(|| {
            black_box(
                hasher.descriptor_hash("edge", [("method", "POST"), (black_box("api_key"), "k-1")]),
            )
        })
    });
    // Each limit's constant text rendered once, as the limits table does.
    let texts = [
        HeaderText::new("remote_address", 10, 1),
        HeaderText::new("per-key-hourly", 1000, 3600),
    ];
    let standings = [
        Standing {
            name: "remote_address",
            limit: 10,
            remaining: 7,
            reset: 400_000_000,
            window: 1,
            over: false,
            retry_after: Some(0),
            text: Some(&texts[0]),
        },
        Standing {
            name: "per-key-hourly",
            limit: 1000,
            remaining: 0,
            reset: 1_800_000_000_000,
            window: 3600,
            over: true,
            retry_after: Some(1_800_000_000_000),
            text: Some(&texts[1]),
        },
    ];
    for style in [
        HeaderStyle::Draft03,
        HeaderStyle::Draft11,
        HeaderStyle::Both,
    ] {
        g.bench_function(format!("headers-{}-2-limits", style.as_str()), |b| {
            b.iter(|| black_box(headers::render(style, black_box(&standings), true)))
        });
    }
    g.finish();
}

/// envoyproxy/ratelimit's newer keys, over [`MANY`] distinct values:
/// `share_threshold` (every value on one counter), `detailed_metric` (a
/// metrics name per value: the first 1000 get series, the rest share
/// `(other)`), `quota_mode` (two quota descriptors) and `metadata` with
/// `response_dynamic_metadata` on.
fn peer_features(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = dir.path().join("peer.yaml");
    let file = "domain: peer
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: { unit: second, requests_per_unit: 4000000000 }
  - key: user
    detailed_metric: true
    rate_limit: { unit: second, requests_per_unit: 1000000 }
  - key: plain
    rate_limit: { unit: second, requests_per_unit: 1000000 }
  - key: tokens
    quota_mode: true
    metadata: { backend: { name: primary } }
    rate_limit: { unit: second, requests_per_unit: 1000000 }
";
    std::fs::write(&limits, file).expect("write limits");
    let yaml = format!(
        "plans: {{ p: {{ limits: [] }} }}\ndefault_plan: p\nrls_files: [{}]\n",
        limits.display()
    );
    let config = |metadata: bool| {
        let mut c = Config::from_yaml(&yaml, "bench.yaml").expect("bench config is valid");
        c.live.envoy.dynamic_metadata = metadata;
        c
    };
    let mut g = c.benchmark_group("peer-features");
    g.throughput(Throughput::Elements(1));
    let svc = service_of(config(false), HeaderStyle::Off);
    let many = |key: &str, prefix: &str| -> Vec<RateLimitRequest> {
        (0..MANY)
            .map(|i| request("peer", vec![descriptor(&[(key, &format!("{prefix}{i}"))])]))
            .collect()
    };
    for (name, reqs) in [
        ("plain", many("plain", "v")),
        ("share-threshold", many("files", "files/")),
        ("detailed-metric", many("user", "u")),
    ] {
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % reqs.len();
                black_box(call(&svc, &reqs[i]))
            })
        });
    }
    let two = request(
        "peer",
        vec![
            descriptor(&[("tokens", "a")]),
            descriptor(&[("tokens", "b")]),
        ],
    );
    g.bench_function("quota-mode-2-descriptors", |b| {
        b.iter(|| black_box(call(&svc, &two)))
    });
    let svc = service_of(config(true), HeaderStyle::Off);
    g.bench_function("dynamic-metadata-2-descriptors", |b| {
        b.iter(|| black_box(call(&svc, &two)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = one_descriptor, three_descriptors, token_bucket_and_plans, components, peer_features
}
criterion_main!(benches);
