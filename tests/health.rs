//! gRPC health (Check and Watch), /livez and /readyz, server reflection v1 and v1alpha.

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
        "envoy.service.rate_limit_quota.v3.RateLimitQuotaService",
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
    // Watch answers SERVICE_UNKNOWN for it, per the health protocol.
    let mut w = c
        .watch(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = w.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    // ... and keeps the call open, so clients do not re-watch in a loop.
    let more = tokio::time::timeout(std::time::Duration::from_millis(300), w.next()).await;
    assert!(more.is_err(), "watch of an unknown service ended: {more:?}");
}

#[tokio::test]
async fn livez_and_readyz_answer_over_http() {
    let d = TestDaemon::start().await;
    assert_eq!(d.http_get("/livez").await, (200, "ok\n".to_string()));
    // TestDaemon::start waits for readiness, so it is ready now.
    // Which config is in effect (a config given as text has no files:
    // the digest is SHA-256 of nothing) and how many overrides.
    let last = d.http_get("/readyz").await;
    assert_eq!(
        last,
        (
            200,
            "ready\nconfig: version 1 (digest e3b0c44298fc), reloads 0 ok, 0 failed\noverrides: 0 in force\n"
                .to_string()
        )
    );
    // envoyproxy/ratelimit's probe path answers as it does there.
    assert_eq!(d.http_get("/healthcheck").await, (200, "OK".to_string()));
    assert_eq!(d.http_get("/nope").await.0, 404);
}

/// Lists services through reflection; v1 and v1alpha have the same shape
/// but distinct generated types.
macro_rules! list_services {
    ($version:ident, channel $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new($channel);
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
            Some(MessageResponse::ListServicesResponse(l)) => l
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
    ($version:ident, $d:expr) => {{
        list_services!($version, channel $d.channel().await)
    }};
}

async fn list_services_v1(d: &TestDaemon) -> Vec<String> {
    list_services!(v1, d)
}

#[tokio::test]
async fn each_listener_lists_exactly_the_services_it_serves() {
    let config = format!(
        "{}{}",
        crate::support::CONFIG,
        crate::support::admin_section("")
    );
    let d = TestDaemon::with_config(&config).await;
    let reflection = [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let mut check: Vec<&str> = vec![
        "envoy.service.rate_limit_quota.v3.RateLimitQuotaService",
        "envoy.service.ratelimit.v3.RateLimitService",
        "grpc.health.v1.Health",
        "quotad.v1.RateLimiter",
    ];
    check.extend(reflection);
    check.sort_unstable();
    let mut admin = vec!["quotad.v1.QuotaAdmin"];
    admin.extend(reflection);
    admin.sort_unstable();
    let admin_channel = || async {
        let addr = d.admin_addr.expect("an admin listener");
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the admin listener")
    };
    for mut listed in [list_services_v1(&d).await, list_services!(v1alpha, d)] {
        listed.sort_unstable();
        assert_eq!(listed, check, "the check listener");
    }
    for mut listed in [
        list_services!(v1, channel admin_channel().await),
        list_services!(v1alpha, channel admin_channel().await),
    ] {
        listed.sort_unstable();
        assert_eq!(listed, admin, "the admin listener");
    }
}

#[tokio::test]
async fn a_service_of_another_listener_is_unimplemented_and_named() {
    let config = format!(
        "{}{}",
        crate::support::CONFIG,
        crate::support::admin_section("")
    );
    let d = TestDaemon::with_config(&config).await;
    let mut admin_on_check =
        quotad::api::pb::quota_admin_client::QuotaAdminClient::new(d.channel().await);
    let err = admin_on_check
        .list_plans(quotad::api::pb::ListPlansRequest::default())
        .await
        .expect_err("the check listener does not serve the admin API");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(
        err.message()
            .starts_with("quotad.v1.QuotaAdmin is not served on this listener; it serves "),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("quotad.v1.RateLimiter"),
        "{}",
        err.message()
    );
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
    assert_eq!(
        methods,
        vec![
            "Check",
            "CheckBatch",
            "CheckStream",
            "Acquire",
            "Renew",
            "Release",
            "Hold",
            "Report",
            "ReportStream"
        ]
    );
}

/// Fetches, through reflection v1alpha (what grpcurl and many Python
/// clients ask), the file defining `symbol` and every file it imports.
async fn reflected_pool(d: &TestDaemon, symbol: &str) -> prost_reflect::DescriptorPool {
    use prost::Message;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut c = ServerReflectionClient::new(d.channel().await);
    let mut files: Vec<prost_types::FileDescriptorProto> = Vec::new();
    let mut asks = vec![MessageRequest::FileContainingSymbol(symbol.into())];
    while let Some(ask) = asks.pop() {
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(ask),
        };
        let mut out = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let resp = out.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(f)) = resp.message_response else {
            panic!("no file descriptor for {symbol}: {resp:?}");
        };
        for raw in f.file_descriptor_proto {
            let fd = prost_types::FileDescriptorProto::decode(raw.as_slice()).unwrap();
            if files.iter().any(|have| have.name == fd.name) {
                continue;
            }
            for dep in &fd.dependency {
                if !files.iter().any(|have| have.name() == dep) {
                    asks.push(MessageRequest::FileByFilename(dep.clone()));
                }
            }
            files.push(fd);
        }
    }
    let mut pool = prost_reflect::DescriptorPool::new();
    // Dependencies first: add until every file is in.
    while !files.is_empty() {
        let before = files.len();
        files.retain(|f| pool.add_file_descriptor_proto(f.clone()).is_err());
        assert!(files.len() < before, "unresolvable descriptors: {files:?}");
    }
    pool
}

#[tokio::test]
async fn reflection_describes_envoy_rls_so_a_dynamic_client_can_call_it() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value};

    let d = TestDaemon::start().await;
    let services = list_services_v1(&d).await;
    assert!(
        services
            .iter()
            .any(|s| s == "envoy.service.ratelimit.v3.RateLimitService"),
        "{services:?}"
    );
    let pool = reflected_pool(&d, "envoy.service.ratelimit.v3.RateLimitService").await;
    let service = pool
        .get_service_by_name("envoy.service.ratelimit.v3.RateLimitService")
        .expect("service described");
    let method = service.methods().next().expect("one method");
    assert_eq!(method.name(), "ShouldRateLimit");

    // A request built only from the reflected descriptors...
    let msg = |name: &str| {
        DynamicMessage::new(
            pool.get_message_by_name(name)
                .unwrap_or_else(|| panic!("{name} described")),
        )
    };
    let mut entry = msg("envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry");
    entry.set_field_by_name("key", Value::String("api_key".into()));
    entry.set_field_by_name("value", Value::String("tiny-key".into()));
    let mut descriptor = msg("envoy.extensions.common.ratelimit.v3.RateLimitDescriptor");
    descriptor.set_field_by_name("entries", Value::List(vec![Value::Message(entry)]));
    let mut dynamic = DynamicMessage::new(method.input());
    dynamic.set_field_by_name("domain", Value::String("edge".into()));
    dynamic.set_field_by_name("descriptors", Value::List(vec![Value::Message(descriptor)]));
    dynamic.set_field_by_name("hits_addend", Value::U32(2));
    // ... is exactly Envoy's request on the wire.
    let decoded = RateLimitRequest::decode(dynamic.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        decoded,
        RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "api_key".into(),
                    value: "tiny-key".into()
                }],
                ..Default::default()
            }],
            hits_addend: 2,
        }
    );

    // And the daemon's answer reads back through the reflected descriptors.
    let mut c = RateLimitServiceClient::new(d.channel().await);
    let answer = c.should_rate_limit(decoded).await.unwrap().into_inner();
    let read = DynamicMessage::decode(method.output(), answer.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        read.get_field_by_name("overall_code")
            .unwrap()
            .as_enum_number(),
        Some(1)
    );
    let statuses = read.get_field_by_name("statuses").unwrap();
    let Value::List(statuses) = statuses.as_ref() else {
        panic!("statuses is a list");
    };
    let status = statuses[0].as_message().unwrap();
    assert_eq!(
        status
            .get_field_by_name("limit_remaining")
            .unwrap()
            .as_u32(),
        Some(0)
    );
    let limit = status.get_field_by_name("current_limit").unwrap();
    let limit = limit.as_message().unwrap();
    assert_eq!(
        limit.get_field_by_name("name").unwrap().as_str(),
        Some("tiny/per-minute")
    );
    assert_eq!(
        limit.get_field_by_name("unit").unwrap().as_enum_number(),
        Some(2)
    );
    let reset = status.get_field_by_name("duration_until_reset").unwrap();
    let reset = reset.as_message().unwrap();
    assert_eq!(
        reset.get_field_by_name("seconds").unwrap().as_i64(),
        Some(60)
    );
}

#[tokio::test]
async fn reflection_describes_envoy_rlqs_so_a_dynamic_client_can_read_and_write_it() {
    use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
    use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
        BucketId, RateLimitQuotaUsageReports,
    };
    use prost::Message;
    use prost_reflect::{DynamicMessage, MapKey, Value};

    let d = TestDaemon::with_config(&crate::rlqs::config("")).await;
    let name = "envoy.service.rate_limit_quota.v3.RateLimitQuotaService";
    let pool = reflected_pool(&d, name).await;
    let service = pool.get_service_by_name(name).expect("service described");
    let method = service.methods().next().expect("one method");
    assert_eq!(method.name(), "StreamRateLimitQuotas");
    assert!(method.is_client_streaming() && method.is_server_streaming());
    // A report built from the reflected descriptors is Envoy's on the wire.
    let usage_desc = pool
        .get_message_by_name(
            "envoy.service.rate_limit_quota.v3.RateLimitQuotaUsageReports.BucketQuotaUsage",
        )
        .expect("usage described");
    let id_desc = pool
        .get_message_by_name("envoy.service.rate_limit_quota.v3.BucketId")
        .expect("bucket id described");
    let mut id = DynamicMessage::new(id_desc);
    id.set_field_by_name(
        "bucket",
        Value::Map(
            [(
                MapKey::String("tenant".into()),
                Value::String("acme".into()),
            )]
            .into(),
        ),
    );
    let mut usage = DynamicMessage::new(usage_desc);
    usage.set_field_by_name("bucket_id", Value::Message(id));
    usage.set_field_by_name("num_requests_allowed", Value::U64(3));
    let mut report = DynamicMessage::new(method.input());
    report.set_field_by_name("domain", Value::String("shop".into()));
    report.set_field_by_name(
        "bucket_quota_usages",
        Value::List(vec![Value::Message(usage)]),
    );
    let decoded = RateLimitQuotaUsageReports::decode(report.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        decoded,
        RateLimitQuotaUsageReports {
            domain: "shop".into(),
            bucket_quota_usages: vec![BucketQuotaUsage {
                bucket_id: Some(BucketId {
                    bucket: [("tenant".to_owned(), "acme".to_owned())].into(),
                }),
                num_requests_allowed: 3,
                ..Default::default()
            }],
        }
    );
    // The daemon's answer reads back through the reflected descriptors.
    let mut envoy = crate::rlqs::Envoy::connect(d.channel().await)
        .await
        .unwrap();
    envoy.send_raw(decoded).await;
    let answer = envoy
        .next(std::time::Duration::from_secs(2))
        .await
        .unwrap()
        .expect("answered");
    let read = DynamicMessage::decode(method.output(), answer.encode_to_vec().as_slice()).unwrap();
    let actions = read.get_field_by_name("bucket_action").unwrap();
    let Value::List(actions) = actions.as_ref() else {
        panic!("bucket_action is a list");
    };
    let action = actions[0].as_message().unwrap();
    let assign = action.get_field_by_name("quota_assignment_action").unwrap();
    let strategy = assign
        .as_message()
        .unwrap()
        .get_field_by_name("rate_limit_strategy")
        .unwrap();
    let bucket = strategy
        .as_message()
        .unwrap()
        .get_field_by_name("token_bucket")
        .unwrap();
    let per_fill = bucket
        .as_message()
        .unwrap()
        .get_field_by_name("tokens_per_fill")
        .unwrap();
    assert_eq!(
        per_fill
            .as_message()
            .unwrap()
            .get_field_by_name("value")
            .unwrap()
            .as_u32(),
        // 95/s (the whole rate less the margin) over 2 s.
        Some(190)
    );
}
