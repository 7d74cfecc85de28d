//! A gateway that holds one quotad lease per open connection, the way a
//! WebSocket or SSE gateway would: each accepted TCP connection opens a
//! `Hold` stream for its caller's key; if quotad grants it, the
//! connection is served for as long as it stays open and the lease lives
//! exactly as long (no TTL to tune: if this process dies, its streams
//! drop and quotad frees the slots at once); if not, the caller is told
//! when to retry and the connection is closed.
//!
//! With the daemon running (`cargo run --release -- serve`; the embedded
//! config gives every key 10 slots):
//!
//! ```sh
//! cargo run --example hold_per_connection -- 127.0.0.1:7000 alice
//! # then, in other terminals: nc 127.0.0.1 7000   (the 11th is refused)
//! ```

use std::time::Duration;

use quotad::api::pb::HoldRequest;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7000".to_owned());
    let key = args.next().unwrap_or_else(|| "alice".to_owned());
    let addr = std::env::var("QUOTAD_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8081".to_owned());
    let quotad = RateLimiterClient::connect(addr).await?;
    let listener = TcpListener::bind(&listen).await?;
    println!("serving {listen}, one lease of key {key:?} per connection");
    loop {
        let (socket, peer) = listener.accept().await?;
        let (quotad, key) = (quotad.clone(), key.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(quotad, key, socket).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

/// Serves one connection while holding a lease for it.
async fn serve(
    mut quotad: RateLimiterClient<Channel>,
    key: String,
    mut socket: TcpStream,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The stream's sending half: kept for as long as the connection is
    // served. Dropping it (or this whole task) ends the Hold, and the
    // lease with it.
    let (hold_open, requests) = tokio::sync::mpsc::channel(1);
    hold_open
        .send(HoldRequest {
            key,
            cost: 1,
            id: 0,
        })
        .await?;
    let mut answers = quotad
        .hold(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await?
        .into_inner();
    let first = answers
        .message()
        .await?
        .and_then(|m| m.answer)
        .ok_or("quotad ended the stream without an answer")?;
    if !first.granted {
        let wait = first.retry_after.map_or(0, |d| d.seconds);
        let why = format!(
            "429: {} ({} of {} slots in use); retry in {wait} s\n",
            first.policy, first.in_use, first.limit
        );
        socket.write_all(why.as_bytes()).await?;
        return Ok(());
    }
    socket
        .write_all(format!("welcome: slot {} of {}\n", first.in_use, first.limit).as_bytes())
        .await?;
    // Serve (here: echo) until the caller hangs up, or quotad takes the
    // lease back (an operator's reset ends the stream).
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = socket.read(&mut buf) => match read? {
                0 => break,
                n => socket.write_all(&buf[..n]).await?,
            },
            lost = answers.message() => {
                if let Ok(Some(m)) = lost {
                    let why = m.answer.map(|a| a.error).unwrap_or_default();
                    socket.write_all(format!("closing: {why}\n").as_bytes()).await?;
                }
                break;
            }
            () = tokio::time::sleep(Duration::from_secs(3_600)) => break,
        }
    }
    drop(hold_open);
    Ok(())
}
