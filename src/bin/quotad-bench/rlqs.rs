//! `--mode rlqs`: simulated Envoys on Envoy's Rate Limit Quota Service.
//! Each of `--concurrency` streams reports `--buckets` buckets
//! (`{tenant: <key>}`, keys taken in turn from `--keys`, so streams share
//! buckets when `--keys` is smaller than streams × buckets) every
//! `--report-interval`, as Envoy's filter does, the first report of each
//! at once with time elapsed 0. A report is one request; its latency runs
//! until the stream's next message carrying an action for every bucket
//! (its answer); every action received is a check: `allowed` counts
//! token buckets and ALLOW_ALL, `denied` DENY_ALL and abandons.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::BucketAction as Kind;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_client::RateLimitQuotaServiceClient;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    BucketId, RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::Args;
use crate::drive::{Answered, Outcome};

/// One simulated Envoy, until `end`.
pub async fn envoy(
    args: Args,
    ch: Channel,
    n: u64,
    end: Instant,
    measuring: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new();
    let ids: Vec<BucketId> = (0..args.buckets)
        .map(|j| BucketId {
            bucket: [(
                "tenant".to_owned(),
                format!("{}{}", args.key_prefix, (n * args.buckets + j) % args.keys),
            )]
            .into(),
        })
        .collect();
    let (tx, rx) = mpsc::channel(4);
    // Spread the streams' reports over the interval, as Envoys started
    // at different times would.
    let spread = args.report_interval.as_nanos() as u64 * (n % 64) / 64;
    tokio::time::sleep(Duration::from_nanos(spread)).await;
    let mut client = RateLimitQuotaServiceClient::new(ch);
    let mut answers = match client
        .stream_rate_limit_quotas(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(_) => {
            out.record_took(Duration::ZERO, Answered::Failed);
            return Ok(out);
        }
    };
    let mut elapsed = 0;
    while Instant::now() < end {
        let sent = Instant::now();
        if tx.send(report(&args, &ids, elapsed)).await.is_err() {
            out.record_took(Duration::ZERO, Answered::Failed);
            break;
        }
        elapsed = args.report_interval.as_secs() as i64;
        let next_report = sent + args.report_interval;
        let mut answered = false;
        while let Ok(Ok(msg)) =
            tokio::time::timeout_at(next_report.min(end), answers.message()).await
        {
            let Some(msg) = msg else { break };
            let (allowed, denied) = counts(&msg);
            // Ids repeat when --keys is smaller than --buckets; the
            // answer carries each distinct one once.
            let whole = msg.bucket_action.len() as u64 >= args.buckets.min(args.keys);
            if measuring.load(Ordering::Relaxed) {
                let a = Answered::Checks { allowed, denied };
                if whole && !answered {
                    out.record_took(sent.elapsed(), a);
                } else {
                    out.add_checks(allowed, denied);
                }
            }
            answered |= whole;
        }
        if !answered && Instant::now() < end && measuring.load(Ordering::Relaxed) {
            out.record_took(Duration::ZERO, Answered::Failed);
        }
        tokio::time::sleep_until(next_report.min(end)).await;
    }
    Ok(out)
}

/// A report of every bucket: a steady `--cost` requests per second each,
/// a tenth of them denied.
fn report(args: &Args, ids: &[BucketId], elapsed_secs: i64) -> RateLimitQuotaUsageReports {
    let per_report = args.cost * args.report_interval.as_secs().max(1);
    RateLimitQuotaUsageReports {
        domain: args.domain.clone(),
        bucket_quota_usages: ids
            .iter()
            .map(|id| BucketQuotaUsage {
                bucket_id: Some(id.clone()),
                time_elapsed: Some(PbDuration {
                    seconds: elapsed_secs,
                    nanos: 0,
                }),
                num_requests_allowed: per_report - per_report / 10,
                num_requests_denied: per_report / 10,
            })
            .collect(),
    }
}

/// Actions that let requests through, and those that do not.
fn counts(msg: &RateLimitQuotaResponse) -> (u64, u64) {
    let mut allowed = 0;
    let mut denied = 0;
    for a in &msg.bucket_action {
        let deny = match &a.bucket_action {
            Some(Kind::QuotaAssignmentAction(q)) => matches!(
                q.rate_limit_strategy.as_ref().and_then(|s| s.strategy),
                Some(Strategy::BlanketRule(r)) if r == BlanketRule::DenyAll as i32
            ),
            _ => true,
        };
        if deny {
            denied += 1;
        } else {
            allowed += 1;
        }
    }
    (allowed, denied)
}
