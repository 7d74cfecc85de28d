//! envoyproxy/ratelimit's own test suite, ported: its config fixtures
//! (tests/fixtures/rls/peer, copied verbatim with a provenance line; see
//! the README there), the expectations of its `config_test.go`, its
//! service tests' scenarios and its integration test, each asked of a
//! real quotad over real gRPC. The expectations are the peer's; the code
//! is ours.
//!
//! Every daemon starts at T0 = 2026-11-27T12:00:00Z on a manual clock: a
//! whole second, minute, hour and 5 minutes, and noon, so a fresh window
//! of one unit has exactly one unit left and a day window 12 h.

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Value;
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::transport::Channel;

use crate::support::TestDaemon;
use crate::support::rls::{
    descriptor, headers, hv, no_limit, request, rl, st, unlimited, with_hits, with_limit,
};

/// `config_test.go`'s fixtures: lookups, stats keys, shadow mode,
/// wildcards, shared thresholds, merged domains, unit multipliers.
mod config_files;
/// The integration test's scenarios, with its `runtime` config files.
mod integration;
/// Fixtures the peer refuses to load, refused by quotad naming the file.
mod load_errors;
/// The Envoy end-to-end scripts (`integration-test/scripts/*.sh`): the
/// RLS requests Envoy makes for their curl requests, and their outcomes.
mod scripts;
/// The service tests' scenarios: overall codes, shadow and quota mode,
/// dynamic metadata, response headers.
mod service;

type Client = RateLimitServiceClient<Channel>;

/// 12 h: from T0 (noon UTC) to the end of the day window.
const HALF_DAY: i64 = 43_200;

/// The directory of the peer's fixtures.
fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rls/peer")
}

/// A peer fixture by its base name.
fn fixture(name: &str) -> PathBuf {
    peer_dir().join(name)
}

/// A config loading `files` (absolute paths) through `rls_files`, with a
/// plan domain `edge` (plan `free`: 2 per minute) and `envoy` lines
/// (each `key: value`) added to the `envoy` section.
fn config(files: &[PathBuf], envoy: &[&str]) -> String {
    let files = files
        .iter()
        .map(|f| format!("{:?}", f.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let envoy: String = envoy.iter().map(|l| format!("  {l}\n")).collect();
    format!(
        r#"
default_plan: free
plans:
  free:
    limits:
      - {{ name: per-minute, rate: 2, per: minute }}
envoy:
  domains: [edge]
{envoy}rls_files: [{files}]
"#
    )
}

/// A daemon answering the peer fixtures `names`, with `envoy` lines.
async fn daemon(names: &[&str], envoy: &[&str]) -> (TestDaemon, Client) {
    let files: Vec<PathBuf> = names.iter().map(|n| fixture(n)).collect();
    daemon_with(&files, envoy).await
}

/// A daemon answering the files `files` (absolute paths).
async fn daemon_with(files: &[PathBuf], envoy: &[&str]) -> (TestDaemon, Client) {
    let d = TestDaemon::with_config(&config(files, envoy)).await;
    let c = RateLimitServiceClient::new(d.channel().await);
    (d, c)
}

async fn ask(c: &mut Client, r: RateLimitRequest) -> RateLimitResponse {
    c.should_rate_limit(r).await.expect("rls ok").into_inner()
}

/// One request for `domain` with one descriptor, request hits_addend 1.
async fn one(c: &mut Client, domain: &str, entries: &[(&str, &str)]) -> RateLimitResponse {
    ask(c, request(domain, vec![descriptor(entries)], 1)).await
}

/// The response's overall code.
fn overall(r: &RateLimitResponse) -> Code {
    Code::try_from(r.overall_code).expect("a known code")
}

/// A protobuf `Value` as JSON, whole numbers as integers (so expectations
/// can be written with `serde_json::json!`).
fn json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9e15 => (*n as i64).into(),
        Some(Kind::NumberValue(n)) => (*n).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(json).collect(),
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

/// The response's `dynamic_metadata` as JSON (`None`: not sent).
fn dynamic_metadata(r: &RateLimitResponse) -> Option<serde_json::Value> {
    r.dynamic_metadata.as_ref().map(|s| {
        json(&Value {
            kind: Some(Kind::StructValue(s.clone())),
        })
    })
}

/// One descriptor series of `quotad_rls_descriptor_hits_total`: the
/// peer's per-limit stats, in hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stats {
    total_hits: u64,
    over_limit: u64,
    near_limit: u64,
    within_limit: u64,
    shadow_mode: u64,
}

impl Stats {
    /// `n` hits, all within the limit and none near it.
    fn within(n: u64) -> Stats {
        Stats {
            total_hits: n,
            within_limit: n,
            ..Stats::default()
        }
    }
}

/// A scrape of `/metrics`.
struct Scrape(String);

const HITS: &str = "quotad_rls_descriptor_hits_total";

impl Scrape {
    async fn of(d: &TestDaemon) -> Scrape {
        let (status, body) = d.http_get("/metrics").await;
        assert_eq!(status, 200);
        Scrape(body)
    }

    /// `domain`'s series `descriptor` (the peer's stats key without the
    /// domain); panics if there is none.
    fn stats(&self, domain: &str, descriptor: &str) -> Stats {
        let get = |result: &str| {
            let series = format!(
                r#"{HITS}{{domain="{domain}",descriptor="{descriptor}",result="{result}"}}"#
            );
            crate::support::sample(&self.0, &series)
                .unwrap_or_else(|| panic!("no {series} in\n{}", self.names(domain).join("\n")))
                as u64
        };
        Stats {
            total_hits: get("total_hits"),
            over_limit: get("over_limit"),
            near_limit: get("near_limit"),
            within_limit: get("within_limit"),
            shadow_mode: get("shadow_mode"),
        }
    }

    /// The descriptor names `domain` has series for, sorted, but for
    /// quotad's overflow series `(other)` (which every domain has).
    fn names(&self, domain: &str) -> Vec<String> {
        let prefix = format!(r#"{HITS}{{domain="{domain}",descriptor=""#);
        let mut names: Vec<String> = self
            .0
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|l| l.split_once(r#"",result="total_hits"}"#))
            .map(|(name, _)| name.to_owned())
            .filter(|name| name != "(other)")
            .collect();
        names.sort();
        names
    }
}

/// `names` as owned, sorted strings.
fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    v.sort();
    v
}
