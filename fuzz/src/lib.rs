//! What quotad's fuzz targets run, shared by the targets in
//! `fuzz_targets/` (one line each) and the seed generator in
//! `examples/seeds.rs`.
//!
//! | target | input | path |
//! | --- | --- | --- |
//! | `config_yaml` | a config file's text | [`Config::from_yaml`] (what `quotad check-config` and `Config::load` run), then the table and a few checks |
//! | `rls_file` | an envoyproxy/ratelimit limits file's text | [`rls_file::add`] (what `rls_files` and `--limits` read), then each of its descriptors asked for through the Envoy service |
//! | `native_api` | a kind byte, then protobuf bytes | `quotad.v1.RateLimiter` `Check`, `CheckBatch` or `CheckStream` through its generated server and codec |
//! | `envoy_rls` | protobuf bytes of a `RateLimitRequest` | Envoy RLS `ShouldRateLimit` through the server as `quotad serve` mounts it |
//!
//! Beyond "no panic", each asserts what can be checked from outside:
//! errors are one line, name their file and point into it; a config that loads loads the
//! same again and builds its table; an API answers OK (allowed or over
//! the limit) or `INVALID_ARGUMENT`, never another code, and exactly when
//! an independent reading of the request says it is malformed or over the
//! caps; answers carry the request's id, `remaining <= limit`, and
//! statuses match descriptors.
//!
//! The services are the real ones, on a real [`Engine`] over a table
//! from a small config ([`CONFIG`], with [`EDGE_LIMITS`] and
//! [`TB_LIMITS`]) and a [`ManualClock`], built afresh for every input so
//! a crash reproduces from its input alone (only the metrics registry is
//! shared), and driven on a
//! current-thread Tokio runtime.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use http_body_util::{BodyExt, Full};
use prost::Message;
use quotad::api::envoy_rls::EnvoyRlsService;
use quotad::api::native::NativeService;
use quotad::api::rls_server::RlsServer;
use quotad::api::pb::rate_limiter_server::RateLimiterServer;
use quotad::api::pb::{
    CheckBatchRequest, CheckBatchResponse, CheckRequest, CheckResponse, DenyReason,
};
use quotad::config::{Config, ConfigError, Diagnostic, RequestCaps};
use quotad::core::{self, KeyHasher, ManualClock};
use quotad::engine::Engine;
use quotad::limits::rls::{RlsDomains, Unit};
use quotad::limits::rls_file::{self, RlsOptions};
use quotad::shutdown::{self, Shutdown, Trigger};
use quotad::store::StoreLimits;
use quotad::metrics::Metrics;
use tonic::Code;

/// The name config and limits text is given in messages.
pub const ORIGIN: &str = "fuzz.yaml";

/// 2026-01-01T00:00:00Z, where every service's clock stands.
const T0: u64 = 1_767_225_600_000_000_000;

/// One secret for every hasher: the same input hashes the same.
const SECRET: [u8; 16] = *b"quotad-fuzz-salt";

/// Cells per store: small, so the overflow bucket is reached too.
const MAX_CELLS: usize = 64;

// ---------------------------------------------------------------------------
// Config and limits files.

/// Substrings that make `config_yaml` skip an input: the config names
/// files it reads (`rls_files`, password and token files), and a path
/// into `/dev`, `/proc` or `/sys` (or a hex escape that could spell one)
/// could block or read without end. The script runs the fuzzer in an
/// empty directory, so other relative paths find nothing.
const SKIPPED: [&str; 6] = ["dev", "proc", "sys", "\\x", "\\u", "\\U"];

/// The `config_yaml` target: `Config::from_yaml` on any UTF-8 text.
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // Config::load reads text with read_to_string: UTF-8 only.
    };
    if SKIPPED.iter().any(|s| text.contains(s)) {
        return;
    }
    let config = match Config::from_yaml(text, ORIGIN) {
        Ok(c) => c,
        Err(e) => return check_config_error(&e, text),
    };
    // Loading is a function of the text.
    match Config::from_yaml(text, ORIGIN) {
        Ok(again) => assert_eq!(config, again, "the same text loaded differently"),
        Err(e) => panic!("the same text loaded, then failed: {e}"),
    }
    let _ = config.summary();
    let _ = config.check_listeners();
    let _ = config.watched_files();
    // "A validated spec always builds" (LimitsSpec::table).
    let hasher = KeyHasher::with_secret(SECRET);
    let table = match config.live.limits.table(&hasher) {
        Ok(t) => t.with_rls(config.live.rls.clone()),
        Err(e) => panic!("a loaded config's table does not build: {e}"),
    };
    // Every plan's limits answer a few checks without overflow: the
    // default plan's and the first static keys'.
    let engine = Engine::new(
        table,
        hasher,
        StoreLimits {
            max_cells: MAX_CELLS,
        },
        Arc::new(ManualClock::new(T0)),
    );
    let keys = std::iter::once("any key").chain(
        config
            .live
            .limits
            .keys
            .iter()
            .take(4)
            .map(|(k, _)| k.as_str()),
    );
    for key in keys {
        for cost in [1, 1000, u64::MAX] {
            let d = engine.check(&core::Request::new(key, cost));
            check_decision(&d);
            let _ = engine.view().refund(&core::Request::new(key, cost));
        }
    }
}

/// What every engine decision must satisfy.
fn check_decision(d: &core::Decision) {
    assert!(
        d.limit == 0 || d.remaining <= d.limit,
        "remaining above the limit: {d:?}"
    );
    if d.allowed {
        assert_eq!(d.reason, None, "{d:?}");
        assert_eq!(d.retry_after, Some(0), "{d:?}");
    } else {
        assert!(d.reason.is_some(), "{d:?}");
    }
}

/// A refused config: one line, naming the file it is about.
fn check_config_error(e: &ConfigError, text: &str) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "a multi-line error: {msg:?}");
    let origin = match e {
        ConfigError::Read { path, .. } => path.as_str(),
        _ => match e.diagnostic() {
            Some(d) => {
                assert!(!d.reason.is_empty(), "an error without a reason: {msg:?}");
                d.origin.as_str()
            }
            None => "",
        },
    };
    assert!(
        msg.starts_with(origin) && !origin.is_empty(),
        "an error that does not start with its file: {msg:?}"
    );
    // Only a file the config names can be another origin.
    assert!(
        origin == ORIGIN || text.contains("rls_files"),
        "an error about another file: {msg:?}"
    );
    if origin == ORIGIN
        && let Some(d) = e.diagnostic()
    {
        check_location(d, text);
    }
}

/// A located error points into the text: its line exists (one past the
/// last is the end of the text) and so does its column. Lines break at
/// `\n` and `\r` (YAML's breaks; `\r\n` counted twice, which only
/// loosens the check); columns are checked without `\r`.
fn check_location(d: &Diagnostic, text: &str) {
    let Some(line) = d.line else {
        return;
    };
    let lines: Vec<&str> = text.split(['\n', '\r']).collect();
    let at = usize::try_from(line).ok().and_then(|l| l.checked_sub(1));
    let Some(this) = at.and_then(|i| lines.get(i)) else {
        panic!("line {line} of a {}-line text: {d}", lines.len());
    };
    if let Some(column) = d.column
        && !text.contains('\r')
    {
        // 1-based, in characters or bytes: at most one past the end.
        let len = this.len() as u64;
        assert!(
            column >= 1 && column <= len + 1,
            "column {column} of a {len}-byte line: {d}"
        );
    }
}

/// The `rls_file` target: one envoyproxy/ratelimit file's text.
pub fn rls_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let load = |opts: RlsOptions, taken: &[String]| {
        let mut domains = RlsDomains::default();
        rls_file::add(&mut domains, text, ORIGIN, opts, taken).map(|()| domains)
    };
    let opts = RlsOptions::default();
    let domains = match load(opts, &[]) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "a multi-line error: {msg:?}");
            assert!(
                msg.starts_with(ORIGIN),
                "an error that does not name the file: {msg:?}"
            );
            if let Some(d) = e.diagnostic() {
                check_location(d, text);
            }
            return;
        }
    };
    match load(opts, &[]) {
        Ok(again) => assert_eq!(domains, again, "the same text loaded differently"),
        Err(e) => panic!("the same text loaded, then failed: {e}"),
    }
    let [domain] = domains.sorted()[..] else {
        panic!("one file gave other than one domain");
    };
    assert!(!domain.name.is_empty());
    assert_eq!(domain.files, [ORIGIN]);
    let _ = domain.root.rules();
    // The same domain again, from another file, is refused unless merging
    // is on; a domain the plans answer is refused.
    let mut twice = domains.clone();
    assert!(rls_file::add(&mut twice, text, "again.yaml", opts, &[]).is_err());
    assert!(load(opts, std::slice::from_ref(&domain.name)).is_err());
    let merge = RlsOptions {
        merge_domains: true,
        ..opts
    };
    let mut merged = domains.clone();
    let _ = rls_file::add(&mut merged, text, "again.yaml", merge, &[]);
    lookups_match_the_file(text, domains);
}

/// Most descriptors of one file asked for in [`lookups_match_the_file`].
const MAX_LOOKUPS: usize = 64;

/// A loaded file answers as it reads: every descriptor of the file is
/// asked for once (a value it matches, for wildcards and bare keys) on a
/// fresh Envoy service, and the answer must be the rule that a plain
/// reading of the YAML, with envoyproxy/ratelimit's precedence (exact
/// value, then the first matching `prefix*` in file order, then the bare
/// key), says applies: its name, requests per unit and unit, OK or
/// OVER_LIMIT (a first hit is over only at 0 per unit, outside shadow
/// mode), `unlimited`, or no limit.
///
/// The reading is [`serde_json::Value`] from serde-saphyr; files whose keys
/// or values are not plain strings there (numbers, booleans: their text
/// form is the parser's business) are left out.
fn lookups_match_the_file(text: &str, domains: RlsDomains) {
    let Ok(doc) = serde_saphyr::from_str::<serde_json::Value>(text) else {
        return;
    };
    let Some(name) = doc.get("domain").and_then(|d| d.as_str()) else {
        return;
    };
    let Some(root) = Tree::level(doc.get("descriptors")) else {
        return;
    };
    let mut asks = Vec::new();
    Tree::asks(&root, &mut Vec::new(), &mut asks);
    asks.dedup();
    let fx = fixture();
    let mut config = (*fx.native).clone();
    config.live.envoy.domains.clear();
    config.live.requests = RequestCaps::default();
    config.live.rls = domains;
    let service = EnvoyRlsService::new(engine(&Arc::new(config), &fx.metrics));
    let caps = RequestCaps::default();
    for entries in asks.iter().take(MAX_LOOKUPS) {
        if entries.len() > caps.max_entries
            || entries
                .iter()
                .any(|(k, v)| k.len() > caps.max_entry_bytes || v.len() > caps.max_entry_bytes)
        {
            continue;
        }
        let request = RateLimitRequest {
            domain: name.to_owned(),
            descriptors: vec![RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(key, value)| Entry {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                ..Default::default()
            }],
            hits_addend: 1,
        };
        let answer = fx
            .runtime
            .block_on(service.should_rate_limit(tonic::Request::new(request)));
        let answer = match answer {
            Ok(a) => a.into_inner().into_response(),
            Err(status) => panic!("{entries:?} refused: {status:?}"),
        };
        let [status] = &answer.statuses[..] else {
            panic!("{entries:?}: not one status");
        };
        let code = RlsCode::try_from(status.code).expect("a known code");
        let limit = status
            .current_limit
            .as_ref()
            .map(|l| (l.name.as_str(), l.requests_per_unit, l.unit));
        match Tree::lookup(&root, entries) {
            None => {
                assert_eq!(code, RlsCode::Ok, "{entries:?}: no rule, yet {status:?}");
                assert_eq!(limit, None, "{entries:?}: no rule, yet {status:?}");
            }
            Some(Rule::Unlimited) => {
                assert_eq!(code, RlsCode::Ok, "{entries:?}: unlimited, yet {status:?}");
                assert_eq!(status.limit_remaining, u32::MAX, "{entries:?}: {status:?}");
                assert_eq!(limit, None, "{entries:?}: unlimited, yet {status:?}");
            }
            Some(Rule::Limit {
                name,
                rpu,
                unit,
                shadow,
            }) => {
                let over = *rpu == 0 && !*shadow;
                let expected = if over {
                    RlsCode::OverLimit
                } else {
                    RlsCode::Ok
                };
                assert_eq!(code, expected, "{entries:?}: {status:?}");
                assert_eq!(
                    limit,
                    Some((name.as_str(), *rpu, *unit)),
                    "{entries:?}: {status:?}"
                );
            }
        }
    }
}

/// A descriptor tree as the YAML reads, for [`lookups_match_the_file`].
struct Tree {
    key: String,
    /// `None` or empty: any value.
    value: Option<String>,
    rule: Option<Rule>,
    children: Vec<Tree>,
}

/// What a descriptor's `rate_limit` says.
#[derive(Debug)]
enum Rule {
    Unlimited,
    Limit {
        name: String,
        rpu: u32,
        unit: i32,
        shadow: bool,
    },
}

impl Tree {
    /// A `descriptors` list; `None` when something is not as expected.
    fn level(v: Option<&serde_json::Value>) -> Option<Vec<Tree>> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Some(Vec::new());
        };
        v.as_array()?.iter().map(Tree::node).collect()
    }

    fn node(v: &serde_json::Value) -> Option<Tree> {
        let text = |field: &str| match v.get(field) {
            None | Some(serde_json::Value::Null) => Some(None),
            Some(serde_json::Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        let key = text("key")??;
        let value = text("value")?;
        let shadow = v
            .get("shadow_mode")
            .and_then(|s| s.as_bool())
            .unwrap_or(false);
        let rule = match v.get("rate_limit") {
            None | Some(serde_json::Value::Null) => None,
            Some(r) => {
                if r.get("unlimited").and_then(|u| u.as_bool()) == Some(true) {
                    Some(Rule::Unlimited)
                } else {
                    let name = match r.get("name") {
                        None | Some(serde_json::Value::Null) => String::new(),
                        Some(n) => n.as_str()?.to_owned(),
                    };
                    let unit = Unit::parse(r.get("unit")?.as_str()?)? as i32;
                    let rpu = match r.get("requests_per_unit") {
                        None | Some(serde_json::Value::Null) => 0,
                        Some(n) => u32::try_from(n.as_u64()?).ok()?,
                    };
                    Some(Rule::Limit {
                        name,
                        rpu,
                        unit,
                        shadow,
                    })
                }
            }
        };
        Some(Tree {
            key,
            value,
            rule,
            children: Tree::level(v.get("descriptors"))?,
        })
    }

    /// A value this node matches.
    fn sample(&self) -> String {
        match self.value.as_deref() {
            None | Some("") => "any value".to_owned(),
            Some(v) => match v.strip_suffix('*') {
                Some(prefix) => format!("{prefix}, and more"),
                None => v.to_owned(),
            },
        }
    }

    /// Every path from the root to a node, as request entries.
    fn asks(
        level: &[Tree],
        above: &mut Vec<(String, String)>,
        out: &mut Vec<Vec<(String, String)>>,
    ) {
        for t in level {
            above.push((t.key.clone(), t.sample()));
            out.push(above.clone());
            Tree::asks(&t.children, above, out);
            above.pop();
        }
    }

    /// envoyproxy/ratelimit's choice at one level.
    fn step<'t>(level: &'t [Tree], key: &str, value: &str) -> Option<&'t Tree> {
        let of_key = || level.iter().filter(move |t| t.key == key);
        let exact = of_key().find(|t| {
            t.value
                .as_deref()
                .is_some_and(|v| !v.is_empty() && !v.ends_with('*') && v == value)
        });
        let prefix = || {
            of_key().find(|t| {
                t.value
                    .as_deref()
                    .and_then(|v| v.strip_suffix('*'))
                    .is_some_and(|p| value.starts_with(p))
            })
        };
        let any = || of_key().find(|t| t.value.as_deref().is_none_or(str::is_empty));
        exact.or_else(prefix).or_else(any)
    }

    fn lookup<'t>(level: &'t [Tree], entries: &[(String, String)]) -> Option<&'t Rule> {
        let ((key, value), rest) = entries.split_first()?;
        let node = Tree::step(level, key, value)?;
        if rest.is_empty() {
            node.rule.as_ref()
        } else {
            Tree::lookup(&node.children, rest)
        }
    }
}

// ---------------------------------------------------------------------------
// The gRPC front doors.

/// Both services' config: a plan with a bucket and a quota, one with a
/// bucket alone, one without limits, small caps, and Envoy domain
/// `plans` answered by the plans. Every limit's burst is its rate, which
/// `envoy_rls` relies on (`remaining <= requests_per_unit`).
pub const CONFIG: &str = r#"
default_plan: free
plans:
  free:
    limits:
      - { name: per-second, rate: 5, per: second, burst: 5 }
      - { name: daily, quota: 20, per: day }
  gold:
    limits:
      - { name: per-minute, rate: 100, per: minute, burst: 100 }
  internal:
    limits: []
keys:
  "gold-key": { plan: gold }
  "internal-key": { plan: internal }
requests:
  max_key_bytes: 32
  max_cost: 1000
  max_batch: 8
  max_descriptors: 4
  max_entries: 4
  max_entry_bytes: 32
response_headers: both
envoy:
  domains: [plans]
"#;

/// The Envoy service's file domain `edge`: the example limits file.
pub const EDGE_LIMITS: &str = include_str!("../../examples/envoy/limits/edge.yaml");

/// A token-bucket file domain, `tb`, with a nested rule and `replaces`.
pub const TB_LIMITS: &str = r#"
domain: tb
algorithm: token_bucket
descriptors:
  - key: user
    rate_limit: { name: per-user, unit: second, requests_per_unit: 3 }
    descriptors:
      - key: path
        value: /admin*
        rate_limit: { unit: minute, requests_per_unit: 2, replaces: [{ name: per-user }] }
"#;

/// What every input's services are built from, parsed once.
struct Fixture {
    native: Arc<Config>,
    envoy: Arc<Config>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    /// Held so that `shutdown` never fires.
    _trigger: Trigger,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let native = Config::from_yaml(CONFIG, "native.yaml").expect("CONFIG");
        let mut envoy = Config::from_yaml(CONFIG, "envoy.yaml").expect("CONFIG");
        for (text, origin) in [(EDGE_LIMITS, "edge.yaml"), (TB_LIMITS, "tb.yaml")] {
            let opts = RlsOptions {
                algorithm: envoy.live.envoy.algorithm,
                merge_domains: false,
            };
            rls_file::add(
                &mut envoy.live.rls,
                text,
                origin,
                opts,
                &envoy.live.envoy.domains,
            )
            .expect("fixture limits file");
        }
        let (trigger, shutdown) = shutdown::channel();
        Fixture {
            native: Arc::new(native),
            envoy: Arc::new(envoy),
            metrics: Arc::new(Metrics::new()),
            shutdown,
            _trigger: trigger,
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime"),
        }
    })
}

/// A fresh engine over `config` (its table, its settings), its clock at
/// [`T0`], counting in `metrics`.
fn engine(config: &Arc<Config>, metrics: &Arc<Metrics>) -> Arc<Engine> {
    let hasher = KeyHasher::with_secret(SECRET);
    let table = config
        .live
        .limits
        .table(&hasher)
        .expect("fixture table")
        .with_rls(config.live.rls.clone());
    let limits = StoreLimits {
        max_cells: MAX_CELLS,
    };
    let engine = Engine::new(table, hasher, limits, Arc::new(ManualClock::new(T0)));
    Arc::new(
        engine
            .with_config(Arc::clone(config))
            .with_metrics(Arc::clone(metrics)),
    )
}

/// One gRPC message in its wire frame (uncompressed).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// What a call came back with: the messages in order and the final status.
struct Reply {
    messages: Vec<Bytes>,
    status: tonic::Status,
}

/// Sends `body` (gRPC frames) to `path` on `server`, as tonic's transport
/// would hand it over, and reads the whole answer.
async fn call<S>(mut server: S, path: &str, body: Vec<u8>) -> Reply
where
    S: tower_service::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
{
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))
        .expect("a well-formed HTTP request");
    let response = match server.call(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    // A refusal before any message comes as "trailers only", in headers.
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        return Reply {
            messages: Vec::new(),
            status,
        };
    }
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(status) => panic!("the response body failed: {status:?}"),
    };
    let status = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        .expect("a gRPC status in the trailers");
    let mut data = collected.to_bytes();
    let mut messages = Vec::new();
    while data.has_remaining() {
        assert!(data.remaining() >= 5, "a truncated response frame");
        let compressed = data.get_u8();
        assert_eq!(compressed, 0, "an unasked-for compressed response");
        let len = data.get_u32() as usize;
        assert!(data.remaining() >= len, "a truncated response frame");
        messages.push(data.split_to(len));
    }
    Reply { messages, status }
}

/// Only these codes may answer: OK, and INVALID_ARGUMENT for the caller's
/// mistakes. Anything else (INTERNAL above all) is a finding.
fn check_code(status: &tonic::Status) {
    assert!(
        matches!(status.code(), Code::Ok | Code::InvalidArgument),
        "answered {status:?}"
    );
}

fn assert_invalid(reply: &Reply, why: &str) {
    assert_eq!(
        reply.status.code(),
        Code::InvalidArgument,
        "{why}: answered {:?}",
        reply.status
    );
    assert!(reply.messages.is_empty(), "{why}: a refusal with answers");
}

/// The kinds of `native_api` input, chosen by its first byte (mod 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeCall {
    /// The rest is one `CheckRequest`.
    Check = 0,
    /// The rest is one `CheckBatchRequest`.
    Batch = 1,
    /// The rest is a `CheckStream`'s messages, each after a one-byte
    /// length ([`stream_input`]).
    Stream = 2,
}

/// A `native_api` input for a stream of encoded messages (each at most
/// 255 bytes).
pub fn stream_input(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![NativeCall::Stream as u8];
    for m in messages {
        let len = u8::try_from(m.len()).expect("a stream message of at most 255 bytes");
        out.push(len);
        out.extend_from_slice(m);
    }
    out
}

/// Splits a stream input's rest into its messages (a last one cut short
/// keeps what there is).
fn stream_messages(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let (m, next) = tail.split_at(usize::from(len).min(tail.len()));
        out.push(m);
        rest = next;
    }
    out
}

/// Whether the native API must refuse `req` under `caps`, read here
/// independently of the service's own validation.
fn native_invalid(req: &CheckRequest, caps: &RequestCaps) -> bool {
    req.key.is_empty() || req.key.len() > caps.max_key_bytes || req.cost > caps.max_cost
}

/// What every native answer to a valid check must satisfy.
fn check_answer(req: &CheckRequest, r: &CheckResponse) {
    assert_eq!(r.id, req.id, "an answer with another check's id");
    assert!(r.error.is_empty(), "a valid check answered with an error");
    assert!(
        r.limit == 0 || r.remaining <= r.limit,
        "remaining above the limit: {r:?}"
    );
    let reason = DenyReason::try_from(r.reason).expect("a known deny reason");
    assert_ne!(reason, DenyReason::InvalidRequest, "{r:?}");
    assert_eq!(r.allowed, reason == DenyReason::Unspecified, "{r:?}");
    assert!(r.reset_after.is_some(), "{r:?}");
    if r.allowed {
        assert_eq!(
            r.retry_after.map(|d| (d.seconds, d.nanos)),
            Some((0, 0)),
            "{r:?}"
        );
    }
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> M {
    M::decode(bytes).unwrap_or_else(|e| panic!("an undecodable {what}: {e}"))
}

/// The `native_api` target.
pub fn native_api(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let caps = &fx.native.live.requests;
    let service = NativeService::new(engine(&fx.native, &fx.metrics), fx.shutdown.clone());
    let server = RateLimiterServer::new(service);
    let malformed = |reply: &Reply| {
        assert_invalid(reply, "an undecodable message");
        assert!(
            reply.status.message().starts_with("malformed request: "),
            "{:?}",
            reply.status
        );
    };
    fx.runtime.block_on(async {
        match kind % 3 {
            0 => {
                let path = "/quotad.v1.RateLimiter/Check";
                let reply = call(server, path, frame(rest)).await;
                check_code(&reply.status);
                let Ok(req) = CheckRequest::decode(rest) else {
                    return malformed(&reply);
                };
                if native_invalid(&req, caps) {
                    return assert_invalid(&reply, "a check over the caps");
                }
                assert_eq!(reply.status.code(), Code::Ok, "{:?}", reply.status);
                let [answer] = &reply.messages[..] else {
                    panic!("a unary call with {} answers", reply.messages.len());
                };
                check_answer(&req, &decode(answer, "CheckResponse"));
            }
            1 => {
                let path = "/quotad.v1.RateLimiter/CheckBatch";
                let reply = call(server, path, frame(rest)).await;
                check_code(&reply.status);
                let Ok(batch) = CheckBatchRequest::decode(rest) else {
                    return malformed(&reply);
                };
                if batch.checks.len() > caps.max_batch
                    || batch.checks.iter().any(|c| native_invalid(c, caps))
                {
                    return assert_invalid(&reply, "a batch over the caps");
                }
                assert_eq!(reply.status.code(), Code::Ok, "{:?}", reply.status);
                let [answer] = &reply.messages[..] else {
                    panic!("a unary call with {} answers", reply.messages.len());
                };
                let answer: CheckBatchResponse = decode(answer, "CheckBatchResponse");
                assert_eq!(answer.results.len(), batch.checks.len());
                for (req, r) in batch.checks.iter().zip(&answer.results) {
                    check_answer(req, r);
                }
            }
            _ => {
                let messages = stream_messages(rest);
                let body = messages.iter().flat_map(|m| frame(m)).collect();
                let path = "/quotad.v1.RateLimiter/CheckStream";
                let reply = call(server, path, body).await;
                check_code(&reply.status);
                // Answered in order until the first undecodable message,
                // which ends the stream with INVALID_ARGUMENT.
                let mut answers = reply.messages.iter();
                for m in &messages {
                    let Ok(req) = CheckRequest::decode(*m) else {
                        assert!(
                            answers.next().is_none(),
                            "answers after a malformed message"
                        );
                        assert_eq!(reply.status.code(), Code::InvalidArgument);
                        assert!(reply.status.message().starts_with("malformed request: "));
                        return;
                    };
                    let answer = answers.next().expect("an answer for every message");
                    let r: CheckResponse = decode(answer, "CheckResponse");
                    if native_invalid(&req, caps) {
                        assert_eq!(r.id, req.id);
                        assert_eq!(r.reason, DenyReason::InvalidRequest as i32, "{r:?}");
                        assert!(!r.allowed && !r.error.is_empty(), "{r:?}");
                    } else {
                        check_answer(&req, &r);
                    }
                }
                assert!(answers.next().is_none(), "more answers than messages");
                assert_eq!(reply.status.code(), Code::Ok, "{:?}", reply.status);
            }
        }
    });
}

/// The `envoy_rls` target: one `RateLimitRequest`'s bytes.
pub fn envoy_rls(data: &[u8]) {
    let fx = fixture();
    let config = &fx.envoy;
    let service = EnvoyRlsService::new(engine(config, &fx.metrics));
    // Mounted as `quotad serve` mounts it (src/app/servers.rs), with
    // tonic's default cap on a message (4 MiB), as the native target's.
    let server = RlsServer::new(service, 4 * 1024 * 1024);
    let path = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let reply = fx.runtime.block_on(call(server, path, frame(data)));
    check_code(&reply.status);
    let Ok(req) = RateLimitRequest::decode(data) else {
        assert_invalid(&reply, "an undecodable message");
        assert!(
            reply.status.message().starts_with("malformed request: "),
            "{:?}",
            reply.status
        );
        return;
    };
    let caps = &config.live.requests;
    if req.domain.is_empty()
        || req.descriptors.is_empty()
        || req.descriptors.len() > caps.max_descriptors
    {
        return assert_invalid(&reply, "a request over the caps");
    }
    let ours = config.live.envoy.domains.contains(&req.domain)
        || config.live.rls.get(&req.domain).is_some();
    if !ours {
        assert_eq!(reply.status.code(), Code::Ok, "another service's domain");
    }
    if reply.status.code() != Code::Ok {
        return; // INVALID_ARGUMENT, checked above; finer caps are the service's.
    }
    let [answer] = &reply.messages[..] else {
        panic!("a unary call with {} answers", reply.messages.len());
    };
    let r: RateLimitResponse = decode(answer, "RateLimitResponse");
    assert_eq!(
        r.statuses.len(),
        req.descriptors.len(),
        "a status per descriptor"
    );
    let mut over = false;
    for s in &r.statuses {
        let code = RlsCode::try_from(s.code).expect("a known code");
        assert!(matches!(code, RlsCode::Ok | RlsCode::OverLimit), "{s:?}");
        over |= code == RlsCode::OverLimit;
        if !ours {
            assert_eq!(code, RlsCode::Ok, "another service's domain limited");
        }
        if let Some(limit) = &s.current_limit {
            // Every limit here holds at most its requests_per_unit (no
            // burst above the rate), so what remains cannot be more.
            assert!(
                s.limit_remaining <= limit.requests_per_unit,
                "remaining above the limit: {s:?}"
            );
        }
    }
    let overall = RlsCode::try_from(r.overall_code).expect("a known overall code");
    let expected = if over {
        RlsCode::OverLimit
    } else {
        RlsCode::Ok
    };
    assert_eq!(
        overall, expected,
        "overall_code disagrees with the statuses"
    );
}
