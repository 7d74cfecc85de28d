//! A gRPC request body under budget.
//!
//! tonic reserves a message's whole declared length as soon as it has read
//! the message's 5-byte prefix, and holds what arrived until the message
//! is complete, so a caller that declares a large message and sends all
//! but its last byte makes the server hold it with no end. A
//! [`Budgeted`] body reads the same prefixes as they pass and reserves
//! each message's declared size from its connection's budget
//! (`server.max_buffered_bytes_per_connection`) and the process's
//! (`server.max_buffered_bytes`) before tonic sees the prefix; a message
//! that does not fit fails its call with `RESOURCE_EXHAUSTED` unread. The
//! call's headers are held against the same budgets until its request has
//! ended.
//!
//! A message must arrive whole within `server.request_body_timeout` of its
//! first byte; a call that is not a stream must send its (first) message
//! within that time of starting. (The clock starts when the body first
//! has to wait for more, a few microseconds after either.) Otherwise the
//! call fails with `DEADLINE_EXCEEDED` and what it held is given back.
//! Streams may wait as long as they like between messages (the
//! connection's idle timer applies to them).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::Frame;
use tokio::time::{Instant, Sleep};
use tonic::Status;

use super::activity::Activity;
use super::budget::Budget;

/// A gRPC message's prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

/// What every budgeted body of one listener shares.
#[derive(Debug, Clone)]
pub struct BodyRules {
    /// The process's budget of buffered request bytes.
    pub process: Arc<Budget>,
    /// How long a message may take to arrive.
    pub timeout: Duration,
    /// The largest message tonic accepts: larger ones are left to tonic
    /// to refuse (`OUT_OF_RANGE`), unreserved.
    pub max_message: usize,
}

/// Where the reading of the message prefixes stands.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; PREFIX],
    /// Prefix bytes read of the current message.
    have: usize,
    /// Payload bytes still to come.
    left: u64,
}

/// What one chunk of data did to the framing.
enum Step {
    /// A prefix was completed, declaring this many payload bytes.
    Declared(u64),
    /// The current message is complete.
    Complete,
}

impl Framing {
    /// Whether a message is under way (some of it arrived, not all).
    fn partial(&self) -> bool {
        self.have > 0 || self.left > 0
    }

    /// Reads `data` through, calling `step` at each prefix and each
    /// message end; stops at the first error `step` returns.
    fn read(
        &mut self,
        mut data: &[u8],
        mut step: impl FnMut(Step) -> Result<(), Status>,
    ) -> Result<(), Status> {
        while !data.is_empty() {
            if self.left == 0 {
                let n = (PREFIX - self.have).min(data.len());
                self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have < PREFIX {
                    break;
                }
                let mut len = &self.prefix[1..];
                self.left = u64::from(len.get_u32());
                self.have = 0;
                step(Step::Declared(self.left))?;
                if self.left == 0 {
                    step(Step::Complete)?;
                }
                continue;
            }
            let n = usize::try_from(self.left).map_or(data.len(), |l| l.min(data.len()));
            self.left -= n as u64;
            data = &data[n..];
            if self.left == 0 {
                step(Step::Complete)?;
            }
        }
        Ok(())
    }
}

/// What a body owes, and by when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Nothing: no message under way, none owed.
    Nothing,
    /// A message, its clock not started: it starts the first time the
    /// body has to wait, microseconds later for a message that is still
    /// coming, never for one that arrived whole (most do, and a clock
    /// read per call was 0.5 % of a `Check`'s CPU).
    Owed,
    /// A message, by then.
    At(Instant),
}

/// A request body under budget. See the module docs.
pub struct Budgeted<B> {
    inner: B,
    conn: Arc<Activity>,
    rules: BodyRules,
    framing: Framing,
    /// The headers' bytes, held until the request ends.
    headers: usize,
    /// The current message's reservation.
    message: usize,
    /// When what is owed must have arrived: set while a message is under
    /// way, or the first message of a call that is not a stream is owed.
    due: Due,
    /// The timer for `due`, made only once the body has to wait (most
    /// requests arrive whole in their first frame and never need one).
    timer: Option<Pin<Box<Sleep>>>,
    /// The first message is owed by a deadline.
    first_owed: bool,
    /// An error to give on the next poll, then the end.
    failed: Option<Status>,
    ended: bool,
}

impl<B> Budgeted<B> {
    /// `inner` under `rules`, for a call on the connection `conn` whose
    /// headers take `headers` bytes; `stream`: a call that may wait before
    /// its first message.
    pub fn new(
        inner: B,
        conn: Arc<Activity>,
        rules: BodyRules,
        headers: usize,
        stream: bool,
    ) -> Self {
        let mut body = Self {
            inner,
            conn,
            rules,
            framing: Framing::default(),
            headers: 0,
            message: 0,
            due: Due::Nothing,
            timer: None,
            first_owed: !stream,
            failed: None,
            ended: false,
        };
        match body.reserve(headers) {
            Ok(()) => body.headers = headers,
            Err(status) => body.failed = Some(status),
        }
        if body.first_owed {
            body.arm();
        }
        body
    }

    /// Takes `n` bytes from the connection's budget and the process's.
    fn reserve(&self, n: usize) -> Result<(), Status> {
        let conn = self.conn.buffered();
        if !conn.take(n) {
            return Err(over(
                "this connection",
                "server.max_buffered_bytes_per_connection",
                conn.cap(),
            ));
        }
        if !self.rules.process.take(n) {
            conn.give(n);
            return Err(over(
                "all connections",
                "server.max_buffered_bytes",
                self.rules.process.cap(),
            ));
        }
        Ok(())
    }

    fn give(&self, n: usize) {
        self.conn.buffered().give(n);
        self.rules.process.give(n);
    }

    /// Gives back everything held; nothing is owed any more.
    fn release(&mut self) {
        self.give(self.headers + self.message);
        self.headers = 0;
        self.message = 0;
        self.due = Due::Nothing;
        self.first_owed = false;
    }

    fn arm(&mut self) {
        self.due = Due::Owed;
    }

    /// Whether `due` has passed; registers a wake-up for it if not.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let due = match self.due {
            Due::Nothing => return false,
            Due::At(due) => due,
            Due::Owed => {
                let due = Instant::now() + self.rules.timeout;
                self.due = Due::At(due);
                due
            }
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// Accounts for one chunk of data.
    fn account(&mut self, data: &[u8]) -> Result<(), Status> {
        let was_partial = self.framing.partial();
        let mut framing = std::mem::take(&mut self.framing);
        let result = framing.read(data, |step| match step {
            Step::Declared(len) => {
                let size = usize::try_from(len).unwrap_or(usize::MAX);
                // Too large for tonic: it refuses it from the prefix.
                if size <= self.rules.max_message {
                    self.reserve(PREFIX + size)?;
                    self.message = PREFIX + size;
                }
                Ok(())
            }
            Step::Complete => {
                self.give(self.message);
                self.message = 0;
                self.first_owed = false;
                Ok(())
            }
        });
        self.framing = framing;
        result?;
        if self.framing.partial() {
            if !was_partial {
                self.arm();
            }
        } else if !self.first_owed {
            self.due = Due::Nothing;
        }
        Ok(())
    }
}

fn over(whose: &str, field: &str, cap: usize) -> Status {
    Status::resource_exhausted(format!(
        "request bytes buffered for {whose} would exceed {field} ({cap} bytes); retry when fewer calls are under way"
    ))
}

impl<B> Drop for Budgeted<B> {
    fn drop(&mut self) {
        self.give(self.headers + self.message);
    }
}

impl<B> http_body::Body for Budgeted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(status) = this.failed.take() {
            this.release();
            this.ended = true;
            return Poll::Ready(Some(Err(status)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.conn.touch();
                    if let Err(status) = this.account(data.chunk()) {
                        this.release();
                        this.ended = true;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.release();
                this.ended = true;
                // As tonic maps a body's errors.
                Poll::Ready(other.map(|r| r.map_err(|e| Status::from_error(e.into()))))
            }
            Poll::Pending => {
                if !this.expired(cx) {
                    return Poll::Pending;
                }
                this.release();
                this.ended = true;
                Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "the request message did not arrive within server.request_body_timeout ({} ms)",
                    this.rules.timeout.as_millis()
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    /// The steps reading `chunks` one after another makes.
    fn steps(chunks: &[&[u8]]) -> Vec<String> {
        let mut f = Framing::default();
        let mut out = Vec::new();
        for c in chunks {
            f.read(c, |s| {
                out.push(match s {
                    Step::Declared(n) => format!("declared {n}"),
                    Step::Complete => "complete".to_owned(),
                });
                Ok(())
            })
            .unwrap();
        }
        out
    }

    /// A body that has nothing yet, then one whole message.
    struct Later(Option<Bytes>, bool);

    impl http_body::Body for Later {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            if !self.1 {
                self.1 = true;
                return Poll::Pending;
            }
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
    }

    fn body(inner: Later, timeout: Duration) -> Budgeted<Later> {
        let rules = BodyRules {
            process: Arc::new(Budget::new(1 << 20)),
            timeout,
            max_message: 1 << 20,
        };
        Budgeted::new(inner, Activity::new(1 << 20, 1 << 20), rules, 0, false)
    }

    fn poll(b: &mut Budgeted<Later>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(b).poll_frame(&mut cx)
    }

    #[tokio::test]
    async fn the_clock_starts_when_the_body_first_waits_and_not_for_a_whole_message() {
        let timeout = Duration::from_secs(3600);
        let mut b = body(Later(Some(Bytes::from(message(3))), false), timeout);
        // Owed from the start, but no clock read until it has to wait.
        assert_eq!(b.due, Due::Owed);
        let before = Instant::now();
        assert!(poll(&mut b).is_pending());
        let after = Instant::now();
        match b.due {
            Due::At(t) => assert!(before + timeout <= t && t <= after + timeout),
            other => panic!("{other:?}"),
        }
        // The message comes: nothing is owed.
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(_)))));
        assert_eq!(b.due, Due::Nothing);
        // A body that never comes is refused once its time is up (the
        // sleep lasts at least that long).
        let timeout = Duration::from_millis(20);
        let mut b = body(Later(None, false), timeout);
        assert!(poll(&mut b).is_pending());
        tokio::time::sleep(timeout + Duration::from_millis(5)).await;
        b.inner.1 = false;
        match poll(&mut b) {
            Poll::Ready(Some(Err(s))) => assert_eq!(s.code(), tonic::Code::DeadlineExceeded),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framing_finds_every_prefix_and_end_however_the_bytes_are_cut() {
        let mut two = message(3);
        two.extend(message(0));
        two.extend(message(2));
        assert_eq!(
            steps(&[&two]),
            [
                "declared 3",
                "complete",
                "declared 0",
                "complete",
                "declared 2",
                "complete"
            ]
        );
        // Byte by byte: the same steps.
        let bytes: Vec<&[u8]> = two.chunks(1).collect();
        assert_eq!(steps(&bytes).len(), 6);
        // A prefix cut in the middle, a message not finished.
        let m = message(10);
        assert_eq!(steps(&[&m[..3], &m[3..8]]), ["declared 10"]);
    }
}
