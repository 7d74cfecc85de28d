//! What the process tells the outside about itself: health and readiness
//! ([`health`]: `/livez`, `/readyz`, gRPC health), Prometheus metrics
//! ([`metrics`], counted on the check path in [`striped`], with the opt-in
//! heaviest-keys gauge in [`heavy`]) and
//! logs ([`logging`]: human or JSON lines).

pub mod exposition;
pub mod health;
pub mod heavy;
pub mod logging;
pub mod metrics;
pub mod striped;

pub use health::{Details, HealthService, Readiness, router};
pub use metrics::Metrics;
