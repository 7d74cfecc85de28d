//! What quotad's listeners let in, and how much of the process each
//! connection may take: bounded by configuration, not by what callers
//! send.
//!
//! | module | owns |
//! | --- | --- |
//! | [`listen`] | the one accept loop of every listener (a failed accept pauses it), and a gRPC listener's path from accept to [`serve`]: TCP tuning, the TLS step, the gate |
//! | [`tls`] | rustls server configs from PEM files (mTLS too), swapped on reload; the TLS handshake step after accept; peers' certificate subjects |
//! | [`gate`] | the cap on open connections per listener, each [`Conn`]'s idle timer, what a call knows of its connection ([`ConnInfo`]) |
//! | [`activity`] | a connection's state shared by its calls: when it last did something, calls being worked on, request bytes it buffers, answers not yet written |
//! | [`serve`] | serving a gRPC listener's connections: hyper's HTTP/2 server on each, calls routed to services by name, `grpc-timeout`, connection age, drain on shutdown |
//! | [`timer`] | hyper's clock for the gRPC servers: tokio's timers, `now` from the coarse clock |
//! | [`calls`] | what every gRPC call passes through: counts it, budgets its request body, holds its answers back while the peer reads none |
//! | [`body`] | a request body under budget: each gRPC message's declared size is reserved from the connection's and the process's budgets until it has arrived, and must arrive within `server.request_body_timeout` |
//! | [`budget`] | a shared byte budget |
//! | [`files`] | the open-files limit: raised to the hard limit at start, and what the connection caps need of it |
//! | [`coalesce`] | batching an HTTP/2 connection's socket writes: an answer's frames in one write (copied, not chained), and a write put off once while little waits, so the answers of the calls queued on its thread share it |
//! | [`handshake`] | TLS handshakes in progress: a timeout, a cap per peer address and in all, the oldest dropped first |
//! | [`http`] | the HTTP listener (health, `/metrics`): HTTP/1.1 with a header deadline and a connection cap that drops the oldest unfinished request first |
//!
//! # Worst case memory
//!
//! With `C` = `server.max_connections` per gRPC listener (the check
//! listener and, when configured, the admin listener: `L` of them),
//! what connections can hold at once is at most
//!
//! `max_buffered_bytes + L × C × (receive_window_bytes + max_unsent_bytes_per_connection + CONN_OVERHEAD)`
//! `+ HTTP_MAX_CONNECTIONS × HTTP_CONN_BYTES`
//!
//! where [`CONN_OVERHEAD`] is what an open HTTP/2 connection costs by
//! itself (measured, see `BENCHMARKS.md`). Request messages being
//! received and the headers of calls not yet answered count against
//! `max_buffered_bytes` (and `max_buffered_bytes_per_connection` each
//! connection); bytes the peer sent that no call has read yet wait in
//! HTTP/2's receive window; answers the peer does not read wait within
//! `max_unsent_bytes_per_connection`.

pub mod activity;
pub mod body;
pub mod budget;
pub mod calls;
pub mod coalesce;
pub mod files;
pub mod gate;
pub mod handshake;
pub mod http;
pub mod listen;
pub mod serve;
pub mod timer;
pub mod tls;

pub use activity::Activity;
pub use calls::Calls;
pub use gate::{Conn, ConnInfo, Gate, Peer};

/// Largest request header block (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`):
/// gRPC metadata is small; more is refused before a call starts.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

/// What an idle HTTP/2 connection costs by itself, with its buffers
/// (hyper's and h2's read and write buffers, HPACK tables, the task),
/// rounded up from what `benches/conns.rs` measures; part of the worst
/// case above.
pub const CONN_OVERHEAD: usize = 64 << 10;
