//! envoyproxy/ratelimit's limits: per domain, a tree of descriptors, each
//! level matched against one entry of a request descriptor, and the rule a
//! request descriptor resolves to.
//!
//! Matching follows envoyproxy/ratelimit: at each level the entry's exact
//! `key`/`value` is tried first, then the level's wildcard values (a
//! trailing `*` matches any value with that prefix, first in file order),
//! then the bare `key` (any value). A rule applies only when the request
//! descriptor has exactly as many entries as the rule is deep. Keys and
//! values compare case-sensitively. Unlike envoyproxy/ratelimit, which
//! joins key and value with `_` before comparing, keys and values are
//! compared separately, so `a_b`/`c` and `a`/`b_c` never match each other.
//!
//! Domain names, wherever they come from (`envoy.domains`, a file's
//! `domain:`), are checked by [`check_domain`].
//!
//! The files themselves are read by [`super::rls_file`].

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use crate::core::clock::{NANOS_PER_SEC, Nanos};
use crate::core::hash::name_id;
use crate::core::source::Source;
use crate::limits::header_text::HeaderText;
use crate::limits::{FixedWindow, Limit, LimitKind, Rate, RateError};

/// The longest domain name accepted, in bytes.
pub const MAX_DOMAIN_BYTES: usize = 256;

/// Checks an Envoy RLS domain name: not blank, at most
/// [`MAX_DOMAIN_BYTES`], and printable (no control characters, line
/// separators or bidirectional overrides): names go into summaries, logs
/// and metric labels, which a line break or an escape would forge.
pub fn check_domain(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_DOMAIN_BYTES {
        return Err(format!(
            "a domain is at most {MAX_DOMAIN_BYTES} bytes (this one is {})",
            name.len()
        ));
    }
    if name.chars().any(super::overrides::deceptive) {
        return Err(
            "a domain must be printable: no control characters (line breaks, tabs, escapes), line separators or bidirectional overrides"
                .to_owned(),
        );
    }
    Ok(())
}

/// A time unit of envoyproxy/ratelimit. The discriminants are the numbers
/// of Envoy's `RateLimitResponse.RateLimit.Unit` (and `RateLimitUnit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// 1 second.
    Second = 1,
    /// 60 seconds.
    Minute = 2,
    /// 3600 seconds.
    Hour = 3,
    /// 86400 seconds.
    Day = 4,
    /// 30 days (envoyproxy/ratelimit's month, not a calendar month).
    Month = 5,
    /// 365 days.
    Year = 6,
    /// 7 days, windows starting Thursday 00:00 UTC (the Unix epoch's
    /// weekday), as in envoyproxy/ratelimit.
    Week = 7,
}

impl Unit {
    /// Every unit, in the order messages list them.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's length in seconds: envoyproxy/ratelimit's "divider".
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The unit's length in nanoseconds.
    pub fn nanos(self) -> Nanos {
        self.seconds() * NANOS_PER_SEC
    }

    /// The lowercase name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// A unit by name, case-insensitively (`second`, `MINUTE`).
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(name))
    }

    /// A unit by its Envoy enum number; `None` for `UNKNOWN` (0) and
    /// anything else out of range.
    pub fn from_number(n: i32) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| *u as i32 == n)
    }
}

/// How an envoyproxy/ratelimit limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// envoyproxy/ratelimit's own: a counter per window aligned to the
    /// unit, every hit counted. The default, so answers match.
    #[default]
    FixedWindow,
    /// A smooth token bucket refilling `requests_per_unit` per unit and
    /// holding `burst` (default `requests_per_unit`).
    TokenBucket,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 2] = [Algorithm::FixedWindow, Algorithm::TokenBucket];

    /// The name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::TokenBucket => "token_bucket",
        }
    }
}

/// What a matched descriptor is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `unlimited: true`: always OK, nothing counted.
    Unlimited,
    /// A counted limit.
    Limit(RlsLimit),
}

/// A limit as envoyproxy/ratelimit states it, with the engine limit that
/// enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsLimit {
    /// `requests_per_unit`; 0 is over limit for every hit.
    pub requests_per_unit: u32,
    /// The unit.
    pub unit: Unit,
    /// `unit_multiplier`: the window is this many units (1 unless set).
    pub multiplier: NonZeroU32,
    /// What counts: a fixed-window counter or a token bucket. Its `name`
    /// is the label headers use. A fixed window's `uid` depends only on the
    /// unit, so a descriptor's counter is the same whichever rule (or
    /// request override) applies to it, as in envoyproxy/ratelimit; a
    /// bucket's also on its rate and burst.
    pub limit: Limit,
}

impl RlsLimit {
    /// Builds the limit, with `label` as the engine limit's name (shown in
    /// headers). `burst` applies to token buckets only (default
    /// `requests_per_unit`).
    pub fn new(
        requests_per_unit: u32,
        unit: Unit,
        algorithm: Algorithm,
        burst: Option<NonZeroU64>,
        label: String,
    ) -> Result<Self, RateError> {
        Self::per_units(
            requests_per_unit,
            (unit, NonZeroU32::MIN),
            algorithm,
            burst,
            label,
        )
    }

    /// [`RlsLimit::new`] for a window of `multiplier` units
    /// (`unit_multiplier`): `requests_per_unit` per 5 minutes, say.
    pub fn per_units(
        requests_per_unit: u32,
        (unit, multiplier): (Unit, NonZeroU32),
        algorithm: Algorithm,
        burst: Option<NonZeroU64>,
        label: String,
    ) -> Result<Self, RateError> {
        // A multiplier of 1 keeps the counter every release has used.
        let times = multiplier.to_string();
        let span: &[&str] = if multiplier == NonZeroU32::MIN {
            &[unit.as_str()]
        } else {
            &[unit.as_str(), &times]
        };
        let period = unit.nanos().saturating_mul(u64::from(multiplier.get()));
        // A fixed-window counter is shared by every rule (and override)
        // of its unit on a descriptor, as envoyproxy/ratelimit's cache key
        // is; a bucket's state only makes sense for one rate and burst.
        let mut id = vec!["envoy-rls", algorithm.as_str()];
        id.extend_from_slice(span);
        let (rate, burst_text);
        if algorithm == Algorithm::TokenBucket {
            rate = requests_per_unit.to_string();
            burst_text = burst.map_or_else(|| rate.clone(), |b| b.to_string());
            id.extend_from_slice(&[&rate, &burst_text]);
        }
        let uid = name_id(&id);
        let window = || {
            LimitKind::Window(FixedWindow {
                limit: u64::from(requests_per_unit),
                period,
            })
        };
        let kind = match (algorithm, NonZeroU64::new(u64::from(requests_per_unit))) {
            // A token bucket of 0 is a window of 0: over for every hit.
            (Algorithm::FixedWindow, _) | (Algorithm::TokenBucket, None) => window(),
            (Algorithm::TokenBucket, Some(rate)) => {
                LimitKind::Rate(Rate::new(rate, period, burst.unwrap_or(rate))?)
            }
        };
        Ok(Self {
            requests_per_unit,
            unit,
            multiplier,
            limit: Limit {
                name: label,
                policy: String::new(),
                uid,
                kind,
                strict: false,
                text: HeaderText::default(),
            }
            .rendered(),
        })
    }
}

/// The rule on a descriptor node (its `rate_limit` and flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `rate_limit.name`, empty when not given: echoed in
    /// `current_limit.name` and what `replaces` refers to.
    pub name: String,
    /// Names of the limits this one replaces when both match.
    pub replaces: Vec<String>,
    /// `shadow_mode`: counted and reported, but answered OK.
    pub shadow: bool,
    /// `detailed_metric`: the metrics name the request's every value.
    pub detailed_metric: bool,
    /// `quota_mode`: over this limit, the request is still OK while
    /// another quota-mode descriptor of it is under its limit.
    pub quota_mode: bool,
    /// `metadata`: returned in the response's dynamic metadata when the
    /// descriptor passes.
    pub metadata: Option<Arc<Metadata>>,
    /// Per entry of a matching descriptor, the wildcard pattern that
    /// stands for the entry's value in the counter's identity
    /// (`share_threshold`: every value matching it shares one counter);
    /// empty when no level shares.
    pub shared: Box<[Option<String>]>,
    /// How the rule's metrics series is named.
    pub stats: StatsKey,
    /// Unlimited or a limit.
    pub action: Action,
}

impl Rule {
    /// A rule with `action` and nothing else set (no name, flags,
    /// metadata or sharing; `stats` empty).
    pub fn plain(action: Action) -> Rule {
        Rule {
            name: String::new(),
            replaces: Vec::new(),
            shadow: false,
            detailed_metric: false,
            quota_mode: false,
            metadata: None,
            shared: Box::default(),
            stats: StatsKey::default(),
            action,
        }
    }

    /// The entries that identify a request descriptor's counter under this
    /// rule: its own, with the values of shared levels replaced by their
    /// patterns.
    pub fn counter_entries<'e>(
        &'e self,
        entries: impl Iterator<Item = (&'e str, &'e str)>,
    ) -> impl Iterator<Item = (&'e str, &'e str)> {
        entries.enumerate().map(
            |(i, (k, v))| match self.shared.get(i).and_then(Option::as_deref) {
                Some(pattern) => (k, pattern),
                None => (k, v),
            },
        )
    }
}

/// The metrics name of a descriptor limited by its request's own limit:
/// every entry's `key_value`, joined by `.`, as envoyproxy/ratelimit names
/// an override's stats.
pub fn descriptor_series<'e>(entries: impl Iterator<Item = (&'e str, &'e str)>) -> String {
    let mut out = String::new();
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(k);
        out.push('_');
        out.push_str(v);
    }
    out
}

/// A descriptor's `metadata`: a YAML mapping, kept as JSON values.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// How a rule's metrics series (envoyproxy/ratelimit's stats key, without
/// the domain) is formed from a request descriptor: one part per entry,
/// joined by `.`. A part is the entry's key and, depending on how the
/// level matched and its flags, `_` and a value from the config or the
/// request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsKey {
    /// The series name when no part depends on the request.
    fixed: Option<String>,
    parts: Box<[Part]>,
}

/// One part of a [`StatsKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text from the config: `key`, `key_value` or `key_pattern`.
    Fixed(String),
    /// The key and the request's value (`value_to_metric`): `key_value`,
    /// or `key` alone when the value is empty.
    Value(String),
    /// The key and the request's value, `_` even when the value is empty
    /// (`detailed_metric`).
    Detailed(String),
}

impl StatsKey {
    /// A key from its parts (none depending on the request makes it fixed).
    pub fn new(parts: Vec<Part>) -> StatsKey {
        let fixed = parts.iter().all(|p| matches!(p, Part::Fixed(_))).then(|| {
            parts
                .iter()
                .map(|p| match p {
                    Part::Fixed(t) | Part::Value(t) | Part::Detailed(t) => t.as_str(),
                })
                .collect::<Vec<_>>()
                .join(".")
        });
        StatsKey {
            fixed,
            parts: parts.into(),
        }
    }

    /// The series name when it does not depend on the request.
    pub fn fixed(&self) -> Option<&str> {
        self.fixed.as_deref()
    }

    /// The series name for a request descriptor's entries.
    pub fn name<'e>(&self, entries: impl Iterator<Item = (&'e str, &'e str)>) -> String {
        if let Some(f) = &self.fixed {
            return f.clone();
        }
        let mut out = String::new();
        for (i, (part, (_, value))) in self.parts.iter().zip(entries).enumerate() {
            if i > 0 {
                out.push('.');
            }
            match part {
                Part::Fixed(t) => out.push_str(t),
                Part::Value(k) => {
                    out.push_str(k);
                    if !value.is_empty() {
                        out.push('_');
                        out.push_str(value);
                    }
                }
                Part::Detailed(k) => {
                    out.push_str(k);
                    out.push('_');
                    out.push_str(value);
                }
            }
        }
        out
    }
}

/// One level of a descriptor tree: the nodes below a node (or a domain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Level {
    by_key: HashMap<String, KeyNodes>,
}

/// The nodes of one key at a level. Wildcards are kept per key, in file
/// order: only a wildcard of the entry's own key can match it, so this is
/// envoyproxy's order without scanning other keys' wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyNodes {
    values: HashMap<String, Node>,
    wildcards: Vec<(String, Node)>,
    any: Option<Box<Node>>,
}

/// A descriptor in the tree: its rule, if any, and its children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The rule, when the descriptor has a `rate_limit`.
    pub rule: Option<Rule>,
    /// Nested descriptors.
    pub children: Level,
}

/// How a node is matched at its level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// `key` and exactly `value`.
    Exact(String, String),
    /// `key` and a value matching a pattern with `*`s (`value: prefix*`,
    /// `/api/*/action`, `foo*bar*baz`): each `*` matches zero or more
    /// characters, the rest literally ([`wildcard_matches`]).
    Wildcard(String, String),
    /// `key` with any value (no `value` given).
    Any(String),
}

impl Matcher {
    /// The entry key it matches.
    pub fn key(&self) -> &str {
        match self {
            Matcher::Exact(k, _) | Matcher::Wildcard(k, _) | Matcher::Any(k) => k,
        }
    }

    /// The matcher for a descriptor's `key` and optional `value`, as
    /// envoyproxy/ratelimit reads them: an empty value means any value and
    /// a value with a `*` anywhere is a wildcard pattern.
    pub fn new(key: &str, value: Option<&str>) -> Matcher {
        match value.filter(|v| !v.is_empty()) {
            None => Matcher::Any(key.to_owned()),
            Some(v) if v.contains('*') => Matcher::Wildcard(key.to_owned(), v.to_owned()),
            Some(v) => Matcher::Exact(key.to_owned(), v.to_owned()),
        }
    }
}

/// Whether `value` matches `pattern`, in which each `*` stands for zero or
/// more characters and everything else for itself (so `/api/*/action`
/// matches `/api/v1/action` and `/api//action`, `foo*bar*baz` matches
/// `fooXbarYbaz`). Linear in the value's length times the number of `*`s.
pub fn wildcard_matches(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let mut parts = parts.peekable();
    if parts.peek().is_none() {
        // No `*` at all: the whole value must be the pattern.
        return rest.is_empty();
    }
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            // The last literal run ends the value (after what the runs
            // before it took, leftmost first: that leaves the most room).
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

impl Level {
    /// Whether the level has no nodes.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The node `m` selects, if the level has it.
    pub fn get_mut(&mut self, m: &Matcher) -> Option<&mut Node> {
        match m {
            Matcher::Exact(k, v) => self.by_key.get_mut(k)?.values.get_mut(v),
            Matcher::Any(k) => self.by_key.get_mut(k)?.any.as_deref_mut(),
            Matcher::Wildcard(k, p) => self
                .by_key
                .get_mut(k)?
                .wildcards
                .iter_mut()
                .find(|(pattern, _)| pattern == p)
                .map(|(_, n)| n),
        }
    }

    /// Adds `node` under `m`; false (and nothing added) if the level
    /// already has a node for `m`.
    #[must_use]
    pub fn insert(&mut self, m: Matcher, node: Node) -> bool {
        if self.get_mut(&m).is_some() {
            return false;
        }
        match m {
            Matcher::Exact(k, v) => {
                self.by_key.entry(k).or_default().values.insert(v, node);
            }
            Matcher::Any(k) => self.by_key.entry(k).or_default().any = Some(Box::new(node)),
            Matcher::Wildcard(k, p) => self.by_key.entry(k).or_default().wildcards.push((p, node)),
        }
        true
    }

    /// The node one request entry selects here: exact value, then the
    /// first matching wildcard, then the bare key.
    #[inline]
    fn step(&self, key: &str, value: &str) -> Option<&Node> {
        let nodes = self.by_key.get(key)?;
        if let Some(n) = nodes.values.get(value) {
            return Some(n);
        }
        if let Some((_, n)) = nodes
            .wildcards
            .iter()
            .find(|(pattern, _)| wildcard_matches(pattern, value))
        {
            return Some(n);
        }
        nodes.any.as_deref()
    }

    /// The rule a request descriptor with these entries resolves to: the
    /// node reached by matching every entry in turn, if it is as deep as
    /// the descriptor and has a rule.
    pub fn lookup<'a, 'e>(
        &'a self,
        entries: impl IntoIterator<Item = (&'e str, &'e str)>,
    ) -> Option<&'a Rule> {
        let mut level = self;
        let mut entries = entries.into_iter().peekable();
        while let Some((key, value)) = entries.next() {
            let node = level.step(key, value)?;
            if entries.peek().is_none() {
                return node.rule.as_ref();
            }
            if node.children.is_empty() {
                return None;
            }
            level = &node.children;
        }
        None
    }

    /// Rules in the tree (for summaries).
    pub fn rules(&self) -> usize {
        self.nodes()
            .map(|n| usize::from(n.rule.is_some()) + n.children.rules())
            .sum()
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.by_key.values().flat_map(|k| {
            k.values
                .values()
                .chain(k.wildcards.iter().map(|(_, n)| n))
                .chain(k.any.as_deref())
        })
    }
}

/// One RLS domain: its descriptor tree and how its limits count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// The domain name requests carry.
    pub name: String,
    /// The top-level descriptors.
    pub root: Level,
    /// How its limits (and request overrides) count.
    pub algorithm: Algorithm,
    /// The files it was read from, for summaries and messages.
    pub files: Vec<String>,
    /// The store budget its descriptors' cells count under.
    pub source: Source,
}

impl Domain {
    /// The rule each descriptor matches in this domain, in order, after
    /// `replaces`: a matched rule named in another matched rule's
    /// `replaces` is dropped (`None`), as in envoyproxy/ratelimit.
    /// Descriptors given as `None` (they bring their own limit) match
    /// nothing and replace nothing.
    pub fn resolve<'e, D, I>(&self, descriptors: D) -> Vec<Option<&Rule>>
    where
        D: IntoIterator<Item = Option<I>>,
        I: IntoIterator<Item = (&'e str, &'e str)>,
    {
        let mut rules: Vec<Option<&Rule>> = descriptors
            .into_iter()
            .map(|d| d.and_then(|entries| self.root.lookup(entries)))
            .collect();
        let replaced: Vec<&str> = rules
            .iter()
            .flatten()
            .flat_map(|r| r.replaces.iter().map(String::as_str))
            .collect();
        if !replaced.is_empty() {
            for slot in &mut rules {
                if let Some(rule) = slot
                    && matches!(rule.action, Action::Limit(_))
                    && !rule.name.is_empty()
                    && replaced.contains(&rule.name.as_str())
                {
                    *slot = None;
                }
            }
        }
        rules
    }
}

/// Every domain read from envoyproxy/ratelimit files, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RlsDomains {
    domains: HashMap<String, Domain>,
}

impl RlsDomains {
    /// A domain by name.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// A domain by name, to add to.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Domain> {
        self.domains.get_mut(name)
    }

    /// Adds a domain (replacing one of the same name).
    pub fn insert(&mut self, domain: Domain) {
        self.domains.insert(domain.name.clone(), domain);
    }

    /// Whether there are no domains.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The domains, sorted by name.
    pub fn sorted(&self) -> Vec<&Domain> {
        let mut v: Vec<&Domain> = self.domains.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(rpu: u32, name: &str) -> Node {
        let limit = RlsLimit::new(rpu, Unit::Second, Algorithm::FixedWindow, None, name.into());
        Node {
            rule: Some(Rule {
                name: name.to_owned(),
                ..Rule::plain(Action::Limit(limit.unwrap()))
            }),
            children: Level::default(),
        }
    }

    fn name_of(rule: Option<&Rule>) -> Option<&str> {
        rule.map(|r| r.name.as_str())
    }

    /// A level built from (key, value, node) in order; every insert must
    /// succeed.
    fn level(nodes: Vec<(&str, Option<&str>, Node)>) -> Level {
        let mut l = Level::default();
        for (k, v, n) in nodes {
            assert!(l.insert(Matcher::new(k, v), n), "{k}/{v:?} inserted twice");
        }
        l
    }

    #[test]
    fn exact_then_wildcard_then_key_only() {
        let l = level(vec![
            ("path", None, limited(1, "any")),
            ("path", Some("/api/*"), limited(2, "api")),
            ("path", Some("/api/x"), limited(3, "x")),
            ("path", Some("*"), limited(4, "star")),
        ]);
        assert_eq!(name_of(l.lookup([("path", "/api/x")])), Some("x"));
        assert_eq!(name_of(l.lookup([("path", "/api/y")])), Some("api"));
        // `*` (prefix "") comes before the key-only node, in file order.
        assert_eq!(name_of(l.lookup([("path", "/other")])), Some("star"));
        assert_eq!(name_of(l.lookup([("Path", "/api/x")])), None);
    }

    #[test]
    fn depth_must_match() {
        let child = level(vec![("user", None, limited(5, "user"))]);
        let parent = Node {
            rule: None,
            children: child,
        };
        let l = level(vec![
            ("svc", Some("a"), parent),
            ("ip", None, limited(1, "ip")),
        ]);
        let user = l.lookup([("svc", "a"), ("user", "u1")]);
        assert_eq!(name_of(user), Some("user"));
        assert_eq!(name_of(l.lookup([("svc", "a")])), None);
        assert_eq!(name_of(l.lookup([("ip", "1"), ("user", "u")])), None);
        let deeper = l.lookup([("svc", "a"), ("user", "u"), ("x", "y")]);
        assert_eq!(name_of(deeper), None);
        assert_eq!(name_of(l.lookup([])), None);
    }

    #[test]
    fn duplicates_are_refused() {
        let mut l = level(vec![
            ("k", Some("v"), limited(1, "")),
            ("k", Some(""), limited(1, "")),
            ("k", Some("v*"), limited(1, "")),
        ]);
        assert!(!l.insert(Matcher::new("k", Some("v")), limited(1, "")));
        assert!(!l.insert(Matcher::new("k", None), limited(1, "")));
        assert!(!l.insert(Matcher::new("k", Some("v*")), limited(1, "")));
    }

    #[test]
    fn units_parse_case_insensitively_and_by_number() {
        assert_eq!(Unit::parse("MINUTE"), Some(Unit::Minute));
        assert_eq!(Unit::parse("Year"), Some(Unit::Year));
        assert_eq!(Unit::parse("unknown"), None);
        assert_eq!(Unit::from_number(7), Some(Unit::Week));
        assert_eq!(Unit::from_number(0), None);
        assert_eq!(Unit::Month.seconds(), 2_592_000);
    }

    #[test]
    fn token_bucket_of_zero_is_a_zero_counter() {
        let tb = |rpu| RlsLimit::new(rpu, Unit::Minute, Algorithm::TokenBucket, None, "t".into());
        let zero = tb(0).unwrap();
        let zero_window = FixedWindow {
            limit: 0,
            period: Unit::Minute.nanos(),
        };
        assert_eq!(zero.limit.kind, LimitKind::Window(zero_window));
        assert_eq!(tb(5).unwrap().limit.capacity(), 5);
        let too_fast = RlsLimit::new(
            u32::MAX,
            Unit::Second,
            Algorithm::TokenBucket,
            None,
            "f".into(),
        );
        assert!(too_fast.is_err());
    }

    #[test]
    fn resolve_drops_replaced_limits_and_skips_descriptors_with_their_own() {
        let mut per_user = limited(10, "per_user");
        let mut vip = limited(100, "vip");
        if let Some(rule) = vip.rule.as_mut() {
            rule.replaces = vec!["per_user".into()];
        }
        per_user.children = level(vec![("tier", Some("vip"), vip)]);
        let domain = Domain {
            name: "d".into(),
            root: level(vec![
                ("user", None, per_user),
                ("path", None, limited(5, "path")),
            ]),
            algorithm: Algorithm::FixedWindow,
            files: vec![],
            source: Source::PLANS,
        };
        let user = [("user", "a")];
        let vip_user = [("user", "a"), ("tier", "vip")];
        let path = [("path", "/x")];
        // Alone, the per-user limit applies.
        let rules = domain.resolve([Some(user)]);
        assert_eq!(
            rules.iter().map(|r| name_of(*r)).collect::<Vec<_>>(),
            [Some("per_user")]
        );
        // With the vip descriptor matched too, per_user is replaced.
        let some = |d: &[(&'static str, &'static str)]| Some(d.to_vec());
        let rules = domain.resolve([some(&user), some(&vip_user), some(&path)]);
        let names: Vec<_> = rules.iter().map(|r| name_of(*r)).collect();
        assert_eq!(names, [None, Some("vip"), Some("path")]);
        // A descriptor bringing its own limit matches nothing and
        // replaces nothing.
        let rules = domain.resolve([some(&user), None]);
        let names: Vec<_> = rules.iter().map(|r| name_of(*r)).collect();
        assert_eq!(names, [Some("per_user"), None]);
    }

    #[test]
    fn a_star_matches_zero_or_more_characters_anywhere() {
        let yes = [
            ("value*", "value"),
            ("value*", "value1"),
            ("*", ""),
            ("*", "anything"),
            ("/api/*/action", "/api/v1/action"),
            ("/api/*/action", "/api//action"),
            ("/api/*/action", "/api/a/b/action"),
            ("foo*bar*baz", "foobarbaz"),
            ("foo*bar*baz", "fooXbarYbaz"),
            ("a*b*b", "abb"),
            ("*.png", "x.png"),
            ("a**b", "ab"),
            ("*a*", "a"),
        ];
        for (p, v) in yes {
            assert!(wildcard_matches(p, v), "{p} should match {v:?}");
        }
        let no = [
            ("value*", "valu"),
            ("/api/*/action", "/api/v1/actions"),
            ("/api/*/action", "/apix/action"),
            ("foo*bar*baz", "foobaz"),
            ("foo*bar*baz", "foobarbazz"),
            ("a*b*b", "ab"),
            ("*.png", "x.png.txt"),
            ("*a*", "bcd"),
        ];
        for (p, v) in no {
            assert!(!wildcard_matches(p, v), "{p} should not match {v:?}");
        }
        assert_eq!(
            Matcher::new("k", Some("/api/*/x")),
            Matcher::Wildcard("k".into(), "/api/*/x".into())
        );
        assert_eq!(
            Matcher::new("k", Some("plain")),
            Matcher::Exact("k".into(), "plain".into())
        );
    }
}
