//! quotad: a rate-limiting and quota daemon.
//!
//! Gateways ask, over gRPC, "may key K spend N units now?"; quotad answers
//! from token buckets and quota counters held in memory, with the limit,
//! what remains, when it resets and when to retry.
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`core`] | [`Request`](core::Request) → [`Limiter::check`](core::Limiter::check) → [`Decision`](core::Decision); GCRA buckets, calendar quotas, envoyproxy/ratelimit's fixed-window counters, the [`Clock`](core::Clock), keyed hashing |
//! | [`store`] | this node's cells (sharded tables of atomics), the hard cap with its admission policy (a cheap cell displaced for a new key, budgets per source of keys) and the overflow cell as last resort, the idle sweep |
//! | [`limits`] | plans and limits: the immutable [`Table`](limits::Table) (with operators' overrides), its YAML form, and envoyproxy/ratelimit's descriptor trees and files |
//! | [`config`] | the whole config file: listeners and TLS, caps on requests, store, Redis, Envoy mapping, limits, `rls_files`, response headers, admin API, reload, metrics; the one reader of every file quotad is pointed at (regular files only, never waiting on a FIFO, capped at 16 MiB) |
//! | [`api`] | the front doors: `quotad.v1.RateLimiter` and Envoy RLS v3; input validation; RateLimit response headers |
//! | [`admin`] | `quotad.v1.QuotaAdmin`: bearer-token auth and scopes, refused calls counted and logged within a rate limit, the audit trail (changes, failed reloads, refused changes), overrides, usage, reset, plans, reload |
//! | [`control`] | what operators change while the daemon serves: the config in effect, overrides, reloads and the file watcher; swaps tables into the limiter |
//! | [`app`] | builds everything from a config, binds the listeners, spawns each subsystem's entry (the gRPC and admin servers, the HTTP listener and telemetry tasks, Redis sync, reloads, the sweeper) and owns the shutdown order |
//! | [`cli`] | what the binaries share on their command lines: parsing, exit 64 on usage errors |
//! | [`tls`] | the old path of [`net::tls`] |
//! | [`net`] | what the listeners let in: the one accept loop (plain and TLS, TLS a step after accept), connection caps and idle timers, budgets of buffered request bytes per connection and process, request body deadlines, answers held back for slow readers, TLS handshake caps, the HTTP listener |
//! | [`telemetry`] | readiness (`/livez`, `/readyz`, gRPC health), Prometheus `/metrics` (striped counters on the check path, the heaviest-keys gauge, what is read at scrape time, upkeep), logging (text or JSON); reports on sync and control only through what the app hands it |
//! | [`shutdown`] | the shutdown signal every task waits on |
//! | [`sync`] | Redis: the only module that talks to it; flushes the store's journal of deltas and adopts the global state, strict checks, operators' overrides across nodes (into any [`OverrideStore`](sync::OverrideStore): the control plane), what Redis means to readiness |
//!
//! # Request flow
//!
//! A front door validates the caller's message (empty or oversized keys,
//! costs above the cap, too many items → `INVALID_ARGUMENT`, against the
//! caps of the config in effect), maps it to a [`core::Request`], and
//! calls [`core::Snapshot::check`] synchronously: hash the key (SipHash
//! keyed with a secret), look up its plan in the table snapshot (an
//! operator's override first, then its static assignment, then the
//! default plan; a blocked key is denied here), and for each of the
//! plan's limits find the key's cell in the store and update it with one
//! compare-and-swap. A plan with several
//! limits is first dry-run against every limit, so a denial charges
//! nothing; a lost race between the dry run and the charge is refunded.
//! Only an allowed charge creates a cell (and, for envoyproxy/ratelimit's
//! fixed windows, which count refused hits too, any counted hit while the
//! store is less than nine tenths full); past the cap it must win room
//! from a cell cheaper to forget ([`store::admission`]). Nothing on this path awaits or
//! holds a lock across anything slow (a shard's read lock for one CAS).
//!
//! An Envoy RLS request for a domain read from envoyproxy/ratelimit files
//! takes a second route to the same store: each descriptor is matched in
//! the domain's descriptor tree ([`limits::rls`]), `replaces` drops
//! limits, and the matched limit is applied with
//! [`core::Limiter::check_limit`] to the descriptor's own cell (a keyed
//! hash of the domain and every entry).
//!
//! # Accuracy guarantees
//!
//! - Token bucket (rate `r` per period `p`, burst `b`): over any interval
//!   of length `t`, a key is admitted at most `b + r·(t + n·1ns)/p` units,
//!   `n` being the number of admitted checks (rounding of each check to
//!   whole nanoseconds); a full bucket admits exactly `b`.
//! - `retry_after` is exact: the same check one nanosecond earlier is
//!   denied, at `retry_after` it passes (absent other traffic).
//! - Quotas count exactly within their UTC calendar window.
//! - envoyproxy/ratelimit fixed windows count every hit within a window
//!   aligned to the unit, as envoyproxy/ratelimit does, so answers match
//!   it hit for hit.
//! - A check passes only if all limits of its plan pass; then all are
//!   charged, else none.
//! - Memory: at most `store.max_tracked_keys` cells (plus one overflow cell
//!   per limit); a new key past the cap displaces a cell cheap to forget
//!   (within its source's budget), else shares the overflow cell. Refused
//!   checks create no cells; idle ones are swept. Connections hold at most
//!   what `server.*` budgets (see [`net`]).
//!
//! - Several nodes on one Redis ([`sync`]): a limit of rate `r`, burst `b`
//!   on `n` nodes flushing every `i` admits at most about
//!   `b + r·(t + n·i)` over a window `t` long enough to repay the bursts
//!   nodes took before first hearing of each other; quota counters are
//!   kept in Redis, so they survive restarts.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod limits;
pub mod net;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod telemetry;
/// The old path of [`net::tls`].
pub use net::tls;
mod yaml;
