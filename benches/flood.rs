//! Key flood: a real `quotad serve` under a flood of distinct random API
//! keys far beyond `store.max_tracked_keys`, while a set of legitimate
//! keys keeps being checked. Not a criterion bench: a plain `main` that
//! starts the daemon, drives it with `quotad-bench` and prints a Markdown
//! table (results in `BENCHMARKS.md`, "Key flood").
//!
//! - **The daemon**: `default_plan: open`, one token bucket of
//!   1 000/s with a burst of 10⁸, so every flood check is allowed and
//!   charged (the heaviest case for memory and for the admission policy:
//!   each one wants a cell of its own, and once the store is full each
//!   one displaces a cell cheap to forget, or lands in the overflow
//!   bucket, whose burst never runs dry, when it finds none). The
//!   legitimate keys `legit-0` … are listed under `keys:` on plan
//!   `legit`: a bucket of `rate: 1, per: day` with a burst of B, so each
//!   allows exactly B checks and then denies for a day, whatever the
//!   timing. The sweep runs at its default 10 s (2 s in test mode), so
//!   flood cells are dropped and the cap refilled several times; the
//!   heaviest-keys tracker is on (`metrics.heavy_keys: 10`).
//! - **The flood**: `quotad-bench --mode batch` (100 checks per call),
//!   keys drawn uniformly from 10¹⁸ (`key-<n>`), `--requests` so that
//!   exactly N checks are sent, no warm-up: N distinct keys (a repeat is
//!   a one-in-10⁵ event at 10M).
//! - **The legitimate keys** are checked B times each before the flood
//!   (their cells exist, their bursts used, before the store fills) and
//!   then in one `CheckBatch` every round (250 ms; 50 ms in test mode)
//!   until after it. Each must answer exactly B allowed (with
//!   `remaining` B−1, …, 0) and then only denials: a key that lost its
//!   cell would be allowed again (a fresh bucket, or its plan's overflow
//!   bucket). (Were the bursts spent during the flood, a flood shorter
//!   than B rounds would leave nothing to check.)
//! - **Assertions**: no errors; the legitimate keys exact; peak RSS
//!   (`VmRSS`, sampled every round) ≤ RSS before the flood + cap ×
//!   `--bytes-per-cell` (64) + `--overhead-mib` (32 MiB);
//!   `quotad_tracked_cells` ≤ cap + 1 overflow cell per limit (2); cells
//!   displaced (`quotad_store_displaced_cells_total` > 0); and
//!   `quotad_overflow_charges_total` equal, within 0.1 % of N, to what
//!   the flood's allowed checks leave after its own cells (those tracked
//!   at the end, those swept, `quotad_evicted_cells_total`, and those
//!   displaced), read again for up to 30 s until they balance, since a
//!   scrape during a sweep sees cells gone before they are counted as
//!   swept.
//!
//! The bound: a bucket cell is a 24-byte hashbrown slot (id, arrival
//! time, bookkeeping) plus a control byte in power-of-two tables at
//! least 7/16 full after a resize, so at most 57 B per cell live (see
//! `memory`), plus the admission sketch's 8 B per cell of the cap once
//! the store has filled; 64 B per cell also covers
//! what the allocator keeps of tables freed by resizes and by the
//! sweep's shrinking. The fixed 32 MiB is for what does not depend on
//! the cap: HTTP/2 buffers of the generator's connections and of the
//! batches in flight, allocator arenas of the runtime's threads, the
//! heaviest-keys tracker (at most 8 × 129 entries), measured at well
//! under that (see `BENCHMARKS.md`).
//!
//! With `--redis` the daemon also syncs to a throwaway `redis-server`:
//! every charge to a key's own cell is journaled until the next flush,
//! and the journal holds up to the cap's cells when the flush falls
//! behind (the flood makes new cells faster than one Lua call per cell
//! sends them). So the bound per cell grows by the journal's entry (48 B
//! and a control byte, ≤ 112 B at 7/16 load) and by the flush's copy
//! of it (a round drains the whole journal into a vector: 48 B per
//! entry): 64 + 112 + 48 = 224, rounded to 256 B per cell unless
//! `--bytes-per-cell` says otherwise.
//! `quotad_redis_pending_deltas` at the end must be at most 9/4 of the
//! cap: the journal (9/8 of it with its side lists) and the round in
//! flight to Redis (one drain of it).
//!
//! `cargo bench --bench flood` floods 10 000 000 keys over a cap of
//! 1 000 000 cells (a minute or two here); without `--bench` (test mode,
//! `cargo test --benches`, debug binaries) 300 000 keys over 50 000, in
//! seconds. `--keys N`, `--cap N`, `--bytes-per-cell B`,
//! `--overhead-mib M` and `--redis` change the run.

#[path = "common/mod.rs"]
mod common;

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{CheckBatchRequest, CheckRequest};
use tonic::transport::Channel;

use common::{Layout, Quotad};
use quotad::core::clock::Stopwatch;

/// Checks per `CheckBatch` of the flood.
const BATCH: u64 = 100;
/// The flood's key space: `key-0` … `key-{10¹⁸ − 1}`.
const KEY_SPACE: &str = "1000000000000000000";

struct Scale {
    keys: u64,
    cap: u64,
    legit: usize,
    burst: u64,
    round: Duration,
    sweep: &'static str,
    /// quotad-bench's own time bound.
    limit: &'static str,
}

const FULL: Scale = Scale {
    keys: 10_000_000,
    cap: 1_000_000,
    legit: 100,
    burst: 20,
    round: Duration::from_millis(250),
    sweep: "10s",
    limit: "10m",
};

const TEST: Scale = Scale {
    keys: 300_000,
    cap: 50_000,
    legit: 20,
    burst: 10,
    round: Duration::from_millis(50),
    sweep: "2s",
    limit: "2m",
};

/// What the command line may change.
struct Opts {
    keys: u64,
    cap: u64,
    bytes_per_cell: Option<f64>,
    overhead_mib: f64,
    redis: bool,
}

impl Opts {
    fn parse(scale: &Scale) -> anyhow::Result<Opts> {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| -> anyhow::Result<Option<f64>> {
            args.iter()
                .position(|a| a == flag)
                .map(|i| {
                    args.get(i + 1)
                        .and_then(|v| v.parse::<f64>().ok())
                        .with_context(|| format!("{flag} needs a number"))
                })
                .transpose()
        };
        Ok(Opts {
            keys: value("--keys")?.map_or(scale.keys, |v| v as u64),
            cap: value("--cap")?.map_or(scale.cap, |v| v as u64),
            bytes_per_cell: value("--bytes-per-cell")?,
            overhead_mib: value("--overhead-mib")?.unwrap_or(32.0),
            redis: args.iter().any(|a| a == "--redis"),
        })
    }
}

fn config_yaml(scale: &Scale, cap: u64, redis: Option<u16>) -> String {
    let keys: String = (0..scale.legit)
        .map(|i| format!("  \"legit-{i}\": {{ plan: legit }}\n"))
        .collect();
    let (secret, redis) = common::redis_yaml(redis);
    format!(
        "default_plan: open
plans:
  open:
    limits:
      - {{ name: per-second, rate: 1000, per: second, burst: 100000000 }}
  legit:
    limits:
      - {{ name: daily, rate: 1, per: day, burst: {burst} }}
keys:
{keys}response_headers: \"off\"
reload: {{ watch: false }}
metrics: {{ heavy_keys: 10, heavy_window: 10s }}
store: {{ max_tracked_keys: {cap}, sweep_interval: {sweep}{secret} }}
{redis}",
        burst = scale.burst,
        sweep = scale.sweep,
    )
}

/// Every answer each legitimate key got, in order: (allowed, remaining).
struct Legit {
    client: RateLimiterClient<Channel>,
    answers: Vec<Vec<(bool, u64)>>,
    errors: u64,
}

impl Legit {
    async fn connect(q: &Quotad, n: usize) -> anyhow::Result<Legit> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", q.grpc))?
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        Ok(Legit {
            client: RateLimiterClient::new(ch),
            answers: vec![Vec::new(); n],
            errors: 0,
        })
    }

    /// One check of every legitimate key, in one `CheckBatch`.
    async fn round(&mut self) {
        let checks = (0..self.answers.len())
            .map(|i| CheckRequest {
                key: format!("legit-{i}"),
                cost: 1,
                id: i as u64,
                ..Default::default()
            })
            .collect();
        match self.client.check_batch(CheckBatchRequest { checks }).await {
            Ok(r) => {
                for c in r.into_inner().results {
                    match self.answers.get_mut(c.id as usize) {
                        Some(a) => a.push((c.allowed, c.remaining)),
                        None => self.errors += 1,
                    }
                }
            }
            Err(_) => self.errors += 1,
        }
    }

    /// What is wrong with the answers, if anything: each key exactly
    /// `burst` allowed (remaining counting down to 0), then denied.
    fn faults(&self, burst: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in self.answers.iter().enumerate() {
            let expected = |j: usize| {
                let j = j as u64;
                (j < burst).then(|| burst - 1 - j)
            };
            for (j, &(allowed, remaining)) in a.iter().enumerate() {
                let ok = match expected(j) {
                    Some(left) => allowed && remaining == left,
                    None => !allowed,
                };
                if !ok {
                    out.push(format!(
                        "legit-{i}: check {} was {} with {remaining} left, expected {}",
                        j + 1,
                        if allowed { "allowed" } else { "denied" },
                        expected(j)
                            .map_or("denied".to_owned(), |l| format!("allowed with {l} left"))
                    ));
                    break;
                }
            }
        }
        out
    }
}

/// The flood's accounting, from one scrape.
#[derive(Clone, Copy)]
struct Count {
    cells_after: f64,
    overflow: f64,
    evicted: f64,
    displaced: f64,
    overflow_checks: f64,
    /// What the overflow charges must be: every allowed flood check
    /// charged its own new cell or an overflow cell; the flood's own
    /// cells are those still tracked (less the legitimate keys' and the
    /// overflow cell, if one was made), those swept and those displaced
    /// for newer keys.
    expected: f64,
}

impl Count {
    /// Whether the overflow charges are what the counts leave, within
    /// 0.1 % of the checks.
    fn balanced(&self, checks: f64) -> bool {
        (self.overflow - self.expected).abs() <= (checks / 1000.0).max(1.0)
    }
}

/// How long after the flood the counts may take to balance: a sweep
/// lowers the tracked cells before it adds what it swept to
/// `quotad_evicted_cells_total`, so a scrape in between sees cells gone
/// and not yet counted; the next scrapes see both. Three sweeps of the
/// full scale (10 s each).
const SETTLE: Duration = Duration::from_secs(30);

/// `/metrics` and the flood's accounting once it balances, or as it is
/// after [`SETTLE`] (then a fault).
async fn settled(
    q: &Quotad,
    scale: &Scale,
    allowed: f64,
    checks: f64,
) -> anyhow::Result<(String, Count)> {
    let started = Stopwatch::start();
    loop {
        let text = q.metrics()?;
        let m = |name: &str| common::sample(&text, name).with_context(|| format!("no {name}"));
        let cells_after = m("quotad_tracked_cells")?;
        let evicted = m("quotad_evicted_cells_total{kind=\"bucket\"}")?;
        let displaced = m("quotad_store_displaced_cells_total{kind=\"bucket\"}")?;
        let overflow_checks = m("quotad_overflow_checks_total")?;
        let overflow_cells = f64::from(u8::from(overflow_checks > 0.0));
        let own = cells_after - scale.legit as f64 - overflow_cells + evicted + displaced;
        let count = Count {
            cells_after,
            overflow: m("quotad_overflow_charges_total")?,
            evicted,
            displaced,
            overflow_checks,
            expected: allowed - own,
        };
        if count.balanced(checks) || Duration::from_nanos(started.nanos()) > SETTLE {
            return Ok((text, count));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the run measured.
struct Outcome {
    rows: Vec<(String, String)>,
    faults: Vec<String>,
}

async fn run(full: bool) -> anyhow::Result<Outcome> {
    let scale = if full { &FULL } else { &TEST };
    let opts = Opts::parse(scale)?;
    let layout = Layout::from_env()?;
    let dir = tempfile::tempdir()?;
    let redis = if opts.redis {
        Some(common::Redis::start_on(layout.redis_cpu()).context("--redis: no redis-server")?)
    } else {
        None
    };
    let yaml = config_yaml(scale, opts.cap, redis.as_ref().map(|r| r.port));
    let q = Quotad::start(layout, dir.path(), "flood", &yaml)?;
    let mut legit = Legit::connect(&q, scale.legit).await?;
    // Every burst used before the flood: from then on each answer must be
    // a denial, however many rounds the flood lasts.
    for _ in 0..scale.burst {
        legit.round().await;
    }
    let rss_before = q.rss()?;
    let cells_before = q.metric("quotad_tracked_cells")?;
    println!(
        "layout {}, {} keys over a cap of {} cells, {} legitimate keys (burst {}), redis {}; \
         before the flood: RSS {:.1} MiB, {cells_before} cells",
        layout.name(),
        opts.keys,
        opts.cap,
        scale.legit,
        scale.burst,
        if redis.is_some() { "on" } else { "off" },
        rss_before as f64 / 1_048_576.0,
    );

    let requests = opts.keys.div_ceil(BATCH);
    let mut flood = tokio::process::Command::from(common::bench_command(layout, q.grpc));
    flood
        .args([
            "--mode=batch",
            "--dist=uniform",
            "--warmup=0s",
            "--threads=1",
        ])
        .args(["--concurrency=16", "--connections=2"])
        .arg(format!("--batch={BATCH}"))
        .arg(format!("--keys={KEY_SPACE}"))
        .arg(format!("--requests={requests}"))
        .arg(format!("--duration={}", scale.limit))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Stopwatch::start();
    let child = flood.spawn().context("cannot run quotad-bench")?;
    let output = child.wait_with_output();
    tokio::pin!(output);
    let (mut rss_peak, mut cells_peak) = (rss_before, cells_before);
    let mut tick = tokio::time::interval(scale.round);
    let out = loop {
        tokio::select! {
            out = &mut output => break out?,
            _ = tick.tick() => {
                legit.round().await;
                rss_peak = rss_peak.max(q.rss()?);
                cells_peak = cells_peak.max(q.metric("quotad_tracked_cells")?);
            }
        }
    };
    let took = Duration::from_nanos(started.nanos());
    let report = common::bench_report(out, "flood")?;
    // Two more rounds after the flood, the store still full.
    legit.round().await;
    legit.round().await;
    let rss_after = q.rss()?;
    rss_peak = rss_peak.max(rss_after);
    let checks = report.n("checks");
    let allowed = report.n("allowed");
    let (text, count) = settled(&q, scale, allowed, checks).await?;
    let m = |name: &str| common::sample(&text, name).with_context(|| format!("no {name}"));
    let Count {
        cells_after,
        overflow,
        evicted,
        displaced,
        overflow_checks,
        expected,
    } = count;
    cells_peak = cells_peak.max(cells_after);
    let rss_metric = m("process_resident_memory_bytes")?;
    let mut faults = legit.faults(scale.burst);
    let rounds = legit.answers.first().map_or(0, Vec::len);
    if rounds as u64 <= scale.burst {
        faults.push(format!(
            "only {rounds} rounds of legitimate checks: none was past the burst"
        ));
    }
    if legit.errors > 0 || report.n("errors") > 0.0 {
        faults.push(format!(
            "errors: {} legitimate rounds, {} flood calls",
            legit.errors,
            report.n("errors")
        ));
    }
    if checks != opts.keys.div_ceil(BATCH) as f64 * BATCH as f64 {
        faults.push(format!("the flood sent {checks} checks, not {}", opts.keys));
    }

    // Memory.
    let per_cell = opts
        .bytes_per_cell
        .unwrap_or(if redis.is_some() { 256.0 } else { 64.0 });
    let bound = rss_before as f64 + opts.cap as f64 * per_cell + opts.overhead_mib * 1_048_576.0;
    if rss_peak as f64 > bound {
        faults.push(format!(
            "peak RSS {:.1} MiB over the bound {:.1} MiB",
            rss_peak as f64 / 1_048_576.0,
            bound / 1_048_576.0
        ));
    }
    // The cap, plus one overflow cell per limit.
    let cell_bound = opts.cap as f64 + 2.0;
    if cells_peak > cell_bound {
        faults.push(format!("{cells_peak} cells tracked, over {cell_bound}"));
    }
    if !count.balanced(checks) {
        faults.push(format!(
            "{overflow} overflow charges, but the flood's allowed checks leave {expected}"
        ));
    }
    if displaced <= 0.0 {
        faults.push("no cell was displaced: the store never made room".into());
    }

    let mib = |b: f64| format!("{:.1} MiB", b / 1_048_576.0);
    let mut rows = vec![
        (
            "keys flooded (distinct, random)".into(),
            format!("{checks}"),
        ),
        (
            "cap (`store.max_tracked_keys`)".into(),
            format!("{} cells", opts.cap),
        ),
        (
            "flood".into(),
            format!(
                "{:.1} s, {:.0} checks/s, {allowed} allowed, {} errors",
                took.as_secs_f64(),
                checks / took.as_secs_f64().max(1e-9),
                report.n("errors")
            ),
        ),
        (
            "RSS before the flood / peak / after".into(),
            format!(
                "{} / **{}** / {} (metric: {})",
                mib(rss_before as f64),
                mib(rss_peak as f64),
                mib(rss_after as f64),
                mib(rss_metric)
            ),
        ),
        (
            "peak RSS − before, per cell of the cap".into(),
            format!("{:.1} B", (rss_peak - rss_before) as f64 / opts.cap as f64),
        ),
        (
            "RSS bound (before + cap × B/cell + fixed)".into(),
            format!(
                "{} + {} × {per_cell} B + {} MiB = {}",
                mib(rss_before as f64),
                opts.cap,
                opts.overhead_mib,
                mib(bound)
            ),
        ),
        (
            "tracked cells: peak / after (bound)".into(),
            format!("{cells_peak} / {cells_after} (≤ {cell_bound})"),
        ),
        (
            "flood cells swept during the flood".into(),
            format!("{evicted}"),
        ),
        (
            "flood cells displaced for newer keys".into(),
            format!("{displaced}"),
        ),
        (
            "`quotad_overflow_charges_total` (expected from the counts) / checks judged there"
                .into(),
            format!("{overflow} ({expected}) / {overflow_checks}"),
        ),
        (
            "legitimate keys".into(),
            format!(
                "{} keys × {rounds} checks: {}",
                scale.legit,
                if legit.faults(scale.burst).is_empty() {
                    format!("each exactly {} allowed then denied", scale.burst)
                } else {
                    "NOT EXACT".into()
                }
            ),
        ),
    ];
    if let Some(r) = &redis {
        let flushed = m("quotad_redis_flushed_cells_total")?;
        let dropped = m("quotad_redis_dropped_deltas_total")?;
        let pending = m("quotad_redis_pending_deltas")?;
        rows.push((
            "Redis: cells flushed / deltas dropped / pending".into(),
            format!(
                "{flushed} / {dropped} / {pending} (Redis holds {} keys)",
                r.command("DBSIZE")
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches(':')
            ),
        ));
        // The gauge counts the journal (one entry per dirty cell, so at
        // most the cap, plus displaced cells still listed and undos of
        // cells gone, a sixteenth of the cap each) and the cells of the
        // round in flight to Redis (one drain of the journal): at most
        // twice 9/8 of the cap. How much of that is taken at the end
        // depends on where the flush round is, so that is the bound.
        let bound = opts.cap as f64 * 9.0 / 4.0;
        if pending > bound {
            faults.push(format!(
                "{pending} deltas pending, over 9/4 of the cap ({bound})"
            ));
        }
    }
    Ok(Outcome { rows, faults })
}

fn main() -> ExitCode {
    let full = common::bench_mode();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flood: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(full)) {
        Ok(o) => {
            println!("\n| | |\n|---|---|");
            for (k, v) in &o.rows {
                println!("| {k} | {v} |");
            }
            if o.faults.is_empty() {
                println!("\nflood: every assertion held");
                ExitCode::SUCCESS
            } else {
                for f in &o.faults {
                    eprintln!("flood: FAILED: {f}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("flood: {e:#}");
            ExitCode::FAILURE
        }
    }
}
