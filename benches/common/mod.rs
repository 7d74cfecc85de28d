//! What the plain-`main` benches share: telling a real run from a test
//! run, and a throwaway `redis-server`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

/// Whether this is `cargo bench` (not `cargo test --benches`).
pub fn bench_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    has("--bench") && !has("--test") && !has("--list")
}

/// A throwaway redis-server; killed on drop.
pub struct Redis {
    pub port: u16,
    child: std::process::Child,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        Self::start_on(None)
    }

    /// Starts it pinned to `cpu` (with `taskset`) when given.
    pub fn start_on(cpu: Option<&str>) -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = std::process::Command::new("taskset");
                c.args(["-c", cpu, "redis-server"]);
                c
            }
            None => std::process::Command::new("redis-server"),
        };
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let r = Redis { port, child };
        for _ in 0..500 {
            if r.command("PING").is_some_and(|l| l.contains("PONG")) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Every line of the reply to an inline command.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut r = BufReader::new(s);
        let mut first = String::new();
        r.read_line(&mut first).ok()?;
        let Some(len) = first.strip_prefix('$') else {
            return Some(first);
        };
        let len: usize = len.trim().parse().ok()?;
        let mut body = vec![0u8; len + 2];
        std::io::Read::read_exact(&mut r, &mut body).ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    }

    /// `calls` of one command in `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.command("INFO commandstats").unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
