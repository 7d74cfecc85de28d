//! Shared fixtures: a real quotad daemon on 127.0.0.1:0 driven by a manual
//! clock, and gRPC clients for it. No sleeps, no fixed ports; the daemon is
//! shut down and joined by `stop`, or torn down on drop.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use quotad::api::pb::quota_admin_client::QuotaAdminClient;
use quotad::app::{App, AppError};
use quotad::config::Config;
use quotad::control::Control;
use quotad::core::ManualClock;
use quotad::engine::Engine;
use quotad::sync::SyncHandle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub mod process;

/// 2026-11-27T12:00:00Z: a fixed start so calendar windows are predictable.
pub const T0: u64 = 1_795_780_800 * 1_000_000_000;

/// A config with small, easy-to-count limits.
pub const CONFIG: &str = r#"
default_plan: free
plans:
  free:
    limits:
      - { name: per-second, rate: 10, per: second, burst: 20 }
      - { name: daily, quota: 100, per: day }
  gold:
    limits:
      - { name: per-second, rate: 1000, per: second, burst: 2000 }
  tiny:
    limits:
      - { name: per-minute, rate: 2, per: minute, burst: 2 }
  open:
    limits: []
keys:
  "gold-key": { plan: gold }
  "tiny-key": { plan: tiny }
  "open-key": { plan: open }
envoy:
  domains: [edge]
  key_entry: api_key
requests:
  max_key_bytes: 64
  max_cost: 1000
  max_batch: 10
  max_descriptors: 4
  max_entries: 4
server:
  shutdown_grace: 5s
"#;

/// The admin token with both scopes in [`admin_section`].
pub const OPS_TOKEN: &str = "qd_test-ops-0123456789abcdef0123456789abcdef";
/// The admin token with the read scope only.
pub const VIEWER_TOKEN: &str = "qd_test-viewer-0123456789abcdef0123456789ab";

/// An `admin` section admitting [`OPS_TOKEN`] (id `ops`, read and write)
/// and [`VIEWER_TOKEN`] (id `viewer`, read), plus `extra` lines (indented
/// under `admin:`).
pub fn admin_section(extra: &str) -> String {
    use quotad::admin::auth::token_hash;
    format!(
        "admin:\n  addr: 127.0.0.1:0\n  tokens:\n    - {{ id: ops, sha256: \"{}\", scopes: [read, write] }}\n    - {{ id: viewer, sha256: \"{}\", scopes: [read] }}\n{extra}",
        token_hash(OPS_TOKEN),
        token_hash(VIEWER_TOKEN)
    )
}

/// Sends `authorization: Bearer <token>` with every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

/// An admin API client.
pub type AdminClient = QuotaAdminClient<InterceptedService<Channel, Bearer>>;

/// Names a key by the key itself, for the admin API.
pub fn key_ref(key: &str) -> quotad::api::pb::KeyRef {
    quotad::api::pb::KeyRef {
        key: key.into(),
        key_hash: String::new(),
    }
}

/// An override of `key` with `target`, reason `test`, no end.
pub fn override_of(
    key: &str,
    target: quotad::api::pb::set_override_request::Target,
) -> quotad::api::pb::SetOverrideRequest {
    quotad::api::pb::SetOverrideRequest {
        key: key.into(),
        target: Some(target),
        reason: "test".into(),
        ..Default::default()
    }
}

/// A running daemon.
pub struct TestDaemon {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admin listener, when the config has an admin section.
    pub admin_addr: Option<SocketAddr>,
    /// The HTTP check door, when the config has `server.http_check.addr`.
    pub http_check_addr: Option<SocketAddr>,
    pub clock: Arc<ManualClock>,
    pub engine: Arc<Engine>,
    pub control: Arc<Control>,
    /// The Redis sync task's state, when the config has `redis`.
    pub sync: Option<SyncHandle>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), AppError>>>,
}

impl TestDaemon {
    /// Starts a daemon with [`CONFIG`].
    pub async fn start() -> Self {
        Self::with_config(CONFIG).await
    }

    /// Starts a daemon with the given YAML config, on free loopback ports.
    pub async fn with_config(yaml: &str) -> Self {
        Self::with_clock(yaml, Arc::new(ManualClock::new(T0))).await
    }

    /// [`TestDaemon::with_config`] on a given clock (nodes of one cluster
    /// share theirs).
    pub async fn with_clock(yaml: &str, clock: Arc<ManualClock>) -> Self {
        let config = Config::from_yaml(yaml, "test.yaml").expect("test config is valid");
        Self::with(config, clock).await
    }

    /// Starts a daemon with the config file at `path` (so reloads read it
    /// again), on free loopback ports.
    pub async fn from_file(path: &std::path::Path) -> Self {
        let config = Config::load(path).expect("test config file is valid");
        Self::with(config, Arc::new(ManualClock::new(T0))).await
    }

    /// Starts a daemon with `config`, its listeners moved to free ports.
    pub async fn with(mut config: Config, clock: Arc<ManualClock>) -> Self {
        config.boot.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.boot.server.http_addr = "127.0.0.1:0".parse().unwrap();
        if let Some(a) = &mut config.boot.admin {
            a.addr = "127.0.0.1:0".parse().unwrap();
        }
        if config.boot.server.http_check.addr.is_some() {
            config.boot.server.http_check.addr = Some("127.0.0.1:0".parse().unwrap());
        }
        // Reloads read the file again with the same free ports (a port
        // change would only be reported as needing a restart).
        let loader: Option<quotad::control::reload::Loader> = config.source.clone().map(|path| {
            let loader: quotad::control::reload::Loader = Arc::new(move || {
                let mut c = Config::load(&path).map_err(|e| e.to_string())?;
                c.boot.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
                c.boot.server.http_addr = "127.0.0.1:0".parse().unwrap();
                if let Some(a) = &mut c.boot.admin {
                    a.addr = "127.0.0.1:0".parse().unwrap();
                }
                if c.boot.server.http_check.addr.is_some() {
                    c.boot.server.http_check.addr = Some("127.0.0.1:0".parse().unwrap());
                }
                Ok(c)
            });
            loader
        });
        let mut app = App::bind_with_clock(config, clock.clone())
            .await
            .expect("daemon binds");
        if let Some(loader) = loader {
            app = app.with_loader(loader);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let grpc_addr = app.grpc_addr();
        let http_addr = app.http_addr();
        let admin_addr = app.admin_addr();
        let http_check_addr = app.http_check_addr();
        let engine = app.engine();
        let control = app.control();
        let sync = app.sync();
        let handle = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let d = Self {
            grpc_addr,
            http_addr,
            admin_addr,
            http_check_addr,
            clock,
            engine,
            control,
            sync,
            stop: Some(stop),
            handle: Some(handle),
        };
        d.wait_ready().await;
        d
    }

    /// Polls `/readyz` until the daemon says ready (bounded, no sleeps).
    async fn wait_ready(&self) {
        let poll = async {
            while self.http_get("/readyz").await.0 != 200 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), poll)
            .await
            .expect("daemon became ready");
    }

    /// A connected gRPC channel.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to daemon")
    }

    /// An admin client presenting `token` (`None`: no token at all).
    pub async fn admin(&self, token: Option<&str>) -> AdminClient {
        let addr = self.admin_addr.expect("the config has an admin section");
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the admin listener");
        QuotaAdminClient::with_interceptor(channel, Bearer(token.map(str::to_owned)))
    }

    /// An admin client with [`OPS_TOKEN`].
    pub async fn ops(&self) -> AdminClient {
        self.admin(Some(OPS_TOKEN)).await
    }

    /// One native check of `cost` units for `key`, on a new connection.
    pub async fn try_check(
        &self,
        key: &str,
        cost: u64,
    ) -> Result<quotad::api::pb::CheckResponse, tonic::Status> {
        quotad::api::pb::rate_limiter_client::RateLimiterClient::new(self.channel().await)
            .check(quotad::api::pb::CheckRequest {
                key: key.into(),
                cost,
                id: 0,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// [`TestDaemon::try_check`] that must be answered.
    pub async fn check(&self, key: &str, cost: u64) -> quotad::api::pb::CheckResponse {
        self.try_check(key, cost).await.expect("check answered")
    }

    /// Waits (bounded) until every charge so far has been flushed to Redis
    /// and the answers adopted.
    pub async fn wait_synced(&self) {
        let journal = self.engine.store().journal().expect("redis configured");
        let mut sync = self.sync.clone().expect("redis configured");
        let poll = async {
            while !journal.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            // The round that drained the journal may still be sending:
            // one more completed round covers it.
            let next = sync.rounds() + 1;
            sync.wait_rounds(next).await;
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), poll)
            .await
            .expect("pending deltas flushed to redis");
    }

    /// Moves the daemon's clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.clock.advance(ms * 1_000_000);
    }

    /// Signals shutdown and waits for the daemon to finish draining.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().expect("not yet stopped");
        handle.await.expect("daemon task did not panic")
    }

    /// GET on the HTTP listener; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path).await
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// A minimal HTTP/1.1 GET over a raw socket (the health endpoints are
/// plain text; no client crate needed).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// An HTTP/1.1 answer as the tests read it.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a raw socket (`Connection: close`), with
/// `headers` and, when given, a body; returns the whole answer.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    s.write_all(&bytes).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse_answer(&String::from_utf8_lossy(&buf))
}

/// An HTTP/1.1 answer's text as [`HttpAnswer`].
pub fn parse_answer(text: &str) -> HttpAnswer {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A sample's value in a `/metrics` body: `series` is the name with its
/// labels as rendered (`name{label="v"}`), or the bare name.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of `series` in `/metrics` at `http` now.
pub async fn metric(http: SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    sample(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

/// Waits (bounded) until `series` in `/metrics` reads `want`.
pub async fn metric_reaches(http: SocketAddr, series: &str, want: f64) {
    let poll = async {
        while metric(http, series).await != want {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .unwrap_or_else(|_| panic!("{series} never reached {want}"));
}

/// Envoy RLS request builders shared by the RLS tests.
pub mod rls {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        Code, DescriptorStatus, RateLimit,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
    use envoy_types::pb::google::protobuf::{Duration, UInt64Value};

    /// `entries` with a descriptor-level `hits_addend`.
    pub fn with_hits(entries: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
        let mut d = descriptor(entries);
        d.hits_addend = Some(UInt64Value { value: hits });
        d
    }

    /// `entries` with a `limit` override (`unit`: Envoy's enum number, so
    /// an unknown one can be sent too).
    pub fn with_limit(
        entries: &[(&str, &str)],
        requests_per_unit: u32,
        unit: i32,
    ) -> RateLimitDescriptor {
        let mut d = descriptor(entries);
        d.limit = Some(RateLimitOverride {
            requests_per_unit,
            unit,
        });
        d
    }

    /// A `current_limit`.
    pub fn rl(name: &str, requests_per_unit: u32, unit: Unit) -> RateLimit {
        RateLimit {
            name: name.into(),
            requests_per_unit,
            unit: unit as i32,
        }
    }

    /// A counted descriptor's status, reset in whole seconds.
    pub fn st(code: Code, limit: &RateLimit, remaining: u32, reset_secs: i64) -> DescriptorStatus {
        st_ns(code, limit, remaining, reset_secs, 0)
    }

    /// A counted descriptor's status, reset to the nanosecond.
    pub fn st_ns(
        code: Code,
        limit: &RateLimit,
        remaining: u32,
        seconds: i64,
        nanos: i32,
    ) -> DescriptorStatus {
        DescriptorStatus {
            code: code as i32,
            current_limit: Some(limit.clone()),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration { seconds, nanos }),
            ..Default::default()
        }
    }

    /// OK with no limit: no match, or replaced (envoyproxy's `OK, nil, 0`).
    pub fn no_limit() -> DescriptorStatus {
        DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        }
    }

    /// An `unlimited: true` rule's answer: remaining 4294967295, no limit.
    pub fn unlimited() -> DescriptorStatus {
        DescriptorStatus {
            code: Code::Ok as i32,
            limit_remaining: u32::MAX,
            ..Default::default()
        }
    }

    /// The response's headers, in order.
    pub fn headers(r: &RateLimitResponse) -> Vec<(String, String)> {
        r.response_headers_to_add
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    }

    /// Expected headers, in order.
    pub fn hv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A descriptor with the given (key, value) entries.
    pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
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

    /// A request for `domain` with a request-level `hits_addend`.
    pub fn request(
        domain: &str,
        descriptors: Vec<RateLimitDescriptor>,
        hits: u32,
    ) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.into(),
            descriptors,
            hits_addend: hits,
        }
    }
}

/// A loopback port free right now (the OS picks it; the listener is
/// closed again for the server to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A real `redis-server` on a free loopback port, without persistence,
/// killed on drop. `scripts/test.sh` installs redis-server when missing.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    /// Extra `redis-server` arguments, kept across restarts.
    args: Vec<String>,
    /// While killed, and until it answers again: the port, bound but not
    /// listening (see [`hold`]).
    held: Option<socket2::Socket>,
}

/// Keeps `port` from being handed out while its server is down: a socket
/// bound to it, not listening, with `SO_REUSEADDR`. Connections to the
/// port are refused (as to a dead server); every port picker here and in
/// other processes binds port 0, which Linux never answers with a port a
/// socket is bound to; and the server, which binds it with `SO_REUSEADDR`
/// and listens, can take it back while it is held, so it is never free in
/// between. (Without this, a test killing Redis for seconds could see
/// another test's Redis start on its port, and its own restart fail.)
fn hold(port: u16) -> Option<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    s.set_reuse_address(true).ok()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    s.bind(&addr.into()).ok()?;
    Some(s)
}

impl RedisServer {
    /// Starts one and waits (bounded) until it answers PING. Should
    /// another process take the free port first (tests run in parallel),
    /// tries another.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`RedisServer::start`] with extra `redis-server` arguments (kept
    /// for restarts: persistence settings survive them).
    pub async fn start_with(args: &[&str]) -> Self {
        for _ in 0..5 {
            let mut s = Self {
                port: free_port(),
                child: None,
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                held: None,
            };
            s.spawn().await;
            if s.is_ours() {
                return s;
            }
            s.stop();
        }
        panic!("no free port for redis-server after 5 tries");
    }

    /// Whether the server answering on the port is the child started
    /// here.
    fn is_ours(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| serves(c, self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            // DEBUG SLEEP, for the fault tests (off by default since 7.0).
            .args(["--enable-debug-command", "yes"])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        self.child = Some(child);
        // Until it answers, or exits (its port taken: the caller sees it
        // is not ours).
        let poll = async {
            while self.ping().await.is_err() {
                if let Some(c) = self.child.as_mut()
                    && !matches!(c.try_wait(), Ok(None))
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), poll)
            .await
            .expect("redis-server answers PING");
        self.held = None;
    }

    /// Sends one inline command and returns the first reply line.
    pub async fn command(&self, cmd: &str) -> std::io::Result<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).await?;
        let mut r = tokio::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await?;
        if line.starts_with('$') && !line.starts_with("$-1") {
            line.clear();
            r.read_line(&mut line).await?;
        }
        Ok(line.trim_end().to_owned())
    }

    async fn ping(&self) -> std::io::Result<()> {
        let reply = self.command("PING").await?;
        if reply == "+PONG" {
            Ok(())
        } else {
            Err(std::io::Error::other(reply))
        }
    }

    /// Kills the server (SIGKILL): an outage, data gone. Its port stays
    /// held for the restart.
    pub fn kill(&mut self) {
        self.stop();
        if self.held.is_none() {
            self.held = hold(self.port);
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
        assert!(
            self.is_ours(),
            "port {} was taken while this redis-server was down",
            self.port
        );
    }

    /// Starts it again on the same port, empty, with `args` for the extra
    /// `redis-server` arguments it had (kept for later restarts).
    pub async fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        self.restart().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `child` (a redis-server) runs and is what answers on `port`
/// (its process id, from `INFO server`), not another process that took
/// the port first.
fn serves(child: &mut std::process::Child, port: u16) -> bool {
    if !matches!(child.try_wait(), Ok(None)) {
        return false;
    }
    let pid = child.id().to_string();
    std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "server"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == format!("process_id:{pid}"))
        })
        .unwrap_or(false)
}

/// Waits (bounded, 10 s) until something answers PING on `port`, or
/// `child` exits (its port taken).
async fn answers_or_exits(child: &mut std::process::Child, port: u16) {
    let probe = RedisServer {
        port,
        child: None,
        args: Vec::new(),
        held: None,
    };
    let poll = async {
        while probe.ping().await.is_err() && matches!(child.try_wait(), Ok(None)) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("redis-server answers PING or exits");
}

/// A real 3-master Redis Cluster on free loopback ports (each node's
/// cluster bus at port + 10000), made with `redis-cli --cluster create`;
/// killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts 3 nodes and waits (bounded) until the cluster is ok. Should
    /// another process take a port first, starts again on others.
    pub async fn start() -> Self {
        for _ in 0..5 {
            if let Some(cluster) = Self::nodes().await {
                return cluster.create().await;
            }
        }
        panic!("no free ports for a Redis Cluster after 5 tries");
    }

    /// Three cluster-enabled nodes on free ports, each answering as
    /// itself; `None` if a port was taken.
    async fn nodes() -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = free_port();
            let bus_free =
                port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
            if bus_free && !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut children = Vec::new();
        for port in &ports {
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(&conf)
                .arg("--dir")
                .arg(dir.path())
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("redis-server runs (scripts/test.sh installs it)");
            children.push(child);
        }
        let mut cluster = Self {
            ports,
            children,
            _dir: dir,
        };
        let mut ours = true;
        for (child, &port) in cluster.children.iter_mut().zip(&cluster.ports) {
            answers_or_exits(child, port).await;
            ours &= serves(child, port);
        }
        // Dropped (killed) when not.
        ours.then_some(cluster)
    }

    /// Makes the nodes one cluster and waits (bounded) until it is ok.
    async fn create(self) -> Self {
        let cluster = self;
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("redis-cli runs (it comes with redis-server)");
        assert!(created.success(), "redis-cli --cluster create failed");
        for port in &cluster.ports {
            let node = RedisServer {
                port: *port,
                child: None,
                args: Vec::new(),
                held: None,
            };
            let poll = async {
                loop {
                    let info = node.command("CLUSTER INFO").await.unwrap_or_default();
                    if info.contains("cluster_state:ok") {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(20), poll)
                .await
                .expect("cluster state ok");
        }
        cluster
    }

    /// A seed node's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A throwaway certificate authority (rcgen), for TLS tests.
pub struct TestCa {
    /// The CA certificate, PEM: what clients (or servers, for mTLS) trust.
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a certificate whose issuer name equals its
        // subject name reads as self-signed to OpenSSL.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate with common name `cn` for the DNS names `dns`,
    /// signed by this CA: (certificate PEM, key PEM).
    pub fn leaf(&self, cn: &str, dns: &[&str]) -> (String, String) {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = dns.iter().map(|d| (*d).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// A real `redis-server` speaking only TLS on a free port, with a fresh
/// CA and a server certificate for `localhost` made by rcgen; killed on
/// drop.
pub struct RedisTls {
    pub port: u16,
    /// The CA certificate file clients must trust.
    pub ca_file: std::path::PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl RedisTls {
    /// Starts one and waits (bounded) until `redis-cli --tls` gets PONG
    /// (only a server with this CA's certificate can answer it). Should
    /// another process take the free port first, tries another.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("quotad test CA");
        let (cert, key) = ca.leaf("localhost", &["localhost"]);
        let ca_file = write_file(dir.path(), "ca.pem", &ca.cert_pem);
        let cert_file = write_file(dir.path(), "server.pem", &cert);
        let key_file = write_file(dir.path(), "server.key", &key);
        for _ in 0..5 {
            let port = free_port();
            let mut child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .arg("--tls-cert-file")
                .arg(&cert_file)
                .arg("--tls-key-file")
                .arg(&key_file)
                .arg("--tls-ca-cert-file")
                .arg(&ca_file)
                .args([
                    "--tls-auth-clients",
                    "no",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("redis-server runs (scripts/test.sh installs it)");
            let ping = || {
                std::process::Command::new("redis-cli")
                    .args(["--tls", "-h", "localhost", "-p", &port.to_string()])
                    .arg("--cacert")
                    .arg(&ca_file)
                    .arg("PING")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                    .unwrap_or(false)
            };
            // Until it answers, or exits (its port taken).
            let mut running = true;
            let poll = async {
                while !ping() {
                    running = matches!(child.try_wait(), Ok(None));
                    if !running {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), poll)
                .await
                .expect("TLS redis-server answers PING or exits");
            if running {
                return Self {
                    port,
                    ca_file,
                    child,
                    _dir: dir,
                };
            }
            let _ = child.wait();
        }
        panic!("no free port for a TLS redis-server after 5 tries");
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis master with one Sentinel watching it as `mymaster`, on free
/// loopback ports; killed on drop.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts both and waits (bounded) until the Sentinel knows the
    /// master. Should another process take the Sentinel's free port
    /// first, tries another.
    pub async fn start() -> Self {
        let master = RedisServer::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            // Sentinel rewrites its config file, so it lives in the temp dir.
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\n",
                    master.port
                ),
            )
            .expect("write sentinel.conf");
            let mut child = std::process::Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("redis-server --sentinel runs");
            answers_or_exits(&mut child, port).await;
            // Another test's Sentinel would know a `mymaster` too: this
            // one must be the child started here.
            if !serves(&mut child, port) {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            let sentinel = RedisServer {
                port,
                child: None,
                args: Vec::new(),
                held: None,
            };
            let poll = async {
                loop {
                    let reply = sentinel
                        .command("SENTINEL get-master-addr-by-name mymaster")
                        .await
                        .unwrap_or_default();
                    if reply == "*2" {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), poll)
                .await
                .expect("sentinel knows the master");
            return Self {
                master,
                port,
                child,
                _dir: dir,
            };
        }
        panic!("no free port for a Sentinel after 5 tries");
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An external tool the test script provides: `$env` when set (then it
/// must name a file: the script set it, so it is required), else `name`
/// on PATH, else `None` (a plain `cargo test` without it).
pub fn tool(env: &str, name: &str) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = std::path::PathBuf::from(p);
        assert!(p.is_file(), "{env}={} is not a file", p.display());
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What a finished child process printed: its stdout, then its stderr.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `EVAL` of one of the daemon's own scripts (`src/sync/NAME`) on
/// `redis` with `keys` and `args`, as redis-cli prints the reply.
pub fn eval_script(redis: &RedisServer, name: &str, keys: &[&str], args: &[&str]) -> String {
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/sync")
            .join(name),
    )
    .expect("the script");
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "EVAL", &script])
        .arg(keys.len().to_string())
        .args(keys)
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
