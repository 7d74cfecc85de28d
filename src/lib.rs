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
//! | [`core`] | the bottom layer, importing no other module: [`Request`](core::Request) and [`Decision`](core::Decision), what limits count with ([`Rate`](core::Rate), [`Quota`](core::Quota), [`FixedWindow`](core::FixedWindow)), GCRA buckets, calendar quotas, envoyproxy/ratelimit's fixed-window counters on plain atomics, the [`Clock`](core::Clock), keyed hashing |
//! | [`engine`] | the one entry every front door calls, [`Engine::decide`](engine::Engine::decide): validate against the config in effect (the door's), resolve to limits, decide on the store, strict mode's Redis wait, metrics and heavy keys counted once; the [`Rules`](engine::Rules) in effect (table and config, swapped as one) |
//! | [`store`] | this node's cells (sharded tables of atomics), the hard cap with its admission policy (a cheap cell displaced for a new key, budgets per source of keys) and the overflow cell as last resort, the idle sweep |
//! | [`limits`] | plans and limits: the immutable [`Table`](limits::Table) (with operators' overrides), its YAML form, and envoyproxy/ratelimit's descriptor trees and files |
//! | [`config`] | the whole config file, a file per section (each owning its raw form, validation and summary line): listeners and TLS, caps on requests, store, Redis, Envoy mapping, limits, `rls_files`, response headers, admin API, reload, metrics; split into [`Boot`](config::Boot) (what only a restart applies, compared as a whole on reload) and [`Live`](config::Live) (what a reload applies, swapped with the table) |
//! | [`diag`] | located diagnostics (a reason at a field path, rendered `file:line:col` by the YAML reader) and the one reader of every file quotad is pointed at (regular files only, never waiting on a FIFO, capped at 16 MiB); imports no other module |
//! | [`api`] | the front doors, wire ↔ engine only: `quotad.v1.RateLimiter` and Envoy RLS v3; input validation; RateLimit response headers |
//! | [`admin`] | `quotad.v1.QuotaAdmin`: bearer-token auth and scopes, refused calls counted and logged within a rate limit, the audit trail (changes, failed reloads, refused changes), overrides, usage, reset, plans, reload |
//! | [`control`] | what operators change while the daemon serves: overrides, reloads and the file watcher; puts each new table in effect in the engine, with its config |
//! | [`app`] | builds everything from a config, binds the listeners, spawns each subsystem's entry (the gRPC and admin servers, the HTTP listener and telemetry tasks, Redis sync, reloads, the sweeper) and owns the shutdown order |
//! | [`cli`] | what the binaries share on their command lines: parsing, exit 64 on usage errors |
//! | [`net`] | what the listeners let in: the one accept loop (plain and TLS, TLS a step after accept), connection caps and idle timers, budgets of buffered request bytes per connection and process, request body deadlines, answers held back for slow readers, TLS handshake caps, the HTTP listener |
//! | [`metrics`] | the Prometheus metrics every part counts into (striped counters on the check path, the heaviest-keys gauge, names and `/metrics`'s text), below the engine that counts into them |
//! | [`readiness`] | the ready/not-ready latch the app, Redis sync and the health endpoints share |
//! | [`telemetry`] | health (`/livez`, `/readyz`, `/healthcheck`, gRPC health), what `/metrics` reads at scrape time and its upkeep, logging (text or JSON); reports on sync and control only through what the app hands it |
//! | [`shutdown`] | the shutdown signal every task waits on |
//! | [`sync`] | Redis: the only module that talks to it; flushes the store's journal of deltas and adopts the global state, strict checks, operators' overrides across nodes (into any [`OverrideStore`](sync::OverrideStore): the control plane), what Redis means to readiness |
//!
//! Imports point one way, down these layers (bottom first; checked by
//! `scripts/module-graph.py` in `scripts/test.sh`, with no import circle
//! between files and no two modules importing each other):
//!
//! 1. leaf helpers: `shutdown`, `cli`, `diag`, `readiness`, the YAML
//!    reader;
//! 2. `core`;
//! 3. `store`, `limits`;
//! 4. `metrics` (the counters the engine and the listeners count into);
//! 5. `net`;
//! 6. `config`;
//! 7. `engine`;
//! 8. `sync`, `control` (beside the engine: Redis, reloads, overrides);
//! 9. `api`, `admin`, `telemetry` (the doors; health and scrape-time
//!    reporting);
//! 10. `app`.
//!
//! # Request flow
//!
//! A front door calls [`engine::Engine::decide`] with its message. The
//! engine takes one view of the [`Rules`](engine::Rules) in effect (the
//! limits table and the config it was built from, swapped together), and
//! the door validates the message against that view's caps (empty or
//! oversized keys, costs above the cap, too many items →
//! `INVALID_ARGUMENT`) and turns it into [`Item`](engine::Item)s: an API
//! key, or an Envoy descriptor's entries, with a cost and a mode. The
//! engine resolves each item to its limits: a key's plan (hash the key,
//! SipHash keyed with a secret; an operator's override first, then its
//! static assignment, then the default plan; a blocked key is denied
//! here), or for a domain from envoyproxy/ratelimit files the rule its
//! descriptor matches in the domain's tree after `replaces`
//! ([`limits::rls::Domain::resolve`]), or the limit the request brings.
//! Then, synchronously, for each limit it finds the cell (a key's, or a
//! descriptor's: a keyed hash of the domain and every entry) in the store
//! and updates it with one compare-and-swap. A plan with several limits
//! is first dry-run against every limit, so a denial charges nothing; a
//! lost race between the dry run and the charge is refunded. Only an
//! allowed charge creates a cell (and, for envoyproxy/ratelimit's fixed
//! windows, which count refused hits too, any counted hit while the store
//! is less than nine tenths full); past the cap it must win room from a
//! cell cheaper to forget ([`store::admission`]). Nothing on this path
//! awaits or holds a lock across anything slow (a shard's read lock for
//! one CAS), except a plan with a strict limit, which the engine decides
//! in Redis ([`engine::wait`]) without holding the view. The engine
//! counts the call's metrics and heavy keys once, and the door renders
//! the [`Answer`](engine::Answer) as its wire message and headers.
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
#![warn(clippy::too_many_lines)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod diag;
pub mod engine;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod readiness;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod telemetry;
mod yaml;
