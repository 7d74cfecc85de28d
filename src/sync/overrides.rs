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
//! - `{prefix}{overrides}:version`, a counter bumped by every change;
//! - the channel `{prefix}{overrides}:changes`, where each change is
//!   announced as `<version>|<field>|<value>` (an empty value deletes).
//!
//! A change is one script (`overrides_write.lua`): record, version and
//! announcement together. The admin API writes through
//! [`RedisOverrides`], then applies the change to its own node at once;
//! every node's [`OverrideSync`] task applies announcements in version
//! order, and when one is missed (a gap in versions, a dropped
//! subscription) or every [`POLL`] finds Redis's version different from
//! its own, reads everything again (`overrides_read.lua`, atomic). So a
//! change reaches every node within milliseconds, and a node that missed
//! it heals within [`POLL`] plus a read. At start a node reads everything
//! before it reports ready (bounded; it retries in the background when
//! Redis is down).
//!
//! Overrides that ended are ignored by every node on its own clock, and
//! pruned from Redis by any node that sees them (compare-and-delete, so a
//! newer record under the same key is left alone).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisError;
use tokio::sync::Mutex;

use super::SyncError;
use super::conn::{Conn, Lua, key};
use crate::control::Control;
use crate::core::Nanos;
use crate::limits::Override;
use crate::shutdown::Shutdown;
use crate::store::journal::CellKind;

const WRITE: &str = include_str!("overrides_write.lua");
const READ: &str = include_str!("overrides_read.lua");
const PRUNE: &str = include_str!("overrides_prune.lua");

/// How often a node compares its version with Redis's.
pub const POLL: Duration = Duration::from_millis(500);
/// How long a reset is kept in Redis for nodes that missed its
/// announcement (ns).
pub const RESET_LIFE: Nanos = 10 * 60 * 1_000_000_000;
/// How often ended overrides and old resets are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis names of operators' state.
#[derive(Debug, Clone)]
struct Keys {
    overrides: String,
    resets: String,
    version: String,
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
            channel: format!("{tag}:changes"),
            prefix: prefix.to_owned(),
        }
    }
}

fn field(kind: char, key_hash: u64) -> String {
    format!("{kind}:{key_hash:016x}")
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

/// Why a change could not be stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// `admin.max_overrides` overrides are stored already.
    #[error("{0}")]
    Full(String),
    /// Redis did not take it.
    #[error("redis did not store the change ({0}); nothing changed, retry")]
    Unavailable(String),
}

impl From<RedisError> for WriteError {
    fn from(e: RedisError) -> Self {
        if e.code() == Some("QUOTAD_FULL") {
            let detail = e.detail().unwrap_or("overrides are at admin.max_overrides");
            return WriteError::Full(format!("too many overrides: {detail}; delete some first"));
        }
        WriteError::Unavailable(e.to_string())
    }
}

/// The admin API's writes to Redis.
pub struct RedisOverrides {
    conn: Mutex<Conn>,
    keys: Keys,
    write: Lua,
}

impl std::fmt::Debug for RedisOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOverrides").finish_non_exhaustive()
    }
}

impl RedisOverrides {
    pub(super) fn new(conn: Conn, prefix: &str) -> Self {
        Self {
            conn: Mutex::new(conn),
            keys: Keys::new(prefix),
            write: Lua::new(WRITE),
        }
    }

    /// Runs the write script on `hash`; returns (version, old value).
    async fn versioned(
        &self,
        hash: &str,
        field: &str,
        value: &str,
        max: usize,
    ) -> Result<(u64, Option<String>), WriteError> {
        let keys = &self.keys;
        let mut conn = self.conn.lock().await;
        let replies: Vec<redis::RedisResult<(u64, Option<String>)>> = conn
            .eval_all(
                &self.write,
                1,
                |_| hash.to_owned(),
                |pipe, _| {
                    pipe.arg(2)
                        .arg(hash)
                        .arg(&keys.version)
                        .arg(field)
                        .arg(value)
                        .arg(&keys.channel)
                        .arg(max);
                },
            )
            .await;
        let reply = replies
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(RedisError::from((redis::ErrorKind::Io, "no reply"))));
        if let Err(e) = &reply
            && e.code() != Some("QUOTAD_FULL")
        {
            conn.reset();
        }
        Ok(reply?)
    }

    /// Stores `o` (at most `max` overrides in all); returns the one it
    /// replaced.
    pub async fn set(&self, o: &Override, max: usize) -> Result<Option<Override>, WriteError> {
        let f = field('o', o.key_hash);
        let (_, old) = self
            .versioned(&self.keys.overrides, &f, &o.to_json(), max)
            .await?;
        Ok(old.and_then(|v| decode(o.key_hash, &v)))
    }

    /// Deletes `key_hash`'s override; returns it (`None`: there was none).
    pub async fn delete(&self, key_hash: u64) -> Result<Option<Override>, WriteError> {
        let f = field('o', key_hash);
        let (_, old) = self.versioned(&self.keys.overrides, &f, "", 0).await?;
        Ok(old.and_then(|v| decode(key_hash, &v)))
    }

    /// Deletes the Redis state of `cells` (the key's cells, from
    /// [`crate::core::Limiter::cells_of`]) and announces the reset, so
    /// every node drops its own copy.
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
                return Err(e.into());
            }
        }
        let f = field('r', key_hash);
        self.versioned(&self.keys.resets, &f, &now.to_string(), 0)
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
            tracing::warn!(key = format_args!("{key_hash:016x}"), error = %e, "invalid override in Redis; ignored");
            None
        }
    }
}

/// Every node's task: applies announced changes, heals missed ones.
pub struct OverrideSync {
    conn: Conn,
    keys: Keys,
    read: Lua,
    prune: Lua,
    control: Arc<Control>,
    /// The version of Redis's state this node has applied.
    version: u64,
    /// Whether the last read or poll reached Redis (for logging changes).
    reachable: Option<bool>,
}

impl std::fmt::Debug for OverrideSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverrideSync")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl OverrideSync {
    pub(super) fn new(conn: Conn, prefix: &str, control: Arc<Control>) -> Self {
        Self {
            conn,
            keys: Keys::new(prefix),
            read: Lua::new(READ),
            prune: Lua::new(PRUNE),
            control,
            version: 0,
            reachable: None,
        }
    }

    /// The version of Redis's state this node has applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Reads every override and recent reset from Redis and puts them in
    /// effect; resets newer than this node's version are applied.
    /// Returns how many overrides there are.
    pub async fn resync(&mut self) -> Result<usize, SyncError> {
        let keys = &self.keys;
        type Snapshot = (u64, Vec<String>, Vec<String>);
        let replies: Vec<redis::RedisResult<Snapshot>> = self
            .conn
            .eval_all(
                &self.read,
                1,
                |_| keys.overrides.clone(),
                |pipe, _| {
                    pipe.arg(3)
                        .arg(&keys.overrides)
                        .arg(&keys.resets)
                        .arg(&keys.version);
                },
            )
            .await;
        let reply = replies
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(RedisError::from((redis::ErrorKind::Io, "no reply"))));
        let (version, data, resets) = match reply {
            Ok(r) => r,
            Err(e) => {
                self.conn.reset();
                self.note_reachable(Err(&e));
                return Err(e.into());
            }
        };
        let records: Vec<Override> = pairs(&data)
            .filter_map(|(f, v)| match parse_field(f) {
                Some(('o', h)) => decode(h, v),
                _ => None,
            })
            .collect();
        let count = records.len();
        self.control.replace_all(records);
        for (f, v) in pairs(&resets) {
            if let (Some(('r', h)), Some((written, _))) = (parse_field(f), split_version(v))
                && written > self.version
                && self.version > 0
            {
                self.control.reset(h);
            }
        }
        if version != self.version {
            tracing::info!(
                overrides = count,
                version,
                "overrides: read every override from Redis"
            );
        }
        self.version = version;
        self.note_reachable(Ok(()));
        Ok(count)
    }

    /// Applies one announcement; a gap in versions reads everything.
    async fn announced(&mut self, payload: &str) {
        let mut parts = payload.splitn(3, '|');
        let (Some(v), Some(f), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            tracing::warn!("overrides: malformed announcement ignored");
            return;
        };
        let Ok(v) = v.parse::<u64>() else { return };
        if v <= self.version {
            return;
        }
        if v != self.version + 1 {
            // Missed one (or Redis started over): read everything.
            let _ = self.resync().await;
            return;
        }
        match parse_field(f) {
            Some(('o', h)) if value.is_empty() => {
                self.control.remove(h);
            }
            Some(('o', h)) => {
                if let Some(o) = decode(h, value) {
                    self.control.apply(o);
                }
            }
            Some((_, h)) => {
                self.control.reset(h);
            }
            None => tracing::warn!(field = f, "overrides: unknown field announced; ignored"),
        }
        self.version = v;
    }

    /// Compares this node's version with Redis's; reads everything when
    /// they differ.
    async fn poll(&mut self) {
        let keys = &self.keys;
        let replies: Vec<redis::RedisResult<Option<u64>>> = self
            .conn
            .pipelines(
                1,
                |_| keys.version.clone(),
                |pipe, _| {
                    pipe.cmd("GET").arg(&keys.version);
                },
            )
            .await;
        match replies.into_iter().next() {
            Some(Ok(v)) if v.unwrap_or(0) == self.version => self.note_reachable(Ok(())),
            Some(Ok(_)) => {
                let _ = self.resync().await;
            }
            Some(Err(e)) => {
                self.conn.reset();
                self.note_reachable(Err(&e));
            }
            None => {}
        }
    }

    /// Deletes ended overrides and old resets from Redis, and ended
    /// overrides from this node.
    async fn prune(&mut self) {
        let now = self.control.limiter().now();
        self.control.expire(now);
        let keys = self.keys.clone();
        type Snapshot = (u64, Vec<String>, Vec<String>);
        let replies: Vec<redis::RedisResult<Snapshot>> = self
            .conn
            .eval_all(
                &self.read,
                1,
                |_| keys.overrides.clone(),
                |pipe, _| {
                    pipe.arg(3)
                        .arg(&keys.overrides)
                        .arg(&keys.resets)
                        .arg(&keys.version);
                },
            )
            .await;
        let Some(Ok((_, data, resets))) = replies.into_iter().next() else {
            return;
        };
        let ended: Vec<(&str, &str)> = pairs(&data)
            .filter(|(f, v)| match parse_field(f) {
                Some((_, h)) => decode(h, v).is_some_and(|o| !o.active(now)),
                None => false,
            })
            .collect();
        let old: Vec<(&str, &str)> = pairs(&resets)
            .filter(|(_, v)| {
                split_version(v)
                    .and_then(|(_, at)| at.parse::<Nanos>().ok())
                    .is_some_and(|at| at.saturating_add(RESET_LIFE) < now)
            })
            .collect();
        for (hash, doomed) in [(&keys.overrides, ended), (&keys.resets, old)] {
            if doomed.is_empty() {
                continue;
            }
            let replies: Vec<redis::RedisResult<i64>> = self
                .conn
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
                .await;
            if let Some(Ok(n)) = replies.into_iter().next()
                && n > 0
            {
                tracing::debug!(records = n, hash = %hash, "overrides: pruned ended records from Redis");
            }
        }
    }

    fn note_reachable(&mut self, result: Result<(), &RedisError>) {
        let now = result.is_ok();
        if self.reachable != Some(now) {
            match result {
                Ok(()) => tracing::info!(version = self.version, "overrides: in sync with Redis"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "overrides: cannot reach Redis; enforcing the overrides last read, retrying"
                ),
            }
        }
        self.reachable = Some(now);
    }

    /// Follows Redis until `stop` fires: subscribes (again after a lost
    /// subscription, reading everything then), applies announcements,
    /// polls the version every [`POLL`], prunes every minute.
    pub async fn run(mut self, mut stop: Shutdown) {
        let mut changes: Option<redis::aio::PubSubStream> = None;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if changes.is_none() {
                match self
                    .conn
                    .subscribe(&self.keys.channel, SUBSCRIBE_TIMEOUT)
                    .await
                {
                    Ok(s) => {
                        changes = Some(s);
                        // Announcements made while unsubscribed are lost:
                        // catch up by reading everything.
                        let _ = self.resync().await;
                    }
                    Err(e) => tracing::debug!(error = %e, "overrides: cannot subscribe yet"),
                }
            }
            tokio::select! {
                _ = stop.wait() => return,
                msg = next(&mut changes) => match msg {
                    Some(msg) => match msg.get_payload::<String>() {
                        Ok(payload) => self.announced(&payload).await,
                        Err(e) => tracing::warn!(error = %e, "overrides: unreadable announcement"),
                    },
                    None => {
                        tracing::debug!("overrides: subscription ended; subscribing again");
                        changes = None;
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
        for name in [&k.resets, &k.version] {
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
