//! Envoy RLQS demand across nodes: every [`ROUND`], this node writes, for
//! each global bucket its Envoys report, their demand (measured sum,
//! reporters, fresh reporters) into the bucket's hash in Redis
//! (`<prefix>{<bucket>}q`, a field per node) and reads back the other
//! nodes' sums, in one pipelined round trip through `rlqs.lua`, so every
//! node divides the bucket's rate among every Envoy reporting it anywhere.
//!
//! A node that stops says so (its entries are deleted at shutdown); one
//! that dies is forgotten once its entries are [`STALE`] (the script
//! drops them). While Redis does not answer, each node keeps the other
//! nodes' last sums: shares stay as they were divided. Bucket names hold
//! only keyed hashes (a bucket id may carry an API key).

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

/// How old another node's entry may be before it no longer counts.
pub const STALE: Duration = Duration::from_secs(10);

/// How long a bucket's hash lives after its last write.
const TTL: Duration = Duration::from_secs(60);

/// How long the last round at shutdown may take.
const LAST_ROUND: Duration = Duration::from_secs(1);

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

    /// Exchanges every [`ROUND`] until `stop`; then withdraws this node's
    /// demand (bounded by [`LAST_ROUND`]).
    pub async fn run(mut self, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait() => break,
                _ = tick.tick() => {
                    let local = self.engine.rlqs_local_demands();
                    self.round(&local).await;
                }
            }
        }
        let mut gone = self.engine.rlqs_local_demands();
        for d in &mut gone {
            d.demand = Demand::default();
        }
        let _ = tokio::time::timeout(LAST_ROUND, self.round(&gone)).await;
    }

    /// One round trip: writes `local`, takes in the other nodes' sums.
    async fn round(&mut self, local: &[LocalDemand]) {
        if local.is_empty() {
            return;
        }
        let key = |i: usize| format!("{}{{{:016x}}}q", self.prefix, local[i].bucket);
        let node = &self.node;
        let args = |pipe: &mut redis::Pipeline, i: usize| {
            let d = local[i].demand;
            let measured = if d.measured.is_finite() {
                d.measured.max(0.0)
            } else {
                0.0
            };
            pipe.arg(1)
                .arg(key(i))
                .arg(node)
                .arg(format!("{measured:.3}"))
                .arg(d.reporters)
                .arg(d.fresh)
                .arg(STALE.as_millis() as u64)
                .arg(TTL.as_millis() as u64);
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
        }
        self.engine.rlqs_set_remote(&remote);
    }
}

/// `{ measured (text), reporters, fresh }`.
fn parse(v: &Value) -> Option<Demand> {
    let Value::Array(items) = v else { return None };
    let [measured, reporters, fresh] = items.as_slice() else {
        return None;
    };
    let measured = match measured {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<f64>().ok()?,
        Value::Int(n) => *n as f64,
        _ => return None,
    };
    let count = |v: &Value| match v {
        Value::Int(n) => u32::try_from(*n).ok(),
        _ => None,
    };
    Some(Demand {
        measured: if measured.is_finite() {
            measured.max(0.0)
        } else {
            0.0
        },
        reporters: count(reporters)?,
        fresh: count(fresh)?,
    })
}
