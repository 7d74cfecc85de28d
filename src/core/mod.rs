//! The bottom layer: the transport-neutral [`Request`] and [`Decision`],
//! what limits count with ([`Rate`], [`Quota`], [`FixedWindow`]), the
//! algorithms (GCRA token bucket, calendar-window quota,
//! envoyproxy/ratelimit's fixed-window counter) on plain atomics, time
//! (the injected [`Clock`]) and keyed hashing. It imports no other module
//! of the crate; the engine ([`crate::engine`]) puts these together with
//! the store and the limits table.

pub mod clock;
pub mod counter;
pub mod decision;
pub mod gcra;
pub mod hash;
pub mod limit;
pub mod quota;
pub mod share;
pub mod source;
pub mod window;

pub use clock::{Clock, ManualClock, Nanos, SystemClock};
pub use decision::{Decision, DenyReason, LimitRef, PlanId, Request};
pub use gcra::{Act, Verdict};
pub use hash::KeyHasher;
pub use limit::{FixedWindow, Quota, Rate, RateError};
pub use source::Source;
