//! Operators' changes across nodes: overrides and usage resets, kept in
//! Redis so every node enforces them, and a restarted node finds them.
//!
//! Redis holds, under the hash tag `{overrides}` (one Cluster slot):
//!
//! - `{prefix}{overrides}:data`, a hash of every override: field
//!   `o:<key hash>`, value `<version>|<JSON record>`
//!   ([`Override::to_json`]; the key itself is never stored);
//! - `{prefix}{overrides}:resets`, recent resets: field `r:<key hash>`,
//!   value `<version>|<time>` (pruned after [`RESET_LIFE`]);
//! - `{prefix}{overrides}:version`, a counter bumped by every change, and
//!   `{prefix}{overrides}:digest`, a SHA-1 chained over every change, so
//!   a history that reached the same version by other changes (a
//!   failover to a replica that lagged, a Redis that lost its data and
//!   was written again) is told apart;
//! - the channel `{prefix}{overrides}:changes`, where each change is
//!   announced as `<version>|<previous digest>|<digest>|<field>|<value>`
//!   (an empty value deletes).
//!
//! A change is one script (`overrides_write.lua`): record, version,
//! digest and announcement together. Every node's [`OverrideSync`] task
//! applies an announcement when it follows on from the history the node
//! has (the next version, and the digest it has as the previous one),
//! those already waiting in one table rebuild, and reads everything again
//! (`overrides_read.lua`, atomic) when one is missed or does not follow:
//! a gap, another history, a lost subscription, or a poll every [`POLL`]
//! finding Redis's version and digest different from its own (twice
//! running when Redis is ahead, so an announcement on its way is not
//! mistaken for a lost one). So a change reaches every node within
//! milliseconds, and a node that missed it heals within a second.
//! Subscribing runs beside the polls, so a Redis that is away delays
//! nothing else. At start a node waits (at most two seconds) to read
//! everything before it reports ready, and keeps trying after.
//!
//! The admin API writes through [`RedisOverrides`], then waits (bounded)
//! until its own node's task has applied that change: so a change is
//! applied on every node, the writer's too, in one order, and a reader of
//! the writer's node sees it once the call returns; if the node has not
//! applied it within [`APPLIED_WAIT`], the call says so.
//!
//! **Redis losing history.** A node that reads a version lower than its
//! own (Redis restarted without persistence) or its own version with
//! another digest (a failover to a replica that lagged) writes back the
//! overrides in force that Redis lacks (`overrides_restore.lua`: each a
//! versioned, announced change, made only if Redis still has what the
//! node read), then reads everything: Redis's records win, the nodes'
//! come back, so the cluster converges on the last state any node saw.
//! Until the write-back is made, the node keeps enforcing what it holds.
//!
//! A reply of another shape than the script's (see `reply.rs`) is a
//! failure: a write is unconfirmed (it may have been made), a read keeps
//! the overrides read last.
//!
//! Overrides that ended are ignored by every node on its own clock, and
//! pruned from Redis by the nodes that see them (compare-and-delete, so a
//! newer record under the same key is left alone).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::RedisError;
use tokio::sync::{Mutex, watch};

use super::SyncError;
use super::connection::{Lua, RedisConn, key};
use super::reply;
use crate::config::redis_url::Scrub;
use crate::core::Nanos;
use crate::core::hash::hex16;
use crate::limits::Override;
use crate::shutdown::Shutdown;
use crate::store::journal::CellKind;

const WRITE: &str = include_str!("overrides_write.lua");
const READ: &str = include_str!("overrides_read.lua");
const PRUNE: &str = include_str!("overrides_prune.lua");
const RESTORE: &str = include_str!("overrides_restore.lua");

/// One change of operators' state, as Redis announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An override set (or replaced).
    Set(Override),
    /// A key's override removed.
    Remove(u64),
    /// A key's usage reset.
    Reset(u64),
}

/// Where this node keeps the overrides in force (the control plane):
/// what the follower puts Redis's changes into.
pub trait OverrideStore: Send + Sync {
    /// Changes as Redis announced them, in order, in one rebuild.
    fn apply(&self, changes: &[Change]);
    /// Replaces every override (a node catching up with Redis).
    fn replace_all(&self, records: Vec<Override>);
    /// Drops overrides that ended by `now`; returns how many.
    fn expire(&self, now: Nanos) -> usize;
    /// Every override in force now (written back to a Redis that lost
    /// them).
    fn held(&self) -> Vec<Override>;
    /// The node's clock, now.
    fn now(&self) -> Nanos;
}

/// How often a node compares its version with Redis's.
pub const POLL: Duration = Duration::from_millis(250);
/// How long a reset is kept in Redis for nodes that missed its
/// announcement (ns).
pub const RESET_LIFE: Nanos = 10 * 60 * 1_000_000_000;
/// How often ended overrides and old resets are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(300);
/// How long subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a writer waits for its own node to apply its change.
pub const APPLIED_WAIT: Duration = Duration::from_secs(2);
/// How long after a failed subscription the next try waits.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// Announcements applied in one table rebuild, at most.
const BATCH: usize = 1_000;

/// The Redis names of operators' state.
#[derive(Debug, Clone)]
struct Keys {
    overrides: String,
    resets: String,
    version: String,
    digest: String,
    channel: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let tag = format!("{prefix}{{overrides}}");
        Keys {
            overrides: format!("{tag}:data"),
            resets: format!("{tag}:resets"),
            version: format!("{tag}:version"),
            digest: format!("{tag}:digest"),
            channel: format!("{tag}:changes"),
            prefix: prefix.to_owned(),
        }
    }
}

fn field(kind: char, key_hash: u64) -> String {
    format!("{kind}:{}", hex16(key_hash))
}

/// `o:<16 hex>` or `r:<16 hex>` → (kind, key hash).
fn parse_field(f: &str) -> Option<(char, u64)> {
    let (kind, hex) = f.split_once(':')?;
    let kind = match kind {
        "o" => 'o',
        "r" => 'r',
        _ => return None,
    };
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
        .map(|h| (kind, h))
}

/// `<version>|<value>` → (version, value).
fn split_version(stored: &str) -> Option<(u64, &str)> {
    let (v, rest) = stored.split_once('|')?;
    Some((v.parse().ok()?, rest))
}

/// The one reply of a one-command round trip.
fn only<T>(replies: Vec<redis::RedisResult<T>>) -> redis::RedisResult<T> {
    replies
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(RedisError::from((redis::ErrorKind::Io, "no reply"))))
}

/// Why a change could not be stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// `admin.max_overrides` overrides are stored already.
    #[error("{0}")]
    Full(String),
    /// Redis did not take it, or its answer was lost (then the change may
    /// have been made: read it back).
    #[error("redis did not confirm the change ({0}); check with a read and retry")]
    Unavailable(String),
    /// Redis stored it, every node will apply it, but this node had not
    /// within [`APPLIED_WAIT`] (its link to Redis is behind).
    #[error(
        "the change is stored in Redis but this node has not applied it yet (its Redis subscription is behind); other nodes apply it, this one will once it catches up"
    )]
    NotApplied,
}

impl WriteError {
    /// What Redis's error `e` means for the caller; its text (shown to
    /// admin API callers) has the URL's secrets taken out.
    fn redis(e: RedisError, scrub: &Scrub) -> Self {
        if e.code() == Some("QUOTAD_FULL") {
            let detail = e.detail().unwrap_or("overrides are at admin.max_overrides");
            return WriteError::Full(format!("too many overrides: {detail}; delete some first"));
        }
        WriteError::Unavailable(scrub.text(&e.to_string()))
    }
}

/// The admin API's writes to Redis.
pub struct RedisOverrides {
    conn: Mutex<RedisConn>,
    keys: Keys,
    write: Lua,
    /// What this node's [`OverrideSync`] has applied.
    applied: watch::Receiver<Applied>,
    /// Takes the URL's secrets out of Redis's errors.
    scrub: Scrub,
}

/// Where a node's follower stands: the history it has applied, and how
/// many times it applied something.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Applied {
    version: u64,
    digest: String,
    seq: u64,
}

impl std::fmt::Debug for RedisOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOverrides").finish_non_exhaustive()
    }
}

impl RedisOverrides {
    /// Runs the write script on `hash`, then waits until this node has
    /// applied the change; returns the old value.
    async fn versioned(
        &self,
        hash: &str,
        field: &str,
        value: &str,
        max: usize,
        now: Nanos,
    ) -> Result<Option<String>, WriteError> {
        let keys = &self.keys;
        let before = self.applied.borrow().seq;
        let reply = {
            let mut conn = self.conn.lock().await;
            let reply: redis::RedisResult<redis::Value> = only(
                conn.eval_all(
                    &self.write,
                    1,
                    |_| hash.to_owned(),
                    |pipe, _| {
                        pipe.arg(3)
                            .arg(hash)
                            .arg(&keys.version)
                            .arg(&keys.digest)
                            .arg(field)
                            .arg(value)
                            .arg(&keys.channel)
                            .arg(max)
                            .arg(now.to_string());
                    },
                )
                .await,
            );
            // A reply that is not the script's says nothing of whether
            // the change was made: unconfirmed, as a lost answer.
            let reply = reply.and_then(|v| reply::written(&v).map_err(RedisError::from));
            if matches!(&reply, Err(e) if e.code() != Some("QUOTAD_FULL")) {
                conn.reset();
            }
            reply.map_err(|e| WriteError::redis(e, &self.scrub))?
        };
        let (version, digest, old) = reply;
        if version > 0 {
            // Applied: this very state, or a later one reached since the
            // write (a follower on a stale history is beyond `version`
            // before it, and must first catch up).
            let mut applied = self.applied.clone();
            let wait = applied.wait_for(|a| {
                (a.version == version && a.digest == digest)
                    || (a.version > version && a.seq > before)
            });
            if tokio::time::timeout(APPLIED_WAIT, wait).await.is_err() {
                tracing::warn!(
                    version,
                    "overrides: this node has not applied its own change yet; it will once it catches up"
                );
                return Err(WriteError::NotApplied);
            }
        }
        Ok(old)
    }

    /// Stores `o` (at most `max` overrides in all, not counting those
    /// ended at `now`); returns the one it replaced.
    pub async fn set(
        &self,
        o: &Override,
        max: usize,
        now: Nanos,
    ) -> Result<Option<Override>, WriteError> {
        let f = field('o', o.key_hash);
        let old = self
            .versioned(&self.keys.overrides, &f, &o.to_json(), max, now)
            .await?;
        Ok(old.and_then(|v| decode(o.key_hash, &v)))
    }

    /// Deletes `key_hash`'s override; returns it (`None`: there was none).
    pub async fn delete(&self, key_hash: u64, now: Nanos) -> Result<Option<Override>, WriteError> {
        let f = field('o', key_hash);
        let old = self.versioned(&self.keys.overrides, &f, "", 0, now).await?;
        Ok(old.and_then(|v| decode(key_hash, &v)))
    }

    /// Deletes the Redis state of `cells` (the key's cells, from
    /// [`crate::engine::Engine::cells_of`]), then announces the reset, so
    /// every node, this one included, drops its own copy. Should the
    /// announcement fail after the cells went, nodes keep (and enforce)
    /// what they counted until a retry announces it.
    pub async fn reset(
        &self,
        key_hash: u64,
        cells: &[(u64, CellKind)],
        now: Nanos,
    ) -> Result<(), WriteError> {
        let names: Vec<String> = cells
            .iter()
            .map(|(id, kind)| key(&self.keys.prefix, key_hash, *kind == CellKind::Bucket, *id))
            .collect();
        if !names.is_empty() {
            let mut conn = self.conn.lock().await;
            let replies: Vec<redis::RedisResult<i64>> = conn
                .pipelines(
                    names.len(),
                    |i| names[i].clone(),
                    |pipe, i| {
                        pipe.cmd("DEL").arg(&names[i]);
                    },
                )
                .await;
            if let Some(Err(e)) = replies.into_iter().find(Result::is_err) {
                conn.reset();
                return Err(WriteError::redis(e, &self.scrub));
            }
        }
        let f = field('r', key_hash);
        self.versioned(&self.keys.resets, &f, &now.to_string(), 0, now)
            .await?;
        Ok(())
    }
}

/// A stored override value (`<version>|<json>`) as a record; invalid ones
/// are logged and skipped.
fn decode(key_hash: u64, stored: &str) -> Option<Override> {
    let json = split_version(stored).map_or(stored, |(_, j)| j);
    match Override::from_json(key_hash, json) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(key = %hex16(key_hash), error = %e, "invalid override in Redis; ignored");
            None
        }
    }
}

/// Everything Redis holds for operators, as read at once.
struct Snapshot {
    version: u64,
    digest: String,
    overrides: Vec<String>,
    resets: Vec<String>,
}

/// Every node's task: applies announced changes, heals missed ones.
pub struct OverrideSync {
    conn: RedisConn,
    keys: Keys,
    read: Lua,
    prune: Lua,
    restore: Lua,
    store: Arc<dyn OverrideStore>,
    /// The version and digest of Redis's history this node has applied.
    version: u64,
    digest: String,
    applied: watch::Sender<Applied>,
    /// Redis's version at the last poll, when it was ahead of this node's.
    ahead: Option<u64>,
    /// Whether the last read or poll reached Redis (for logging changes).
    reachable: Option<bool>,
    /// Takes the URL's secrets out of Redis's errors.
    scrub: Scrub,
}

impl std::fmt::Debug for OverrideSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverrideSync")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The writer and the follower of one node, sharing the version the
/// follower has applied.
pub(super) fn pair(
    writer: RedisConn,
    follower: RedisConn,
    prefix: &str,
    store: Arc<dyn OverrideStore>,
    scrub: Scrub,
) -> (RedisOverrides, OverrideSync) {
    let (applied, applied_rx) = watch::channel(Applied::default());
    let keys = Keys::new(prefix);
    (
        RedisOverrides {
            conn: Mutex::new(writer),
            keys: keys.clone(),
            write: Lua::new(WRITE),
            applied: applied_rx,
            scrub: scrub.clone(),
        },
        OverrideSync {
            conn: follower,
            keys,
            read: Lua::new(READ),
            prune: Lua::new(PRUNE),
            restore: Lua::new(RESTORE),
            store,
            version: 0,
            digest: String::new(),
            applied,
            ahead: None,
            reachable: None,
            scrub,
        },
    )
}

impl OverrideSync {
    /// Reads the overrides hash, the resets hash, the version and the
    /// digest at once.
    async fn read_all(&mut self) -> Result<Snapshot, RedisError> {
        let keys = &self.keys;
        let reply: redis::RedisResult<redis::Value> = only(
            self.conn
                .eval_all(
                    &self.read,
                    1,
                    |_| keys.overrides.clone(),
                    |pipe, _| {
                        pipe.arg(4)
                            .arg(&keys.overrides)
                            .arg(&keys.resets)
                            .arg(&keys.version)
                            .arg(&keys.digest);
                    },
                )
                .await,
        );
        // A reply that is not the script's is a failure: the overrides
        // last read stay in force.
        let reply = reply.and_then(|v| reply::read_all(&v).map_err(RedisError::from));
        match reply {
            Ok((version, digest, overrides, resets)) => Ok(Snapshot {
                version,
                digest,
                overrides,
                resets,
            }),
            Err(e) => {
                self.conn.reset();
                self.note_reachable(Err(&e));
                Err(e)
            }
        }
    }

    /// Reads every override and recent reset from Redis and puts them in
    /// effect; resets newer than this node's version are applied (a node
    /// that starts has nothing to reset). Returns how many overrides
    /// there are.
    pub async fn resync(&mut self) -> Result<usize, SyncError> {
        let mut snap = self.read_all().await?;
        if self.lost(&snap) {
            // Until the write-back is made, this node keeps enforcing
            // what it holds rather than Redis's loss.
            self.write_back(&snap).await?;
            snap = self.read_all().await?;
        }
        let records: Vec<Override> = pairs(&snap.overrides)
            .filter_map(|(f, v)| match parse_field(f) {
                Some(('o', h)) => decode(h, v),
                _ => None,
            })
            .collect();
        let count = records.len();
        self.store.replace_all(records);
        if self.version > 0 {
            let resets: Vec<Change> = pairs(&snap.resets)
                .filter_map(|(f, v)| match (parse_field(f), split_version(v)) {
                    (Some(('r', h)), Some((written, _))) if written > self.version => {
                        Some(Change::Reset(h))
                    }
                    _ => None,
                })
                .collect();
            self.store.apply(&resets);
        }
        if snap.version < self.version {
            tracing::warn!(
                overrides = count,
                was = self.version,
                version = snap.version,
                "overrides: Redis's overrides version went back, so changes made before it may be lost; now in force: what Redis holds. Check that Redis persists (appendonly yes) and that replicas are in sync, then check the overrides with `quotactl override ls`"
            );
        } else if (snap.version, &snap.digest) != (self.version, &self.digest) {
            tracing::info!(
                overrides = count,
                version = snap.version,
                "overrides: read every override from Redis"
            );
        }
        self.version = snap.version;
        self.digest = snap.digest;
        self.ahead = None;
        self.publish_applied();
        self.note_reachable(Ok(()));
        Ok(count)
    }

    /// Whether Redis lost history this node applied: its version went
    /// back (Redis restarted without persistence), or it is this node's
    /// with another digest (a failover to a replica that lagged and was
    /// written to since).
    fn lost(&self, snap: &Snapshot) -> bool {
        self.version > 0
            && (snap.version < self.version
                || (snap.version == self.version && snap.digest != self.digest))
    }

    /// Writes back to Redis the overrides this node holds that Redis does
    /// not have, so the cluster converges on the last state a node saw
    /// rather than on an empty Redis: each as a change of its own
    /// (`overrides_restore.lua`), which every node then applies. What
    /// Redis has is kept (an operator's change after the loss wins). Only
    /// when Redis still has the version and digest read in `snap`: if
    /// another node wrote back first, this one reads its result.
    async fn write_back(&mut self, snap: &Snapshot) -> Result<(), SyncError> {
        let now = self.store.now();
        let held: Vec<(String, String)> = self
            .store
            .held()
            .into_iter()
            .filter(|o| o.active(now))
            .map(|o| (field('o', o.key_hash), o.to_json()))
            .collect();
        tracing::warn!(
            was = self.version,
            now = snap.version,
            held = held.len(),
            "overrides: Redis lost changes this node applied (its version went back: restarted without persistence, or failed over to a replica that lagged); writing back the overrides this node holds. Check Redis's persistence (appendonly) and replication"
        );
        if held.is_empty() {
            return Ok(());
        }
        let keys = &self.keys;
        let reply: redis::RedisResult<redis::Value> = only(
            self.conn
                .eval_all(
                    &self.restore,
                    1,
                    |_| keys.overrides.clone(),
                    |pipe, _| {
                        pipe.arg(3)
                            .arg(&keys.overrides)
                            .arg(&keys.version)
                            .arg(&keys.digest)
                            .arg(&keys.channel)
                            .arg(snap.version)
                            .arg(&snap.digest);
                        for (f, v) in &held {
                            pipe.arg(f).arg(v);
                        }
                    },
                )
                .await,
        );
        match reply.and_then(|v| reply::restored(&v).map_err(RedisError::from)) {
            Ok(Some(n)) => {
                tracing::warn!(
                    written = n,
                    "overrides: wrote back to Redis the overrides it had lost"
                );
                Ok(())
            }
            Ok(None) => {
                tracing::info!(
                    "overrides: Redis changed meanwhile (another node wrote back first, or an operator made a change); reading it"
                );
                Ok(())
            }
            Err(e) => {
                self.conn.reset();
                tracing::warn!(
                    error = %self.scrub.text(&e.to_string()),
                    "overrides: writing back to Redis failed; enforcing the overrides held, trying again at the next poll"
                );
                Err(SyncError::Redis(e))
            }
        }
    }

    fn publish_applied(&self) {
        self.applied.send_modify(|a| {
            a.version = self.version;
            a.digest.clone_from(&self.digest);
            a.seq += 1;
        });
    }

    /// Applies announcements that follow on from this node's history, in
    /// order, in one rebuild; one that does not (a gap, another history)
    /// reads everything.
    async fn announced(&mut self, payloads: &[String]) {
        let mut changes = Vec::new();
        let mut lost = false;
        for payload in payloads {
            let mut parts = payload.splitn(5, '|');
            let (Some(v), Some(previous), Some(digest), Some(f), Some(value)) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                tracing::warn!("overrides: malformed announcement ignored");
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            if v != self.version + 1 || previous != self.digest {
                // Old news, unless it is the version this node has with
                // another digest; anything else is a gap or another
                // history.
                let old = v < self.version || (v == self.version && digest == self.digest);
                if !old {
                    lost = true;
                    break;
                }
                continue;
            }
            match parse_field(f) {
                Some(('o', h)) if value.is_empty() => changes.push(Change::Remove(h)),
                // A record this node cannot read counts as none, as a
                // full read counts it.
                Some(('o', h)) => {
                    changes.push(decode(h, value).map_or(Change::Remove(h), Change::Set))
                }
                Some((_, h)) => changes.push(Change::Reset(h)),
                None => tracing::warn!(field = f, "overrides: unknown field announced; ignored"),
            }
            self.version = v;
            digest.clone_into(&mut self.digest);
        }
        self.store.apply(&changes);
        self.publish_applied();
        if lost {
            let _ = self.resync().await;
        }
    }

    /// Compares this node's version and digest with Redis's; reads
    /// everything when they differ (when Redis is merely ahead, only if
    /// it still is at the next poll: the announcement may be on its way).
    async fn poll(&mut self) {
        let keys = &self.keys;
        let reply: redis::RedisResult<redis::Value> = only(
            self.conn
                .pipelines(
                    1,
                    |_| keys.version.clone(),
                    |pipe, _| {
                        pipe.cmd("MGET").arg(&keys.version).arg(&keys.digest);
                    },
                )
                .await,
        );
        let reply = reply.and_then(|v| reply::version(&v).map_err(RedisError::from));
        match reply {
            Ok((version, digest)) => {
                self.note_reachable(Ok(()));
                if (version, &digest) == (self.version, &self.digest) {
                    self.ahead = None;
                    return;
                }
                // Redis ahead: fine if this node caught up with what Redis
                // had at the last poll (announcements are flowing). Behind,
                // or the same version with another digest: another history.
                if version > self.version && self.ahead.is_none_or(|seen| self.version >= seen) {
                    self.ahead = Some(version);
                    return;
                }
                let _ = self.resync().await;
            }
            Err(e) => {
                self.conn.reset();
                self.note_reachable(Err(&e));
            }
        }
    }

    /// Deletes ended overrides and old resets from Redis, and ended
    /// overrides from this node.
    async fn prune(&mut self) {
        let now = self.store.now();
        self.store.expire(now);
        let Ok(snap) = self.read_all().await else {
            return;
        };
        let ended: Vec<(&str, &str)> = pairs(&snap.overrides)
            .filter(|(f, v)| match parse_field(f) {
                Some((_, h)) => decode(h, v).is_some_and(|o| !o.active(now)),
                None => false,
            })
            .collect();
        let old: Vec<(&str, &str)> = pairs(&snap.resets)
            .filter(|(_, v)| {
                split_version(v)
                    .and_then(|(_, at)| at.parse::<Nanos>().ok())
                    .is_some_and(|at| at.saturating_add(RESET_LIFE) < now)
            })
            .collect();
        for (hash, doomed) in [(&self.keys.overrides, ended), (&self.keys.resets, old)] {
            if doomed.is_empty() {
                continue;
            }
            let deleted: redis::RedisResult<redis::Value> = only(
                self.conn
                    .eval_all(
                        &self.prune,
                        1,
                        |_| hash.clone(),
                        |pipe, _| {
                            pipe.arg(1).arg(hash);
                            for (f, v) in &doomed {
                                pipe.arg(*f).arg(*v);
                            }
                        },
                    )
                    .await,
            );
            match deleted.and_then(|v| reply::pruned(&v).map_err(RedisError::from)) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(records = n, hash = %hash, "overrides: pruned ended records from Redis")
                }
                // Pruning is tried again in a few minutes.
                Err(e) => tracing::debug!(error = %e, "overrides: pruning failed"),
            }
        }
    }

    fn note_reachable(&mut self, result: Result<(), &RedisError>) {
        let now = result.is_ok();
        if self.reachable != Some(now) {
            match result {
                Ok(()) => tracing::info!(version = self.version, "overrides: in sync with Redis"),
                Err(e) => tracing::warn!(
                    error = %self.scrub.text(&e.to_string()),
                    "overrides: cannot reach Redis; enforcing the overrides last read, retrying"
                ),
            }
        }
        self.reachable = Some(now);
    }

    /// Follows Redis until `stop` fires: subscribes (again after a lost
    /// subscription, reading everything then), applies announcements,
    /// polls the version every [`POLL`], prunes every few minutes.
    pub async fn run(mut self, mut stop: Shutdown) {
        type Subscribing = std::pin::Pin<
            Box<dyn Future<Output = redis::RedisResult<redis::aio::PubSubStream>> + Send>,
        >;
        let mut changes: Option<redis::aio::PubSubStream> = None;
        let mut subscribing: Option<Subscribing> = None;
        let mut retry = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let idle = changes.is_none() && subscribing.is_none();
            tokio::select! {
                _ = stop.wait() => return,
                _ = &mut retry, if idle => {
                    let conn = self.conn.clone();
                    let channel = self.keys.channel.clone();
                    subscribing = Some(Box::pin(async move {
                        conn.subscribe(&channel, SUBSCRIBE_TIMEOUT).await
                    }));
                }
                subscribed = async {
                    match subscribing.as_mut() {
                        Some(s) => s.await,
                        None => std::future::pending().await,
                    }
                } => {
                    subscribing = None;
                    match subscribed {
                        Ok(s) => {
                            changes = Some(s);
                            // Announcements made while unsubscribed are
                            // lost: catch up by reading everything.
                            let _ = self.resync().await;
                        }
                        Err(e) => {
                            tracing::debug!(
                                error = %self.scrub.text(&e.to_string()),
                                "overrides: cannot subscribe yet"
                            );
                            retry = Box::pin(tokio::time::sleep(RESUBSCRIBE));
                        }
                    }
                }
                msg = next(&mut changes) => match msg {
                    Some(first) => {
                        // Take every announcement already here: one rebuild
                        // for all of them.
                        let mut payloads = vec![first];
                        while payloads.len() < BATCH {
                            match changes.as_mut().and_then(|s| s.next().now_or_never()) {
                                Some(Some(m)) => payloads.push(m),
                                Some(None) => {
                                    changes = None;
                                    break;
                                }
                                None => break,
                            }
                        }
                        let payloads: Vec<String> = payloads
                            .iter()
                            .filter_map(|m| m.get_payload::<String>().ok())
                            .collect();
                        self.announced(&payloads).await;
                    }
                    None => {
                        tracing::debug!("overrides: subscription ended; subscribing again");
                        changes = None;
                        retry = Box::pin(tokio::time::sleep(Duration::ZERO));
                    }
                },
                _ = poll.tick() => self.poll().await,
                _ = prune.tick() => self.prune().await,
            }
        }
    }
}

/// The next announcement, or never without a subscription.
async fn next(changes: &mut Option<redis::aio::PubSubStream>) -> Option<redis::Msg> {
    match changes {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// A flat `HGETALL` reply as (field, value) pairs.
fn pairs(flat: &[String]) -> impl Iterator<Item = (&str, &str)> {
    flat.chunks_exact(2).map(|c| (c[0].as_str(), c[1].as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_one_cluster_slot_and_fields_round_trip() {
        let k = Keys::new("quotad:");
        assert_eq!(k.overrides, "quotad:{overrides}:data");
        assert_eq!(k.channel, "quotad:{overrides}:changes");
        for name in [&k.resets, &k.version, &k.digest] {
            assert_eq!(
                redis::cluster_routing::Slot::for_key(name),
                redis::cluster_routing::Slot::for_key(&k.overrides)
            );
        }
        let f = field('o', 0xabc);
        assert_eq!(f, "o:0000000000000abc");
        assert_eq!(parse_field(&f), Some(('o', 0xabc)));
        assert_eq!(parse_field("x:0000000000000abc"), None);
        assert_eq!(parse_field("o:abc"), None);
        assert_eq!(
            split_version("12|{\"a\":\"b|c\"}"),
            Some((12, "{\"a\":\"b|c\"}"))
        );
    }
}
