//! quotad: a distributed rate-limiting and quota daemon.
//!
//! (The full layout map is written once the modules settle.)
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod core;
pub mod limits;
pub mod store;
