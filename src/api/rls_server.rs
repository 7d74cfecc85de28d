//! The gRPC route of `envoy.service.ratelimit.v3.RateLimitService`.
//!
//! It takes the place of the server `envoy-types` generates, for two
//! reasons: its answer is an [`RlsReply`] whose headers are written
//! straight into the frame ([`RlsCodec`]), and its requests decode as the
//! native API's do (a malformed message is `INVALID_ARGUMENT`, and each
//! call's buffers start at 512 bytes, not 8 KiB). It routes the one
//! method the service has; any other path of the service is
//! `UNIMPLEMENTED`, as the generated server answers. Compression stays
//! off, as there.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::codec::RlsCodec;
use super::envoy_rls::EnvoyRlsService;
use super::rls_reply::RlsReply;

/// The service's name, as Envoy's `grpc_service` calls it.
const NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// Its one method's path.
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// The RLS service as a route of the gRPC server.
#[derive(Debug, Clone)]
pub struct RlsServer {
    service: Arc<EnvoyRlsService>,
    max_decoding_message_size: usize,
}

impl RlsServer {
    /// Serves `service`, refusing requests over `max_decoding_message_size`
    /// bytes (`RESOURCE_EXHAUSTED`, as tonic's limit does).
    pub fn new(service: EnvoyRlsService, max_decoding_message_size: usize) -> Self {
        Self {
            service: Arc::new(service),
            max_decoding_message_size,
        }
    }
}

impl NamedService for RlsServer {
    const NAME: &'static str = NAME;
}

/// `ShouldRateLimit`, as tonic's unary driver calls it.
struct ShouldRateLimit(Arc<EnvoyRlsService>);

impl UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RlsReply;
    type Future = BoxFuture<Response<RlsReply>, Status>;

    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let service = Arc::clone(&self.0);
        Box::pin(async move { service.should_rate_limit(request).await })
    }
}

impl<B> tower_service::Service<http::Request<B>> for RlsServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SHOULD_RATE_LIMIT {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let method = ShouldRateLimit(Arc::clone(&self.service));
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = Grpc::new(RlsCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// A trailers-only `UNIMPLEMENTED`, as generated servers answer a method
/// they do not have.
fn unimplemented() -> http::Response<Body> {
    let mut response = http::Response::new(Body::default());
    let headers = response.headers_mut();
    headers.insert(
        Status::GRPC_STATUS,
        (tonic::Code::Unimplemented as i32).into(),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}
