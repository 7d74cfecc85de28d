//! Envoy RLQS's rules (the config's `rlqs.domains`): for each domain an
//! ordered list of rules, each matching bucket ids by some of their
//! entries and saying what their buckets get: a share of a global rate,
//! DENY_ALL or ALLOW_ALL. A bucket id that matches no rule gets ALLOW_ALL.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A bucket id: its entries, sorted by key, each key once (Envoy sends
/// them as a map). Stored as one boxed slice: a bucket id of one entry
/// costs its strings and a pointer pair, not a tree node.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketEntries(Box<[(Box<str>, Box<str>)]>);

impl BucketEntries {
    /// The entry `key`'s value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The entries, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The same id with entry `key`'s value (if it has one) replaced.
    #[must_use]
    pub fn with_value(&self, key: &str, value: &str) -> Self {
        Self(
            self.0
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        if &**k == key { value.into() } else { v.clone() },
                    )
                })
                .collect(),
        )
    }
}

impl From<BTreeMap<String, String>> for BucketEntries {
    fn from(m: BTreeMap<String, String>) -> Self {
        Self(m.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl FromIterator<(String, String)> for BucketEntries {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(it: I) -> Self {
        it.into_iter().collect::<BTreeMap<_, _>>().into()
    }
}

/// What a rule's buckets get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Each bucket is one global token bucket of `tokens` per
    /// `period_secs`, holding `burst`, shared by the Envoys reporting it.
    Share {
        /// Tokens per period.
        tokens: u64,
        /// The period, in seconds (second, minute, hour or day).
        period_secs: u64,
        /// The bucket's size (default: `tokens`).
        burst: u64,
    },
    /// Blanket DENY_ALL.
    Deny,
    /// Blanket ALLOW_ALL.
    Allow,
}

impl RuleAction {
    /// The rate, per second, of a share rule.
    pub fn rate_per_sec(&self) -> Option<f64> {
        match *self {
            RuleAction::Share {
                tokens,
                period_secs,
                ..
            } => Some(tokens as f64 / period_secs.max(1) as f64),
            RuleAction::Deny | RuleAction::Allow => None,
        }
    }
}

/// One rule of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The entries a bucket id must have, each with this value, or with
    /// any value (`None`, written `"*"`). Entries not named here do not
    /// matter for matching (they still tell buckets apart).
    pub matcher: Vec<(String, Option<String>)>,
    /// What its buckets get.
    pub action: RuleAction,
}

impl Rule {
    /// Whether `bucket` has every entry the rule names.
    pub fn matches(&self, bucket: &BucketEntries) -> bool {
        self.matcher.iter().all(|(k, want)| match bucket.get(k) {
            Some(v) => want.as_deref().is_none_or(|w| w == v),
            None => false,
        })
    }

    /// `tenant=*, tier=gold`, or `{}` for a rule matching everything.
    pub fn describe_match(&self) -> String {
        if self.matcher.is_empty() {
            return "{}".to_owned();
        }
        let mut out = String::new();
        for (i, (k, v)) in self.matcher.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{k}={}", v.as_deref().unwrap_or("*"));
        }
        out
    }

    /// `tenant=*: 100/second, burst 200`, or `tier=blocked: deny`.
    pub fn describe(&self) -> String {
        let what = match self.action {
            RuleAction::Share {
                tokens,
                period_secs,
                burst,
            } => format!("{tokens}/{}, burst {burst}", period_name(period_secs)),
            RuleAction::Deny => "deny".to_owned(),
            RuleAction::Allow => "allow".to_owned(),
        };
        format!("{}: {what}", self.describe_match())
    }
}

/// `second`, `minute`, `hour` or `day`; else `Ns`.
fn period_name(secs: u64) -> String {
    match secs {
        1 => "second".to_owned(),
        60 => "minute".to_owned(),
        3_600 => "hour".to_owned(),
        86_400 => "day".to_owned(),
        n => format!("{n}s"),
    }
}

/// Every domain's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RlqsRules {
    domains: BTreeMap<String, Vec<Rule>>,
}

impl RlqsRules {
    /// Rules by domain, each list in the order they are tried.
    pub fn new(domains: BTreeMap<String, Vec<Rule>>) -> Self {
        Self { domains }
    }

    /// The first rule of `domain` that `bucket` matches, and its index.
    pub fn find(&self, domain: &str, bucket: &BucketEntries) -> Option<(usize, &Rule)> {
        self.domains
            .get(domain)?
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(bucket))
    }

    /// Whether `domain` still has a rule matching exactly as `rule` does
    /// (its action may differ): a reload that drops a rule abandons its
    /// buckets; one that changes its rate does not.
    pub fn has_matcher(&self, domain: &str, rule: &Rule) -> bool {
        self.domains
            .get(domain)
            .is_some_and(|rs| rs.iter().any(|r| r.matcher == rule.matcher))
    }

    /// Rule `index` of `domain`.
    pub fn rule(&self, domain: &str, index: usize) -> Option<&Rule> {
        self.domains.get(domain)?.get(index)
    }

    /// The rules of `domain`.
    pub fn rules(&self, domain: &str) -> &[Rule] {
        self.domains.get(domain).map_or(&[], Vec::as_slice)
    }

    /// The domains, sorted, with their rules.
    pub fn domains(&self) -> impl Iterator<Item = (&str, &[Rule])> {
        self.domains.iter().map(|(d, r)| (d.as_str(), r.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(pairs: &[(&str, &str)]) -> BucketEntries {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn rule(m: &[(&str, Option<&str>)], action: RuleAction) -> Rule {
        Rule {
            matcher: m
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect(),
            action,
        }
    }

    #[test]
    fn rules_match_in_order_by_the_entries_they_name() {
        let share = RuleAction::Share {
            tokens: 100,
            period_secs: 1,
            burst: 200,
        };
        let rules = RlqsRules::new(BTreeMap::from([(
            "shop".to_owned(),
            vec![
                rule(&[("tier", Some("blocked"))], RuleAction::Deny),
                rule(&[("tenant", None)], share),
                rule(&[], RuleAction::Allow),
            ],
        )]));
        let find = |b: &BucketEntries| rules.find("shop", b).map(|(i, _)| i);
        assert_eq!(find(&bucket(&[("tenant", "a"), ("path", "/x")])), Some(1));
        assert_eq!(
            find(&bucket(&[("tenant", "a"), ("tier", "blocked")])),
            Some(0)
        );
        assert_eq!(find(&bucket(&[("tier", "gold")])), Some(2));
        assert_eq!(rules.find("other", &bucket(&[("tenant", "a")])), None);
        assert_eq!(
            rules.rules("shop")[1].describe(),
            "tenant=*: 100/second, burst 200"
        );
        assert_eq!(rules.rules("shop")[2].describe(), "{}: allow");
        assert!(rules.has_matcher("shop", &rule(&[("tenant", None)], RuleAction::Deny)));
        assert!(!rules.has_matcher("shop", &rule(&[("tenant", Some("a"))], share)));
        assert_eq!(share.rate_per_sec(), Some(100.0));
    }
}
