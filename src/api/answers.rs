//! The answer streams of the native API's request streams (`CheckStream`,
//! `ReportStream`): each message answered as tonic pulls the answers,
//! straight from the inbound stream, with no task and no queue, so a
//! caller that stops reading answers stops us reading its messages and
//! HTTP/2 flow control pushes back on it. An invalid message gets an
//! answer saying what was wrong and the stream goes on; a message that
//! does not decode ends it with that status; shutdown ends it with
//! UNAVAILABLE, so the caller knows to resend what was not answered. The
//! stream's request id is logged with refused messages and sent back in
//! the response metadata, so the caller can quote it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::error::RequestError;
use super::request_id;
use crate::engine::Engine;
use crate::shutdown::Shutdown;

/// An answer stream.
pub type Answers<A> = Pin<Box<dyn Stream<Item = Result<A, Status>> + Send>>;

/// What one kind of stream does with a message.
pub trait Handler: Send + Sync + 'static {
    /// The messages.
    type In: Send + 'static;
    /// The answers.
    type Out: Send + 'static;
    /// What the stream is called in logs and the shutdown status
    /// (`check`, `report`).
    const WHAT: &'static str;
    /// Decides one message; the error is its refusal.
    fn answer(
        engine: &Engine,
        msg: &Self::In,
    ) -> impl Future<Output = Result<Self::Out, RequestError>> + Send;
    /// The answer to a refused message (its `id` echoed, `error` set).
    fn refused(msg: &Self::In, e: &RequestError) -> Self::Out;
}

/// What an answer stream carries between polls.
struct State<H: Handler> {
    inbound: Streaming<H::In>,
    engine: Arc<Engine>,
    shutdown: Shutdown,
    request_id: String,
    done: bool,
}

/// The answer stream of `request`, each message decided by `H`.
pub fn stream<H: Handler>(
    engine: &Arc<Engine>,
    request: Request<Streaming<H::In>>,
    shutdown: Shutdown,
) -> Response<Answers<H::Out>> {
    let request_id = request_id::of(request.metadata());
    let tag = tonic::metadata::MetadataValue::try_from(request_id.as_str()).ok();
    let state = State::<H> {
        inbound: request.into_inner(),
        engine: Arc::clone(engine),
        shutdown,
        request_id,
        done: false,
    };
    let out = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let next = tokio::select! {
            biased;
            _ = st.shutdown.wait() => {
                st.done = true;
                let status = Status::unavailable(format!(
                    "quotad is shutting down: resend unanswered {}s to another instance",
                    H::WHAT
                ));
                return Some((Err(status), st));
            }
            next = st.inbound.message() => next,
        };
        let answer = match next {
            Ok(Some(msg)) => match H::answer(&st.engine, &msg).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!(request_id = %st.request_id, error = %e, "{} stream message refused", H::WHAT);
                    H::refused(&msg, &e)
                }
            },
            Ok(None) => return None,
            Err(status) => {
                // A message we could not decode (or a broken stream): end
                // with the reason rather than a silent OK.
                tracing::debug!(%status, "{} stream ended with an inbound error", H::WHAT);
                st.done = true;
                return Some((Err(status), st));
            }
        };
        Some((Ok(answer), st))
    });
    let mut response = Response::new(Box::pin(out) as Answers<H::Out>);
    if let Some(tag) = tag {
        response.metadata_mut().insert(request_id::HEADER, tag);
    }
    response
}
