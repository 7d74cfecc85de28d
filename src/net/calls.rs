//! What every gRPC call passes through, before any service (and
//! so, on the admin listener, before any token is looked at):
//!
//! - the call is activity on its connection, and is *being worked on*
//!   until its answer's headers are ready (a unary call until its
//!   handler returns; a stream only until it starts);
//! - its request body is [`Budgeted`]: messages reserved from the
//!   connection's and the process's byte budgets, with a deadline;
//! - its answer is [`Held`] back while the connection has
//!   `server.max_unsent_bytes_per_connection` of answers its peer has not
//!   read, so a peer that sends and never reads cannot make the server
//!   queue answers without end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use super::activity::{Activity, Busy};
use super::body::{BodyRules, Budgeted};

/// What HPACK counts per header beyond its name and value.
const HEADER_OVERHEAD: usize = 32;

/// Counts, budgets and holds back each call (see the module docs).
#[derive(Debug, Clone)]
pub struct Calls {
    rules: BodyRules,
    /// Paths of the methods whose callers stream requests: they may wait
    /// before their first message.
    streams: Arc<[&'static str]>,
}

/// The bytes a request's headers take, as HTTP/2 counts them.
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + HEADER_OVERHEAD)
        .sum()
}

impl Calls {
    /// Calls whose request bodies are budgeted by `rules`; calls to
    /// `streams` (paths like `/quotad.v1.RateLimiter/CheckStream`) are
    /// client streams.
    pub fn new(rules: BodyRules, streams: &[&'static str]) -> Self {
        Self {
            rules,
            streams: streams.into(),
        }
    }

    /// Starts `request`, a call on the connection `conn`: its body
    /// budgeted, it is worked on until `answer` (given the request) is
    /// ready, and its answer is held back while the peer reads none.
    pub fn call<B, F, RB, E>(
        &self,
        request: http::Request<B>,
        conn: &Arc<Activity>,
        answer: impl FnOnce(http::Request<tonic::body::Body>) -> F,
    ) -> CallFuture<F>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<tonic::codegen::StdError>,
        F: Future<Output = Result<http::Response<RB>, E>>,
    {
        let stream = self.streams.contains(&request.uri().path());
        let headers = header_bytes(request.headers());
        let rules = self.rules.clone();
        let body_conn = Arc::clone(conn);
        let request = request.map(|body| {
            tonic::body::Body::new(Budgeted::new(body, body_conn, rules, headers, stream))
        });
        CallFuture {
            busy: Some(conn.begin()),
            inner: answer(request),
            conn: Some(Arc::clone(conn)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's answer on its way: the call is worked on until it is ready.
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
        conn: Option<Arc<Activity>>,
    }
}

impl<F, RB, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<Held<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(response)) => {
                this.busy.take();
                let conn = this.conn.take();
                Poll::Ready(Ok(response.map(|body| Held { body, conn })))
            }
        }
    }
}

/// An answer body held back while its connection has too many answer
/// bytes its peer has not read.
pub struct Held<B> {
    body: B,
    conn: Option<Arc<Activity>>,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Held<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = &this.conn
            && !conn.may_send(cx)
        {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(conn), Poll::Ready(Some(Ok(frame)))) = (&this.conn, &polled)
            && let Some(data) = frame.data_ref()
        {
            conn.handed(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
