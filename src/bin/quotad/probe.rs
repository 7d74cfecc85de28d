//! `quotad probe`: is a running quotad ready, and does it answer a call?
//! For a container's health check (the image has no shell and no curl)
//! and the Helm chart's `helm test`.
//!
//! Each step prints one line and must pass: over the HTTP listener,
//! `GET /readyz` answers 200; over the gRPC listener, gRPC health (the
//! whole server) says `SERVING`, and an Envoy RLS call for a domain
//! nobody limits (`quotad-probe`) answers `OK`: a call's whole path,
//! charging nothing. Exit 0 when all pass, 69 (EX_UNAVAILABLE) when one
//! fails, 64 for a wrong command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use quotad::cli::endpoint::{ClientTls, grpc_endpoint};
use quotad::cli::{EX_USAGE, error_text};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// EX_UNAVAILABLE: the server is not ready, or does not answer.
const EX_UNAVAILABLE: u8 = 69;

/// The domain of the probe's RLS call: one nobody limits.
const PROBE_DOMAIN: &str = "quotad-probe";

/// `quotad probe`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProbeArgs {
    /// The HTTP listener (health and metrics), http://host:port; "" skips
    /// its step.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9090")]
    http: String,
    /// The gRPC listener, http://host:port, or https://host:port for TLS;
    /// "" skips its steps.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8081")]
    grpc: String,
    /// CA certificate(s) (PEM) to trust for an https:// --grpc, instead of
    /// the system's.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for a gRPC listener requiring mTLS.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not
    /// --grpc's host.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// How long each step may take (ms, s, m).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// A step's outcome: what was seen, or why it failed.
type Step = Result<String, String>;

/// Runs the probe; its exit code.
pub(crate) fn run(args: &ProbeArgs) -> ExitCode {
    let targets = match targets(args) {
        Ok(t) => t,
        Err(why) => {
            eprintln!("error: {why}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the probe's runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let steps = runtime.block_on(steps(args, targets));
    let mut failed = false;
    for (what, step) in &steps {
        match step {
            Ok(seen) => quotad::cli::out(&format!("ok: {what}: {seen}")),
            Err(why) => {
                failed = true;
                quotad::cli::out(&format!("failed: {what}: {why}"));
            }
        }
    }
    if failed {
        ExitCode::from(EX_UNAVAILABLE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Every step, in order; the gRPC steps stop at the first failure (a
/// server that does not connect fails once, not three times).
async fn steps(args: &ProbeArgs, targets: Targets) -> Vec<(String, Step)> {
    let mut out = Vec::new();
    if let Some(readyz) = &targets.readyz {
        let what = format!("GET {}", readyz.uri);
        out.push((what, bounded(args.timeout, ready(readyz)).await));
    }
    let Some(endpoint) = targets.grpc else {
        return out;
    };
    let channel = match bounded(args.timeout, connect(endpoint)).await {
        Ok(c) => c,
        Err(why) => {
            out.push((format!("connect {}", args.grpc), Err(why)));
            return out;
        }
    };
    let health = bounded(args.timeout, serving(channel.clone())).await;
    let healthy = health.is_ok();
    out.push((format!("gRPC health of {}", args.grpc), health));
    if healthy {
        let what = format!("Envoy RLS call (domain {PROBE_DOMAIN}) to {}", args.grpc);
        out.push((what, bounded(args.timeout, rls_call(channel)).await));
    }
    out
}

/// `step`, failed when it takes longer than `timeout`.
async fn bounded<T>(
    timeout: Duration,
    step: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, step)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}

/// What the probe asks: `/readyz` on the HTTP listener and the gRPC
/// listener, each `None` when skipped.
struct Targets {
    readyz: Option<Readyz>,
    grpc: Option<Endpoint>,
}

/// `--http`'s `/readyz`, and the address to connect to.
struct Readyz {
    uri: http::Uri,
    /// The host as a socket takes it (an IPv6 literal without brackets).
    host: String,
    port: u16,
}

/// The targets `args` describe; a mistake in them is the command line's.
fn targets(args: &ProbeArgs) -> Result<Targets, String> {
    let readyz = match args.http.as_str() {
        "" => None,
        base => {
            let uri: http::Uri = format!("{}/readyz", base.trim_end_matches('/'))
                .parse()
                .map_err(|e| format!("--http {base}: not a URL: {e}"))?;
            let host = match (uri.scheme_str(), uri.host()) {
                (Some("http"), Some(host)) => host,
                _ => return Err(format!("--http {base}: expected http://host:port")),
            };
            Some(Readyz {
                // An IPv6 literal comes bracketed (`[::1]`).
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: uri.port_u16().unwrap_or(80),
                uri,
            })
        }
    };
    let grpc = match args.grpc.as_str() {
        "" => None,
        url => {
            let tls = ClientTls {
                ca_file: args.ca_file.as_deref(),
                cert_file: args.cert_file.as_deref(),
                key_file: args.key_file.as_deref(),
                server_name: args.tls_server_name.as_deref(),
            };
            Some(grpc_endpoint("--grpc", url, &tls, args.timeout).map_err(|e| e.to_string())?)
        }
    };
    Ok(Targets { readyz, grpc })
}

async fn connect(endpoint: Endpoint) -> Result<Channel, String> {
    endpoint.connect().await.map_err(|e| error_text(&e))
}

/// `GET /readyz` over HTTP/1.1: 200, or what came instead.
async fn ready(target: &Readyz) -> Step {
    let Readyz { uri, host, port } = target;
    let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| error_text(&e))?;
    tokio::spawn(conn);
    let authority = uri.authority().map_or(host.clone(), ToString::to_string);
    let request = http::Request::get(uri.path())
        .header(http::header::HOST, authority)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| error_text(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
        .unwrap_or_default();
    // Its first line (`ready`, or why not), one line per step.
    let said: String = body
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    if status == http::StatusCode::OK {
        Ok(format!("{status} {said}"))
    } else {
        Err(format!("{status} {said}"))
    }
}

/// gRPC health of the whole server: `SERVING`, or what it said instead.
async fn serving(channel: Channel) -> Step {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match ServingStatus::try_from(answer.status) {
        Ok(ServingStatus::Serving) => Ok("SERVING".to_owned()),
        Ok(other) => Err(other.as_str_name().to_owned()),
        Err(_) => Err(format!("unknown status {}", answer.status)),
    }
}

/// One Envoy RLS call for [`PROBE_DOMAIN`]: answered `OK`.
async fn rls_call(channel: Channel) -> Step {
    let request = RateLimitRequest {
        domain: PROBE_DOMAIN.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "probe".to_owned(),
                value: "1".to_owned(),
            }],
            // Checks without spending, should anyone limit the domain.
            hits_addend: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 }),
            ..Default::default()
        }],
        hits_addend: 0,
    };
    let answer = RateLimitServiceClient::new(channel)
        .should_rate_limit(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match Code::try_from(answer.overall_code) {
        Ok(Code::Ok) => Ok("OK".to_owned()),
        Ok(other) => Err(format!("answered {}", other.as_str_name())),
        Err(_) => Err(format!("unknown code {}", answer.overall_code)),
    }
}
