//! What the process tells the outside about itself: health ([`health`]:
//! `/livez`, `/readyz`, `/healthcheck`, gRPC health, all on the
//! [`Readiness`] latch), the Prometheus metrics' scrape-time values and
//! periodic upkeep ([`sampler`]; the counters themselves are
//! [`crate::metrics`], below the engine that counts into them) and logs
//! ([`logging`]: human or JSON lines). Telemetry reports on the rest
//! through what the app hands it (callbacks, the engine's state), and
//! imports neither sync nor control.

pub mod health;
pub mod logging;
pub mod sampler;

pub use crate::readiness::{Readiness, StateLine};
pub use health::{Details, HealthService, router};
