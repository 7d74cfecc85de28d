//! A minimal client of quotad's native API: checks one key and prints the
//! answer the way a gateway would use it.
//!
//! With the daemon running (`cargo run --release -- serve`):
//!
//! ```sh
//! cargo run --release --example check_client -- alice 1
//! ```
//!
//! Arguments: `[KEY] [COST]` (default `alice 1`); the server is
//! `QUOTAD_ADDR` (default `http://127.0.0.1:8081`). `--help` prints this
//! and checks nothing.

use quotad::api::pb::CheckRequest;
use quotad::api::pb::rate_limiter_client::RateLimiterClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    if args
        .peek()
        .is_some_and(|a| matches!(a.as_str(), "-h" | "--help"))
    {
        println!(
            "usage: check_client [KEY] [COST]\n\nChecks KEY (default alice) for COST units (default 1) against the quotad at QUOTAD_ADDR (default http://127.0.0.1:8081)."
        );
        return Ok(());
    }
    let key = args.next().unwrap_or_else(|| "alice".to_owned());
    let cost = args.next().map(|c| c.parse()).transpose()?.unwrap_or(1);
    let addr = std::env::var("QUOTAD_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8081".to_owned());

    let mut client = RateLimiterClient::connect(addr).await?;
    let answer = client
        .check(CheckRequest {
            key,
            cost,
            id: 0,
            ..Default::default()
        })
        .await?
        .into_inner();

    let secs =
        |d: Option<prost_types::Duration>| d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9);
    if answer.allowed {
        println!(
            "allowed by {}: {} of {} left, full again in {:.3} s",
            answer.policy,
            answer.remaining,
            answer.limit,
            secs(answer.reset_after).unwrap_or(0.0)
        );
    } else {
        match secs(answer.retry_after) {
            Some(wait) => println!("limited by {}: retry in {wait:.3} s", answer.policy),
            None => println!(
                "{}: this cost can never pass (above the limit's capacity)",
                answer.policy
            ),
        }
    }
    Ok(())
}
