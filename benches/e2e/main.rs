//! End to end over real gRPC: quotad (in memory, and in Redis `sync`
//! mode) against the constant-OK floor ([`floor`]), under the same load
//! from `quotad-bench`, in one run, with the ratios the performance
//! targets are stated in, and each server's CPU per call (user and
//! system time from `/proc/<pid>/stat` over warm-up and run) and p99
//! beside the floor's. Not a criterion bench: a plain `main` that
//! starts the processes, drives them and prints a Markdown table
//! (results in `BENCHMARKS.md`).
//!
//! Layout on the machine (`QUOTAD_E2E_LAYOUT`):
//! - `pinned` (default): each server on CPU 1 with one runtime thread,
//!   the generator (and `redis-server`, which is another machine in
//!   production) on CPU 0 with one (`taskset`); the two never take each
//!   other's core, which is what latency needs on two cores.
//! - `shared`: no pinning, servers with their default threads (one per
//!   core), the generator with one; they fight for both cores.
//!
//! `cargo bench --bench e2e` runs 5 rounds of 3 s (after 1 s of warm-up)
//! per server and case, the servers taking turns, and reports medians
//! (of checks/s, of latency percentiles, of each round's ratio) over 1
//! and 1 000 000 keys, about 7 minutes;
//! without `--bench` (test mode) it runs every case for 200 ms over
//! 2 000 keys and checks that each answered without errors, which takes
//! a few seconds. Redis cases are skipped with a message when
//! `redis-server` is not installed (`scripts/test.sh` installs it).

mod floor;
mod machine;

#[path = "../common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ExitCode, Stdio};

use anyhow::{Context, bail};

use common::{Layout, Proc, Quotad, Run};

/// The targets of the performance issues (issue 24 raised the ratio to
/// the floor from 90 % to 115 % and added CPU per call and p99).
const FLOOR_RATIO: f64 = 1.15;
/// quotad's CPU per call over the floor's, at most.
const CPU_RATIO: f64 = 0.85;
const STREAM_OVER_UNARY: f64 = 3.0;
const P99_AT_HALF_US: u64 = 1_000;
const BYTES_PER_KEY: f64 = 64.0;
const SYNC_RATIO: f64 = 0.95;

/// How big and how long.
struct Scale {
    duration: &'static str,
    warmup: &'static str,
    /// The most the fill may take: it sends exactly `big` checks, one
    /// per key, however long they take (a fill by time left keys out on
    /// a slow machine).
    fill: &'static str,
    rounds: usize,
    big: u64,
}

const FULL: Scale = Scale {
    duration: "3s",
    warmup: "1s",
    fill: "10m",
    rounds: 5,
    big: 1_000_000,
};

const TEST: Scale = Scale {
    duration: "200ms",
    warmup: "100ms",
    fill: "2m",
    rounds: 1,
    big: 2_000,
};

/// A server under test: the floor or quotad.
struct Server {
    name: &'static str,
    grpc: u16,
    quotad: Option<Quotad>,
    _proc: Option<Proc>,
}

impl Server {
    fn floor(layout: Layout) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut child = layout
            .command(&exe.to_string_lossy(), true)
            .arg("--serve-floor")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the floor")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let proc = Proc { child };
        let grpc = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("the floor said {line:?}"))?;
        Ok(Server {
            name: "floor",
            grpc,
            quotad: None,
            _proc: Some(proc),
        })
    }

    fn quotad(
        name: &'static str,
        layout: Layout,
        dir: &Path,
        redis: Option<u16>,
    ) -> anyhow::Result<Server> {
        let q = Quotad::start(
            layout,
            dir,
            name,
            &common::daemon_yaml(4_000_000, "1h", redis),
        )?;
        Ok(Server {
            name,
            grpc: q.grpc,
            quotad: Some(q),
            _proc: None,
        })
    }

    /// The server's process id.
    fn pid(&self) -> Option<u32> {
        match (&self.quotad, &self._proc) {
            (Some(q), _) => Some(q.pid()),
            (None, Some(p)) => Some(p.child.id()),
            (None, None) => None,
        }
    }

    /// A sample from quotad's `/metrics` (no labels).
    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        self.quotad
            .as_ref()
            .context("the floor has no metrics")?
            .metric(name)
    }
}

struct Bench {
    layout: Layout,
    scale: &'static Scale,
}

impl Bench {
    /// Drives `server` with `quotad-bench` and these flags.
    fn load(&self, server: &Server, duration: &str, flags: &[&str]) -> anyhow::Result<Run> {
        let before = server.pid().and_then(cpu_ticks);
        let out = common::bench_command(self.layout, server.grpc)
            .arg(format!("--duration={duration}"))
            .arg(format!("--warmup={}", self.scale.warmup))
            // Defaults first: quotad-bench takes a repeated flag's last
            // value, so `flags` may override them.
            .args(["--threads=1", "--connections=2", "--concurrency=32"])
            .args(flags)
            .output()
            .context("cannot run quotad-bench")?;
        let cpu = server
            .pid()
            .and_then(cpu_ticks)
            .zip(before)
            .map(|(a, b)| a - b);
        let mut run = common::bench_report(out, &format!("{flags:?} against {}", server.name))?;
        if run.n("requests") < 1.0 || run.n("errors") > 0.0 {
            bail!("{} {flags:?}: {}", server.name, run.0);
        }
        // CPU over warm-up and run, per check at the measured rate over
        // both (warm-up runs the same load).
        let seconds = secs(duration) + secs(self.scale.warmup);
        let checks = run.n("checks_per_second") * seconds;
        if let Some(ticks) = cpu
            && checks > 0.0
        {
            run.0[CPU] = (ticks as f64 * 1e6 / TICKS_PER_SECOND / checks).into();
        }
        Ok(run)
    }

    /// `rounds` runs of each of `a` and `b`, taking turns (a b, b a,
    /// a b, ...), so the machine's slow and fast spells (this VM drifts
    /// by ±25 % over minutes) hit both alike; each round's pair is
    /// compared on its own.
    fn pairs(&self, a: &Server, b: &Server, flags: &[&str]) -> anyhow::Result<Pair> {
        let mut pair = Pair {
            a: Vec::new(),
            b: Vec::new(),
        };
        for round in 0..self.scale.rounds {
            if round % 2 == 0 {
                pair.a.push(self.load(a, self.scale.duration, flags)?);
                pair.b.push(self.load(b, self.scale.duration, flags)?);
            } else {
                pair.b.push(self.load(b, self.scale.duration, flags)?);
                pair.a.push(self.load(a, self.scale.duration, flags)?);
            }
        }
        Ok(pair)
    }

    /// `rounds` runs of one server.
    fn runs(&self, s: &Server, flags: &[&str]) -> anyhow::Result<Vec<Run>> {
        (0..self.scale.rounds)
            .map(|_| self.load(s, self.scale.duration, flags))
            .collect()
    }

    /// Runs one stream over every key in order, once each (`--requests`:
    /// exactly `big` checks, whatever the machine's speed), so the store
    /// holds them all; returns how many cells it tracks then.
    fn fill(&self, server: &Server) -> anyhow::Result<f64> {
        let keys = format!("--keys={}", self.scale.big);
        let requests = format!("--requests={}", self.scale.big);
        self.load(
            server,
            self.scale.fill,
            &[
                "--mode=stream",
                "--dist=seq",
                &keys,
                &requests,
                "--concurrency=1",
                "--warmup=0s",
            ],
        )?;
        server.metric("quotad_tracked_cells")
    }
}

/// Runs of two servers under the same load, round by round.
struct Pair {
    a: Vec<Run>,
    b: Vec<Run>,
}

impl Pair {
    /// The median over rounds of b's checks/s over a's.
    fn ratio(&self) -> f64 {
        self.ratio_of("checks_per_second")
    }

    /// The median over rounds of b's `field` over a's.
    fn ratio_of(&self, field: &str) -> f64 {
        median(
            self.a
                .iter()
                .zip(&self.b)
                .map(|(a, b)| b.n(field) / a.n(field).max(f64::MIN_POSITIVE))
                .collect(),
        )
    }
}

/// The rows of a pair against the floor (`a`): CPU per call and
/// closed-loop p99 (issue 24's targets beside the throughput row).
fn floor_rows(case: &str, pair: &Pair) -> [Row; 2] {
    let cpu = pair.ratio_of(CPU);
    let measured = format!(
        "{:.2} vs {:.2} µs: **{:.2}×**",
        field(&pair.b, CPU),
        field(&pair.a, CPU),
        cpu
    );
    println!("{case}, CPU per call: {measured}");
    let (q, f) = (pct(&pair.b, "p99"), pct(&pair.a, "p99"));
    let p99 = format!("**{q}** vs {f} µs");
    println!("{case}, p99: {p99}");
    [
        Row {
            case: format!("{case}: server CPU per call, quotad / floor"),
            measured,
            target: format!("≤ {CPU_RATIO:.2}×"),
            met: cpu <= CPU_RATIO,
        },
        Row {
            case: format!("{case}: p99 (closed loop), quotad vs floor"),
            measured: p99,
            target: "≤ the floor's".into(),
            met: q <= f,
        },
    ]
}

/// `quotad_redis_flushed_cells_total` once it reaches `want`, or as it
/// is after a minute.
fn flushed_at_least(server: &Server, want: f64) -> anyhow::Result<f64> {
    let started = quotad::core::clock::Stopwatch::start();
    loop {
        let flushed = server.metric("quotad_redis_flushed_cells_total")?;
        if flushed >= want || started.seconds() > 60.0 {
            return Ok(flushed);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The field a run's server CPU per check (µs) is added under.
const CPU: &str = "server_cpu_us_per_check";

/// Clock ticks a second in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User and system CPU time of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is
    // the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Seconds in a duration flag (`3s`, `500ms`).
fn secs(d: &str) -> f64 {
    humantime::parse_duration(d).map_or(0.0, |d| d.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The median of one numeric field over runs.
fn field(runs: &[Run], k: &str) -> f64 {
    median(runs.iter().map(|r| r.n(k)).collect())
}

/// The median checks/s of runs.
fn cps(runs: &[Run]) -> f64 {
    field(runs, "checks_per_second")
}

/// The median of one latency percentile over runs, µs.
fn pct(runs: &[Run], q: &str) -> u64 {
    median(runs.iter().map(|r| r.p(q) as f64).collect()) as u64
}

/// One row of the table.
struct Row {
    case: String,
    measured: String,
    target: String,
    met: bool,
}

/// A ratio row: `pair.b` against `pair.a`.
fn ratio_row(case: &str, pair: &Pair, target: Option<f64>) -> Row {
    let ratio = pair.ratio();
    let measured = format!(
        "{:.0} vs {:.0} checks/s: **{:.1} %**",
        cps(&pair.b),
        cps(&pair.a),
        ratio * 100.0
    );
    println!("{case}: {measured}");
    Row {
        case: case.into(),
        measured,
        target: target.map_or_else(
            || "(none: for comparison)".into(),
            |t| format!("≥ {:.0} %", t * 100.0),
        ),
        met: target.is_none_or(|t| ratio >= t),
    }
}

/// How much of a second a spinning thread on the server's core
/// (`server`) or the generator's loses to the machine (other processes,
/// interrupts, the hypervisor): gaps over 50 µs and over 1 ms, the time
/// lost, and the longest. It bounds what any server on that core can do
/// for tail latency.
fn hiccups(layout: Layout, server: bool, seconds: &str) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let out = layout
        .command(&exe.to_string_lossy(), server)
        .args(["--hiccups", seconds])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The probe behind [`hiccups`], run in a child process.
fn spin_for_hiccups(seconds: f64) {
    use quotad::core::clock::Stopwatch;
    let run = Stopwatch::start();
    let (mut last, mut over_50us, mut over_1ms, mut lost, mut longest) = (0u64, 0, 0, 0u64, 0u64);
    while run.seconds() < seconds {
        let now = run.nanos();
        let gap = now - last;
        if gap > 50_000 {
            over_50us += 1;
            lost += gap;
            longest = longest.max(gap);
            if gap > 1_000_000 {
                over_1ms += 1;
            }
        }
        last = now;
    }
    println!(
        "{:.0} gaps > 50 µs/s, {:.1} > 1 ms/s, {:.2} % of the time lost, longest {:.2} ms",
        f64::from(over_50us) / seconds,
        f64::from(over_1ms) / seconds,
        lost as f64 / (seconds * 1e7),
        longest as f64 / 1e6
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(secs) = args
        .iter()
        .position(|a| a == "--hiccups")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        spin_for_hiccups(secs);
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--serve-floor") {
        return match floor::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let full = common::bench_mode();
    match run(full) {
        Ok(rows) => {
            let missed = rows.iter().filter(|r| !r.met).count();
            println!("\n| case | measured | target | |\n|---|---|---|---|");
            for r in &rows {
                let mark = if r.met { "MET" } else { "MISSED" };
                println!("| {} | {} | {} | {mark} |", r.case, r.measured, r.target);
            }
            println!("\n{} targets, {missed} missed", rows.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("e2e: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(full: bool) -> anyhow::Result<Vec<Row>> {
    let scale = if full { &FULL } else { &TEST };
    let layout = Layout::from_env()?;
    let b = Bench { layout, scale };
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let big = format!("--keys={}", scale.big);
    println!(
        "layout {}, {} per case, best of {}, big = {} keys",
        layout.name(),
        scale.duration,
        scale.rounds,
        scale.big
    );

    let probe = if full { "3" } else { "0.2" };
    let noise = [
        ("server CPU", hiccups(layout, true, probe)?),
        ("generator CPU", hiccups(layout, false, probe)?),
    ];
    for (cpu, n) in &noise {
        println!("machine noise on the {cpu}: {n}");
    }
    let settings = machine::settings();
    println!("machine settings: {settings}");

    let floor = Server::floor(layout)?;
    let mem = Server::quotad("quotad", layout, dir.path(), None)?;

    // RLS with one key, then (after filling the store) with `big`.
    let one = b.pairs(&floor, &mem, &["--mode=rls", "--keys=1"])?;
    rows.push(ratio_row(
        "RLS unary, 1 key: quotad / floor",
        &one,
        Some(FLOOR_RATIO),
    ));
    rows.extend(floor_rows("RLS unary, 1 key", &one));

    let rss_before = mem.metric("process_resident_memory_bytes")?;
    let cells_before = mem.metric("quotad_tracked_cells")?;
    let cells = b.fill(&mem)?;
    let rss_after = mem.metric("process_resident_memory_bytes")?;
    if cells < scale.big as f64 {
        bail!("the fill left {cells} cells, not {}", scale.big);
    }
    let grown = rss_after - rss_before;
    let per_key = grown / (cells - cells_before).max(1.0);
    let measured = format!(
        "+{:.1} MiB for {cells} cells: **{per_key:.1} B/key**",
        grown / 1_048_576.0
    );
    println!("memory: {measured}");
    rows.push(Row {
        case: format!("RSS per tracked key at {} keys", scale.big),
        measured,
        target: format!("≤ {BYTES_PER_KEY:.0} B"),
        met: per_key <= BYTES_PER_KEY,
    });

    let many = b.pairs(&floor, &mem, &["--mode=rls", "--dist=uniform", &big])?;
    rows.push(ratio_row(
        &format!("RLS unary, {} keys uniform: quotad / floor", scale.big),
        &many,
        Some(FLOOR_RATIO),
    ));
    rows.extend(floor_rows(&format!("RLS unary, {} keys", scale.big), &many));

    // Native unary, stream and batch on the same server.
    let unary = b.pairs(&floor, &mem, &["--mode=check", "--keys=1"])?;
    rows.push(ratio_row(
        "native Check unary, 1 key: quotad / floor",
        &unary,
        Some(FLOOR_RATIO),
    ));
    rows.extend(floor_rows("native Check unary, 1 key", &unary));
    let stream = b.runs(&mem, &["--mode=stream", "--keys=1", "--concurrency=4"])?;
    let batch = b.runs(&mem, &["--mode=batch", "--keys=1", "--batch=10"])?;
    let times = cps(&stream) / cps(&unary.b).max(1.0);
    let measured = format!(
        "{:.0} vs {:.0} checks/s: **{times:.1}×** (CheckBatch of 10: {:.0})",
        cps(&stream),
        cps(&unary.b),
        cps(&batch)
    );
    println!("native: {measured}");
    rows.push(Row {
        case: "CheckStream / Check unary, checks/s".into(),
        measured,
        target: format!("≥ {STREAM_OVER_UNARY:.0}×"),
        met: times >= STREAM_OVER_UNARY,
    });

    // Open loop at half of quotad's RLS maximum.
    let half = (cps(&one.b) / 2.0).max(10.0).round();
    let rate = format!("--rate={half}");
    let open = b.pairs(
        &floor,
        &mem,
        &[
            "--mode=rls",
            "--dist=uniform",
            &big,
            &rate,
            "--concurrency=256",
        ],
    )?;
    let (q, f) = (&open.b, &open.a);
    let measured = format!(
        "p50 {} / p90 {} / p99 **{}** / p99.9 {} µs (floor: {} / {} / {} / {})",
        pct(q, "p50"),
        pct(q, "p90"),
        pct(q, "p99"),
        pct(q, "p999"),
        pct(f, "p50"),
        pct(f, "p90"),
        pct(f, "p99"),
        pct(f, "p999")
    );
    println!("open loop at {half}/s: {measured}");
    rows.push(Row {
        case: format!(
            "RLS open loop at 50 % of max ({half}/s), {} keys",
            scale.big
        ),
        measured,
        target: format!("p99 ≤ {P99_AT_HALF_US} µs"),
        met: pct(q, "p99") <= P99_AT_HALF_US,
    });

    // Redis sync mode against in memory, the store filled alike.
    // Redis shares the generator's core: in production it is another
    // machine, and the server's core is what the ratio is about.
    match common::Redis::start_on(layout.redis_cpu()) {
        None => println!("redis-server not found: skipping the sync cases"),
        Some(redis) => {
            drop(floor);
            let sync = Server::quotad("quotad-sync", layout, dir.path(), Some(redis.port))?;
            let one = b.pairs(&mem, &sync, &["--mode=rls", "--keys=1"])?;
            rows.push(ratio_row(
                "Redis sync / in memory, RLS 1 key",
                &one,
                Some(SYNC_RATIO),
            ));
            b.fill(&sync)?;
            // Issue 24's case: 100 000 uniform keys (a tenth of `big`),
            // then the whole store as context.
            let tenth = format!("--keys={}", scale.big / 10);
            let some = b.pairs(&mem, &sync, &["--mode=rls", "--dist=uniform", &tenth])?;
            rows.push(ratio_row(
                &format!(
                    "Redis sync / in memory, RLS {} keys uniform",
                    scale.big / 10
                ),
                &some,
                Some(SYNC_RATIO),
            ));
            let many = b.pairs(&mem, &sync, &["--mode=rls", "--dist=uniform", &big])?;
            rows.push(ratio_row(
                &format!("Redis sync / in memory, RLS {} keys uniform", scale.big),
                &many,
                None,
            ));
            // Flushes run behind the load (every 50 ms, a million cells
            // take seconds): wait for them, bounded, rather than read
            // the counter once.
            let flushed = flushed_at_least(&sync, scale.big as f64)?;
            if flushed < scale.big as f64 {
                bail!("the sync daemon flushed {flushed} cells to Redis, fewer than it filled");
            }
            let keys = redis.command("DBSIZE").unwrap_or_default();
            println!("sync: {flushed} cells flushed, Redis holds {}", keys.trim());
        }
    }
    rows.push(Row {
        case: "machine settings behind the open loop's tail (see BENCHMARKS.md)".into(),
        measured: settings,
        target: "(context)".into(),
        met: true,
    });
    for (cpu, n) in noise {
        rows.push(Row {
            case: format!("machine noise on the {cpu} (a spinning thread, before the run)"),
            measured: n,
            target: "(context)".into(),
            met: true,
        });
    }
    Ok(rows)
}
