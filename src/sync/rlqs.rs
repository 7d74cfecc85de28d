//! Envoy RLQS demand across nodes: every [`ROUND`], this node writes, for
//! the global buckets its Envoys report (those whose demand changed, then
//! those published longest ago:
//! [`crate::engine::Engine::rlqs_local_demands`]),
//! their demand (measured sum, reporters, fresh reporters) into the
//! bucket's hash in Redis (`<prefix>{<bucket>}q`, a field per node) and
//! reads back the other nodes' sums, in one pipelined round trip through
//! `rlqs.lua`, so every node divides the bucket's rate among every Envoy
//! reporting it anywhere.
//!
//! A node's entries count until they are older than the assignment's
//! time to live plus [`STALE_SLACK`] (the script drops them then): its
//! Envoys enforce what they were given that long after it stops or
//! dies, whether or not they have reconnected elsewhere (counted there
//! too meanwhile). While Redis does not answer, each node keeps the other
//! nodes' last sums: shares stay as they were divided. Bucket names hold
//! only keyed hashes (a bucket id may carry an API key). The script reads
//! Redis's clock (`TIME`), so nodes' clocks need not agree; Redis 5 or
//! later.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::connection::{Lua, RedisConn};
use super::reply::Throttle;
use crate::config::redis_url::Scrub;
use crate::core::share::Demand;
use crate::engine::Engine;
use crate::engine::rlqs::LocalDemand;
use crate::shutdown::Shutdown;

/// The script.
const SCRIPT: &str = include_str!("rlqs.lua");

/// How often demand is exchanged.
pub const ROUND: Duration = Duration::from_millis(500);

/// How much longer than the assignments' time to live another node's
/// entry counts.
pub const STALE_SLACK: Duration = Duration::from_secs(5);

/// Buckets exchanged per round at least (more when a twentieth of the
/// shared buckets is more).
const PER_ROUND: usize = 2_000;

/// The exchange task's state.
pub struct DemandExchange {
    conn: RedisConn,
    engine: Arc<Engine>,
    prefix: String,
    node: String,
    script: Lua,
    log: Throttle,
    scrub: Scrub,
}

impl std::fmt::Debug for DemandExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemandExchange")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl DemandExchange {
    pub(crate) fn new(conn: RedisConn, engine: Arc<Engine>, prefix: String, scrub: Scrub) -> Self {
        engine.rlqs_exchange();
        Self {
            conn,
            engine,
            prefix,
            node: format!("{:016x}", rand::random::<u64>()),
            script: Lua::new(SCRIPT),
            log: Throttle::default(),
            scrub,
        }
    }

    /// Exchanges every [`ROUND`] until `stop`.
    pub async fn run(mut self, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = 0u64;
        loop {
            tokio::select! {
                _ = stop.wait() => return,
                _ = tick.tick() => {
                    round += 1;
                    let local = self.engine.rlqs_local_demands(PER_ROUND, round);
                    self.round(&local).await;
                }
            }
        }
    }

    /// One round trip: writes `local`, takes in the other nodes' sums.
    async fn round(&mut self, local: &[LocalDemand]) {
        if local.is_empty() {
            return;
        }
        let key = |i: usize| format!("{}{{{:016x}}}q", self.prefix, local[i].bucket);
        let node = &self.node;
        let ttl = self.engine.view().live().rlqs.assignment_ttl;
        let stale = (ttl + STALE_SLACK).as_millis() as u64;
        // The hash outlives its entries' staleness.
        let expire = stale * 2;
        let args = |pipe: &mut redis::Pipeline, i: usize| {
            let d = local[i].demand;
            pipe.arg(1)
                .arg(key(i))
                .arg(node)
                .arg(format!("{:.3}", finite(d.measured)))
                .arg(d.reporters)
                .arg(d.fresh)
                .arg(format!("{:.3}", finite(d.reserved)))
                .arg(stale)
                .arg(expire);
        };
        let replies: Vec<redis::RedisResult<Value>> = self
            .conn
            .eval_all(&self.script, local.len(), key, args)
            .await;
        let mut remote = Vec::with_capacity(local.len());
        let mut failed = false;
        for (d, reply) in local.iter().zip(replies) {
            match reply.map(|v| parse(&v)) {
                Ok(Some(sums)) => remote.push((d.bucket, sums)),
                Ok(None) => self.log.warn(
                    "RLQS demand: Redis's reply is not the script's",
                    &format_args!("bucket {:016x}", d.bucket),
                ),
                Err(e) => {
                    failed = true;
                    let text = self.scrub.text(&e.to_string());
                    self.log.warn("RLQS demand not exchanged with Redis", &text);
                }
            }
        }
        if failed {
            self.conn.reset();
            self.engine.rlqs_unsent(local);
        }
        self.engine.rlqs_set_remote(&remote);
    }
}

/// A non-negative finite number (0 for anything else).
fn finite(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// `{ measured (text), reporters, fresh, reserved (text) }`.
fn parse(v: &Value) -> Option<Demand> {
    let Value::Array(items) = v else { return None };
    let [measured, reporters, fresh, reserved] = items.as_slice() else {
        return None;
    };
    let number = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<f64>().ok(),
        Value::Int(n) => Some(*n as f64),
        _ => None,
    };
    let count = |v: &Value| match v {
        Value::Int(n) => u32::try_from(*n).ok(),
        _ => None,
    };
    Some(Demand {
        measured: finite(number(measured)?),
        reporters: count(reporters)?,
        fresh: count(fresh)?,
        reserved: finite(number(reserved)?),
    })
}
