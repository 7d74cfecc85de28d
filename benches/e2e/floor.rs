//! The floor: a minimal tonic server that answers every native
//! (`Check`, `CheckBatch`, `CheckStream`) and Envoy RLS v3
//! (`ShouldRateLimit`) request with a constant OK, with no engine behind
//! it. What quotad does on top of gRPC is whatever it costs beyond this.
//!
//! The answers have quotad's shape with its default `response_headers:
//! both` (five RateLimit header fields, a status per descriptor with its
//! limit), so both servers put the same bytes on the wire and the
//! difference is the work, not the payload. The server is built as
//! quotad builds its own: `Server::builder()` defaults, TCP_NODELAY and
//! keepalive on accepted sockets, the multi-threaded runtime.

use std::pin::Pin;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use quotad::api::pb::rate_limiter_server::{RateLimiter, RateLimiterServer};
use quotad::api::pb::{
    AcquireRequest, AcquireResponse, CheckBatchRequest, CheckBatchResponse, CheckRequest,
    CheckResponse, Header, HoldRequest, HoldResponse, ReleaseRequest, ReleaseResponse,
    RenewRequest, RenewResponse, ReportRequest, ReportResponse,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The five header fields quotad sends with `response_headers: both`,
/// with values of a typical length.
const HEADERS: [(&str, &str); 5] = [
    ("RateLimit-Limit", "100000000"),
    ("RateLimit-Remaining", "99999999"),
    ("RateLimit-Reset", "1"),
    ("RateLimit-Policy", "\"default/per-second\";q=100000000;w=1"),
    ("RateLimit", "\"default/per-second\";r=99999999;t=1"),
];

/// The constant native answer (`id` echoed).
fn check_response(id: u64) -> CheckResponse {
    CheckResponse {
        allowed: true,
        limit: 100_000_000,
        remaining: 99_999_999,
        reset_after: Some(prost_types::Duration {
            seconds: 0,
            nanos: 10,
        }),
        retry_after: Some(prost_types::Duration::default()),
        policy: "default/per-second".into(),
        id,
        reason: 0,
        window_seconds: 1,
        error: String::new(),
        headers: HEADERS
            .iter()
            // Names copied, as prost's `String` field made every server
            // do (quotad's own answers borrow them since issue 24's lever
            // 8): the floor stays the reference it was.
            .map(|(n, v)| Header {
                name: std::borrow::Cow::Owned((*n).to_owned()),
                value: (*v).into(),
            })
            .collect(),
    }
}

/// The constant RLS answer: OK, one OK status per descriptor.
fn rls_response(descriptors: usize) -> RateLimitResponse {
    let status = DescriptorStatus {
        code: Code::Ok as i32,
        current_limit: Some(RateLimit {
            name: "default/per-second".into(),
            requests_per_unit: 100_000_000,
            unit: Unit::Second as i32,
        }),
        limit_remaining: 99_999_999,
        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 0,
            nanos: 10,
        }),
        quota: None,
    };
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![status; descriptors],
        response_headers_to_add: HEADERS
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).into(),
                value: (*v).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Answers everything OK.
#[derive(Debug, Default, Clone, Copy)]
pub struct Floor;

type Answers = Pin<Box<dyn Stream<Item = Result<CheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RateLimiter for Floor {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(check_response(req.get_ref().id)))
    }

    async fn check_batch(
        &self,
        req: Request<CheckBatchRequest>,
    ) -> Result<Response<CheckBatchResponse>, Status> {
        Ok(Response::new(CheckBatchResponse {
            results: req
                .get_ref()
                .checks
                .iter()
                .map(|c| check_response(c.id))
                .collect(),
        }))
    }

    type CheckStreamStream = Answers;

    async fn check_stream(
        &self,
        req: Request<Streaming<CheckRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let answers = req.into_inner().map(|c| c.map(|c| check_response(c.id)));
        Ok(Response::new(Box::pin(answers)))
    }

    // The lease calls: granted at once, nothing kept (the floor for an
    // Acquire + Release pair).
    async fn acquire(
        &self,
        req: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        Ok(Response::new(AcquireResponse {
            granted: true,
            lease: "0".repeat(48),
            id: req.get_ref().id,
            ..AcquireResponse::default()
        }))
    }

    async fn renew(&self, _: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        Ok(Response::new(RenewResponse::default()))
    }

    async fn release(
        &self,
        _: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        Ok(Response::new(ReleaseResponse { released: true }))
    }

    type HoldStream = Pin<Box<dyn Stream<Item = Result<HoldResponse, Status>> + Send>>;

    async fn hold(
        &self,
        req: Request<Streaming<HoldRequest>>,
    ) -> Result<Response<Self::HoldStream>, Status> {
        // One answer per message: the floor keeps no lease.
        let answers = req.into_inner().map(|m| {
            m.map(|_| HoldResponse {
                answer: Some(AcquireResponse {
                    granted: true,
                    ..AcquireResponse::default()
                }),
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }

    // Reports: answered at once, nothing charged (the floor for Report).
    async fn report(
        &self,
        req: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        Ok(Response::new(ReportResponse {
            id: req.get_ref().id,
            ..ReportResponse::default()
        }))
    }

    type ReportStreamStream = Pin<Box<dyn Stream<Item = Result<ReportResponse, Status>> + Send>>;

    async fn report_stream(
        &self,
        req: Request<Streaming<ReportRequest>>,
    ) -> Result<Response<Self::ReportStreamStream>, Status> {
        let answers = req.into_inner().map(|r| {
            r.map(|r| ReportResponse {
                id: r.id,
                ..ReportResponse::default()
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

#[tonic::async_trait]
impl RateLimitService for Floor {
    async fn should_rate_limit(
        &self,
        req: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(rls_response(req.get_ref().descriptors.len())))
    }
}

/// Serves the floor on 127.0.0.1 (a free port), prints `port N` on
/// stdout, and serves until stdin closes (the parent is gone).
pub fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("port {}", listener.local_addr()?.port());
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(std::time::Duration::from_secs(60)));
        let parent_gone = async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf)
                .await
                .is_ok_and(|n| n > 0)
            {}
        };
        tonic::transport::Server::builder()
            .add_service(RateLimiterServer::new(Floor))
            .add_service(RateLimitServiceServer::new(Floor))
            .serve_with_incoming_shutdown(incoming, parent_gone)
            .await?;
        anyhow::Ok(())
    })
}
