//! The HTTP check door's `/v1/auth` as NGINX drives it: one HTTP/1.1
//! keep-alive connection per caller, a `GET` with the key in `x-api-key`
//! (and `x-quotad-cost`), 200 allowed, 429 denied, anything else an error.
//! A broken connection is made again for the next request.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// One caller's connection to the door.
pub struct Conn {
    addr: SocketAddr,
    send: Option<SendRequest<Empty<Bytes>>>,
}

/// What one request came to: `Some(allowed)`, or `None` for an error.
pub type Answer = Option<bool>;

impl Conn {
    /// A connection to `addr`, made on first use.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, send: None }
    }

    async fn open(&mut self) -> anyhow::Result<&mut SendRequest<Empty<Bytes>>> {
        if self.send.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            self.send = Some(send);
        }
        self.send
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no connection"))
    }

    /// `GET /v1/auth` for `key`, `cost` units.
    pub async fn auth(&mut self, key: &str, cost: u64) -> Answer {
        let host = self.addr.to_string();
        let send = match self.open().await {
            Ok(s) => s,
            Err(_) => return None,
        };
        let req = hyper::Request::get("/v1/auth")
            .header("host", host)
            .header("x-api-key", key)
            .header("x-quotad-cost", cost)
            .body(Empty::new())
            .ok()?;
        let answer = match send.send_request(req).await {
            Ok(a) => a,
            Err(_) => {
                self.send = None;
                return None;
            }
        };
        let status = answer.status().as_u16();
        // Read the body to its end, so the connection can be reused.
        if answer.into_body().collect().await.is_err() {
            self.send = None;
            return None;
        }
        match status {
            200 => Some(true),
            429 => Some(false),
            _ => None,
        }
    }
}
