//! What connections cost a real `quotad serve`, measured from `/proc`.
//! Not a criterion bench: a plain `main` printing a Markdown table
//! (results in `BENCHMARKS.md`, "Connections").
//!
//! 1. **Idle**: N HTTP/2 connections, each having made one `Check` and
//!    then quiet: RSS per connection, what `net::CONN_OVERHEAD` rounds up.
//! 2. **Partial bodies**: on each of those connections, four calls that
//!    declare a 1 MiB message and send all but its last byte (the issue's
//!    attack): how many the budgets hold, and RSS against the documented
//!    bound `max_buffered_bytes + N × (receive window + unsent answers +
//!    CONN_OVERHEAD)`.
//! 3. **Full-speed streams**: on each, a `CheckStream` fed 20 000 requests,
//!    whose answers the client's HTTP/2 layer reads (large windows) but
//!    nobody consumes: RSS against the same bound while all of them run.
//! 4. **Slow readers**: N fresh connections, each a `CheckStream` fed
//!    20 000 requests whose answers are never read (the client's HTTP/2
//!    windows, 64 KiB, fill and stay full): how many requests the server
//!    took (it stops reading once `max_unsent_bytes_per_connection` of
//!    answers wait), and RSS against N × the per-connection bound over the
//!    RSS once the first connections closed.
//!
//! `cargo bench --bench conns` uses 1 000 connections (under the default
//! cap of 1 024); without `--bench` (test mode) 40, and asserts the bound.

#[path = "common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use common::{Layout, Quotad};
use quotad::config::ConnLimits;

const MIB: f64 = 1_048_576.0;

/// The HTTP/2 windows of the first connections: large, so that the
/// client's HTTP/2 layer reads every answer into its own memory (a fast
/// reader, to the server) whether or not the caller consumes it.
const FAST_READER_WINDOW: u32 = 1 << 30;

/// Streamed requests per connection in phases 3 and 4.
const STREAMED: usize = 20_000;

/// An HTTP/2 connection to quotad, driven by hand.
struct Raw {
    send: h2::client::SendRequest<Bytes>,
    /// Calls kept open (their request sides), and answers kept unread.
    held: Vec<h2::SendStream<Bytes>>,
    unread: Vec<h2::client::ResponseFuture>,
}

impl Raw {
    /// A connection whose HTTP/2 windows are `window` bytes, or the
    /// protocol's 64 KiB.
    async fn connect(port: u16, window: Option<u32>) -> anyhow::Result<Raw> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut builder = h2::client::Builder::new();
        if let Some(w) = window {
            builder
                .initial_window_size(w)
                .initial_connection_window_size(w);
        }
        let (send, conn) = builder.handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Raw {
            send,
            held: Vec::new(),
            unread: Vec::new(),
        })
    }

    /// Starts a call to `path` with `body`, not ending it.
    async fn start(
        &mut self,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<h2::client::ResponseFuture> {
        let mut send = self.send.clone().ready().await?;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let (answer, mut stream) = send.send_request(request, false)?;
        if !body.is_empty() {
            stream.send_data(body, false)?;
        }
        self.held.push(stream);
        Ok(answer)
    }
}

/// A gRPC-framed `CheckRequest` for `key`.
fn check_message(key: &str) -> Vec<u8> {
    use prost::Message;
    let m = quotad::api::pb::CheckRequest {
        key: key.into(),
        cost: 1,
        id: 0,
        ..Default::default()
    };
    let mut out = vec![0u8];
    out.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
    m.encode(&mut out).expect("a Vec grows");
    out
}

/// All but the last byte of a message declaring `len` payload bytes.
fn partial(len: usize) -> Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.resize(5 + len - 1, 0x55);
    Bytes::from(m)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
}

async fn run(full: bool) -> anyhow::Result<(Vec<(String, String)>, Vec<String>)> {
    let n: usize = if full { 1_000 } else { 40 };
    let dir = tempfile::tempdir()?;
    let yaml = "default_plan: open\nplans:\n  open:\n    limits:\n      - { name: per-second, rate: 1000000, per: second }\nreload: { watch: false }\nserver: { request_body_timeout: 10m, idle_timeout: 10m }\n";
    let q = Quotad::start(Layout::from_env()?, dir.path(), "conns", yaml)?;
    let limits = ConnLimits::default();
    let mut rows = Vec::new();
    let mut faults = Vec::new();
    let before = q.rss()? as f64;

    // 1. Idle connections, each after one answered call.
    let mut conns = Vec::new();
    for i in 0..n {
        // Large windows: what waits is on the server's side.
        let c = Raw::connect(q.grpc, Some(FAST_READER_WINDOW)).await?;
        let mut body = check_message(&format!("k{i}"));
        let answer = {
            let mut send = c.send.clone().ready().await?;
            let request = http::Request::builder()
                .method("POST")
                .uri("http://localhost/quotad.v1.RateLimiter/Check")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())?;
            let (answer, mut stream) = send.send_request(request, false)?;
            stream.send_data(Bytes::from(std::mem::take(&mut body)), true)?;
            answer
        };
        answer.await.context("a check answered")?;
        conns.push(c);
    }
    settle().await;
    let idle = q.rss()? as f64;
    let per_conn = (idle - before) / n as f64;
    rows.push((
        format!("{n} idle connections, one call each"),
        format!(
            "RSS {:.1} → {:.1} MiB: **{:.1} KiB per connection** (CONN_OVERHEAD = {} KiB)",
            before / MIB,
            idle / MIB,
            per_conn / 1024.0,
            quotad::net::CONN_OVERHEAD >> 10
        ),
    ));
    if per_conn > quotad::net::CONN_OVERHEAD as f64 {
        faults.push(format!(
            "{:.1} KiB per idle connection, over CONN_OVERHEAD",
            per_conn / 1024.0
        ));
    }
    // The documented worst case for n connections, plus 32 MiB for the
    // allocator's slack.
    let per_conn_bound = f64::from(limits.receive_window_bytes)
        + limits.max_unsent_bytes_per_connection as f64
        + quotad::net::CONN_OVERHEAD as f64;
    let bound = before + limits.max_buffered_bytes as f64 + n as f64 * per_conn_bound + 32.0 * MIB;

    // 2. Partial bodies: four per connection.
    let body = partial(1 << 20);
    let mut answers = Vec::new();
    for c in &mut conns {
        for _ in 0..4 {
            answers.push(
                c.start("/quotad.v1.RateLimiter/Check", body.clone())
                    .await?,
            );
        }
    }
    settle().await;
    let mut held = 0;
    for a in answers {
        let answered = tokio::time::timeout(Duration::from_millis(1), a).await;
        if answered.is_err() {
            held += 1;
        }
    }
    let partial_rss = q.rss()? as f64;
    rows.push((
        format!("+ {} partial 1 MiB bodies ({n} × 4)", 4 * n),
        format!(
            "{held} held, {} refused (RESOURCE_EXHAUSTED); RSS {:.1} MiB (bound {:.1} MiB)",
            4 * n - held,
            partial_rss / MIB,
            bound / MIB
        ),
    ));
    if partial_rss > bound {
        faults.push(format!(
            "RSS {:.1} MiB over the bound {:.1} MiB with partial bodies",
            partial_rss / MIB,
            bound / MIB
        ));
    }

    // 3. A stream per connection, read at full speed by the client's
    // HTTP/2 layer: the server's memory while every connection streams
    // (how many requests it takes meanwhile depends on its speed).
    let requests: Vec<u8> = (0..STREAMED)
        .flat_map(|i| check_message(&format!("s{i}")))
        .collect();
    let requests = Bytes::from(requests);
    let taken_fast = stream_all(&q, &mut conns, &requests).await?;
    let fast_rss = q.rss()? as f64;
    rows.push((
        format!("+ {n} streams of {STREAMED} requests, read at full speed"),
        format!(
            "{taken_fast:.0} requests taken; RSS {:.1} MiB (bound {:.1} MiB)",
            fast_rss / MIB,
            bound / MIB
        ),
    ));
    if fast_rss > bound {
        faults.push(format!(
            "RSS {:.1} MiB over the bound {:.1} MiB with full-speed streams",
            fast_rss / MIB,
            bound / MIB
        ));
    }

    // 4. The same on fresh connections with HTTP/2's 64 KiB windows,
    // whose answers are never read: the windows fill and stay full, and
    // the server stops taking requests once
    // `max_unsent_bytes_per_connection` of answers wait, however long
    // it is given.
    drop(conns);
    closed(&q).await?;
    // What the allocator keeps of the closed connections stays in the
    // RSS (and is reused): the bound is on what the fresh ones add.
    let reopened = q.rss()? as f64;
    let bound = reopened + n as f64 * per_conn_bound + 32.0 * MIB;
    let mut slow = Vec::with_capacity(n);
    for _ in 0..n {
        slow.push(Raw::connect(q.grpc, None).await?);
    }
    // Counted from here: the full-speed streams went on until their
    // connections closed.
    let base = stream_checks(&q)?;
    let taken = stream_all(&q, &mut slow, &requests).await? - base;
    let slow_rss = q.rss()? as f64;
    rows.push((
        format!("+ {n} fresh streams of {STREAMED} requests, answers never read"),
        format!(
            "{:.0} requests taken ({:.0} per stream of {STREAMED}); RSS {:.1} → {:.1} MiB (bound {:.1} MiB)",
            taken,
            taken / n as f64,
            reopened / MIB,
            slow_rss / MIB,
            bound / MIB
        ),
    ));
    if slow_rss > bound {
        faults.push(format!(
            "RSS {:.1} MiB over the bound {:.1} MiB with slow readers",
            slow_rss / MIB,
            bound / MIB
        ));
    }
    if taken >= (STREAMED * n) as f64 {
        faults.push("every streamed request was taken: answers were not held back".into());
    }
    drop(slow);
    Ok((rows, faults))
}

/// Starts one `CheckStream` of `requests` on each connection, leaves its
/// answers unread, and returns how many stream checks the server has
/// allowed in all once it settled.
async fn stream_all(q: &Quotad, conns: &mut [Raw], requests: &Bytes) -> anyhow::Result<f64> {
    for c in conns.iter_mut() {
        let answer = c
            .start("/quotad.v1.RateLimiter/CheckStream", requests.clone())
            .await?;
        c.unread.push(answer);
    }
    settle().await;
    stream_checks(q)
}

/// Stream checks the server has allowed so far.
fn stream_checks(q: &Quotad) -> anyhow::Result<f64> {
    Ok(q.metrics()?
        .lines()
        .filter(|l| {
            l.starts_with("quotad_checks_total{")
                && l.contains("api=\"stream\"")
                && l.contains("result=\"allowed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Waits (up to 30 s) until the server has closed the connections the
/// client dropped, so fresh ones stay under its cap.
async fn closed(q: &Quotad) -> anyhow::Result<()> {
    for _ in 0..300 {
        let text = q.metrics()?;
        let open = common::sample(&text, "quotad_connections_open{listener=\"grpc\"}");
        if open.is_some_and(|n| n < 1.0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the server did not close the dropped connections in 30 s")
}

fn main() -> ExitCode {
    let full = common::bench_mode();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conns: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(full)) {
        Ok((rows, faults)) => {
            println!("\n| | |\n|---|---|");
            for (k, v) in &rows {
                println!("| {k} | {v} |");
            }
            if faults.is_empty() {
                println!("\nconns: every assertion held");
                ExitCode::SUCCESS
            } else {
                for f in &faults {
                    eprintln!("conns: FAILED: {f}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("conns: {e:#}");
            ExitCode::FAILURE
        }
    }
}
