//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy's
//! Rate Limit Service API in front of the same engine.
//!
//! A request's domain decides how its descriptors are limited:
//!
//! - **Domains from envoyproxy/ratelimit files** (`rls_files`, `--limits`)
//!   behave as envoyproxy/ratelimit does: each descriptor is matched
//!   against the domain's descriptor tree ([`crate::limits::rls`]); the
//!   matched rule's limit counts per distinct descriptor (domain and every
//!   entry, as envoyproxy's cache key), in fixed windows by default.
//!   `unlimited` rules answer OK with `limit_remaining` 4294967295; a
//!   matched rule named in another matched rule's `replaces` is dropped
//!   and its counter untouched; `shadow_mode` rules count and report but
//!   answer OK.
//! - **Plan domains** (`envoy.domains`): the value of the entry named by
//!   `envoy.key_entry` (default `api_key`) is an API key and its plan
//!   decides. A descriptor whose only entry is the key shares its buckets
//!   with the native API's checks of that key; one with more entries gets
//!   its own buckets under the same plan. A descriptor without the key
//!   entry has no limit.
//! - **Other domains** are answered OK without validating their
//!   descriptors (Envoy's convention; our caps are not another service's).
//!
//! In both kinds of domain, a descriptor's `limit` override
//! (`RateLimitOverride`) replaces whatever the config says for it, as a
//! limit on the descriptor's own counter, never in shadow mode.
//!
//! The cost is the descriptor's own `hits_addend` when set (0 checks
//! without consuming), else the request's `hits_addend` (0 means 1).
//! `is_negative_hits` gives the units back instead of spending them.
//! Descriptors are independent, as in envoyproxy/ratelimit: an allowed
//! descriptor is charged even when another one is over limit.
//! `overall_code` is OVER_LIMIT if any descriptor is, unless global shadow
//! mode (`envoy.shadow`, `--shadow`) turns it to OK; descriptor statuses
//! still say OVER_LIMIT then. `response_headers_to_add` carries the
//! configured RateLimit headers ([`super::headers`]).

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as PbUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use tonic::{Request, Response, Status};

use super::decide::{self, Strict};
use super::error::RequestError;
use super::headers::{self, Standing};
use super::{duration_parts, request_id, validate};
use crate::config::RequestCaps;
use crate::control::LiveConfig;
use crate::core::clock::NANOS_PER_SEC;
use crate::core::clock::Stopwatch;
use crate::core::window::Window;
use crate::core::{self, Decision, Limiter, Nanos, Snapshot, Source, Verdict};
use crate::limits::rls::{Action, Algorithm, Domain, RlsLimit, Rule, Unit};
use crate::limits::{Limit, LimitKind};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{Api, Outcome as Counted};

/// The Envoy RLS v3 service.
#[derive(Debug, Clone)]
pub struct EnvoyRlsService {
    limiter: Arc<Limiter>,
    config: LiveConfig,
    strict: Option<Strict>,
    metrics: Arc<Metrics>,
}

impl EnvoyRlsService {
    /// A service deciding with `limiter` under the settings of the config
    /// in effect (`requests`, `envoy`, `response_headers`), read per
    /// request so a reload applies at once. Every request is counted in
    /// `metrics`.
    pub fn new(limiter: Arc<Limiter>, config: LiveConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            limiter,
            config,
            metrics,
            strict: None,
        }
    }

    /// The service deciding plans with strict limits in Redis.
    pub fn with_strict(mut self, strict: Strict) -> Self {
        self.strict = Some(strict);
        self
    }
}

/// One request descriptor, validated.
struct Desc<'a> {
    entries: &'a [Entry],
    cost: u64,
    refund: bool,
    /// The request's `limit` override.
    limit: Option<(u32, Unit)>,
    /// In a plan domain, the API key entry's value.
    api_key: Option<&'a str>,
}

impl Desc<'_> {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
    }
}

/// How the request's domain is limited.
enum Mode<'t> {
    /// A domain from envoyproxy/ratelimit files.
    Rules(&'t Domain),
    /// A plan domain (`envoy.domains`).
    Plans,
}

/// Checks the request's shape; `None` when its domain is not ours.
fn validate_request<'a>(
    req: &'a RateLimitRequest,
    caps: &RequestCaps,
    key_entry: Option<&str>,
) -> Result<Vec<Desc<'a>>, RequestError> {
    let request_cost = u64::from(req.hits_addend.max(1));
    req.descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| descriptor(i, d, request_cost, caps, key_entry))
        .collect()
}

fn descriptor<'a>(
    i: usize,
    d: &'a RateLimitDescriptor,
    request_cost: u64,
    caps: &RequestCaps,
    key_entry: Option<&str>,
) -> Result<Desc<'a>, RequestError> {
    validate::count(
        || format!("descriptors[{i}].entries"),
        d.entries.len(),
        caps.max_entries,
    )?;
    if d.entries.is_empty() {
        return Err(RequestError::Empty {
            field: format!("descriptors[{i}].entries"),
        });
    }
    let mut api_key = None;
    for (j, e) in d.entries.iter().enumerate() {
        let at = |f: &str| format!("descriptors[{i}].entries[{j}].{f}");
        if e.key.is_empty() {
            return Err(RequestError::Empty { field: at("key") });
        }
        if Some(e.key.as_str()) == key_entry {
            if api_key.is_some() {
                return Err(RequestError::Unsupported {
                    field: at("key"),
                    why: "the API key entry appears more than once",
                });
            }
            validate::key(|| at("value"), &e.value, caps)?;
            api_key = Some(e.value.as_str());
            continue;
        }
        for (f, v) in [("key", &e.key), ("value", &e.value)] {
            if v.len() > caps.max_entry_bytes {
                return Err(RequestError::TooLong {
                    field: at(f),
                    len: v.len(),
                    max: caps.max_entry_bytes,
                });
            }
        }
    }
    let cost = d.hits_addend.as_ref().map_or(request_cost, |h| h.value);
    validate::cost(|| format!("descriptors[{i}].hits_addend"), cost, caps)?;
    let limit = d
        .limit
        .map(|o| {
            let unit = Unit::from_number(o.unit).ok_or_else(|| RequestError::Invalid {
                field: format!("descriptors[{i}].limit.unit"),
                why: format!(
                    "unknown unit {} (expected SECOND, MINUTE, HOUR, DAY, MONTH, YEAR or WEEK)",
                    o.unit
                ),
            })?;
            Ok((o.requests_per_unit, unit))
        })
        .transpose()?;
    Ok(Desc {
        entries: &d.entries,
        cost,
        refund: d.is_negative_hits,
        limit,
        api_key,
    })
}

/// What a descriptor resolved to before anything is counted.
enum Resolved<'t> {
    /// No limit applies (no match, or replaced): OK.
    Nothing,
    /// An `unlimited` rule.
    Unlimited(&'t Rule),
    /// A counted limit: from a rule, or a request override (no rule).
    Limit(Cow<'t, RlsLimit>, Option<&'t Rule>),
    /// A plan domain's API key: its plan decides.
    Plan(&'t str),
}

impl<'t> Resolved<'t> {
    fn rule(&self) -> Option<&'t Rule> {
        match self {
            Resolved::Unlimited(r) => Some(r),
            Resolved::Limit(_, r) => *r,
            _ => None,
        }
    }
}

/// The limit a request's `limit` override asks for, counting as the
/// domain's limits do.
fn override_limit(
    i: usize,
    (rpu, unit): (u32, Unit),
    algorithm: Algorithm,
) -> Result<RlsLimit, RequestError> {
    RlsLimit::new(rpu, unit, algorithm, None, "override".to_owned()).map_err(|e| {
        RequestError::Invalid {
            field: format!("descriptors[{i}].limit.requests_per_unit"),
            why: e.to_string(),
        }
    })
}

/// Resolves every descriptor, then drops the limits other matched rules
/// replace.
fn resolve<'t>(
    mode: &Mode<'t>,
    descs: &[Desc<'t>],
    algorithm: Algorithm,
) -> Result<Vec<Resolved<'t>>, RequestError> {
    let mut out = descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if let Some(o) = d.limit {
                let algorithm = match mode {
                    Mode::Rules(domain) => domain.algorithm,
                    Mode::Plans => algorithm,
                };
                return Ok(Resolved::Limit(
                    Cow::Owned(override_limit(i, o, algorithm)?),
                    None,
                ));
            }
            Ok(match mode {
                Mode::Plans => d.api_key.map_or(Resolved::Nothing, Resolved::Plan),
                Mode::Rules(domain) => match domain.root.lookup(d.pairs()) {
                    None => Resolved::Nothing,
                    Some(rule) => match &rule.action {
                        Action::Unlimited => Resolved::Unlimited(rule),
                        Action::Limit(l) => Resolved::Limit(Cow::Borrowed(l), Some(rule)),
                    },
                },
            })
        })
        .collect::<Result<Vec<_>, RequestError>>()?;
    let replaced: Vec<&str> = out
        .iter()
        .filter_map(Resolved::rule)
        .flat_map(|r| r.replaces.iter().map(String::as_str))
        .collect();
    if !replaced.is_empty() {
        for r in &mut out {
            if let Resolved::Limit(_, Some(rule)) = r
                && !rule.name.is_empty()
                && replaced.contains(&rule.name.as_str())
            {
                *r = Resolved::Nothing;
            }
        }
    }
    Ok(out)
}

/// One descriptor's answer and where it leaves the caller.
struct Outcome<'a> {
    status: DescriptorStatus,
    standing: Option<Standing<'a>>,
    /// For a blocked key: how long the block lasts (`Some(None)`: until
    /// lifted).
    blocked: Option<Option<Nanos>>,
    /// Over its limit, but a shadow-mode rule answered OK.
    shadowed: bool,
}

fn envoy_duration(ns: Nanos) -> Duration {
    let (seconds, nanos) = duration_parts(ns);
    Duration { seconds, nanos }
}

/// Whole seconds, rounded up: what envoyproxy/ratelimit reports for a
/// fixed window (`divider − now % divider`).
fn whole_seconds(ns: Nanos) -> Duration {
    Duration {
        seconds: i64::try_from(ns.div_ceil(NANOS_PER_SEC)).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The answer for a counted descriptor limit.
fn limited<'a>(v: &Verdict, rl: &'a RlsLimit, name: &str, shadow: bool) -> Outcome<'a> {
    let reset = match rl.limit.kind {
        LimitKind::Window(_) => whole_seconds(v.reset_after),
        _ => envoy_duration(v.reset_after),
    };
    Outcome {
        blocked: None,
        shadowed: !v.allowed && shadow,
        status: DescriptorStatus {
            code: if v.allowed || shadow {
                Code::Ok
            } else {
                Code::OverLimit
            } as i32,
            current_limit: Some(RateLimit {
                name: name.to_owned(),
                requests_per_unit: rl.requests_per_unit,
                unit: rl.unit as i32,
            }),
            limit_remaining: clamp_u32(v.remaining),
            duration_until_reset: Some(reset),
            quota: None,
        },
        standing: Some(Standing {
            name: &rl.limit.name,
            limit: rl.limit.capacity(),
            remaining: v.remaining,
            reset: v.reset_after,
            window: rl.limit.window_seconds(),
            over: !v.allowed && !shadow,
            retry_after: v.retry_after,
        }),
    }
}

/// The answer for a plan's decision.
fn planned<'a>(snap: &'a Snapshot<'_>, d: &Decision) -> Outcome<'a> {
    let limit = snap.limit(d);
    let blocked = (d.reason == core::DenyReason::Blocked).then_some(d.retry_after);
    Outcome {
        blocked,
        shadowed: false,
        status: DescriptorStatus {
            code: if d.allowed { Code::Ok } else { Code::OverLimit } as i32,
            current_limit: limit.map(current_limit),
            limit_remaining: clamp_u32(d.remaining),
            duration_until_reset: limit.map(|_| envoy_duration(d.reset_after)),
            quota: None,
        },
        standing: limit.map(|l| Standing::of(d, l)),
    }
}

/// A plan limit as Envoy's `RateLimit`: requests per unit.
fn current_limit(limit: &Limit) -> RateLimit {
    let (per_unit, unit) = match &limit.kind {
        LimitKind::Rate(r) => (r.rate(), unit_of(r.period())),
        LimitKind::Window(w) => (w.limit, unit_of(w.period)),
        LimitKind::Quota(q) => (
            q.quota.get(),
            match q.window {
                Window::Second => PbUnit::Second,
                Window::Minute => PbUnit::Minute,
                Window::Hour => PbUnit::Hour,
                Window::Day => PbUnit::Day,
                Window::Week => PbUnit::Week,
                Window::Month => PbUnit::Month,
            },
        ),
    };
    RateLimit {
        name: limit.policy.clone(),
        requests_per_unit: clamp_u32(per_unit),
        unit: unit as i32,
    }
}

fn unit_of(period: Nanos) -> PbUnit {
    Unit::ALL
        .into_iter()
        .find(|u| u.nanos() == period)
        .and_then(|u| PbUnit::try_from(u as i32).ok())
        .unwrap_or(PbUnit::Unknown)
}

fn ok_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

fn unlimited_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        limit_remaining: u32::MAX,
        ..Default::default()
    }
}

impl EnvoyRlsService {
    /// Counts one resolved descriptor.
    /// `decided` is a plan's strict decision, made (and rendered) with
    /// its own snapshot.
    fn apply<'a>(
        &self,
        snap: &'a Snapshot<'_>,
        key_entry: &str,
        (domain, source): (&str, Source),
        d: &Desc<'_>,
        r: &'a Resolved<'_>,
        decided: Option<&'a (Decision, Snapshot<'_>)>,
    ) -> Outcome<'a> {
        match r {
            Resolved::Nothing => Outcome {
                status: ok_status(),
                standing: None,
                blocked: None,
                shadowed: false,
            },
            Resolved::Unlimited(_) => Outcome {
                status: unlimited_status(),
                standing: None,
                blocked: None,
                shadowed: false,
            },
            Resolved::Limit(rl, rule) => {
                // An operator's block of the key wins over a limit the
                // request brings.
                if let Some(blocked) = d.api_key.and_then(|k| snap.blocked(k)) {
                    return planned(snap, &blocked);
                }
                let hasher = self.limiter.hasher();
                let key = hasher.descriptor_hash(domain, d.pairs());
                let v = if d.refund {
                    self.limiter.refund_limit(&rl.limit, key, d.cost)
                } else {
                    self.limiter.check_limit(&rl.limit, key, d.cost, source)
                };
                let name = rule.map_or("", |r| r.name.as_str());
                limited(&v, rl, name, rule.is_some_and(|r| r.shadow))
            }
            Resolved::Plan(api_key) => {
                let heavy = self.metrics.heavy();
                if heavy.enabled() && !d.refund {
                    heavy.note(self.limiter.hasher().key_hash(api_key.as_bytes()));
                }
                match decided {
                    Some((decision, made_with)) => planned(made_with, decision),
                    None => {
                        let req = self.plan_request(key_entry, api_key, d);
                        let decision = if d.refund {
                            snap.refund(&req)
                        } else {
                            snap.check(&req)
                        };
                        planned(snap, &decision)
                    }
                }
            }
        }
    }

    /// The engine request for a plan domain's descriptor.
    fn plan_request<'k>(
        &self,
        key_entry: &str,
        api_key: &'k str,
        d: &Desc<'_>,
    ) -> core::Request<'k> {
        let scope = self
            .limiter
            .hasher()
            .entries_hash(d.pairs().filter(|(k, _)| *k != key_entry));
        core::Request {
            key: api_key,
            cost: d.cost,
            scope,
        }
    }

    /// Decisions for a plan domain's descriptors whose plans may be
    /// strict (API key, no override, not a refund), all sent together.
    async fn decide_strict(
        &self,
        strict: &Strict,
        key_entry: &str,
        descs: &[Desc<'_>],
    ) -> Vec<Option<(Decision, Snapshot<'_>)>> {
        let jobs = descs.iter().map(|d| async move {
            match d.api_key {
                Some(key) if d.limit.is_none() && !d.refund => {
                    let req = self.plan_request(key_entry, key, d);
                    Some(decide::decide(&self.limiter, Some(strict), &req).await)
                }
                _ => None,
            }
        });
        futures_util::future::join_all(jobs).await
    }
}

fn unknown_domain(req: &RateLimitRequest) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: req.descriptors.iter().map(|_| ok_status()).collect(),
        ..Default::default()
    }
}

/// What one request came to, for the metrics.
#[derive(Default)]
struct Tally {
    /// The domain is in the config (its name may be a label).
    configured: bool,
    shadowed: bool,
    over: bool,
}

#[tonic::async_trait]
impl RateLimitService for EnvoyRlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Stopwatch::start();
        let (meta, _, req) = request.into_parts();
        let mut tally = Tally::default();
        let answer = self.answer(&req, &mut tally).await;
        let domain = tally.configured.then_some(req.domain.as_str());
        let counted = match &answer {
            Err(_) => Counted::Error,
            Ok(r) if r.overall_code == Code::OverLimit as i32 => Counted::Denied,
            Ok(_) if tally.over || tally.shadowed => Counted::ShadowDenied,
            Ok(_) => Counted::Allowed,
        };
        self.metrics.rls(domain, counted);
        match answer {
            Ok(r) => {
                self.metrics.took(Api::Rls, started);
                Ok(Response::new(r))
            }
            Err(status) => Err(request_id::refuse(&meta, Api::Rls.as_str(), status)),
        }
    }
}

impl EnvoyRlsService {
    /// The answer to `req`, noting in `tally` what it came to.
    async fn answer(
        &self,
        req: &RateLimitRequest,
        tally: &mut Tally,
    ) -> Result<RateLimitResponse, Status> {
        let config = self.config.load();
        let live = &config.live;
        let (caps, envoy, style) = (&live.requests, &live.envoy, live.response_headers);
        // Which kind of domain first, so even a refused request counts
        // under its (configured) domain.
        let plans = envoy.domains.contains(&req.domain);
        let key_entry = plans.then_some(envoy.key_entry.as_str());
        tally.configured = plans
            || self
                .limiter
                .snapshot()
                .table()
                .rls()
                .get(&req.domain)
                .is_some();
        if req.domain.is_empty() {
            return Err(RequestError::Empty {
                field: "domain".into(),
            }
            .into());
        }
        if req.descriptors.is_empty() {
            return Err(RequestError::Empty {
                field: "descriptors".into(),
            }
            .into());
        }
        validate::count(
            || "descriptors".into(),
            req.descriptors.len(),
            caps.max_descriptors,
        )?;
        if !tally.configured {
            // Not ours: OK without validating its descriptors (beyond
            // their count, checked above to bound the answer's size).
            return Ok(unknown_domain(req));
        }
        let descs = validate_request(req, caps, key_entry)?;
        // Plans with strict limits are decided in Redis, before the
        // snapshot below is taken (it is not held across a wait), and
        // only once every descriptor is known to be valid (overrides
        // included), so a refused request charges nothing.
        let strict = match (&self.strict, plans) {
            (Some(strict), true) => {
                resolve(&Mode::Plans, &descs, envoy.algorithm)?;
                self.decide_strict(strict, &envoy.key_entry, &descs).await
            }
            _ => Vec::new(),
        };
        let snap = self.limiter.snapshot();
        let mode = if plans {
            Mode::Plans
        } else if let Some(domain) = snap.table().rls().get(&req.domain) {
            Mode::Rules(domain)
        } else {
            return Ok(unknown_domain(req));
        };
        let resolved = resolve(&mode, &descs, envoy.algorithm)?;
        let source = match mode {
            Mode::Rules(domain) => domain.source,
            Mode::Plans => Source::PLANS,
        };
        let outcomes: Vec<Outcome<'_>> = descs
            .iter()
            .zip(&resolved)
            .enumerate()
            .map(|(i, (d, r))| {
                let decided = strict.get(i).and_then(Option::as_ref);
                let domain = (req.domain.as_str(), source);
                self.apply(&snap, &envoy.key_entry, domain, d, r, decided)
            })
            .collect();
        let over = outcomes
            .iter()
            .any(|o| o.status.code == Code::OverLimit as i32);
        tally.over = over;
        tally.shadowed = outcomes.iter().any(|o| o.shadowed);
        let standings: Vec<Standing<'_>> = outcomes.iter().filter_map(|o| o.standing).collect();
        // Global shadow mode answers OK, so there is nothing to wait for.
        let overall = if over && !envoy.shadow {
            Code::OverLimit
        } else {
            Code::Ok
        };
        let mut headers = headers::render(style, &standings, overall == Code::OverLimit);
        // A blocked key's wait is the block's: the longest of them, or
        // none at all if one lasts until lifted.
        let blocks = outcomes.iter().filter_map(|o| o.blocked);
        if overall == Code::OverLimit
            && let Some(wait) = blocks.reduce(|a, b| a.zip(b).map(|(a, b)| a.max(b)))
        {
            headers::add_block(style, &mut headers, wait);
        }
        let response_headers_to_add = headers
            .into_iter()
            .map(|h| HeaderValue {
                key: h.name.to_owned(),
                value: h.value,
                ..Default::default()
            })
            .collect();
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses: outcomes.into_iter().map(|o| o.status).collect(),
            response_headers_to_add,
            ..Default::default()
        })
    }
}
