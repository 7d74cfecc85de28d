//! The daemon's config file: one YAML document holding the limits
//! (`default_plan`, `plans`, `keys`, see [`crate::limits::file`]) and the
//! `server`, `requests`, `store` and `envoy` sections, `rls_files` (the
//! envoyproxy/ratelimit limits files, read by [`crate::limits::rls_file`])
//! and `response_headers`, all optional.
//!
//! This module owns the [`Config`] type, reading the file (through
//! [`crate::diag::files`], the one reader of every file quotad is pointed
//! at), the embedded demo config ([`EMBEDDED_DEFAULT`]), and putting the
//! sections together. Each section has a file of its own, owning its raw
//! (as written) form, its validation into settings, its defaults and its
//! summary line: `server`, `requests`, `store`, `redis`, `envoy`,
//! `headers` (`response_headers`), `plans` (what the config checks of the
//! limits), [`admin`] (with the listeners' TLS), `reload`, [`metrics`] and
//! [`rlqs`] (Envoy's Rate Limit Quota Service);
//! the values several share are in `values`, the tests across sections in
//! `tests`.
//!
//! A [`Config`] is two parts: [`Boot`], what only a restart applies (the
//! listeners and the connection limits they are built with, whether they
//! speak TLS, the store, Redis, the admin listener and audit file), and
//! [`Live`], what a reload applies (everything else: caps, limits, RLS
//! domains, headers, TLS files, admin tokens, ...). A reload keeps the
//! running `Boot` and names what differed
//! ([`crate::control::keep_restart_only`]).
//!
//! Every mistake is one line naming the file, the line and column, the
//! field path and the reason, and a file's every mistake is reported (up
//! to [`crate::yaml::recover::MAX_REPORTED`]; mistakes of shape and type
//! first, then, once the file reads, those of its values; see
//! [`raw`]):
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
mod envoy;
mod headers;
pub mod http_check;
pub mod metrics;
mod plans;
mod raw;
mod redis;
pub mod redis_url;
mod reload;
mod requests;
pub mod rlqs;
mod server;
mod store;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_files;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::diag::files::read_text;
use crate::diag::{Issue, Seg};
use crate::limits::file::LimitsSpec;
use crate::limits::rls::RlsDomains;
use crate::limits::rls_file::{self, RlsOptions};
use crate::yaml::{locate, locate_all, parse_all};
pub use admin::{AdminBoot, AdminLive, AdminToken, Scope, TlsFiles};
pub use envoy::EnvoySettings;
pub use headers::HeaderStyle;
pub use http_check::{HttpCheckBoot, HttpCheckLive, KeyHeader};
pub use metrics::MetricsSettings;
pub use redis::{OnRedisError, RedisSettings, read_password_file};
pub use reload::ReloadSettings;
pub use requests::RequestCaps;
pub use rlqs::RlqsSettings;
pub use server::{ConnLimits, ServerBoot, ServerLive};
pub use store::{StoreSettings, outside_hash_secret, parse_hash_secret};

/// Why a config with neither plans nor limits files is refused: an empty
/// or plan-less file is a mistake far more often than a wish to allow
/// everything, and a rate limiter must not fail open silently.
const NOTHING_SERVED: &str = "no plans defined, and no limits files: a config needs at least one plan, or rls_files (or --limits) with the Envoy domains it serves, or rlqs rules (an allow-everything plan is `open: { limits: [] }` with `default_plan: open`)";

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
      # A concurrency limit: how many slots (WebSockets, SSE streams, long
      # calls) a key may hold at once, as leases (Acquire/Renew/Release,
      # or Hold: a lease as long as a stream). A lease not renewed within
      # `lease_ttl` (1s..1h, default 30s) expires. Checks ignore it.
      - { name: streams, concurrency: 10, lease_ttl: 30s }
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
  grpc_addr: 127.0.0.1:8081    # gRPC: the native check API, Envoy RLS v3 and RLQS v3
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
  # http_check:                # the HTTP door: NGINX/Traefik/Caddy forward auth, JSON (or --http-check-addr)
  #   addr: 127.0.0.1:8083     # GET /v1/auth, POST /v1/check, /v1/report, /json; off without addr
  #   key_header: x-api-key    # where /v1/auth finds the key (authorization: the Bearer token)

requests:                      # caps on what a caller may send
  max_key_bytes: 256           # longest API key
  max_cost: 1000000000         # largest cost (units) in one check
  max_batch: 1000              # checks in one CheckBatch
  max_descriptors: 64          # descriptors in one Envoy RLS request
  max_entries: 32              # entries in one RLS descriptor
  max_entry_bytes: 4096        # longest RLS descriptor entry key or value

store:
  max_tracked_keys: 1000000    # hard cap on tracked buckets
  max_leases: 1000000          # hard cap on concurrency leases this node holds
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
  # response_headers: off      # headers in answers for rls_files domains: off (as envoyproxy/ratelimit),
  #                            # draft03 (exactly its 3, as LIMIT_RESPONSE_HEADERS_ENABLED), draft11 or both
  # quota_mode: false          # every rls_files limit in quota mode (as QUOTA_MODE)
  # response_dynamic_metadata: false  # answers carry dynamic_metadata (as RESPONSE_DYNAMIC_METADATA)
  # near_limit_ratio: 0.8      # hits past this share of a limit count as near_limit (as NEAR_LIMIT_RATIO)

# envoyproxy/ratelimit limits files (one domain each) or directories of
# them, relative to this file; `quotad serve --limits FILE` adds more.
# rls_files: [limits/]

# Rate-limit headers in every answer of the native API and of plan
# domains: off, draft03 (RateLimit-Limit, -Remaining, -Reset), draft11
# (RateLimit-Policy, RateLimit) or both; Retry-After is added to
# over-limit answers unless off. Domains from rls_files: envoy.response_headers.
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

/// The whole validated config file: what only a restart applies
/// ([`Boot`]) and what a reload applies ([`Live`]). Each setting is in
/// exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from; `None` for [`EMBEDDED_DEFAULT`] or text given
    /// to [`Config::from_yaml`].
    pub source: Option<PathBuf>,
    /// Whether it is [`EMBEDDED_DEFAULT`]: no file, so its digest is that
    /// of the text ([`Config::digest_seed`]).
    pub embedded: bool,
    /// What only a restart applies (a reload keeps the running one).
    pub boot: Boot,
    /// What a reload applies.
    pub live: Live,
}

/// The settings only a restart applies: the listeners (and whether they
/// speak TLS), the connection limits they are built with, the store,
/// Redis, and the admin listener and audit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// The check and HTTP listeners and their connections.
    pub server: ServerBoot,
    /// The in-memory bucket store.
    pub store: StoreSettings,
    /// Redis sync; `None` runs this node alone, in memory.
    pub redis: Option<RedisSettings>,
    /// The admin listener; `None` (no `admin` section) runs without it.
    pub admin: Option<AdminBoot>,
}

/// The settings a reload applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// Shutdown timing and the check listener's TLS files.
    pub server: ServerLive,
    /// Caps on requests.
    pub requests: RequestCaps,
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
    /// The admin API's tokens, TLS files and override cap; `Some` exactly
    /// when [`Boot::admin`] is.
    pub admin: Option<AdminLive>,
    /// Watching the files for changes.
    pub reload: ReloadSettings,
    /// The opt-in heaviest-keys gauge.
    pub metrics: MetricsSettings,
    /// Envoy's Rate Limit Quota Service: fair shares of global rates.
    pub rlqs: RlqsSettings,
}

/// A listener's field path.
type Listed = &'static [&'static str];

impl Boot {
    /// The first listener whose address an earlier one has too (port 0,
    /// "any free port", may repeat): its field path, the earlier one's,
    /// and the address.
    fn shared_listener(&self) -> Option<(Listed, Listed, SocketAddr)> {
        let s = &self.server;
        let mut listeners: Vec<(Listed, SocketAddr)> = vec![
            (&["server", "grpc_addr"], s.grpc_addr),
            (&["server", "http_addr"], s.http_addr),
        ];
        if let Some(a) = s.http_check.addr {
            listeners.push((&["server", "http_check", "addr"], a));
        }
        if let Some(a) = &self.admin {
            listeners.push((&["admin", "addr"], a.addr));
        }
        for (i, (path, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i]
                .iter()
                .find(|(_, a)| a == addr && addr.port() != 0)
            {
                return Some((*path, *other, *addr));
            }
        }
        None
    }

    /// The names of the settings that differ in `new`, as a reload
    /// reports them: the listeners, the connection limits that name
    /// themselves, whether TLS is on, the store, Redis, and the admin
    /// section's presence, listener, TLS and audit file.
    pub fn differences(&self, new: &Boot) -> Vec<&'static str> {
        let (o, n) = (&self.server, &new.server);
        let (oc, nc) = (&o.conns, &n.conns);
        let mut named = vec![
            ("server.grpc_addr", o.grpc_addr != n.grpc_addr),
            ("server.http_addr", o.http_addr != n.http_addr),
            (
                "server.max_connections",
                oc.max_connections != nc.max_connections,
            ),
            (
                "server.max_concurrent_streams",
                oc.max_concurrent_streams != nc.max_concurrent_streams,
            ),
            (
                "server.max_message_bytes",
                oc.max_message_bytes != nc.max_message_bytes,
            ),
            ("server.idle_timeout", oc.idle_timeout != nc.idle_timeout),
            (
                "server.keepalive_interval",
                oc.keepalive_interval != nc.keepalive_interval,
            ),
            (
                "server.keepalive_timeout",
                oc.keepalive_timeout != nc.keepalive_timeout,
            ),
            (
                "server.max_connection_age",
                oc.max_connection_age != nc.max_connection_age,
            ),
            ("server.tls", o.tls_on != n.tls_on),
            ("server.http_check", o.http_check != n.http_check),
            ("store", self.store != new.store),
            ("redis", self.redis != new.redis),
        ];
        named.extend(Self::budget_differences(oc, nc));
        match (&self.admin, &new.admin) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => named.push(("admin", true)),
            (Some(a), Some(b)) => named.extend([
                ("admin.addr", a.addr != b.addr),
                ("admin.tls", a.tls_on != b.tls_on),
                ("admin.audit_file", a.audit_file != b.audit_file),
                (
                    "admin.max_connections",
                    a.max_connections != b.max_connections,
                ),
                (
                    "admin.insecure_plaintext",
                    a.insecure_plaintext != b.insecure_plaintext,
                ),
            ]),
        }
        named
            .into_iter()
            .filter_map(|(name, differs)| differs.then_some(name))
            .collect()
    }

    /// The listeners' budgets and timeouts that differ (built into the
    /// listeners once, so a restart applies them).
    fn budget_differences(o: &ConnLimits, n: &ConnLimits) -> [(&'static str, bool); 7] {
        [
            (
                "server.max_buffered_bytes",
                o.max_buffered_bytes != n.max_buffered_bytes,
            ),
            (
                "server.max_buffered_bytes_per_connection",
                o.max_buffered_bytes_per_connection != n.max_buffered_bytes_per_connection,
            ),
            (
                "server.max_unsent_bytes_per_connection",
                o.max_unsent_bytes_per_connection != n.max_unsent_bytes_per_connection,
            ),
            (
                "server.receive_window_bytes",
                o.receive_window_bytes != n.receive_window_bytes,
            ),
            (
                "server.request_body_timeout",
                o.request_body_timeout != n.request_body_timeout,
            ),
            (
                "server.tls_handshake_timeout",
                o.tls_handshake_timeout != n.tls_handshake_timeout,
            ),
            (
                "server.max_handshakes_per_peer",
                o.max_handshakes_per_peer != n.max_handshakes_per_peer,
            ),
        ]
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
        if let Some(why) = self
            .boot
            .admin
            .as_ref()
            .and_then(AdminBoot::plaintext_problem)
        {
            return Err(format!("admin.addr: {why}"));
        }
        match self.boot.shared_listener() {
            Some((name, other, addr)) => Err(format!(
                "{} and {} are both {addr}",
                other.join("."),
                name.join(".")
            )),
            None => Ok(()),
        }
    }

    /// `admin.max_overrides`, or its default without an admin section.
    pub fn max_overrides(&self) -> usize {
        self.live
            .admin
            .as_ref()
            .map_or(admin::DEFAULT_MAX_OVERRIDES, |a| a.max_overrides)
    }

    /// Every file the config in effect was read from (the config file,
    /// the limits files and directories, TLS certificates and keys): what
    /// a reload watches.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.source.iter().cloned().collect();
        let live = &self.live;
        out.extend(live.rls_files.iter().cloned());
        let tls = live
            .server
            .tls
            .iter()
            .chain(live.admin.iter().flat_map(|a| a.tls.iter()));
        for t in tls {
            out.extend(t.paths().into_iter().map(Path::to_path_buf));
        }
        out
    }

    /// Reads and validates the config file at `path` and the `rls_files`
    /// it names (relative to its directory); messages name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_secret(path, None)
    }

    /// [`Config::load`], with `hash_secret` (from outside the file: an
    /// environment variable, a secret file) in place of
    /// `store.hash_secret` when given.
    pub fn load_with_secret(
        path: &Path,
        hash_secret: Option<[u8; 16]>,
    ) -> Result<Config, ConfigError> {
        Self::load_with(path, hash_secret, &[])
    }

    /// [`Config::load_with_secret`], with the envoyproxy/ratelimit files
    /// `limits` (`--limits`) added to `rls_files`: a config without plans
    /// may take its Envoy domains from them alone.
    pub fn load_with(
        path: &Path,
        hash_secret: Option<[u8; 16]>,
        limits: &[PathBuf],
    ) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = read_text(path).map_err(|error| ConfigError::Read {
            path: origin.clone(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut config = Self::from_text(&text, &origin, base, (hash_secret, limits))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; `origin` names it in messages.
    /// `rls_files` are read relative to the working directory. The
    /// result's `source` is `None`.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_text(text, origin, Path::new(""), (None, &[]))
    }

    fn from_text(
        text: &str,
        origin: &str,
        base: &Path,
        (hash_secret, limits): (Option<[u8; 16]>, &[PathBuf]),
    ) -> Result<Config, ConfigError> {
        let raw: raw::ConfigRaw = parse_all(text, origin)?;
        let mut config = raw
            .build(base, hash_secret)
            .map_err(|issues| locate_all(text, origin, issues))?;
        // The file's own entries; the --limits files come after them.
        let written = config.live.rls_files.len();
        config.live.rls_files.extend_from_slice(limits);
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
            match config.live.rls_files[..written]
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
        if config.serves_nothing() {
            return Err(locate(
                text,
                origin,
                Issue::new(vec![Seg::key("plans")], NOTHING_SERVED),
            ));
        }
        Ok(config)
    }

    /// Adds envoyproxy/ratelimit files (`quotad serve --limits`) and reads
    /// every `rls_files` entry again.
    pub fn add_rls_files(&mut self, paths: &[PathBuf]) -> Result<(), ConfigError> {
        self.live.rls_files.extend_from_slice(paths);
        self.load_rls()
    }

    /// Whether the config has neither plans, nor Envoy domains from limits
    /// files, nor RLQS rules: it would limit nothing.
    fn serves_nothing(&self) -> bool {
        let live = &self.live;
        live.limits.is_planless()
            && live.rls.is_empty()
            && live.rlqs.rules.domains().next().is_none()
    }

    /// Reads `rls_files` into `rls`. A domain the plans already answer
    /// (`envoy.domains`) cannot also come from a file.
    fn load_rls(&mut self) -> Result<(), ConfigError> {
        let live = &mut self.live;
        let opts = RlsOptions {
            algorithm: live.envoy.algorithm,
            merge_domains: live.envoy.merge_domains,
        };
        (live.rls, live.skipped) = rls_file::read(&live.rls_files, opts, &live.envoy.domains)?;
        Ok(())
    }

    /// The embedded demo config ([`EMBEDDED_DEFAULT`]).
    pub fn embedded_default() -> Config {
        // Cannot fail: the text is a compile-time constant, neither caller-
        // nor file-controlled, and the unit test
        // `embedded_default_parses_with_its_plans_and_keys` parses it.
        #[allow(clippy::expect_used)]
        let mut config = Self::from_yaml(EMBEDDED_DEFAULT, "<embedded default>")
            .expect("the embedded default config is valid");
        config.embedded = true;
        config
    }

    /// What the config's digest starts from before its files: the
    /// embedded text for [`EMBEDDED_DEFAULT`] (which has no file), else
    /// nothing (the file is among [`Config::watched_files`]).
    pub fn digest_seed(&self) -> &'static str {
        if self.embedded { EMBEDDED_DEFAULT } else { "" }
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
        let (boot, live) = (&self.boot, &self.live);
        plans::summary(&live.limits, &mut lines);
        let admin_connections = boot.admin.as_ref().map_or(0, |a| a.max_connections);
        server::summary(&boot.server, &live.server, admin_connections, &mut lines);
        lines.push(live.requests.summary_line());
        lines.push(boot.store.summary_line());
        live.envoy.summary(&live.rls, &mut lines);
        lines.push(live.response_headers.summary_line());
        lines.push(redis::describe_redis(boot.redis.as_ref()));
        lines.push(admin::describe_admin(
            boot.admin.as_ref(),
            live.admin.as_ref(),
        ));
        lines.push(live.reload.summary_line());
        lines.push(live.rlqs.summary_line());
        lines.extend(live.skipped.iter().map(|s| format!("skipped: {s}")));
        lines.join("\n")
    }
}
