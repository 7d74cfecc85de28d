//! Faults under load: Redis killed and restarted, paused (`CLIENT PAUSE`,
//! `DEBUG SLEEP`), flushed underneath (`FLUSHALL`, `SCRIPT FLUSH`), the
//! config file replaced by garbage while reloading, SIGTERM to the real
//! binary. Throughout, several client tasks hammer Check, CheckBatch and
//! Envoy RLS, and every call must be answered in time, the fail mode
//! must hold, and Redis must end up with what was charged (or the loss
//! must show in `quotad_redis_dropped_deltas_total`).
//!
//! Counts are compared with Redis's own: the plans here have only quotas
//! (window counters) large enough never to refuse, so every allowed check
//! charges one unit to one counter, and the sum of the counters in Redis
//! must be the allowed checks exactly. Sync delivery is exactly once: a
//! flush call whose answer was lost (Redis died after applying it, or
//! answered just as the 1 s response timeout fired) is sent again as it
//! was, and Redis applies it at most once (its marker). A strict check
//! Redis answered too late is given back through the journal, and one
//! whose answer was lost is given up in Redis (refunded if charged), so
//! strict counts are exact too. Only `FLUSHALL` under load, which can
//! take a round's charge before or after it, is bounded ([`Rounds`]).
//! Redis runs with `appendfsync always` where it is killed, so a restart
//! keeps what it acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::{CheckBatchRequest, CheckRequest, CheckResponse, DenyReason};
use quotad::sync::SyncState;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::support::rls::{descriptor, request};
use crate::support::{RedisServer, TestDaemon, metric, metric_reaches};

/// How long a fault lasts: `CLIENT PAUSE 2000`, `DEBUG SLEEP 2`.
const FAULT_MS: u64 = 2_000;

/// No call may take longer: half a fault, so an answer that waited for
/// Redis shows (the load sends calls throughout, and every one sent in
/// the fault's first half would take longer, were it waiting), while a
/// noisy 2-core machine, running this test's daemon, its load and Redis
/// at once, has a second of room (500 ms left too little: answers take
/// milliseconds, but one stall of the process is all it takes).
const ANSWER_BOUND: Duration = Duration::from_millis(FAULT_MS / 2);

/// Keys the load spreads over.
const KEYS: usize = 8;

/// The call a load task makes, over and over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// One `Check` of one unit.
    Check,
    /// One `CheckBatch` of three checks of one unit each, different keys.
    Batch,
    /// One Envoy `ShouldRateLimit` with one descriptor, one hit.
    Rls,
    /// A `CheckStream` kept open, one check at a time.
    Stream,
}

/// What the load saw, counted as it went.
#[derive(Default)]
struct Tally {
    /// Calls answered (a batch is one call).
    calls: AtomicU64,
    /// Units allowed (a batch's allowed checks each count).
    allowed: AtomicU64,
    /// Units sent, counted before each call goes out.
    sent: AtomicU64,
    /// Native checks refused with `DENY_REASON_UNAVAILABLE` (fail-closed).
    unavailable: AtomicU64,
    /// Native checks refused for any other reason.
    limited: AtomicU64,
    /// RLS answers `OVER_LIMIT` (RLS does not say why).
    rls_over: AtomicU64,
    /// The slowest answer, µs.
    slowest_us: AtomicU64,
    /// Calls that got a status instead of an answer: (call, status).
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::SeqCst)
    }
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
    /// Units answered, allowed or not.
    fn units(&self) -> u64 {
        [
            &self.allowed,
            &self.unavailable,
            &self.limited,
            &self.rls_over,
        ]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
    }
    fn slowest(&self) -> Duration {
        Duration::from_micros(self.slowest_us.load(Ordering::SeqCst))
    }
    fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors").clone()
    }
    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::SeqCst);
    }
    fn native(&self, r: &CheckResponse) {
        if r.allowed {
            self.add(&self.allowed, 1);
        } else if r.reason == DenyReason::Unavailable as i32 {
            self.add(&self.unavailable, 1);
        } else {
            self.add(&self.limited, 1);
        }
    }
}

/// Client tasks hammering one daemon until [`Load::stop`].
struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

async fn connect(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the daemon")
}

fn key(i: u64) -> String {
    format!("load-{}", i % KEYS as u64)
}

fn check_req(i: u64) -> CheckRequest {
    CheckRequest {
        key: key(i),
        cost: 1,
        id: i,
        ..Default::default()
    }
}

impl Load {
    /// One task per entry of `calls`, each on its own connection to
    /// `addr`, each sending its next call as soon as the last is answered.
    async fn start(addr: &str, calls: &[Call]) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for (n, call) in calls.iter().copied().enumerate() {
            let channel = connect(addr).await;
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            tasks.spawn(async move { run(call, n as u64, channel, tally, stop).await });
        }
        Load { tally, stop, tasks }
    }

    /// Waits (bounded) until `n` more calls have been answered than now.
    async fn more(&self, n: u64, why: &str) {
        let want = self.tally.calls() + n;
        let poll = async {
            while self.tally.calls() < want {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .unwrap_or_else(|_| panic!("{n} more calls answered {why}"));
    }

    /// Stops every task (each finishes its call in flight) and returns
    /// the tally.
    async fn stop(mut self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        let drain = async {
            while let Some(done) = self.tasks.join_next().await {
                done.expect("load task did not panic");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .expect("load tasks stopped");
        self.tally
    }
}

/// One load task: `call` until `stop`, every answer timed and counted.
async fn run(call: Call, seed: u64, channel: Channel, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut native = RateLimiterClient::new(channel.clone());
    let mut rls = RateLimitServiceClient::new(channel);
    let mut i = seed;
    // A stream's requests go in through a channel; its answers come back
    // one per request.
    let mut stream = None;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let units = match call {
            Call::Batch => 3,
            _ => 1,
        };
        tally.add(&tally.sent, units);
        let started = Instant::now();
        // Bounded: a call that hangs is a failure, reported as one.
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            match call {
                Call::Check => native
                    .check(check_req(i))
                    .await
                    .map(|r| tally.native(r.get_ref())),
                Call::Batch => native
                    .check_batch(CheckBatchRequest {
                        checks: (0..3).map(|k| check_req(i * 3 + k)).collect(),
                    })
                    .await
                    .map(|r| r.get_ref().results.iter().for_each(|r| tally.native(r))),
                Call::Rls => rls
                    .should_rate_limit(request(
                        "edge",
                        vec![descriptor(&[("api_key", &key(i))])],
                        1,
                    ))
                    .await
                    .map(|r| {
                        if r.get_ref().overall_code == Code::Ok as i32 {
                            tally.add(&tally.allowed, 1);
                        } else {
                            tally.add(&tally.rls_over, 1);
                        }
                    }),
                Call::Stream => {
                    use tokio_stream::StreamExt;
                    if stream.is_none() {
                        let (tx, rx) = tokio::sync::mpsc::channel::<CheckRequest>(1);
                        let answers = native
                            .check_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                            .await?
                            .into_inner();
                        stream = Some((tx, answers));
                    }
                    let (tx, answers) = stream.as_mut().expect("opened above");
                    let _ = tx.send(check_req(i)).await;
                    match answers.next().await {
                        Some(Ok(r)) => {
                            tally.native(&r);
                            Ok(())
                        }
                        Some(Err(s)) => Err(s),
                        None => Err(tonic::Status::unknown("stream ended without a status")),
                    }
                }
            }
        })
        .await;
        let took = started.elapsed();
        tally
            .slowest_us
            .fetch_max(took.as_micros() as u64, Ordering::SeqCst);
        match outcome {
            Ok(Ok(())) => tally.add(&tally.calls, 1),
            Ok(Err(status)) => {
                tally
                    .errors
                    .lock()
                    .expect("errors")
                    .push(format!("{call:?}: {status:?}"));
                // A status ends a stream; a unary error is not retried
                // faster than the machine can answer.
                stream = None;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => tally
                .errors
                .lock()
                .expect("errors")
                .push(format!("{call:?}: no answer within 5 s")),
        }
    }
}

/// Asserts the load saw no error, no slow answer, and kept going.
fn assert_all_answered(what: &str, t: &Tally) {
    let errors = t.errors();
    assert!(errors.is_empty(), "{what}: calls not answered: {errors:?}");
    assert!(
        t.slowest() < ANSWER_BOUND,
        "{what}: the slowest answer took {:?}",
        t.slowest()
    );
}

/// The sum of every window counter quotad keeps in Redis (`*}c:*`).
async fn counted_in_redis(redis: &RedisServer) -> u64 {
    counted_under(redis, "*").await
}

/// The sum of the window counters whose keys start with `prefix`.
async fn counted_under(redis: &RedisServer, prefix: &str) -> u64 {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}}}c:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut sum = 0;
    for k in keys {
        let v: u64 = redis::cmd("GET")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .expect("GET a counter");
        sum += v;
    }
    sum
}

/// The units answered when each flush round was seen completed, so a
/// test can tell how much a round that was in flight at a fault carried
/// (at most what was charged, or given back, since).
struct Rounds {
    seen: Arc<std::sync::Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Rounds {
    fn follow(sync: &quotad::sync::SyncHandle, tally: &Arc<Tally>) -> Rounds {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut sync, tally, log) = (sync.clone(), Arc::clone(tally), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            loop {
                let next = sync.rounds() + 1;
                sync.wait_rounds(next).await;
                log.lock().expect("rounds").push(tally.units());
            }
        });
        Rounds { seen, task }
    }

    /// What a round in flight now can hold at most: the units answered
    /// since three completed rounds ago (a round drains after the one
    /// before it completed; two more rounds of slack for a late look).
    /// While Redis is away no round completes: right after a fault, this
    /// is everything pending through it.
    fn in_flight(&self, tally: &Tally) -> u64 {
        let seen = self.seen.lock().expect("rounds");
        let since = seen.len().checked_sub(3).map_or(0, |i| seen[i]);
        tally.units() - since
    }
}

impl Drop for Rounds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Redis that keeps, across a kill, every write it acknowledged.
async fn durable_redis(dir: &tempfile::TempDir) -> RedisServer {
    let dir = dir.path().display().to_string();
    RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir,
    ])
    .await
}

/// Every key on one daily quota that never refuses: sync mode, flushed
/// every 5 ms.
fn sync_config(redis: &str) -> String {
    format!(
        r#"
default_plan: metered
plans:
  metered:
    limits:
      - {{ name: daily, quota: 1000000000, per: day }}
envoy:
  domains: [edge]
  key_entry: api_key
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
redis:
  url: {redis}
  sync_interval: 5ms
server:
  shutdown_grace: 5s
"#
    )
}

/// Every key on one strict monthly quota that never refuses, decided in
/// Redis within 20 ms, `on_redis_error` as given.
fn strict_config(redis: &str, on_error: &str) -> String {
    strict_within(redis, on_error, "20ms")
}

/// [`strict_config`] with the given `strict_deadline`.
fn strict_within(redis: &str, on_error: &str, deadline: &str) -> String {
    format!(
        r#"
default_plan: exact
plans:
  exact:
    limits:
      - {{ name: monthly, quota: 1000000000, per: month, mode: strict }}
envoy:
  domains: [edge]
  key_entry: api_key
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
redis:
  url: {redis}
  sync_interval: 5ms
  strict_deadline: {deadline}
  on_redis_error: {on_error}
  key_prefix: "{on_error}:"
server:
  shutdown_grace: 5s
"#
    )
}

const MIXED: &[Call] = &[Call::Check, Call::Batch, Call::Rls, Call::Check];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_loses_no_charge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redis = durable_redis(&dir).await;
    let d = TestDaemon::with_config(&sync_config(&redis.url())).await;
    let mut sync = d.sync.clone().expect("sync task");
    let load = Load::start(&d.grpc_addr.to_string(), MIXED).await;
    load.more(200, "before the kill").await;

    redis.kill();
    tokio::time::timeout(Duration::from_secs(10), sync.wait_for(SyncState::Degraded))
        .await
        .expect("the node noticed the outage");
    load.more(200, "while Redis is down").await;
    redis.restart().await;
    tokio::time::timeout(Duration::from_secs(15), sync.wait_for(SyncState::Synced))
        .await
        .expect("the node is back in sync");
    load.more(200, "after the restart").await;
    let t = load.stop().await;
    d.wait_synced().await;

    assert_all_answered("kill", &t);
    assert_eq!(t.limited.load(Ordering::SeqCst), 0);
    assert_eq!(t.rls_over.load(Ordering::SeqCst), 0);
    let dropped = metric(d.http_addr, "quotad_redis_dropped_deltas_total").await;
    assert_eq!(dropped, 0.0);
    // Everything charged, before, during and after the outage, is in
    // Redis exactly once: the round in flight at the kill (applied, its
    // answer lost, or not applied) is sent again as it was, and applied
    // at most once.
    assert_eq!(counted_in_redis(&redis).await, t.allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_or_sleeping_redis_holds_up_no_answer_and_loses_no_charge() {
    let redis = RedisServer::start().await;
    let d = TestDaemon::with_config(&sync_config(&redis.url())).await;
    let load = Load::start(&d.grpc_addr.to_string(), MIXED).await;
    load.more(200, "before the pause").await;

    for fault in [
        format!("CLIENT PAUSE {FAULT_MS} ALL"),
        format!("DEBUG SLEEP {}", FAULT_MS / 1_000),
    ] {
        // The fault's command returns at once (PAUSE) or when it is over
        // (SLEEP); a PING returns when Redis serves again. Callers must be
        // answered meanwhile, many times over.
        let started = Instant::now();
        let redis_back = async {
            redis.command(&fault).await.expect("fault command");
            redis.command("PING").await.expect("PING after the fault");
        };
        tokio::pin!(redis_back);
        tokio::select! {
            () = &mut redis_back => panic!("{fault}: Redis answered before the load got 300 calls"),
            () = load.more(300, "during the fault") => {}
        }
        redis_back.await;
        assert!(
            started.elapsed() >= Duration::from_millis(FAULT_MS * 9 / 10),
            "{fault} did not last"
        );
        load.more(200, "after the fault").await;
    }
    let t = load.stop().await;
    d.wait_synced().await;
    assert_all_answered("pause", &t);
    let dropped = metric(d.http_addr, "quotad_redis_dropped_deltas_total").await;
    assert_eq!(dropped, 0.0);
    // A paused Redis drops the commands of a connection closed meanwhile;
    // a sleeping one runs them before it sees the close: the round in
    // flight at the sleep is applied, its answer lost, and sent again,
    // which Redis recognises: every charge counted exactly once.
    assert_eq!(counted_in_redis(&redis).await, t.allowed());
}

/// A fault, begun by [`Fault::begin`]; [`Fault::end`] returns once Redis
/// serves again.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Pause,
    Sleep,
    Kill,
}

impl Fault {
    async fn begin(self, redis: &mut RedisServer) {
        match self {
            Fault::Pause => {
                let ok = redis.command(&format!("CLIENT PAUSE {FAULT_MS} ALL")).await;
                assert_eq!(ok.expect("CLIENT PAUSE"), "+OK");
            }
            // Answers when the sleep is over: sent and left running.
            Fault::Sleep => {
                let port = redis.port;
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .expect("connect to redis");
                    let cmd = format!("DEBUG SLEEP {}\r\n", FAULT_MS / 1_000);
                    s.write_all(cmd.as_bytes()).await.expect("DEBUG SLEEP");
                    // Held open until Redis answers (or the test ends).
                    let mut buf = [0u8; 64];
                    let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                });
            }
            Fault::Kill => redis.kill(),
        }
    }

    async fn end(self, redis: &mut RedisServer) {
        match self {
            // PING waits out a pause or a sleep.
            Fault::Pause | Fault::Sleep => {
                let pong = tokio::time::timeout(Duration::from_secs(10), redis.command("PING"));
                assert_eq!(pong.await.expect("Redis back").expect("PING"), "+PONG");
            }
            Fault::Kill => redis.restart().await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_fail_modes_hold_under_load_while_redis_is_paused_asleep_or_dead() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut redis = durable_redis(&dir).await;
    // One node per fail mode, each under its own key prefix so Redis's
    // counts can be told apart.
    let mut nodes = Vec::new();
    for mode in ["local", "allow", "deny"] {
        let d = TestDaemon::with_config(&strict_config(&redis.url(), mode)).await;
        let load = Load::start(
            &d.grpc_addr.to_string(),
            &[Call::Check, Call::Batch, Call::Rls],
        )
        .await;
        nodes.push((mode, d, load));
    }
    for (_, _, load) in &nodes {
        load.more(100, "before the faults").await;
    }
    for fault in [Fault::Pause, Fault::Sleep, Fault::Kill] {
        fault.begin(&mut redis).await;
        // Every node answers, many times over, while Redis does not.
        for (mode, _, load) in &nodes {
            load.more(100, &format!("{mode} during {fault:?}")).await;
        }
        fault.end(&mut redis).await;
        for (mode, _, load) in &nodes {
            load.more(100, &format!("{mode} after {fault:?}")).await;
        }
    }
    let mut stopped = Vec::new();
    for (mode, d, load) in nodes {
        stopped.push((mode, d, load.stop().await));
    }
    for (mode, d, t) in stopped {
        d.wait_synced().await;
        assert_all_answered(mode, &t);
        let failed = metric(
            d.http_addr,
            &format!("quotad_strict_fail_mode_total{{mode=\"{mode}\"}}"),
        )
        .await as u64;
        let refused = t.unavailable.load(Ordering::SeqCst) + t.rls_over.load(Ordering::SeqCst);
        assert_eq!(t.limited.load(Ordering::SeqCst), 0, "{mode}");
        assert!(
            failed > 0,
            "{mode}: the fail mode answered during the faults"
        );
        match mode {
            // Fail-closed: every answer without Redis, and only those,
            // refused as unavailable.
            "deny" => assert_eq!(refused, failed, "{mode}"),
            // Fail-open and fail-local: nothing refused.
            _ => assert_eq!(refused, 0, "{mode}"),
        }
        // In Redis: what Redis charged, plus what `local` charged here
        // and flushed; `allow` lets through without charging anyone.
        let charged = match mode {
            "allow" => t.allowed() - failed,
            _ => t.allowed(),
        };
        let counted = counted_under(&redis, &format!("{mode}:*")).await;
        // Exactly: a strict check Redis answered too late is given back
        // through the journal; one whose answer was lost (the kill) is
        // given up in Redis (refunded if Redis charged it); the flushes
        // are applied once.
        assert_eq!(
            counted, charged,
            "{mode}: Redis counts {counted}, {charged} were charged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_and_script_flush_under_load_are_recovered_from_without_a_failed_round() {
    let redis = RedisServer::start().await;
    let d = TestDaemon::with_config(&sync_config(&redis.url())).await;
    // Fail-closed, so a strict check Redis did not answer would show; a
    // deadline a loaded machine meets (three quarters of ANSWER_BOUND:
    // every check here must be answered by Redis, the ones that meet
    // NOSCRIPT after SCRIPT FLUSH in two round trips), so only an error
    // shows.
    let s = TestDaemon::with_config(&strict_within(&redis.url(), "deny", "750ms")).await;
    let load = Load::start(&d.grpc_addr.to_string(), MIXED).await;
    let strict = Load::start(&s.grpc_addr.to_string(), &[Call::Check, Call::Batch]).await;
    let rounds = Rounds::follow(d.sync.as_ref().expect("sync task"), &load.tally);
    load.more(200, "before SCRIPT FLUSH").await;
    strict.more(100, "before SCRIPT FLUSH").await;

    // Every cached script gone: the next EVALSHA of each task meets
    // NOSCRIPT, and the same round trip's retry with the text caches it.
    assert_eq!(
        redis.command("SCRIPT FLUSH").await.expect("SCRIPT FLUSH"),
        "+OK"
    );
    load.more(200, "after SCRIPT FLUSH").await;
    strict.more(100, "after SCRIPT FLUSH").await;

    // Everything gone: counters start again from what is sent next.
    let before = load.tally.allowed();
    let resent = rounds.in_flight(&load.tally);
    assert_eq!(redis.command("FLUSHALL").await.expect("FLUSHALL"), "+OK");
    // Calls sent from here on are charged after FLUSHALL ran. (Answers
    // that arrive from here on are not enough: a call in flight at the
    // reply may have been charged, and even flushed, before FLUSHALL.)
    let sent_at_reply = load.tally.sent();
    load.more(200, "after FLUSHALL").await;
    strict.more(100, "after FLUSHALL").await;
    let t = load.stop().await;
    let ts = strict.stop().await;
    d.wait_synced().await;
    s.wait_synced().await;

    assert_all_answered("sync", &t);
    assert_all_answered("strict", &ts);
    // Redis answered every strict check (none fell to the fail mode).
    assert_eq!(ts.unavailable.load(Ordering::SeqCst), 0);
    assert_eq!(ts.limited.load(Ordering::SeqCst), 0);
    for node in [&d, &s] {
        let failed = metric(
            node.http_addr,
            "quotad_redis_flushes_total{result=\"failure\"}",
        );
        assert_eq!(failed.await, 0.0, "no flush round failed");
        let dropped = metric(node.http_addr, "quotad_redis_dropped_deltas_total");
        assert_eq!(dropped.await, 0.0);
    }
    // In Redis: every charge flushed since FLUSHALL, so at least those
    // of calls sent after it answered (every check here is allowed), and
    // at most those made since it was sent plus what was pending then.
    let counted = counted_under(&redis, "quotad:*").await;
    let least = t.allowed().saturating_sub(sent_at_reply);
    let most = t.allowed() - before + resent;
    assert!(
        (least..=most).contains(&counted),
        "Redis counts {counted}; between {least} and {most} were flushed since FLUSHALL"
    );
    // The strict counter starts again too: Redis's count is what was
    // charged since, and the node says so.
    let strict_counted = counted_under(&redis, "deny:*").await;
    assert!(strict_counted > 0 && strict_counted < ts.allowed());
}

/// A config file's text: the sync plan (its quota given), the admin API,
/// the watcher polling every 20 ms, and Redis sync (flushed hourly, so
/// only the final flush sends) when `redis` is given.
fn watched_config(redis: Option<&str>, quota: u64) -> String {
    let redis = redis.map_or(String::new(), |url| {
        format!("redis:\n  url: {url}\n  sync_interval: 1h\n")
    });
    format!(
        r#"default_plan: metered
plans:
  metered:
    limits:
      - {{ name: daily, quota: {quota}, per: day }}
envoy:
  domains: [edge]
  key_entry: api_key
store:
  hash_secret: "000102030405060708090a0b0c0d0e0f"
reload: {{ watch: true, poll_interval: 20ms, debounce: 20ms }}
server:
  shutdown_grace: 5s
{redis}{}"#,
        crate::support::admin_section("")
    )
}

/// Replaces `path`'s contents in one step, as an editor or a ConfigMap
/// update does.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it over the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_replaced_by_garbage_under_load_keeps_the_running_one() {
    use crate::support::process::spawn_serve;
    use quotad::api::pb::ReloadRequest;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("quotad.yaml");
    let good = watched_config(None, 1_000_000_000);
    std::fs::write(&path, &good).expect("write the config");
    let shown = path.display().to_string();
    let mut d = spawn_serve(&["--config", &shown]).await;
    let http: std::net::SocketAddr = d.http.parse().expect("HTTP address");
    let admin = d.admin.clone().expect("admin listener");
    let mut ops = quotad::api::pb::quota_admin_client::QuotaAdminClient::with_interceptor(
        connect(&admin).await,
        crate::support::Bearer(Some(crate::support::OPS_TOKEN.into())),
    );
    let mut probe = RateLimiterClient::new(connect(&d.grpc).await);
    let load = Load::start(&d.grpc, MIXED).await;
    load.more(100, "before the garbage").await;

    // Deterministic noise (an LCG): bytes of every value, NULs included.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    let mut invalid_utf8 = good.clone().into_bytes();
    invalid_utf8.splice(20..20, [0xff, 0xfe, 0xc3]);
    // Cut inside the plan's flow mapping.
    let cut = good.find("quota:").expect("the plan's limit");
    let mut huge = vec![b'#'; 32 << 20];
    huge.extend_from_slice(b"\nplans: [\n");
    let garbage: [(&str, Vec<u8>); 5] = [
        ("random bytes", noise),
        ("invalid UTF-8", invalid_utf8),
        ("an empty file", Vec::new()),
        ("truncated YAML", good.as_bytes()[..cut].to_vec()),
        ("a 32 MiB file", huge),
    ];
    let failures = "quotad_config_reloads_total{result=\"failure\"}";
    let mut failed = 0.0;
    for (what, bytes) in &garbage {
        // The watcher sees the new file, refuses it, logs it by name.
        replace(&path, bytes);
        failed += 1.0;
        metric_reaches(http, failures, failed).await;
        let line = d.wait_log("config reload refused").await;
        assert!(
            line.contains("file change") && line.contains(&shown),
            "{what}: {line}"
        );
        // SIGHUP reads it again: refused again.
        d.signal("-HUP");
        let line = d.wait_log("config reload refused").await;
        assert!(
            line.contains("SIGHUP") && line.contains(&shown),
            "{what}: {line}"
        );
        failed += 1.0;
        metric_reaches(http, failures, failed).await;
        // And the admin API's Reload, which says why.
        let e = ops.reload(ReloadRequest {}).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{what}");
        assert!(e.message().contains(&shown), "{what}: {}", e.message());
        d.wait_log("config reload refused").await;
        failed += 1.0;
        metric_reaches(http, failures, failed).await;
        // Still the config from the start, under load all along.
        let r = probe.check(check_req(0)).await.expect("check").into_inner();
        assert_eq!(
            (r.policy.as_str(), r.limit),
            ("metered/daily", 1_000_000_000),
            "{what}"
        );
        assert_eq!(metric(http, "quotad_config_version").await, 1.0, "{what}");
        load.more(50, &format!("after {what}")).await;
    }
    // Fixed: the watcher loads it (so the refusals above were real reads).
    replace(&path, watched_config(None, 2_000_000_000).as_bytes());
    metric_reaches(http, "quotad_config_version", 2.0).await;
    let r = probe.check(check_req(0)).await.expect("check").into_inner();
    assert_eq!(r.limit, 2_000_000_000);
    let t = load.stop().await;
    assert_all_answered("garbage", &t);
    assert_eq!(
        t.limited.load(Ordering::SeqCst) + t.rls_over.load(Ordering::SeqCst),
        0
    );
    d.signal("-TERM");
    assert_eq!(d.exit_code("exits after SIGTERM").await, Some(0));
    let stderr = d.stderr_at_exit().await;
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_full_load_answers_every_call_and_flushes_every_charge() {
    use crate::support::process::spawn_serve;

    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("quotad.yaml");
    // An hour between flushes: only the final flush can carry the charges.
    std::fs::write(&path, watched_config(Some(&redis.url()), 1_000_000_000))
        .expect("write the config");
    let mut d = spawn_serve(&["--config", &path.display().to_string()]).await;
    let load = Load::start(
        &d.grpc,
        &[
            Call::Check,
            Call::Batch,
            Call::Rls,
            Call::Stream,
            Call::Stream,
        ],
    )
    .await;
    load.more(300, "before SIGTERM").await;
    d.signal("-TERM");
    assert_eq!(d.exit_code("drains and exits after SIGTERM").await, Some(0));
    let t = load.stop().await;
    let stderr = d.stderr_at_exit().await;
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut log = Vec::new();
    while let Ok(line) = d.log.try_recv() {
        log.push(line);
    }
    assert!(
        log.iter()
            .any(|l| l.contains("drained: every in-flight call answered")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("redis sync: final flush done")),
        "{log:#?}"
    );
    // Every charge answered is in Redis, sent by the final flush alone,
    // and nothing was charged that was not answered.
    assert_eq!(counted_in_redis(&redis).await, t.allowed());
    // Every call was answered, or refused with UNAVAILABLE (a stream
    // ended by the shutdown, a call after the listener closed), or never
    // taken: one the client started on a connection the server was
    // closing (its graceful GOAWAY, or the close after the drain), which
    // tonic's client reports as INTERNAL or CANCELLED with the transport
    // error as its source. No status came from the server but UNAVAILABLE.
    for e in t.errors() {
        let not_taken = e.contains("source: Some(tonic::transport::Error(Transport");
        assert!(e.contains("code: Unavailable") || not_taken, "{e}");
    }
    assert!(t.slowest() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_redis_never_charges_a_check_the_fail_mode_refused() {
    let mut redis = RedisServer::start().await;
    let d = TestDaemon::with_config(&strict_config(&redis.url(), "deny")).await;
    let load = Load::start(&d.grpc_addr.to_string(), &[Call::Check, Call::Batch]).await;
    load.more(100, "before the sleep").await;
    // Redis takes the checks in flight and runs them only after 2 s, long
    // after their callers were refused: each must be given back.
    Fault::Sleep.begin(&mut redis).await;
    load.more(100, "during the sleep").await;
    Fault::Sleep.end(&mut redis).await;
    load.more(100, "after the sleep").await;
    let t = load.stop().await;
    d.wait_synced().await;
    assert_all_answered("deny", &t);
    assert!(
        t.unavailable.load(Ordering::SeqCst) > 0,
        "refused during the sleep"
    );
    assert!(t.allowed() > 0, "Redis answered before and after");
    // Exactly what was allowed: nothing in flight at a kill, no flush
    // round carrying anything across the sleep.
    assert_eq!(counted_in_redis(&redis).await, t.allowed());
}
