//! The limits part of the config file — `default_plan`, `plans` and `keys` —
//! as written (the serde-facing raw types) and as validated ([`LimitsSpec`]).
//!
//! Checks that concern a single value (a name's characters, a positive
//! number, a unit) run while deserializing, so the YAML parser knows where
//! the value is. Checks that relate several values (rate *or* quota,
//! duplicate names, references to plans) run in `build` and come back as
//! an `Issue` ([`crate::diag`]): a reason plus the field path it concerns,
//! which [`crate::config`] turns into a line and column of the file.
//!
//! ```yaml
//! default_plan: free
//! plans:
//!   free:
//!     limits:
//!       - { name: per-second, rate: 10, per: second, burst: 20 }
//!       - { name: daily, quota: 10000, per: day }
//! keys:
//!   "demo-gold-key": { plan: gold }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU64;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::{
    Concurrency, DEFAULT_LEASE_TTL, Limit, LimitKind, MAX_LEASE_TTL, MIN_LEASE_TTL, Plan, Quota,
    Rate, RateError, Table, TableError,
};
use crate::core::clock::{NANOS_PER_SEC, Nanos};
use crate::core::hash::KeyHasher;
use crate::core::window::Window;
/// Plan and limit names are checked as the rest of the crate checks names.
pub use crate::diag::check_name;
use crate::diag::{Issue, Seg, one_of, quoted};
use crate::yaml::recover::{self, Items};

/// The plan name of an override with limits of its own; its limits report
/// as `override/<limit>`. No plan of a file may take it.
pub const OVERRIDE_PLAN: &str = "override";
/// Longest static API key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Most limits one plan may have.
pub const MAX_LIMITS_PER_PLAN: usize = 64;

/// The validated limits of a config file: plans in file order, the default
/// plan and the static key assignments.
///
/// `Debug` prints how many static keys there are, never the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct LimitsSpec {
    /// Name of the plan for keys without a static assignment.
    pub default_plan: String,
    /// The plans, in the order the file lists them.
    pub plans: Vec<Plan>,
    /// Static assignments: (raw API key, plan name), in file order.
    pub keys: Vec<(String, String)>,
}

impl fmt::Debug for LimitsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitsSpec")
            .field("default_plan", &self.default_plan)
            .field("plans", &self.plans)
            .field("keys", &format_args!("<{} static keys>", self.keys.len()))
            .finish()
    }
}

impl LimitsSpec {
    /// Builds the engine's [`Table`], hashing the static keys with `hasher`.
    ///
    /// A validated spec always builds; the `Result` only passes on
    /// [`Table::new`]'s own checks.
    pub fn table(&self, hasher: &KeyHasher) -> Result<Table, TableError> {
        Table::new(
            self.plans.clone(),
            &self.default_plan,
            self.keys.iter().map(|(k, p)| (k.as_str(), p.as_str())),
            hasher,
        )
    }

    /// Whether the file defines no plans: keys have none to be on, and
    /// the config serves only the Envoy domains of its limits files.
    pub fn is_planless(&self) -> bool {
        self.plans.is_empty()
    }

    /// A plan by name.
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }
}

/// A one-line description of a limit for summaries:
/// `per-second 10/second burst 20`, `daily 10000/day`.
pub fn describe_limit(limit: &Limit) -> String {
    let text = describe_kind(limit);
    if limit.strict {
        format!("{text} (strict)")
    } else {
        text
    }
}

/// A description of each limit of `plan`, its concurrency limit last
/// (empty: unlimited).
pub fn describe_plan(plan: &Plan) -> Vec<String> {
    plan.limits
        .iter()
        .map(describe_limit)
        .chain(plan.concurrency.iter().map(|c| describe_concurrency(c)))
        .collect()
}

/// A one-line description of a concurrency limit: `streams 10 at once,
/// lease 30s`.
pub fn describe_concurrency(c: &Concurrency) -> String {
    format!(
        "{} {} at once, lease {}",
        c.name,
        c.slots,
        show_ttl(c.lease_ttl)
    )
}

/// A lease time to live as written: `30s`, else `1500ms`.
fn show_ttl(nanos: Nanos) -> String {
    if nanos.is_multiple_of(NANOS_PER_SEC) {
        format!("{}s", nanos / NANOS_PER_SEC)
    } else {
        format!("{}ms", nanos / 1_000_000)
    }
}

fn describe_kind(limit: &Limit) -> String {
    match &limit.kind {
        LimitKind::Rate(r) => format!(
            "{} {}/{} burst {}",
            limit.name,
            r.rate(),
            period_name(r.period()),
            r.burst()
        ),
        LimitKind::Quota(q) => format!("{} {}/{}", limit.name, q.quota, q.window.as_str()),
        LimitKind::Window(w) => format!(
            "{} {}/{} fixed window",
            limit.name,
            w.limit,
            period_name(w.period)
        ),
    }
}

/// The config-file unit of a rate's period (`second` ... `day`), or the
/// period in nanoseconds when it is not one of them.
fn period_name(period_ns: u64) -> String {
    [Window::Second, Window::Minute, Window::Hour, Window::Day]
        .into_iter()
        .find(|w| w.nominal_seconds() * NANOS_PER_SEC == period_ns)
        .map_or_else(|| format!("{period_ns}ns"), |w| w.as_str().to_owned())
}

// ---------------------------------------------------------------------------
// Leaf values, validated while deserializing.

/// A positive integer (`rate`, `quota`, `burst`, caps): rejects zero,
/// negatives, fractions, strings and booleans with a message saying which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Positive(pub NonZeroU64);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PositiveVisitor)
    }
}

struct PositiveVisitor;

impl PositiveVisitor {
    fn from_u64<E: de::Error>(v: u64) -> Result<Positive, E> {
        NonZeroU64::new(v)
            .map(Positive)
            .ok_or_else(|| E::custom("must be at least 1 (got 0)"))
    }
}

impl<'de> Visitor<'de> for PositiveVisitor {
    type Value = Positive;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a positive integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Positive, E> {
        Self::from_u64(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Positive, E> {
        match u64::try_from(v) {
            Ok(v) => Self::from_u64(v),
            Err(_) => Err(E::custom(format!("must be at least 1 (got {v})"))),
        }
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Positive, E> {
        match u64::try_from(v) {
            Ok(v) => Self::from_u64(v),
            Err(_) => Err(E::custom(format!(
                "{v} is too large (at most {})",
                u64::MAX
            ))),
        }
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Positive, E> {
        match u64::try_from(v) {
            Ok(v) => Self::from_u64(v),
            Err(_) if v < 0 => Err(E::custom(format!("must be at least 1 (got {v})"))),
            Err(_) => Err(E::custom(format!(
                "{v} is too large (at most {})",
                u64::MAX
            ))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Positive, E> {
        // YAML has no integer bigger than u64 here: huge literals and
        // exponents arrive as floats.
        if !v.is_finite() || v.fract() != 0.0 {
            Err(E::custom(format!("expected a whole number (got {v})")))
        } else if v >= 18_446_744_073_709_551_616.0 {
            Err(E::custom(format!(
                "number is too large (at most {})",
                u64::MAX
            )))
        } else if v < 1.0 {
            Err(E::custom(format!("must be at least 1 (got {v})")))
        } else {
            Err(E::custom(format!(
                "expected a plain integer such as 10 (got the float {v})"
            )))
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Positive, E> {
        Err(E::custom(format!("expected a positive integer (got {v})")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Positive, E> {
        if v.trim().parse::<u64>().is_ok() {
            Err(E::custom(format!(
                "expected a number, not the string {} (remove the quotes)",
                quoted(v)
            )))
        } else {
            Err(E::custom(format!(
                "expected a positive integer (got {})",
                quoted(v)
            )))
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Positive, E> {
        Err(E::custom("expected a positive integer (got nothing)"))
    }

    fn visit_none<E: de::Error>(self) -> Result<Positive, E> {
        self.visit_unit()
    }
}

/// A plan or limit name that passed [`check_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name(pub String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_name(&s).map_err(de::Error::custom)?;
        Ok(Name(s))
    }
}

/// A static API key: non-empty, at most 256 bytes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiKey(pub String);

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("key must not be empty"));
        }
        if s.len() > MAX_KEY_BYTES {
            // Never echo the key: error messages end up in logs.
            return Err(de::Error::custom(format!(
                "key is {} bytes long (at most {MAX_KEY_BYTES})",
                s.len()
            )));
        }
        Ok(ApiKey(s))
    }
}

/// The `per` of a limit: any calendar unit; rates accept only second to day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Per(pub Window);

impl Per {
    /// A unit name, any case: second, minute, hour, day, week or month.
    pub(crate) fn parse(s: &str) -> Result<Per, String> {
        let w = match s.to_ascii_lowercase().as_str() {
            "second" => Window::Second,
            "minute" => Window::Minute,
            "hour" => Window::Hour,
            "day" => Window::Day,
            "week" => Window::Week,
            "month" => Window::Month,
            _ => {
                return Err(format!(
                    "unknown unit {} (expected second, minute, hour, day, week or month)",
                    quoted(s)
                ));
            }
        };
        Ok(Per(w))
    }
}

impl<'de> Deserialize<'de> for Per {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Per::parse(&s).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Raw (as written) structure.

/// A mapping read into a `Vec` in file order. Duplicate keys are kept (the
/// parser passes them through) so validation can report them with a line.
/// An entry found wrong is reported and the rest read
/// ([`crate::yaml::recover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entries<K, V>(pub Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Entries<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<K, V>(std::marker::PhantomData<(K, V)>);

        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<K, V> {
            type Value = Entries<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // Entries take part in reading past mistakes: one found
                // wrong is reported and left out.
                let mut out = Vec::new();
                for i in 0.. {
                    match recover::next_entry(&mut map, i)? {
                        None => break,
                        Some(Some(entry)) => out.push(entry),
                        Some(None) => {}
                    }
                }
                Ok(Entries(out))
            }

            // `plans:` with nothing after it.
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
        }

        d.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

/// `plans:` as written.
pub(crate) type PlansRaw = Entries<Name, PlanRaw>;
/// `keys:` as written.
pub(crate) type KeysRaw = Entries<ApiKey, KeyRaw>;

/// One plan as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a plan (a mapping with a 'limits' list)"
)]
pub(crate) struct PlanRaw {
    #[serde(default)]
    limits: Items<LimitRaw>,
}

/// One limit as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a limit (a mapping with name, rate or quota, per; or name, concurrency)"
)]
pub(crate) struct LimitRaw {
    name: Name,
    rate: Option<Positive>,
    quota: Option<Positive>,
    per: Option<Per>,
    burst: Option<Positive>,
    mode: Option<ModeRaw>,
    concurrency: Option<Positive>,
    lease_ttl: Option<LeaseTtl>,
}

/// A concurrency limit's `lease_ttl`: `30s`, `5m`, 1 s ..= 1 h.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseTtl(Nanos);

impl LeaseTtl {
    /// `nanos` if it is a lease time to live (1 s ..= 1 h).
    pub(crate) fn new(nanos: Nanos) -> Result<Self, String> {
        if (MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&nanos) {
            Ok(Self(nanos))
        } else {
            Err(format!(
                "lease_ttl must be between 1s and 1h (got {})",
                show_ttl(nanos)
            ))
        }
    }
}

impl<'de> Deserialize<'de> for LeaseTtl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let d = crate::diag::parse_duration(&text).map_err(de::Error::custom)?;
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        LeaseTtl::new(nanos).map_err(de::Error::custom)
    }
}

impl LimitRaw {
    /// A limit given field by field (an operator's override, not a file),
    /// with each value checked as the file reader checks it; an error
    /// names the field (`name`, `rate`, `quota`, `per`, `burst`).
    pub(crate) fn from_parts(
        name: &str,
        (rate, quota, concurrency): (Option<u64>, Option<u64>, Option<u64>),
        per: &str,
        burst: Option<u64>,
        strict: bool,
        lease_ttl: Option<Nanos>,
    ) -> Result<LimitRaw, (&'static str, String)> {
        let positive = |field: &'static str, v: Option<u64>| match v {
            None => Ok(None),
            Some(v) => NonZeroU64::new(v)
                .map(|n| Some(Positive(n)))
                .ok_or((field, "must be at least 1 (got 0)".to_owned())),
        };
        check_name(name).map_err(|e| ("name", e))?;
        Ok(LimitRaw {
            name: Name(name.to_owned()),
            rate: positive("rate", rate)?,
            quota: positive("quota", quota)?,
            per: match per {
                "" if concurrency.is_some() => None,
                per => Some(Per::parse(per).map_err(|e| ("per", e))?),
            },
            burst: positive("burst", burst)?,
            mode: strict.then_some(ModeRaw(true)),
            concurrency: positive("concurrency", concurrency)?,
            lease_ttl: lease_ttl
                .map(LeaseTtl::new)
                .transpose()
                .map_err(|e| ("lease_ttl", e))?,
        })
    }
}

/// Validates limits given as [`LimitRaw`]s into plan `plan`, as a plan
/// of a file would be; an error's path starts at `limits`.
pub(crate) fn plan_of(plan: &str, limits: Vec<LimitRaw>) -> Result<Plan, Issue> {
    build_plan(
        plan,
        &PlanRaw {
            limits: Items(limits),
        },
    )
    .map_err(|mut issue| {
        // `plans.<plan>.limits[i]...` → `limits[i]...`
        issue.path.drain(..2.min(issue.path.len()));
        issue
    })
}

/// A limit's `mode`: `sync` (decided locally; the default) or `strict`
/// (decided in Redis on every check).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModeRaw(bool);

impl<'de> Deserialize<'de> for ModeRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let name = |strict| if strict { "strict" } else { "sync" };
        one_of("mode", &s, [false, true], name)
            .map(ModeRaw)
            .map_err(de::Error::custom)
    }
}

/// One static key assignment as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a key assignment (a mapping with 'plan')"
)]
pub(crate) struct KeyRaw {
    plan: String,
}

// ---------------------------------------------------------------------------
// Validation.

/// Validates the three limits keys of a config file into a [`LimitsSpec`],
/// or every issue found (each plan's first, each key's).
///
/// A file with plans must name the default one. A file without plans (nor
/// keys, nor a default plan) is [`LimitsSpec::is_planless`]: it serves
/// only the Envoy domains of its limits files, which the config checks it
/// has.
pub(crate) fn build(
    default_plan: Option<String>,
    plans: Option<PlansRaw>,
    keys: Option<KeysRaw>,
) -> Result<LimitsSpec, Vec<Issue>> {
    let plans_raw = plans.map(|p| p.0).unwrap_or_default();
    let keys_raw = keys.map(|k| k.0).unwrap_or_default();
    let mut issues = Vec::new();

    let (plans, seen) = build_plans(&plans_raw, &mut issues);
    let written = |name: &str| seen.contains_key(name);
    let mut names: Vec<&str> = Vec::with_capacity(plans_raw.len());
    for (n, _) in &plans_raw {
        if !names.contains(&n.0.as_str()) {
            names.push(&n.0);
        }
    }

    let default_plan = match (default_plan, names.is_empty()) {
        // No plans: the config serves only the Envoy domains of its
        // limits files (the config checks it has some) and refuses keys.
        (None, true) => Some(String::new()),
        (None, false) => {
            issues.push(Issue::new(
                vec![Seg::key("default_plan")],
                "missing field 'default_plan' (required when plans are defined)",
            ));
            None
        }
        (Some(name), true) => {
            issues.push(Issue::new(
                vec![Seg::key("default_plan")],
                format!("unknown plan {} (the file defines no plans)", quoted(&name)),
            ));
            None
        }
        (Some(name), false) => {
            if !written(&name) {
                issues.push(Issue::new(
                    vec![Seg::key("default_plan")],
                    unknown_plan(&name, &names),
                ));
            }
            Some(name)
        }
    };

    let mut keys = Vec::with_capacity(keys_raw.len());
    let mut seen_keys: HashMap<&str, ()> = HashMap::new();
    for (key, raw) in &keys_raw {
        let entry = vec![Seg::key("keys"), Seg::key(key.0.clone())];
        if seen_keys.insert(key.0.as_str(), ()).is_some() {
            let mut second = entry.clone();
            second[1] = Seg::Key {
                name: key.0.clone(),
                nth: 1,
            };
            issues.push(Issue::duplicate(second, entry, "key is assigned twice"));
            continue;
        }
        if names.is_empty() {
            issues.push(Issue::new(
                vec![Seg::key("keys")],
                "keys are assigned to plans, and this file defines none",
            ));
            break;
        }
        if !written(&raw.plan) {
            let mut path = entry;
            path.push(Seg::key("plan"));
            issues.push(Issue::new(path, unknown_plan(&raw.plan, &names)));
            continue;
        }
        keys.push((key.0.clone(), raw.plan.clone()));
    }

    match default_plan {
        Some(default_plan) if issues.is_empty() => Ok(LimitsSpec {
            default_plan,
            plans,
            keys,
        }),
        _ => Err(issues),
    }
}

/// Validates each plan; the plans valid, every name written (how often),
/// and each plan's issue in `issues`.
fn build_plans<'a>(
    plans_raw: &'a [(Name, PlanRaw)],
    issues: &mut Vec<Issue>,
) -> (Vec<Plan>, HashMap<&'a str, usize>) {
    let mut plans = Vec::with_capacity(plans_raw.len());
    // Every plan written, valid or not: a reference to a plan with a
    // mistake of its own is not a second mistake.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (name, raw) in plans_raw {
        let nth = seen.entry(name.0.as_str()).or_insert(0);
        if *nth > 0 {
            issues.push(Issue::duplicate(
                vec![
                    Seg::key("plans"),
                    Seg::Key {
                        name: name.0.clone(),
                        nth: *nth,
                    },
                ],
                vec![Seg::key("plans"), Seg::key(name.0.clone())],
                format!("plan {} is defined twice", quoted(&name.0)),
            ));
            *nth += 1;
            continue;
        }
        *nth += 1;
        if name.0 == OVERRIDE_PLAN {
            issues.push(Issue::new(
                vec![Seg::key("plans"), Seg::key(name.0.clone())],
                format!(
                    "the plan name '{}' is reserved for operators' overrides with limits of their own",
                    name.0
                ),
            ));
            continue;
        }
        match build_plan(&name.0, raw) {
            Ok(plan) => plans.push(plan),
            Err(issue) => issues.push(issue),
        }
    }
    (plans, seen)
}

fn unknown_plan(name: &str, names: &[&str]) -> String {
    format!(
        "unknown plan {} (defined plans: {})",
        quoted(name),
        names.join(", ")
    )
}

fn build_plan(plan: &str, raw: &PlanRaw) -> Result<Plan, Issue> {
    let base = vec![Seg::key("plans"), Seg::key(plan), Seg::key("limits")];
    if raw.limits.0.len() > MAX_LIMITS_PER_PLAN {
        return Err(Issue::new(
            base,
            format!(
                "too many limits: {} (at most {MAX_LIMITS_PER_PLAN} per plan)",
                raw.limits.0.len()
            ),
        ));
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(raw.limits.0.len());
    let mut concurrency: Option<std::sync::Arc<Concurrency>> = None;
    for (i, l) in raw.limits.0.iter().enumerate() {
        let at = |field: Option<&str>| {
            let mut p = base.clone();
            p.push(Seg::Index(i));
            if let Some(f) = field {
                p.push(Seg::key(f));
            }
            p
        };
        if let Some(j) = raw.limits.0[..i].iter().position(|x| x.name.0 == l.name.0) {
            let mut first = base.clone();
            first.extend([Seg::Index(j), Seg::key("name")]);
            return Err(Issue {
                path: at(Some("name")),
                reason: format!("limit {} is defined twice in this plan", quoted(&l.name.0)),
                at_key: false,
                first: Some(first),
            });
        }
        if let Some(slots) = l.concurrency {
            if concurrency.is_some() {
                return Err(Issue::new(
                    at(Some("concurrency")),
                    "a plan has at most one concurrency limit",
                ));
            }
            concurrency = Some(build_concurrency(plan, l, slots.0, &at)?.into());
            continue;
        }
        if l.lease_ttl.is_some() {
            return Err(Issue::new(
                at(Some("lease_ttl")),
                "lease_ttl applies only to concurrency limits",
            ));
        }
        let Some(per) = l.per else {
            return Err(Issue::new(
                at(None),
                if l.rate.is_some() || l.quota.is_some() {
                    "missing field 'per'"
                } else {
                    NEEDS_A_KIND
                },
            ));
        };
        let kind = match (l.rate, l.quota) {
            (Some(_), Some(_)) => {
                return Err(Issue::new(
                    at(Some("quota")),
                    "a limit has either rate or quota, not both",
                ));
            }
            (None, None) => {
                return Err(Issue::new(at(None), NEEDS_A_KIND));
            }
            (Some(rate), None) => LimitKind::Rate(build_rate(rate.0, l, per, &at)?),
            (None, Some(quota)) => {
                if l.burst.is_some() {
                    return Err(Issue::new(
                        at(Some("burst")),
                        "burst applies only to rate limits",
                    ));
                }
                LimitKind::Quota(Quota {
                    quota: quota.0,
                    window: per.0,
                })
            }
        };
        let mut limit = Limit::new(plan, &l.name.0, kind);
        limit.strict = l.mode.is_some_and(|m| m.0);
        limits.push(limit);
    }
    Ok(Plan {
        name: plan.to_owned(),
        limits,
        concurrency,
    })
}

/// What a limit with neither rate, quota nor concurrency is told.
const NEEDS_A_KIND: &str = "a limit needs either rate (a token bucket), quota (a calendar window) or concurrency (slots held at once)";

/// A concurrency limit as written: slots and a lease time to live, and
/// nothing of a rate's or quota's.
fn build_concurrency(
    plan: &str,
    l: &LimitRaw,
    slots: NonZeroU64,
    at: &dyn Fn(Option<&str>) -> Vec<Seg>,
) -> Result<Concurrency, Issue> {
    let stray = [
        ("rate", l.rate.is_some()),
        ("quota", l.quota.is_some()),
        ("per", l.per.is_some()),
        ("burst", l.burst.is_some()),
        ("mode", l.mode.is_some()),
    ];
    if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
        return Err(Issue::new(
            at(Some(field)),
            format!("a concurrency limit has no {field} (only name, concurrency and lease_ttl)"),
        ));
    }
    let slots = u32::try_from(slots.get()).map_err(|_| {
        Issue::new(
            at(Some("concurrency")),
            format!("concurrency {slots} is more than {} slots", u32::MAX),
        )
    })?;
    let ttl = l.lease_ttl.map_or(DEFAULT_LEASE_TTL, |t| t.0);
    Ok(Concurrency::new(plan, &l.name.0, slots, ttl))
}

fn build_rate(
    rate: NonZeroU64,
    l: &LimitRaw,
    per: Per,
    at: &dyn Fn(Option<&str>) -> Vec<Seg>,
) -> Result<Rate, Issue> {
    let unit = per.0;
    if matches!(unit, Window::Week | Window::Month) {
        return Err(Issue::new(
            at(Some("per")),
            format!(
                "a rate cannot be per {} (use second, minute, hour or day, or a quota for weeks and months)",
                unit.as_str()
            ),
        ));
    }
    let period = unit.nominal_seconds() * NANOS_PER_SEC;
    let burst = l.burst.map_or(rate, |b| b.0);
    Rate::new(rate, period, burst).map_err(|e| match e {
        RateError::TooFast { rate, .. } => Issue::new(
            at(Some("rate")),
            format!(
                "rate {rate} per {} is faster than one token per nanosecond",
                unit.as_str()
            ),
        ),
        RateError::TooLong { rate, burst } => Issue::new(
            at(Some(if l.burst.is_some() { "burst" } else { "rate" })),
            format!(
                "burst {burst} at {rate} per {} takes more than 500 years to refill",
                unit.as_str()
            ),
        ),
    })
}

#[cfg(test)]
mod tests;
