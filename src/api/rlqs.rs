//! Envoy's Rate Limit Quota Service
//! (`envoy.service.rate_limit_quota.v3.RateLimitQuotaService/StreamRateLimitQuotas`):
//! validates each usage report, hands it to the engine
//! ([`crate::engine::rlqs`]) and writes the bucket actions back: the
//! answer to each report, and what changes between reports (shares that
//! moved, blocks, reloads, idle buckets abandoned).
//!
//! What Envoy's filter does, and what this door does about it:
//! - one stream per Envoy and domain, `domain` in every message: the
//!   first message's domain is the stream's; another ends it
//!   (INVALID_ARGUMENT);
//! - a bucket's first report has `time_elapsed` 0 and later ones are
//!   whole seconds: demand is measured over this node's clock between a
//!   stream's reports of a bucket;
//! - every bucket is reported every 5 s, whatever `reporting_interval`
//!   says: each report is answered for every bucket it carries;
//! - `requests_per_time_unit` is ignored by Envoy: only `token_bucket`
//!   or `blanket_rule` is sent, `tokens_per_fill` always set (unset reads
//!   as 0), `fill_interval` whole seconds ≥ 1, and the time to live whole
//!   seconds ≥ 10 (`rlqs.assignment_ttl`; shorter expires at once);
//! - answers for buckets the Envoy has not reported are dropped: only
//!   reported buckets are answered or pushed;
//! - after a reconnect the Envoy reports everything again: each bucket is
//!   answered at its first sighting on a stream.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy as Wire};
use envoy_types::pb::envoy::r#type::v3::{RateLimitStrategy, TokenBucket};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::BucketAction;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::{
    AbandonAction, BucketAction as Kind, QuotaAssignmentAction,
};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_server::RateLimitQuotaService;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    BucketId, RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use futures_util::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::error::RequestError;
use crate::config::RlqsSettings;
use crate::core::clock::{NANOS_PER_SEC, Nanos};
use crate::engine::Engine;
use crate::engine::rlqs::{Action, RlqsError, RlqsStream, Strategy, Usage};
use crate::limits::rlqs::BucketEntries;
use crate::net::gate::ConnInfo;
use crate::shutdown::Shutdown;

/// The RLQS service.
#[derive(Debug, Clone)]
pub struct RlqsService {
    engine: Arc<Engine>,
    shutdown: Shutdown,
}

impl RlqsService {
    /// The service on `engine`; open streams end with UNAVAILABLE when
    /// `shutdown` fires.
    pub fn new(engine: Arc<Engine>, shutdown: Shutdown) -> Self {
        Self { engine, shutdown }
    }
}

/// The answers of one stream.
pub type Answers = Pin<Box<dyn Stream<Item = Result<RateLimitQuotaResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RateLimitQuotaService for RlqsService {
    type StreamRateLimitQuotasStream = Answers;

    async fn stream_rate_limit_quotas(
        &self,
        request: Request<Streaming<RateLimitQuotaUsageReports>>,
    ) -> Result<Response<Answers>, Status> {
        let (peer, conn) = who(&request);
        let stream = self.engine.rlqs_open(peer, conn).map_err(|e| {
            self.engine.metrics().rlqs_refused(reason(&e));
            Status::resource_exhausted(e.to_string())
        })?;
        let state = Serving {
            engine: Arc::clone(&self.engine),
            stream,
            inbound: request.into_inner(),
            shutdown: self.shutdown.clone(),
            idle_until: tokio::time::Instant::now() + self.idle_timeout(),
            done: false,
        };
        let out = futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let item = st.next().await?;
            st.done = item.is_err();
            Some((item, st))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

impl RlqsService {
    fn idle_timeout(&self) -> Duration {
        self.engine.view().live().rlqs.stream_idle_timeout
    }
}

/// The peer's address (for usage) and its connection's identity (for the
/// per-connection cap).
fn who<T>(request: &Request<T>) -> (String, usize) {
    let (addr, _) = ConnInfo::peer_of(request);
    let conn = request
        .extensions()
        .get::<ConnInfo>()
        .map_or(0, |c| Arc::as_ptr(c.activity()) as usize);
    let peer = addr.map_or_else(|| "unknown peer".to_owned(), |a| a.to_string());
    (peer, conn)
}

/// The metrics' `reason` for an error.
fn reason(e: &RlqsError) -> &'static str {
    match e {
        RlqsError::TooManyStreams(_) => "streams",
        RlqsError::TooManyOnConnection(_) => "connection_streams",
        RlqsError::TooManyBuckets(_) => "buckets",
        RlqsError::NodeFull { .. } => "node_full",
        RlqsError::DomainChanged { .. } => "invalid",
    }
}

/// One open stream's state.
struct Serving {
    engine: Arc<Engine>,
    stream: RlqsStream,
    inbound: Streaming<RateLimitQuotaUsageReports>,
    shutdown: Shutdown,
    /// Reports with buckets move it on; past it, the stream is closed.
    idle_until: tokio::time::Instant,
    done: bool,
}

impl Serving {
    /// The stream's next message, or its end (`None`, or an error).
    async fn next(&mut self) -> Option<Result<RateLimitQuotaResponse, Status>> {
        loop {
            let wake = Arc::clone(self.stream.wake());
            // Unbiased: a stream with steady pushes still reads reports,
            // and one flooding reports still gets its pushes.
            tokio::select! {
                _ = self.shutdown.wait() => {
                    return Some(Err(Status::unavailable(
                        "quotad is shutting down: report to another instance",
                    )));
                }
                () = wake.notified() => {
                    let actions = self.stream.take_pending();
                    if !actions.is_empty() {
                        return Some(Ok(response(actions)));
                    }
                }
                () = tokio::time::sleep_until(self.idle_until) => {
                    self.engine.metrics().rlqs_refused("idle");
                    let idle = self.engine.view().live().rlqs.stream_idle_timeout;
                    return Some(Err(Status::deadline_exceeded(format!(
                        "no usage reported for {}s (rlqs.stream_idle_timeout): the stream is closed; open another to report again",
                        idle.as_secs()
                    ))));
                }
                next = self.inbound.message() => match next {
                    Ok(Some(reports)) => {
                        if let Some(answer) = self.answer(reports) {
                            return Some(answer);
                        }
                    }
                    // The Envoy's end.
                    Ok(None) => return None,
                    Err(status) => return refused(&self.engine, status),
                },
            }
        }
    }

    /// A report's answer; `None` for a report without buckets (its
    /// domain still checked).
    fn answer(
        &mut self,
        reports: RateLimitQuotaUsageReports,
    ) -> Option<Result<RateLimitQuotaResponse, Status>> {
        let (usages, idle) = {
            let view = self.engine.view();
            let settings = &view.live().rlqs;
            (validate(&reports, settings), settings.stream_idle_timeout)
        };
        let usages = match usages {
            Ok(u) => u,
            Err(e) => {
                self.engine.metrics().rlqs_refused("invalid");
                return Some(Err(e.into()));
            }
        };
        let empty = usages.is_empty();
        if !empty {
            self.idle_until = tokio::time::Instant::now() + idle;
        }
        let answer = self
            .stream
            .report(&reports.domain, usages)
            .map(response)
            .map_err(|e| {
                self.engine.metrics().rlqs_refused(reason(&e));
                match e {
                    RlqsError::DomainChanged { .. } => Status::invalid_argument(e.to_string()),
                    _ => Status::resource_exhausted(e.to_string()),
                }
            });
        match answer {
            Ok(_) if empty => None,
            other => Some(other),
        }
    }
}

/// How a stream whose next report could not be read ends: a message that
/// does not decode is the Envoy's mistake (prost says INTERNAL), one too
/// large or any other refusal of the codec is said as it is; a broken
/// connection or a cancel ends it without a word (nobody is listening).
fn refused(engine: &Engine, status: Status) -> Option<Result<RateLimitQuotaResponse, Status>> {
    match status.code() {
        Code::Internal => {
            engine.metrics().rlqs_refused("invalid");
            Some(Err(Status::invalid_argument(format!(
                "malformed request: {}",
                status.message()
            ))))
        }
        Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument => {
            engine.metrics().rlqs_refused("invalid");
            Some(Err(status))
        }
        _ => None,
    }
}

/// A report, checked against the caps: a domain, and buckets each with a
/// non-empty id of at most `max_bucket_entries` non-empty entries. The
/// same bucket twice in one report counts once, with both counts.
fn validate(r: &RateLimitQuotaUsageReports, s: &RlqsSettings) -> Result<Vec<Usage>, RequestError> {
    let max = s.max_entry_bytes;
    if r.domain.is_empty() {
        return Err(RequestError::Invalid {
            field: "domain".to_owned(),
            why: "must not be empty (Envoy's filter sends its domain in every message)".to_owned(),
        });
    }
    if r.domain.len() > max {
        return Err(RequestError::TooLong {
            field: "domain".to_owned(),
            len: r.domain.len(),
            max,
        });
    }
    if r.bucket_quota_usages.len() > s.max_buckets_per_stream {
        return Err(RequestError::TooMany {
            field: "bucket_quota_usages".to_owned(),
            count: r.bucket_quota_usages.len(),
            max: s.max_buckets_per_stream,
        });
    }
    let mut out: BTreeMap<BucketEntries, Usage> = BTreeMap::new();
    for (i, u) in r.bucket_quota_usages.iter().enumerate() {
        let field = |f: &str| format!("bucket_quota_usages[{i}].{f}");
        let id = bucket_id(u.bucket_id.as_ref(), s, &field)?;
        let elapsed = elapsed(u.time_elapsed.as_ref(), &field)?;
        let e = out.entry(id.clone()).or_insert(Usage {
            id,
            allowed: 0,
            denied: 0,
            elapsed,
        });
        e.allowed = e.allowed.saturating_add(u.num_requests_allowed);
        e.denied = e.denied.saturating_add(u.num_requests_denied);
    }
    Ok(out.into_values().collect())
}

fn bucket_id(
    id: Option<&BucketId>,
    s: &RlqsSettings,
    field: &dyn Fn(&str) -> String,
) -> Result<BucketEntries, RequestError> {
    let bucket = id
        .map(|b| &b.bucket)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| RequestError::Invalid {
            field: field("bucket_id"),
            why: "must have at least one entry".to_owned(),
        })?;
    if bucket.len() > s.max_bucket_entries {
        return Err(RequestError::TooMany {
            field: field("bucket_id.bucket"),
            count: bucket.len(),
            max: s.max_bucket_entries,
        });
    }
    let mut out = BTreeMap::new();
    for (k, v) in bucket {
        if k.is_empty() || v.is_empty() {
            return Err(RequestError::Invalid {
                field: field("bucket_id.bucket"),
                why: format!(
                    "entry keys and values must not be empty (got key '{}' with an empty value, or an empty key)",
                    k.escape_default()
                ),
            });
        }
        let long = k.len().max(v.len());
        if long > s.max_entry_bytes {
            return Err(RequestError::TooLong {
                field: field("bucket_id.bucket"),
                len: long,
                max: s.max_entry_bytes,
            });
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out.into())
}

/// `time_elapsed` in nanoseconds: absent reads as 0; negative is wrong.
fn elapsed(d: Option<&PbDuration>, field: &dyn Fn(&str) -> String) -> Result<Nanos, RequestError> {
    let Some(d) = d else { return Ok(0) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(RequestError::Invalid {
            field: field("time_elapsed"),
            why: format!(
                "not a duration of time elapsed ({}s {}ns)",
                d.seconds, d.nanos
            ),
        });
    }
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    Ok(secs
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(u64::try_from(d.nanos).unwrap_or(0)))
}

/// Actions as one message.
fn response(actions: Vec<Action>) -> RateLimitQuotaResponse {
    RateLimitQuotaResponse {
        bucket_action: actions.into_iter().map(action).collect(),
    }
}

fn action(a: Action) -> BucketAction {
    let (id, kind) = match a {
        Action::Assign {
            id,
            strategy,
            ttl_secs,
        } => (
            id,
            Kind::QuotaAssignmentAction(QuotaAssignmentAction {
                assignment_time_to_live: Some(PbDuration {
                    seconds: i64::from(ttl_secs),
                    nanos: 0,
                }),
                rate_limit_strategy: Some(strategy_of(strategy)),
            }),
        ),
        Action::Abandon { id } => (id, Kind::AbandonAction(AbandonAction {})),
    };
    BucketAction {
        bucket_id: Some(BucketId {
            bucket: id
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<HashMap<_, _>>(),
        }),
        bucket_action: Some(kind),
    }
}

/// A strategy as Envoy reads it: a blanket rule, or a token bucket with
/// every field set.
fn strategy_of(s: Strategy) -> RateLimitStrategy {
    let wire = match s {
        Strategy::Allow => Wire::BlanketRule(BlanketRule::AllowAll as i32),
        Strategy::Deny => Wire::BlanketRule(BlanketRule::DenyAll as i32),
        Strategy::Bucket(f) => Wire::TokenBucket(TokenBucket {
            max_tokens: f.max_tokens,
            tokens_per_fill: Some(UInt32Value {
                value: f.tokens_per_fill,
            }),
            fill_interval: Some(PbDuration {
                seconds: i64::from(f.fill_interval_secs.max(1)),
                nanos: 0,
            }),
        }),
    };
    RateLimitStrategy {
        strategy: Some(wire),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;

    fn usage(pairs: &[(&str, &str)], allowed: u64) -> BucketQuotaUsage {
        BucketQuotaUsage {
            bucket_id: Some(BucketId {
                bucket: pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }),
            time_elapsed: None,
            num_requests_allowed: allowed,
            num_requests_denied: 1,
        }
    }

    fn reports(domain: &str, usages: Vec<BucketQuotaUsage>) -> RateLimitQuotaUsageReports {
        RateLimitQuotaUsageReports {
            domain: domain.to_owned(),
            bucket_quota_usages: usages,
        }
    }

    #[test]
    fn reports_are_checked_and_name_what_is_wrong() {
        let s = RlqsSettings::default();
        let err = |r: RateLimitQuotaUsageReports| match validate(&r, &s) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(err(reports("", vec![])).starts_with("domain: must not be empty"));
        assert!(
            err(reports("shop", vec![usage(&[], 1)]))
                .starts_with("bucket_quota_usages[0].bucket_id: must have at least one entry")
        );
        assert!(
            err(reports("shop", vec![usage(&[("a", "")], 1)]))
                .starts_with("bucket_quota_usages[0].bucket_id.bucket: entry keys and values")
        );
        let long = "x".repeat(257);
        assert_eq!(
            err(reports("shop", vec![usage(&[("a", &long)], 1)])),
            "bucket_quota_usages[0].bucket_id.bucket: 257 bytes exceeds the maximum of 256 bytes"
        );
        let many: Vec<(String, String)> =
            (0..9).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            err(reports("shop", vec![usage(&many, 1)])),
            "bucket_quota_usages[0].bucket_id.bucket: 9 items exceed the maximum of 8"
        );
        // The same bucket twice counts once, with both counts.
        let ok = validate(
            &reports(
                "shop",
                vec![usage(&[("t", "a")], 2), usage(&[("t", "a")], 3)],
            ),
            &s,
        )
        .unwrap_or_default();
        assert_eq!(ok.len(), 1);
        assert_eq!((ok[0].allowed, ok[0].denied), (5, 2));
    }

    #[test]
    fn token_buckets_carry_every_field() {
        let f = crate::core::share::token_bucket(33.4, 66.8);
        let s = strategy_of(Strategy::Bucket(f));
        let Some(Wire::TokenBucket(tb)) = s.strategy else {
            panic!("not a token bucket: {s:?}");
        };
        assert_eq!(tb.tokens_per_fill, Some(UInt32Value { value: 167 }));
        assert_eq!(tb.fill_interval.map(|d| (d.seconds, d.nanos)), Some((5, 0)));
        assert_eq!(tb.max_tokens, 66);
    }
}
