//! `quotad.v1.QuotaAdmin`: the operators' API, on its own listener.
//!
//! Every call is authorized first ([`auth`]: bearer token, scope; a call
//! refused there is counted and logged within a rate limit,
//! [`refusals`]), every change is written to the audit trail ([`audit`])
//! with the state before and after, and every refusal names the field
//! ([`convert`]). Changes go
//! through [`Control`], which swaps a new table into the engine: the
//! next check of the key sees them.
//!
//! With Redis, overrides and resets are stored in Redis
//! ([`crate::sync::overrides`]) and applied by every node, this one
//! included, in Redis's order, within a second; a restarted node finds
//! them. The call returns once this node has applied the change. If Redis
//! refuses it, the call fails and nothing changed; if Redis's answer is
//! lost, the call fails with `UNAVAILABLE`, the change may have been made
//! (read it back), and the audit record says it was not confirmed.
//! Without Redis, overrides live in this node only, and are lost when it
//! restarts.

pub mod audit;
pub mod auth;
pub mod convert;
pub mod refusals;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::pb;
use crate::api::pb::quota_admin_server::QuotaAdmin;
use crate::config::Scope;
use crate::control::reload::{Cause, Reloader};
use crate::control::{Control, ControlError, Filter};
use crate::core::hash::hex16;
use crate::limits::Override;
use crate::sync::overrides::{RedisOverrides, WriteError};
use audit::{Audit, Record};
use auth::Caller;
use convert::override_message;
use refusals::Refusals;

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    control: Arc<Control>,
    reloader: Arc<Reloader>,
    audit: Arc<Audit>,
    refusals: Arc<Refusals>,
    redis: Option<Arc<RedisOverrides>>,
}

impl AdminService {
    /// The service over `control`, reloading through `reloader`, writing
    /// to `audit`, and storing overrides in Redis when `redis` is given.
    pub fn new(
        control: Arc<Control>,
        reloader: Arc<Reloader>,
        audit: Arc<Audit>,
        redis: Option<Arc<RedisOverrides>>,
    ) -> Self {
        let refusals = Arc::new(Refusals::new(Arc::clone(&audit)));
        Self {
            control,
            reloader,
            audit,
            refusals,
            redis,
        }
    }

    fn authorize<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
        call: &str,
    ) -> Result<Caller, Status> {
        let config = self.control.config();
        let tokens = config
            .live
            .admin
            .as_ref()
            .map_or(&[][..], |a| &a.tokens[..]);
        auth::authorize(tokens, request, scope, call).map_err(|refused| {
            self.refusals.note(&refused, call, self.now());
            refused.status
        })
    }

    /// Authorizes a call that names one key, and the key hash it names.
    fn keyed(
        &self,
        request: Request<pb::KeyRef>,
        scope: Scope,
        call: &str,
    ) -> Result<(Caller, u64), Status> {
        let caller = self.authorize(&request, scope, call)?;
        let req = request.into_inner();
        Ok((caller, self.key(&req.key, &req.key_hash)?))
    }

    /// Refuses a call about a key's plan and usage while the config
    /// defines no plans (keys have none; see [`crate::engine::NoPlans`]).
    /// Listing and deleting overrides stay open, to clean up.
    fn planned(&self) -> Result<(), Status> {
        if self.control.config().live.limits.is_planless() {
            return Err(Status::failed_precondition(
                crate::engine::NoPlans.to_string(),
            ));
        }
        Ok(())
    }

    /// The key hash a `KeyRef`-like request names.
    fn key(&self, key: &str, hash: &str) -> Result<u64, Status> {
        let config = self.control.config();
        convert::key_hash(
            key,
            hash,
            &config.live.requests,
            self.control.engine().hasher(),
        )
    }

    fn override_message(&self, o: &Override) -> pb::Override {
        override_message(o, self.control.resolved(o))
    }

    fn version(&self) -> pb::ConfigVersion {
        convert::version_message(&self.control.version(), &self.control.stats())
    }

    /// A key's usage: its limits as this node sees them, and its
    /// concurrency limit's leases (every node's, read from Redis when it
    /// is configured: UNAVAILABLE if it does not answer).
    async fn usage(&self, key_hash: u64) -> Result<pb::GetUsageResponse, Status> {
        let engine = self.control.engine();
        // With Redis, every node's spend (one round trip); without it, or
        // when it does not answer, this node's view, said so.
        let (global, note) = match engine.read_usage(key_hash).await {
            Ok(read) => (read.is_some(), String::new()),
            Err(e) => (
                false,
                format!("this node's view only: Redis did not answer ({e})"),
            ),
        };
        let as_of = engine.now();
        let leases = engine
            .lease_usage(key_hash)
            .await
            .map_err(|e| Status::unavailable(format!("the key's leases could not be read: {e}")))?;
        let snap = engine.view();
        let usage = snap.usage(key_hash);
        let over = self
            .control
            .get(key_hash)
            .map(|o| self.override_message(&o));
        let mut out = convert::usage_message(key_hash, &usage, over, self.version());
        out.concurrency = leases.as_ref().map(convert::concurrency_usage);
        out.global = global;
        out.as_of = Some(crate::api::timestamp(as_of));
        out.note = note;
        out.rlqs = engine
            .rlqs_usage(key_hash)
            .iter()
            .map(convert::rlqs_usage)
            .collect();
        Ok(out)
    }

    fn now(&self) -> crate::core::Nanos {
        self.control.engine().now()
    }
}

fn control_status(e: ControlError) -> Status {
    match e {
        ControlError::UnknownPlan { .. } | ControlError::StrictWithoutRedis => {
            Status::invalid_argument(e.to_string())
        }
        ControlError::TooMany { .. } => Status::resource_exhausted(e.to_string()),
        ControlError::OrphanedOverrides { .. } | ControlError::Table(_) => {
            Status::failed_precondition(e.to_string())
        }
    }
}

impl AdminService {
    /// Counts a change refused before anything changed (unauthenticated,
    /// not permitted, invalid, over the cap). One Redis did not confirm
    /// (UNAVAILABLE) is counted by its audit record; a delete that found
    /// no override changed nothing to refuse (and one that found an ended
    /// override removed it, which its audit record counts).
    fn refused<T>(&self, action: &'static str, answer: &Result<T, Status>) {
        if let Err(s) = answer
            && s.code() != tonic::Code::Unavailable
            && !(action == "override.delete" && s.code() == tonic::Code::NotFound)
        {
            self.audit.count(action, "refused");
        }
    }

    /// The status for a change Redis did not take: refused (nothing
    /// changed), or not confirmed, which the audit trail records since
    /// the change may have been made.
    fn unconfirmed(&self, record: Record, e: WriteError) -> Status {
        match e {
            WriteError::Full(_) => Status::resource_exhausted(e.to_string()),
            WriteError::Unavailable(_) | WriteError::NotApplied => {
                self.audit.write(&record.unconfirmed(&e.to_string()));
                Status::unavailable(e.to_string())
            }
        }
    }
}

/// The answer for a key without an override.
fn no_override(key_hash: u64) -> Status {
    Status::not_found(format!("key {} has no override", hex16(key_hash)))
}

/// An override as the audit log shows it (one that had ended is `none`).
fn described(o: Option<&Override>, now: crate::core::Nanos) -> String {
    o.filter(|o| o.active(now))
        .map_or_else(|| "none".to_owned(), Override::describe)
}

#[tonic::async_trait]
impl QuotaAdmin for AdminService {
    async fn set_override(
        &self,
        request: Request<pb::SetOverrideRequest>,
    ) -> Result<Response<pb::SetOverrideResponse>, Status> {
        let answer = self.set_override_call(request).await;
        self.refused("override.set", &answer);
        answer
    }

    async fn get_override(
        &self,
        request: Request<pb::KeyRef>,
    ) -> Result<Response<pb::Override>, Status> {
        let (_, key_hash) = self.keyed(request, Scope::Read, "GetOverride")?;
        match self.control.get(key_hash) {
            Some(o) => Ok(Response::new(self.override_message(&o))),
            None => Err(no_override(key_hash)),
        }
    }

    async fn delete_override(
        &self,
        request: Request<pb::KeyRef>,
    ) -> Result<Response<pb::DeleteOverrideResponse>, Status> {
        let answer = self.delete_override_call(request).await;
        self.refused("override.delete", &answer);
        answer
    }

    async fn list_overrides(
        &self,
        request: Request<pb::ListOverridesRequest>,
    ) -> Result<Response<pb::ListOverridesResponse>, Status> {
        self.authorize(&request, Scope::Read, "ListOverrides")?;
        let req = request.into_inner();
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(convert::parse_hash(t).ok_or_else(|| {
                Status::invalid_argument(
                    "page_token: not a token from a previous page (16 hex digits)",
                )
            })?),
        };
        let size = match req.page_size {
            0 => convert::DEFAULT_PAGE,
            n => (n as usize).min(convert::MAX_PAGE),
        };
        let filter = Filter {
            plan: Some(req.plan).filter(|p| !p.is_empty()),
            blocked: req.blocked,
        };
        let page = self.control.list(&filter, after, size);
        Ok(Response::new(pb::ListOverridesResponse {
            overrides: page
                .overrides
                .iter()
                .map(|o| self.override_message(o))
                .collect(),
            next_page_token: page.next.map(hex16).unwrap_or_default(),
            total: page.total as u64,
        }))
    }

    async fn get_usage(
        &self,
        request: Request<pb::KeyRef>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let (_, key_hash) = self.keyed(request, Scope::Read, "GetUsage")?;
        self.planned()?;
        Ok(Response::new(self.usage(key_hash).await?))
    }

    async fn reset_usage(
        &self,
        request: Request<pb::KeyRef>,
    ) -> Result<Response<pb::ResetUsageResponse>, Status> {
        let answer = self.reset_usage_call(request).await;
        self.refused("usage.reset", &answer);
        answer
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        self.authorize(&request, Scope::Read, "ListPlans")?;
        let config = self.control.config();
        let by_plan = self.control.overrides_by_plan();
        let plans = config
            .live
            .limits
            .plans
            .iter()
            .map(|p| pb::Plan {
                name: p.name.clone(),
                limits: p
                    .limits
                    .iter()
                    .map(convert::plan_limit)
                    .chain(p.concurrency.iter().map(|c| convert::concurrency_limit(c)))
                    .collect(),
                is_default: p.name == config.live.limits.default_plan,
                static_keys: config
                    .live
                    .limits
                    .keys
                    .iter()
                    .filter(|(_, k)| *k == p.name)
                    .count() as u64,
                overrides: by_plan.get(&p.name).copied().unwrap_or(0) as u64,
            })
            .collect();
        Ok(Response::new(pb::ListPlansResponse {
            plans,
            config: Some(self.version()),
        }))
    }

    async fn reload(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let answer = self.reload_call(request).await;
        self.refused("config.reload", &answer);
        answer
    }
}

/// The changes' bodies; the trait's methods count their refusals.
impl AdminService {
    async fn set_override_call(
        &self,
        request: Request<pb::SetOverrideRequest>,
    ) -> Result<Response<pb::SetOverrideResponse>, Status> {
        let caller = self.authorize(&request, Scope::Write, "SetOverride")?;
        let req = request.into_inner();
        let key_hash = self.key(&req.key, &req.key_hash)?;
        self.planned()?;
        let target = convert::target(req.target)?;
        let now = self.now();
        let expires_at = convert::expiry(req.expires_at, req.ttl, now)?;
        convert::reason(&req.reason)?;
        let record = Override {
            key_hash,
            target,
            expires_at,
            reason: req.reason,
            author: caller.who(),
            updated_at: now,
        };
        // What every node will read back, checked as they will check it.
        Override::from_json(key_hash, &record.to_json())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let audit = |previous: Option<&Override>| {
            Record::new(&caller, "override.set", now)
                .key(key_hash)
                .change(described(previous, now), record.describe())
                .reason(&record.reason)
        };
        let previous = match &self.redis {
            Some(redis) => {
                // Checked here first for a clear answer; Redis enforces
                // the cap for every node together.
                self.control
                    .check_target(&record.target)
                    .map_err(control_status)?;
                self.control.check_room(key_hash).map_err(control_status)?;
                let max = self.control.config().max_overrides();
                match redis.set(&record, max, now).await {
                    Ok(previous) => previous,
                    Err(e) => {
                        let before = self.control.get(key_hash);
                        return Err(self.unconfirmed(audit(before.as_ref()), e));
                    }
                }
            }
            None => self.control.set(record.clone()).map_err(control_status)?,
        };
        // An override that had ended was gone already: it replaced none.
        let previous = previous.filter(|o| o.active(now));
        self.audit.write(&audit(previous.as_ref()));
        Ok(Response::new(pb::SetOverrideResponse {
            r#override: Some(self.override_message(&record)),
            previous: previous.as_ref().map(|o| self.override_message(o)),
        }))
    }

    async fn delete_override_call(
        &self,
        request: Request<pb::KeyRef>,
    ) -> Result<Response<pb::DeleteOverrideResponse>, Status> {
        let (caller, key_hash) = self.keyed(request, Scope::Write, "DeleteOverride")?;
        let now = self.now();
        let record = |old: String| {
            Record::new(&caller, "override.delete", now)
                .key(key_hash)
                .change(old, "none")
        };
        let previous = match &self.redis {
            Some(redis) => match redis.delete(key_hash, now).await {
                Ok(previous) => previous,
                Err(e) => {
                    let before = described(self.control.get(key_hash).as_ref(), now);
                    return Err(self.unconfirmed(record(before), e));
                }
            },
            None => self.control.remove(key_hash),
        };
        let Some(previous) = previous else {
            return Err(no_override(key_hash));
        };
        if !previous.active(now) {
            // It had ended, so the key had none; its record is gone now
            // (from Redis, announced to every node): say so in the trail.
            self.audit
                .write(&record(format!("{} (had ended)", previous.describe())));
            return Err(no_override(key_hash));
        }
        self.audit.write(&record(previous.describe()));
        Ok(Response::new(pb::DeleteOverrideResponse {
            previous: Some(self.override_message(&previous)),
        }))
    }

    async fn reset_usage_call(
        &self,
        request: Request<pb::KeyRef>,
    ) -> Result<Response<pb::ResetUsageResponse>, Status> {
        let (caller, key_hash) = self.keyed(request, Scope::Write, "ResetUsage")?;
        self.planned()?;
        let now = self.now();
        let before = {
            let engine = self.control.engine();
            let snap = engine.view();
            convert::usage_summary(&snap.usage(key_hash))
        };
        let record = Record::new(&caller, "usage.reset", now)
            .key(key_hash)
            .change(before, "reset");
        let engine = self.control.engine();
        // Leases first: every node's reset then finds them gone, and a
        // Hold stream that renews meanwhile finds the reset mark.
        let leases = engine.reset_leases(key_hash).await.map_err(|e| {
            Status::unavailable(format!("the key's leases could not be freed: {e}"))
        })?;
        let cells = match &self.redis {
            Some(redis) => {
                // Every node resets when Redis announces it, this one too.
                let tracked = engine.tracked_cells(key_hash);
                let cells = engine.cells_of(key_hash);
                if let Err(e) = redis.reset(key_hash, &cells, now).await {
                    return Err(self.unconfirmed(record, e));
                }
                tracked
            }
            None => self.control.reset(key_hash),
        };
        self.audit.write(&record);
        Ok(Response::new(pb::ResetUsageResponse {
            key_hash: hex16(key_hash),
            cells: cells as u64,
            usage: Some(self.usage(key_hash).await?),
            leases,
        }))
    }

    async fn reload_call(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let caller = self.authorize(&request, Scope::Write, "Reload")?;
        let before = self.control.version();
        // A refusal by SIGHUP or the watcher is audited by the app; this
        // one names its caller.
        let reloaded = match self.reloader.reload(Cause::Admin).await {
            Ok(r) => r,
            Err(e) => {
                self.audit.write(
                    &Record::new(&caller, "config.reload", self.now())
                        .failed(Cause::Admin.as_str(), &e),
                );
                return Err(Status::failed_precondition(e));
            }
        };
        if reloaded.changed {
            self.audit
                .write(&Record::new(&caller, "config.reload", self.now()).change(
                    format!("version {} ({})", before.number, before.short_digest()),
                    format!(
                        "version {} ({})",
                        reloaded.version.number,
                        reloaded.version.short_digest()
                    ),
                ));
        }
        Ok(Response::new(pb::ReloadResponse {
            config: Some(self.version()),
            changed: reloaded.changed,
            restart_needed: reloaded
                .restart_needed
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }))
    }
}
