//! Soak: a real `quotad serve` in Redis `sync` mode under a steady load
//! at half of its measured maximum for a long time, sampling its memory
//! and file descriptors; they must stay flat. Not a criterion bench: a
//! plain `main` that starts `redis-server` and the daemon, drives it with
//! `quotad-bench` and prints the samples as a Markdown table (results in
//! `BENCHMARKS.md`, "Soak").
//!
//! - **The daemon**: one plan, a bucket of 1 000/s with a burst of 10⁸
//!   (every check allowed and charged, so every check dirties its cell
//!   and every cell goes to Redis at the next flush, 50 ms), the sweep
//!   at its default 10 s (idle cells come and go all the time), RateLimit
//!   headers `both`, a throwaway `redis-server` on a free port.
//! - **Layout** as `e2e` (`QUOTAD_E2E_LAYOUT`): the daemon on CPU 1 with
//!   one runtime thread, `quotad-bench` and `redis-server` on CPU 0.
//! - **Load**: Envoy RLS `ShouldRateLimit` over 100 000 keys drawn
//!   uniformly. First its maximum, closed loop (32 callers, 10 s), then
//!   the open loop at half of that (`--rate`) for `--duration` (10 min).
//! - **Samples** every `--sample` (10 s): `VmRSS` from
//!   `/proc/<pid>/status`, the entries of `/proc/<pid>/fd`, and from
//!   `/metrics` the tracked cells and the Redis flush counters.
//! - **Assertions**, on the samples after the warm-up (the first minute)
//!   and before the load's end: open fds never more than `--fd-slack`
//!   (2: the scrape's own HTTP connection, a Redis connection made again)
//!   above the first of them, and RSS never more than `--rss-slack-mib`
//!   (8 MiB) or `--rss-slack-pct` (5 %), whichever is larger: growth
//!   only, since fewer fds or less memory (a connection closed, memory
//!   given back) is no leak; the generator saw no errors; Redis took
//!   flushes all along (flushed cells grew from sample to sample) and no
//!   delta was dropped; the load was there (at least half the rate was
//!   sent). A sample taken as the generator stops (its connections
//!   closing, flushes ending) is shown, not judged.
//!
//! `cargo bench --bench soak` runs the full 10 minutes (`-- --duration
//! 2m` for less); without `--bench` (test mode, `cargo test --benches`,
//! debug binaries) 24 s over 10 000 keys with 2 s samples and an 8 s
//! warm-up. Skipped with a message when `redis-server` is not installed.

#[path = "common/mod.rs"]
mod common;

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use common::{Layout, Quotad};
use quotad::core::clock::Stopwatch;

struct Scale {
    keys: u64,
    probe: &'static str,
    probe_warmup: &'static str,
    duration: Duration,
    sample: Duration,
    warmup: Duration,
    sweep: &'static str,
}

const FULL: Scale = Scale {
    keys: 100_000,
    probe: "10s",
    probe_warmup: "2s",
    duration: Duration::from_secs(600),
    sample: Duration::from_secs(10),
    warmup: Duration::from_secs(60),
    sweep: "10s",
};

const TEST: Scale = Scale {
    keys: 10_000,
    probe: "2s",
    probe_warmup: "500ms",
    duration: Duration::from_secs(24),
    sample: Duration::from_secs(2),
    warmup: Duration::from_secs(8),
    sweep: "2s",
};

/// What the command line may change.
struct Opts {
    duration: Duration,
    sample: Duration,
    warmup: Duration,
    rss_slack_mib: f64,
    rss_slack_pct: f64,
    fd_slack: usize,
}

impl Opts {
    fn parse(scale: &Scale) -> anyhow::Result<Opts> {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args.get(i + 1));
        let duration = |flag: &str, default: Duration| -> anyhow::Result<Duration> {
            match value(flag) {
                None => Ok(default),
                Some(v) => v
                    .and_then(|v| humantime::parse_duration(v).ok())
                    .with_context(|| format!("{flag} needs a duration (10m, 30s)")),
            }
        };
        let number = |flag: &str, default: f64| -> anyhow::Result<f64> {
            match value(flag) {
                None => Ok(default),
                Some(v) => v
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("{flag} needs a number")),
            }
        };
        let opts = Opts {
            duration: duration("--duration", scale.duration)?,
            sample: duration("--sample", scale.sample)?,
            warmup: duration("--warmup", scale.warmup)?,
            rss_slack_mib: number("--rss-slack-mib", 8.0)?,
            rss_slack_pct: number("--rss-slack-pct", 5.0)?,
            fd_slack: number("--fd-slack", 2.0)? as usize,
        };
        if opts.duration > Duration::from_secs(600) {
            bail!("--duration: at most 10m (quotad-bench's bound)");
        }
        if opts.sample.is_zero() || opts.warmup + 2 * opts.sample > opts.duration {
            bail!("--duration must leave at least two samples after --warmup");
        }
        Ok(opts)
    }
}

/// One sample of the daemon.
struct Sample {
    at: Duration,
    rss: u64,
    fds: usize,
    cells: f64,
    flushed: f64,
    pending: f64,
    dropped: f64,
}

impl Sample {
    fn take(q: &Quotad, at: Duration) -> anyhow::Result<Sample> {
        let text = q.metrics()?;
        let m = |name: &str| common::sample(&text, name).with_context(|| format!("no {name}"));
        Ok(Sample {
            at,
            rss: q.rss()?,
            fds: q.fds()?,
            cells: m("quotad_tracked_cells")?,
            flushed: m("quotad_redis_flushed_cells_total")?,
            pending: m("quotad_redis_pending_deltas")?,
            dropped: m("quotad_redis_dropped_deltas_total")?,
        })
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1_048_576.0
}

fn run(full: bool) -> anyhow::Result<Vec<String>> {
    let scale = if full { &FULL } else { &TEST };
    let opts = Opts::parse(scale)?;
    let layout = Layout::from_env()?;
    let Some(redis) = common::Redis::start_on(layout.redis_cpu()) else {
        println!("redis-server not found: skipping the soak");
        return Ok(Vec::new());
    };
    let dir = tempfile::tempdir()?;
    let q = Quotad::start(
        layout,
        dir.path(),
        "soak",
        &common::daemon_yaml(1_000_000, scale.sweep, Some(redis.port)),
    )?;
    let keys = format!("--keys={}", scale.keys);
    let common_flags = [
        "--mode=rls",
        "--dist=uniform",
        "--threads=1",
        "--connections=2",
    ];

    // The maximum, closed loop.
    let probe = common::bench_command(layout, q.grpc)
        .args(common_flags)
        .args([&keys, "--concurrency=32"])
        .arg(format!("--duration={}", scale.probe))
        .arg(format!("--warmup={}", scale.probe_warmup))
        .output()
        .context("cannot run quotad-bench")?;
    let probe = common::bench_report(probe, "closed loop")?;
    if probe.n("errors") > 0.0 || probe.n("requests") < 1.0 {
        bail!("the closed loop: {}", probe.0);
    }
    let max = probe.n("requests_per_second");
    let rate = (max / 2.0).round().max(10.0);
    println!(
        "layout {}, {} keys: maximum {max:.0} RLS/s closed loop, soak at {rate}/s for {} s, \
         a sample every {} s, warm-up {} s",
        layout.name(),
        scale.keys,
        opts.duration.as_secs(),
        opts.sample.as_secs_f64(),
        opts.warmup.as_secs()
    );

    // The soak, open loop; sampled while it runs.
    let mut child = common::bench_command(layout, q.grpc)
        .args(common_flags)
        .args([&keys, "--concurrency=256", "--warmup=0s"])
        .arg(format!("--rate={rate}"))
        .arg(format!("--duration={}ms", opts.duration.as_millis()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run quotad-bench")?;
    let started = Stopwatch::start();
    let samples = sample_while(&q, &mut child, &opts, started)?;
    let out = child.wait_with_output()?;
    let report = common::bench_report(out, "open loop")?;
    let mut lines = table(&samples);
    let faults = verdict(&samples, &opts, &report, rate, &redis, &mut lines)?;
    for l in &lines {
        println!("{l}");
    }
    if faults.is_empty() {
        println!("\nsoak: every assertion held");
        Ok(lines)
    } else {
        bail!("{}", faults.join("; "))
    }
}

/// Samples `q` every `--sample` while the load (`child`) runs.
fn sample_while(
    q: &Quotad,
    child: &mut std::process::Child,
    opts: &Opts,
    started: Stopwatch,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let mut next = Duration::ZERO;
    // Samples while the load runs only: after it, flushes stop.
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        let now = Duration::from_nanos(started.nanos());
        if now >= next {
            samples.push(Sample::take(q, now)?);
            next += opts.sample;
        }
        if now > opts.duration + Duration::from_secs(30) {
            let _ = child.kill();
            bail!("quotad-bench ran 30 s past its duration");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(samples)
}

/// Every sample, as a Markdown table.
fn table(samples: &[Sample]) -> Vec<String> {
    let mut lines = vec![
        "| t (s) | RSS (MiB) | open fds | tracked cells | cells flushed to Redis | pending deltas | dropped deltas |".to_owned(),
        "|---:|---:|---:|---:|---:|---:|---:|".to_owned(),
    ];
    for s in samples {
        lines.push(format!(
            "| {:.0} | {:.1} | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64(),
            mib(s.rss),
            s.fds,
            s.cells,
            s.flushed,
            s.pending,
            s.dropped
        ));
    }
    lines
}

/// What the samples and the generator's report say against the
/// assertions (see the module docs); the summary goes to `lines`.
///
/// Judged are the samples after the warm-up and before the load's end
/// (`--duration` from its start; the generator started after the clock,
/// so it still ran then): a sample taken as the generator stops sees its
/// connections close and the flushes stop, which is no fault. Open fds
/// and RSS are bounded above only: a leak grows, and fewer fds or less
/// memory than at the first judged sample (a connection closed, memory
/// given back) is no leak.
fn verdict(
    samples: &[Sample],
    opts: &Opts,
    report: &common::Run,
    rate: f64,
    redis: &common::Redis,
    lines: &mut Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= opts.warmup && s.at < opts.duration)
        .collect();
    let (Some(first), Some(last)) = (after.first(), after.last()) else {
        bail!("no samples between the warm-up and the end of the load");
    };
    let rss_max = after.iter().map(|s| s.rss).max().unwrap_or(0);
    let fd_max = after.iter().map(|s| s.fds).max().unwrap_or(0);
    let rss_slack =
        (opts.rss_slack_mib * 1_048_576.0).max(first.rss as f64 * opts.rss_slack_pct / 100.0);
    let sent = report.n("requests");
    let due = rate * opts.duration.as_secs_f64();
    lines.push(String::new());
    lines.push(format!(
        "open loop: {sent} requests of {due:.0} due ({:.0}/s), {} allowed, {} errors; latency µs p50 {} / p99 {} / p99.9 {} / max {}",
        report.n("requests_per_second"),
        report.n("allowed"),
        report.n("errors"),
        report.p("p50"),
        report.p("p99"),
        report.p("p999"),
        report.p("max"),
    ));
    lines.push(format!(
        "judged ({} samples from {:.0} s to {:.0} s): RSS first {:.1} / last {:.1} / max {:.1} MiB \
         (bound: first + {:.1} MiB); fds first {} / last {} / max {fd_max} (bound: first + {})",
        after.len(),
        first.at.as_secs_f64(),
        last.at.as_secs_f64(),
        mib(first.rss),
        mib(last.rss),
        mib(rss_max),
        rss_slack / 1_048_576.0,
        first.fds,
        last.fds,
        opts.fd_slack
    ));
    lines.push(format!(
        "Redis: {} cells flushed in all, {} deltas dropped, {} keys held at the end",
        last.flushed,
        last.dropped,
        redis
            .command("DBSIZE")
            .unwrap_or_default()
            .trim()
            .trim_start_matches(':')
    ));

    let mut faults = Vec::new();
    if rss_max as f64 > first.rss as f64 + rss_slack {
        faults.push(format!(
            "RSS grew to {:.1} MiB, over {:.1} + {:.1} MiB",
            mib(rss_max),
            mib(first.rss),
            rss_slack / 1_048_576.0
        ));
    }
    if fd_max > first.fds + opts.fd_slack {
        faults.push(format!(
            "open fds grew from {} to {fd_max}, over {} + {}",
            first.fds, first.fds, opts.fd_slack
        ));
    }
    if report.n("errors") > 0.0 {
        faults.push(format!("{} errors", report.n("errors")));
    }
    if sent < due / 2.0 {
        faults.push(format!("only {sent} of {due:.0} requests were sent"));
    }
    if last.dropped > 0.0 {
        faults.push(format!("{} deltas dropped", last.dropped));
    }
    if let Some(w) = after.windows(2).find(|w| w[1].flushed <= w[0].flushed) {
        faults.push(format!(
            "no cell flushed to Redis between {:.0} s and {:.0} s",
            w[0].at.as_secs_f64(),
            w[1].at.as_secs_f64()
        ));
    }
    Ok(faults)
}

fn main() -> ExitCode {
    match run(common::bench_mode()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
