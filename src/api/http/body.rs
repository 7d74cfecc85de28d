//! Reading a request body for the HTTP door: at most `max_body_bytes`
//! (refused from `Content-Length` before a byte is read, else cut off as
//! it arrives), within `request_timeout`, and drawn from a budget of
//! bytes all the door's requests may hold at once
//! (`server.http_check.max_buffered_bytes`), so a thousand connections
//! sending the largest bodies cannot take more than that: past it, a
//! request is answered 503 with `Retry-After: 1` at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Too big, too slow, or broken: 400 with this text.
    Bad(String),
    /// The door holds its budget of bodies: 503.
    Busy,
}

/// How the door reads bodies.
#[derive(Debug, Clone)]
pub struct Bodies {
    max: usize,
    timeout: Duration,
    budget: Arc<Semaphore>,
}

/// A body read, with its share of the budget (given back when dropped).
pub struct Body {
    /// The bytes.
    pub bytes: Bytes,
    _held: OwnedSemaphorePermit,
}

impl Bodies {
    /// Bodies of at most `max` bytes within `timeout`, `budget` bytes of
    /// them at once (at least `max`).
    pub fn new(max: usize, timeout: Duration, budget: usize) -> Self {
        let permits = budget.max(max).min(Semaphore::MAX_PERMITS);
        Self {
            max,
            timeout,
            budget: Arc::new(Semaphore::new(permits)),
        }
    }

    /// Reads `req`'s body.
    pub async fn read<B>(&self, req: Request<B>) -> Result<Body, BodyError>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let max = self.max;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(len) = declared.filter(|l| *l > max as u64) {
            return Err(BodyError::Bad(format!(
                "body: {len} bytes exceeds the maximum of {max} bytes"
            )));
        }
        // What it may hold: what it says it sends, else the most it may.
        let need = declared.map_or(max, |l| usize::try_from(l).unwrap_or(max));
        let need = u32::try_from(need.max(1)).unwrap_or(u32::MAX);
        // No waiting for room: whoever holds it may hold it until their
        // timeout, and a waiter would only ever get in behind them.
        let held = Arc::clone(&self.budget)
            .try_acquire_many_owned(need)
            .map_err(|_| BodyError::Busy)?;
        let work = async {
            let collected = Limited::new(req.into_body(), max).collect().await;
            match collected {
                Ok(c) => Ok(Body {
                    bytes: c.to_bytes(),
                    _held: held,
                }),
                Err(e) if e.is::<LengthLimitError>() => Err(BodyError::Bad(format!(
                    "body: exceeds the maximum of {max} bytes"
                ))),
                Err(e) => Err(BodyError::Bad(format!("body: could not be read: {e}"))),
            }
        };
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, work).await {
            Ok(read) => read,
            Err(_) => Err(BodyError::Bad(format!(
                "body: did not arrive within {} s",
                timeout.as_secs_f64()
            ))),
        }
    }
}
