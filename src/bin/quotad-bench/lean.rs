//! Unary calls that decode only what the generator counts.
//!
//! The generator shares the machine with the server it measures (on two
//! cores, one each), and a closed loop runs at the pace of the slower of
//! the two. Decoding a whole `RateLimitResponse` (its statuses, five
//! header strings) or `CheckResponse` costs the generator more than the
//! server spends deciding the call, so those decodes set the rate, not
//! the server. These clients decode the one field the generator counts
//! (prost skips the others without allocating) and send the same
//! requests as the generated clients, on the same paths.

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use http::uri::PathAndQuery;
use quotad::api::pb::CheckRequest;
use tonic::Status;
use tonic::client::Grpc;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

/// `RateLimitResponse`'s `overall_code` alone.
#[derive(Clone, PartialEq, prost::Message)]
struct OverallCode {
    #[prost(int32, tag = "1")]
    overall_code: i32,
}

/// `CheckResponse`'s `allowed` alone.
#[derive(Clone, PartialEq, prost::Message)]
struct Allowed {
    #[prost(bool, tag = "1")]
    allowed: bool,
}

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
const CHECK: &str = "/quotad.v1.RateLimiter/Check";

/// A unary client over one channel.
#[derive(Debug, Clone)]
pub struct Lean(Grpc<Channel>);

impl Lean {
    pub fn new(channel: Channel) -> Self {
        Lean(Grpc::new(channel))
    }

    /// Envoy RLS `ShouldRateLimit`: whether the answer was `OK`.
    pub async fn should_rate_limit(&mut self, req: RateLimitRequest) -> Result<bool, Status> {
        let r: OverallCode = self.unary(req, SHOULD_RATE_LIMIT).await?;
        // 1: OK, 2: OVER_LIMIT.
        Ok(r.overall_code == 1)
    }

    /// `quotad.v1.RateLimiter/Check`: whether the check was allowed.
    pub async fn check(&mut self, req: CheckRequest) -> Result<bool, Status> {
        let r: Allowed = self.unary(req, CHECK).await?;
        Ok(r.allowed)
    }

    async fn unary<Q, A>(&mut self, req: Q, path: &'static str) -> Result<A, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
        let codec = ProstCodec::<Q, A>::default();
        let answer = self
            .0
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(answer.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use prost::Message;

    #[test]
    fn the_lean_messages_read_the_field_of_the_whole_ones() {
        let whole = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            response_headers_to_add: vec![Default::default(); 3],
            ..Default::default()
        };
        let lean = OverallCode::decode(whole.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(lean.overall_code, 2);
        let whole = quotad::api::pb::CheckResponse {
            allowed: true,
            remaining: 7,
            policy: "p".into(),
            ..Default::default()
        };
        let lean = Allowed::decode(whole.encode_to_vec().as_slice()).expect("decodes");
        assert!(lean.allowed);
    }
}
