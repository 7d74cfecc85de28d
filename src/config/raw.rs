//! The config file as written ([`ConfigRaw`]: one optional raw value per
//! section) and its validation into a [`Config`].
//!
//! Both halves report every mistake, not the first: the top-level
//! sections take part in reading past a mistake
//! ([`crate::yaml::recover`]), and [`ConfigRaw::build`] validates every
//! section, keeping each one's issue, before the checks that relate
//! sections (which run only when every section is valid, so that they do
//! not report what a broken section left out).

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::admin::AdminRaw;
use super::envoy::EnvoyRaw;
use super::headers::{HeaderStyle, StyleRaw};
use super::metrics::MetricsRaw;
use super::redis::RedisRaw;
use super::reload::ReloadRaw;
use super::requests::RequestsRaw;
use super::rlqs::RlqsRaw;
use super::server::ServerRaw;
use super::store::StoreRaw;
use super::values::NonEmpty;
use super::{Boot, Config, Live, plans};
use crate::diag::{Issue, Seg};
use crate::limits::file::{self, KeysRaw, PlansRaw};
use crate::limits::rls::RlsDomains;
use crate::yaml::recover::{self, Reading};

/// The config file's sections as written; each is optional.
#[derive(Default)]
pub(super) struct ConfigRaw {
    default_plan: Option<String>,
    plans: Option<PlansRaw>,
    keys: Option<KeysRaw>,
    server: Option<ServerRaw>,
    requests: Option<RequestsRaw>,
    store: Option<StoreRaw>,
    redis: Option<RedisRaw>,
    envoy: Option<EnvoyRaw>,
    rls_files: Option<Vec<NonEmpty>>,
    response_headers: Option<StyleRaw>,
    admin: Option<AdminRaw>,
    reload: Option<ReloadRaw>,
    metrics: Option<MetricsRaw>,
    rlqs: Option<RlqsRaw>,
}

/// The sections' names, as an unknown one's message lists them.
const SECTIONS: &[&str] = &[
    "default_plan",
    "plans",
    "keys",
    "server",
    "requests",
    "store",
    "redis",
    "envoy",
    "rls_files",
    "response_headers",
    "admin",
    "reload",
    "metrics",
    "rlqs",
];

impl<'de> Deserialize<'de> for ConfigRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("ConfigRaw", SECTIONS, RawVisitor)
    }
}

/// Reads the top-level mapping section by section; each section is an
/// item of [`recover`]: a wrong one (or an unknown name) is reported and
/// left out, and the rest is read.
struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = ConfigRaw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a config file (a mapping of sections)")
    }

    // An empty file.
    fn visit_unit<E: de::Error>(self) -> Result<ConfigRaw, E> {
        Ok(ConfigRaw::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ConfigRaw, A::Error> {
        let mut raw = ConfigRaw::default();
        let mut seen: Vec<String> = Vec::new();
        for i in 0.. {
            let Some(reading) = Reading::item(i) else {
                match map.next_entry::<recover::Skipped, recover::Skipped>()? {
                    Some(_) => continue,
                    None => break,
                }
            };
            let Some(name) = reading.mark(map.next_key::<String>())? else {
                break;
            };
            if seen.contains(&name) {
                return reading.mark(Err(de::Error::custom(format_args!(
                    "duplicate field '{name}'"
                ))));
            }
            seen.push(name.clone());
            /// Reads the section's value into its slot (`name:` with
            /// nothing after it is an absent section).
            macro_rules! section {
                ($field:ident) => {{
                    raw.$field = reading.mark(map.next_value())?;
                }};
            }
            match name.as_str() {
                "default_plan" => section!(default_plan),
                "plans" => section!(plans),
                "keys" => section!(keys),
                "server" => section!(server),
                "requests" => section!(requests),
                "store" => section!(store),
                "redis" => section!(redis),
                "envoy" => section!(envoy),
                "rls_files" => section!(rls_files),
                "response_headers" => section!(response_headers),
                "admin" => section!(admin),
                "reload" => section!(reload),
                "metrics" => section!(metrics),
                "rlqs" => section!(rlqs),
                other => return reading.mark(Err(de::Error::unknown_field(other, SECTIONS))),
            }
        }
        Ok(raw)
    }
}

/// A section's value, or its default with its issue kept in `issues`.
fn valid<T: Default>(issues: &mut Vec<Issue>, built: Option<Result<T, Issue>>) -> T {
    match built {
        Some(Ok(v)) => v,
        Some(Err(issue)) => {
            issues.push(issue);
            T::default()
        }
        None => T::default(),
    }
}

impl ConfigRaw {
    /// Validates every section, then what relates them; each section's own
    /// mistakes come first, in the order of the sections' checks.
    pub(super) fn build(
        self,
        base: &Path,
        hash_secret: Option<[u8; 16]>,
    ) -> Result<Config, Vec<Issue>> {
        let mut issues = Vec::new();
        let (server_boot, server_live) = valid(&mut issues, self.server.map(|s| s.build(base)));
        let requests = valid(&mut issues, self.requests.map(RequestsRaw::build));
        let mut store = valid(&mut issues, self.store.map(StoreRaw::build));
        if hash_secret.is_some() {
            store.hash_secret = hash_secret;
        }
        let redis = valid(
            &mut issues,
            self.redis
                .map(|r| r.build(base, store.hash_secret.is_some()).map(Some)),
        );
        let names_domains = self.envoy.as_ref().is_some_and(EnvoyRaw::names_domains);
        let mut envoy = self.envoy.map(EnvoyRaw::build).unwrap_or_default();
        let rls_files = self
            .rls_files
            .unwrap_or_default()
            .into_iter()
            .map(|p| base.join(p.0))
            .collect();
        let response_headers = self
            .response_headers
            .map_or(HeaderStyle::default(), |s| s.0);
        let (admin_boot, admin_live) =
            valid(&mut issues, self.admin.map(|a| a.build(base).map(Some))).unzip();
        let reload = self.reload.map(ReloadRaw::build).unwrap_or_default();
        let metrics = valid(&mut issues, self.metrics.map(MetricsRaw::build));
        if let Err(issue) = metrics.check_secret(store.hash_secret.is_some()) {
            issues.push(issue);
        }
        let rlqs = valid(&mut issues, self.rlqs.map(RlqsRaw::build));
        let boot = Boot {
            server: server_boot,
            store,
            redis,
            admin: admin_boot,
        };
        // Two listeners on one address could never both bind.
        if let Some((path, other, addr)) = boot.shared_listener()
            && issues.is_empty()
        {
            issues.push(Issue::new(
                path.iter().map(|p| Seg::key(*p)).collect(),
                format!(
                    "{addr} is also {}: each listener needs its own address",
                    other.join(".")
                ),
            ));
        }

        // Limits last: a section's own mistake is reported before a missing
        // plan, so each error points at what the author was editing.
        let limits = match file::build(self.default_plan, self.plans, self.keys) {
            Ok(limits) => Some(limits),
            Err(more) => {
                issues.extend(more);
                None
            }
        };
        if let Some(l) = &limits
            && l.is_planless()
        {
            // Plan domains answer from plans: without any, there are none
            // (the default `quotad` is dropped; one written is a mistake).
            if names_domains {
                issues.push(Issue::new(
                    vec![Seg::key("envoy"), Seg::key("domains")],
                    "plan domains answer from plans, and this file defines none: add plans, or remove envoy.domains (the limits files' domains are served without it)",
                ));
            }
            envoy.domains.clear();
        }
        let (Some(limits), true) = (limits, issues.is_empty()) else {
            return Err(issues);
        };
        plans::check_strict_has_redis(&limits, boot.redis.is_some()).map_err(|i| vec![i])?;
        plans::check_keys_fit(&limits, requests.max_key_bytes).map_err(|i| vec![i])?;

        Ok(Config {
            source: None,
            embedded: false,
            boot,
            live: Live {
                server: server_live,
                requests,
                envoy,
                limits,
                rls_files,
                rls: RlsDomains::default(),
                skipped: Vec::new(),
                response_headers,
                admin: admin_live,
                reload,
                metrics,
                rlqs,
            },
        })
    }
}
