//! Envoy's Rate Limit Quota Service, the engine's side: every global
//! bucket the Envoys connected here report, who reports it, and the
//! assignment each should hold; one global rate divided among every
//! Envoy reporting a bucket, on this node and (through
//! [`crate::sync::rlqs`]) on every other.
//!
//! A stream [`Engine::rlqs_open`]s, reports ([`Engine::rlqs_report`],
//! answered at once for every bucket it reported) and is closed when its
//! [`RlqsStream`] drops. What changes for a stream between its reports (a
//! share moved because another Envoy's demand did, an operator's block, a
//! reload, an idle bucket abandoned) waits in the stream's queue, latest
//! per bucket, and wakes it.
//!
//! | file | owns |
//! | --- | --- |
//! | `bucket.rs` | one bucket: members, demand, each member's target |
//! | `upkeep.rs` | what happens between reports: reloads, blocks, idle buckets, other nodes' demand, usage |

mod bucket;
mod upkeep;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use nohash_hasher::BuildNoHashHasher;
use tokio::sync::Notify;

pub use bucket::{Action, Strategy};
use bucket::{Bucket, Member};
pub use upkeep::{BucketUsage, RuleStats, ShareUsage};

use super::Engine;
use crate::config::RlqsSettings;
use crate::core::clock::Nanos;
use crate::core::hash::{mix, name_id};
use crate::core::share::{self, Demand, rate_of};
use crate::limits::rlqs::BucketEntries;
use crate::limits::{Assigned, Source, Table};

type ById<V> = HashMap<u64, V, BuildNoHashHasher<u64>>;

/// One bucket's usage in a report, validated.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The bucket id.
    pub id: BucketEntries,
    /// Requests allowed since the last report.
    pub allowed: u64,
    /// Requests denied since the last report.
    pub denied: u64,
    /// What the Envoy says elapsed (0 on a bucket's first report; whole
    /// seconds after).
    pub elapsed: Nanos,
}

/// Why a stream is refused or ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RlqsError {
    /// `rlqs.max_streams` streams are open on this node.
    #[error(
        "this node serves rlqs.max_streams ({0}) RLQS streams already: try another node or later"
    )]
    TooManyStreams(usize),
    /// `rlqs.max_streams_per_connection` are open on the connection.
    #[error("this connection has rlqs.max_streams_per_connection ({0}) RLQS streams open already")]
    TooManyOnConnection(usize),
    /// The stream reported more buckets than `rlqs.max_buckets_per_stream`.
    #[error("the stream reports more than rlqs.max_buckets_per_stream ({0}) buckets")]
    TooManyBuckets(usize),
    /// The node tracks `rlqs.max_tracked` pairs and the stream holds more
    /// than its part.
    #[error(
        "this node tracks rlqs.max_tracked ({max}) Envoy buckets and this stream holds {held}, more than its fair part: it may report no new buckets"
    )]
    NodeFull {
        /// The cap.
        max: usize,
        /// The stream's buckets.
        held: usize,
    },
    /// A message named another domain than the stream's first.
    #[error(
        "domain: the stream's domain is '{was}', a message says '{now}' (one stream per domain)"
    )]
    DomainChanged {
        /// The stream's domain.
        was: String,
        /// The message's.
        now: String,
    },
}

/// The RLQS state of one node (see the module docs).
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    buckets: ById<Bucket>,
    streams: ById<Stream>,
    per_conn: HashMap<usize, usize>,
    next_id: u64,
    /// (stream, bucket) pairs.
    tracked: usize,
    /// With Redis: shared buckets whose local demand changed since they
    /// were last published, and buckets no longer shared here (published
    /// as empty once), oldest first; `queued` says which are in it.
    /// Without Redis, always empty.
    changed: VecDeque<u64>,
    queued: HashSet<u64, BuildNoHashHasher<u64>>,
    /// Whether demand is exchanged with other nodes.
    exchanging: bool,
    /// The rules the buckets were matched under (held, so a new one
    /// cannot come at the same address).
    rules_seen: Option<Arc<super::Rules>>,
    /// When the first block with an end ends.
    next_unblock: Option<Nanos>,
    /// Ghosts (members whose streams closed, holding a share until it
    /// expires in their Envoys) by when they expire: (until, bucket,
    /// stream). An entry whose member is gone or live again is skipped.
    ghosts: BTreeSet<(Nanos, u64, u64)>,
    /// Buckets a report changed whose other members are settled at the
    /// next tick.
    unsettled: HashSet<u64, BuildNoHashHasher<u64>>,
    /// When idle members were last looked for.
    idle_checked: Nanos,
}

#[derive(Debug)]
struct Stream {
    peer: String,
    conn: usize,
    domain: Option<Arc<str>>,
    buckets: HashSet<u64, BuildNoHashHasher<u64>>,
    pending: ById<Action>,
    wake: Arc<Notify>,
}

/// What a call needs from the rules in effect.
pub(super) struct Ctx<'a> {
    now: Nanos,
    settings: &'a RlqsSettings,
    table: &'a Table,
}

impl Ctx<'_> {
    fn tolerance(&self) -> f64 {
        f64::from(self.settings.share_tolerance_percent) / 100.0
    }

    fn ttl_secs(&self) -> u32 {
        u32::try_from(self.settings.assignment_ttl.as_secs()).unwrap_or(u32::MAX)
    }

    /// When an operator's block of `key_hash` ends (`u64::MAX`: when
    /// lifted), if it is blocked now. Only an override blocks here: a
    /// config without plans blocks every key from plan checks
    /// ([`crate::limits::NO_PLANS`]), which is no reason to deny RLQS
    /// buckets, whose rules are not plans.
    fn blocked(&self, key_hash: Option<u64>) -> Option<Nanos> {
        match self.table.assign(key_hash?, self.now) {
            (Assigned::Blocked { until }, Source::Override) => Some(until.unwrap_or(u64::MAX)),
            _ => None,
        }
    }
}

/// An open RLQS stream: its id and what wakes it. Closing it (dropping)
/// takes its buckets' shares back.
#[derive(Debug)]
pub struct RlqsStream {
    engine: Arc<Engine>,
    id: u64,
    wake: Arc<Notify>,
}

impl RlqsStream {
    /// Woken when actions wait for the stream.
    pub fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }

    /// Answers a report (see [`Engine::rlqs_report`]).
    pub fn report(&self, domain: &str, usages: Vec<Usage>) -> Result<Vec<Action>, RlqsError> {
        self.engine.rlqs_report(self.id, domain, usages)
    }

    /// The actions waiting for the stream, taken.
    /// The actions waiting for the stream, taken: from now on its Envoy
    /// holds what they say.
    pub fn take_pending(&self) -> Vec<Action> {
        let mut st = self.engine.rlqs.lock();
        let st = &mut *st;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Vec::new();
        };
        let taken: Vec<(u64, Action)> = s.pending.drain().collect();
        for (h, a) in &taken {
            if let Action::Assign { strategy, .. } = a
                && let Some(m) = st
                    .buckets
                    .get_mut(h)
                    .and_then(|b| b.members.get_mut(&self.id))
            {
                m.delivered = Some(*strategy);
            }
        }
        taken.into_iter().map(|(_, a)| a).collect()
    }
}

impl Drop for RlqsStream {
    fn drop(&mut self) {
        self.engine.rlqs_close(self.id);
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open streams and tracked (stream, bucket) pairs and global buckets.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.streams.len(), st.tracked, st.buckets.len())
    }
}

/// A bucket's hash: the domain and its entries, keyed.
fn bucket_hash(engine: &Engine, domain: &str, id: &BucketEntries) -> u64 {
    let h = engine.hasher().descriptor_hash(domain, id.iter());
    mix(h, name_id(&["rlqs"]))
}

impl Engine {
    /// The RLQS state.
    pub fn rlqs(&self) -> &Hub {
        &self.rlqs
    }

    fn rlqs_ctx<R>(&self, f: impl FnOnce(&Ctx<'_>, &mut State) -> R) -> R {
        let view = self.view();
        let ctx = Ctx {
            now: self.now(),
            settings: &view.live().rlqs,
            table: view.table(),
        };
        let mut st = self.rlqs.lock();
        upkeep::follow_rules(self, &ctx, &mut st, view.rules());
        f(&ctx, &mut st)
    }

    /// Opens a stream for a peer (`peer` names it in usage) on connection
    /// `conn`, within `rlqs.max_streams` and
    /// `rlqs.max_streams_per_connection`.
    pub fn rlqs_open(self: &Arc<Self>, peer: String, conn: usize) -> Result<RlqsStream, RlqsError> {
        let (max, per_conn) = {
            let view = self.view();
            let s = &view.live().rlqs;
            (s.max_streams, s.max_streams_per_connection)
        };
        let mut st = self.rlqs.lock();
        if st.streams.len() >= max {
            return Err(RlqsError::TooManyStreams(max));
        }
        let on_conn = st.per_conn.entry(conn).or_default();
        if *on_conn >= per_conn {
            return Err(RlqsError::TooManyOnConnection(per_conn));
        }
        *on_conn += 1;
        st.next_id += 1;
        let id = st.next_id;
        let wake = Arc::new(Notify::new());
        st.streams.insert(
            id,
            Stream {
                peer,
                conn,
                domain: None,
                buckets: HashSet::default(),
                pending: ById::default(),
                wake: Arc::clone(&wake),
            },
        );
        Ok(RlqsStream {
            engine: Arc::clone(self),
            id,
            wake,
        })
    }

    /// A stream's report: measures each bucket's demand (over this node's
    /// clock since the stream last reported it; over what the Envoy says
    /// elapsed for a bucket first seen with time elapsed), and answers
    /// each bucket with what the stream should hold: a new share when it
    /// moved past the tolerance (or at the bucket's first sighting on the
    /// stream), else the one it holds, extending its time to live. Shares
    /// of other streams that moved wait in their queues.
    pub fn rlqs_report(
        &self,
        stream: u64,
        domain: &str,
        usages: Vec<Usage>,
    ) -> Result<Vec<Action>, RlqsError> {
        self.rlqs_ctx(|ctx, st| {
            st.expire_ghosts(ctx);
            let domain = st.check_domain(stream, domain)?;
            let mut out = Vec::with_capacity(usages.len());
            for u in usages {
                let h = bucket_hash(self, &domain, &u.id);
                st.admit(ctx, stream, h)?;
                let action = st.note(self, ctx, stream, &domain, h, u);
                out.push(action);
            }
            Ok(out)
        })
    }

    /// Closes a stream: its buckets' shares go back to the others.
    fn rlqs_close(&self, stream: u64) {
        self.rlqs_ctx(|ctx, st| {
            let Some(s) = st.streams.remove(&stream) else {
                return;
            };
            if let Some(n) = st.per_conn.get_mut(&s.conn) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.per_conn.remove(&s.conn);
                }
            }
            for h in s.buckets {
                st.leave(ctx, stream, h);
            }
        });
    }
}

impl State {
    /// The stream's domain: set by its first message, the same in every
    /// other.
    fn check_domain(&mut self, stream: u64, domain: &str) -> Result<Arc<str>, RlqsError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(Arc::from(domain));
        };
        match &s.domain {
            Some(d) if &**d == domain => Ok(Arc::clone(d)),
            Some(d) => Err(RlqsError::DomainChanged {
                was: d.to_string(),
                now: domain.to_owned(),
            }),
            None => {
                let d: Arc<str> = Arc::from(domain);
                s.domain = Some(Arc::clone(&d));
                Ok(d)
            }
        }
    }

    /// Whether `stream` may report bucket `h` (always, if it did before).
    fn admit(&self, ctx: &Ctx<'_>, stream: u64, h: u64) -> Result<(), RlqsError> {
        let Some(s) = self.streams.get(&stream) else {
            return Ok(());
        };
        if s.buckets.contains(&h) {
            return Ok(());
        }
        let per_stream = ctx.settings.max_buckets_per_stream;
        if s.buckets.len() >= per_stream {
            return Err(RlqsError::TooManyBuckets(per_stream));
        }
        let max = ctx.settings.max_tracked;
        let fair = max / self.streams.len().max(1);
        // Past the cap only a stream under its fair part may add, and
        // never past twice the cap (closed streams' reserved shares count).
        if self.tracked >= max && (s.buckets.len() >= fair || self.tracked >= max.saturating_mul(2))
        {
            return Err(RlqsError::NodeFull {
                max,
                held: s.buckets.len(),
            });
        }
        Ok(())
    }

    /// Records one bucket's usage from `stream` and returns its answer.
    fn note(
        &mut self,
        engine: &Engine,
        ctx: &Ctx<'_>,
        stream: u64,
        domain: &Arc<str>,
        h: u64,
        u: Usage,
    ) -> Action {
        let requests = u.allowed.saturating_add(u.denied);
        if !self.buckets.contains_key(&h) {
            let b = upkeep::new_bucket(engine, ctx, domain, u.id);
            self.note_block(b.blocked_until);
            self.buckets.insert(h, b);
        }
        let Some(bucket) = self.buckets.get_mut(&h) else {
            return Action::Abandon {
                id: Arc::new(BucketEntries::default()),
            };
        };
        let id = Arc::clone(&bucket.id);
        let rate = bucket.rate();
        let first = !bucket.members.contains_key(&stream);
        let m = bucket.members.get_or_insert(
            stream,
            Member {
                demand: None,
                last_report: ctx.now,
                last_traffic: ctx.now,
                held: None,
                delivered: None,
                last_sent: ctx.now,
                ghost_until: None,
            },
        );
        let measured = if first {
            // A bucket seen first on this stream with time elapsed (a
            // reconnected Envoy) is measured over what it says.
            (u.elapsed >= share::MIN_MEASURED_NANOS).then(|| rate_of(requests, u.elapsed))
        } else {
            let since = ctx.now.saturating_sub(m.last_report);
            m.last_report = ctx.now;
            Some(rate_of(requests, since))
        };
        if let Some(d) = measured {
            m.demand = Some(rate.map_or(d, |r| share::capped(d, r)));
        }
        if requests > 0 {
            m.last_traffic = ctx.now;
        }
        if first {
            self.tracked += 1;
            if let Some(s) = self.streams.get_mut(&stream) {
                s.buckets.insert(h);
            }
        }
        self.mark(h);
        self.settle(engine, ctx, h, Some(stream))
            .unwrap_or(Action::Abandon { id })
    }

    /// Brings bucket `h`'s members with open streams to their targets
    /// (see [`bucket::next`]) and queues each new assignment for its
    /// stream. With `answering`, only that member is looked at and its
    /// action returned (a new one, or the one it holds, renewed); the
    /// others follow at the next tick ([`State::settle_pending`]): one
    /// pass over a bucket's members per tick however many of them report,
    /// rather than one per report.
    fn settle(
        &mut self,
        engine: &Engine,
        ctx: &Ctx<'_>,
        h: u64,
        answering: Option<u64>,
    ) -> Option<Action> {
        let bucket = self.buckets.get_mut(&h)?;
        let tolerance = ctx.tolerance();
        let ttl_secs = ctx.ttl_secs();
        let all = bucket.all();
        let (rule, blocked) = (bucket.rule, bucket.blocked_until.is_some());
        if let Some(s) = answering {
            let m = bucket.members.get_mut(&s)?;
            let target = bucket::target_of(rule, blocked, all, m.demand);
            let new = bucket::next(m.held, target, tolerance);
            let strategy = new.or(m.held)?;
            let rose = new.is_some_and(|n| bucket::rises(m.held, n));
            m.held = Some(strategy);
            m.delivered = Some(strategy);
            m.last_sent = ctx.now;
            engine
                .metrics()
                .rlqs_assigned(strategy.kind(), new.is_some());
            // The answer supersedes anything queued for the bucket.
            if let Some(stream) = self.streams.get_mut(&s) {
                stream.pending.remove(&h);
            }
            let answer = Action::Assign {
                id: Arc::clone(&bucket.id),
                strategy,
                ttl_secs,
            };
            if rose {
                // What the others give up for this rise goes out now.
                self.settle_others(engine, ctx, h, Some(s));
            } else {
                self.unsettled.insert(h);
            }
            return Some(answer);
        }
        self.settle_others(engine, ctx, h, None);
        None
    }

    /// Brings bucket `h`'s members with open streams but `except` to
    /// their targets and queues each new assignment for its stream.
    fn settle_others(&mut self, engine: &Engine, ctx: &Ctx<'_>, h: u64, except: Option<u64>) {
        let Some(bucket) = self.buckets.get_mut(&h) else {
            return;
        };
        let tolerance = ctx.tolerance();
        let ttl_secs = ctx.ttl_secs();
        let all = bucket.all();
        let (rule, blocked) = (bucket.rule, bucket.blocked_until.is_some());
        for (s, m) in bucket.members.iter_mut() {
            if m.ghost_until.is_some() || Some(s) == except {
                continue;
            }
            let target = bucket::target_of(rule, blocked, all, m.demand);
            let Some(strategy) = bucket::next(m.held, target, tolerance) else {
                continue;
            };
            m.held = Some(strategy);
            if let Some(stream) = self.streams.get_mut(&s) {
                m.last_sent = ctx.now;
                engine.metrics().rlqs_assigned(strategy.kind(), true);
                stream.pending.insert(
                    h,
                    Action::Assign {
                        id: Arc::clone(&bucket.id),
                        strategy,
                        ttl_secs,
                    },
                );
                stream.wake.notify_one();
            }
        }
    }

    /// Settles every bucket a report changed since the last tick.
    pub(super) fn settle_pending(&mut self, engine: &Engine, ctx: &Ctx<'_>) {
        let pending = std::mem::take(&mut self.unsettled);
        for h in pending {
            self.settle(engine, ctx, h, None);
        }
    }

    /// Takes `stream` out of bucket `h`, its stream closed: a member
    /// holding a share stays (while the node tracks fewer than
    /// `rlqs.max_tracked` pairs), the rate it holds reserved, until its
    /// assignment expires in the Envoy (a ghost, see [`upkeep`]); the
    /// others' shares follow at the next tick.
    fn leave(&mut self, ctx: &Ctx<'_>, stream: u64, h: u64) {
        let Some(bucket) = self.buckets.get_mut(&h) else {
            return;
        };
        let ttl = ctx.settings.assignment_ttl.as_nanos() as u64;
        let room = self.tracked < ctx.settings.max_tracked;
        let Some(m) = bucket.members.get_mut(&stream) else {
            return;
        };
        // What its Envoy enforces: what it was last sent (or what it was
        // about to be sent, if more).
        if room && m.reserve() > 0.0 {
            let until = m.last_sent.saturating_add(ttl);
            m.ghost_until = Some(until);
            self.ghosts.insert((until, h, stream));
            self.mark(h);
            return;
        }
        self.remove_member(h, stream);
    }

    /// Forgets `stream`'s member of bucket `h`: the exchange hears of it,
    /// and the others' shares follow at the next tick (the bucket goes
    /// with its last member).
    pub(super) fn remove_member(&mut self, h: u64, stream: u64) {
        let Some(bucket) = self.buckets.get_mut(&h) else {
            return;
        };
        if bucket.members.remove(&stream).is_none() {
            return;
        }
        let empty = bucket.members.is_empty();
        self.tracked = self.tracked.saturating_sub(1);
        self.mark(h);
        if empty {
            self.buckets.remove(&h);
        } else {
            self.unsettled.insert(h);
        }
    }

    /// Notes that bucket `h`'s local demand changed, for the exchange:
    /// only a shared bucket, or one this node published and must now say
    /// it no longer shares (call it before removing a bucket).
    fn mark(&mut self, h: u64) {
        if !self.exchanging
            || self
                .buckets
                .get(&h)
                .is_some_and(|b| !b.shared() && !b.published)
        {
            return;
        }
        if self.queued.insert(h) {
            self.changed.push_back(h);
        }
    }
}

/// This node's demand for one shared bucket, to publish.
#[derive(Debug, Clone, Copy)]
pub struct LocalDemand {
    /// The bucket's hash.
    pub bucket: u64,
    /// This node's reporters (empty: none left).
    pub demand: Demand,
}
