//! The decision engine: the transport-neutral [`Request`] and [`Decision`],
//! [`Limiter::check`], the algorithms (GCRA token bucket, calendar-window
//! quota, envoyproxy/ratelimit's fixed-window counter) and the injected [`Clock`].

pub mod clock;
pub mod counter;
pub mod decision;
pub mod gcra;
pub mod hash;
pub mod limiter;
pub mod quota;
pub mod source;
pub mod strict;
pub mod window;

pub use clock::{Clock, ManualClock, Nanos, SystemClock};
pub use decision::{Decision, DenyReason, Request};
pub use gcra::Verdict;
pub use hash::KeyHasher;
pub use limiter::{Limiter, Snapshot, Usage};
pub use source::Source;
