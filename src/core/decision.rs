//! The transport-neutral request and decision every front door maps to and
//! from.

use super::clock::Nanos;
use super::gcra::Verdict;

/// "May `key` spend `cost` units now?"
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The API key (any caller identity). Only its keyed hash is kept.
    pub key: &'a str,
    /// Units to spend. 0 reports the state without spending (front doors
    /// that define "0 means 1" map it before calling).
    pub cost: u64,
    /// Further identity within the key: 0 for the key itself; otherwise a
    /// hash that files this check's cells apart from the key's own (an
    /// Envoy descriptor with more entries than the API key). The plan is
    /// still the key's.
    pub scope: u64,
}

impl<'a> Request<'a> {
    /// A check of `cost` units against `key` itself.
    pub fn new(key: &'a str, cost: u64) -> Self {
        Self {
            key,
            cost,
            scope: 0,
        }
    }
}

/// Why a check was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Not enough tokens or quota now; `retry_after` says when.
    Limited,
    /// The cost exceeds the limit's capacity and can never pass.
    CostExceedsCapacity,
    /// A strict limit could not be checked in Redis in time and the
    /// configured fail mode is deny.
    Unavailable,
    /// An operator blocked the key; `retry_after` is when the block ends
    /// (absent: until it is lifted).
    Blocked,
}

/// The answer to a [`Request`]. Being limited is a normal value, not an
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the caller may proceed. When false, nothing was consumed
    /// from any limit.
    pub allowed: bool,
    /// Capacity of the deciding limit (burst or quota); 0 when unlimited.
    pub limit: u64,
    /// Units left in the deciding limit after this check.
    pub remaining: u64,
    /// Time until the deciding limit is back to full capacity.
    pub reset_after: Nanos,
    /// Time until `cost` would fit: `Some(0)` when allowed, `None` when it
    /// never can.
    pub retry_after: Option<Nanos>,
    /// Why it was denied; `None` when allowed.
    pub reason: Option<DenyReason>,
    /// The deciding limit: when allowed, the one closest to exhaustion;
    /// when denied, the one with the longest wait. `None` for a plan
    /// without limits.
    pub policy: Option<LimitRef>,
    /// The plan that decided, in the table the decision was made with;
    /// `None` for a blocked key (no plan applies).
    pub plan: Option<PlanId>,
    /// After a report ([`Act::Force`]): units past the deciding limit (a
    /// bucket's debt, a quota's overrun). 0 otherwise.
    pub over: u64,
}

impl Decision {
    /// One limit's verdict as a decision, `limit` being that limit's
    /// capacity: denied because the cost can never fit (no `retry_after`)
    /// or for now. It names no plan or policy; callers that have them add
    /// them.
    pub fn of_verdict(v: &Verdict, limit: u64) -> Decision {
        let reason = match (v.allowed, v.retry_after) {
            (true, _) => None,
            (false, None) => Some(DenyReason::CostExceedsCapacity),
            (false, Some(_)) => Some(DenyReason::Limited),
        };
        Decision {
            allowed: v.allowed,
            limit,
            remaining: v.remaining,
            reset_after: v.reset_after,
            retry_after: v.retry_after,
            reason,
            policy: None,
            plan: None,
            over: 0,
        }
    }

    /// The answer for a plan with no limits.
    pub const UNLIMITED: Decision = Decision {
        allowed: true,
        limit: 0,
        remaining: 0,
        reset_after: 0,
        retry_after: Some(0),
        reason: None,
        policy: None,
        plan: None,
        over: 0,
    };
}

/// Index of a plan in its table ([`crate::limits::Table`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanId(pub u32);

/// Where a decision's limit lives in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRef {
    /// The plan.
    pub plan: PlanId,
    /// Index into the plan's limits.
    pub limit: u32,
}
