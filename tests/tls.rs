//! TLS on the check and admin listeners (certificates made with rcgen):
//! plain text refused on a TLS port, mTLS refusing clients without a
//! certificate from the right CA, audit lines naming the certificate,
//! renewed certificates served to new connections after a reload, and
//! config errors that name the file and field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quotad::api::pb::CheckRequest;
use quotad::api::pb::quota_admin_client::QuotaAdminClient;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use quotad::api::pb::set_override_request::Target;
use quotad::api::pb::{ListPlansRequest, ReloadRequest, SetOverrideRequest};
use quotad::config::Config;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::support::{Bearer, CONFIG, OPS_TOKEN, TestCa, TestDaemon, admin_section, write_file};

/// A server certificate for `localhost`/127.0.0.1 from `ca`, written to
/// `dir` as `name.pem` and `name.key`.
fn server_files(ca: &TestCa, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.leaf("localhost", &["localhost", "127.0.0.1"]);
    (
        write_file(dir, &format!("{name}.pem"), &cert),
        write_file(dir, &format!("{name}.key"), &key),
    )
}

/// A TLS channel to `addr` trusting `ca_pem`, with an optional client
/// certificate. `Err` when the connection or handshake fails.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn checks_pass(channel: Channel) -> Result<bool, tonic::Status> {
    RateLimiterClient::new(channel)
        .check(CheckRequest {
            key: "alice".into(),
            cost: 1,
            id: 0,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().allowed)
}

#[tokio::test]
async fn the_check_listener_serves_tls_and_refuses_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("check CA");
    let (cert, key) = server_files(&ca, dir.path(), "server");
    let yaml = format!(
        "{CONFIG}  tls: {{ cert_file: {}, key_file: {} }}\n",
        cert.display(),
        key.display()
    );
    assert!(
        CONFIG.trim_end().ends_with("shutdown_grace: 5s"),
        "tls goes under server"
    );
    let d = TestDaemon::with_config(&yaml).await;
    let channel = tls_channel(d.grpc_addr, &ca.cert_pem, None)
        .await
        .expect("TLS connects");
    assert!(checks_pass(channel).await.expect("served"));
    // Plain text on the TLS port: no answer.
    let plain = RateLimiterClient::new(d.channel().await)
        .check(CheckRequest {
            key: "alice".into(),
            cost: 1,
            id: 0,
            ..Default::default()
        })
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // A client that does not trust the server's CA gives up.
    let other = TestCa::new("someone else");
    let untrusted = tls_channel(d.grpc_addr, &other.cert_pem, None).await;
    assert!(untrusted.is_err());
}

#[tokio::test]
async fn the_check_listener_can_require_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("check CA");
    let gateways = TestCa::new("gateways");
    let (cert, key) = server_files(&ca, dir.path(), "server");
    let client_ca = write_file(dir.path(), "gateways.pem", &gateways.cert_pem);
    let yaml = format!(
        "{CONFIG}  tls: {{ cert_file: {}, key_file: {}, client_ca_file: {} }}\n",
        cert.display(),
        key.display(),
        client_ca.display()
    );
    let d = TestDaemon::with_config(&yaml).await;
    let served = match tls_channel(d.grpc_addr, &ca.cert_pem, None).await {
        Err(_) => false,
        Ok(channel) => checks_pass(channel).await.is_ok(),
    };
    assert!(!served, "a gateway without a certificate was served");
    let (cert, key) = gateways.leaf("envoy-1", &[]);
    let channel = tls_channel(d.grpc_addr, &ca.cert_pem, Some((&cert, &key)))
        .await
        .expect("mTLS connects");
    assert!(checks_pass(channel).await.expect("served"));
}

/// A daemon whose admin listener needs TLS with client certificates from
/// `clients`, and writes its audit to `dir/audit.jsonl`.
async fn mtls_admin(dir: &Path, server_ca: &TestCa, clients: &TestCa) -> TestDaemon {
    let (cert, key) = server_files(server_ca, dir, "admin");
    let client_ca = write_file(dir, "clients.pem", &clients.cert_pem);
    let extra = format!(
        "  tls: {{ cert_file: {}, key_file: {}, client_ca_file: {} }}\n  audit_file: {}\n",
        cert.display(),
        key.display(),
        client_ca.display(),
        dir.join("audit.jsonl").display()
    );
    TestDaemon::with_config(&format!("{CONFIG}{}", admin_section(&extra))).await
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("server CA");
    let clients = TestCa::new("ops clients");
    let d = mtls_admin(dir.path(), &server_ca, &clients).await;
    let addr = d.admin_addr.unwrap();
    let plans = |channel: Channel| async move {
        QuotaAdminClient::with_interceptor(channel, Bearer(Some(OPS_TOKEN.into())))
            .list_plans(ListPlansRequest {})
            .await
    };

    // No client certificate: the handshake is refused, so is the call.
    let refused = match tls_channel(addr, &server_ca.cert_pem, None).await {
        Err(_) => true,
        Ok(channel) => plans(channel).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // A certificate from another CA: refused too.
    let stranger = TestCa::new("stranger CA");
    let (cert, key) = stranger.leaf("mallory", &[]);
    let refused = match tls_channel(addr, &server_ca.cert_pem, Some((&cert, &key))).await {
        Err(_) => true,
        Ok(channel) => plans(channel).await.is_err(),
    };
    assert!(refused, "a client with a stranger's certificate was served");

    // The right certificate (and token): served, and named in the audit.
    let (cert, key) = clients.leaf("alice", &[]);
    let channel = tls_channel(addr, &server_ca.cert_pem, Some((&cert, &key)))
        .await
        .expect("mTLS connects");
    let mut admin = QuotaAdminClient::with_interceptor(channel, Bearer(Some(OPS_TOKEN.into())));
    admin.list_plans(ListPlansRequest {}).await.expect("served");
    let o = admin
        .set_override(SetOverrideRequest {
            key: "k".into(),
            target: Some(Target::Block(true)),
            reason: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .r#override
        .unwrap();
    assert_eq!(o.created_by, "ops (CN=alice)");
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(line["who"], "ops (CN=alice)");
    // A certificate does not replace the token.
    let channel = tls_channel(addr, &server_ca.cert_pem, Some((&cert, &key)))
        .await
        .unwrap();
    let e = QuotaAdminClient::with_interceptor(channel, Bearer(None))
        .list_plans(ListPlansRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_connections_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old CA");
    let (cert, key) = server_files(&old_ca, dir.path(), "server");
    let config = write_file(
        dir.path(),
        "quotad.yaml",
        &format!(
            "{CONFIG}  tls: {{ cert_file: {}, key_file: {} }}\n{}reload: {{ watch: false }}\n",
            cert.display(),
            key.display(),
            admin_section("")
        ),
    );
    let d = TestDaemon::from_file(&config).await;
    let before = tls_channel(d.grpc_addr, &old_ca.cert_pem, None)
        .await
        .unwrap();
    assert!(checks_pass(before.clone()).await.expect("served"));

    // Renewed by another CA, written over the same files.
    let new_ca = TestCa::new("new CA");
    server_files(&new_ca, dir.path(), "server");
    // Until a reload, new connections still get the old certificate.
    assert!(
        tls_channel(d.grpc_addr, &new_ca.cert_pem, None)
            .await
            .is_err()
    );
    let r = d
        .ops()
        .await
        .reload(ReloadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed, "the certificate's files are part of the digest");
    let after = tls_channel(d.grpc_addr, &new_ca.cert_pem, None)
        .await
        .expect("new certificate");
    assert!(checks_pass(after).await.expect("served"));
    assert!(
        tls_channel(d.grpc_addr, &old_ca.cert_pem, None)
            .await
            .is_err()
    );
    // The connection made before goes on.
    assert!(checks_pass(before).await.expect("served"));

    // A broken certificate is refused; the renewed one stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    let e = d.ops().await.reload(ReloadRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("server.tls.cert_file"),
        "{}",
        e.message()
    );
    let again = tls_channel(d.grpc_addr, &new_ca.cert_pem, None)
        .await
        .unwrap();
    assert!(checks_pass(again).await.expect("served"));
}

#[test]
fn tls_config_errors_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let (cert, _) = server_files(&ca, dir.path(), "a");
    let (_, other_key) = server_files(&ca, dir.path(), "b");
    let config = |tls: String| {
        let path = write_file(
            dir.path(),
            "q.yaml",
            &format!("default_plan: p\nplans: {{ p: {{}} }}\nserver:\n  tls: {tls}\n"),
        );
        let err = Config::load(&path).unwrap_err().to_string();
        let prefix = format!("{}:", path.display());
        assert!(err.starts_with(&prefix), "{err}");
        err[prefix.len()..].to_owned()
    };
    let e = config(format!(
        "{{ cert_file: {}, key_file: {} }}",
        cert.display(),
        other_key.display()
    ));
    assert!(e.starts_with("4:"), "{e}");
    assert!(
        e.ends_with(&format!(
            ": server.tls.key_file: {}: does not match the certificate (cert_file)",
            other_key.display()
        )),
        "{e}"
    );
    let missing = dir.path().join("missing.pem");
    let e = config(format!(
        "{{ cert_file: {}, key_file: {} }}",
        missing.display(),
        other_key.display()
    ));
    assert!(
        e.contains(&format!(
            "server.tls.cert_file: cannot read {}: No such file or directory",
            missing.display()
        )),
        "{e}"
    );
    assert!(config("{ cert_file: a.pem }".into()).contains("missing field 'key_file'"));
}

#[test]
fn a_plain_text_admin_listener_beyond_loopback_is_refused() {
    let yaml = format!(
        "{CONFIG}{}",
        admin_section("").replace("addr: 127.0.0.1:0", "addr: 0.0.0.0:8082")
    );
    let err = Config::from_yaml(&yaml, "t.yaml").unwrap_err().to_string();
    assert!(
        err.contains("admin.addr: 0.0.0.0:8082 is not a loopback address and admin.tls is not set: bearer tokens would cross the network in clear"),
        "{err}"
    );
    // Behind an encrypting mesh, on purpose:
    let yaml = format!(
        "{CONFIG}{}",
        admin_section("  insecure_plaintext: true\n")
            .replace("addr: 127.0.0.1:0", "addr: 0.0.0.0:8082")
    );
    assert!(Config::from_yaml(&yaml, "t.yaml").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connects_do_not_keep_operators_out_of_the_mtls_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("server CA");
    let clients = TestCa::new("ops clients");
    let d = mtls_admin(dir.path(), &server_ca, &clients).await;
    let addr = d.admin_addr.unwrap();
    // About 400 TCP connections a second that never start a handshake,
    // each held for 3 s: 1 200 pending at any time, more than any fixed
    // cap of unfinished handshakes would hold (past the 64 a peer may
    // have pending, the server drops the oldest). It runs 3.5 s before
    // the operators start, and while they work.
    let flood = tokio::spawn(async move {
        let mut held = std::collections::VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_micros(2_500));
        // A stalled runtime must not make up for lost ticks in a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Ok(tcp) = tokio::net::TcpStream::connect(addr).await {
                held.push_back((tokio::time::Instant::now(), tcp));
            }
            while held
                .front()
                .is_some_and(|(at, _)| at.elapsed() > Duration::from_secs(3))
            {
                held.pop_front();
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    // Ten operators, one after another, each with a fresh handshake (and,
    // as clients do, a second try should one be unlucky: a handshake the
    // flood pushed out; with a fixed cap, every try is refused).
    let (cert, key) = clients.leaf("alice", &[]);
    for op in 0..10 {
        let mut served = None;
        for _ in 0..2 {
            let Ok(channel) = tls_channel(addr, &server_ca.cert_pem, Some((&cert, &key))).await
            else {
                continue;
            };
            served = QuotaAdminClient::with_interceptor(channel, Bearer(Some(OPS_TOKEN.into())))
                .list_plans(ListPlansRequest {})
                .await
                .ok();
            if served.is_some() {
                break;
            }
        }
        assert!(served.is_some(), "operator {op} was kept out");
    }
    flood.abort();
    // Handshakes pushed out for newer ones were counted.
    let (_, metrics) = d.http_get("/metrics").await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("quotad_connections_refused_total{listener=\"admin\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(refused > 0.0, "no handshake was pushed out: {refused}");
}
