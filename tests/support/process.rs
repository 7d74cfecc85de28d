//! The real `quotad` binary as a child process: started with `serve` on
//! free ports, its log lines (stdout) read as they come, what it printed
//! on stderr kept, signalled and waited for with bounds.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `quotad` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_quotad");

/// A `quotad serve` child on free ports; killed on drop.
pub struct Daemon {
    child: tokio::process::Child,
    /// Log lines (stdout) not yet read by [`Daemon::wait_log`].
    pub log: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The gRPC listener's address, as logged.
    pub grpc: String,
    /// The HTTP listener's address (`/metrics`, `/readyz`), as logged.
    pub http: String,
    /// The admin listener, when it logged one.
    pub admin: Option<String>,
    /// The log lines up to "quotad ready", each ending in a newline.
    pub startup: String,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    /// Waits (bounded) for a log line containing `text`; returns it.
    pub async fn wait_log(&mut self, text: &str) -> String {
        let find = async {
            while let Some(line) = self.log.recv().await {
                if line.contains(text) {
                    return line;
                }
            }
            panic!("daemon exited before logging {text:?}");
        };
        tokio::time::timeout(Duration::from_secs(10), find)
            .await
            .unwrap_or_else(|_| panic!("no log line {text:?}"))
    }

    /// Waits (bounded) until log lines containing each of `texts` were
    /// seen, in any order; returns them (the first for each text).
    pub async fn wait_logs(&mut self, texts: &[&str]) -> Vec<String> {
        let mut found: Vec<Option<String>> = vec![None; texts.len()];
        let find = async {
            while found.iter().any(Option::is_none) {
                let line = self.log.recv().await.expect("the daemon is still logging");
                for (i, t) in texts.iter().enumerate() {
                    if found[i].is_none() && line.contains(t) {
                        found[i] = Some(line.clone());
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), find)
            .await
            .is_err()
        {
            panic!("no log lines {texts:?} (found {found:?})");
        }
        found.into_iter().flatten().collect()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// An admin API client presenting `token` (`None`: no token).
    pub async fn admin_client(&self, token: Option<&str>) -> super::AdminClient {
        let addr = self
            .admin
            .as_ref()
            .expect("the daemon logged its admin listener");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the admin listener");
        quotad::api::pb::quota_admin_client::QuotaAdminClient::with_interceptor(
            channel,
            super::Bearer(token.map(str::to_owned)),
        )
    }

    /// Everything it logs from now until it exits (bounded, 10 s).
    pub async fn log_to_exit(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let read = async {
            while let Some(line) = self.log.recv().await {
                lines.push(line);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the daemon's log ended");
        lines
    }

    /// Waits (bounded, 5 s) for the daemon to exit; its exit code.
    pub async fn exit_code(&mut self, why: &str) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{why}"))
            .expect("wait for the daemon")
            .code()
    }

    /// Resident memory (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the daemon's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in kB")
            * 1024
    }

    /// Sends the signal `name` (`-TERM`, `-HUP`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        assert!(
            Command::new("kill")
                .args([name, &pid])
                .status()
                .expect("kill runs")
                .success()
        );
    }

    /// What the daemon printed on stderr so far (complete once it exited
    /// and the pipe was read to its end: see [`Daemon::stderr_at_exit`]).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// Everything the daemon printed on stderr, once it has exited
    /// (waits, bounded, for the pipe to be read to its end).
    pub async fn stderr_at_exit(&self) -> String {
        let poll = async {
            while Arc::strong_count(&self.stderr) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .expect("the daemon's stderr reached its end");
        self.stderr()
    }
}

/// Starts `quotad serve` on free ports with `extra` arguments and waits
/// (bounded) until it logs "quotad ready".
pub async fn spawn_serve(extra: &[&str]) -> Daemon {
    spawn_serve_env(extra, &[]).await
}

/// `quotad serve` on free loopback ports (more arguments to add).
pub fn serve_command() -> Command {
    let mut serve = Command::new(BIN);
    serve.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    serve
}

/// [`spawn_serve`] with environment variables set for the child.
pub async fn spawn_serve_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut child = tokio::process::Command::from(serve_command())
        .args(extra)
        .env("NO_COLOR", "1")
        .env("QUOTAD_LOG", "info")
        .env_remove("QUOTAD_CONFIG")
        .env_remove("QUOTAD_GRPC_ADDR")
        .env_remove("QUOTAD_HTTP_ADDR")
        .env_remove("QUOTAD_REDIS")
        .env_remove("QUOTAD_REDIS_PASSWORD_FILE")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the quotad binary starts");
    // Kept whole (a panic message spans lines), read until the pipe ends.
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let kept = Arc::clone(&stderr);
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            kept.lock()
                .expect("stderr buffer")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut grpc = None;
    let mut http = None;
    let mut admin = None;
    let mut startup = String::new();
    // Read log lines until the daemon reports ready: it logs the bound
    // addresses, then "quotad ready".
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read the daemon's log") {
            startup.push_str(&line);
            startup.push('\n');
            // Text lines say `name=value`; JSON lines (`--log-format
            // json`) carry the field by name.
            let field = |name: &str| match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) => v[name.trim_end_matches('=')].as_str().map(str::to_owned),
                Err(_) => line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned),
            };
            if line.contains("gRPC listener bound") {
                grpc = field("grpc_addr=");
            }
            if line.contains("HTTP listener bound") {
                http = field("http_addr=");
            }
            if line.contains("admin listener bound") {
                admin = field("admin_addr=");
            }
            if line.contains("quotad ready") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("daemon started");
    // Keep draining stdout (so the child never blocks on a full pipe) into
    // a channel tests can wait on.
    let (tx, log) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    Daemon {
        child,
        log,
        grpc: grpc.expect("daemon logged its gRPC address"),
        http: http.expect("daemon logged its HTTP address"),
        admin,
        startup,
        stderr,
    }
}
