//! What a front door asks the engine and what it gets back, free of any
//! wire format: a [`Call`] (which door, which Envoy domain), the
//! [`Item`]s the door's message comes to, and per item an [`Outcome`]
//! with everything needed to render an answer: the decision, and the
//! limit or rule behind it ([`Basis`]).

use smallvec::SmallVec;

use crate::config::Live;
use crate::core::Act;
use crate::core::decision::Decision;
use crate::limits::rls::{Domain, RlsLimit, Rule};
use crate::limits::{Limit, Table};
use crate::metrics::Api;

/// Who asks, about what.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The front door (the metrics' `api` label).
    pub door: Api,
    /// An Envoy RLS request's domain; `None`: API keys and their plans.
    pub domain: Option<&'a str>,
}

impl Call<'_> {
    /// A call of `door` about API keys and their plans.
    pub fn keys(door: Api) -> Self {
        Self { door, domain: None }
    }
}

/// A call about API keys (`Call::keys`) while the config defines no
/// plans: it serves only the Envoy domains of its limits files. Refused
/// before anything is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the config defines no plans, so API keys have none to be checked against: this quotad serves only the Envoy domains of its limits files (rls_files, --limits); add plans to its config to use the native API"
)]
pub struct NoPlans;

/// How an item's domain is limited, as the engine found it before the
/// door validates the message.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'t> {
    /// API keys and their plans: the native API, and Envoy's plan domains
    /// (`envoy.domains`).
    Plans,
    /// A domain from envoyproxy/ratelimit files.
    Rules(&'t Domain),
    /// A domain quotad does not limit: every descriptor is answered OK.
    Unknown,
}

/// What an item does to its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spend `cost` if every limit has room (cost 0 reports the state).
    Charge,
    /// Answer exactly as [`Mode::Charge`] would, changing nothing (strict
    /// limits are read in Redis, not charged).
    Peek,
    /// Give `cost` back (Envoy's `is_negative_hits`), then report.
    Refund,
    /// Spend `cost` whatever the limits hold (a report of what was really
    /// spent, known only after the work): buckets may go into debt,
    /// quotas past their amount. Strict limits are charged in Redis.
    Report,
}

impl Mode {
    /// What an item of this mode costing `cost` does to a limit's cells:
    /// a charge of 0 (or a peek) only reads, a report forces. A refund
    /// gives back on its own path, then reads.
    pub fn act(self, cost: u64) -> Act {
        match self {
            Mode::Charge if cost > 0 => Act::Commit,
            Mode::Report => Act::Force,
            Mode::Charge | Mode::Peek | Mode::Refund => Act::Dry,
        }
    }
}

/// An Envoy descriptor's entries, as the engine reads them: (key, value)
/// pairs in order.
pub trait Pairs {
    /// The entries.
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)>;
}

/// No entries: an item that is only an API key.
impl Pairs for () {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::empty()
    }
}

/// One check, validated by its door.
#[derive(Debug)]
pub struct Item<'a, P: ?Sized> {
    /// The API key, if the item has one: the native API's key, or a plan
    /// domain's key entry value.
    pub key: Option<&'a str>,
    /// The descriptor's entries (empty for the native API). In a plan
    /// domain, the entries besides the key file the item's cells apart
    /// from the key's own; in a rules domain, they are matched against
    /// the domain's descriptor tree and name its counter.
    pub entries: &'a P,
    /// Units.
    pub cost: u64,
    /// What to do with them.
    pub mode: Mode,
    /// A limit the request brings for this item (Envoy's
    /// `RateLimitOverride`): replaces whatever the config says for it, as
    /// a limit on the descriptor's own counter.
    pub limit: Option<RlsLimit>,
}

impl<'a> Item<'a, ()> {
    /// A charge of `cost` units against API key `key`'s plan.
    pub fn key(key: &'a str, cost: u64) -> Self {
        Self {
            key: Some(key),
            entries: &(),
            cost,
            mode: Mode::Charge,
            limit: None,
        }
    }
}

/// A call's items: one held inline (a unary check allocates nothing for
/// them), more on the heap.
pub type Items<'m, P> = SmallVec<[Item<'m, P>; 1]>;

/// What a door's validation admits: the items, and what the door needs
/// later to render the answer.
pub type Admitted<'m, P, X> = (Items<'m, P>, X);

/// What decided an item, for rendering.
#[derive(Debug, Clone, Copy)]
pub enum Basis<'v> {
    /// No limit applies (no rule matched, a rule replaced by another, a
    /// plan domain's descriptor without the key, an unknown domain): OK.
    Nothing,
    /// An `unlimited` rule.
    Unlimited(&'v Rule),
    /// The key's plan (a blocked key's block, too); the limit is the
    /// deciding one, absent for a plan without limits or a block.
    Plan(Option<&'v Limit>),
    /// A descriptor limit: a rule's, or the request's own (`rule` absent).
    Rule {
        /// The limit.
        limit: &'v RlsLimit,
        /// The rule it comes from.
        rule: Option<&'v Rule>,
    },
}

/// One item's answer.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'v> {
    /// The decision (for a descriptor limit: its verdict, with the
    /// limit's capacity; a shadow-mode rule's denial stays denied here).
    pub decision: Decision,
    /// What decided.
    pub basis: Basis<'v>,
}

impl Outcome<'_> {
    /// Whether a shadow-mode rule turned this item's denial into OK.
    pub fn shadowed(&self) -> bool {
        !self.decision.allowed && self.shadow()
    }

    /// Whether this item is over its limit once shadow mode is applied.
    pub fn over(&self) -> bool {
        !self.decision.allowed && !self.shadow()
    }

    fn shadow(&self) -> bool {
        matches!(self.basis, Basis::Rule { rule: Some(r), .. } if r.shadow)
    }

    /// Whether this item is a quota-mode descriptor: a rule's limit with
    /// `quota_mode`, or any rule's under the global one
    /// (`envoy.quota_mode`, `global`). A request's own limit never is.
    pub fn quota(&self, global: bool) -> bool {
        match self.basis {
            Basis::Rule { rule: Some(r), .. } => global || r.quota_mode,
            _ => false,
        }
    }
}

/// Everything the engine decided for one call, to render from.
#[derive(Debug)]
pub struct Answer<'v> {
    /// The settings in effect for the call (response headers, Envoy
    /// settings): the ones the items were validated against.
    pub live: &'v Live,
    /// The table the decisions name limits of.
    pub table: &'v Table,
    /// One outcome per item, in order (none for an unknown domain).
    pub outcomes: SmallVec<[Outcome<'v>; 1]>,
}

impl Answer<'_> {
    /// Whether the call is over limit (shadow mode applied per rule; the
    /// global `envoy.shadow` is the door's to apply): an item that is not
    /// a quota-mode descriptor is over its limit, or there are quota-mode
    /// descriptors and every one of them is over (as envoyproxy/ratelimit's
    /// `quota_mode`: OK while any quota has room).
    pub fn over(&self) -> bool {
        let global = self.live.envoy.quota_mode;
        let (mut quotas, mut quotas_over) = (0usize, 0usize);
        for o in &self.outcomes {
            if o.quota(global) {
                quotas += 1;
                quotas_over += usize::from(o.over());
            } else if o.over() {
                return true;
            }
        }
        quotas > 0 && quotas == quotas_over
    }

    /// The indices of quota-mode descriptors over their limits.
    pub fn quota_violations(&self) -> impl Iterator<Item = usize> + '_ {
        let global = self.live.envoy.quota_mode;
        self.outcomes
            .iter()
            .enumerate()
            .filter(move |(_, o)| o.quota(global) && o.over())
            .map(|(i, _)| i)
    }

    /// Whether a shadow-mode rule answered OK for an item over its limit.
    pub fn shadowed(&self) -> bool {
        self.outcomes.iter().any(Outcome::shadowed)
    }
}
