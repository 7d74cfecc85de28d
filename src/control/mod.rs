//! The node's control plane: what operators change while it serves, and
//! the one place that changes it.
//!
//! [`Control`] holds the operators' overrides and builds a new limits
//! [`Table`] whenever they or the config change, which it puts in effect
//! in the [`Engine`] together with the config it was built from (one
//! swap: no call sees the new settings with the old table; the front
//! doors and the admin API read the config from there): checks in flight
//! finish on the old rules, the next ones use the new, and none waits. A
//! change of the overrides rebuilds only their part of the table (one map
//! of at most `admin.max_overrides` entries); the config's part is shared.
//!
//! A reload is validated before anything changes: a config that does not
//! load, or that drops a plan overrides still give, leaves everything as
//! it was and is counted as a failure ([`Control::stats`]). Settings only
//! a restart can apply (listeners, store, Redis) are reported, and the
//! rest applies.
//!
//! Without Redis, overrides live only in this node's memory (lost on
//! restart); with Redis, [`crate::sync::overrides`] keeps every node's
//! copy equal to Redis's through the [`crate::sync::OverrideStore`] that
//! `Control` implements ([`Control::apply`] and friends).
//! [`reload`] watches the files and runs reloads.

pub mod reload;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{AdminLive, Config};
use crate::core::Nanos;
use crate::engine::Engine;
use crate::limits::overrides::OVERRIDE_PLAN;
use crate::limits::{Override, Table, TableError, Target};

/// Which config is in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigVersion {
    /// 1 at start, one more on each reload that changed something.
    pub number: u64,
    /// SHA-256 (hex) of the files in effect ([`reload::fingerprint`]).
    pub digest: String,
    /// When it was loaded (Unix ns).
    pub loaded_at: Nanos,
}

impl ConfigVersion {
    /// The first 12 hex digits of the digest: enough to tell versions
    /// apart in logs and listings.
    pub fn short_digest(&self) -> &str {
        self.digest.get(..12).unwrap_or(&self.digest)
    }
}

/// Reloads so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Reloads that took effect (or found nothing changed).
    pub ok: u64,
    /// Reloads refused (the running config stayed).
    pub failed: u64,
    /// Why the latest reload was refused, while it is the latest (a
    /// later success clears it).
    pub last_error: Option<String>,
    /// Whether the latest reload was refused (a later success clears it).
    pub last_failed: bool,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The version in effect now.
    pub version: ConfigVersion,
    /// Whether the files differed from the config in effect.
    pub changed: bool,
    /// Changed settings that take effect only on restart.
    pub restart_needed: Vec<&'static str>,
}

/// Why a change was refused. Messages are one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// An override names a plan the config does not have.
    #[error("plan: unknown plan '{plan}' (defined plans: {known})")]
    UnknownPlan {
        /// The name given.
        plan: String,
        /// The config's plans, comma-separated.
        known: String,
    },
    /// `admin.max_overrides` overrides are in force already.
    #[error("too many overrides: {max} are in force (admin.max_overrides); delete some first")]
    TooMany {
        /// The cap.
        max: usize,
    },
    /// Strict limits need Redis.
    #[error("limits: strict limits are decided in Redis, and this node has no redis section")]
    StrictWithoutRedis,
    /// A reload would leave overrides without their plan.
    #[error(
        "plan '{plan}' is gone from the new config but {count} override(s) still give it: delete or change them first (quotactl override ls --plan {plan})"
    )]
    OrphanedOverrides {
        /// The plan.
        plan: String,
        /// Overrides giving it.
        count: usize,
    },
    /// The new config's table could not be built.
    #[error("{0}")]
    Table(#[from] TableError),
}

pub use crate::sync::Change;

/// Which overrides a listing wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only those giving this plan (`override` for own limits).
    pub plan: Option<String>,
    /// Only blocks.
    pub blocked: bool,
}

impl Filter {
    fn matches(&self, o: &Override) -> bool {
        if self.blocked && o.target != Target::Block {
            return false;
        }
        match &self.plan {
            Some(p) => o.plan_name() == Some(p.as_str()),
            None => true,
        }
    }
}

/// One page of overrides.
#[derive(Debug, Clone)]
pub struct Page {
    /// The overrides, by key hash.
    pub overrides: Vec<Override>,
    /// The last key hash of this page when there are more.
    pub next: Option<u64>,
    /// Overrides in force in all (matching or not).
    pub total: usize,
}

/// See the module docs.
pub struct Control {
    engine: Arc<Engine>,
    state: Mutex<State>,
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_failed: AtomicBool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// What a table is rebuilt from.
struct State {
    /// The config's table, without overrides.
    base: Table,
    /// Every override, by key hash (ordered, for paging).
    records: BTreeMap<u64, Override>,
    version: ConfigVersion,
}

impl Control {
    /// Control over `engine`, whose table was built from `config` (whose
    /// files had fingerprint `digest`).
    pub fn new(engine: Arc<Engine>, config: Config, digest: String) -> Arc<Control> {
        let base = engine.view().table().clone();
        engine.install(base.clone(), Arc::new(config));
        let version = ConfigVersion {
            number: 1,
            digest,
            loaded_at: engine.now(),
        };
        Arc::new(Control {
            engine,
            state: Mutex::new(State {
                base,
                records: BTreeMap::new(),
                version,
            }),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_failed: AtomicBool::new(false),
        })
    }

    /// The config in effect now.
    pub fn config(&self) -> Arc<Config> {
        self.engine.config()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Which config is in effect.
    pub fn version(&self) -> ConfigVersion {
        self.lock().version.clone()
    }

    /// Reloads so far.
    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            last_failed: self.last_failed.load(Ordering::Relaxed),
        }
    }

    /// Counts a refused reload and remembers why.
    pub fn note_failure(&self, why: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(true, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_owned());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave the state half-changed:
        // every change is built aside and assigned at the end.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that the config in effect can give `target`.
    pub fn check_target(&self, target: &Target) -> Result<(), ControlError> {
        Self::can_give(&self.engine.config(), target)
    }

    fn can_give(config: &Config, target: &Target) -> Result<(), ControlError> {
        match target {
            Target::Plan(name) => {
                if config.live.limits.plan(name).is_none() {
                    let known: Vec<&str> = config
                        .live
                        .limits
                        .plans
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect();
                    return Err(ControlError::UnknownPlan {
                        plan: name.clone(),
                        known: known.join(", "),
                    });
                }
            }
            Target::Limits(l) => {
                if config.boot.redis.is_none() && l.plan().limits.iter().any(|l| l.strict) {
                    return Err(ControlError::StrictWithoutRedis);
                }
            }
            Target::Block => {}
        }
        Ok(())
    }

    /// Checks that one more override for `key_hash` fits under
    /// `admin.max_overrides` (replacing one always fits).
    pub fn check_room(&self, key_hash: u64) -> Result<(), ControlError> {
        let st = self.lock();
        Self::has_room(&st, &self.engine.config(), key_hash, self.engine.now())
    }

    /// Overrides that ended do not count (they go at the next sweep).
    fn has_room(
        st: &State,
        config: &Config,
        key_hash: u64,
        now: Nanos,
    ) -> Result<(), ControlError> {
        let max = config.max_overrides();
        if st.records.contains_key(&key_hash) || st.records.len() < max {
            return Ok(());
        }
        let in_force = st.records.values().filter(|o| o.active(now)).count();
        if in_force >= max {
            return Err(ControlError::TooMany { max });
        }
        Ok(())
    }

    /// An operator's override on a node without Redis: checked against
    /// the config in effect and the cap, and put in force, under one lock
    /// (a reload cannot drop its plan in between). Returns the one it
    /// replaced.
    pub fn set(&self, record: Override) -> Result<Option<Override>, ControlError> {
        let mut st = self.lock();
        // A reload stores the config while holding the state lock, so this
        // is the config the override goes into.
        let config = self.engine.config();
        Self::can_give(&config, &record.target)?;
        let now = self.engine.now();
        Self::has_room(&st, &config, record.key_hash, now)?;
        // Ended ones make room (they stopped applying when they ended).
        st.records.retain(|_, o| o.active(now));
        let old = st.records.insert(record.key_hash, record);
        self.install(&st, None);
        Ok(old)
    }

    /// Changes as Redis announced them, in order, unchecked (a plan this
    /// node lacks leaves the key on its usual plan, and is reported): one
    /// table rebuild for the lot, then the resets.
    pub fn apply(&self, changes: &[Change]) {
        let mut rebuild = false;
        {
            let mut st = self.lock();
            for c in changes {
                match c {
                    Change::Set(o) => {
                        st.records.insert(o.key_hash, o.clone());
                        rebuild = true;
                    }
                    Change::Remove(h) => rebuild |= st.records.remove(h).is_some(),
                    Change::Reset(_) => {}
                }
            }
            if rebuild {
                self.install(&st, None);
            }
        }
        for c in changes {
            if let Change::Reset(h) = c {
                self.engine.reset(*h);
            }
        }
    }

    /// Removes `key_hash`'s override; returns it.
    pub fn remove(&self, key_hash: u64) -> Option<Override> {
        let mut st = self.lock();
        let old = st.records.remove(&key_hash);
        if old.is_some() {
            self.install(&st, None);
        }
        old
    }

    /// Replaces every override (a node catching up with Redis).
    pub fn replace_all(&self, records: impl IntoIterator<Item = Override>) {
        let mut st = self.lock();
        st.records = records.into_iter().map(|o| (o.key_hash, o)).collect();
        self.install(&st, None);
    }

    /// Drops overrides that ended by `now` (they already stopped
    /// applying when they ended); returns how many.
    pub fn expire(&self, now: Nanos) -> usize {
        let mut st = self.lock();
        let before = st.records.len();
        st.records.retain(|_, o| o.active(now));
        let gone = before - st.records.len();
        if gone > 0 {
            self.install(&st, None);
        }
        gone
    }

    /// `key_hash`'s override, if one is in force.
    pub fn get(&self, key_hash: u64) -> Option<Override> {
        let now = self.engine.now();
        self.lock()
            .records
            .get(&key_hash)
            .filter(|o| o.active(now))
            .cloned()
    }

    /// Whether this node's config has the plan `o` gives.
    pub fn resolved(&self, o: &Override) -> bool {
        match &o.target {
            Target::Plan(p) => self.engine.config().live.limits.plan(p).is_some(),
            Target::Limits(_) | Target::Block => true,
        }
    }

    /// Up to `limit` overrides in force matching `filter`, with key hashes
    /// after `after`, in key hash order.
    pub fn list(&self, filter: &Filter, after: Option<u64>, limit: usize) -> Page {
        let now = self.engine.now();
        let st = self.lock();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = st
            .records
            .range((from, Bound::Unbounded))
            .map(|(_, o)| o)
            .filter(|o| o.active(now) && filter.matches(o));
        let overrides: Vec<Override> = matching.by_ref().take(limit).cloned().collect();
        let next = match matching.next() {
            Some(_) => overrides.last().map(|o| o.key_hash),
            None => None,
        };
        let total = st.records.values().filter(|o| o.active(now)).count();
        Page {
            overrides,
            next,
            total,
        }
    }

    /// How many overrides in force give each plan (by plan name;
    /// `override` for own limits; blocks are not counted).
    pub fn overrides_by_plan(&self) -> BTreeMap<String, usize> {
        let now = self.engine.now();
        let mut out = BTreeMap::new();
        for o in self.lock().records.values().filter(|o| o.active(now)) {
            if let Some(p) = o.plan_name() {
                *out.entry(p.to_owned()).or_default() += 1;
            }
        }
        out
    }

    /// Forgets what `key_hash` spent against its plan on this node;
    /// returns the cells dropped.
    pub fn reset(&self, key_hash: u64) -> usize {
        self.engine.reset(key_hash)
    }

    /// Puts `config` (loaded from files with fingerprint `digest`) in
    /// effect, after checking it keeps every plan an override gives. On
    /// error nothing changes. A config with the same settings as the one
    /// in effect changes nothing, and is a success all the same: files
    /// put back as they were after a refused reload clear the failure.
    pub fn reload(&self, config: Config, digest: String) -> Result<Reloaded, ControlError> {
        let result = self.try_reload(config, digest);
        match &result {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.last_failed.store(false, Ordering::Relaxed);
            }
            Err(e) => self.note_failure(&e.to_string()),
        }
        result
    }

    fn try_reload(&self, config: Config, digest: String) -> Result<Reloaded, ControlError> {
        let base = config
            .live
            .limits
            .table(self.engine.hasher())?
            .with_rls(config.live.rls.clone());
        let now = self.engine.now();
        let mut st = self.lock();
        let mut orphans: BTreeMap<&str, usize> = BTreeMap::new();
        for o in st.records.values().filter(|o| o.active(now)) {
            if let Target::Plan(p) = &o.target
                && base.plan_id(p).is_none()
            {
                *orphans.entry(p.as_str()).or_default() += 1;
            }
        }
        if let Some((plan, count)) = orphans.into_iter().next() {
            return Err(ControlError::OrphanedOverrides {
                plan: plan.to_owned(),
                count,
            });
        }
        let old = self.engine.config();
        // What only a restart applies stays as it runs, so nothing is
        // validated or read against settings not in effect (a `redis`
        // section added by a reload decides nothing until a restart).
        let (mut config, restart_needed) = keep_restart_only(&old, config);
        // Entries skipped in limits directories are no setting.
        let skipped = std::mem::replace(&mut config.live.skipped, old.live.skipped.clone());
        if *old == config {
            // The same settings (a comment changed, or nothing): only the
            // files' fingerprint is new.
            st.version.digest = digest;
            return Ok(Reloaded {
                version: st.version.clone(),
                changed: false,
                restart_needed,
            });
        }
        config.live.skipped = skipped;
        st.base = base;
        st.version = ConfigVersion {
            number: st.version.number + 1,
            digest,
            loaded_at: now,
        };
        self.install(&st, Some(Arc::new(config)));
        Ok(Reloaded {
            version: st.version.clone(),
            changed: true,
            restart_needed,
        })
    }

    /// Builds the table from `st` and puts it in effect, with `config`
    /// when the config changed too (one swap), else with the config in
    /// effect.
    fn install(&self, st: &State, config: Option<Arc<Config>>) {
        let now = self.engine.now();
        let (table, unresolved) = st.base.with_overrides(st.records.values(), now);
        if let Some(first) = unresolved.first() {
            tracing::warn!(
                overrides = unresolved.len(),
                first_key = %crate::core::hash::hex16(first.key_hash),
                plan = first.plan_name().unwrap_or(OVERRIDE_PLAN),
                "overrides name a plan this node's config lacks; their keys stay on their usual plans here"
            );
        }
        match config {
            Some(config) => self.engine.install(table, config),
            None => self.engine.swap_table(table),
        }
    }
}

/// `new` with the settings only a restart applies ([`Config::boot`])
/// taken from `old`, the config running, and the names of those that
/// differed ([`crate::config::Boot::differences`]): the listeners (and
/// whether they use TLS), the store, Redis, the admin API's listener and
/// audit file. A listener whose TLS was turned on or off keeps its old
/// files with its old mode. An admin section removed by a reload lets
/// nobody in any more (its listener stays until the restart); one added
/// is not served until a restart.
pub fn keep_restart_only(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let changed = old.boot.differences(&new.boot);
    let (o, n) = (&old.boot, &new.boot);
    if o.server.tls_on != n.server.tls_on {
        new.live.server.tls.clone_from(&old.live.server.tls);
    }
    new.live.admin = match (&old.live.admin, new.live.admin.take()) {
        (None, _) => None,
        (Some(a), None) => Some(AdminLive {
            tokens: Vec::new(),
            ..a.clone()
        }),
        (Some(a), Some(mut b)) => {
            if o.admin.as_ref().map(|x| x.tls_on) != n.admin.as_ref().map(|x| x.tls_on) {
                b.tls.clone_from(&a.tls);
            }
            Some(b)
        }
    };
    new.boot.clone_from(&old.boot);
    (new, changed)
}

/// Redis's changes of the overrides land in the control plane.
impl crate::sync::OverrideStore for Control {
    fn apply(&self, changes: &[Change]) {
        Control::apply(self, changes);
    }

    fn replace_all(&self, records: Vec<Override>) {
        Control::replace_all(self, records);
    }

    fn expire(&self, now: Nanos) -> usize {
        Control::expire(self, now)
    }

    fn now(&self) -> Nanos {
        self.engine.now()
    }

    fn held(&self) -> Vec<Override> {
        let now = self.engine.now();
        let st = self.lock();
        st.records
            .values()
            .filter(|o| o.active(now))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!("default_plan: p\nplans: {{ p: {{}} }}\n{extra}");
        Config::from_yaml(&yaml, "t.yaml").expect("valid")
    }

    const SECRET: &str = "store: { hash_secret: \"000102030405060708090a0b0c0d0e0f\" }\n";
    const ADMIN: &str = "admin:\n  tokens:\n    - { id: ops, sha256: \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\", scopes: [read] }\n";

    #[test]
    fn a_reload_keeps_what_only_a_restart_applies_and_names_it() {
        // Redis added by a reload: not in effect until a restart.
        let old = config(SECRET);
        let new = config(&format!(
            "{SECRET}redis: {{ url: \"redis://127.0.0.1:1\" }}\n"
        ));
        let (kept, changed) = keep_restart_only(&old, new);
        assert_eq!(changed, ["redis"]);
        assert!(kept.boot.redis.is_none());
        // The admin section removed: nobody gets in any more.
        let old = config(ADMIN);
        let (kept, changed) = keep_restart_only(&old, config(""));
        assert_eq!(changed, ["admin"]);
        assert!(
            kept.boot.admin.is_some(),
            "the listener stays until a restart"
        );
        let admin = kept.live.admin.expect("the listener stays until a restart");
        assert!(admin.tokens.is_empty());
        // Added: not served until a restart.
        let (kept, changed) = keep_restart_only(&config(""), config(ADMIN));
        let absent = kept.boot.admin.is_none() && kept.live.admin.is_none();
        assert_eq!((absent, changed), (true, vec!["admin"]));
        // Settings that apply at once pass through.
        let new = config("requests: { max_cost: 7 }\nserver: { http_addr: 127.0.0.1:9999 }\n");
        let (kept, changed) = keep_restart_only(&config(""), new);
        assert_eq!(changed, ["server.http_addr"]);
        assert_eq!(kept.live.requests.max_cost, 7);
        assert_eq!(kept.boot.server.http_addr, config("").boot.server.http_addr);
    }

    #[test]
    fn a_reload_names_every_listener_budget_it_cannot_apply() {
        let new = config(
            "server: { max_buffered_bytes: 134217728, request_body_timeout: 3s, \
             tls_handshake_timeout: 2s, max_handshakes_per_peer: 9 }\n",
        );
        let (kept, changed) = keep_restart_only(&config(""), new);
        assert_eq!(
            changed,
            [
                "server.max_buffered_bytes",
                "server.request_body_timeout",
                "server.tls_handshake_timeout",
                "server.max_handshakes_per_peer"
            ]
        );
        assert_eq!(kept.boot, config("").boot);
    }
}
