//! The limits part of the config file (`default_plan`, `plans`, `keys`,
//! read by [`crate::limits::file`]) as the config sees it: the checks
//! that relate it to other sections (strict limits need Redis, static
//! keys must fit `requests.max_key_bytes`) and its summary lines (plans
//! and their limits, the number of static keys, never the keys).

use crate::diag::{Issue, Seg};
use crate::limits::file::{self, LimitsSpec};

/// A strict limit is decided in Redis: without Redis it could not be.
pub(super) fn check_strict_has_redis(limits: &LimitsSpec, have_redis: bool) -> Result<(), Issue> {
    if have_redis {
        return Ok(());
    }
    for plan in &limits.plans {
        if let Some(i) = plan.limits.iter().position(|l| l.strict) {
            return Err(Issue::new(
                vec![
                    Seg::key("plans"),
                    Seg::key(plan.name.clone()),
                    Seg::key("limits"),
                    Seg::Index(i),
                    Seg::key("mode"),
                ],
                "strict limits are decided in Redis: add a redis section (or use mode: sync)",
            ));
        }
    }
    Ok(())
}

/// A static key longer than callers may send (`max_key_bytes`) could
/// never match.
pub(super) fn check_keys_fit(limits: &LimitsSpec, max_key_bytes: usize) -> Result<(), Issue> {
    if let Some((key, _)) = limits.keys.iter().find(|(k, _)| k.len() > max_key_bytes) {
        let mut issue = Issue::new(
            vec![Seg::key("keys"), Seg::key(key.clone())],
            format!(
                "key is {} bytes long, more than requests.max_key_bytes ({max_key_bytes}), so no request could use it",
                key.len(),
            ),
        );
        issue.at_key = true;
        return Err(issue);
    }
    Ok(())
}

/// The summary's `plans:` line, one line per plan, and the `static keys:`
/// count.
pub(super) fn summary(l: &LimitsSpec, lines: &mut Vec<String>) {
    if l.is_planless() {
        lines.push(
            "plans: none (only the Envoy domains of the limits files are served; calls about API keys get FAILED_PRECONDITION)"
                .to_owned(),
        );
        return;
    }
    lines.push(format!(
        "plans: {} (default: {})",
        l.plans.len(),
        l.default_plan
    ));
    for plan in &l.plans {
        let described = file::describe_plan(plan);
        let limits = if described.is_empty() {
            "unlimited".to_owned()
        } else {
            described.join("; ")
        };
        lines.push(format!("  {}: {limits}", plan.name));
    }
    lines.push(format!("static keys: {}", l.keys.len()));
}
