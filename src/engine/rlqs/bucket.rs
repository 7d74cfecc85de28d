//! One global RLQS bucket on this node: its id, the rule it matched,
//! whether an operator blocks its key, the streams reporting it here
//! (each with its measured demand and the assignment it holds) and what
//! the other nodes report; and what each reporter should hold now.

use std::collections::HashMap;
use std::sync::Arc;

use nohash_hasher::BuildNoHashHasher;

use crate::core::clock::Nanos;
use crate::core::share::{self, Demand, Fill};
use crate::limits::rlqs::{BucketEntries, Rule, RuleAction};

/// What an Envoy is told to do with a bucket's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Blanket ALLOW_ALL.
    Allow,
    /// Blanket DENY_ALL.
    Deny,
    /// A token bucket: the Envoy's share.
    Bucket(Fill),
}

impl Strategy {
    /// `token_bucket`, `deny_all` or `allow_all` (metrics' `action`).
    pub fn kind(&self) -> &'static str {
        match self {
            Strategy::Allow => "allow_all",
            Strategy::Deny => "deny_all",
            Strategy::Bucket(_) => "token_bucket",
        }
    }

    /// Whether an Envoy holding `self` should be sent `target`: another
    /// kind of strategy, a share that fell at all (so what Envoys hold
    /// never sums past the rate), or one that rose by more than
    /// `tolerance` (a fraction): small rises wait, and the Envoy's
    /// assignment is renewed as it is.
    pub fn worth_pushing(&self, target: &Strategy, tolerance: f64) -> bool {
        match (self, target) {
            (Strategy::Bucket(held), Strategy::Bucket(want)) => {
                let fell = want.rate() < held.rate() || want.max_tokens < held.max_tokens;
                let rose = |h: f64, w: f64| w > h * (1.0 + tolerance) || (h == 0.0 && w > 0.0);
                fell || rose(held.rate(), want.rate())
                    || rose(f64::from(held.max_tokens), f64::from(want.max_tokens))
            }
            (a, b) => a != b,
        }
    }
}

/// An action for one bucket of one stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Hold `strategy` for `ttl_secs`.
    Assign {
        /// The bucket's id, as the Envoy reported it.
        id: Arc<BucketEntries>,
        /// What to do.
        strategy: Strategy,
        /// For how long, whole seconds.
        ttl_secs: u32,
    },
    /// Forget the bucket (it had no traffic, or its rule was removed).
    Abandon {
        /// The bucket's id.
        id: Arc<BucketEntries>,
    },
}

/// One stream's part in a bucket.
#[derive(Debug, Clone)]
pub(super) struct Member {
    /// Requests per second over its last report; `None` until measured.
    pub demand: Option<f64>,
    /// When it last reported the bucket (this node's clock).
    pub last_report: Nanos,
    /// When it last reported requests for it (or first reported it).
    pub last_traffic: Nanos,
    /// What it holds: the last assignment sent.
    pub held: Option<Strategy>,
}

/// A global bucket as this node tracks it.
#[derive(Debug)]
pub(super) struct Bucket {
    pub domain: Arc<str>,
    pub id: Arc<BucketEntries>,
    /// The keyed hash of its `key_entry` value, if it has one.
    pub key_hash: Option<u64>,
    /// The rule it matched and that rule's index; `None`: ALLOW_ALL.
    pub rule: Option<(usize, Rule)>,
    /// Blocked by an operator until then (`u64::MAX`: until lifted).
    pub blocked_until: Option<Nanos>,
    /// The streams reporting it here.
    pub members: HashMap<u64, Member, BuildNoHashHasher<u64>>,
    /// What every other node reports of it.
    pub remote: Demand,
}

impl Bucket {
    /// This node's reporters, summed.
    pub fn local(&self) -> Demand {
        let mut d = Demand::default();
        for m in self.members.values() {
            d.add(m.demand);
        }
        d
    }

    /// Whether its reporters share a rate (and so their demand counts
    /// across nodes).
    pub fn shared(&self) -> bool {
        self.blocked_until.is_none()
            && matches!(
                self.rule,
                Some((
                    _,
                    Rule {
                        action: RuleAction::Share { .. },
                        ..
                    }
                ))
            )
    }

    /// What a reporter with demand `own` should hold now, given every
    /// node's reporters `all`.
    pub fn target(&self, all: Demand, own: Option<f64>) -> Strategy {
        if self.blocked_until.is_some() {
            return Strategy::Deny;
        }
        match self.rule.as_ref().map(|(_, r)| r.action) {
            None | Some(RuleAction::Allow) => Strategy::Allow,
            Some(RuleAction::Deny) => Strategy::Deny,
            Some(action @ RuleAction::Share { burst, .. }) => {
                let rate = action.rate_per_sec().unwrap_or(0.0);
                let mine = share::share(rate, all, own);
                let of_burst = if rate > 0.0 {
                    burst as f64 * mine / rate
                } else {
                    0.0
                };
                Strategy::Bucket(share::token_bucket(mine, of_burst))
            }
        }
    }

    /// Every reporter here and what it should hold now.
    pub fn targets(&self) -> Vec<(u64, Strategy)> {
        let all = self.local().plus(self.remote);
        self.members
            .iter()
            .map(|(&s, m)| (s, self.target(all, m.demand)))
            .collect()
    }
}
