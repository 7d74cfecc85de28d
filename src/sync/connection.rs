//! One Redis connection for the sync and strict tasks, standalone or
//! Cluster, and the names of quotad's keys.
//!
//! Keys are `{prefix}{<key>}b:<cell>` (a bucket) and `{prefix}{<key>}c:<cell>`
//! (a window counter): `<cell>` is the cell's keyed hash and `<key>` the
//! keyed hash the engine files the API key's cells under, in braces, so a
//! Redis Cluster puts every cell of one API key in one slot (a strict
//! check's script touches them together). Neither is the API key.
//!
//! On a Cluster a pipeline may only hold one slot's commands, so
//! [`RedisConn::pipelines`] sends one pipeline per slot, all at once.
//!
//! A connection learns that Redis went away (or restarted) only when it
//! is next used: a round trip that fails because its connection died is
//! sent once more on a fresh connection, so the first check or admin
//! change after a restart of Redis goes through, and what each
//! connection learns is reported to a [`Link`] that the sync task's state
//! (readiness, `/readyz`) follows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use std::sync::Arc;

use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    ConnectionInfo, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisResult, ServerErrorKind,
    TlsCertificates,
};
use tokio::sync::{Notify, watch};

use super::SyncState;

/// A Lua script: its text and the hash Redis caches it under.
pub(crate) struct Lua {
    text: &'static str,
    sha: String,
}

impl Lua {
    pub(crate) fn new(text: &'static str) -> Self {
        Self {
            text,
            sha: redis::Script::new(text).get_hash().to_owned(),
        }
    }
}

/// On a Cluster, the slot of the keys filed under hash tag `tag` (every
/// cell of one API key); `None` elsewhere: every key can go in one script
/// call.
pub(crate) fn slot_of(conn: &RedisConn, tag: u64) -> Option<Slot> {
    match conn.to {
        To::Cluster(_) => Some(Slot::for_key(format!("{{{tag:016x}}}"))),
        To::Single(_) | To::Sentinel(_) => None,
    }
}

/// A bucket's or a counter's key.
pub(crate) fn key(prefix: &str, tag: u64, bucket: bool, cell: u64) -> String {
    let kind = if bucket { 'b' } else { 'c' };
    format!("{prefix}{{{tag:016x}}}{kind}:{cell:016x}")
}

/// A connection to a standalone Redis (reconnecting by itself), to a
/// Cluster or to the master a Sentinel names (connected on first use,
/// again after a failure), and where it reports what it learns of Redis.
#[derive(Clone)]
pub(crate) struct RedisConn {
    to: To,
    link: Option<Arc<Link>>,
}

#[derive(Clone)]
enum To {
    Single(Box<SingleConn>),
    Cluster(Box<ClusterConn>),
    Sentinel(Box<SentinelConn>),
}

/// What the connections of one node learn about Redis between the sync
/// task's rounds: the sync task's state (which readiness and `/readyz`
/// read) and a nudge that makes it try Redis now. A connection that
/// failed for want of Redis (dropped and not made again, refused, timed
/// out) marks the state degraded at once, rather than leaving it synced
/// until the sync task's next round or idle ping notices; one that got
/// an answer while the state is not synced has the sync task try at once,
/// so the state follows Redis back as soon as Redis is back.
#[derive(Debug)]
pub(crate) struct Link {
    state: watch::Sender<SyncState>,
    nudge: Notify,
    /// Whether a connection turned the state degraded and has not yet
    /// seen Redis answer again (only then, or before the first round,
    /// does an answer hurry the sync task: a state the sync task's own
    /// failures set keeps its backoff).
    reported: AtomicBool,
}

impl Link {
    pub(crate) fn new(state: watch::Sender<SyncState>) -> Self {
        Self {
            state,
            nudge: Notify::new(),
            reported: AtomicBool::new(false),
        }
    }

    /// The sync task's state.
    pub(crate) fn state(&self) -> &watch::Sender<SyncState> {
        &self.state
    }

    /// Resolves when a connection asked the sync task to try Redis now.
    pub(crate) async fn nudged(&self) {
        self.nudge.notified().await;
    }

    /// A connection could not reach Redis: degraded, and the sync task
    /// asked to see for itself (once per change, not per failure).
    fn down(&self, error: &RedisError) {
        let changed = self.state.send_if_modified(|s| {
            let was = *s;
            *s = SyncState::Degraded;
            was != SyncState::Degraded
        });
        if changed {
            self.reported.store(true, Ordering::Relaxed);
            tracing::warn!(
                error = %error,
                "redis: a connection to Redis failed; degraded until the sync task reaches it again"
            );
            self.nudge.notify_one();
        }
    }

    /// A connection got an answer: if the state says otherwise because a
    /// connection said so (or nothing was tried yet), the sync task is
    /// asked to try now.
    fn up(&self) {
        let state = *self.state.borrow();
        let hurry = match state {
            SyncState::Synced => false,
            SyncState::Starting => true,
            SyncState::Degraded => self.reported.swap(false, Ordering::Relaxed),
        };
        if hurry {
            self.nudge.notify_one();
        }
    }
}

/// Whether a round trip failed because its connection died (reset,
/// closed, a broken pipe): another connection may well succeed at once,
/// as after a restart of Redis, which a connection only learns of when it
/// is next used. Not a refused connection (Redis is not there now), not a
/// timeout (the command may still run), not an error Redis returned.
fn dropped(e: &RedisError) -> bool {
    e.is_connection_dropped() && !e.is_connection_refusal() && !e.is_timeout()
}

/// A standalone Redis: the client (to build a fresh manager after a
/// failure, so a DNS name that now points at a promoted replica is looked
/// up again) and the current manager.
#[derive(Clone)]
pub(crate) struct SingleConn {
    client: redis::Client,
    manager: ConnectionManager,
    response_timeout: Duration,
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the sync and overrides tasks wait for Redis to answer a
/// command before they count it as failed.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

fn manager(client: &redis::Client, response_timeout: Duration) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// Sentinels to ask for the master, and the connection to it once made
/// (asked again after a failure, so a failover is followed).
#[derive(Clone)]
pub(crate) struct SentinelConn {
    client: Arc<tokio::sync::Mutex<SentinelClient>>,
    conn: Option<MultiplexedConnection>,
    response_timeout: Duration,
}

/// A Cluster client and its connection, once made.
#[derive(Clone)]
pub(crate) struct ClusterConn {
    client: ClusterClient,
    conn: Option<ClusterConnection>,
    /// The seed node alone, for subscriptions (a Cluster delivers every
    /// PUBLISH to subscribers on any node).
    seed: redis::Client,
}

impl RedisConn {
    /// A lazy connection to `info`; `cluster` treats it as a seed node,
    /// `sentinel_master` as a Sentinel to ask for that master (which gets
    /// `info`'s credentials). `tls_ca` (PEM) replaces the system's roots
    /// for `rediss://`. A command Redis has not answered within
    /// `response_timeout` fails (its outcome unknown).
    pub(crate) fn new(
        info: ConnectionInfo,
        cluster: bool,
        sentinel_master: Option<&str>,
        tls_ca: Option<&[u8]>,
        response_timeout: Duration,
    ) -> RedisResult<RedisConn> {
        // rustls needs a crypto provider; ring is this build's. Installing
        // it twice is harmless (the first one stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: tls_ca.map(<[u8]>::to_vec),
        };
        if let Some(master) = sentinel_master {
            let node = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(info.redis_settings().clone());
            let client =
                SentinelClient::build(vec![info], master, Some(node), SentinelServerType::Master)?;
            return Ok(RedisConn::from(To::Sentinel(Box::new(SentinelConn {
                client: Arc::new(tokio::sync::Mutex::new(client)),
                conn: None,
                response_timeout,
            }))));
        }
        if cluster {
            let seed = match tls_ca {
                Some(_) => redis::Client::build_with_tls(info.clone(), certs())?,
                None => redis::Client::open(info.clone())?,
            };
            let mut builder = ClusterClient::builder(vec![info])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response_timeout);
            if tls_ca.is_some() {
                builder = builder.certs(certs());
            }
            let client = builder.build()?;
            return Ok(RedisConn::from(To::Cluster(Box::new(ClusterConn {
                client,
                conn: None,
                seed,
            }))));
        }
        let client = match tls_ca {
            Some(_) => redis::Client::build_with_tls(info, certs())?,
            None => redis::Client::open(info)?,
        };
        let manager = manager(&client, response_timeout)?;
        Ok(RedisConn::from(To::Single(Box::new(SingleConn {
            client,
            manager,
            response_timeout,
        }))))
    }

    /// Reports to `link` whether Redis could be reached.
    pub(crate) fn with_link(mut self, link: Arc<Link>) -> Self {
        self.link = Some(link);
        self
    }

    /// Runs `script` once per item (`args` appends item `i`'s keys count,
    /// keys and arguments to the pipeline's last command), by its hash; items that met a Redis without
    /// the script cached (a new or restarted one, a Cluster node that
    /// never ran it) go again with its text, which caches it there.
    /// Returns each item's reply in order.
    pub(crate) async fn eval_all<T, A>(
        &mut self,
        script: &Lua,
        count: usize,
        slot_key: impl Fn(usize) -> String,
        args: A,
    ) -> Vec<RedisResult<T>>
    where
        T: FromRedisValue + Send,
        A: Fn(&mut Pipeline, usize),
    {
        let mut replies = self
            .pipelines(count, &slot_key, |pipe, i| {
                args(pipe.cmd("EVALSHA").arg(&script.sha), i)
            })
            .await;
        let missing: Vec<usize> = (0..count)
            .filter(|&i| matches!(&replies[i], Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)))
            .collect();
        if !missing.is_empty() {
            let resent = self
                .pipelines(
                    missing.len(),
                    |j| slot_key(missing[j]),
                    |pipe, j| args(pipe.cmd("EVAL").arg(script.text), missing[j]),
                )
                .await;
            for (&i, reply) in missing.iter().zip(resent) {
                replies[i] = reply;
            }
        }
        replies
    }

    /// Sends `items` as pipelines (`build` adds item `i`'s command), one
    /// per slot on a Cluster, and returns each item's reply in order. A
    /// failed round trip fails every item it carried; one whose
    /// connection had died (see [`dropped`]) is sent once more, on a
    /// fresh connection, so the first use after a restart of Redis
    /// succeeds. (Should the connection have died after Redis ran the
    /// commands, they run twice: as after a lost answer, at least once.)
    pub(crate) async fn pipelines<T, F>(
        &mut self,
        count: usize,
        slot_key: impl Fn(usize) -> String,
        build: F,
    ) -> Vec<RedisResult<T>>
    where
        T: FromRedisValue + Send,
        F: Fn(&mut Pipeline, usize),
    {
        let groups: Vec<Vec<usize>> = match &self.to {
            To::Single(_) | To::Sentinel(_) => vec![(0..count).collect()],
            To::Cluster(_) => {
                let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
                for i in 0..count {
                    by_slot
                        .entry(Slot::for_key(slot_key(i)))
                        .or_default()
                        .push(i);
                }
                by_slot.into_values().collect()
            }
        };
        let mut out: Vec<Option<RedisResult<T>>> = (0..count).map(|_| None).collect();
        let mut answers = self.round_trips(&groups, &build).await;
        if answers.iter().any(|a| matches!(a, Err(e) if dropped(e))) {
            self.reset();
            let again: Vec<usize> = (0..groups.len())
                .filter(|&g| matches!(&answers[g], Err(e) if dropped(e)))
                .collect();
            let resend: Vec<Vec<usize>> = again.iter().map(|&g| groups[g].clone()).collect();
            let resent = self.round_trips(&resend, &build).await;
            for (g, answer) in again.into_iter().zip(resent) {
                answers[g] = answer;
            }
        }
        let mut failure = None;
        for (group, answer) in groups.iter().zip(answers) {
            match answer {
                Ok(replies) => {
                    for (&i, reply) in group.iter().zip(replies) {
                        out[i] = Some(reply);
                    }
                }
                Err(e) => {
                    for &i in group {
                        out[i] = Some(Err(e.clone()));
                    }
                    failure.get_or_insert(e);
                }
            }
        }
        if failure.is_some() {
            self.reset();
        }
        self.report(failure.as_ref());
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(missing_reply())))
            .collect()
    }

    /// One pipeline per group, all at once; each group's replies, or why
    /// its round trip failed.
    async fn round_trips<T, F>(
        &mut self,
        groups: &[Vec<usize>],
        build: &F,
    ) -> Vec<RedisResult<Vec<RedisResult<T>>>>
    where
        T: FromRedisValue + Send,
        F: Fn(&mut Pipeline, usize),
    {
        let conn = match self.connected().await {
            Ok(c) => c,
            Err(e) => return groups.iter().map(|_| Err(e.clone())).collect(),
        };
        let sends = groups.iter().map(|group| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in group {
                build(&mut pipe, i);
            }
            let mut c = conn.clone();
            async move {
                match &mut c {
                    Connected::Single(m) => pipe.query_async(m).await,
                    Connected::Cluster(k) => pipe.query_async(k).await,
                    Connected::Multiplexed(m) => pipe.query_async(m).await,
                }
            }
        });
        join_all(sends).await
    }

    /// Tells the link whether Redis was reached: a round trip that failed
    /// in transport (not an error Redis answered) says it was not.
    fn report(&self, failure: Option<&RedisError>) {
        let Some(link) = &self.link else {
            return;
        };
        match failure {
            Some(e) if e.is_io_error() => link.down(e),
            Some(_) => {}
            None => link.up(),
        }
    }

    /// The live connection, connecting a Cluster first if needed.
    async fn connected(&mut self) -> RedisResult<Connected> {
        match &mut self.to {
            To::Single(s) => Ok(Connected::Single(s.manager.clone())),
            To::Cluster(c) => {
                if c.conn.is_none() {
                    c.conn = Some(c.client.get_async_connection().await?);
                }
                c.conn
                    .clone()
                    .map(Connected::Cluster)
                    .ok_or_else(missing_reply)
            }
            To::Sentinel(s) => {
                if s.conn.is_none() {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(s.response_timeout));
                    let mut client = s.client.lock().await;
                    s.conn = Some(client.get_async_connection_with_config(&config).await?);
                }
                s.conn
                    .clone()
                    .map(Connected::Multiplexed)
                    .ok_or_else(missing_reply)
            }
        }
    }

    /// A connection subscribed to `channel` (on the master a Sentinel
    /// names, or a Cluster's seed node), made within `timeout`.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        timeout: Duration,
    ) -> RedisResult<redis::aio::PubSubStream> {
        let connect = async {
            let client = match &self.to {
                To::Single(s) => s.client.clone(),
                To::Cluster(c) => c.seed.clone(),
                To::Sentinel(s) => s.client.lock().await.async_get_client().await?,
            };
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok(pubsub.into_on_message())
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    ErrorKind::Io,
                    "timed out subscribing",
                )))
            })
    }

    /// Checks that Redis answers.
    pub(crate) async fn ping(&mut self) -> RedisResult<()> {
        let replies: Vec<RedisResult<String>> = self
            .pipelines(
                1,
                |_| String::new(),
                |pipe, _| {
                    pipe.cmd("PING");
                },
            )
            .await;
        match replies.into_iter().next() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                self.reset();
                Err(e)
            }
            None => Err(missing_reply()),
        }
    }

    /// Forgets the connection after a failure, so the next use connects
    /// again (asking the Sentinel again, or resolving the host again: a
    /// READONLY replica behind a failed-over DNS name is left behind).
    pub(crate) fn reset(&mut self) {
        match &mut self.to {
            To::Cluster(c) => c.conn = None,
            To::Sentinel(s) => s.conn = None,
            To::Single(s) => {
                if let Ok(m) = manager(&s.client, s.response_timeout) {
                    s.manager = m;
                }
            }
        }
    }
}

impl From<To> for RedisConn {
    fn from(to: To) -> Self {
        RedisConn { to, link: None }
    }
}

#[derive(Clone)]
enum Connected {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Multiplexed(MultiplexedConnection),
}

fn missing_reply() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "no reply for this command"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tag_the_api_keys_hash_so_its_cells_share_a_slot() {
        let a = key("quotad:", 0xabc, true, 1);
        let b = key("quotad:", 0xabc, false, 2);
        assert_eq!(a, "quotad:{0000000000000abc}b:0000000000000001");
        assert_eq!(b, "quotad:{0000000000000abc}c:0000000000000002");
        assert_eq!(Slot::for_key(&a), Slot::for_key(&b));
        // What `slot_of` hashes on a Cluster: the tag alone.
        assert_eq!(Slot::for_key("{0000000000000abc}"), Slot::for_key(&a));
    }
}
