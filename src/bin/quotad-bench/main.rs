//! `quotad-bench`: an end-to-end load generator for quotad (or anything
//! speaking its APIs) over real gRPC.
//!
//! It drives `Check`, `CheckBatch`, `CheckStream`, `Report`, the leases,
//! Envoy RLS v3 `ShouldRateLimit`, Envoy RLQS or the HTTP door's
//! `/v1/auth` against an address, with keys drawn uniformly or by
//! a Zipf law from a fixed set, for a bounded time, and reports
//! requests/s, checks/s, allowed/denied/errors and latency percentiles
//! (HdrHistogram, microsecond resolution).
//!
//! - **Closed loop** (default): `--concurrency` callers, each sending its
//!   next request when the last is answered: the maximum throughput.
//! - **Open loop** (`--rate R`): requests are due at a fixed rate whatever
//!   the answers do, and each latency is measured from when its request
//!   was *due*, so a stall shows as the wait it causes (no coordinated
//!   omission). At most `--concurrency` are in flight; the rest queue.
//!
//! It stops by itself (`--duration`, at most 10 minutes, or after
//! `--requests`) and talks to loopback addresses only unless
//! `--allow-remote` is given.
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

mod drive;
mod http;
mod lean;
mod report;
mod rlqs;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use quotad::cli::EX_USAGE;

/// The generator runs on one core beside the server it measures, and a
/// closed loop runs at the slower one's pace: jemalloc, as the daemon
/// has, takes a fifth of its allocation cost off each call
/// (`BENCHMARKS.md`, issue 24, "The load generator").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The longest run allowed.
const MAX_DURATION: Duration = Duration::from_secs(600);

/// Which API to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `quotad.v1.RateLimiter/Check`, one key per call.
    Check,
    /// `CheckBatch`, `--batch` checks per call.
    Batch,
    /// `CheckStream`: one stream per caller, `--window` checks in flight.
    Stream,
    /// Envoy RLS v3 `ShouldRateLimit`, one descriptor with the key.
    Rls,
    /// `Acquire` then, when granted, `Release` of the lease: one pair per
    /// call (concurrency limits).
    Lease,
    /// `Hold`: `--concurrency` streams (one key each, drawn as usual)
    /// opened over the run's first moments and held until its end, or
    /// until the process is killed.
    Hold,
    /// Envoy RLQS `StreamRateLimitQuotas`: `--concurrency` simulated
    /// Envoys, each reporting `--buckets` buckets (`{tenant: <key>}`)
    /// every `--report-interval`, `--cost` requests a second each.
    Rlqs,
    /// `Report`: `--cost` units charged per call, whatever the key holds.
    Report,
    /// The HTTP check door's `GET /v1/auth` (`--addr` is the door's):
    /// one HTTP/1.1 keep-alive connection per caller, as NGINX keeps to
    /// its upstream (closed loop only).
    HttpAuth,
}

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Every key alike.
    Uniform,
    /// A Zipf law with this exponent (1.0: the classic one).
    Zipf(f64),
    /// In order, each caller from its own offset, wrapping around: every
    /// key is touched once per `--keys` checks (to fill a server's store).
    Seq,
}

impl std::str::FromStr for Dist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Dist::Uniform),
            "zipf" => Ok(Dist::Zipf(1.0)),
            "seq" => Ok(Dist::Seq),
            _ => s
                .strip_prefix("zipf:")
                .and_then(|e| e.parse::<f64>().ok())
                .filter(|e| e.is_finite() && *e > 0.0)
                .map(Dist::Zipf)
                .ok_or_else(|| {
                    format!("unknown distribution '{s}' (uniform, seq, zipf or zipf:EXPONENT)")
                }),
        }
    }
}

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "quotad-bench",
    version,
    about = "End-to-end load generator for quotad's gRPC APIs",
    // A flag given twice takes its last value, so scripts can append
    // overrides to a base command line.
    args_override_self = true
)]
pub struct Args {
    /// The server's gRPC address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
    /// The API to drive.
    #[arg(long, value_enum, default_value = "check")]
    pub mode: Mode,
    /// Distinct keys (`key-0` … `key-{N-1}`, with the default prefix).
    #[arg(long, default_value_t = 1)]
    pub keys: u64,
    /// What every key starts with: runs with different prefixes never
    /// share a key.
    #[arg(long, default_value = "key-")]
    pub key_prefix: String,
    /// How keys are drawn: uniform, seq, zipf or zipf:EXPONENT.
    #[arg(long, default_value = "uniform")]
    pub dist: Dist,
    /// Units each check asks for.
    #[arg(long, default_value_t = 1)]
    pub cost: u64,
    /// Callers at once (closed loop), or the cap on requests in flight
    /// (open loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to run (at most 10m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before measuring starts (not counted).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Stop after this many requests in all (warm-up included), or at
    /// the end of `--duration`, whichever comes first: with `--warmup 0s`
    /// and a key space much larger than the requests, every check of the
    /// run is for a key of its own.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Open loop: requests per second, due at fixed intervals.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: write every measured request to this file, one line
    /// each: `due_us lag_us took_us` (when it was due, from the start of
    /// measuring; how late the generator sent it; its latency from when
    /// it was due). Tells a stall of the generator (the lag) from one of
    /// the server or the network (latency without lag).
    #[arg(long)]
    pub latency_log: Option<std::path::PathBuf>,
    /// Checks per `CheckBatch`.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Checks in flight per `CheckStream`.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// The Envoy RLS domain (a plan domain: the key is the descriptor's
    /// `--key-entry`).
    #[arg(long, default_value = "quotad")]
    pub domain: String,
    /// RLQS: buckets each simulated Envoy reports.
    #[arg(long, default_value_t = 100)]
    pub buckets: u64,
    /// RLQS: how often each simulated Envoy reports (Envoy's filter: 5s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub report_interval: Duration,
    /// The descriptor entry that holds the key.
    #[arg(long, default_value = "api_key")]
    pub key_entry: String,
    /// Runtime threads for the generator (leave cores to the server).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Allow an address that is not loopback.
    #[arg(long)]
    pub allow_remote: bool,
}

impl Args {
    /// What is wrong with the arguments, if anything.
    fn check(&self) -> Result<(), String> {
        if !self.allow_remote && !self.addr.ip().is_loopback() {
            return Err(format!(
                "--addr {}: not a loopback address (load tests stay on this machine; --allow-remote to override)",
                self.addr
            ));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err("--duration: more than 0 and at most 10m".into());
        }
        if self.keys == 0 || self.concurrency == 0 || self.connections == 0 || self.threads == 0 {
            return Err(
                "--keys, --concurrency, --connections and --threads must be at least 1".into(),
            );
        }
        if self.batch == 0 || self.window == 0 || self.requests == Some(0) {
            return Err("--batch, --window and --requests must be at least 1".into());
        }
        if self.latency_log.is_some() && self.rate.is_none() {
            return Err("--latency-log: only with --rate (an open loop)".into());
        }
        if self.rate.is_some() && self.mode == Mode::HttpAuth {
            return Err("--rate: http-auth runs a closed loop (one connection per caller)".into());
        }
        if self.rate.is_some() && matches!(self.mode, Mode::Hold | Mode::Rlqs) {
            return Err(
                "--rate: hold and rlqs streams are opened all at once (a closed loop)".into(),
            );
        }
        if self.mode == Mode::Rlqs
            && (self.buckets == 0 || self.report_interval < Duration::from_secs(1))
        {
            return Err("--buckets: at least 1; --report-interval: at least 1s".into());
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err(format!("--rate {r}: must be a positive number"));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = match quotad::cli::parse::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Err(why) = args.check() {
        eprintln!("error: {why}");
        return ExitCode::from(EX_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(drive::run(&args)) {
        Ok(result) => {
            report::print(&args, &result);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", quotad::cli::error_text(e.as_ref()));
            ExitCode::from(69)
        }
    }
}
