//! A real NGINX in front of a tiny upstream, asking quotad's `/v1/auth`
//! before each request (`auth_request`), configured as the book's
//! snippet (docs/src/reports.md) (examples/nginx/quotad.conf): the 6th request of a 5-a-minute
//! key gets 429 from NGINX with `Retry-After`, another key passes, the
//! RateLimit headers reach the client, a request without a key gets 401,
//! a client's own `x-quotad-mode`/`x-quotad-cost` change nothing, and
//! with quotad down NGINX fails closed (503), as configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestDaemon, http_request, tool};

const CONFIG: &str = r#"
default_plan: tiny
plans:
  tiny:
    limits:
      - { name: per-minute, rate: 5, per: minute }
response_headers: both
server:
  http_check:
    addr: 127.0.0.1:0
"#;

/// NGINX: `$QUOTAD_NGINX` (scripts/test.sh unpacks Debian's package),
/// else on PATH or in /usr/sbin.
fn nginx() -> Option<PathBuf> {
    tool("QUOTAD_NGINX", "nginx").or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.is_file().then_some(p)
    })
}

/// An upstream that answers every request `200 upstream` and counts them.
async fn upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nupstream\n")
                    .await;
            });
        }
    });
    (addr, served)
}

/// A free loopback port (bound, then let go for NGINX to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// NGINX running in the foreground from `dir`, killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example config with its placeholders filled in.
fn config(dir: &Path, listen: u16, quotad: SocketAddr, upstream: SocketAddr) -> String {
    let example = include_str!("../examples/nginx/quotad.conf");
    let server = example
        .replace("127.0.0.1:8083", &quotad.to_string())
        .replace("127.0.0.1:3000", &upstream.to_string())
        .replace("listen 8080;", &format!("listen 127.0.0.1:{listen};"));
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let t = tmp.display();
    format!(
        "daemon off;\nmaster_process off;\npid {}/nginx.pid;\nerror_log stderr warn;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n{server}\n}}\n",
        dir.display()
    )
}

/// Starts NGINX in front of `upstream`, asking quotad at `quotad`.
async fn start(nginx: &Path, dir: &Path, quotad: SocketAddr, upstream: SocketAddr) -> Nginx {
    for _ in 0..5 {
        let port = free_port();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, port, quotad, upstream)).unwrap();
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Nginx { child, addr };
            }
            if child.try_wait().ok().flatten().is_some() {
                break; // the port was taken meanwhile: try another
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("nginx did not start");
}

#[tokio::test]
async fn nginx_auth_request_passes_limits_and_fails_closed_without_quotad() {
    let Some(nginx) = nginx() else {
        eprintln!("note: no nginx (set QUOTAD_NGINX or install nginx); the NGINX test is skipped");
        return;
    };
    let d = TestDaemon::with_config(CONFIG).await;
    let quotad = d.http_check_addr.unwrap();
    let (up, served) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let n = start(&nginx, dir.path(), quotad, up).await;
    let get = |key: Option<&'static str>| async move {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        http_request(n.addr, "GET", "/api/items", &headers, None).await
    };
    for i in 0..5 {
        let a = get(Some("alice")).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "upstream\n"),
            "request {i}: {a:?}"
        );
        assert_eq!(
            a.header("ratelimit-remaining"),
            Some(&*(4 - i).to_string()),
            "{a:?}"
        );
        assert_eq!(
            a.header("ratelimit-policy"),
            Some("\"tiny/per-minute\";q=5;w=60")
        );
    }
    let a = get(Some("alice")).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.header("retry-after"), Some("12"), "{a:?}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        5,
        "the refused request never reached the upstream"
    );
    // Another key passes; no key is 401 from quotad, passed on by NGINX.
    assert_eq!(get(Some("bob")).await.status, 200);
    assert_eq!(get(None).await.status, 401);
    assert_eq!(served.load(Ordering::SeqCst), 6);
    // A client cannot make its own check a peek, or cheaper: each of
    // these costs one, as NGINX asks.
    for left in ["4", "3"] {
        let headers = [
            ("x-api-key", "dora"),
            ("x-quotad-mode", "peek"),
            ("x-quotad-cost", "0"),
        ];
        let a = http_request(n.addr, "GET", "/api/items", &headers, None).await;
        assert_eq!(
            (a.status, a.header("ratelimit-remaining")),
            (200, Some(left)),
            "{a:?}"
        );
    }
    assert_eq!(served.load(Ordering::SeqCst), 8);
    // quotad down: NGINX fails closed, as the example configures.
    d.stop().await.unwrap();
    let a = get(Some("carol")).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(served.load(Ordering::SeqCst), 8);
}
