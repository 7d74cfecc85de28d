use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::TestDaemon;

async fn health_of(d: &TestDaemon, service: &str) -> i32 {
    let mut c = HealthClient::new(d.channel().await);
    c.check(HealthCheckRequest {
        service: service.into(),
    })
    .await
    .expect("health answers")
    .into_inner()
    .status
}

#[tokio::test]
async fn grpc_health_reports_serving_for_the_server_and_both_apis() {
    let d = TestDaemon::start().await;
    for service in [
        "",
        "quotad.v1.RateLimiter",
        "envoy.service.ratelimit.v3.RateLimitService",
    ] {
        assert_eq!(
            health_of(&d, service).await,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let mut c = HealthClient::new(d.channel().await);
    let unknown = c
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn livez_and_readyz_answer_over_http() {
    let d = TestDaemon::start().await;
    assert_eq!(d.http_get("/livez").await, (200, "ok\n".to_string()));
    // TestDaemon::start waits for readiness, so it is ready now.
    let last = d.http_get("/readyz").await;
    assert_eq!(last, (200, "ready\n".to_string()));
    assert_eq!(d.http_get("/nope").await.0, 404);
}

async fn list_services_v1(d: &TestDaemon) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut c = ServerReflectionClient::new(d.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut out = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = out.next().await.unwrap().unwrap();
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn list_services_v1alpha(d: &TestDaemon) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut c = ServerReflectionClient::new(d.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut out = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = out.next().await.unwrap().unwrap();
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_our_services_in_v1_and_v1alpha() {
    let d = TestDaemon::start().await;
    for services in [list_services_v1(&d).await, list_services_v1alpha(&d).await] {
        for want in ["quotad.v1.RateLimiter", "grpc.health.v1.Health"] {
            assert!(
                services.iter().any(|s| s == want),
                "{want} missing from {services:?}"
            );
        }
    }
}

#[tokio::test]
async fn reflection_serves_the_native_file_descriptor() {
    use prost::Message;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let d = TestDaemon::start().await;
    let mut c = ServerReflectionClient::new(d.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "quotad.v1.RateLimiter".into(),
        )),
    };
    let mut out = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = out.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(f)) = resp.message_response else {
        panic!("no file descriptor");
    };
    let files: Vec<prost_types::FileDescriptorProto> = f
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .collect();
    let ours = files
        .iter()
        .find(|f| f.package() == "quotad.v1")
        .expect("quotad.v1 file");
    let methods: Vec<&str> = ours.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, vec!["Check", "CheckBatch", "CheckStream"]);
}
