//! The config's `envoy` section: the RLS domains the plans answer, the
//! descriptor entry that carries the API key, and how `rls_files` limits
//! count; its raw form, validation and summary lines (with the domains
//! read from `rls_files`).

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::headers::{HeaderStyle, StyleRaw};
use super::values::NonEmpty;
use crate::limits::rls::{Algorithm, RlsDomains, check_domain};
use crate::limits::rls_file::AlgorithmRaw;

/// The `envoy` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoySettings {
    /// RLS domains this config answers; requests for other domains get OK.
    pub domains: Vec<String>,
    /// The descriptor entry whose value is the API key.
    pub key_entry: String,
    /// How limits from `rls_files` count unless a file says otherwise.
    pub algorithm: Algorithm,
    /// Whether several `rls_files` may define one domain.
    pub merge_domains: bool,
    /// Global shadow mode: every RLS answer is OK; descriptors still
    /// report OVER_LIMIT.
    pub shadow: bool,
    /// Which rate-limit headers answers for domains from `rls_files`
    /// carry: none by default, as envoyproxy/ratelimit without
    /// `LIMIT_RESPONSE_HEADERS_ENABLED`. `draft03` sends exactly its three
    /// fields, as envoyproxy/ratelimit does; `Retry-After` comes only with
    /// the draft-11 fields (`draft11`, `both`). Plan domains follow the
    /// top-level `response_headers`.
    pub response_headers: HeaderStyle,
    /// Global quota mode (envoyproxy/ratelimit's `QUOTA_MODE`): every
    /// descriptor limit of a domain from files is a quota-mode one.
    pub quota_mode: bool,
    /// Whether answers carry `dynamic_metadata` (envoyproxy/ratelimit's
    /// `RESPONSE_DYNAMIC_METADATA`): the request, the passed
    /// descriptors' `metadata` and the quota-mode violations.
    pub dynamic_metadata: bool,
    /// envoyproxy/ratelimit's `NEAR_LIMIT_RATIO`: a descriptor's hits
    /// past this share of its limit count as `near_limit`, in percent.
    pub near_limit_percent: u8,
}

impl Default for EnvoySettings {
    fn default() -> Self {
        Self {
            domains: vec!["quotad".to_owned()],
            key_entry: "api_key".to_owned(),
            algorithm: Algorithm::FixedWindow,
            merge_domains: false,
            shadow: false,
            response_headers: HeaderStyle::Off,
            quota_mode: false,
            dynamic_metadata: false,
            near_limit_percent: 80,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "the envoy section (a mapping)")]
pub(super) struct EnvoyRaw {
    domains: Option<Domains>,
    key_entry: Option<NonEmpty>,
    algorithm: Option<AlgorithmRaw>,
    merge_domains: Option<bool>,
    shadow: Option<bool>,
    response_headers: Option<StyleRaw>,
    quota_mode: Option<bool>,
    response_dynamic_metadata: Option<bool>,
    near_limit_ratio: Option<Ratio>,
}

impl EnvoyRaw {
    /// Whether the section names the plan domains (`domains`, not empty).
    pub(super) fn names_domains(&self) -> bool {
        self.domains.as_ref().is_some_and(|d| !d.0.is_empty())
    }

    /// The section's settings; every value was checked as it was read.
    pub(super) fn build(self) -> EnvoySettings {
        let mut envoy = EnvoySettings::default();
        if let Some(d) = self.domains {
            envoy.domains = d.0;
        }
        if let Some(k) = self.key_entry {
            envoy.key_entry = k.0;
        }
        if let Some(a) = self.algorithm {
            envoy.algorithm = a.0;
        }
        envoy.merge_domains = self.merge_domains.unwrap_or(false);
        envoy.shadow = self.shadow.unwrap_or(false);
        if let Some(s) = self.response_headers {
            envoy.response_headers = s.0;
        }
        envoy.quota_mode = self.quota_mode.unwrap_or(false);
        envoy.dynamic_metadata = self.response_dynamic_metadata.unwrap_or(false);
        if let Some(r) = self.near_limit_ratio {
            envoy.near_limit_percent = r.0;
        }
        envoy
    }
}

impl EnvoySettings {
    /// The summary's `envoy:` line and one line for each domain read from
    /// `rls_files`.
    pub(super) fn summary(&self, rls: &RlsDomains, lines: &mut Vec<String>) {
        let e = self;
        lines.push(format!(
            "envoy: plan domains {}, key entry {}, algorithm {}, merge domains {}, shadow {}, file domains' headers {}, quota mode {}, dynamic metadata {}, near limit {}%",
            e.domains.join(", "),
            e.key_entry,
            e.algorithm.as_str(),
            if e.merge_domains { "on" } else { "off" },
            if e.shadow { "on" } else { "off" },
            e.response_headers.as_str(),
            if e.quota_mode { "on" } else { "off" },
            if e.dynamic_metadata { "on" } else { "off" },
            e.near_limit_percent,
        ));
        for d in rls.sorted() {
            lines.push(format!(
                "  rls domain {}: {} rules, {}, from {}",
                d.name,
                d.root.rules(),
                d.algorithm.as_str(),
                d.files.join(", ")
            ));
        }
    }
}

/// `envoy.near_limit_ratio`: a share from 0 to 1 in hundredths
/// (`0.8`), kept as a whole percentage.
struct Ratio(u8);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        let percent = (v * 100.0).round();
        if !(0.0..=1.0).contains(&v) || (v * 100.0 - percent).abs() > 1e-9 {
            return Err(de::Error::custom(format!(
                "expected a share from 0 to 1 in hundredths, like 0.8 (got {v})"
            )));
        }
        // In 0..=100 by the check above.
        Ok(Ratio(percent as u8))
    }
}

/// `envoy.domains`: a non-empty list of domain names.
struct Domains(Vec<String>);

impl<'de> Deserialize<'de> for Domains {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Domain>::deserialize(d)?;
        if list.is_empty() {
            return Err(de::Error::custom("at least one domain is required"));
        }
        Ok(Domains(list.into_iter().map(|s| s.0).collect()))
    }
}

/// One domain name, checked as it is read (so the message names its
/// index and position) by [`check_domain`].
struct Domain(String);

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_domain(&s).map_err(de::Error::custom)?;
        Ok(Domain(s))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_errors, parse_ok};

    #[test]
    fn envoy_domains_must_be_printable_and_at_most_256_bytes() {
        let base = "plans: { p: {} }\ndefault_plan: p\n";
        let unprintable = "a domain must be printable: no control characters (line breaks, tabs, escapes), line separators or bidirectional overrides";
        assert_errors(&[
            (
                format!("{base}envoy:\n  domains: [ok, \"edge\\nforged: line\"]\n"),
                format!("t.yaml:4:17: envoy.domains[1]: {unprintable}"),
            ),
            (
                format!("{base}envoy:\n  domains: [\"a\\u202eb\"]\n"),
                format!("t.yaml:4:13: envoy.domains[0]: {unprintable}"),
            ),
            (
                format!("{base}envoy:\n  domains: [{}]\n", "d".repeat(257)),
                "t.yaml:4:13: envoy.domains[0]: a domain is at most 256 bytes (this one is 257)"
                    .to_owned(),
            ),
            (
                format!("{base}envoy:\n  domains: [\" \"]\n"),
                "t.yaml:4:13: envoy.domains[0]: must not be empty".to_owned(),
            ),
        ]);
        let c = parse_ok(&format!(
            "{base}envoy: {{ domains: [{}] }}\n",
            "d".repeat(256)
        ));
        assert_eq!(c.live.envoy.domains, ["d".repeat(256)]);
    }
}
