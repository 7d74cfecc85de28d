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
//! This door only translates: it validates the request against the
//! settings in effect, turns each descriptor into an engine
//! [`Item`] (matching descriptor trees, `replaces`
//! and counting are the engine's and [`crate::limits::rls`]'s), and
//! renders the engine's answer as Envoy's response.
//!
//! In both kinds of domain, a descriptor's `limit` override
//! (`RateLimitOverride`) replaces whatever the config says for it, as a
//! limit on the descriptor's own counter, never in shadow mode.
//!
//! The cost is the descriptor's own `hits_addend` when set (0 checks
//! without consuming: OVER_LIMIT only while a bucket is in debt or a
//! counter past its limit), else the request's `hits_addend` (0 means 1).
//! `is_negative_hits` gives the units back instead of spending them; an
//! entry `quotad_mode: report` ([`MODE_ENTRY`]) charges them whatever the
//! limit holds (Envoy's `apply_on_stream_done` policies: what a response
//! cost is charged after it, never refused).
//! Descriptors are independent, as in envoyproxy/ratelimit: an allowed
//! descriptor is charged even when another one is over limit.
//! `overall_code` is OVER_LIMIT if any descriptor is, unless global shadow
//! mode (`envoy.shadow`, `--shadow`) turns it to OK; descriptor statuses
//! still say OVER_LIMIT then. `response_headers_to_add` carries the
//! configured RateLimit headers ([`super::headers`]).

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as PbUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use tonic::{Request, Response, Status};

use super::error::RequestError;
use super::headers::{self, HeaderStyle, Standing};
use super::rls_reply::RlsReply;
use super::{duration_parts, envoy_metadata, request_id, validate};
use crate::config::{Live, RequestCaps};
use crate::core::clock::NANOS_PER_SEC;
use crate::core::window::Window;
use crate::core::{Decision, DenyReason, Nanos};
use crate::engine::{
    Admitted, Answer, Basis, Call, Engine, Item, Items, Kind, Mode, Outcome, Pairs,
};
use crate::limits::rls::{Algorithm, RlsLimit, Unit};
use crate::limits::{Limit, LimitKind};
use crate::metrics::Api;

/// The Envoy RLS v3 service.
#[derive(Debug, Clone)]
pub struct EnvoyRlsService {
    engine: Arc<Engine>,
}

impl EnvoyRlsService {
    /// A service deciding with `engine` under the settings of the config
    /// in effect (`requests`, `envoy`, `response_headers`), read per
    /// request so a reload applies at once.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

/// The entry that makes a descriptor a report (`quotad_mode: report`):
/// its cost is charged whatever the limit holds. Envoy's stream-done
/// policies (`apply_on_stream_done`) add it with a `generic_key` action,
/// so what the response cost (LLM tokens, bytes) is never refused, and
/// lost, for want of room. It is not part of the descriptor: it matches
/// no rule and names no counter.
pub const MODE_ENTRY: &str = "quotad_mode";

/// A descriptor's entries as the engine reads them ([`MODE_ENTRY`] left
/// out).
impl Pairs for [Entry] {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter()
            .filter(|e| e.key != MODE_ENTRY)
            .map(|e| (e.key.as_str(), e.value.as_str()))
    }
}

/// One request descriptor, validated.
struct Desc<'a> {
    entries: &'a [Entry],
    cost: u64,
    mode: Mode,
    /// The request's `limit` override.
    limit: Option<(u32, Unit)>,
    /// In a plan domain, the API key entry's value.
    api_key: Option<&'a str>,
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
    // A descriptor without entries matches no rule (envoyproxy answers it
    // OK); in a plan domain it cannot carry an API key, so it is refused.
    if d.entries.is_empty() && key_entry.is_some() {
        return Err(RequestError::Empty {
            field: format!("descriptors[{i}].entries"),
        });
    }
    let mut api_key = None;
    let mut mode = if d.is_negative_hits {
        Mode::Refund
    } else {
        Mode::Charge
    };
    for (j, e) in d.entries.iter().enumerate() {
        let at = |f: &str| format!("descriptors[{i}].entries[{j}].{f}");
        if e.key.is_empty() {
            return Err(RequestError::Empty { field: at("key") });
        }
        if e.key == MODE_ENTRY {
            mode = report_mode(mode, &e.value).map_err(|why| RequestError::Invalid {
                field: at("value"),
                why: why.to_owned(),
            })?;
            continue;
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
            Ok::<_, RequestError>((o.requests_per_unit, unit))
        })
        .transpose()?;
    Ok(Desc {
        entries: &d.entries,
        cost,
        mode,
        limit,
        api_key,
    })
}

/// A descriptor's mode once its [`MODE_ENTRY`] says `value`.
fn report_mode(mode: Mode, value: &str) -> Result<Mode, &'static str> {
    match (mode, value) {
        (Mode::Charge, "report") => Ok(Mode::Report),
        (Mode::Refund, "report") => Err("a report cannot have is_negative_hits set"),
        (Mode::Report, _) => Err("quotad_mode appears more than once"),
        _ => Err("the only quotad_mode is `report` (charged whatever the limit holds)"),
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

/// What rendering needs besides the engine's answer.
#[derive(Clone, Copy)]
struct Render {
    style: HeaderStyle,
    /// Whether an over-limit answer carries `Retry-After`: not in a
    /// domain from files without the draft-11 fields, where draft-03
    /// means exactly envoyproxy/ratelimit's three.
    retry_after: bool,
    /// Global shadow mode (`envoy.shadow`).
    shadow: bool,
    /// Global quota mode (`envoy.quota_mode`).
    quota: bool,
    /// Whether to add `dynamic_metadata` (`envoy.response_dynamic_metadata`).
    metadata: bool,
    /// The domain is not ours: every descriptor is OK.
    unknown: bool,
}

/// Validates `req` against the settings in effect and turns it into the
/// engine's items.
fn admit<'m>(
    req: &'m RateLimitRequest,
    live: &Live,
    kind: Kind<'_>,
) -> Result<Admitted<'m, [Entry], Render>, RequestError> {
    let (caps, envoy) = (&live.requests, &live.envoy);
    let style = match kind {
        Kind::Rules(_) => envoy.response_headers,
        Kind::Plans | Kind::Unknown => live.response_headers,
    };
    let render = Render {
        style,
        retry_after: !matches!(kind, Kind::Rules(_)) || style.draft11(),
        shadow: envoy.shadow,
        quota: envoy.quota_mode,
        metadata: envoy.dynamic_metadata && !matches!(kind, Kind::Unknown),
        unknown: matches!(kind, Kind::Unknown),
    };
    if req.domain.is_empty() {
        return Err(RequestError::Empty {
            field: "domain".into(),
        });
    }
    if req.descriptors.is_empty() {
        return Err(RequestError::Empty {
            field: "descriptors".into(),
        });
    }
    validate::count(
        || "descriptors".into(),
        req.descriptors.len(),
        caps.max_descriptors,
    )?;
    let algorithm = match kind {
        // Not ours: OK without validating its descriptors (beyond their
        // count, checked above to bound the answer's size).
        Kind::Unknown => return Ok((Items::new(), render)),
        Kind::Plans => envoy.algorithm,
        Kind::Rules(domain) => domain.algorithm,
    };
    let key_entry = matches!(kind, Kind::Plans).then_some(envoy.key_entry.as_str());
    let request_cost = u64::from(req.hits_addend.max(1));
    let descs = req
        .descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| descriptor(i, d, request_cost, caps, key_entry))
        .collect::<Result<Vec<_>, _>>()?;
    // Overrides once every descriptor is known to be valid.
    let items = descs
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            Ok(Item {
                key: d.api_key,
                entries: d.entries,
                cost: d.cost,
                mode: d.mode,
                limit: d
                    .limit
                    .map(|o| override_limit(i, o, algorithm))
                    .transpose()?,
            })
        })
        .collect::<Result<Items<'m, [Entry]>, RequestError>>()?;
    Ok((items, render))
}

/// One descriptor's answer and where it leaves the caller.
struct Rendered<'a> {
    status: DescriptorStatus,
    standing: Option<Standing<'a>>,
    /// For a blocked key: how long the block lasts (`Some(None)`: until
    /// lifted).
    blocked: Option<Option<Nanos>>,
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

/// The answer for a counted descriptor limit; `quota`: a quota-mode
/// descriptor, whose being over does not make the answer's headers its.
fn limited<'a>(
    d: &Decision,
    rl: &'a RlsLimit,
    name: &str,
    (shadow, quota): (bool, bool),
) -> Rendered<'a> {
    let reset = match rl.limit.kind {
        LimitKind::Window(_) => whole_seconds(d.reset_after),
        _ => envoy_duration(d.reset_after),
    };
    Rendered {
        blocked: None,
        status: DescriptorStatus {
            code: if d.allowed || shadow {
                Code::Ok
            } else {
                Code::OverLimit
            } as i32,
            current_limit: Some(RateLimit {
                name: name.to_owned(),
                requests_per_unit: rl.requests_per_unit,
                unit: rl.unit as i32,
            }),
            limit_remaining: within(d.remaining, u64::from(rl.requests_per_unit)),
            duration_until_reset: Some(reset),
            quota: None,
        },
        standing: Some(Standing {
            name: &rl.limit.name,
            limit: rl.limit.capacity(),
            remaining: d.remaining,
            reset: d.reset_after,
            window: rl.limit.window_seconds(),
            over: !d.allowed && !shadow && !quota,
            retry_after: d.retry_after,
            text: Some(&rl.limit.text),
        }),
    }
}

/// The answer for a plan's decision.
fn planned<'a>(d: &Decision, limit: Option<&'a Limit>) -> Rendered<'a> {
    let blocked = (d.reason == Some(DenyReason::Blocked)).then_some(d.retry_after);
    let current = limit.map(current_limit);
    let remaining = match &current {
        Some(c) => within(d.remaining, u64::from(c.requests_per_unit)),
        None => clamp_u32(d.remaining),
    };
    Rendered {
        blocked,
        status: DescriptorStatus {
            code: if d.allowed { Code::Ok } else { Code::OverLimit } as i32,
            current_limit: current,
            limit_remaining: remaining,
            duration_until_reset: limit.map(|_| envoy_duration(d.reset_after)),
            quota: None,
        },
        standing: limit.map(|l| Standing::of(d, l)),
    }
}

/// One engine outcome as a descriptor status; `quota`: global quota mode.
fn status<'a>(o: &Outcome<'a>, quota: bool) -> Rendered<'a> {
    let bare = |status| Rendered {
        status,
        standing: None,
        blocked: None,
    };
    match o.basis {
        Basis::Nothing => bare(ok_status()),
        Basis::Unlimited(_) => bare(unlimited_status()),
        Basis::Plan(limit) => planned(&o.decision, limit),
        Basis::Rule { limit, rule } => {
            let name = rule.map_or("", |r| r.name.as_str());
            let shadow = rule.is_some_and(|r| r.shadow);
            limited(&o.decision, limit, name, (shadow, o.quota(quota)))
        }
    }
}

/// `remaining` as Envoy's `limit_remaining`: at most the limit's
/// `requests_per_unit`. Envoy's `RateLimit` is requests per unit, with no
/// place for a token bucket's burst above its rate (`rate: 100, per:
/// second, burst: 200`): a full bucket answers `100` of `100/s`, not `199`
/// (Envoy's `X-RateLimit-Remaining` would exceed its `X-RateLimit-Limit`).
/// The burst still passes; the RateLimit headers quotad adds show it
/// (`200` over the `2` s it takes to refill).
fn within(remaining: u64, per_unit: u64) -> u32 {
    clamp_u32(remaining.min(per_unit))
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

fn unknown_domain(req: &RateLimitRequest) -> RlsReply {
    RlsReply {
        response: RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: req.descriptors.iter().map(|_| ok_status()).collect(),
            ..Default::default()
        },
        headers: Vec::new(),
    }
}

/// The engine's answer as Envoy's response.
fn render(req: &RateLimitRequest, answer: &Answer<'_>, r: Render) -> RlsReply {
    if r.unknown {
        return unknown_domain(req);
    }
    let statuses: Vec<Rendered<'_>> = answer.outcomes.iter().map(|o| status(o, r.quota)).collect();
    // Global shadow mode answers OK, so there is nothing to wait for.
    let overall = if answer.over() && !r.shadow {
        Code::OverLimit
    } else {
        Code::Ok
    };
    let standings: Vec<Standing<'_>> = statuses.iter().filter_map(|s| s.standing).collect();
    // `Retry-After` only where the style asks for it (not a files
    // domain's bare draft-03).
    let wait = overall == Code::OverLimit && r.retry_after;
    let mut headers = headers::render(r.style, &standings, wait);
    // A blocked key's wait is the block's: the longest of them, or none
    // at all if one lasts until lifted.
    let blocks = statuses.iter().filter_map(|s| s.blocked);
    if overall == Code::OverLimit
        && let Some(wait) = blocks.reduce(|a, b| a.zip(b).map(|(a, b)| a.max(b)))
    {
        headers::add_block(r.style, &mut headers, wait);
    }
    let dynamic_metadata = r.metadata.then(|| {
        let passed: Vec<bool> = statuses
            .iter()
            .map(|s| s.status.code != Code::OverLimit as i32)
            .collect();
        envoy_metadata::build(req, answer, &passed)
    });
    RlsReply {
        response: RateLimitResponse {
            overall_code: overall as i32,
            statuses: statuses.into_iter().map(|s| s.status).collect(),
            dynamic_metadata,
            ..Default::default()
        },
        headers,
    }
}

/// Decides one Envoy RLS request through the engine, counted under
/// `door` (gRPC's `ShouldRateLimit`, or the HTTP door's `/json`); the
/// error is the refusal, nothing charged.
pub(crate) async fn decide(
    engine: &Engine,
    door: Api,
    req: &RateLimitRequest,
) -> Result<RlsReply, RequestError> {
    let call = Call {
        door,
        domain: Some(&req.domain),
    };
    engine
        .decide(
            call,
            |live, kind| admit(req, live, kind),
            |answer, r| render(req, answer, r),
        )
        .await
}

impl EnvoyRlsService {
    /// `ShouldRateLimit` (served by [`super::rls_server`]): the answer, or
    /// the refusal as a status with the request's id.
    pub async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RlsReply>, Status> {
        let (meta, _, req) = request.into_parts();
        match decide(&self.engine, Api::Rls, &req).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => Err(request_id::refuse(&meta, Api::Rls.as_str(), e.into())),
        }
    }
}
