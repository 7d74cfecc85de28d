//! The HTTP check door over real sockets: `/v1/auth` forward auth (keys
//! from a header or a Bearer token, costs, 200/429/401/400, RateLimit
//! headers and Retry-After), `/v1/check` and `/v1/report` as proto3 JSON,
//! envoyproxy/ratelimit's `/json`, hostile bodies and slow clients, TLS,
//! metrics by door.

use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestCa, TestDaemon, http_request, metric, parse_answer, write_file};

/// `tiny`: 5 a minute; `llm`: 600 tokens a minute.
const CONFIG: &str = r#"
default_plan: tiny
plans:
  tiny:
    limits:
      - { name: per-minute, rate: 5, per: minute }
  llm:
    limits:
      - { name: tokens, rate: 600, per: minute }
keys:
  "llm-key": { plan: llm }
envoy:
  domains: [edge]
requests:
  max_key_bytes: 64
  max_cost: 1000
response_headers: both
server:
  http_check:
    addr: 127.0.0.1:0
    max_body_bytes: 1024
    request_timeout: 2s
"#;

async fn start() -> (TestDaemon, std::net::SocketAddr) {
    let d = TestDaemon::with_config(CONFIG).await;
    let addr = d.http_check_addr.expect("the door is on");
    (d, addr)
}

#[tokio::test]
async fn auth_allows_five_a_minute_then_429_with_retry_after_and_another_key_passes() {
    let (_d, addr) = start().await;
    for i in 0..5 {
        let a = http_request(addr, "GET", "/v1/auth", &[("x-api-key", "alice")], None).await;
        assert_eq!(a.status, 200, "request {i}: {a:?}");
        assert_eq!(a.header("ratelimit-remaining"), Some(&*(4 - i).to_string()));
        assert_eq!(
            a.header("ratelimit-policy"),
            Some("\"tiny/per-minute\";q=5;w=60")
        );
        assert_eq!(a.header("x-quotad-policy"), Some("tiny/per-minute"));
    }
    let a = http_request(addr, "GET", "/v1/auth", &[("x-api-key", "alice")], None).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.header("retry-after"), Some("12"), "one token every 12 s");
    assert_eq!(a.header("ratelimit-remaining"), Some("0"));
    let body = a.json();
    assert_eq!(body["reason"], "DENY_REASON_LIMITED");
    assert_eq!(body["retry_after_seconds"], 12);
    // Another key is untouched; any method works (NGINX sends GET,
    // Traefik may keep the request's), HEAD gets the head only.
    let b = http_request(
        addr,
        "POST",
        "/v1/auth",
        &[("X-Api-Key", "bob")],
        Some(b"ignored"),
    )
    .await;
    assert_eq!(b.status, 200);
    let h = http_request(addr, "HEAD", "/v1/auth", &[("x-api-key", "carol")], None).await;
    assert_eq!((h.status, h.body.as_str()), (200, ""));
    assert_eq!(h.header("ratelimit-remaining"), Some("4"));
}

#[tokio::test]
async fn auth_reads_cost_and_mode_and_refuses_what_is_wrong() {
    let (d, addr) = start().await;
    let ask = |path: &'static str, headers: Vec<(&'static str, &'static str)>| async move {
        http_request(addr, "GET", path, &headers, None).await
    };
    let get = |headers| ask("/v1/auth", headers);
    let remaining =
        |a: &crate::support::HttpAnswer| a.header("ratelimit-remaining").map(str::to_owned);
    // No key: 401, nothing counted against anyone.
    let a = get(vec![]).await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("x-api-key"), "{}", a.body);
    assert_eq!(get(vec![("x-api-key", "  ")]).await.status, 401);
    // A cost of 3 of 5; a peek of 2 (in the gateway's query) changes
    // nothing; then 3 more are over.
    let a = get(vec![("x-api-key", "dan"), ("x-quotad-cost", "3")]).await;
    assert_eq!((a.status, remaining(&a).as_deref()), (200, Some("2")));
    let a = ask("/v1/auth?mode=peek&cost=2", vec![("x-api-key", "dan")]).await;
    assert_eq!((a.status, remaining(&a).as_deref()), (200, Some("0")));
    let a = get(vec![("x-api-key", "dan"), ("x-quotad-cost", "3")]).await;
    assert_eq!((a.status, a.header("retry-after")), (429, Some("12")));
    // A client's own `x-quotad-mode: peek`, which gateways forward, does
    // not skip its charge; the query's cost wins over the header's.
    for left in ["4", "3"] {
        let a = get(vec![("x-api-key", "ed"), ("x-quotad-mode", "peek")]).await;
        assert_eq!(remaining(&a).as_deref(), Some(left), "charged each time");
    }
    let a = ask(
        "/v1/auth?cost=2",
        vec![("x-api-key", "ed"), ("x-quotad-cost", "1")],
    )
    .await;
    assert_eq!(remaining(&a).as_deref(), Some("1"));
    // A cost above the limit can never pass: 429 without Retry-After.
    let a = get(vec![("x-api-key", "erin"), ("x-quotad-cost", "6")]).await;
    assert_eq!((a.status, a.header("retry-after")), (429, None));
    // Bad cost, mode and key: 400 saying what, nothing charged.
    for (path, headers, says) in [
        (
            "/v1/auth",
            vec![("x-api-key", "fay"), ("x-quotad-cost", "-1")],
            "x-quotad-cost:",
        ),
        (
            "/v1/auth",
            vec![("x-api-key", "fay"), ("x-quotad-cost", "1001")],
            "cost: 1001 exceeds",
        ),
        (
            "/v1/auth?mode=later",
            vec![("x-api-key", "fay")],
            "mode: expected charge or peek",
        ),
        (
            "/v1/auth",
            vec![("x-api-key", "fay"), ("x-api-key", "gus")],
            "x-api-key: sent more than once",
        ),
    ] {
        let a = ask(path, headers).await;
        assert_eq!(a.status, 400, "{a:?}");
        let message = a.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.starts_with(says), "{message}");
    }
    let long = "k".repeat(65);
    let a = http_request(addr, "GET", "/v1/auth", &[("x-api-key", &long)], None).await;
    assert_eq!(a.status, 400);
    let a = get(vec![("x-api-key", "fay")]).await;
    assert_eq!(
        remaining(&a).as_deref(),
        Some("4"),
        "nothing was charged to fay"
    );
    // Counted under the door: dan 2 (the peek too), ed 3, fay 1.
    let allowed = metric(
        d.http_addr,
        "quotad_checks_total{api=\"auth\",door=\"http\",result=\"allowed\",plan=\"tiny\"}",
    )
    .await;
    assert_eq!(allowed, 6.0);
}

#[tokio::test]
async fn auth_takes_a_bearer_token_when_the_key_header_is_authorization() {
    let yaml = CONFIG.replace(
        "max_body_bytes: 1024",
        "max_body_bytes: 1024\n    key_header: Authorization",
    );
    let d = TestDaemon::with_config(&yaml).await;
    let addr = d.http_check_addr.unwrap();
    let a = http_request(
        addr,
        "GET",
        "/v1/auth",
        &[("authorization", "Bearer tok-1")],
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.header("ratelimit-remaining")),
        (200, Some("4"))
    );
    let a = http_request(
        addr,
        "GET",
        "/v1/auth",
        &[("authorization", "Basic dG9rLTE=")],
        None,
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer realm=\"quotad\"")
    );
    // The x-api-key header means nothing now.
    let a = http_request(addr, "GET", "/v1/auth", &[("x-api-key", "tok-1")], None).await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn check_and_report_speak_the_native_messages_as_json() {
    let (_d, addr) = start().await;
    let post = |path: &'static str, body: &'static str| async move {
        http_request(
            addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
        .await
    };
    let a = post(
        "/v1/check",
        r#"{"key":"llm-key","cost":"100","id":7,"mode":"CHECK_MODE_PEEK"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let v = a.json();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["remaining"], "500");
    assert_eq!(v["id"], "7");
    assert_eq!(v["policy"], "llm/tokens");
    assert_eq!(v["reason"], "DENY_REASON_UNSPECIFIED");
    assert_eq!(v["retryAfter"], "0s");
    assert!(
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "RateLimit-Policy")
    );
    // A report of 700 tokens: 100 in debt.
    let a = post("/v1/report", r#"{"key":"llm-key","cost":700}"#).await;
    let v = a.json();
    assert_eq!(
        (v["remaining"].as_str(), v["debt"].as_str()),
        (Some("0"), Some("100"))
    );
    assert_eq!(v["retryAfter"], "10.100s");
    let a = post("/v1/check", r#"{"key":"llm-key"}"#).await;
    let v = a.json();
    assert_eq!(
        (v["allowed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("DENY_REASON_LIMITED"))
    );
    // GET is not how these are called.
    let a = http_request(addr, "GET", "/v1/check", &[], None).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("POST")));
    let a = http_request(addr, "GET", "/nope", &[], None).await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn bad_json_wrong_types_and_huge_bodies_get_400_and_charge_nothing() {
    let (d, addr) = start().await;
    let huge = format!(r#"{{"key":"gina","cost":1,"pad":"{}"}}"#, "x".repeat(4096));
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/check", "{".into(), "body: not valid JSON"),
        ("/v1/check", "[]".into(), "body: must be a JSON object"),
        (
            "/v1/check",
            r#"{"key":"gina","key":"hal"}"#.into(),
            "body: duplicate field `key`",
        ),
        (
            "/v1/check",
            r#"{"key":"gina","cost":"lots"}"#.into(),
            "cost: expected a non-negative integer",
        ),
        ("/v1/check", r#"{"key":5}"#.into(), "key: expected a string"),
        (
            "/v1/check",
            r#"{"key":"gina","coast":1}"#.into(),
            "body: unknown field `coast`",
        ),
        (
            "/v1/check",
            r#"{"key":""}"#.into(),
            "key: must not be empty",
        ),
        (
            "/v1/report",
            r#"{"key":"gina","cost":-3}"#.into(),
            "cost: expected a non-negative integer",
        ),
        ("/v1/report", huge.clone(), "body: 4"),
    ];
    for (path, body, says) in cases {
        let a = http_request(addr, "POST", path, &[], Some(body.as_bytes())).await;
        assert_eq!(a.status, 400, "{path} {body:.40}: {a:?}");
        let v = a.json();
        assert_eq!(v["code"], "INVALID_ARGUMENT");
        assert!(
            v["message"].as_str().unwrap().starts_with(says),
            "{}",
            a.body
        );
    }
    // A body without Content-Length (chunked) past the cap is cut off too.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let chunk = "y".repeat(2000);
    let req = format!(
        "POST /v1/report HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let a = parse_answer(&buf);
    assert_eq!(a.status, 400);
    assert!(
        a.body.contains("exceeds the maximum of 1024 bytes"),
        "{}",
        a.body
    );
    assert_eq!(d.engine.store().tracked(), 0, "nothing charged");
    let refused = metric(
        d.http_addr,
        "quotad_checks_total{api=\"report\",door=\"http\",result=\"error\",plan=\"(none)\"}",
    )
    .await;
    assert_eq!(refused, 3.0);
}

#[tokio::test]
async fn bodies_past_the_doors_budget_get_503() {
    // Room for one body of 1024 bytes at a time.
    let yaml = CONFIG.replace(
        "max_body_bytes: 1024",
        "max_body_bytes: 1024\n    max_buffered_bytes: 1024",
    );
    let d = TestDaemon::with_config(&yaml).await;
    let addr = d.http_check_addr.unwrap();
    // One client says it sends 1024 bytes and sends a few: it holds them.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n{\"key\"")
        .await
        .unwrap();
    // Its head is answered at once (a 404 would be): the body is what waits.
    let probe = http_request(addr, "GET", "/nope", &[], None).await;
    assert_eq!(probe.status, 404);
    // Another body finds no room: 503 at once.
    let body = br#"{"key":"ivy"}"#;
    let a = http_request(addr, "POST", "/v1/check", &[], Some(body)).await;
    assert_eq!(
        (a.status, a.header("retry-after")),
        (503, Some("1")),
        "{a:?}"
    );
    // Forward auth needs no body: it is answered meanwhile.
    let a = http_request(addr, "GET", "/v1/auth", &[("x-api-key", "ivy")], None).await;
    assert_eq!(a.status, 200);
    // Once the slow one is timed out, bodies are read again.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    let a = http_request(addr, "POST", "/v1/check", &[], Some(body)).await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn a_slow_client_is_timed_out_and_others_are_served() {
    let (_d, addr) = start().await;
    // A head that never ends, and a body that never comes.
    let mut head = tokio::net::TcpStream::connect(addr).await.unwrap();
    head.write_all(b"GET /v1/auth HTTP/1.1\r\nx-api-key: slow")
        .await
        .unwrap();
    let mut body = tokio::net::TcpStream::connect(addr).await.unwrap();
    body.write_all(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"key\"")
        .await
        .unwrap();
    // Others are answered meanwhile.
    let a = http_request(addr, "GET", "/v1/auth", &[("x-api-key", "quick")], None).await;
    assert_eq!(a.status, 200);
    // Both are ended within request_timeout (2 s) and a margin of 3 s.
    let ended = |mut s: tokio::net::TcpStream| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("closed within the request timeout and a margin")
            .ok();
        String::from_utf8_lossy(&buf).into_owned()
    };
    let (h, b) = tokio::join!(ended(head), ended(body));
    assert!(h.is_empty() || h.starts_with("HTTP/1.1 408"), "{h:?}");
    assert!(b.starts_with("HTTP/1.1 400"), "{b:?}");
    assert!(b.contains("did not arrive within"), "{b:?}");
}

#[tokio::test]
async fn the_json_endpoint_answers_as_envoyproxy_ratelimit() {
    let (_d, addr) = start().await;
    let post = |body: String| async move {
        http_request(addr, "POST", "/json", &[], Some(body.as_bytes())).await
    };
    let req = |key: &str| {
        format!(
            r#"{{"domain":"edge","descriptors":[{{"entries":[{{"key":"api_key","value":"{key}"}}]}}]}}"#
        )
    };
    for i in 0..5 {
        let a = post(req("hal")).await;
        assert_eq!(a.status, 200, "{a:?}");
        let v = a.json();
        assert_eq!(v["overallCode"], "OK");
        assert_eq!(v["statuses"][0]["code"], "OK");
        assert_eq!(v["statuses"][0]["currentLimit"]["requestsPerUnit"], 5);
        assert_eq!(v["statuses"][0]["currentLimit"]["unit"], "MINUTE");
        if i < 4 {
            assert_eq!(v["statuses"][0]["limitRemaining"], 4 - i);
        } else {
            assert!(
                v["statuses"][0].get("limitRemaining").is_none(),
                "0 is left out: {v}"
            );
        }
    }
    let a = post(req("hal")).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.json()["overallCode"], "OVER_LIMIT");
    assert_eq!(a.header("retry-after"), Some("12"));
    // A domain quotad does not limit: OK. Bad requests: 400.
    let a =
        post(r#"{"domain":"other","descriptors":[{"entries":[{"key":"a","value":"b"}]}]}"#.into())
            .await;
    assert_eq!(
        (a.status, a.json()["overallCode"].as_str()),
        (200, Some("OK"))
    );
    for (body, says) in [
        ("{".to_owned(), "Bad Request: body: not valid JSON"),
        (r#"{"domain":"edge"}"#.to_owned(), "Bad Request: descriptors: must not be empty"),
        (r#"{"domain":"edge","descriptors":[{"entries":[{"key":"api_key","value":"x"}],"hits_addend":"many"}]}"#.to_owned(),
            "Bad Request: descriptors[0].hits_addend: expected a non-negative integer"),
        (r#"{"domian":"edge"}"#.to_owned(), "Bad Request: body: unknown field `domian`"),
    ] {
        let a = post(body).await;
        assert_eq!(a.status, 400, "{a:?}");
        assert!(a.body.starts_with(says), "{}", a.body);
    }
}

#[tokio::test]
async fn the_door_speaks_tls_when_the_grpc_listener_does() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("door-ca");
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let cert = write_file(dir.path(), "cert.pem", &cert);
    let key = write_file(dir.path(), "key.pem", &key);
    let yaml = CONFIG.replace(
        "server:\n",
        &format!(
            "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
            cert.display(),
            key.display()
        ),
    );
    let path = write_file(dir.path(), "quotad.yaml", &yaml);
    let d = TestDaemon::from_file(&path).await;
    let addr = d.http_check_addr.unwrap();
    // Plain text is not answered.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /v1/auth HTTP/1.1\r\nx-api-key: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    // TLS with the CA, HTTP/1.1 by ALPN.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(
        b"GET /v1/auth HTTP/1.1\r\nHost: localhost\r\nx-api-key: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    let a = parse_answer(&String::from_utf8_lossy(&buf));
    assert_eq!(
        (a.status, a.header("ratelimit-remaining")),
        (200, Some("4"))
    );
}
