//! Sending the load: connections, callers (closed loop) or a schedule
//! (open loop), one request shape per mode, and what came back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use hdrhistogram::Histogram;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{
    AcquireRequest, CheckBatchRequest, CheckRequest, HoldRequest, ReleaseRequest, ReportRequest,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::lean::Lean;
use crate::{Args, Dist, Mode};

/// What a run came to.
#[derive(Debug)]
pub struct Outcome {
    /// Calls answered (a batch or a stream message counts once).
    pub requests: u64,
    /// Checks answered (a batch's every check).
    pub checks: u64,
    /// Checks allowed.
    pub allowed: u64,
    /// Checks denied.
    pub denied: u64,
    /// Calls that failed (a status, a broken stream).
    pub errors: u64,
    /// How long was measured.
    pub elapsed: Duration,
    /// Latency per call, microseconds.
    pub latency: Histogram<u64>,
}

impl Outcome {
    pub(crate) fn new() -> Self {
        Self {
            requests: 0,
            checks: 0,
            allowed: 0,
            denied: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            // 1 µs to 60 s, 3 significant digits; both are constants.
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
        }
    }

    fn add(&mut self, other: &Outcome) {
        self.requests += other.requests;
        self.checks += other.checks;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
    }

    /// Checks answered outside a call's own answer (RLQS pushes).
    pub(crate) fn add_checks(&mut self, allowed: u64, denied: u64) {
        self.checks += allowed + denied;
        self.allowed += allowed;
        self.denied += denied;
    }

    fn record(&mut self, since: Instant, answered: Answered) {
        self.record_took(since.elapsed(), answered);
    }

    pub(crate) fn record_took(&mut self, took: Duration, answered: Answered) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us.max(1));
        match answered {
            Answered::Checks { allowed, denied } => {
                self.requests += 1;
                self.checks += allowed + denied;
                self.allowed += allowed;
                self.denied += denied;
            }
            Answered::Failed => self.errors += 1,
        }
    }
}

/// One call's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answered {
    Checks { allowed: u64, denied: u64 },
    Failed,
}

/// Draws keys.
struct Keys {
    rng: SmallRng,
    n: u64,
    /// `--key-prefix`.
    prefix: Arc<str>,
    zipf: Option<rand_distr::Zipf<f64>>,
    /// `--dist seq`: the next index.
    seq: Option<u64>,
    /// Keys one request takes (a batch's size, else 1).
    step: u64,
}

impl Keys {
    /// Caller `caller`'s keys; `seq` callers start `n / concurrency`
    /// apart.
    fn new(args: &Args, caller: u64) -> anyhow::Result<Self> {
        let zipf = match args.dist {
            Dist::Zipf(s) => Some(
                rand_distr::Zipf::new(args.keys as f64, s)
                    .map_err(|e| anyhow::anyhow!("--dist zipf:{s}: {e}"))?,
            ),
            _ => None,
        };
        let stride = (args.keys / args.concurrency.max(1) as u64).max(1);
        Ok(Self {
            rng: SmallRng::seed_from_u64(caller),
            n: args.keys,
            prefix: Arc::from(args.key_prefix.as_str()),
            zipf,
            seq: (args.dist == Dist::Seq).then(|| caller.wrapping_mul(stride) % args.keys),
            step: if args.mode == Mode::Batch {
                args.batch as u64
            } else {
                1
            },
        })
    }

    /// An independent draw for one request of the open loop.
    fn split(&mut self) -> Keys {
        Keys {
            rng: SmallRng::seed_from_u64(self.rng.random()),
            n: self.n,
            prefix: Arc::clone(&self.prefix),
            zipf: self.zipf,
            seq: self
                .seq
                .inspect(|&i| self.seq = Some(i.wrapping_add(self.step) % self.n)),
            step: self.step,
        }
    }

    fn next(&mut self) -> String {
        let i = match (&self.zipf, &mut self.seq) {
            // Zipf draws 1..=n, the most frequent first.
            (Some(z), _) => (self.rng.sample(z) as u64).saturating_sub(1),
            (None, Some(i)) => {
                let now = *i;
                *i = (now + 1) % self.n;
                now
            }
            (None, None) => self.rng.random_range(0..self.n),
        };
        format!("{}{i}", self.prefix)
    }
}

/// What `--requests` leaves to send, shared by every caller; unbounded
/// without it.
#[derive(Clone)]
struct Budget(Option<Arc<AtomicU64>>);

impl Budget {
    fn new(args: &Args) -> Self {
        Budget(args.requests.map(|n| Arc::new(AtomicU64::new(n))))
    }

    /// Takes one request; false once they are all taken.
    fn take(&self) -> bool {
        self.0.as_ref().is_none_or(|left| {
            left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        })
    }
}

/// The client for one mode: `Check` and `ShouldRateLimit` through
/// [`Lean`] (the answer's one counted field decoded), the other calls
/// through the generated client.
enum Client {
    Native(RateLimiterClient<Channel>, Lean),
    Rls(Lean),
    Http(crate::http::Conn),
}

/// One check's answer.
fn checks(allowed: bool) -> Answered {
    Answered::Checks {
        allowed: u64::from(allowed),
        denied: u64::from(!allowed),
    }
}

/// Makes one call of the mode (not streams) and says what came back.
async fn call(client: &mut Client, args: &Args, keys: &mut Keys) -> Answered {
    match (client, args.mode) {
        (Client::Native(c, _), Mode::Batch) => {
            let req = CheckBatchRequest {
                checks: (0..args.batch)
                    .map(|i| CheckRequest {
                        key: keys.next(),
                        cost: args.cost,
                        id: i as u64,
                        ..CheckRequest::default()
                    })
                    .collect(),
            };
            match c.check_batch(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let allowed = r.results.iter().filter(|c| c.allowed).count() as u64;
                    Answered::Checks {
                        allowed,
                        denied: r.results.len() as u64 - allowed,
                    }
                }
                Err(_) => Answered::Failed,
            }
        }
        (Client::Native(c, _), Mode::Lease) => {
            let req = AcquireRequest {
                key: keys.next(),
                cost: args.cost,
                ..AcquireRequest::default()
            };
            match c.acquire(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.granted && !r.lease.is_empty() {
                        let release = ReleaseRequest { lease: r.lease };
                        if c.release(release).await.is_err() {
                            return Answered::Failed;
                        }
                    }
                    checks(r.granted)
                }
                Err(_) => Answered::Failed,
            }
        }
        (Client::Native(c, _), Mode::Report) => report(c, args, keys).await,
        (Client::Http(c), _) => match c.auth(&keys.next(), args.cost).await {
            Some(allowed) => checks(allowed),
            None => Answered::Failed,
        },
        (Client::Native(_, c), _) => {
            let req = CheckRequest {
                key: keys.next(),
                cost: args.cost,
                id: 0,
                ..CheckRequest::default()
            };
            match c.check(req).await {
                Ok(allowed) => checks(allowed),
                Err(_) => Answered::Failed,
            }
        }
        (Client::Rls(c), _) => {
            let req = RateLimitRequest {
                domain: args.domain.clone(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![Entry {
                        key: args.key_entry.clone(),
                        value: keys.next(),
                    }],
                    ..Default::default()
                }],
                hits_addend: u32::try_from(args.cost).unwrap_or(u32::MAX),
            };
            match c.should_rate_limit(req).await {
                Ok(ok) => checks(ok),
                Err(_) => Answered::Failed,
            }
        }
    }
}

/// One `Report`: never refused, "allowed" when it left the key within
/// its limits.
async fn report(c: &mut RateLimiterClient<Channel>, args: &Args, keys: &mut Keys) -> Answered {
    let req = ReportRequest {
        key: keys.next(),
        cost: args.cost,
        id: 0,
    };
    match c.report(req).await {
        Ok(r) => checks(r.into_inner().debt == 0),
        Err(_) => Answered::Failed,
    }
}

async fn connect(args: &Args) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let ch = Endpoint::from_shared(format!("http://{}", args.addr))
            .context("the address")?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            // A call that takes this long counts as an error rather than
            // holding the run past its end.
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        channels.push(ch);
    }
    Ok(channels)
}

fn client(args: &Args, ch: Channel) -> Client {
    match args.mode {
        Mode::Rls => Client::Rls(Lean::new(ch)),
        _ => Client::Native(RateLimiterClient::new(ch.clone()), Lean::new(ch)),
    }
}

/// Runs the load as `args` says; measures after the warm-up.
pub async fn run(args: &Args) -> anyhow::Result<Outcome> {
    // The HTTP door is HTTP/1.1: each caller makes its own connection.
    let channels = if args.mode == Mode::HttpAuth {
        Vec::new()
    } else {
        connect(args).await?
    };
    let measuring = Arc::new(AtomicBool::new(args.warmup.is_zero()));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    {
        let measuring = Arc::clone(&measuring);
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            measuring.store(true, Ordering::Relaxed);
        });
    }
    let budget = Budget::new(args);
    let mut tasks = tokio::task::JoinSet::new();
    match (args.rate, args.mode) {
        (Some(rate), _) => {
            tasks.spawn(open_loop(
                args.clone(),
                channels,
                rate,
                measure_from,
                end,
                budget,
            ));
        }
        (None, Mode::Hold) => {
            // Streams are opened at most OPENING at a time, so a run of
            // 100 000 ramps up instead of queueing them all at once.
            let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
            for w in 0..args.concurrency {
                let ch = channels[w % channels.len()].clone();
                let opening = Arc::clone(&opening);
                tasks.spawn(hold(args.clone(), ch, (w as u64, opening), end));
            }
        }
        (None, Mode::Rlqs) => {
            for w in 0..args.concurrency {
                let ch = channels[w % channels.len()].clone();
                let measuring = Arc::clone(&measuring);
                tasks.spawn(crate::rlqs::envoy(
                    args.clone(),
                    ch,
                    w as u64,
                    end,
                    measuring,
                ));
            }
        }
        (None, Mode::Stream) => {
            for w in 0..args.concurrency {
                let ch = channels[w % channels.len()].clone();
                tasks.spawn(stream(
                    args.clone(),
                    ch,
                    w as u64,
                    end,
                    Arc::clone(&measuring),
                    budget.clone(),
                ));
            }
        }
        (None, _) => {
            for w in 0..args.concurrency {
                let c = match channels.get(w % channels.len().max(1)) {
                    Some(ch) => client(args, ch.clone()),
                    None => Client::Http(crate::http::Conn::new(args.addr)),
                };
                tasks.spawn(closed_loop(
                    args.clone(),
                    c,
                    w as u64,
                    end,
                    Arc::clone(&measuring),
                    budget.clone(),
                ));
            }
        }
    }
    let mut total = Outcome::new();
    while let Some(done) = tasks.join_next().await {
        total.add(&done.context("a caller task")??);
    }
    // A run cut short by `--requests` measured until it stopped.
    total.elapsed = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from);
    Ok(total)
}

async fn closed_loop(
    args: Args,
    mut client: Client,
    seed: u64,
    end: Instant,
    measuring: Arc<AtomicBool>,
    budget: Budget,
) -> anyhow::Result<Outcome> {
    let mut keys = Keys::new(&args, seed)?;
    let mut out = Outcome::new();
    while Instant::now() < end && budget.take() {
        let sent = Instant::now();
        let answered = call(&mut client, &args, &mut keys).await;
        if measuring.load(Ordering::Relaxed) {
            out.record(sent, answered);
        }
    }
    Ok(out)
}

/// A `CheckStream` with up to `--window` checks in flight; answers come
/// in order, so each is matched to the oldest send time.
async fn stream(
    args: Args,
    ch: Channel,
    seed: u64,
    end: Instant,
    measuring: Arc<AtomicBool>,
    budget: Budget,
) -> anyhow::Result<Outcome> {
    let mut keys = Keys::new(&args, seed)?;
    let mut client = RateLimiterClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel::<CheckRequest>(args.window);
    let mut answers = client
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("CheckStream")?
        .into_inner();
    let mut sent = std::collections::VecDeque::with_capacity(args.window);
    let mut out = Outcome::new();
    let mut id = 0u64;
    loop {
        // Keep the window full until the end, then drain it.
        while sent.len() < args.window && Instant::now() < end && budget.take() {
            id += 1;
            let req = CheckRequest {
                key: keys.next(),
                cost: args.cost,
                id,
                ..CheckRequest::default()
            };
            if tx.send(req).await.is_err() {
                break;
            }
            sent.push_back(Instant::now());
        }
        let Some(at) = sent.pop_front() else { break };
        let answered = match answers.message().await {
            Ok(Some(a)) if a.error.is_empty() => Answered::Checks {
                allowed: u64::from(a.allowed),
                denied: u64::from(!a.allowed),
            },
            Ok(Some(_)) => Answered::Failed,
            Ok(None) | Err(_) => {
                out.errors += 1 + sent.len() as u64;
                break;
            }
        };
        if measuring.load(Ordering::Relaxed) {
            out.record(at, answered);
        }
    }
    Ok(out)
}

/// Hold streams being opened at once, at most.
const OPENING: usize = 256;

/// One `Hold` stream: its first answer is the call measured; the stream
/// stays open until `end` (warm-up or not: a held lease is the load).
async fn hold(
    args: Args,
    ch: Channel,
    (seed, opening): (u64, Arc<tokio::sync::Semaphore>),
    end: Instant,
) -> anyhow::Result<Outcome> {
    let mut keys = Keys::new(&args, seed)?;
    let permit = opening.acquire_owned().await.context("the opening gate")?;
    let mut client = RateLimiterClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel::<HoldRequest>(1);
    let mut out = Outcome::new();
    let sent = Instant::now();
    let first = HoldRequest {
        key: keys.next(),
        cost: args.cost,
        id: seed,
    };
    if tx.send(first).await.is_err() {
        out.errors += 1;
        return Ok(out);
    }
    let opened = client
        .hold(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let mut answers = match opened {
        Ok(a) => a.into_inner(),
        Err(_) => {
            out.errors += 1;
            return Ok(out);
        }
    };
    let answered = match answers.message().await {
        Ok(Some(a)) => {
            let granted = a.answer.is_some_and(|a| a.granted);
            Answered::Checks {
                allowed: u64::from(granted),
                denied: u64::from(!granted),
            }
        }
        _ => Answered::Failed,
    };
    out.record(sent, answered);
    drop(permit);
    // Held until the end of the run (or the server ends the stream).
    let _ = tokio::time::timeout_at(end, answers.message()).await;
    drop(tx);
    Ok(out)
}

/// Requests due every `1/rate` s from the start; each one's latency runs
/// from when it was due. At most `--concurrency` in flight: when they
/// are all taken the schedule waits, and the wait shows in the
/// latencies of the requests that were due meanwhile.
///
/// Tokio's timer ticks in milliseconds, which would add up to 1 ms to
/// every latency, so the schedule sleeps on it only until 1 ms before a
/// request is due and yields in a loop from there: precise to a few
/// microseconds, at the price of keeping the generator's thread busy
/// (pin it to a core of its own, see docs/src/development.md).
async fn open_loop(
    args: Args,
    channels: Vec<Channel>,
    rate: f64,
    measure_from: Instant,
    end: Instant,
    budget: Budget,
) -> anyhow::Result<Outcome> {
    let args = Arc::new(args);
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = measure_from - args.warmup;
    let mut keys = Keys::new(&args, u64::MAX)?;
    let (done, mut answers) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, Duration, Answered)>();
    let log_to = args.latency_log.clone();
    let schedule = tokio::spawn(async move {
        for n in 0u64.. {
            let due = start + interval.mul_f64(n as f64);
            if due >= end || !budget.take() {
                break;
            }
            if due > Instant::now() + Duration::from_millis(2) {
                tokio::time::sleep_until(due - Duration::from_millis(1)).await;
            }
            while Instant::now() < due {
                tokio::task::yield_now().await;
            }
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let mut c = client(&args, channels[(n as usize) % channels.len()].clone());
            let mut keys = keys.split();
            let a = Arc::clone(&args);
            let done = done.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let answered = call(&mut c, &a, &mut keys).await;
                let took = due.elapsed();
                drop(permit);
                let _ = done.send((due, sent, took, answered));
            });
        }
    });
    let mut out = Outcome::new();
    // Ends when the schedule and every request it spawned are done.
    let mut log = Vec::new();
    while let Some((due, sent, took, answered)) = answers.recv().await {
        if due >= measure_from {
            out.record_took(took, answered);
            if log_to.is_some() {
                log.push((
                    due - measure_from,
                    sent.saturating_duration_since(due),
                    took,
                ));
            }
        }
    }
    schedule.await.context("the schedule task")?;
    if let Some(path) = log_to {
        write_latency_log(&path, &mut log)?;
    }
    Ok(out)
}

/// Writes `--latency-log`: one line per request, in the order they were
/// due, `due_us lag_us took_us`.
fn write_latency_log(
    path: &std::path::Path,
    log: &mut [(Duration, Duration, Duration)],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    log.sort_unstable_by_key(|l| l.0);
    let file =
        std::fs::File::create(path).with_context(|| format!("--latency-log {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for (due, lag, took) in log.iter() {
        writeln!(
            w,
            "{} {} {}",
            due.as_micros(),
            lag.as_micros(),
            took.as_micros()
        )?;
    }
    w.flush()
        .with_context(|| format!("--latency-log {}", path.display()))
}
