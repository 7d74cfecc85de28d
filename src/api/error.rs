//! What can be wrong with a caller's request, and the one mapping from
//! those errors to gRPC statuses.

use tonic::Status;

use crate::engine::NoPlans;

/// A request the API refuses. Every variant names the offending field (as
/// a path like `checks[3].key`) and says why, so the caller can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A required string was empty.
    #[error("{field}: must not be empty")]
    Empty {
        /// The field path.
        field: String,
    },
    /// A string was longer than allowed.
    #[error("{field}: {len} bytes exceeds the maximum of {max} bytes")]
    TooLong {
        /// The field path.
        field: String,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A cost above the configured maximum.
    #[error("{field}: {value} exceeds the maximum cost of {max}")]
    CostTooHigh {
        /// The field path.
        field: String,
        /// The cost sent.
        value: u64,
        /// The cap.
        max: u64,
    },
    /// Too many items in one request.
    #[error("{field}: {count} items exceed the maximum of {max}")]
    TooMany {
        /// The field path.
        field: String,
        /// How many were sent.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A field that this server does not support being set.
    #[error("{field}: {why}")]
    Unsupported {
        /// The field path.
        field: String,
        /// Why.
        why: &'static str,
    },
    /// A value out of its range, with the reason.
    #[error("{field}: {why}")]
    Invalid {
        /// The field path.
        field: String,
        /// Why.
        why: String,
    },
    /// A call about API keys while the config defines no plans: not the
    /// request's fault (`FAILED_PRECONDITION`).
    #[error(transparent)]
    NoPlans(#[from] NoPlans),
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NoPlans(_) => Status::failed_precondition(e.to_string()),
            e => Status::invalid_argument(e.to_string()),
        }
    }
}
