//! The daemon's config file: one YAML document holding the limits
//! (`default_plan`, `plans`, `keys`, see [`crate::limits::file`]) and the
//! `server`, `requests`, `store` and `envoy` sections, `rls_files` (the
//! envoyproxy/ratelimit limits files, read by [`crate::limits::rls_file`])
//! and `response_headers`, all optional.
//!
//! This module owns reading the file (through [`crate::diag::files`], the one reader
//! of every file quotad is pointed at), the section settings and their
//! defaults, the embedded demo config ([`EMBEDDED_DEFAULT`]) and the error
//! messages. Every message is one line naming the file, the line and column,
//! the field path and the reason:
//!
//! ```text
//! quotad.yaml:7:20: plans.free.limits[1].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)
//! ```
//!
//! Values are checked where they are read, so the parser knows their
//! position; checks that relate several values report a field path, and the
//! document is then read a second time into a tree of positions to find
//! that path's line. Static API keys never appear in messages or `Debug`
//! output; their path segment prints as `<key>`.

pub mod admin;
pub mod metrics;
pub mod redis_url;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::core::clock::NANOS_PER_SEC;
use crate::core::window::Window;
use crate::diag::files::{read_file, read_text};
use crate::diag::{Issue, Seg, one_of, quoted};
use crate::limits::file::{self, KeysRaw, LimitsSpec, PlansRaw, Positive};
use crate::limits::rls::{Algorithm, RlsDomains, check_domain};
use crate::limits::rls_file::{self, AlgorithmRaw, RlsOptions};
use crate::limits::{Limit, LimitKind, Plan, Quota, Rate};
use crate::yaml::{locate, parse};
use admin::{AdminRaw, ReloadRaw, TlsRaw};
pub use admin::{AdminSettings, AdminToken, ReloadSettings, Scope, TlsFiles};
use metrics::MetricsRaw;
pub use metrics::MetricsSettings;

/// The config `quotad serve` uses without `--config`: a documented demo with
/// plans `free` and `gold`.
pub const EMBEDDED_DEFAULT: &str = r#"# quotad configuration (the embedded demo; `quotad serve` uses it when no
# --config is given). Every section is optional; check a file with
# `quotad check-config FILE`.

# Plans are named sets of limits. A request passes only if every limit of
# its key's plan passes. A plan with an empty (or no) `limits` list is
# unlimited. Plan and limit names use letters, digits, '_', '.' and '-'.
plans:
  free:
    limits:
      # A rate limit is a token bucket: `rate` tokens per `per` (second,
      # minute, hour or day), holding at most `burst` tokens (default: rate).
      - { name: per-second, rate: 10, per: second, burst: 20 }
      # A quota allows `quota` units per calendar window in UTC (second,
      # minute, hour, day, week from Monday, or month) and resets when the
      # window ends. Quotas take no burst.
      - { name: daily, quota: 10000, per: day }
  gold:
    limits:
      - { name: per-second, rate: 1000, per: second, burst: 2000 }
      - { name: monthly, quota: 10000000, per: month }

# The plan of every API key that has no static assignment below.
default_plan: free

# Static assignments of API keys to plans. Keys are hashed on load and
# never logged.
keys:
  "demo-gold-key": { plan: gold }

server:
  grpc_addr: 127.0.0.1:8081    # gRPC: the native check API and Envoy RLS v3
  http_addr: 127.0.0.1:9090    # HTTP: health and readiness
  shutdown_grace: 10s          # how long in-flight calls may finish on shutdown (ms, s, m or h)
  # drain_delay: 5s            # on shutdown, report not-ready this long before refusing connections
  max_connections: 1024        # open gRPC connections at most; more are closed at once (and counted)
  max_concurrent_streams: 100  # calls in flight on one connection (HTTP/2); more are refused
  max_message_bytes: 1048576   # largest request message; bigger ones get OUT_OF_RANGE unread
  max_buffered_bytes: 67108864 # request bytes all connections may buffer (messages on their way, headers)
  max_buffered_bytes_per_connection: 2097152  # ... and one connection; past them: RESOURCE_EXHAUSTED
  max_unsent_bytes_per_connection: 131072     # answers a peer has not read; past them its answers wait
  receive_window_bytes: 131072 # HTTP/2 window: what a peer may send ahead of the server reading it
  request_body_timeout: 10s    # a request message must arrive whole this soon after its first byte
  idle_timeout: 5m             # a connection that does nothing this long is closed (pings do not count)
  tls_handshake_timeout: 5s    # with tls: how long a handshake may take ...
  max_handshakes_per_peer: 64  # ... and how many one address may have in progress (the oldest is dropped)
  keepalive_interval: 60s      # HTTP/2 ping to each connection this often ...
  keepalive_timeout: 20s       # ... and close it when the ping is not answered this soon
  # max_connection_age: 30m    # close (gracefully) connections older than this, to rebalance

requests:                      # caps on what a caller may send
  max_key_bytes: 256           # longest API key
  max_cost: 1000000000         # largest cost (units) in one check
  max_batch: 1000              # checks in one CheckBatch
  max_descriptors: 64          # descriptors in one Envoy RLS request
  max_entries: 32              # entries in one RLS descriptor
  max_entry_bytes: 4096        # longest RLS descriptor entry key or value

store:
  max_tracked_keys: 1000000    # hard cap on tracked buckets
  sweep_interval: 10s          # how often idle buckets are dropped
  # hash_secret: "00112233445566778899aabbccddeeff"
  #   128-bit secret (32 hex digits) for keyed hashing of API keys; nodes
  #   that should agree on key hashes share it. Random per process when absent.

envoy:
  domains: [quotad]            # RLS domains answered by the plans above; other domains get OK
  key_entry: api_key           # in those domains, the descriptor entry whose value is the API key
  # algorithm: fixed_window    # how rls_files limits count: fixed_window (as envoyproxy/ratelimit) or token_bucket
  # merge_domains: false       # let several rls_files define one domain
  # shadow: false              # global shadow mode: count and report, but always answer OK

# envoyproxy/ratelimit limits files (one domain each) or directories of
# them, relative to this file; `quotad serve --limits FILE` adds more.
# rls_files: [limits/]

# Rate-limit headers in every answer: off, draft03 (RateLimit-Limit,
# -Remaining, -Reset), draft11 (RateLimit-Policy, RateLimit) or both;
# Retry-After is added to over-limit answers unless off.
response_headers: both

# The admin API (quotactl: overrides, usage, reset, reload) runs only with
# an admin section holding at least one token; make one with
# `quotactl token new` and paste the line it prints under tokens.
# admin:
#   addr: 127.0.0.1:8082
#   tokens:
#     - { id: ops, sha256: "<64 hex digits>", scopes: [read, write] }

# /metrics can also name the heaviest keys (by keyed hash), off by default.
# metrics: { heavy_keys: 10, heavy_window: 1m }
"#;

/// Reads a password file (`redis.password_file`,
/// `--redis-password-file`) through [`read_text`]: its text without the
/// trailing line break. The error names the file and never its content.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let text = read_text(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(password.to_owned())
}

/// Longest duration accepted for `shutdown_grace` and `sweep_interval`.
const MAX_DURATION: Duration = Duration::from_secs(86_400);
/// Largest `requests.max_key_bytes`.
const MAX_KEY_BYTES_CAP: u64 = 65_536;

/// The whole validated config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from; `None` for [`EMBEDDED_DEFAULT`] or text given
    /// to [`Config::from_yaml`].
    pub source: Option<PathBuf>,
    /// Listeners and shutdown.
    pub server: ServerSettings,
    /// Caps on requests.
    pub requests: RequestCaps,
    /// The in-memory bucket store.
    pub store: StoreSettings,
    /// Envoy RLS front door.
    pub envoy: EnvoySettings,
    /// Plans, limits, default plan and static keys.
    pub limits: LimitsSpec,
    /// envoyproxy/ratelimit files and directories, as resolved paths.
    pub rls_files: Vec<PathBuf>,
    /// The domains read from `rls_files`.
    pub rls: RlsDomains,
    /// Entries of `rls_files` directories that were not read: not regular
    /// files ([`rls_file::Skipped`]). What was read, not a setting: a
    /// reload compares configs without it.
    pub skipped: Vec<rls_file::Skipped>,
    /// Which rate-limit headers answers carry.
    pub response_headers: HeaderStyle,
    /// Redis sync; `None` runs this node alone, in memory.
    pub redis: Option<RedisSettings>,
    /// The admin API; `None` (no `admin` section) runs without it.
    pub admin: Option<AdminSettings>,
    /// Watching the files for changes.
    pub reload: ReloadSettings,
    /// The opt-in heaviest-keys gauge.
    pub metrics: MetricsSettings,
}

/// The `server` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// gRPC listen address (native API and Envoy RLS).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (health).
    pub http_addr: SocketAddr,
    /// How long in-flight calls may run after shutdown starts.
    pub shutdown_grace: Duration,
    /// How long, on shutdown, to keep serving while reporting not ready, so
    /// load balancers and health-checking clients move away before
    /// connections are refused. 0 (the default) stops accepting at once.
    pub drain_delay: Duration,
    /// TLS for the gRPC (check) listener; plain text when `None`.
    pub tls: Option<TlsFiles>,
    /// Limits on each connection to the gRPC listeners (keys under
    /// `server` in the file).
    pub conns: ConnLimits,
}

/// Limits on the connections to the gRPC listeners (the check and the
/// admin listener): how many, how big a message, how long idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once on each gRPC listener; more are
    /// closed as soon as they are accepted.
    pub max_connections: usize,
    /// Most calls in flight on one connection (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Largest request message, in bytes; a bigger one is refused
    /// (`OUT_OF_RANGE`) from its length prefix, before it is read.
    pub max_message_bytes: usize,
    /// A connection with no call in flight for this long is closed (also
    /// one that never sends a call).
    pub idle_timeout: Duration,
    /// How often each connection is sent an HTTP/2 ping.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Connections older than this are asked to go away (GOAWAY), so
    /// clients spread over new nodes; `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// Request bytes (messages being received, headers of calls not yet
    /// answered) all connections of the process may buffer at once.
    pub max_buffered_bytes: usize,
    /// Of those, what one connection may buffer.
    pub max_buffered_bytes_per_connection: usize,
    /// Answer bytes one connection may have that its peer has not read
    /// yet; past them, its answers wait.
    pub max_unsent_bytes_per_connection: usize,
    /// HTTP/2 receive window of each connection (and each call on it):
    /// what a peer may send ahead of the server reading it.
    pub receive_window_bytes: u32,
    /// How long a request message may take to arrive, from its first
    /// byte (for calls that are not streams, from the call's start).
    pub request_body_timeout: Duration,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in progress from one peer address; past it the
    /// peer's oldest is dropped.
    pub max_handshakes_per_peer: usize,
}

impl ConnLimits {
    /// How TLS handshakes are bounded.
    pub fn handshakes(&self) -> crate::tls::HandshakeRules {
        crate::tls::HandshakeRules {
            timeout: self.tls_handshake_timeout,
            per_peer: self.max_handshakes_per_peer,
        }
    }

    /// The most memory connections can hold by these settings, in bytes,
    /// with `admin_connections` more on the admin listener (see
    /// [`crate::net`]).
    pub fn worst_case_bytes(&self, admin_connections: usize) -> u64 {
        let per_conn = u64::from(self.receive_window_bytes)
            + self.max_unsent_bytes_per_connection as u64
            + crate::net::CONN_OVERHEAD as u64;
        let http = (crate::net::http::HTTP_MAX_CONNECTIONS
            * (crate::net::http::HTTP_MAX_HEADER_BYTES + crate::net::CONN_OVERHEAD / 4))
            as u64;
        let conns = (self.max_connections + admin_connections) as u64;
        self.max_buffered_bytes as u64 + conns * per_conn + http
    }
}

/// Largest `server.max_connections`.
const MAX_CONNECTIONS_CAP: u64 = 1_000_000;
/// Largest `server.max_concurrent_streams`.
const MAX_STREAMS_CAP: u64 = 1_000_000;
/// Smallest and largest `server.max_message_bytes`.
const MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=(64 << 20);
/// Largest `server.max_buffered_bytes` (and per connection).
const BUFFERED_BYTES_CAP: u64 = 64 << 30;
/// Smallest and largest `server.max_unsent_bytes_per_connection`.
const UNSENT_BYTES_RANGE: std::ops::RangeInclusive<u64> = (4 << 10)..=(64 << 20);
/// Smallest and largest `server.receive_window_bytes` (HTTP/2 allows
/// up to 2³¹ − 1).
const RECEIVE_WINDOW_RANGE: std::ops::RangeInclusive<u64> = (16 << 10)..=((1 << 31) - 1);
/// What one call's request may need buffered beyond its message: the
/// message prefix and the largest header list.
const CALL_OVERHEAD_BYTES: u64 = 5 + crate::net::MAX_HEADER_LIST as u64;

/// The connection budgets as written (checked against each other once
/// all are known).
struct ConnBudgetsRaw {
    max_buffered_bytes: Option<u64>,
    per_connection: Option<u64>,
    unsent: Option<u64>,
    window: Option<u64>,
    per_peer: Option<u64>,
}

impl ConnBudgetsRaw {
    /// Sets the budgets of `c` (whose `max_message_bytes` is final): one
    /// largest message must fit a connection's budget, and a
    /// connection's the process's. Defaults grow to fit; values written
    /// that do not fit are errors naming the field.
    fn apply(self, c: &mut ConnLimits) -> Result<(), Issue> {
        let need = c.max_message_bytes as u64 + CALL_OVERHEAD_BYTES;
        let at = |field: &str| vec![Seg::key("server"), Seg::key(field)];
        let per_connection = match self.per_connection {
            Some(n) if n < need => {
                return Err(Issue::new(
                    at("max_buffered_bytes_per_connection"),
                    format!(
                        "must be at least max_message_bytes + {CALL_OVERHEAD_BYTES} = {need}, so one largest message fits (got {n})"
                    ),
                ));
            }
            Some(n) => n,
            None => (c.max_buffered_bytes_per_connection as u64).max(need),
        };
        let total = match self.max_buffered_bytes {
            Some(n) if n < per_connection => {
                return Err(Issue::new(
                    at("max_buffered_bytes"),
                    format!(
                        "must be at least max_buffered_bytes_per_connection ({per_connection}) (got {n})"
                    ),
                ));
            }
            Some(n) => n,
            None => (c.max_buffered_bytes as u64).max(per_connection),
        };
        c.max_buffered_bytes_per_connection = usize::try_from(per_connection).unwrap_or(usize::MAX);
        c.max_buffered_bytes = usize::try_from(total).unwrap_or(usize::MAX);
        if let Some(n) = self.unsent {
            c.max_unsent_bytes_per_connection = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.window {
            c.receive_window_bytes = u32::try_from(n).unwrap_or(u32::MAX >> 1);
        }
        if let Some(n) = self.per_peer {
            c.max_handshakes_per_peer = usize::try_from(n).unwrap_or(usize::MAX);
        }
        Ok(())
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8081)),
            http_addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090)),
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            tls: None,
            conns: ConnLimits::default(),
        }
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_concurrent_streams: 100,
            max_message_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: None,
            max_buffered_bytes: 64 << 20,
            max_buffered_bytes_per_connection: 2 << 20,
            max_unsent_bytes_per_connection: 128 << 10,
            receive_window_bytes: 128 << 10,
            request_body_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(5),
            max_handshakes_per_peer: 64,
        }
    }
}

/// The `requests` section: caps on what a caller may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCaps {
    /// Longest API key, in bytes.
    pub max_key_bytes: usize,
    /// Largest cost (units) in one check.
    pub max_cost: u64,
    /// Checks in one `CheckBatch`.
    pub max_batch: usize,
    /// Descriptors in one Envoy RLS request.
    pub max_descriptors: usize,
    /// Entries in one RLS descriptor.
    pub max_entries: usize,
    /// Longest RLS descriptor entry key or value, in bytes (the API key
    /// entry is held to `max_key_bytes`).
    pub max_entry_bytes: usize,
}

impl Default for RequestCaps {
    fn default() -> Self {
        Self {
            max_key_bytes: 256,
            max_cost: 1_000_000_000,
            max_batch: 1000,
            max_descriptors: 64,
            max_entries: 32,
            max_entry_bytes: 4096,
        }
    }
}

/// The `redis` section: keep this node in sync with others through Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path/to.sock`.
    /// `Debug` hides any password in it.
    pub url: String,
    /// A password read from `password_file` (trailing newline removed);
    /// overrides one in the URL. `Debug` prints `<redacted>`.
    pub password: Option<String>,
    /// Prefix of every Redis key quotad writes.
    pub key_prefix: String,
    /// `url` is a seed node of a Redis Cluster.
    pub cluster: bool,
    /// `url` is a Redis Sentinel; this is the master's name to ask it for.
    pub sentinel_master: Option<String>,
    /// For `rediss://`: the CA certificate(s) (PEM) to trust instead of
    /// the system's roots.
    pub tls_ca: Option<Vec<u8>>,
    /// How often pending deltas are flushed.
    pub sync_interval: Duration,
    /// What a strict check does when Redis does not answer in time.
    pub on_redis_error: OnRedisError,
    /// How long a strict check waits for Redis.
    pub strict_deadline: Duration,
}

/// `redis.on_redis_error`: what a strict-mode check answers when Redis
/// fails or misses `strict_deadline`. (`sync` mode always decides
/// locally.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnRedisError {
    /// Decide on this node's view (the default).
    #[default]
    Local,
    /// Allow (fail open).
    Allow,
    /// Deny (fail closed).
    Deny,
}

impl OnRedisError {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Local => "local",
            OnRedisError::Allow => "allow",
            OnRedisError::Deny => "deny",
        }
    }
}

impl RedisSettings {
    /// The URL with every credential replaced by `<redacted>`, for logs
    /// and messages (see [`redis_url`]: parsed as its author meant it, so
    /// a password with reserved characters or a mistyped scheme is
    /// hidden too).
    pub fn redacted_url(&self) -> String {
        redis_url::redact_url(&self.url)
    }

    /// What takes this URL's and the password file's secrets out of text
    /// that may quote them, such as the `redis` crate's errors.
    pub fn scrub(&self) -> redis_url::Scrub {
        redis_url::Scrub::new(&self.url, self.password.as_deref())
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field(
                "password",
                &format_args!(
                    "{}",
                    if self.password.is_some() {
                        "<redacted>"
                    } else {
                        "None"
                    }
                ),
            )
            .field("key_prefix", &self.key_prefix)
            .field("cluster", &self.cluster)
            .field("sentinel_master", &self.sentinel_master)
            .field("tls_ca", &self.tls_ca.as_ref().map(|_| "<pem>"))
            .field("sync_interval", &self.sync_interval)
            .field("on_redis_error", &self.on_redis_error)
            .field("strict_deadline", &self.strict_deadline)
            .finish()
    }
}

impl RedisSettings {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            key_prefix: "quotad:".to_owned(),
            cluster: false,
            sentinel_master: None,
            tls_ca: None,
            sync_interval: Duration::from_millis(50),
            on_redis_error: OnRedisError::Local,
            strict_deadline: Duration::from_millis(20),
        }
    }

    /// Checks the URL's scheme and that the `redis` crate reads it (the
    /// connection itself is the sync task's). Messages show the URL
    /// redacted and never the crate's own words about it.
    pub fn check_url(url: &str) -> Result<(), String> {
        use redis::IntoConnectionInfo;
        let scheme = url.split_once("://").map(|(s, _)| s);
        let invalid = |why: &str| {
            format!(
                "invalid Redis URL {}{why} (expected redis://[user:password@]host:port[/db], rediss:// for TLS, or unix:///path; percent-encode reserved characters in a password, such as %2F for /, or use redis.password_file)",
                quoted(&redis_url::redact_url(url))
            )
        };
        if !matches!(scheme, Some("redis" | "rediss" | "unix" | "redis+unix")) {
            return Err(invalid(""));
        }
        match url.into_connection_info() {
            Ok(_) => Ok(()),
            Err(e) => Err(invalid(&format!(
                ": {}",
                Self::new(url).scrub().text(&e.to_string())
            ))),
        }
    }
}

/// The `store` section.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Hard cap on tracked buckets (cells).
    pub max_tracked_keys: usize,
    /// How often idle buckets are dropped.
    pub sweep_interval: Duration,
    /// Secret for keyed hashing of API keys; random per process when `None`.
    /// `Debug` prints `<redacted>`.
    pub hash_secret: Option<[u8; 16]>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            max_tracked_keys: 1_000_000,
            sweep_interval: Duration::from_secs(10),
            hash_secret: None,
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("max_tracked_keys", &self.max_tracked_keys)
            .field("sweep_interval", &self.sweep_interval)
            .field(
                "hash_secret",
                &format_args!(
                    "{}",
                    if self.hash_secret.is_some() {
                        "<redacted>"
                    } else {
                        "None"
                    }
                ),
            )
            .finish()
    }
}

/// The `envoy` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoySettings {
    /// RLS domains this config answers; requests for other domains get OK.
    pub domains: Vec<String>,
    /// The descriptor entry whose value is the API key.
    pub key_entry: String,
    /// How limits from `rls_files` count unless a file says otherwise.
    pub algorithm: Algorithm,
    /// Whether several `rls_files` may define one domain.
    pub merge_domains: bool,
    /// Global shadow mode: every RLS answer is OK; descriptors still
    /// report OVER_LIMIT.
    pub shadow: bool,
}

impl Default for EnvoySettings {
    fn default() -> Self {
        Self {
            domains: vec!["quotad".to_owned()],
            key_entry: "api_key".to_owned(),
            algorithm: Algorithm::FixedWindow,
            merge_domains: false,
            shadow: false,
        }
    }
}

/// Which rate-limit headers answers carry (`response_headers`); rendered
/// by [`crate::api::headers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeaderStyle {
    /// None at all (envoyproxy/ratelimit's default).
    Off,
    /// `RateLimit-Limit`, `-Remaining`, `-Reset` and `Retry-After`.
    Draft03,
    /// `RateLimit-Policy`, `RateLimit` and `Retry-After`.
    Draft11,
    /// Both sets (one `Retry-After`).
    #[default]
    Both,
}

impl HeaderStyle {
    /// Every style, in the order messages list them.
    pub const ALL: [HeaderStyle; 4] = [
        HeaderStyle::Off,
        HeaderStyle::Draft03,
        HeaderStyle::Draft11,
        HeaderStyle::Both,
    ];

    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderStyle::Off => "off",
            HeaderStyle::Draft03 => "draft03",
            HeaderStyle::Draft11 => "draft11",
            HeaderStyle::Both => "both",
        }
    }

    /// Whether the draft-03 fields are sent.
    pub fn draft03(self) -> bool {
        matches!(self, HeaderStyle::Draft03 | HeaderStyle::Both)
    }

    /// Whether the draft-11 fields are sent.
    pub fn draft11(self) -> bool {
        matches!(self, HeaderStyle::Draft11 | HeaderStyle::Both)
    }
}

// ---------------------------------------------------------------------------
// Errors.

pub use crate::yaml::{ConfigError, Diagnostic};

// ---------------------------------------------------------------------------
// Loading.

impl Config {
    /// Checks what flags may have changed after loading: the listeners
    /// must differ (port 0, "any free port", may repeat), and the admin
    /// listener may not serve bearer tokens in clear beyond loopback.
    pub fn check_listeners(&self) -> Result<(), String> {
        let s = &self.server;
        let mut listeners = vec![
            ("server.grpc_addr", s.grpc_addr),
            ("server.http_addr", s.http_addr),
        ];
        if let Some(a) = &self.admin {
            listeners.push(("admin.addr", a.addr));
            if let Some(why) = a.plaintext_problem() {
                return Err(format!("admin.addr: {why}"));
            }
        }
        for (i, (name, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i]
                .iter()
                .find(|(_, a)| a == addr && addr.port() != 0)
            {
                return Err(format!("{other} and {name} are both {addr}"));
            }
        }
        Ok(())
    }

    /// `admin.max_overrides`, or its default without an admin section.
    pub fn max_overrides(&self) -> usize {
        self.admin
            .as_ref()
            .map_or(admin::DEFAULT_MAX_OVERRIDES, |a| a.max_overrides)
    }

    /// Every file the config in effect was read from (the config file,
    /// the limits files and directories, TLS certificates and keys): what
    /// a reload watches.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.source.iter().cloned().collect();
        out.extend(self.rls_files.iter().cloned());
        let tls = self
            .server
            .tls
            .iter()
            .chain(self.admin.iter().flat_map(|a| a.tls.iter()));
        for t in tls {
            out.extend(t.paths().into_iter().map(Path::to_path_buf));
        }
        out
    }

    /// Reads and validates the config file at `path` and the `rls_files`
    /// it names (relative to its directory); messages name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = read_text(path).map_err(|error| ConfigError::Read {
            path: origin.clone(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut config = Self::from_text(&text, &origin, base)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; `origin` names it in messages.
    /// `rls_files` are read relative to the working directory. The
    /// result's `source` is `None`.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_text(text, origin, Path::new(""))
    }

    fn from_text(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: ConfigRaw = parse(text, origin)?;
        let mut config = raw
            .build(base)
            .map_err(|issue| locate(text, origin, issue))?;
        // A listed file or directory that cannot be read is this file's
        // mistake: say so at the entry that names it. (Errors inside a
        // limits file name that file, its line and path.)
        config.load_rls().map_err(|e| {
            let (path, reason) = match &e {
                ConfigError::Read { path, error } => {
                    (path.clone(), format!("cannot read {path}: {error}"))
                }
                ConfigError::Invalid(d) if d.line.is_none() => {
                    (d.origin.clone(), format!("{}: {}", d.origin, d.reason))
                }
                _ => return e,
            };
            match config
                .rls_files
                .iter()
                .position(|f| f.display().to_string() == path)
            {
                Some(i) => locate(
                    text,
                    origin,
                    Issue::new(vec![Seg::key("rls_files"), Seg::Index(i)], reason),
                ),
                None => e,
            }
        })?;
        Ok(config)
    }

    /// Adds envoyproxy/ratelimit files (`quotad serve --limits`) and reads
    /// every `rls_files` entry again.
    pub fn add_rls_files(&mut self, paths: &[PathBuf]) -> Result<(), ConfigError> {
        self.rls_files.extend_from_slice(paths);
        self.load_rls()
    }

    /// Reads `rls_files` into `rls`. A domain the plans already answer
    /// (`envoy.domains`) cannot also come from a file.
    fn load_rls(&mut self) -> Result<(), ConfigError> {
        let opts = RlsOptions {
            algorithm: self.envoy.algorithm,
            merge_domains: self.envoy.merge_domains,
        };
        (self.rls, self.skipped) = rls_file::read(&self.rls_files, opts, &self.envoy.domains)?;
        Ok(())
    }

    /// The embedded demo config ([`EMBEDDED_DEFAULT`]).
    pub fn embedded_default() -> Config {
        Self::from_yaml(EMBEDDED_DEFAULT, "<embedded default>").unwrap_or_else(|_| demo_config())
    }

    /// A multi-line summary for `quotad check-config`: source, plans and
    /// their limits, default plan, number of static keys (never the keys),
    /// and the section settings.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        lines.push(match &self.source {
            Some(p) => format!("source: {}", p.display()),
            None => "source: embedded default".to_owned(),
        });
        let l = &self.limits;
        lines.push(format!(
            "plans: {} (default: {})",
            l.plans.len(),
            l.default_plan
        ));
        for plan in &l.plans {
            let limits = if plan.limits.is_empty() {
                "unlimited".to_owned()
            } else {
                plan.limits
                    .iter()
                    .map(file::describe_limit)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            lines.push(format!("  {}: {limits}", plan.name));
        }
        lines.push(format!("static keys: {}", l.keys.len()));
        let s = &self.server;
        lines.push(format!(
            "server: grpc {}, http {}, shutdown grace {}, drain delay {}, tls {}",
            s.grpc_addr,
            s.http_addr,
            format_duration(s.shutdown_grace),
            format_duration(s.drain_delay),
            describe_tls(s.tls.as_ref())
        ));
        let c = &s.conns;
        lines.push(format!(
            "connections: max {} ({} calls each), max message {} bytes, idle timeout {}, keepalive every {} (timeout {}), max age {}",
            c.max_connections,
            c.max_concurrent_streams,
            c.max_message_bytes,
            format_duration(c.idle_timeout),
            format_duration(c.keepalive_interval),
            format_duration(c.keepalive_timeout),
            c.max_connection_age.map_or("none".to_owned(), format_duration)
        ));
        let admin_connections = self.admin.as_ref().map_or(0, |a| a.max_connections);
        lines.push(format!(
            "buffers: requests {} bytes in all, {} per connection (within {}), unsent answers {} per connection, receive window {}; worst case for connections {} MiB",
            c.max_buffered_bytes,
            c.max_buffered_bytes_per_connection,
            format_duration(c.request_body_timeout),
            c.max_unsent_bytes_per_connection,
            c.receive_window_bytes,
            c.worst_case_bytes(admin_connections) >> 20
        ));
        let r = &self.requests;
        lines.push(format!(
            "requests: max key {} bytes, max cost {}, max batch {}, max descriptors {}, max entries {}, max entry {} bytes",
            r.max_key_bytes,
            r.max_cost,
            r.max_batch,
            r.max_descriptors,
            r.max_entries,
            r.max_entry_bytes
        ));
        self.summary_sections(&mut lines);
        lines.join("\n")
    }

    /// [`Config::summary`]'s lines from the store section on.
    fn summary_sections(&self, lines: &mut Vec<String>) {
        let st = &self.store;
        lines.push(format!(
            "store: max tracked keys {}, sweep every {}, hash secret {}",
            st.max_tracked_keys,
            format_duration(st.sweep_interval),
            if st.hash_secret.is_some() {
                "from config"
            } else {
                "random per process"
            }
        ));
        let e = &self.envoy;
        lines.push(format!(
            "envoy: plan domains {}, key entry {}, algorithm {}, merge domains {}, shadow {}",
            e.domains.join(", "),
            e.key_entry,
            e.algorithm.as_str(),
            if e.merge_domains { "on" } else { "off" },
            if e.shadow { "on" } else { "off" },
        ));
        for d in self.rls.sorted() {
            lines.push(format!(
                "  rls domain {}: {} rules, {}, from {}",
                d.name,
                d.root.rules(),
                d.algorithm.as_str(),
                d.files.join(", ")
            ));
        }
        lines.push(format!(
            "response headers: {}",
            self.response_headers.as_str()
        ));
        lines.push(describe_redis(self.redis.as_ref()));
        lines.push(describe_admin(self.admin.as_ref()));
        lines.push(describe_reload(&self.reload));
        lines.extend(self.skipped.iter().map(|s| format!("skipped: {s}")));
    }
}

/// The summary's `reload:` line.
fn describe_reload(r: &ReloadSettings) -> String {
    if r.watch {
        format!(
            "reload: on SIGHUP, admin Reload, and file changes (polled every {}, debounce {})",
            format_duration(r.poll_interval),
            format_duration(r.debounce)
        )
    } else {
        "reload: on SIGHUP and admin Reload".to_owned()
    }
}

/// The summary's `redis:` line: the URL redacted, never the password.
fn describe_redis(redis: Option<&RedisSettings>) -> String {
    match redis {
        None => "redis: off (this node alone, in memory)".to_owned(),
        Some(r) => format!(
            "redis: {}{}{}, key prefix {:?}, sync every {}, strict deadline {}, on error {}",
            r.redacted_url(),
            if r.password.is_some() {
                " (password from a file)"
            } else {
                ""
            },
            match (&r.sentinel_master, r.cluster) {
                (Some(m), _) => format!(" (sentinel for {m})"),
                (None, true) => " (cluster seed)".to_owned(),
                (None, false) => String::new(),
            },
            r.key_prefix,
            format_duration(r.sync_interval),
            format_duration(r.strict_deadline),
            r.on_redis_error.as_str()
        ),
    }
}

/// The summary's `admin:` line: token ids and scopes, never hashes.
fn describe_admin(admin: Option<&AdminSettings>) -> String {
    let Some(a) = admin else {
        return "admin: off (no admin section)".to_owned();
    };
    let tokens: Vec<String> = a
        .tokens
        .iter()
        .map(|t| {
            let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
            format!("{} ({})", t.id, scopes.join(", "))
        })
        .collect();
    format!(
        "admin: {}, tokens {}, tls {}, audit file {}, max overrides {}",
        a.addr,
        tokens.join("; "),
        describe_tls(a.tls.as_ref()),
        a.audit_file
            .as_ref()
            .map_or("none".to_owned(), |f| f.display().to_string()),
        a.max_overrides
    )
}

fn describe_tls(tls: Option<&TlsFiles>) -> String {
    match tls {
        None => "off".to_owned(),
        Some(t) if t.client_ca_file.is_some() => {
            format!(
                "on, client certificates required (mTLS), cert {}",
                t.cert_file.display()
            )
        }
        Some(t) => format!("on, cert {}", t.cert_file.display()),
    }
}

/// Hand-built equivalent of [`EMBEDDED_DEFAULT`], used only if that text
/// somehow fails to parse (a test keeps the two equal).
fn demo_config() -> Config {
    fn rate(plan: &str, name: &str, rate: u64, burst: u64) -> Option<Limit> {
        let r = Rate::new(
            NonZeroU64::new(rate)?,
            NANOS_PER_SEC,
            NonZeroU64::new(burst)?,
        )
        .ok()?;
        Some(Limit::new(plan, name, LimitKind::Rate(r)))
    }
    fn quota(plan: &str, name: &str, quota: u64, window: Window) -> Option<Limit> {
        let quota = NonZeroU64::new(quota)?;
        Some(Limit::new(
            plan,
            name,
            LimitKind::Quota(Quota { quota, window }),
        ))
    }
    let plans = vec![
        Plan {
            name: "free".to_owned(),
            limits: [
                rate("free", "per-second", 10, 20),
                quota("free", "daily", 10_000, Window::Day),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Plan {
            name: "gold".to_owned(),
            limits: [
                rate("gold", "per-second", 1000, 2000),
                quota("gold", "monthly", 10_000_000, Window::Month),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
    ];
    Config {
        source: None,
        server: ServerSettings::default(),
        requests: RequestCaps::default(),
        store: StoreSettings::default(),
        envoy: EnvoySettings::default(),
        rls_files: Vec::new(),
        rls: RlsDomains::default(),
        skipped: Vec::new(),
        response_headers: HeaderStyle::Both,
        redis: None,
        admin: None,
        reload: ReloadSettings::default(),
        metrics: MetricsSettings::default(),
        limits: LimitsSpec {
            default_plan: "free".to_owned(),
            plans,
            keys: vec![("demo-gold-key".to_owned(), "gold".to_owned())],
        },
    }
}

// ---------------------------------------------------------------------------
// Raw (as written) structure.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a config file (a mapping of sections)"
)]
struct ConfigRaw {
    default_plan: Option<String>,
    plans: Option<PlansRaw>,
    keys: Option<KeysRaw>,
    server: Option<ServerRaw>,
    requests: Option<RequestsRaw>,
    store: Option<StoreRaw>,
    redis: Option<RedisRaw>,
    envoy: Option<EnvoyRaw>,
    rls_files: Option<Vec<NonEmpty>>,
    response_headers: Option<StyleRaw>,
    admin: Option<AdminRaw>,
    reload: Option<ReloadRaw>,
    metrics: Option<MetricsRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the server section (a mapping)")]
struct ServerRaw {
    grpc_addr: Option<Addr>,
    http_addr: Option<Addr>,
    shutdown_grace: Option<Dur>,
    drain_delay: Option<Dur>,
    tls: Option<TlsRaw>,
    max_connections: Option<Positive>,
    max_concurrent_streams: Option<Positive>,
    max_message_bytes: Option<Positive>,
    idle_timeout: Option<Dur>,
    keepalive_interval: Option<Dur>,
    keepalive_timeout: Option<Dur>,
    max_connection_age: Option<Dur>,
    max_buffered_bytes: Option<Positive>,
    max_buffered_bytes_per_connection: Option<Positive>,
    max_unsent_bytes_per_connection: Option<Positive>,
    receive_window_bytes: Option<Positive>,
    request_body_timeout: Option<Dur>,
    tls_handshake_timeout: Option<Dur>,
    max_handshakes_per_peer: Option<Positive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the requests section (a mapping)")]
struct RequestsRaw {
    max_key_bytes: Option<Positive>,
    max_cost: Option<Positive>,
    max_batch: Option<Positive>,
    max_descriptors: Option<Positive>,
    max_entries: Option<Positive>,
    max_entry_bytes: Option<Positive>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the redis section (a mapping)")]
struct RedisRaw {
    url: Option<NonEmpty>,
    password_file: Option<NonEmpty>,
    tls_ca_file: Option<NonEmpty>,
    key_prefix: Option<String>,
    cluster: Option<bool>,
    sentinel_master: Option<NonEmpty>,
    sync_interval: Option<Dur>,
    on_redis_error: Option<OnRedisErrorRaw>,
    strict_deadline: Option<Dur>,
}

struct OnRedisErrorRaw(OnRedisError);

impl<'de> Deserialize<'de> for OnRedisErrorRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let all = [OnRedisError::Local, OnRedisError::Allow, OnRedisError::Deny];
        one_of("value", &s, all, OnRedisError::as_str)
            .map(OnRedisErrorRaw)
            .map_err(de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the store section (a mapping)")]
struct StoreRaw {
    max_tracked_keys: Option<Positive>,
    sweep_interval: Option<Dur>,
    hash_secret: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the envoy section (a mapping)")]
struct EnvoyRaw {
    domains: Option<Domains>,
    key_entry: Option<NonEmpty>,
    algorithm: Option<AlgorithmRaw>,
    merge_domains: Option<bool>,
    shadow: Option<bool>,
}

impl ConfigRaw {
    fn build(self, base: &Path) -> Result<Config, Issue> {
        let mut server = ServerSettings::default();
        if let Some(s) = self.server {
            if let Some(a) = s.grpc_addr {
                server.grpc_addr = a.0;
            }
            if let Some(a) = s.http_addr {
                server.http_addr = a.0;
            }
            if let Some(d) = s.shutdown_grace {
                server.shutdown_grace = d.0;
            }
            if let Some(d) = s.drain_delay {
                server.drain_delay = d.0;
            }
            let at_most =
                |v: Option<Positive>, field: &str, range: std::ops::RangeInclusive<u64>| {
                    v.map(|p| {
                        let n = p.0.get();
                        if range.contains(&n) {
                            Ok(n)
                        } else {
                            Err(Issue::new(
                                vec![Seg::key("server"), Seg::key(field)],
                                format!(
                                    "must be from {} to {} (got {n})",
                                    range.start(),
                                    range.end()
                                ),
                            ))
                        }
                    })
                    .transpose()
                };
            if let Some(n) = at_most(
                s.max_connections,
                "max_connections",
                1..=MAX_CONNECTIONS_CAP,
            )? {
                server.conns.max_connections = n as usize;
            }
            if let Some(n) = at_most(
                s.max_concurrent_streams,
                "max_concurrent_streams",
                1..=MAX_STREAMS_CAP,
            )? {
                server.conns.max_concurrent_streams = n as u32;
            }
            if let Some(n) = at_most(
                s.max_message_bytes,
                "max_message_bytes",
                MESSAGE_BYTES_RANGE,
            )? {
                server.conns.max_message_bytes = n as usize;
            }
            if let Some(d) = s.idle_timeout {
                server.conns.idle_timeout = d.0;
            }
            if let Some(d) = s.keepalive_interval {
                server.conns.keepalive_interval = d.0;
            }
            if let Some(d) = s.keepalive_timeout {
                server.conns.keepalive_timeout = d.0;
            }
            server.conns.max_connection_age = s.max_connection_age.map(|d| d.0);
            let budgets = ConnBudgetsRaw {
                max_buffered_bytes: at_most(
                    s.max_buffered_bytes,
                    "max_buffered_bytes",
                    1..=BUFFERED_BYTES_CAP,
                )?,
                per_connection: at_most(
                    s.max_buffered_bytes_per_connection,
                    "max_buffered_bytes_per_connection",
                    1..=BUFFERED_BYTES_CAP,
                )?,
                unsent: at_most(
                    s.max_unsent_bytes_per_connection,
                    "max_unsent_bytes_per_connection",
                    UNSENT_BYTES_RANGE,
                )?,
                window: at_most(
                    s.receive_window_bytes,
                    "receive_window_bytes",
                    RECEIVE_WINDOW_RANGE,
                )?,
                per_peer: at_most(
                    s.max_handshakes_per_peer,
                    "max_handshakes_per_peer",
                    1..=crate::net::handshake::MAX_HANDSHAKES as u64,
                )?,
            };
            budgets.apply(&mut server.conns)?;
            for (value, field, target) in [
                (
                    s.request_body_timeout,
                    "request_body_timeout",
                    &mut server.conns.request_body_timeout,
                ),
                (
                    s.tls_handshake_timeout,
                    "tls_handshake_timeout",
                    &mut server.conns.tls_handshake_timeout,
                ),
            ] {
                if let Some(d) = value {
                    if d.0.is_zero() {
                        return Err(Issue::new(
                            vec![Seg::key("server"), Seg::key(field)],
                            "must be longer than 0",
                        ));
                    }
                    *target = d.0;
                }
            }
            server.tls = s
                .tls
                .map(|t| t.build(base, &["server", "tls"]))
                .transpose()?;
        }

        let mut requests = RequestCaps::default();
        if let Some(r) = self.requests {
            let size = |v: Option<Positive>, field: &str, default: usize| -> Result<usize, Issue> {
                v.map_or(Ok(default), |p| {
                    usize::try_from(p.0.get()).map_err(|_| {
                        Issue::new(
                            vec![Seg::key("requests"), Seg::key(field)],
                            format!("{} is too large for this platform", p.0),
                        )
                    })
                })
            };
            if let Some(k) = r.max_key_bytes
                && k.0.get() > MAX_KEY_BYTES_CAP
            {
                return Err(Issue::new(
                    vec![Seg::key("requests"), Seg::key("max_key_bytes")],
                    format!("must be at most {MAX_KEY_BYTES_CAP} (got {})", k.0),
                ));
            }
            requests = RequestCaps {
                max_key_bytes: size(r.max_key_bytes, "max_key_bytes", requests.max_key_bytes)?,
                max_cost: r.max_cost.map_or(requests.max_cost, |p| p.0.get()),
                max_batch: size(r.max_batch, "max_batch", requests.max_batch)?,
                max_descriptors: size(
                    r.max_descriptors,
                    "max_descriptors",
                    requests.max_descriptors,
                )?,
                max_entries: size(r.max_entries, "max_entries", requests.max_entries)?,
                max_entry_bytes: size(
                    r.max_entry_bytes,
                    "max_entry_bytes",
                    requests.max_entry_bytes,
                )?,
            };
        }

        let mut store = StoreSettings::default();
        if let Some(s) = self.store {
            if let Some(p) = s.max_tracked_keys {
                store.max_tracked_keys = usize::try_from(p.0.get()).map_err(|_| {
                    Issue::new(
                        vec![Seg::key("store"), Seg::key("max_tracked_keys")],
                        format!("{} is too large for this platform", p.0),
                    )
                })?;
            }
            if let Some(d) = s.sweep_interval {
                store.sweep_interval = d.0;
            }
            store.hash_secret = s.hash_secret.map(|s| s.0);
        }

        let redis = match self.redis {
            None => None,
            Some(r) => Some(build_redis(r, base, store.hash_secret.is_some())?),
        };

        let mut envoy = EnvoySettings::default();
        if let Some(e) = self.envoy {
            if let Some(d) = e.domains {
                envoy.domains = d.0;
            }
            if let Some(k) = e.key_entry {
                envoy.key_entry = k.0;
            }
            if let Some(a) = e.algorithm {
                envoy.algorithm = a.0;
            }
            envoy.merge_domains = e.merge_domains.unwrap_or(false);
            envoy.shadow = e.shadow.unwrap_or(false);
        }
        let rls_files = self
            .rls_files
            .unwrap_or_default()
            .into_iter()
            .map(|p| base.join(p.0))
            .collect();
        let response_headers = self
            .response_headers
            .map_or(HeaderStyle::default(), |s| s.0);
        let admin = self.admin.map(|a| a.build(base)).transpose()?;
        let reload = self.reload.map(ReloadRaw::build).unwrap_or_default();
        let metrics = self
            .metrics
            .map(MetricsRaw::build)
            .transpose()?
            .unwrap_or_default();
        if !metrics.key_names.is_empty() && store.hash_secret.is_none() {
            return Err(Issue::new(
                vec![Seg::key("metrics"), Seg::key("key_names")],
                "naming keys by hash needs store.hash_secret: without it the hashes change at every start",
            ));
        }
        // Two listeners on one address could never both bind.
        let mut listeners = vec![
            (["server", "grpc_addr"], server.grpc_addr),
            (["server", "http_addr"], server.http_addr),
        ];
        if let Some(a) = &admin {
            listeners.push((["admin", "addr"], a.addr));
        }
        for (i, (path, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i]
                .iter()
                .find(|(_, a)| a == addr && addr.port() != 0)
            {
                return Err(Issue::new(
                    path.iter().map(|p| Seg::key(*p)).collect(),
                    format!(
                        "{addr} is also {}: each listener needs its own address",
                        other.join(".")
                    ),
                ));
            }
        }

        // Limits last: a section's own mistake is reported before a missing
        // plan, so each error points at what the author was editing.
        let limits = file::build(self.default_plan, self.plans, self.keys)?;

        // A strict limit is decided in Redis: without Redis it could not be.
        if redis.is_none() {
            for plan in &limits.plans {
                if let Some(i) = plan.limits.iter().position(|l| l.strict) {
                    return Err(Issue::new(
                        vec![
                            Seg::key("plans"),
                            Seg::key(plan.name.clone()),
                            Seg::key("limits"),
                            Seg::Index(i),
                            Seg::key("mode"),
                        ],
                        "strict limits are decided in Redis: add a redis section (or use mode: sync)",
                    ));
                }
            }
        }

        // A static key longer than callers may send could never match.
        if let Some((key, _)) = limits
            .keys
            .iter()
            .find(|(k, _)| k.len() > requests.max_key_bytes)
        {
            let mut issue = Issue::new(
                vec![Seg::key("keys"), Seg::key(key.clone())],
                format!(
                    "key is {} bytes long, more than requests.max_key_bytes ({}), so no request could use it",
                    key.len(),
                    requests.max_key_bytes
                ),
            );
            issue.at_key = true;
            return Err(issue);
        }

        Ok(Config {
            source: None,
            server,
            requests,
            store,
            envoy,
            limits,
            rls_files,
            rls: RlsDomains::default(),
            skipped: Vec::new(),
            response_headers,
            redis,
            admin,
            reload,
            metrics,
        })
    }
}

fn build_redis(r: RedisRaw, base: &Path, have_secret: bool) -> Result<RedisSettings, Issue> {
    let at = |field: &str| vec![Seg::key("redis"), Seg::key(field)];
    let Some(url) = r.url else {
        return Err(Issue::new(vec![Seg::key("redis")], "missing field 'url'"));
    };
    RedisSettings::check_url(&url.0).map_err(|why| Issue::new(at("url"), why))?;
    if !have_secret {
        return Err(Issue::new(
            at("url"),
            "Redis sync needs store.hash_secret: every node must name a key's Redis entries alike",
        ));
    }
    let mut settings = RedisSettings::new(url.0);
    if let Some(p) = r.password_file {
        let password = read_password_file(&base.join(&p.0))
            .map_err(|why| Issue::new(at("password_file"), why))?;
        settings.password = Some(password);
    }
    if let Some(p) = r.tls_ca_file {
        if !settings.url.starts_with("rediss://") {
            return Err(Issue::new(
                at("tls_ca_file"),
                "applies only to rediss:// URLs (TLS)",
            ));
        }
        let path = base.join(&p.0);
        let pem = read_file(&path).map_err(|e| {
            Issue::new(
                at("tls_ca_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        // Checked here, in words of our own: the redis crate's message
        // for a bad file would quote its bytes.
        match crate::tls::count_certificates(&pem) {
            Ok(1..) => {}
            Ok(0) => {
                return Err(Issue::new(
                    at("tls_ca_file"),
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Err(why) => {
                return Err(Issue::new(
                    at("tls_ca_file"),
                    format!("{}: {why}", path.display()),
                ));
            }
        }
        settings.tls_ca = Some(pem);
    }
    if let Some(prefix) = r.key_prefix {
        // Braces would change which part of a key Redis Cluster hashes.
        if prefix.contains(['{', '}']) {
            return Err(Issue::new(
                at("key_prefix"),
                "must not contain '{' or '}' (Redis Cluster hash tags are quotad's own)",
            ));
        }
        settings.key_prefix = prefix;
    }
    settings.cluster = r.cluster.unwrap_or(false);
    settings.sentinel_master = r.sentinel_master.map(|m| m.0);
    if settings.cluster && settings.sentinel_master.is_some() {
        return Err(Issue::new(
            at("sentinel_master"),
            "a Redis is either a Cluster or watched by Sentinel: set cluster or sentinel_master, not both",
        ));
    }
    if let Some(d) = r.sync_interval {
        settings.sync_interval = d.0;
    }
    if let Some(m) = r.on_redis_error {
        settings.on_redis_error = m.0;
    }
    if let Some(d) = r.strict_deadline {
        settings.strict_deadline = d.0;
    }
    Ok(settings)
}

// ---------------------------------------------------------------------------
// Leaf values.

/// A `host:port` socket address (an IP, not a host name).
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map(Addr).map_err(|_| {
            de::Error::custom(format!(
                "invalid address {} (expected ip:port such as 127.0.0.1:8081)",
                quoted(&s)
            ))
        })
    }
}

/// A duration written as an integer and a unit: `500ms`, `10s`, `2m`, `1h`;
/// more than zero and at most a day.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurVisitor)
    }
}

struct DurVisitor;

impl DurVisitor {
    fn bare_number<E: de::Error>(v: impl fmt::Display) -> E {
        E::custom(format!(
            "duration {v} has no unit (write for example {v}s; units: ms, s, m, h)"
        ))
    }
}

impl<'de> Visitor<'de> for DurVisitor {
    type Value = Dur;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 500ms, 10s or 2m")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
        let d = parse_duration(v).map_err(E::custom)?;
        if d.is_zero() {
            return Err(E::custom("duration must be more than 0"));
        }
        if d > MAX_DURATION {
            return Err(E::custom(format!(
                "duration must be at most 24h (got {})",
                v.trim()
            )));
        }
        Ok(Dur(d))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
        Err(Self::bare_number(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
        Err(Self::bare_number(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
        Err(Self::bare_number(v))
    }
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h` (space allowed
/// between). The caller checks the range.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {} (expected an integer and a unit ms, s, m or h, such as 500ms, 10s or 2m)",
            quoted(text)
        )
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(invalid());
    }
    let millis_per_unit: u64 = match unit.trim_start() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "duration {digits} has no unit (write for example {digits}s; units: ms, s, m, h)"
            ));
        }
        _ => return Err(invalid()),
    };
    let too_long = || format!("duration must be at most 24h (got {t})");
    let n: u64 = digits.parse().map_err(|_| too_long())?;
    let millis = n.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    Ok(Duration::from_millis(millis))
}

/// `10s`, `2m`, `500ms`: the largest unit that divides the duration.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.is_zero() {
        "none".to_owned()
    } else if ms == 0 {
        format!("{}ns", d.as_nanos())
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// `hash_secret`: exactly 32 hex digits. Messages never echo the value.
struct Secret([u8; 16]);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let s = s.trim();
        let n = s.chars().count();
        if n != 32 {
            return Err(de::Error::custom(format!(
                "expected 32 hex digits (a 128-bit secret), got {n} characters"
            )));
        }
        let not_hex =
            || de::Error::custom("expected 32 hex digits (0-9, a-f), found another character");
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_hex());
        }
        let mut out = [0u8; 16];
        for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| not_hex())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| not_hex())?;
        }
        Ok(Secret(out))
    }
}

/// A string that is not empty or blank.
struct NonEmpty(String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        Ok(NonEmpty(s))
    }
}

/// `response_headers`: off, draft03, draft11 or both.
struct StyleRaw(HeaderStyle);

impl<'de> Deserialize<'de> for StyleRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StyleRaw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("off, draft03, draft11 or both")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StyleRaw, E> {
                one_of("header style", v, HeaderStyle::ALL, HeaderStyle::as_str)
                    .map(StyleRaw)
                    .map_err(E::custom)
            }
            // YAML 1.1 reads a bare `off` as false.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<StyleRaw, E> {
                if v {
                    Err(E::custom(
                        "expected off, draft03, draft11 or both (got true)",
                    ))
                } else {
                    Ok(StyleRaw(HeaderStyle::Off))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `envoy.domains`: a non-empty list of domain names.
struct Domains(Vec<String>);

impl<'de> Deserialize<'de> for Domains {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Domain>::deserialize(d)?;
        if list.is_empty() {
            return Err(de::Error::custom("at least one domain is required"));
        }
        Ok(Domains(list.into_iter().map(|s| s.0).collect()))
    }
}

/// One domain name, checked as it is read (so the message names its
/// index and position) by [`check_domain`].
struct Domain(String);

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_domain(&s).map_err(de::Error::custom)?;
        Ok(Domain(s))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The error message `yaml` (as `t.yaml`) fails with.
    pub(crate) fn error(yaml: &str) -> String {
        match Config::from_yaml(yaml, "t.yaml") {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Checks a table of (yaml, exact message) cases, reporting every
    /// mismatch at once.
    pub(crate) fn assert_errors<Y: AsRef<str>, W: AsRef<str>>(cases: &[(Y, W)]) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(yaml, want)| {
                let (yaml, want) = (yaml.as_ref(), want.as_ref());
                let got = error(yaml);
                (got != want).then(|| format!("for {yaml:?}\n  got:  {got}\n  want: {want}"))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    fn parse_ok(yaml: &str) -> Config {
        match Config::from_yaml(yaml, "t.yaml") {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    const FULL: &str = r#"
default_plan: free
plans:
  free:
    limits:
      - { name: per-second, rate: 10, per: second, burst: 20 }
keys:
  "sk-live-abcdef": { plan: free }
server:
  grpc_addr: 0.0.0.0:50051
  http_addr: "[::1]:8080"
  shutdown_grace: 500ms
  max_connections: 500
  max_concurrent_streams: 64
  max_message_bytes: 65536
  idle_timeout: 30s
  keepalive_interval: 10s
  keepalive_timeout: 2s
  max_connection_age: 1h
  max_buffered_bytes: 8388608
  max_buffered_bytes_per_connection: 1048576
  max_unsent_bytes_per_connection: 65536
  receive_window_bytes: 65535
  request_body_timeout: 3s
  tls_handshake_timeout: 2s
  max_handshakes_per_peer: 8
requests:
  max_key_bytes: 128
  max_cost: 5000
  max_batch: 10
  max_descriptors: 8
  max_entries: 4
store:
  max_tracked_keys: 42
  sweep_interval: 2m
  hash_secret: "000102030405060708090A0B0C0D0E0F"
envoy:
  domains: [edge, internal]
  key_entry: x-api-key
"#;

    #[test]
    fn full_file_parses_every_section() {
        let c = parse_ok(FULL);
        assert_eq!(c.source, None);
        assert_eq!(c.server.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(c.server.http_addr.to_string(), "[::1]:8080");
        assert_eq!(c.server.shutdown_grace, Duration::from_millis(500));
        assert_eq!(
            c.server.conns,
            ConnLimits {
                max_connections: 500,
                max_concurrent_streams: 64,
                max_message_bytes: 65536,
                idle_timeout: Duration::from_secs(30),
                keepalive_interval: Duration::from_secs(10),
                keepalive_timeout: Duration::from_secs(2),
                max_connection_age: Some(Duration::from_secs(3600)),
                max_buffered_bytes: 8 << 20,
                max_buffered_bytes_per_connection: 1 << 20,
                max_unsent_bytes_per_connection: 64 << 10,
                receive_window_bytes: 65535,
                request_body_timeout: Duration::from_secs(3),
                tls_handshake_timeout: Duration::from_secs(2),
                max_handshakes_per_peer: 8,
            }
        );
        assert_eq!(
            c.requests,
            RequestCaps {
                max_key_bytes: 128,
                max_cost: 5000,
                max_batch: 10,
                max_descriptors: 8,
                max_entries: 4,
                max_entry_bytes: 4096,
            }
        );
        assert_eq!(c.store.max_tracked_keys, 42);
        assert_eq!(c.store.sweep_interval, Duration::from_secs(120));
        let want: Vec<u8> = (0..16).collect();
        assert_eq!(c.store.hash_secret.map(|s| s.to_vec()), Some(want));
        assert_eq!(c.envoy.domains, ["edge", "internal"]);
        assert_eq!(c.envoy.key_entry, "x-api-key");
    }

    #[test]
    fn absent_sections_take_defaults() {
        let c = parse_ok("default_plan: p\nplans:\n  p: {}\nserver:\nrequests: {}\n");
        assert_eq!(c.server, ServerSettings::default());
        assert_eq!(c.requests, RequestCaps::default());
        assert_eq!(c.store, StoreSettings::default());
        assert_eq!(c.envoy, EnvoySettings::default());
        assert_eq!(c.server.grpc_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(c.server.http_addr.to_string(), "127.0.0.1:9090");
        // An empty file is an error: a rate limiter must not fail open.
        assert!(error("# nothing here\n").contains("no plans defined"));
    }

    #[test]
    fn embedded_default_parses_and_matches_the_fallback() {
        let parsed = match Config::from_yaml(EMBEDDED_DEFAULT, "embedded") {
            Ok(c) => c,
            Err(e) => panic!("embedded default is invalid: {e}"),
        };
        assert_eq!(parsed, demo_config());
        assert_eq!(Config::embedded_default(), parsed);
        let gold = parsed.limits.plan("gold");
        assert_eq!(gold.map(|p| p.limits.len()), Some(2));
    }

    #[test]
    fn summary_lists_plans_but_not_keys() {
        let s = Config::embedded_default().summary();
        let want = "\
source: embedded default
plans: 2 (default: free)
  free: per-second 10/second burst 20; daily 10000/day
  gold: per-second 1000/second burst 2000; monthly 10000000/month
static keys: 1
server: grpc 127.0.0.1:8081, http 127.0.0.1:9090, shutdown grace 10s, drain delay none, tls off
connections: max 1024 (100 calls each), max message 1048576 bytes, idle timeout 5m, keepalive every 1m (timeout 20s), max age none
buffers: requests 67108864 bytes in all, 2097152 per connection (within 10s), unsent answers 131072 per connection, receive window 131072; worst case for connections 392 MiB
requests: max key 256 bytes, max cost 1000000000, max batch 1000, max descriptors 64, max entries 32, max entry 4096 bytes
store: max tracked keys 1000000, sweep every 10s, hash secret random per process
envoy: plan domains quotad, key entry api_key, algorithm fixed_window, merge domains off, shadow off
response headers: both
redis: off (this node alone, in memory)
admin: off (no admin section)
reload: on SIGHUP, admin Reload, and file changes (polled every 1s, debounce 250ms)";
        assert_eq!(s, want);
        assert!(!s.contains("demo-gold-key"));
    }

    #[test]
    fn debug_hides_static_keys_and_the_hash_secret() {
        let c = parse_ok(FULL);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-live-abcdef"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        // The secret's bytes, in any rendering, are absent.
        assert!(!dbg.contains("[0, 1, 2, 3"), "{dbg}");
        assert!(!dbg.to_lowercase().contains("0a0b0c"), "{dbg}");
        let summary = c.summary();
        assert!(!summary.contains("sk-live-abcdef"), "{summary}");
        assert!(!summary.to_lowercase().contains("0a0b0c"), "{summary}");
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", 500),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("24h", 86_400_000),
            (" 3 s ", 3_000),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in [
            "",
            "s",
            "1.5s",
            "10 parsecs",
            "-1s",
            "10sec",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn invalid_sections_name_line_path_and_reason() {
        let cases: &[(&str, &str)] = &[
            (
                "server:\n  grpc_addr: localhost:8081\n",
                "t.yaml:2:14: server.grpc_addr: invalid address 'localhost:8081' (expected ip:port such as 127.0.0.1:8081)",
            ),
            (
                "server:\n  shutdown_grace: 10 parsecs\n",
                "t.yaml:2:19: server.shutdown_grace: invalid duration '10 parsecs' (expected an integer and a unit ms, s, m or h, such as 500ms, 10s or 2m)",
            ),
            (
                "server:\n  shutdown_grace: 10\n",
                "t.yaml:2:19: server.shutdown_grace: duration 10 has no unit (write for example 10s; units: ms, s, m, h)",
            ),
            (
                "server:\n  grpc_addr: 127.0.0.1:7000\n  http_addr: 127.0.0.1:7000\n",
                "t.yaml:3:14: server.http_addr: 127.0.0.1:7000 is also server.grpc_addr: each listener needs its own address",
            ),
            (
                "server:\n  shutdown_grace: 0s\n",
                "t.yaml:2:19: server.shutdown_grace: duration must be more than 0",
            ),
            (
                "server:\n  max_message_bytes: 100\n",
                "t.yaml:2:22: server.max_message_bytes: must be from 1024 to 67108864 (got 100)",
            ),
            (
                "server:\n  max_connections: 0\n",
                "t.yaml:2:20: server.max_connections: must be at least 1 (got 0)",
            ),
            (
                "server:\n  idle_timeout: forever\n",
                "t.yaml:2:17: server.idle_timeout: invalid duration 'forever' (expected an integer and a unit ms, s, m or h, such as 500ms, 10s or 2m)",
            ),
            (
                "store:\n  sweep_interval: 25h\n",
                "t.yaml:2:19: store.sweep_interval: duration must be at most 24h (got 25h)",
            ),
            (
                "store:\n  hash_secret: abc123\n",
                "t.yaml:2:16: store.hash_secret: expected 32 hex digits (a 128-bit secret), got 6 characters",
            ),
            (
                "store:\n  hash_secret: 000102030405060708090a0b0c0d0e0g\n",
                "t.yaml:2:16: store.hash_secret: expected 32 hex digits (0-9, a-f), found another character",
            ),
            (
                "requests:\n  max_key_bytes: 65537\n",
                "t.yaml:2:18: requests.max_key_bytes: must be at most 65536 (got 65537)",
            ),
            (
                "requests:\n  max_batch: 0\n",
                "t.yaml:2:14: requests.max_batch: must be at least 1 (got 0)",
            ),
            (
                "envoy:\n  domains: []\n",
                "t.yaml:2:12: envoy.domains: at least one domain is required",
            ),
            (
                "envoy:\n  domains: [a, '']\n",
                "t.yaml:2:16: envoy.domains[1]: must not be empty",
            ),
            (
                "envoy:\n  key_entry: ''\n",
                "t.yaml:2:14: envoy.key_entry: must not be empty",
            ),
            ("server: 5\n", "t.yaml:1:9: server: expected a mapping"),
            (
                "envoy:\n  domains: quotad\n",
                "t.yaml:2:12: envoy.domains: expected a list",
            ),
            (
                "limits:\n  free: {}\n",
                "t.yaml:1:1: unknown field (expected one of: default_plan, plans, keys, server, requests, store, redis, envoy, rls_files, response_headers, admin, reload, metrics)",
            ),
            (
                "servers:\n  grpc_addr: 127.0.0.1:1\n",
                "t.yaml:1:1: unknown field 'servers' (did you mean 'server'?)",
            ),
            (
                "metrics:\n  port: 1\n",
                "t.yaml:2:3: metrics: unknown field (expected one of: heavy_keys, heavy_window, key_names)",
            ),
            (
                "metrics:\n  key_names: { \"0123456789abcdef\": acme }\n",
                "t.yaml:2:14: metrics.key_names: naming keys by hash needs store.hash_secret: without it the hashes change at every start",
            ),
            (
                "metrics:\n  heavy_keys: 1000\n",
                "t.yaml:2:15: metrics.heavy_keys: at most 100 (got 1000): the gauge is for the top of the list, not a per-key export",
            ),
            (
                "metrics:\n  key_names: { my-secret-key: acme }\n",
                "t.yaml:2:14: metrics.key_names: a key's keyed hash is 16 lowercase hex digits (as `quotactl usage` shows it), never the key itself",
            ),
            (
                "server:\n  grpc_addr: 127.0.0.1:1\n  grpc_addr: 127.0.0.1:2\n",
                "t.yaml:2:3: server: duplicate field 'grpc_addr'",
            ),
            ("- a\n- b\n", "t.yaml:1:1: expected a mapping"),
            (
                "default_plan: free\nplans:\n  free:\n    limits: [\n",
                "t.yaml:4:13: invalid yaml: unclosed bracket '['",
            ),
            (
                "server:\n  grpc_addr: 127.0.0.1:1\n---\nserver: {}\n",
                "t.yaml:4:1: the file must hold a single yaml document",
            ),
            (
                "default_plan: free\nplans:\n  free: {}\nrequests:\n  max_key_bytes: 4\nkeys:\n  longer-than-four: { plan: free }\n",
                "t.yaml:7:3: keys.<key>: key is 16 bytes long, more than requests.max_key_bytes (4), so no request could use it",
            ),
        ];
        assert_errors(cases);
    }

    #[test]
    fn syntax_errors_are_their_own_variant() {
        let e = Config::from_yaml("plans:\n  free: {limits: [\n", "t.yaml");
        assert!(matches!(e, Err(ConfigError::Syntax(_))), "{e:?}");
        let e = Config::from_yaml("server: 5\n", "t.yaml");
        match e {
            Err(ConfigError::Invalid(d)) => {
                assert_eq!((d.line, d.column), (Some(1), Some(9)));
                assert_eq!(d.path, "server");
                assert_eq!(d.reason, "expected a mapping");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hash_secret_is_never_echoed() {
        let secret = "00112233445566778899aabbccddeeffXX";
        let e = error(&format!("store:\n  hash_secret: \"{secret}\"\n"));
        assert!(!e.contains("00112233"), "{e}");
    }

    fn check_one_line(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        if let Err(e) = Config::from_yaml(text, "f.yaml") {
            let msg = e.to_string();
            proptest::prop_assert!(!msg.contains('\n'), "{msg}");
            proptest::prop_assert!(msg.starts_with("f.yaml"), "{msg}");
        }
        Ok(())
    }

    proptest::proptest! {
        /// Small edits of a valid file: a config or a one-line error,
        /// never a panic.
        #[test]
        fn edits_of_the_default_never_panic(
            pos in 0usize..EMBEDDED_DEFAULT.len(),
            cut in 0usize..12,
            insert in "[ -~\n]{0,8}",
        ) {
            let end = (pos + cut).min(EMBEDDED_DEFAULT.len());
            let mut text = EMBEDDED_DEFAULT.to_owned();
            text.replace_range(pos..end, &insert);
            check_one_line(&text)?;
        }

        /// Arbitrary text, including control characters and non-ASCII.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,120}|[\\x00-\\x7f]{0,120}") {
            check_one_line(&text)?;
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Pass one stops at the missing field; locating it reads the whole
        // document again, hits the parser's depth budget, and falls back to
        // the parser's own position (the last key read).
        let deep = format!(
            "plans:\n  free:\n    limits:\n      - {{ rate: 1, per: second }}\nx: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            error(&deep),
            "t.yaml:4:20: plans.free.limits[0]: missing field 'name'"
        );
        assert!(error(&format!("x: {}", "[".repeat(100_000))).starts_with("t.yaml:1:"));
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(name)
    }

    #[test]
    fn files_over_the_cap_are_refused_unread_naming_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("huge.yaml");
        let f = std::fs::File::create(&path).expect("create");
        // Sparse: no disk is written.
        f.set_len(crate::diag::files::MAX_FILE_BYTES + 1)
            .expect("set_len");
        let err = Config::load(&path).expect_err("refused").to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("larger than 16 MiB; refused"), "{err}");
        // At the cap exactly, it is read (and fails as YAML, not as size).
        f.set_len(crate::diag::files::MAX_FILE_BYTES)
            .expect("set_len");
        let err = Config::load(&path).expect_err("not a config").to_string();
        assert!(!err.contains("larger than"), "{err}");
        // A device that never ends is not a regular file: refused unread.
        let err = Config::load(Path::new("/dev/zero")).expect_err("endless");
        assert_eq!(
            err.to_string(),
            "/dev/zero: cannot read: is a character device, not a regular file; refused unread"
        );
    }

    #[test]
    fn load_names_the_file() {
        let cases = [
            (
                "bad-unit.yaml",
                "7:43: plans.free.limits[1].per: unknown unit 'fortnight' (expected second, minute, hour, day, week or month)",
            ),
            (
                "misspelled-burst.yaml",
                "6:52: plans.free.limits[0]: unknown field 'brust' (did you mean 'burst'?)",
            ),
            (
                "burst-on-quota.yaml",
                "12:16: plans.gold.limits[1].burst: burst applies only to rate limits",
            ),
            (
                "unknown-plan-key.yaml",
                "13:11: keys.<key>.plan: unknown plan 'platinum' (defined plans: free, gold)",
            ),
            ("syntax.yaml", "5:13: invalid yaml: unclosed bracket '['"),
        ];
        let mut failures = Vec::new();
        for (name, tail) in cases {
            let path = fixture(name);
            let err = match Config::load(&path) {
                Ok(c) => panic!("{name}: expected an error, got {c:?}"),
                Err(e) => e.to_string(),
            };
            let want = format!("{}:{tail}", path.display());
            if err != want {
                failures.push(format!("{name}\n  got:  {err}\n  want: {want}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn load_valid_fixture_sets_source() {
        let path = fixture("valid.yaml");
        let c = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.source.as_deref(), Some(path.as_path()));
        assert_eq!(c.limits.plans.len(), 2);
        assert!(
            c.summary()
                .starts_with(&format!("source: {}", path.display()))
        );
    }

    #[test]
    fn load_missing_file() {
        let path = fixture("does-not-exist.yaml");
        let err = match Config::load(&path) {
            Ok(c) => panic!("{c:?}"),
            Err(e) => e,
        };
        assert!(matches!(err, ConfigError::Read { .. }));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}: cannot read: ", path.display())),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn the_envoy_example_loads_its_limits_relative_to_itself() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy");
        let c = match Config::load(&root.join("quotad.yaml")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let edge = c.rls.get("edge").expect("domain edge from limits/");
        assert_eq!(
            edge.files,
            [root.join("limits/edge.yaml").display().to_string()]
        );
        assert_eq!(c.response_headers, HeaderStyle::Both);
        assert!(
            c.summary()
                .contains("rls domain edge: 7 rules, fixed_window, from ")
        );
        // The Envoy bootstrap next to it asks for that domain at that port.
        let envoy = std::fs::read_to_string(root.join("envoy.yaml")).unwrap();
        assert!(envoy.contains("domain: edge"));
        let port = format!("port_value: {}", c.server.grpc_addr.port());
        assert!(envoy.contains(&port), "envoy.yaml should point at {port}");
    }

    #[test]
    fn the_commented_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quotad.yaml");
        if let Err(e) = Config::load(&path) {
            panic!("{e}");
        }
    }

    #[test]
    fn rls_settings_parse_and_name_their_errors() {
        let c = parse_ok(
            "plans: { p: {} }\ndefault_plan: p\nresponse_headers: off\nenvoy: { algorithm: token_bucket, merge_domains: true, shadow: true }\n",
        );
        assert_eq!(c.response_headers, HeaderStyle::Off);
        assert_eq!(c.envoy.algorithm, Algorithm::TokenBucket);
        assert!(c.envoy.merge_domains && c.envoy.shadow);
        for (style, want) in [
            ("draft03", HeaderStyle::Draft03),
            ("draft11", HeaderStyle::Draft11),
        ] {
            let c = parse_ok(&format!(
                "plans: {{ p: {{}} }}\ndefault_plan: p\nresponse_headers: {style}\n"
            ));
            assert_eq!(c.response_headers, want);
        }
        assert_errors(&[
            (
                "plans: { p: {} }\ndefault_plan: p\nresponse_headers: draft-11\n",
                "t.yaml:3:19: response_headers: unknown header style 'draft-11' (expected off, draft03, draft11 or both)",
            ),
            (
                "plans: { p: {} }\ndefault_plan: p\nenvoy: { algorithm: leaky }\n",
                "t.yaml:3:21: envoy.algorithm: unknown algorithm 'leaky' (expected fixed_window or token_bucket)",
            ),
        ]);
        let err =
            error("plans: { p: {} }\ndefault_plan: p\nrls_files: [/nonexistent/limits.yaml]\n");
        assert_eq!(
            err,
            "t.yaml:3:13: rls_files[0]: cannot read /nonexistent/limits.yaml: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn envoy_domains_must_be_printable_and_at_most_256_bytes() {
        let base = "plans: { p: {} }\ndefault_plan: p\n";
        let unprintable = "a domain must be printable: no control characters (line breaks, tabs, escapes), line separators or bidirectional overrides";
        assert_errors(&[
            (
                format!("{base}envoy:\n  domains: [ok, \"edge\\nforged: line\"]\n"),
                format!("t.yaml:4:17: envoy.domains[1]: {unprintable}"),
            ),
            (
                format!("{base}envoy:\n  domains: [\"a\\u202eb\"]\n"),
                format!("t.yaml:4:13: envoy.domains[0]: {unprintable}"),
            ),
            (
                format!("{base}envoy:\n  domains: [{}]\n", "d".repeat(257)),
                "t.yaml:4:13: envoy.domains[0]: a domain is at most 256 bytes (this one is 257)"
                    .to_owned(),
            ),
            (
                format!("{base}envoy:\n  domains: [\" \"]\n"),
                "t.yaml:4:13: envoy.domains[0]: must not be empty".to_owned(),
            ),
        ]);
        let c = parse_ok(&format!(
            "{base}envoy: {{ domains: [{}] }}\n",
            "d".repeat(256)
        ));
        assert_eq!(c.envoy.domains, ["d".repeat(256)]);
    }

    #[test]
    fn limits_files_can_be_added_after_loading() {
        let mut c = parse_ok("plans: { p: {} }\ndefault_plan: p\n");
        assert!(c.rls.is_empty());
        let ex1 = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/rls/valid/ex1_key_value.yaml");
        c.add_rls_files(std::slice::from_ref(&ex1)).unwrap();
        assert!(c.rls.get("mongo_cps").is_some());
        assert_eq!(c.rls_files, [ex1]);
    }

    #[test]
    fn redis_section_needs_a_url_a_known_scheme_and_the_hash_secret() {
        let base = "plans: { p: {} }\ndefault_plan: p\n";
        let secret = "store: { hash_secret: \"000102030405060708090a0b0c0d0e0f\" }\n";
        let c = parse_ok(&format!(
            "{base}{secret}redis: {{ url: \"redis://u:hunter2@10.0.0.1:6379/2\", key_prefix: \"rl:\", sync_interval: 20ms }}\n"
        ));
        let r = c.redis.as_ref().expect("redis settings");
        assert_eq!(r.key_prefix, "rl:");
        assert_eq!(r.sync_interval, Duration::from_millis(20));
        assert_eq!(r.redacted_url(), "redis://u:<redacted>@10.0.0.1:6379/2");
        let unix = RedisSettings::new("unix:///run/redis.sock?db=1&pass=hunter2");
        assert_eq!(
            unix.redacted_url(),
            "unix:///run/redis.sock?db=1&pass=<redacted>"
        );
        let shown = format!("{c:?} {}", c.summary());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            c.summary()
                .contains("redis: redis://u:<redacted>@10.0.0.1:6379/2")
        );
        assert_errors(&[
            (
                format!("{base}{secret}redis: {{ key_prefix: x }}\n"),
                "t.yaml:4:8: redis: missing field 'url'".to_owned(),
            ),
            (
                format!("{base}{secret}redis: {{ url: \"http://h\" }}\n"),
                "t.yaml:4:15: redis.url: invalid Redis URL 'http://h' (expected redis://[user:password@]host:port[/db], rediss:// for TLS, or unix:///path; percent-encode reserved characters in a password, such as %2F for /, or use redis.password_file)".to_owned(),
            ),
            (
                format!("{base}{secret}redis: {{ url: \"redis://h:1\", cluster: true, sentinel_master: m }}\n"),
                "t.yaml:4:62: redis.sentinel_master: a Redis is either a Cluster or watched by Sentinel: set cluster or sentinel_master, not both".to_owned(),
            ),
            (
                format!("{base}{secret}redis: {{ url: \"redis://h:1\", key_prefix: \"a{{b}}\" }}\n"),
                "t.yaml:4:42: redis.key_prefix: must not contain '{' or '}' (Redis Cluster hash tags are quotad's own)".to_owned(),
            ),
            (
                format!("{base}redis: {{ url: \"redis://h:1\" }}\n"),
                "t.yaml:3:15: redis.url: Redis sync needs store.hash_secret: every node must name a key's Redis entries alike".to_owned(),
            ),
        ]);
    }

    #[test]
    fn redis_password_file_is_read_relative_to_the_config_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("redis.pass"), "s3cret-pass\n").unwrap();
        let yaml = "plans: { p: {} }\ndefault_plan: p\nstore: { hash_secret: \"000102030405060708090a0b0c0d0e0f\" }\nredis: { url: \"redis://h:1\", password_file: redis.pass }\n";
        let path = dir.path().join("q.yaml");
        std::fs::write(&path, yaml).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.redis.as_ref().and_then(|r| r.password.as_deref()),
            Some("s3cret-pass")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::write(dir.path().join("redis.pass"), "\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("redis.password_file: ") && err.ends_with("redis.pass is empty"),
            "{err}"
        );
    }
}
