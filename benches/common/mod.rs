//! What the plain-`main` benches share: telling a real run from a test
//! run, a throwaway `redis-server`, and for the benches that drive real
//! processes (`e2e`, `flood`, `soak`): where they run on the machine, a
//! `quotad serve` child with its `/metrics` and `/proc` figures, and
//! `quotad-bench` runs with their JSON reports.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

pub const QUOTAD: &str = env!("CARGO_BIN_EXE_quotad");
pub const BENCH: &str = env!("CARGO_BIN_EXE_quotad-bench");

/// The config of a daemon under bench load: one plan large enough that
/// every check passes (the full decision path, charges included), idle
/// cells kept `sweep` long, the headers at their default; in Redis sync
/// mode when `redis` gives a port.
pub fn daemon_yaml(max_tracked_keys: u64, sweep: &str, redis: Option<u16>) -> String {
    let (secret, redis) = redis_yaml(redis);
    format!(
        "default_plan: default
plans:
  default:
    limits:
      - {{ name: per-second, rate: 1000, per: second, burst: 100000000 }}
envoy: {{ domains: [quotad], key_entry: api_key }}
response_headers: both
reload: {{ watch: false }}
store: {{ max_tracked_keys: {max_tracked_keys}, sweep_interval: {sweep}{secret} }}
{redis}"
    )
}

/// For Redis sync on `redis`'s port: the `store` fragment with the fixed
/// `hash_secret` nodes must share, and the `redis` section; both empty
/// without Redis.
pub fn redis_yaml(redis: Option<u16>) -> (&'static str, String) {
    match redis {
        Some(port) => (
            ", hash_secret: \"00112233445566778899aabbccddeeff\"",
            format!("redis: {{ url: \"redis://127.0.0.1:{port}/0\" }}\n"),
        ),
        None => ("", String::new()),
    }
}

/// Whether this is `cargo bench` (not `cargo test --benches`).
pub fn bench_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    has("--bench") && !has("--test") && !has("--list")
}

/// A throwaway redis-server; killed on drop.
pub struct Redis {
    pub port: u16,
    child: std::process::Child,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        Self::start_on(None)
    }

    /// Starts it pinned to `cpu` (with `taskset`) when given. Should
    /// another process take the free port first, tries another: the
    /// server that answers must be this child (its process id, from
    /// `INFO server`; `taskset` execs redis-server, so the pids agree).
    pub fn start_on(cpu: Option<&str>) -> Option<Redis> {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .ok()?
                .port();
            let mut command = match cpu {
                Some(cpu) => {
                    let mut c = std::process::Command::new("taskset");
                    c.args(["-c", cpu, "redis-server"]);
                    c
                }
                None => std::process::Command::new("redis-server"),
            };
            let child = command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .ok()?;
            let mut r = Redis { port, child };
            for _ in 0..500 {
                if !matches!(r.child.try_wait(), Ok(None)) {
                    break;
                }
                if r.command("PING").is_some_and(|l| l.contains("PONG")) {
                    if r.is_ours() {
                        return Some(r);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        None
    }

    /// Whether the server on the port is this child.
    fn is_ours(&self) -> bool {
        let pid = format!("process_id:{}", self.child.id());
        let mut s = match std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            Ok(s) => s,
            Err(_) => return false,
        };
        if s.write_all(b"INFO server\r\n").is_err()
            || s.set_read_timeout(Some(Duration::from_millis(500)))
                .is_err()
        {
            return false;
        }
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.trim() == pid {
                return true;
            }
            line.clear();
        }
        false
    }

    /// Every line of the reply to an inline command.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut r = BufReader::new(s);
        let mut first = String::new();
        r.read_line(&mut first).ok()?;
        let Some(len) = first.strip_prefix('$') else {
            return Some(first);
        };
        let len: usize = len.trim().parse().ok()?;
        let mut body = vec![0u8; len + 2];
        std::io::Read::read_exact(&mut r, &mut body).ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    }

    /// `calls` of one command in `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.command("INFO commandstats").unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process, killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cores of the `pinned` layout.
pub const SERVER_CPU: &str = "1";
pub const GENERATOR_CPU: &str = "0";

/// Where processes run (`QUOTAD_E2E_LAYOUT`).
/// - `pinned` (default): the server under test on CPU 1 with one runtime
///   thread, the generator (and `redis-server`) on CPU 0 (`taskset`), so
///   neither takes the other's core;
/// - `shared`: no pinning, servers with their default threads.
#[derive(Clone, Copy, PartialEq)]
pub enum Layout {
    Pinned,
    Shared,
}

impl Layout {
    pub fn from_env() -> anyhow::Result<Layout> {
        match std::env::var("QUOTAD_E2E_LAYOUT").as_deref() {
            Err(_) | Ok("pinned") => {
                let taskset = Command::new("taskset")
                    .args(["-c", SERVER_CPU, "true"])
                    .status()
                    .is_ok_and(|s| s.success());
                if taskset {
                    Ok(Layout::Pinned)
                } else {
                    println!("(no taskset or no CPU 1: running unpinned)");
                    Ok(Layout::Shared)
                }
            }
            Ok("shared") => Ok(Layout::Shared),
            Ok(other) => bail!("QUOTAD_E2E_LAYOUT={other}: pinned or shared"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Pinned => "pinned",
            Layout::Shared => "shared",
        }
    }

    /// A command for `exe` on the server side (`server`) or the
    /// generator's. `taskset` execs `exe`, so the child's pid is its.
    pub fn command(self, exe: &str, server: bool) -> Command {
        match self {
            Layout::Shared => Command::new(exe),
            Layout::Pinned => {
                let mut c = Command::new("taskset");
                c.args(["-c", if server { SERVER_CPU } else { GENERATOR_CPU }, exe]);
                if server {
                    c.env("TOKIO_WORKER_THREADS", "1");
                }
                c
            }
        }
    }

    /// Where `redis-server` goes: beside the generator when pinned (in
    /// production it is another machine; the server's core is what is
    /// measured).
    pub fn redis_cpu(self) -> Option<&'static str> {
        (self == Layout::Pinned).then_some(GENERATOR_CPU)
    }
}

/// A plain HTTP/1.1 GET on loopback: the status line, headers and body.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The value of an unlabelled sample in a `/metrics` text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A real `quotad serve` child on free loopback ports, ready.
pub struct Quotad {
    pub name: String,
    pub grpc: u16,
    pub http: u16,
    proc: Proc,
}

impl Quotad {
    /// Writes `yaml` to `dir/<name>.yaml` and serves it, placed as
    /// `layout` says, on ports the system picks (port 0: none another
    /// process can take first), read from its log; waits (up to 10 s)
    /// until it says it is ready.
    pub fn start(layout: Layout, dir: &Path, name: &str, yaml: &str) -> anyhow::Result<Quotad> {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml)?;
        // Info: the listeners' addresses and "quotad ready" (nothing is
        // logged per request at this level).
        let mut child = layout
            .command(QUOTAD, true)
            .args(["serve", "--log", "info", "--config"])
            .arg(&config)
            .args(["--grpc-addr=127.0.0.1:0", "--http-addr=127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start quotad")?;
        let stdout = child.stdout.take().context("quotad's stdout")?;
        let proc = Proc { child };
        // Read on a thread of its own, to the end, so the daemon never
        // blocks on a full pipe.
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let port = |line: &str, field: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(field))
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
        };
        let (mut grpc, mut http) = (None, None);
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .with_context(|| format!("{name} exited, or did not start in 10 s"))?;
            grpc = grpc.or_else(|| port(&line, "grpc_addr="));
            http = http.or_else(|| port(&line, "http_addr="));
            if line.contains("quotad ready") {
                break;
            }
        }
        let q = Quotad {
            name: name.to_owned(),
            grpc: grpc.with_context(|| format!("{name} logged no gRPC address"))?,
            http: http.with_context(|| format!("{name} logged no HTTP address"))?,
            proc,
        };
        // Serving; and ready as /readyz says (nothing holds it back).
        for _ in 0..400 {
            if http_get(q.http, "/readyz").is_ok_and(|b| b.starts_with("HTTP/1.1 200")) {
                return Ok(q);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("{name} did not get ready in 10 s")
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// The whole `/metrics` text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        http_get(self.http, "/metrics")
    }

    /// A sample from `/metrics` (no labels).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        sample(&self.metrics()?, name)
            .with_context(|| format!("{}: no {name} in /metrics", self.name))
    }

    /// The process's resident set (`VmRSS` in `/proc/<pid>/status`), bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .context("no VmRSS in /proc/<pid>/status")
    }

    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fn fds(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.proc.child.try_wait().is_ok_and(|s| s.is_none())
    }
}

/// One `quotad-bench` run's JSON report.
pub struct Run(pub Value);

impl Run {
    pub fn n(&self, k: &str) -> f64 {
        self.0[k].as_f64().unwrap_or(0.0)
    }

    pub fn p(&self, q: &str) -> u64 {
        self.0["latency_us"][q].as_u64().unwrap_or(0)
    }
}

/// `quotad-bench --json` against gRPC port `grpc`, on the generator's
/// side of `layout`; flags are appended.
pub fn bench_command(layout: Layout, grpc: u16) -> Command {
    let mut c = layout.command(BENCH, false);
    c.arg(format!("--addr=127.0.0.1:{grpc}")).arg("--json");
    c
}

/// The report of a finished `quotad-bench`; an error if it failed.
pub fn bench_report(out: Output, what: &str) -> anyhow::Result<Run> {
    if !out.status.success() {
        bail!(
            "quotad-bench {what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Run(
        serde_json::from_slice(&out.stdout).context("quotad-bench's report")?
    ))
}
