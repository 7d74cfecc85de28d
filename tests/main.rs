//! quotad's integration tests: one binary, each module one capability,
//! every test against a real daemon over real gRPC on loopback.

mod support;

/// The admin API: tokens and scopes, overrides, usage, reset, audit.
mod admin;
/// Caller mistakes get INVALID_ARGUMENT naming the field.
mod bad_input;
/// quotad-bench, the load generator, against a real daemon.
mod bench_tool;
/// The `quotad` binary: check-config, exit code 64, SIGTERM.
mod binary;
/// The Grafana dashboard: valid dashboard JSON, every query names metrics the daemon exports.
mod dashboard;
/// envoyproxy/ratelimit drop-in: its config files, answers and headers.
mod envoy_compat;
/// envoyproxy/ratelimit's own test suite, ported: its config fixtures, service and integration scenarios.
mod envoy_peer;
/// Envoy RLS v3 through Envoy's own generated client.
mod envoy_rls;
/// Redis and config faults, and SIGTERM, under load: answers, fail modes, counts.
mod faults;
/// gRPC health, server reflection (v1 and v1alpha), /livez and /readyz.
mod health;
/// The Helm chart starts the binary with flags and files it accepts.
mod helm;
/// Hostile callers: oversized, nested and flooding messages, stalled
/// streams, idle connections.
mod hostile;
/// Hostile connections: partial bodies within budgets, calls that never
/// finish, quiet streams, trickled HTTP headers.
mod hostile_conns;
/// The HTTP check door: forward auth, native JSON, envoyproxy's /json,
/// hostile bodies and slow clients, TLS.
mod http_door;
/// Key floods against a small store: old and new customers keep their
/// own exact counts; budgets per source; the overflow cell as last resort.
mod key_flood;
/// Concurrency limits on one node: Acquire, Renew, Release, Hold, what
/// acquiring charges, expiry, bad input, operators' view.
mod leases;
/// Prometheus /metrics after known traffic, readiness with strict limits.
mod metrics;
/// Native API: Check, CheckBatch, CheckStream, remaining/retry_after.
mod native;
/// A real NGINX asking quotad's /v1/auth before each request.
mod nginx;
/// quotactl end to end: every command against a real daemon, exit codes,
/// output (table and JSON), tokens and keys never shown.
mod quotactl;
/// The lease script of concurrency limits against a real redis-server.
mod redis_leases;
/// Operators' overrides and resets across nodes through a real Redis.
mod redis_overrides;
/// Reports across nodes on a real redis-server: sums exact in sync and
/// strict mode, debt seen on every node.
mod redis_report;
/// Envoy RLQS across nodes on a real redis-server: the demand script, and
/// one rate shared by Envoys on two nodes.
mod redis_rlqs;
/// Redis sync mode against a real redis-server.
mod redis_sync;
/// Hot reload of the config and limits files.
mod reload;
/// Peek checks and reports: debt, overrun, streams, Envoy's stream-done
/// pattern.
mod report;
/// Envoy RLQS on one node through Envoy's generated client: fair shares,
/// Envoy's quirks, blocks, reloads, idle buckets, bad input and caps.
mod rlqs;
/// Secrets (Redis passwords, file contents) never shown in any output.
mod secrets;
/// Graceful shutdown with calls and streams in flight.
mod shutdown;
/// TLS and mTLS on the check and admin listeners.
mod tls;
