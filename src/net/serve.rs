//! Serving a gRPC listener's connections: hyper's HTTP/2 server on each
//! connection the listener admits ([`super::listen`]), the calls routed
//! to the services by name, until shutdown.
//!
//! quotad serves its gRPC connections itself rather than through
//! `tonic::transport::Server`, which adds per call what quotad does not
//! need (an `axum` router, boxed layers, an HTTP `date` header, the
//! precise clock read on every frame for HTTP/2 keepalive) and exposes no
//! switch for them (issue 24, lever 9 in `BENCHMARKS.md`). What it kept:
//!
//! - each call is [`Calls`]'s: counted on its connection, its request
//!   body budgeted, its answer held back for a peer that reads none;
//! - a `grpc-timeout` header bounds the wait for a call's answer, as
//!   tonic's server does (`CANCELLED`, "Timeout expired");
//! - a path naming no service served here, or not of the form
//!   `/service/method`, is `UNIMPLEMENTED`;
//! - `server.max_connection_age` sends a connection `GOAWAY` at that age
//!   and closes it [`Server::MAX_AGE_GRACE`] later if calls still run
//!   (tonic, with a grace set, only ever closed it at age + grace);
//! - on shutdown, accepting stops, every connection gets `GOAWAY`, and
//!   [`Server::serve`] returns once their calls have finished.
//!
//! The services are tonic's generated servers (and [`crate::api::rls_server`]):
//! any `tower` service of [`tonic::body::Body`] whose future is tonic's
//! `BoxFuture` and which is always ready, as generated servers are.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tonic::transport::server::Connected;

use super::MAX_HEADER_LIST;
use super::calls::{CallFuture, Calls, Held};
use super::gate::{Conn, ConnInfo};
use super::timer::CoarseTimer;
use crate::diag::head;

/// A call's answer.
pub type Reply = http::Response<Body>;

/// A service's answer on its way.
pub type Answer = BoxFuture<Reply, Infallible>;

/// A service calls are routed to, by its gRPC name: any `tower` service
/// of [`Body`] that is always ready and answers with tonic's `BoxFuture`,
/// as generated servers are.
pub trait Route: Send + Sync {
    /// `request`'s answer.
    fn call(&self, request: http::Request<Body>) -> Answer;
}

impl<S> Route for S
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = Reply,
            Error = Infallible,
            Future = Answer,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    fn call(&self, request: http::Request<Body>) -> Answer {
        // Generated servers are always ready: no `poll_ready` first.
        tower_service::Service::call(&mut self.clone(), request)
    }
}

/// The services of one listener, by name.
#[derive(Default)]
pub struct Routes {
    routes: Vec<(&'static str, Box<dyn Route>)>,
}

impl Routes {
    /// No services: every call is `UNIMPLEMENTED`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `service`'s calls (paths `/<its name>/<method>`).
    pub fn with<S: Route + NamedService + 'static>(mut self, service: S) -> Self {
        self.routes.push((S::NAME, Box::new(service)));
        self
    }

    /// The names of the services served, in the order added.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.routes.iter().map(|(name, _)| *name)
    }

    /// `request`'s answer from the service its path names.
    pub(super) fn call(&self, request: http::Request<Body>) -> Answer {
        let service = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map(|(service, _)| service);
        let route = service.and_then(|s| self.routes.iter().find(|(name, _)| *name == s));
        match route {
            Some((_, route)) => route.call(request),
            None => Box::pin(std::future::ready(Ok(self.unimplemented(service)))),
        }
    }

    /// The answer to a call of a service not served here (`service`, or
    /// `None`: the path is not `/service/method`), naming what is.
    fn unimplemented(&self, service: Option<&str>) -> Reply {
        let served = self.names().collect::<Vec<_>>().join(", ");
        let message = match service {
            Some(s) => format!(
                "{} is not served on this listener; it serves {served}",
                head(s, 128)
            ),
            None => {
                format!("not a gRPC method path (/service/method); this listener serves {served}")
            }
        };
        tonic::Status::unimplemented(message).into_http()
    }
}

/// A gRPC listener's HTTP/2 settings (`server.*`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Calls open at once on one connection.
    pub max_concurrent_streams: u32,
    /// An HTTP/2 ping this long after the peer last sent anything ...
    pub keepalive_interval: Duration,
    /// ... and the connection closed when it is not answered this soon.
    pub keepalive_timeout: Duration,
    /// HTTP/2's receive windows, of each call and of the connection.
    pub receive_window_bytes: u32,
    /// `GOAWAY` at this age (`None`: no limit).
    pub max_connection_age: Option<Duration>,
}

/// A gRPC listener's server: its services, what each call goes through,
/// and HTTP/2's settings.
pub struct Server {
    routes: Arc<Routes>,
    calls: Calls,
    h2: http2::Builder<TokioExecutor>,
    max_age: Option<Duration>,
}

impl Server {
    /// How long a connection past `server.max_connection_age` may finish
    /// its calls after its `GOAWAY` before it is closed.
    pub const MAX_AGE_GRACE: Duration = Duration::from_secs(30);

    /// A server of `routes` with the connection settings `limits`, each
    /// call through `calls`.
    pub fn new(routes: Routes, calls: Calls, limits: &Settings) -> Self {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(CoarseTimer::default())
            .auto_date_header(false)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .keep_alive_interval(limits.keepalive_interval)
            .keep_alive_timeout(limits.keepalive_timeout)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_connection_window_size(limits.receive_window_bytes)
            .initial_stream_window_size(limits.receive_window_bytes);
        Self {
            routes: Arc::new(routes),
            calls,
            h2,
            max_age: limits.max_connection_age,
        }
    }

    /// Serves the connections of `incoming` until `stop` completes, then
    /// stops accepting (dropping `incoming`), sends each connection
    /// `GOAWAY`, and returns when all are closed.
    pub async fn serve<I, IO>(self, incoming: I, stop: impl Future<Output = ()>)
    where
        I: Stream<Item = std::io::Result<Conn<IO>>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (stopping, watch) = tokio::sync::watch::channel(());
        {
            let mut incoming = pin!(incoming);
            let mut stop = pin!(stop);
            loop {
                let conn = tokio::select! {
                    () = &mut stop => break,
                    conn = incoming.next() => conn,
                };
                match conn {
                    Some(Ok(conn)) => self.spawn(conn, watch.clone()),
                    Some(Err(e)) => tracing::debug!(error = %e, "connection not admitted"),
                    None => break,
                }
            }
        }
        let _ = stopping.send(());
        drop(watch);
        stopping.closed().await;
    }

    /// Serves one connection in its own task, holding `watch` until it
    /// is closed.
    fn spawn<IO>(&self, conn: Conn<IO>, mut watch: tokio::sync::watch::Receiver<()>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = OnConn {
            info: conn.connect_info(),
            routes: Arc::clone(&self.routes),
            calls: self.calls.clone(),
        };
        let served = self.h2.serve_connection(TokioIo::new(conn), service);
        let max_age = self.max_age;
        tokio::spawn(async move {
            let mut served = pin!(served);
            let mut age = Age::new(max_age);
            let mut told = false;
            loop {
                tokio::select! {
                    done = served.as_mut() => {
                        if let Err(e) = done {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = age.next(), if age.ticking() => match age.stage {
                        Stage::Old => served.as_mut().graceful_shutdown(),
                        Stage::Done | Stage::Young => break,
                    },
                    _ = watch.changed(), if !told => {
                        told = true;
                        served.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(watch);
        });
    }
}

/// Where a connection stands against `server.max_connection_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Younger than the age.
    Young,
    /// Past the age: told to go away, its calls may finish.
    Old,
    /// Past the age and the grace: closed (or no age set).
    Done,
}

/// A connection's age timer.
struct Age {
    stage: Stage,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Age {
    /// Without a `max_age`, already past every stage: it never ticks (its
    /// sleep is never polled, so never registered).
    fn new(max_age: Option<Duration>) -> Self {
        Self {
            stage: if max_age.is_some() {
                Stage::Young
            } else {
                Stage::Done
            },
            sleep: Box::pin(tokio::time::sleep(max_age.unwrap_or_default())),
        }
    }

    /// Whether a next stage is still to come.
    fn ticking(&self) -> bool {
        self.stage != Stage::Done
    }

    /// Waits for the next stage and enters it.
    async fn next(&mut self) {
        self.sleep.as_mut().await;
        self.stage = match self.stage {
            Stage::Young => {
                let grace = tokio::time::Instant::now() + Server::MAX_AGE_GRACE;
                self.sleep.as_mut().reset(grace);
                Stage::Old
            }
            Stage::Old | Stage::Done => Stage::Done,
        };
    }
}

/// One connection's calls, as hyper hands them over.
struct OnConn {
    info: ConnInfo,
    routes: Arc<Routes>,
    calls: Calls,
}

impl hyper::service::Service<http::Request<Incoming>> for OnConn {
    type Response = http::Response<Held<Body>>;
    type Error = Infallible;
    type Future = CallFuture<Deadline<Answer>>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        let deadline = grpc_timeout(request.headers());
        let routes = &self.routes;
        self.calls
            .call(request, self.info.activity(), |request| Deadline {
                timeout: deadline,
                sleep: None,
                inner: routes.call(request),
            })
    }
}

/// The client's deadline (`grpc-timeout`: up to 8 digits and a unit),
/// when it gave a valid one.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3_600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pin_project_lite::pin_project! {
    /// A call's answer, within the client's deadline if it set one. The
    /// timer starts when the answer first has to wait: most are ready at
    /// once, and a timer per call costs an allocation and a clock read.
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        timeout: Option<Duration>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future<Output = Result<Reply, Infallible>>> Future for Deadline<F> {
    type Output = Result<Reply, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let ready @ Poll::Ready(_) = this.inner.poll(cx) {
            return ready;
        }
        if let Some(timeout) = this.timeout.take() {
            *this.sleep = Some(Box::pin(tokio::time::sleep(timeout)));
        }
        let expired = this
            .sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if expired {
            return Poll::Ready(Ok(tonic::Status::cancelled("Timeout expired").into_http()));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            "grpc-timeout",
            http::HeaderValue::from_str(timeout).expect("ascii"),
        );
        h
    }

    #[test]
    fn grpc_timeouts_parse_as_the_grpc_spec_writes_them() {
        let cases = [
            ("1H", Some(Duration::from_secs(3_600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("7n", Some(Duration::from_nanos(7))),
            ("100000000m", None),
            ("5", None),
            ("m", None),
            ("-5m", None),
            ("5x", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(grpc_timeout(&headers(text)), want, "{text:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn an_answer_past_the_clients_deadline_is_cancelled() {
        let never = Deadline {
            inner: std::future::pending::<Result<Reply, Infallible>>(),
            timeout: Some(Duration::from_millis(20)),
            sleep: None,
        };
        let reply = never.await.expect("infallible");
        let status = tonic::Status::from_header_map(reply.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::Cancelled);
        assert_eq!(status.message(), "Timeout expired");
        // An answer ready at once is the answer, whatever the deadline.
        let ready = Deadline {
            inner: std::future::ready(Ok::<_, Infallible>(Reply::new(Body::empty()))),
            timeout: Some(Duration::ZERO),
            sleep: None,
        };
        let reply = ready.await.expect("infallible");
        assert!(reply.headers().get("grpc-status").is_none());
    }

    #[tokio::test]
    async fn a_path_naming_no_service_here_is_unimplemented() {
        let routes = Routes::new();
        for path in ["/quotad.v1.RateLimiter/Check", "/nothing", "/"] {
            let request = http::Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("request");
            let reply = routes.call(request).await.expect("infallible");
            let status = tonic::Status::from_header_map(reply.headers()).expect("a status");
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
            assert!(
                status.message().contains("listener; it serves")
                    || status.message().contains("this listener serves"),
                "{path}: {}",
                status.message()
            );
        }
    }
}
