//! What happens to RLQS buckets between reports: a reload or an
//! operator's change (rules matched again, removed rules' buckets
//! abandoned, blocks turned to DENY_ALL and back), buckets without
//! traffic abandoned, other nodes' demand taken in; and what operators and
//! metrics read of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bucket::{Action, Bucket, Strategy};
use super::{Ctx, Engine, LocalDemand, State};
use crate::core::clock::{NANOS_PER_SEC, Nanos};
use crate::core::share::Demand;
use crate::engine::Rules;
use crate::limits::rlqs::BucketEntries;

/// How often buckets are looked at for idleness.
const IDLE_CHECK: Nanos = NANOS_PER_SEC;

/// A shared bucket is published (and the other nodes' sums read) again
/// after this many exchange rounds (of 500 ms) at most, changed or not,
/// while the round's budget allows (other nodes drop an entry only after
/// the assignments' time to live and 5 s, at least 15 s).
pub const REFRESH_ROUNDS: u64 = 2;

/// A bucket first reported on this node.
pub(super) fn new_bucket(
    engine: &Engine,
    ctx: &Ctx<'_>,
    domain: &Arc<str>,
    id: BucketEntries,
) -> Bucket {
    let key_hash = key_hash(engine, ctx, &id);
    let rule = ctx
        .settings
        .rules
        .find(domain, &id)
        .map(|(i, r)| (i, r.action));
    Bucket {
        domain: Arc::clone(domain),
        id: Arc::new(id),
        key_hash,
        rule,
        blocked_until: ctx.blocked(key_hash),
        members: Default::default(),
        remote: Demand::default(),
        published_round: 0,
        published: false,
    }
}

fn key_hash(engine: &Engine, ctx: &Ctx<'_>, id: &BucketEntries) -> Option<u64> {
    id.get(&ctx.settings.key_entry)
        .map(|k| engine.hasher().key_hash(k.as_bytes()))
}

/// After a reload or an operator's change (new rules in effect), or when
/// a block ends: every bucket looked at again. With a new config, each is
/// matched again (a bucket whose rule is gone is abandoned by every
/// stream); with only a new table (an operator's override) or a block's
/// end, only blocks are looked at. Whatever moved is pushed.
pub(super) fn follow_rules(engine: &Engine, ctx: &Ctx<'_>, st: &mut State, rules: Arc<Rules>) {
    let (table, config) = match &st.rules_seen {
        None => (true, true),
        Some(seen) => (
            !Arc::ptr_eq(seen, &rules),
            !Arc::ptr_eq(&seen.config, &rules.config),
        ),
    };
    let unblock = st.next_unblock.is_some_and(|t| t <= ctx.now);
    if !table && !unblock {
        return;
    }
    let old = st.rules_seen.replace(rules);
    let old_rules = old.as_ref().map(|r| &r.config.live.rlqs.rules);
    st.next_unblock = None;
    let all: Vec<u64> = st.buckets.keys().copied().collect();
    for h in all {
        let Some(b) = st.buckets.get_mut(&h) else {
            continue;
        };
        let was = (b.rule, b.blocked_until);
        if config {
            let gone = b.rule.is_some_and(|(i, _)| {
                old_rules
                    .and_then(|o| o.rule(&b.domain, i))
                    .is_some_and(|r| !ctx.settings.rules.has_matcher(&b.domain, r))
            });
            if gone {
                st.abandon(engine, h, |_| true, "rule_removed");
                continue;
            }
            b.rule = ctx
                .settings
                .rules
                .find(&b.domain, &b.id)
                .map(|(i, r)| (i, r.action));
            b.key_hash = key_hash(engine, ctx, &b.id);
        }
        b.blocked_until = ctx.blocked(b.key_hash);
        let now = (b.rule, b.blocked_until);
        let until = b.blocked_until;
        st.note_block(until);
        if now != was {
            st.mark(h);
            st.settle(engine, ctx, h, None);
        }
    }
}

impl State {
    /// Forgets the ghosts whose assignments have expired in their Envoys;
    /// their buckets' other members' shares follow at the next tick.
    pub(super) fn expire_ghosts(&mut self, ctx: &Ctx<'_>) {
        while let Some(&(until, h, stream)) = self.ghosts.first() {
            if until > ctx.now {
                return;
            }
            self.ghosts.pop_first();
            let still = self
                .buckets
                .get_mut(&h)
                .and_then(|b| b.members.get_mut(&stream))
                .is_some_and(|m| m.ghost_until == Some(until));
            if still {
                self.remove_member(h, stream);
            }
        }
    }

    /// Remembers when the earliest block with an end ends.
    pub(super) fn note_block(&mut self, until: Option<Nanos>) {
        if let Some(t) = until.filter(|t| *t != u64::MAX) {
            self.next_unblock = Some(self.next_unblock.map_or(t, |n| n.min(t)));
        }
    }

    /// Sends an abandon action for bucket `h` to each member `which`
    /// picks, and forgets them; the others' shares follow at the next
    /// tick.
    fn abandon(
        &mut self,
        engine: &Engine,
        h: u64,
        which: impl Fn(&super::Member) -> bool,
        reason: &'static str,
    ) {
        let Some(b) = self.buckets.get(&h) else {
            return;
        };
        let id = Arc::clone(&b.id);
        let leaving: Vec<u64> = b
            .members
            .iter()
            .filter(|(_, m)| which(m))
            .map(|(s, _)| *s)
            .collect();
        for s in leaving {
            if let Some(stream) = self.streams.get_mut(&s) {
                engine.metrics().rlqs_abandoned(reason);
                stream.buckets.remove(&h);
                stream.pending.insert(
                    h,
                    Action::Abandon {
                        id: Arc::clone(&id),
                    },
                );
                stream.wake.notify_one();
            }
            self.remove_member(h, s);
        }
    }
}

impl Engine {
    /// Between reports, every 100 ms or so: follows the rules in effect
    /// (see [`follow_rules`], run by every RLQS call), forgets expired
    /// ghosts and, once a second, abandons buckets a stream reported no
    /// traffic for in `rlqs.idle_abandon_after`.
    pub fn rlqs_tick(&self) {
        self.rlqs_ctx(|ctx, st| {
            st.expire_ghosts(ctx);
            st.settle_pending(self, ctx);
            if ctx.now.saturating_sub(st.idle_checked) < IDLE_CHECK {
                return;
            }
            st.idle_checked = ctx.now;
            let idle =
                u64::try_from(ctx.settings.idle_abandon_after.as_nanos()).unwrap_or(u64::MAX);
            let now = ctx.now;
            let all: Vec<u64> = st.buckets.keys().copied().collect();
            for h in all {
                // A ghost is not idle: its Envoy still enforces its share.
                let idle_member = |m: &super::Member| {
                    m.ghost_until.is_none() && now.saturating_sub(m.last_traffic) >= idle
                };
                st.abandon(self, h, idle_member, "idle");
            }
        });
    }

    /// Demand is exchanged with other nodes from now on (see
    /// [`Engine::rlqs_local_demands`]).
    pub fn rlqs_exchange(&self) {
        self.rlqs.lock().exchanging = true;
    }

    /// What to exchange with the other nodes in round `round` (the
    /// exchange's count, one every 500 ms): first the buckets whose local
    /// demand changed (an empty demand for one no longer shared here),
    /// oldest first, then the shared buckets published longest ago, if
    /// not in the last [`REFRESH_ROUNDS`] rounds, so other nodes' changes
    /// are read within a second or so. At most `max`, or three twentieths
    /// of the shared buckets if more (changes come about a tenth per round
    /// as Envoys report every 5 s); past that, refreshes wait their turn,
    /// oldest first, and every shared bucket is still written and read
    /// again within a few seconds. A round that failed gives its buckets
    /// back ([`Engine::rlqs_unsent`]).
    pub fn rlqs_local_demands(&self, max: usize, round: u64) -> Vec<LocalDemand> {
        let mut st = self.rlqs.lock();
        let st = &mut *st;
        let shared = st.buckets.values().filter(|b| b.shared()).count();
        let max = max.max(shared * 3 / 20);
        let mut out = Vec::new();
        while out.len() < max
            && let Some(h) = st.changed.pop_front()
        {
            st.queued.remove(&h);
            let demand = match st.buckets.get_mut(&h) {
                Some(b) if b.shared() => {
                    b.published_round = round;
                    b.published = true;
                    b.local()
                }
                Some(b) => {
                    b.published = false;
                    Demand::default()
                }
                None => Demand::default(),
            };
            out.push(LocalDemand { bucket: h, demand });
        }
        let mut stale: Vec<(u64, u64)> = st
            .buckets
            .iter()
            .filter(|(_, b)| {
                b.shared() && round.saturating_sub(b.published_round) >= REFRESH_ROUNDS
            })
            .map(|(&h, b)| (b.published_round, h))
            .collect();
        let room = max.saturating_sub(out.len()).min(stale.len());
        if room < stale.len() {
            stale.select_nth_unstable(room);
        }
        for &(_, h) in &stale[..room] {
            if let Some(b) = st.buckets.get_mut(&h) {
                b.published_round = round;
                b.published = true;
                out.push(LocalDemand {
                    bucket: h,
                    demand: b.local(),
                });
            }
        }
        out
    }

    /// Buckets a failed round did not publish: sent again next round.
    pub fn rlqs_unsent(&self, unsent: &[LocalDemand]) {
        let mut st = self.rlqs.lock();
        for d in unsent {
            if let Some(b) = st.buckets.get_mut(&d.bucket) {
                b.published_round = 0;
                // Unknown: Redis may or may not have it.
                b.published = true;
            }
            st.mark(d.bucket);
        }
    }

    /// What the other nodes report for shared buckets: their shares here
    /// follow.
    pub fn rlqs_set_remote(&self, remote: &[(u64, Demand)]) {
        self.rlqs_ctx(|ctx, st| {
            for &(h, demand) in remote {
                let Some(b) = st.buckets.get_mut(&h) else {
                    continue;
                };
                if b.remote != demand {
                    b.remote = demand;
                    st.settle(self, ctx, h, None);
                }
            }
        });
    }

    /// The buckets whose `rlqs.key_entry` is the key with hash
    /// `key_hash`: their rule, the global rate and demand, and each
    /// Envoy's share (this node's streams one by one, the other nodes'
    /// summed). The key's own value is shown as `<key>`.
    pub fn rlqs_usage(&self, key_hash: u64) -> Vec<BucketUsage> {
        self.rlqs_ctx(|ctx, st| {
            let mut out: Vec<BucketUsage> = st
                .buckets
                .values()
                .filter(|b| b.key_hash == Some(key_hash))
                .map(|b| usage(ctx, st, b))
                .collect();
            out.sort_by(|a, b| (&a.domain, &a.id).cmp(&(&b.domain, &b.id)));
            out
        })
    }

    /// Per rule with reporters here: this node's demand and the rate its
    /// Envoys hold (for metrics).
    pub fn rlqs_rule_stats(&self) -> Vec<RuleStats> {
        let st = self.rlqs.lock();
        let mut by_rule: BTreeMap<(Arc<str>, usize), RuleStats> = BTreeMap::new();
        for b in st.buckets.values() {
            let Some((i, _)) = b.rule else { continue };
            let s = by_rule
                .entry((Arc::clone(&b.domain), i))
                .or_insert_with(|| RuleStats {
                    domain: Arc::clone(&b.domain),
                    rule: i,
                    demand: 0.0,
                    assigned: 0.0,
                });
            for m in b.members.values() {
                if m.ghost_until.is_none() {
                    s.demand += m.demand.unwrap_or(0.0);
                }
                if let Some(Strategy::Bucket(f)) = m.held {
                    s.assigned += f.rate();
                }
            }
        }
        by_rule.into_values().collect()
    }
}

fn usage(ctx: &Ctx<'_>, st: &State, b: &Bucket) -> BucketUsage {
    let id = b.id.with_value(&ctx.settings.key_entry, "<key>");
    let shares = b
        .members
        .iter()
        .map(|(s, m)| ShareUsage {
            envoy: st.streams.get(s).map_or_else(
                || format!("stream {s}"),
                |x| format!("{} (stream {s})", x.peer),
            ),
            demand: m.demand,
            held: m.held,
        })
        .collect();
    let rule_action = b.rule.map(|(_, a)| a);
    let action = match rule_action {
        _ if b.blocked_until.is_some() => Strategy::Deny,
        Some(crate::limits::rlqs::RuleAction::Deny) => Strategy::Deny,
        Some(crate::limits::rlqs::RuleAction::Share { .. }) => {
            Strategy::Bucket(crate::core::share::token_bucket(0.0, 0.0))
        }
        Some(crate::limits::rlqs::RuleAction::Allow) | None => Strategy::Allow,
    }
    .kind();
    let (rate, burst) = match rule_action {
        Some(a @ crate::limits::rlqs::RuleAction::Share { burst, .. }) => {
            (a.rate_per_sec(), Some(burst))
        }
        _ => (None, None),
    };
    BucketUsage {
        domain: b.domain.to_string(),
        id,
        rule: b.rule.map(|(i, _)| {
            let text = ctx
                .settings
                .rules
                .rule(&b.domain, i)
                .map_or_else(String::new, |r| r.describe());
            (i, text)
        }),
        action,
        blocked: b.blocked_until.is_some(),
        rate,
        burst,
        all: b.local().plus(b.remote),
        remote: b.remote,
        shares,
    }
}

/// A bucket as `quotactl usage` shows it.
#[derive(Debug, Clone)]
pub struct BucketUsage {
    /// Its domain.
    pub domain: String,
    /// Its id, the key's value shown as `<key>`.
    pub id: BucketEntries,
    /// The rule it matched (index, description); `None`: ALLOW_ALL.
    pub rule: Option<(usize, String)>,
    /// What its Envoys hold: `token_bucket`, `deny_all` or `allow_all`.
    pub action: &'static str,
    /// Whether an operator blocks its key (DENY_ALL).
    pub blocked: bool,
    /// The global rate per second, for a share rule.
    pub rate: Option<f64>,
    /// The global burst, for a share rule.
    pub burst: Option<u64>,
    /// Every node's reporters.
    pub all: Demand,
    /// The other nodes' reporters.
    pub remote: Demand,
    /// This node's reporters.
    pub shares: Vec<ShareUsage>,
}

/// One Envoy's share of a bucket.
#[derive(Debug, Clone)]
pub struct ShareUsage {
    /// The Envoy: its address and stream.
    pub envoy: String,
    /// Its demand, requests per second (`None`: not measured yet).
    pub demand: Option<f64>,
    /// What it holds.
    pub held: Option<Strategy>,
}

/// One rule's reporters on this node.
#[derive(Debug, Clone)]
pub struct RuleStats {
    /// The rule's domain.
    pub domain: Arc<str>,
    /// Its index in the domain's list.
    pub rule: usize,
    /// The demand of its buckets' Envoys here, requests per second.
    pub demand: f64,
    /// The rate those Envoys hold, per second.
    pub assigned: f64,
}
