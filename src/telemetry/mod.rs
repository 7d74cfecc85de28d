//! What the process tells the outside about itself: health and readiness
//! ([`health`]: `/livez`, `/readyz`, gRPC health), Prometheus metrics
//! ([`metrics`], counted on the check path in [`striped`], with the opt-in
//! heaviest-keys gauge in [`heavy`], the names and text-format helpers
//! both share in [`exposition`], and what is read at scrape time and the
//! periodic upkeep in [`sampler`]) and logs ([`logging`]: human or JSON
//! lines). Telemetry reports on the rest through what the app hands it
//! (callbacks, the engine), and imports neither sync nor control.

pub mod exposition;
pub mod health;
pub mod heavy;
pub mod logging;
pub mod metrics;
pub mod sampler;
pub mod striped;

pub use health::{Details, HealthService, Readiness, StateLine, router};
pub use metrics::Metrics;
