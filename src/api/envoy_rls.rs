//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy's
//! Rate Limit Service API in front of the same engine.
//!
//! Mapping (this version): each request descriptor is one check. The API
//! key is the value of the descriptor entry named by `envoy.key_entry`
//! (default `api_key`), and that key's plan decides. A descriptor whose
//! only entry is the API key shares its buckets with the native API's
//! checks of that key; a descriptor with more entries (say `api_key` and
//! `path`) gets its own buckets under the same plan, one set per distinct
//! combination, as each descriptor is its own counter in Envoy's model.
//! A descriptor without the key entry has no limit and is OK.
//! Requests for a domain not listed in `envoy.domains` are answered OK
//! (Envoy's convention for unknown domains) without validating their
//! descriptors: our caps are not another service's.
//!
//! The cost is the descriptor's own `hits_addend` when set (0 checks
//! without consuming), else the request's `hits_addend` (0 means 1).
//! `is_negative_hits` gives the units back instead of spending them.
//! `overall_code` is OVER_LIMIT if any descriptor is. Descriptors are
//! independent, as in envoyproxy/ratelimit: an allowed descriptor is
//! charged even when another one in the same request is over limit.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use tonic::{Request, Response, Status};

use super::error::RequestError;
use super::{duration_parts, validate};
use crate::config::{EnvoySettings, RequestCaps};
use crate::core::clock::NANOS_PER_SEC;
use crate::core::window::Window;
use crate::core::{self, Decision, KeyHasher, Limiter, Nanos, Snapshot};
use crate::limits::{Limit, LimitKind};

/// The Envoy RLS v3 service.
#[derive(Debug, Clone)]
pub struct EnvoyRlsService {
    limiter: Arc<Limiter>,
    caps: RequestCaps,
    envoy: Arc<EnvoySettings>,
}

impl EnvoyRlsService {
    /// A service deciding with `limiter` under the given settings.
    pub fn new(limiter: Arc<Limiter>, caps: RequestCaps, envoy: EnvoySettings) -> Self {
        Self {
            limiter,
            caps,
            envoy: Arc::new(envoy),
        }
    }
}

/// One descriptor, validated: the API key (if any), the cost, and whether
/// the units are given back.
struct Check<'a> {
    key: Option<&'a str>,
    /// Hash of the descriptor's other entries (0 when the API key is the
    /// only entry): files the descriptor's cells apart from the key's own.
    scope: u64,
    cost: u64,
    refund: bool,
}

fn parse<'a>(
    req: &'a RateLimitRequest,
    caps: &RequestCaps,
    key_entry: &str,
    hasher: &KeyHasher,
    domains: &[String],
) -> Result<Option<Vec<Check<'a>>>, RequestError> {
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
    if !domains.contains(&req.domain) {
        // Not ours: answered OK without looking further, so another
        // service's traffic is never refused by our caps.
        return Ok(None);
    }
    let request_cost = u64::from(req.hits_addend.max(1));
    req.descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| descriptor(i, d, request_cost, caps, key_entry, hasher))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn descriptor<'a>(
    i: usize,
    d: &'a RateLimitDescriptor,
    request_cost: u64,
    caps: &RequestCaps,
    key_entry: &str,
    hasher: &KeyHasher,
) -> Result<Check<'a>, RequestError> {
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
    let mut key = None;
    for (j, e) in d.entries.iter().enumerate() {
        if e.key.is_empty() {
            return Err(RequestError::Empty {
                field: format!("descriptors[{i}].entries[{j}].key"),
            });
        }
        if e.key == key_entry {
            if key.is_some() {
                return Err(RequestError::Unsupported {
                    field: format!("descriptors[{i}].entries[{j}].key"),
                    why: "the API key entry appears more than once",
                });
            }
            validate::key(
                || format!("descriptors[{i}].entries[{j}].value"),
                &e.value,
                caps,
            )?;
            key = Some(e.value.as_str());
        }
    }
    let cost = d.hits_addend.as_ref().map_or(request_cost, |h| h.value);
    validate::cost(|| format!("descriptors[{i}].hits_addend"), cost, caps)?;
    let scope = match key {
        Some(_) => hasher.entries_hash(
            d.entries
                .iter()
                .filter(|e| e.key != key_entry)
                .map(|e| (e.key.as_str(), e.value.as_str())),
        ),
        None => 0,
    };
    Ok(Check {
        key,
        scope,
        cost,
        refund: d.is_negative_hits,
    })
}

fn envoy_duration(ns: Nanos) -> Duration {
    let (seconds, nanos) = duration_parts(ns);
    Duration { seconds, nanos }
}

/// The limit as Envoy's `RateLimit`: requests per unit.
fn current_limit(limit: &Limit) -> RateLimit {
    let (per_unit, unit) = match &limit.kind {
        LimitKind::Rate(r) => (r.rate(), unit_of(r.period())),
        LimitKind::Quota(q) => (
            q.quota.get(),
            match q.window {
                Window::Second => Unit::Second,
                Window::Minute => Unit::Minute,
                Window::Hour => Unit::Hour,
                Window::Day => Unit::Day,
                Window::Week => Unit::Week,
                Window::Month => Unit::Month,
            },
        ),
    };
    RateLimit {
        name: limit.policy.clone(),
        requests_per_unit: u32::try_from(per_unit).unwrap_or(u32::MAX),
        unit: unit as i32,
    }
}

fn unit_of(period: Nanos) -> Unit {
    match period / NANOS_PER_SEC {
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    }
}

fn status(snap: &Snapshot<'_>, d: &Decision) -> DescriptorStatus {
    let limit = snap.limit(d);
    DescriptorStatus {
        code: if d.allowed { Code::Ok } else { Code::OverLimit } as i32,
        current_limit: limit.map(current_limit),
        limit_remaining: u32::try_from(d.remaining).unwrap_or(u32::MAX),
        duration_until_reset: limit.map(|_| envoy_duration(d.reset_after)),
        quota: None,
    }
}

fn ok_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RateLimitService for EnvoyRlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = request.into_inner();
        let parsed = parse(
            &req,
            &self.caps,
            &self.envoy.key_entry,
            self.limiter.hasher(),
            &self.envoy.domains,
        )?;
        let Some(checks) = parsed else {
            return Ok(Response::new(RateLimitResponse {
                overall_code: Code::Ok as i32,
                statuses: req.descriptors.iter().map(|_| ok_status()).collect(),
                ..Default::default()
            }));
        };
        let mut overall = Code::Ok;
        let snap = self.limiter.snapshot();
        let statuses = checks
            .iter()
            .map(|c| {
                let Some(key) = c.key else {
                    return ok_status();
                };
                let r = core::Request {
                    key,
                    cost: c.cost,
                    scope: c.scope,
                };
                let d = if c.refund {
                    snap.refund(&r)
                } else {
                    snap.check(&r)
                };
                if !d.allowed {
                    overall = Code::OverLimit;
                }
                status(&snap, &d)
            })
            .collect();
        Ok(Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        }))
    }
}
