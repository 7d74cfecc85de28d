//! How fast an operator's change reaches every node: two daemons (in one
//! process, on loopback) share a real `redis-server`; an admin client
//! sets an override on node A over gRPC, again and again (alternating two
//! plans), and the bench times (1) the call, which returns once A applies
//! the change itself, and (2) until node B's limits table gives the key
//! the new plan. Not a criterion bench: a plain `main` printing
//! percentiles (results in BENCHMARKS.md). Target (the issue): every node
//! within 1 s.
//!
//! `cargo bench --bench propagation` makes 300 changes; without `--bench`
//! (test mode) 10. It skips with a message when `redis-server` is not
//! installed (`scripts/test.sh` installs it).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use quotad::admin::auth::token_hash;
use quotad::api::pb::SetOverrideRequest;
use quotad::api::pb::quota_admin_client::QuotaAdminClient;
use quotad::api::pb::set_override_request::Target;
use quotad::app::App;
use quotad::config::Config;
use quotad::limits::{Assigned, Source};
use tokio::time::Instant;

use common::{Redis, bench_mode};

const TOKEN: &str = "qd_bench-propagation-token-0123456789abcdef";

fn config(redis_port: u16) -> Config {
    let yaml = format!(
        "default_plan: free\nplans:\n  free: {{ limits: [ {{ name: per-second, rate: 10, per: second }} ] }}\n  gold: {{ limits: [ {{ name: per-second, rate: 1000, per: second }} ] }}\n  silver: {{ limits: [ {{ name: per-second, rate: 100, per: second }} ] }}\nstore:\n  hash_secret: \"000102030405060708090a0b0c0d0e0f\"\nredis:\n  url: redis://127.0.0.1:{redis_port}\n  sync_interval: 50ms\nadmin:\n  addr: 127.0.0.1:0\n  tokens:\n    - {{ id: bench, sha256: \"{}\", scopes: [read, write] }}\nserver:\n  grpc_addr: 127.0.0.1:0\n  http_addr: 127.0.0.1:0\n",
        token_hash(TOKEN)
    );
    Config::from_yaml(&yaml, "bench.yaml").expect("bench config")
}

struct Node {
    app: Option<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn percentiles(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        v.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
    );
}

fn main() {
    let changes = if bench_mode() { 300 } else { 10 };
    let Some(redis) = Redis::start() else {
        println!(
            "propagation bench: skipped (redis-server not installed; scripts/test.sh installs it)"
        );
        return;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("propagation bench: skipped (no tokio runtime: {e})");
            return;
        }
    };
    rt.block_on(async move {
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let app = App::bind(config(redis.port)).await.expect("node binds");
            nodes.push(Node {
                app: Some(app),
                stop: None,
            });
        }
        let admin_addr: SocketAddr = nodes[0]
            .app
            .as_ref()
            .and_then(App::admin_addr)
            .expect("admin on");
        let b = nodes[1].app.as_ref().expect("bound").control();
        let mut tasks = Vec::new();
        for n in &mut nodes {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            n.stop = Some(tx);
            let app = n.app.take().expect("bound");
            tasks.push(tokio::spawn(app.run(async move {
                let _ = rx.await;
            })));
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin_addr}"))
            .expect("url")
            .connect()
            .await
            .expect("admin connects");
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {TOKEN}").parse().expect("ascii");
        let mut admin =
            QuotaAdminClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            });
        let hash = b.engine().hasher().key_hash(b"moving-key");
        let mut call = Vec::new();
        let mut seen = Vec::new();
        for i in 0..changes {
            let plan = if i % 2 == 0 { "gold" } else { "silver" };
            let want = b.engine().view().table().plan_id(plan).expect("plan");
            let start = Instant::now();
            admin
                .set_override(SetOverrideRequest {
                    key: "moving-key".into(),
                    target: Some(Target::Plan(plan.into())),
                    reason: "bench".into(),
                    ..Default::default()
                })
                .await
                .expect("set");
            call.push(start.elapsed());
            loop {
                let now = b.engine().now();
                let got = b.engine().view().table().assign(hash, now);
                if got == (Assigned::Plan(want), Source::Override) {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "node B never saw change {i}"
                );
                tokio::task::yield_now().await;
            }
            seen.push(start.elapsed());
        }
        println!("propagation bench: {changes} overrides set on node A over gRPC, Redis sync on");
        println!("| measured | n | p50 ms | p90 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|");
        percentiles("SetOverride call (A applied)", call);
        percentiles("until node B enforces it", seen);
        for n in &mut nodes {
            if let Some(stop) = n.stop.take() {
                let _ = stop.send(());
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
