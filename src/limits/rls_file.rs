//! Reading envoyproxy/ratelimit YAML files (`domain` and `descriptors`,
//! one domain per file) into [`RlsDomains`], unchanged files accepted.
//!
//! Two keys are ours: a file-level `algorithm` (`fixed_window`, the
//! default, or `token_bucket`) and, for token buckets, `burst` in a
//! `rate_limit`. Everything else is envoyproxy/ratelimit's format, checked
//! more strictly: unknown keys are errors at every level (envoyproxy
//! accepts a known key at the wrong level), and every error names the
//! file, the line, the field path and the reason:
//!
//! ```text
//! limits/mongo.yaml:9:13: descriptors[1].rate_limit.unit: invalid unit 'fortnight' (expected second, minute, hour, day, week, month or year)
//! ```

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::file::Positive;
use super::rls::{
    Action, Algorithm, Domain, Level, Matcher, Metadata, Node, Part, RlsDomains, RlsLimit, Rule,
    StatsKey, Unit, check_domain,
};
use crate::core::source::Source;
use crate::diag::files::{self, NotRegularFile, read_text};
use crate::diag::{Issue, Seg, one_of, quoted};
use crate::yaml::recover::Items;
use crate::yaml::{ConfigError, Diagnostic, locate, parse_all};

/// Options that apply to every file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RlsOptions {
    /// How limits count unless a file says otherwise.
    pub algorithm: Algorithm,
    /// Whether several files may define one domain (their descriptors are
    /// merged; a descriptor defined twice is still an error). Off, as in
    /// envoyproxy/ratelimit without `MERGE_DOMAIN_CONFIG`.
    pub merge_domains: bool,
}

/// An entry of a limits directory that was not read: it names a limits
/// file (`*.yaml`, `*.yml`) but is (or, for a symlink, points at) no
/// regular file: a FIFO, socket or device. Skipped rather than refused,
/// so a stray entry stops neither the start nor reloads; the daemon
/// warns about it at start and on each reload. A subdirectory is skipped
/// without a word, as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry.
    pub path: PathBuf,
    /// What it is (`a FIFO (named pipe)`, ...).
    pub kind: &'static str,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.path.display(),
            NotRegularFile { kind: self.kind }
        )
    }
}

/// Reads every file in `paths` (a directory stands for its `*.yaml` and
/// `*.yml` files, in name order, dotfiles skipped) into one set of domains.
/// `taken` are domains answered otherwise (by plans), which no file may
/// define.
pub fn load(
    paths: &[PathBuf],
    opts: RlsOptions,
    taken: &[String],
) -> Result<RlsDomains, ConfigError> {
    read(paths, opts, taken).map(|(domains, _)| domains)
}

/// [`load`], and the entries of directories it skipped ([`Skipped`]).
/// A path named directly must be a regular file: anything else is
/// refused, naming it.
pub fn read(
    paths: &[PathBuf],
    opts: RlsOptions,
    taken: &[String],
) -> Result<(RlsDomains, Vec<Skipped>), ConfigError> {
    let mut domains = RlsDomains::default();
    let (files, skipped) = expand(paths)?;
    for file in files {
        let origin = file.display().to_string();
        let text = read_text(&file).map_err(|error| ConfigError::Read {
            path: origin.clone(),
            error,
        })?;
        add(&mut domains, &text, &origin, opts, taken)?;
    }
    Ok((domains, skipped))
}

/// The files `paths` stand for, and the directory entries skipped. The
/// type seen here decides what is skipped; the read checks it again on
/// the opened file, so an entry swapped for a FIFO in between is refused
/// then, never waited on.
fn expand(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<Skipped>), ConfigError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let read_err = |error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        };
        if !std::fs::metadata(path).map_err(read_err)?.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        for entry in files::limits_entries(path).map_err(read_err)? {
            // Dangling symlinks and subdirectories: skipped, as ever.
            match std::fs::metadata(&entry) {
                Ok(m) if m.is_file() => found.push(entry),
                Ok(m) if !m.is_dir() => skipped.push(Skipped {
                    path: entry,
                    kind: files::kind_of(m.file_type()),
                }),
                _ => {}
            }
        }
        if found.is_empty() {
            return Err(ConfigError::Invalid(Box::new(Diagnostic {
                origin: path.display().to_string(),
                line: None,
                column: None,
                path: String::new(),
                reason: "directory has no .yaml or .yml files".to_owned(),
            })));
        }
        files.extend(found);
    }
    Ok((files, skipped))
}

/// Reads one file's text (`origin` names it in messages) into `domains`.
pub fn add(
    domains: &mut RlsDomains,
    text: &str,
    origin: &str,
    opts: RlsOptions,
    taken: &[String],
) -> Result<(), ConfigError> {
    // Every mistake of the file's shape and values, each on its line.
    let raw: FileRaw = parse_all(text, origin)?;
    add_raw(domains, raw, origin, opts, taken).map_err(|issue| locate(text, origin, issue))
}

fn add_raw(
    domains: &mut RlsDomains,
    raw: FileRaw,
    origin: &str,
    opts: RlsOptions,
    taken: &[String],
) -> Result<(), Issue> {
    let at_domain = || vec![Seg::key("domain")];
    let name = match raw.domain {
        Some(d) => d.0,
        None => return Err(Issue::new(vec![], "missing field 'domain'")),
    };
    check_domain(&name).map_err(|why| Issue::new(at_domain(), why))?;
    if taken.contains(&name) {
        return Err(Issue::new(
            at_domain(),
            format!(
                "domain {} is answered by the plans (envoy.domains); remove it there to use this file",
                quoted(&name)
            ),
        ));
    }
    let algorithm = raw.algorithm.map_or(opts.algorithm, |a| a.0);
    let descriptors = raw.descriptors.unwrap_or_default().0;
    match domains.get_mut(&name) {
        Some(existing) if !opts.merge_domains => Err(Issue::new(
            at_domain(),
            format!(
                "domain {} is already defined in {} (set envoy.merge_domains: true to merge files of one domain)",
                quoted(&name),
                existing.files.join(", ")
            ),
        )),
        Some(existing) => {
            if existing.algorithm != algorithm {
                return Err(Issue::new(
                    vec![Seg::key("algorithm")],
                    format!(
                        "domain {} is {} in {}; files of one domain must agree",
                        quoted(&name),
                        existing.algorithm.as_str(),
                        existing.files.join(", ")
                    ),
                ));
            }
            let earlier = existing.files.join(", ");
            let mut b = Builder {
                algorithm,
                earlier: Some(&earlier),
            };
            b.level(&mut existing.root, &descriptors, &mut Vec::new(), &[])?;
            existing.files.push(origin.to_owned());
            Ok(())
        }
        None => {
            let mut b = Builder {
                algorithm,
                earlier: None,
            };
            let mut root = Level::default();
            b.level(&mut root, &descriptors, &mut Vec::new(), &[])?;
            domains.insert(Domain {
                source: Source::of_domain(&name),
                name,
                root,
                algorithm,
                files: vec![origin.to_owned()],
            });
            Ok(())
        }
    }
}

/// Builds descriptor levels, knowing where it is for messages.
struct Builder<'a> {
    algorithm: Algorithm,
    /// Files already merged into this domain, when merging.
    earlier: Option<&'a str>,
}

impl Builder<'_> {
    /// Adds `raws` (at field path `path`) to `level`. `above` are the
    /// descriptors above, outermost first.
    fn level(
        &mut self,
        level: &mut Level,
        raws: &[DescriptorRaw],
        path: &mut Vec<Seg>,
        above: &[Above],
    ) -> Result<(), Issue> {
        path.push(Seg::key("descriptors"));
        for (i, raw) in raws.iter().enumerate() {
            path.push(Seg::Index(i));
            let key = match &raw.key {
                Some(k) if !k.0.is_empty() => k.0.as_str(),
                Some(_) => return Err(Issue::new(with(path, "key"), "must not be empty")),
                None => return Err(Issue::new(path.clone(), "missing field 'key'")),
            };
            let value = raw.value.as_ref().map(|v| v.0.as_str());
            let matcher = Matcher::new(key, value);
            let share = raw.share_threshold.unwrap_or(false);
            if share && !matches!(matcher, Matcher::Wildcard(..)) {
                return Err(Issue::new(
                    with(path, "share_threshold"),
                    format!(
                        "applies only to a wildcard value (one with '*'), but this descriptor's value is {}",
                        value
                            .filter(|v| !v.is_empty())
                            .map_or_else(|| "not set".to_owned(), quoted)
                    ),
                ));
            }
            let mut above = above.to_vec();
            above.push(Above {
                matcher: matcher.clone(),
                value_to_metric: raw.value_to_metric.unwrap_or(false),
                share,
            });
            let rule = raw
                .rate_limit
                .as_ref()
                .map(|r| self.rule(r, raw, path, &above))
                .transpose()?;
            let mut node = Node {
                rule,
                children: Level::default(),
            };
            if let Some(children) = &raw.descriptors {
                self.level(&mut node.children, &children.0, path, &above)?;
            }
            if !level.insert(matcher.clone(), node) {
                return Err(self.duplicate(raws, i, &matcher, path));
            }
            path.pop();
        }
        path.pop();
        Ok(())
    }

    fn duplicate(
        &self,
        raws: &[DescriptorRaw],
        i: usize,
        matcher: &Matcher,
        path: &[Seg],
    ) -> Issue {
        let what = match matcher {
            Matcher::Exact(k, _) | Matcher::Wildcard(k, _) => {
                format!("key {} with this value", quoted(k))
            }
            Matcher::Any(k) => format!("key {} without a value", quoted(k)),
        };
        let first = raws[..i].iter().position(|r| {
            r.key.as_ref().is_some_and(|k| {
                Matcher::new(&k.0, r.value.as_ref().map(|v| v.0.as_str())) == *matcher
            })
        });
        let reason = format!("duplicate descriptor: {what} is already defined at this level");
        match (first, self.earlier) {
            (Some(j), _) => {
                let mut first = path.to_vec();
                if let Some(last) = first.last_mut() {
                    *last = Seg::Index(j);
                }
                let mut issue = Issue::new(with(path, "key"), reason);
                issue.first = Some(with(&first, "key"));
                issue
            }
            (None, Some(files)) => Issue::new(with(path, "key"), format!("{reason} (in {files})")),
            (None, None) => Issue::new(with(path, "key"), reason),
        }
    }

    fn rule(
        &mut self,
        r: &RateLimitRaw,
        raw: &DescriptorRaw,
        path: &[Seg],
        above: &[Above],
    ) -> Result<Rule, Issue> {
        let at = |field: &str| {
            let mut p = with(path, "rate_limit");
            p.push(Seg::key(field));
            p
        };
        let name = r.name.as_ref().map(|n| n.0.clone()).unwrap_or_default();
        let mut replaces = Vec::new();
        for (j, rep) in r.replaces.iter().flatten().enumerate() {
            let mut p = at("replaces");
            p.push(Seg::Index(j));
            p.push(Seg::key("name"));
            match rep.name.as_ref().map(|n| n.0.as_str()) {
                None | Some("") => return Err(Issue::new(p, "must not be empty")),
                Some(n) if n == name => {
                    return Err(Issue::new(
                        p,
                        format!("a limit cannot replace itself ({})", quoted(n)),
                    ));
                }
                Some(n) => replaces.push(n.to_owned()),
            }
        }
        let action = if r.unlimited.unwrap_or(false) {
            // An empty unit is no unit, as in envoyproxy/ratelimit.
            let set = [
                ("unit", r.unit.as_ref().is_some_and(|u| !u.0.is_empty())),
                ("burst", r.burst.is_some()),
                ("unit_multiplier", r.unit_multiplier.is_some()),
            ];
            if let Some((field, _)) = set.into_iter().find(|(_, set)| *set) {
                return Err(Issue::new(
                    at(field),
                    "must not be set when unlimited is true",
                ));
            }
            Action::Unlimited
        } else {
            // Labels name keys only: values in a file can be API keys or
            // addresses, and labels reach callers in RateLimit headers.
            let label = if name.is_empty() {
                let keys: Vec<&str> = above.iter().map(|a| a.matcher.key()).collect();
                keys.join("/")
            } else {
                name.clone()
            };
            Action::Limit(self.limit(r, path, label)?)
        };
        let detailed = raw.detailed_metric.unwrap_or(false);
        let shared: Vec<Option<String>> = above
            .iter()
            .map(|a| match &a.matcher {
                Matcher::Wildcard(_, pattern) if a.share => Some(pattern.clone()),
                _ => None,
            })
            .collect();
        let shared = if shared.iter().any(Option::is_some) {
            shared.into()
        } else {
            Box::default()
        };
        Ok(Rule {
            name,
            replaces,
            shadow: raw.shadow_mode.unwrap_or(false),
            detailed_metric: detailed,
            quota_mode: raw.quota_mode.unwrap_or(false),
            metadata: raw.metadata.clone().filter(|m| !m.is_empty()).map(Arc::new),
            shared,
            stats: StatsKey::new(above.iter().map(|a| a.part(detailed)).collect()),
            action,
        })
    }

    /// A counted `rate_limit`'s limit, named `label` in headers.
    fn limit(&self, r: &RateLimitRaw, path: &[Seg], label: String) -> Result<RlsLimit, Issue> {
        let at = |field: &str| {
            let mut p = with(path, "rate_limit");
            p.push(Seg::key(field));
            p
        };
        let unit = match r
            .unit
            .as_ref()
            .map(|u| u.0.as_str())
            .filter(|u| !u.is_empty())
        {
            Some(u) => Unit::parse(u).ok_or_else(|| {
                Issue::new(
                    at("unit"),
                    format!(
                        "invalid unit {} (expected second, minute, hour, day, week, month or year)",
                        quoted(u)
                    ),
                )
            })?,
            None => {
                return Err(Issue::new(
                    with(path, "rate_limit"),
                    "missing field 'unit' (or set unlimited: true)",
                ));
            }
        };
        let burst = match (r.burst, self.algorithm) {
            (Some(_), Algorithm::FixedWindow) => {
                return Err(Issue::new(
                    at("burst"),
                    "applies only with algorithm: token_bucket (fixed windows have no burst)",
                ));
            }
            (b, _) => b.map(|b| b.0),
        };
        let multiplier = match r.unit_multiplier {
            None => NonZeroU32::MIN,
            Some(m) => NonZeroU32::new(m.0).ok_or_else(|| {
                Issue::new(
                    at("unit_multiplier"),
                    "invalid unit multiplier of 0 (the window is unit_multiplier units; at least 1)",
                )
            })?,
        };
        let rpu = r.requests_per_unit.map_or(0, |n| n.0);
        RlsLimit::per_units(rpu, (unit, multiplier), self.algorithm, burst, label)
            .map_err(|e| Issue::new(at("requests_per_unit"), e.to_string()))
    }
}

/// A descriptor above (or at) the one being read: what its rule's counter
/// and metrics name take from it.
#[derive(Clone)]
struct Above {
    matcher: Matcher,
    value_to_metric: bool,
    share: bool,
}

impl Above {
    /// This level's part of the metrics name, as envoyproxy/ratelimit
    /// forms its stats key: a shared wildcard by its pattern; under
    /// `detailed_metric` (the leaf's), the request's key and value;
    /// else the config's `key_value`, the request's value when
    /// `value_to_metric` asks for it, the wildcard pattern, or the key.
    fn part(&self, detailed: bool) -> Part {
        let joined = |k: &str, v: &str| format!("{k}_{v}");
        match &self.matcher {
            Matcher::Wildcard(k, p) if self.share => Part::Fixed(joined(k, p)),
            m if detailed => Part::Detailed(m.key().to_owned()),
            Matcher::Exact(k, v) => Part::Fixed(joined(k, v)),
            Matcher::Wildcard(k, _) | Matcher::Any(k) if self.value_to_metric => {
                Part::Value(k.clone())
            }
            Matcher::Wildcard(k, p) => Part::Fixed(joined(k, p)),
            Matcher::Any(k) => Part::Fixed(k.clone()),
        }
    }
}

fn with(path: &[Seg], field: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::key(field));
    p
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an envoyproxy/ratelimit limits file (a mapping with domain and descriptors)"
)]
struct FileRaw {
    domain: Option<Text>,
    descriptors: Option<Items<DescriptorRaw>>,
    algorithm: Option<AlgorithmRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a descriptor (a mapping with key)")]
struct DescriptorRaw {
    key: Option<Text>,
    value: Option<Text>,
    rate_limit: Option<RateLimitRaw>,
    descriptors: Option<Items<DescriptorRaw>>,
    shadow_mode: Option<bool>,
    detailed_metric: Option<bool>,
    value_to_metric: Option<bool>,
    share_threshold: Option<bool>,
    quota_mode: Option<bool>,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rate_limit (a mapping)")]
struct RateLimitRaw {
    unit: Option<Text>,
    requests_per_unit: Option<RequestsPerUnit>,
    unlimited: Option<bool>,
    name: Option<Text>,
    replaces: Option<Vec<ReplacesRaw>>,
    burst: Option<Positive>,
    unit_multiplier: Option<RequestsPerUnit>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a replaces entry (a mapping with name)"
)]
struct ReplacesRaw {
    name: Option<Text>,
}

/// A scalar read as text, as envoyproxy/ratelimit's YAML library does for
/// string fields: `value: 8080` is the string `8080`.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
        }
        d.deserialize_str(V)
    }
}

/// `requests_per_unit`: a whole number from 0 to 4294967295.
#[derive(Clone, Copy)]
struct RequestsPerUnit(u32);

impl<'de> Deserialize<'de> for RequestsPerUnit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "expected a whole number from 0 to 4294967295";
        impl Visitor<'_> for V {
            type Value = RequestsPerUnit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number from 0 to 4294967295")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RequestsPerUnit, E> {
                u32::try_from(v)
                    .map(RequestsPerUnit)
                    .map_err(|_| E::custom(format!("{EXPECTED} (got {v})")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RequestsPerUnit, E> {
                u32::try_from(v)
                    .map(RequestsPerUnit)
                    .map_err(|_| E::custom(format!("{EXPECTED} (got {v})")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RequestsPerUnit, E> {
                Err(E::custom(format!("{EXPECTED} (got {v})")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RequestsPerUnit, E> {
                Err(E::custom(format!("{EXPECTED} (got {})", quoted(v))))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RequestsPerUnit, E> {
                Err(E::custom(format!("{EXPECTED} (got {v})")))
            }
        }
        d.deserialize_any(V)
    }
}

/// An `algorithm` value (a file's, or `envoy.algorithm` in the config).
pub(crate) struct AlgorithmRaw(pub Algorithm);

impl<'de> Deserialize<'de> for AlgorithmRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        one_of("algorithm", &s, Algorithm::ALL, Algorithm::as_str)
            .map(AlgorithmRaw)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
