//! One global RLQS bucket on this node: its id, the rule it matched,
//! whether an operator blocks its key, the streams reporting it here
//! (each with its measured demand and the assignment it holds) and what
//! the other nodes report; and what each reporter should hold now.

use std::sync::Arc;

use crate::core::clock::Nanos;
use crate::core::share::{self, Demand, Fill};
use crate::limits::rlqs::{BucketEntries, RuleAction};

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
}

/// What a reporter should hold, exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Target {
    Allow,
    Deny,
    /// A share of the rate (per second) and of the burst.
    Share {
        rate: f64,
        burst: f64,
    },
}

/// What an Envoy holding `held` is sent for `target`, if anything (else
/// it keeps what it holds, renewed). A share is assigned with a margin of
/// half the `tolerance` (fraction) below the exact one, and sent again
/// only when the exact one falls below what the Envoy holds (so what
/// Envoys hold never sums past the rate) or the margined one rises past
/// it by more than the tolerance: a share that wobbles sends nothing
/// (each assignment refills Envoy's bucket, so fewer is better).
pub(super) fn next(held: Option<Strategy>, target: Target, tolerance: f64) -> Option<Strategy> {
    let want = match target {
        Target::Allow => Strategy::Allow,
        Target::Deny => Strategy::Deny,
        Target::Share { rate, burst } => {
            let keep = 1.0 - tolerance / 2.0;
            Strategy::Bucket(share::token_bucket(rate * keep, burst * keep))
        }
    };
    let (Some(Strategy::Bucket(h)), Strategy::Bucket(w), Target::Share { rate, burst }) =
        (held, want, target)
    else {
        return (held != Some(want)).then_some(want);
    };
    let fell = h.rate() > rate || f64::from(h.max_tokens) > burst.max(1.0);
    let rose = |h: f64, w: f64| w > h * (1.0 + tolerance) || (h == 0.0 && w > 0.0);
    let rose = rose(h.rate(), w.rate()) || rose(f64::from(h.max_tokens), f64::from(w.max_tokens));
    (fell || rose).then(|| Strategy::Bucket(seen_by_envoy(h, w)))
}

/// Whether `new` lets an Envoy that held `old` admit more: what the
/// others hold must fall first.
pub(super) fn rises(old: Option<Strategy>, new: Strategy) -> bool {
    match (old, new) {
        (None, _) | (Some(Strategy::Deny), Strategy::Allow | Strategy::Bucket(_)) => true,
        (Some(Strategy::Bucket(_)), Strategy::Allow) => true,
        (Some(Strategy::Bucket(o)), Strategy::Bucket(n)) => {
            n.rate() > o.rate() || n.max_tokens > o.max_tokens
        }
        _ => false,
    }
}

/// `want`, told apart from `held` as Envoy compares token buckets: it
/// looks at `max_tokens`, `tokens_per_fill` and only the nanoseconds of
/// `fill_interval`, so a change of interval alone would go unnoticed;
/// then one token less of burst (or, with a burst of one, per fill)
/// makes it one.
fn seen_by_envoy(held: Fill, mut want: Fill) -> Fill {
    if want.max_tokens == held.max_tokens
        && want.tokens_per_fill == held.tokens_per_fill
        && want.fill_interval_secs != held.fill_interval_secs
    {
        if want.max_tokens > 1 {
            want.max_tokens -= 1;
        } else {
            want.tokens_per_fill = want.tokens_per_fill.saturating_sub(1);
        }
    }
    want
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
    /// What it holds: the last assignment sent or queued for it.
    pub held: Option<Strategy>,
    /// The last assignment its stream actually sent (an answer, or a
    /// queued one taken by the stream).
    pub delivered: Option<Strategy>,
    /// When it was last sent an assignment.
    pub last_sent: Nanos,
    /// Its stream closed: the Envoy enforces what it holds until its
    /// assignment expires, so its share stays reserved until then.
    pub ghost_until: Option<Nanos>,
}

/// A bucket's members by stream id: a vector sorted by id (streams get
/// increasing ids, so a new member is mostly pushed at the end), sized to
/// fit: most buckets have one or a few members, and a hash map's spare
/// slots would cost several times a member.
#[derive(Debug, Default)]
pub(super) struct Members(Vec<(u64, Member)>);

impl Members {
    fn at(&self, stream: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&stream, |(s, _)| *s)
    }

    pub fn contains_key(&self, stream: &u64) -> bool {
        self.at(*stream).is_ok()
    }

    pub fn get_mut(&mut self, stream: &u64) -> Option<&mut Member> {
        self.at(*stream).ok().map(|i| &mut self.0[i].1)
    }

    /// The member of `stream`, `new` if it has none.
    pub fn get_or_insert(&mut self, stream: u64, new: Member) -> &mut Member {
        let i = match self.at(stream) {
            Ok(i) => i,
            Err(i) => {
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (stream, new));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn remove(&mut self, stream: &u64) -> Option<Member> {
        self.at(*stream).ok().map(|i| self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Member)> {
        self.0.iter().map(|(s, m)| (s, m))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut Member)> {
        self.0.iter_mut().map(|(s, m)| (*s, m))
    }

    pub fn values(&self) -> impl Iterator<Item = &Member> {
        self.0.iter().map(|(_, m)| m)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a reporter with demand `own` should hold under `rule` (its
/// index and action; `None`: ALLOW_ALL), blocked or not, given every
/// node's reporters `all`.
pub(super) fn target_of(
    rule: Option<(usize, RuleAction)>,
    blocked: bool,
    all: Demand,
    own: Option<f64>,
) -> Target {
    if blocked {
        return Target::Deny;
    }
    match rule.map(|(_, a)| a) {
        None | Some(RuleAction::Allow) => Target::Allow,
        Some(RuleAction::Deny) => Target::Deny,
        Some(action @ RuleAction::Share { burst, .. }) => {
            let rate = action.rate_per_sec().unwrap_or(0.0);
            let mine = share::share(rate, all, own);
            let burst = if rate > 0.0 {
                burst as f64 * mine / rate
            } else {
                0.0
            };
            Target::Share { rate: mine, burst }
        }
    }
}

/// A global bucket as this node tracks it.
#[derive(Debug)]
pub(super) struct Bucket {
    pub domain: Arc<str>,
    pub id: Arc<BucketEntries>,
    /// The keyed hash of its `key_entry` value, if it has one.
    pub key_hash: Option<u64>,
    /// The index of the rule it matched, and what it says; `None`:
    /// ALLOW_ALL.
    pub rule: Option<(usize, RuleAction)>,
    /// Blocked by an operator until then (`u64::MAX`: until lifted).
    pub blocked_until: Option<Nanos>,
    /// The streams reporting it here.
    pub members: Members,
    /// What every other node reports of it.
    pub remote: Demand,
    /// The exchange round that last published its demand (with Redis; 0:
    /// never).
    pub published_round: u64,
    /// Whether this node's entry for it in Redis says it has reporters.
    pub published: bool,
}

impl Member {
    /// The rate its Envoy may be enforcing as a token bucket: the larger
    /// of what it was sent and what was queued for it.
    pub fn reserve(&self) -> f64 {
        let rate = |s: Option<Strategy>| match s {
            Some(Strategy::Bucket(f)) => f.rate(),
            _ => 0.0,
        };
        rate(self.held).max(rate(self.delivered))
    }
}

impl Bucket {
    /// This node's reporters, summed: those with open streams by demand,
    /// those whose streams closed (ghosts) by the rate they may still
    /// enforce.
    pub fn local(&self) -> Demand {
        let mut d = Demand::default();
        for m in self.members.values() {
            if m.ghost_until.is_some() {
                d.reserved += m.reserve();
            } else {
                d.add(m.demand);
            }
        }
        d
    }

    /// Whether its reporters share a rate (and so their demand counts
    /// across nodes).
    pub fn shared(&self) -> bool {
        self.blocked_until.is_none() && matches!(self.rule, Some((_, RuleAction::Share { .. })))
    }

    /// Every node's reporters.
    pub fn all(&self) -> Demand {
        self.local().plus(self.remote)
    }

    /// The rule's rate per second, for a share rule.
    pub fn rate(&self) -> Option<f64> {
        self.rule.and_then(|(_, a)| a.rate_per_sec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: f64, burst: f64) -> Target {
        Target::Share { rate, burst }
    }

    #[test]
    fn shares_are_sent_with_a_margin_and_again_only_past_it() {
        let tol = 0.1;
        let first = next(None, bucket(100.0, 200.0), tol);
        let Some(Strategy::Bucket(f)) = first else {
            panic!("{first:?}")
        };
        assert_eq!((f.rate(), f.max_tokens), (95.0, 190));
        // Wobbles send nothing; a fall below what is held does, a rise
        // only past the tolerance.
        assert_eq!(next(first, bucket(97.0, 200.0), tol), None);
        assert_eq!(next(first, bucket(104.0, 200.0), tol), None);
        assert!(next(first, bucket(94.9, 200.0), tol).is_some());
        assert!(next(first, bucket(100.0, 189.0), tol).is_some());
        assert!(next(first, bucket(111.0, 220.0), tol).is_some());
        assert_eq!(next(first, Target::Deny, tol), Some(Strategy::Deny));
        assert_eq!(next(Some(Strategy::Deny), Target::Deny, tol), None);
        // A change Envoy would not see (the interval only) is made one.
        let held = Fill {
            max_tokens: 1,
            tokens_per_fill: 117,
            fill_interval_secs: 2,
        };
        let want = Fill {
            fill_interval_secs: 5,
            ..held
        };
        assert_eq!(seen_by_envoy(held, want).tokens_per_fill, 116);
        let held = Fill {
            max_tokens: 50,
            ..held
        };
        let want = Fill {
            fill_interval_secs: 5,
            ..held
        };
        assert_eq!(seen_by_envoy(held, want).max_tokens, 49);
    }
}
