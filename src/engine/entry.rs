//! [`Engine::decide`]: the one entry every front door calls. It takes one
//! consistent view of the rules, lets the door validate its message
//! against that view's settings and turn it into items, resolves each
//! item to its limits (a key's plan, a descriptor's rule after
//! `replaces`, a request's own limit), decides (strict plans in Redis,
//! the rest here, synchronously), counts metrics and heavy keys once, and
//! hands the door the answer to render.

use smallvec::SmallVec;

use super::Engine;
use super::ask::{Admitted, Answer, Basis, Call, Item, Kind, Mode, NoPlans, Outcome, Pairs};
use super::view::View;
use crate::config::Live;
use crate::core::clock::Stopwatch;
use crate::core::decision::{Decision, Request};
use crate::core::gcra::Verdict;
use crate::core::source::Source as KeySource;
use crate::limits::rls::{Action, RlsLimit, Rule, descriptor_series};
use crate::metrics::descriptors::Hits;
use crate::metrics::{Outcome as Counted, plan_label};

impl Engine {
    /// Decides one call of a front door.
    ///
    /// `admit` gets the settings in effect (the config's live part) and
    /// how the call's domain is limited, validates the door's message
    /// against them (a refusal is counted and returned as is, nothing
    /// charged) and returns its items and whatever the door needs later; `render` turns the [`Answer`]
    /// into the door's wire message. A call about API keys while the
    /// config defines no plans is refused ([`NoPlans`]). Both see the same settings (the
    /// metrics are counted by them too), and the decisions are made on
    /// the table that came with them, except after a strict plan's wait
    /// for Redis: the view is not held across it, so the call's decisions
    /// are made on the table in effect when Redis answered (an override
    /// that moves a key onto a strict plan meanwhile applies locally to
    /// this call), still validated, counted and rendered with the
    /// settings it was admitted with.
    pub async fn decide<'m, P, X, E, R>(
        &self,
        call: Call<'_>,
        admit: impl FnOnce(&Live, Kind<'_>) -> Result<Admitted<'m, P, X>, E>,
        render: impl FnOnce(&Answer<'_>, X) -> R,
    ) -> Result<R, E>
    where
        P: Pairs + ?Sized + 'm,
        E: From<NoPlans>,
    {
        let started = Stopwatch::start();
        let view = self.view();
        let kind = kind_of(&view, call);
        let configured = !matches!(kind, Kind::Unknown);
        if call.domain.is_none() && view.table().is_planless() {
            self.count_refused(call, false);
            return Err(NoPlans.into());
        }
        let counted = (call, configured, started);
        let (items, extra) = match admit(view.live(), kind) {
            Ok(admitted) => admitted,
            Err(e) => {
                self.count_refused(call, configured);
                return Err(e);
            }
        };
        let strict = match (kind, self.strict.get()) {
            (Kind::Plans, Some(strict))
                if view.table().has_strict() || strict.first_read.is_some() =>
            {
                Some(strict)
            }
            _ => None,
        };
        let jobs = strict.map(|s| (s, self.strict_jobs(&view, &items, s.first_read)));
        if let Some((strict, jobs)) = jobs.filter(|(_, jobs)| jobs.iter().any(Option::is_some)) {
            let before = view.rules();
            drop(view);
            let (view, decided) = self.wait_strict(strict, &before, jobs).await;
            // The settings stay those the call was validated with (the
            // door renders with them too); the table is the one in
            // effect now. Only plan domains wait, and they stay plan
            // domains.
            let live = &before.config.live;
            let outcomes = self.outcomes((&view, live), call, Kind::Plans, &items, &decided);
            return Ok(self.answer((&view, live), counted, outcomes, render, extra));
        }
        let live = view.live();
        let outcomes = self.outcomes((&view, live), call, kind, &items, &[]);
        Ok(self.answer((&view, live), counted, outcomes, render, extra))
    }

    /// Every item's outcome; `decided` holds the decisions strict mode
    /// made (by item).
    fn outcomes<'v, P: Pairs + ?Sized>(
        &self,
        (view, live): (&'v View<'_>, &Live),
        call: Call<'_>,
        kind: Kind<'v>,
        items: &'v [Item<'_, P>],
        decided: &[Option<Decision>],
    ) -> SmallVec<[Outcome<'v>; 1]> {
        match kind {
            Kind::Unknown => SmallVec::new(),
            Kind::Plans => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let strict = decided.get(i).copied().flatten();
                    self.plan_item((view, live), call, item, strict)
                })
                .collect(),
            Kind::Rules(domain) => {
                let rules = domain.resolve(
                    items
                        .iter()
                        .map(|i| i.limit.is_none().then(|| i.entries.pairs())),
                );
                let near = live.envoy.near_limit_percent;
                items
                    .iter()
                    .zip(rules)
                    .map(|(item, rule)| {
                        self.rule_item(view, (call, near), domain.source, item, rule)
                    })
                    .collect()
            }
        }
    }

    /// Counts the call and renders its answer.
    fn answer<'v, X, R>(
        &self,
        (view, live): (&'v View<'_>, &'v Live),
        (call, configured, started): (Call<'_>, bool, Stopwatch),
        outcomes: SmallVec<[Outcome<'v>; 1]>,
        render: impl FnOnce(&Answer<'_>, X) -> R,
        extra: X,
    ) -> R {
        let answer = Answer {
            live,
            table: view.table(),
            outcomes,
        };
        self.count(call, configured, &answer, started);
        render(&answer, extra)
    }

    /// One item of a plan domain (or the native API).
    fn plan_item<'v, P: Pairs + ?Sized>(
        &self,
        (view, live): (&'v View<'_>, &Live),
        call: Call<'_>,
        item: &'v Item<'_, P>,
        strict: Option<Decision>,
    ) -> Outcome<'v> {
        if let Some(own) = &item.limit {
            return self.own_limit(view, call, KeySource::PLANS, item, own).0;
        }
        let Some(key) = item.key else {
            return nothing();
        };
        if item.mode != Mode::Refund {
            let heavy = self.metrics.heavy();
            if heavy.enabled() {
                heavy.note(self.hasher.key_hash(key.as_bytes()));
            }
        }
        let d = match strict {
            Some(d) => d,
            None => {
                let req = self.plan_request(live, key, item);
                match item.mode {
                    Mode::Charge => view.check(&req),
                    Mode::Peek => view.decide(&req, false),
                    Mode::Refund => view.refund(&req),
                    Mode::Report => view.report(&req),
                }
            }
        };
        plan_outcome(view, d)
    }

    /// The engine request for an item with an API key: its entries besides
    /// the key file its cells apart from the key's own.
    pub(super) fn plan_request<'k, P: Pairs + ?Sized>(
        &self,
        live: &Live,
        key: &'k str,
        item: &Item<'_, P>,
    ) -> Request<'k> {
        let key_entry = live.envoy.key_entry.as_str();
        let scope = self
            .hasher
            .entries_hash(item.entries.pairs().filter(|(k, _)| *k != key_entry));
        Request {
            key,
            cost: item.cost,
            scope,
        }
    }

    /// One item of a domain from envoyproxy/ratelimit files, its rule
    /// resolved (`None`: no match, or replaced).
    fn rule_item<'v, P: Pairs + ?Sized>(
        &self,
        view: &'v View<'_>,
        (call, near): (Call<'_>, u8),
        source: KeySource,
        item: &'v Item<'_, P>,
        rule: Option<&'v Rule>,
    ) -> Outcome<'v> {
        if let Some(own) = &item.limit {
            // Counted under the domain's budget, as its rules' limits are.
            let (o, excess) = self.own_limit(view, call, source, item, own);
            self.count_hits((call, near), item, None, (&o, excess));
            return o;
        }
        let Some(rule) = rule else {
            return nothing();
        };
        match &rule.action {
            Action::Unlimited => Outcome {
                decision: Decision::UNLIMITED,
                basis: Basis::Unlimited(rule),
            },
            Action::Limit(limit) => {
                let v = self.count_descriptor(call, source, item, limit, Some(rule));
                let o = Outcome {
                    decision: Decision::of_verdict(&v, limit.limit.capacity()),
                    basis: Basis::Rule {
                        limit,
                        rule: Some(rule),
                    },
                };
                self.count_hits((call, near), item, Some(rule), (&o, v.excess));
                o
            }
        }
    }

    /// An item limited by the limit its request brings, its new cell
    /// counted under `source`, and the charge's units past the limit
    /// ([`Verdict::excess`]). An operator's block of the item's key wins
    /// over such a limit.
    fn own_limit<'v, P: Pairs + ?Sized>(
        &self,
        view: &'v View<'_>,
        call: Call<'_>,
        source: KeySource,
        item: &'v Item<'_, P>,
        own: &'v RlsLimit,
    ) -> (Outcome<'v>, u64) {
        if let Some(d) = item.key.and_then(|k| view.blocked(k)) {
            return (plan_outcome(view, d), 0);
        }
        let v = self.count_descriptor(call, source, item, own, None);
        let o = Outcome {
            decision: Decision::of_verdict(&v, own.limit.capacity()),
            basis: Basis::Rule {
                limit: own,
                rule: None,
            },
        };
        (o, v.excess)
    }

    /// Applies a descriptor limit to the descriptor's own counter (a keyed
    /// hash of the domain and every entry, the values of levels the `rule`
    /// shares replaced by their patterns).
    fn count_descriptor<P: Pairs + ?Sized>(
        &self,
        call: Call<'_>,
        source: KeySource,
        item: &Item<'_, P>,
        limit: &RlsLimit,
        rule: Option<&Rule>,
    ) -> Verdict {
        let domain = call.domain.unwrap_or_default();
        let key = match rule {
            Some(r) if !r.shared.is_empty() => self
                .hasher
                .descriptor_hash(domain, r.counter_entries(item.entries.pairs())),
            _ => self.hasher.descriptor_hash(domain, item.entries.pairs()),
        };
        match item.mode {
            Mode::Refund => self.refund_limit(&limit.limit, key, item.cost),
            mode => {
                let now = self.clock.now();
                let act = mode.act(item.cost);
                self.apply_as(&limit.limit, (key, source), now, item.cost, act)
                    .0
            }
        }
    }

    /// Counts a charged descriptor's hits under its series (the rule's
    /// stats key; for a request's own limit, every entry's key and value)
    /// in [`crate::metrics::descriptors`]. `near`: the near-limit share,
    /// in percent; `excess`: the charge's units past the limit.
    fn count_hits<P: Pairs + ?Sized>(
        &self,
        (call, near): (Call<'_>, u8),
        item: &Item<'_, P>,
        rule: Option<&Rule>,
        (o, excess): (&Outcome<'_>, u64),
    ) {
        if !matches!(item.mode, Mode::Charge | Mode::Report) {
            return;
        }
        let (Some(domain), Basis::Rule { limit, .. }) = (call.domain, o.basis) else {
            return;
        };
        let capacity = limit.limit.capacity();
        let hits = if item.mode == Mode::Report {
            // Never refused: the units of this report past the limit.
            let over = excess.min(item.cost);
            Hits {
                total: item.cost,
                within: item.cost - over,
                over,
                ..Hits::default()
            }
        } else {
            hits(
                &o.decision,
                (item.cost, excess),
                capacity,
                near,
                o.shadowed(),
            )
        };
        let entries = item.entries.pairs();
        match rule.map(|r| &r.stats) {
            Some(stats) => match stats.fixed() {
                Some(name) => self.metrics.rls_hits(domain, name, hits),
                None => self.metrics.rls_hits(domain, &stats.name(entries), hits),
            },
            None => self
                .metrics
                .rls_hits(domain, &descriptor_series(entries), hits),
        }
    }

    /// Counts a refused call.
    fn count_refused(&self, call: Call<'_>, configured: bool) {
        let domain = call.domain.filter(|_| configured);
        self.metrics.refused(call.door, domain);
    }

    /// Counts a decided call: each check of the native doors under its
    /// plan, an Envoy request once under its domain; and its latency.
    fn count(&self, call: Call<'_>, configured: bool, answer: &Answer<'_>, started: Stopwatch) {
        match call.door {
            door if door.is_rls() => {
                let over = answer.over();
                let counted = if over && !answer.live.envoy.shadow {
                    Counted::Denied
                } else if over || answer.shadowed() {
                    Counted::ShadowDenied
                } else {
                    Counted::Allowed
                };
                self.metrics
                    .rls(door, call.domain.filter(|_| configured), counted);
            }
            door => {
                for o in &answer.outcomes {
                    let d = &o.decision;
                    self.metrics.checked(door, plan_label(answer.table, d), d);
                }
            }
        }
        self.metrics.took(call.door, started);
    }
}

/// How `call`'s domain is limited in `view`.
fn kind_of<'v>(view: &'v View<'_>, call: Call<'_>) -> Kind<'v> {
    let Some(domain) = call.domain else {
        return Kind::Plans;
    };
    if view.live().envoy.domains.iter().any(|d| d == domain) {
        return Kind::Plans;
    }
    match view.table().rls().get(domain) {
        Some(d) => Kind::Rules(d),
        None => Kind::Unknown,
    }
}

fn nothing<'v>() -> Outcome<'v> {
    Outcome {
        decision: Decision::UNLIMITED,
        basis: Basis::Nothing,
    }
}

fn plan_outcome<'v>(view: &'v View<'_>, d: Decision) -> Outcome<'v> {
    Outcome {
        basis: Basis::Plan(view.limit(&d)),
        decision: d,
    }
}

/// What a charge of `cost` decided as `d` adds to a descriptor limit of
/// `capacity`'s series, as envoyproxy/ratelimit counts: an allowed
/// charge's hits are within the limit, and those past `near` percent of
/// it near it too; a refused charge's `excess` hits (those past the
/// limit) are over it, and shadow-mode ones if a shadow-mode rule let
/// them through, while the rest of a charge that crossed the limit were
/// near it (none within: the descriptor was answered over).
fn hits(d: &Decision, (cost, excess): (u64, u64), capacity: u64, near: u8, shadowed: bool) -> Hits {
    let mut h = Hits {
        total: cost,
        ..Hits::default()
    };
    let threshold = capacity.saturating_mul(u64::from(near)) / 100;
    if d.allowed {
        h.within = cost;
        let after = capacity.saturating_sub(d.remaining);
        let before = after.saturating_sub(cost);
        if after > threshold {
            h.near = after - before.max(threshold);
        }
    } else {
        h.over = excess;
        if shadowed {
            h.shadow = excess;
        }
        if excess < cost {
            // The count went from `before` (within) past the limit.
            let before = capacity.saturating_add(excess).saturating_sub(cost);
            h.near = capacity.saturating_sub(before.max(threshold));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;
    use std::sync::Arc;

    use futures_util::FutureExt;

    use super::*;
    use crate::core::clock::{ManualClock, NANOS_PER_SEC};
    use crate::core::hash::KeyHasher;
    use crate::limits::rls::{Algorithm, Domain, Level, Matcher, Node, RlsDomains, Unit};
    use crate::limits::{Limit, LimitKind, Plan, Rate, Table};
    use crate::metrics::Api;
    use crate::store::StoreLimits;

    const T0: u64 = 1_795_780_800 * NANOS_PER_SEC;

    fn nz(v: u64) -> NonZeroU64 {
        NonZeroU64::new(v).unwrap()
    }

    fn rule(name: &str, rpu: u32, replaces: &[&str]) -> Node {
        let limit = RlsLimit::new(rpu, Unit::Minute, Algorithm::FixedWindow, None, name.into());
        Node {
            rule: Some(Rule {
                name: name.into(),
                replaces: replaces.iter().map(|r| (*r).to_owned()).collect(),
                ..Rule::plain(Action::Limit(limit.unwrap()))
            }),
            children: Level::default(),
        }
    }

    /// Plan `p`: 1 per second, bursting to 2. Domain `d`: `user` 3 a
    /// minute, replaced by `vip` (10 a minute) when a descriptor matches it.
    fn engine() -> Engine {
        let hasher = KeyHasher::with_secret([3; 16]);
        let rate = Rate::new(nz(1), NANOS_PER_SEC, nz(2)).unwrap();
        let plan = Plan {
            concurrency: None,
            name: "p".into(),
            limits: vec![Limit::new("p", "rate", LimitKind::Rate(rate))],
        };
        let mut root = Level::default();
        assert!(root.insert(Matcher::new("user", None), rule("user", 3, &[])));
        assert!(root.insert(Matcher::new("vip", None), rule("vip", 10, &["user"])));
        let mut domains = RlsDomains::default();
        domains.insert(Domain {
            name: "d".into(),
            root,
            algorithm: Algorithm::FixedWindow,
            files: vec![],
            source: KeySource::of_domain("d"),
        });
        let table = Table::new(vec![plan], "p", [], &hasher)
            .unwrap()
            .with_rls(domains);
        let clock = Arc::new(ManualClock::new(T0));
        Engine::new(table, hasher, StoreLimits::default(), clock)
    }

    /// Decides `items` of API keys (no strict mode: ready at once).
    fn keys<'m>(e: &Engine, items: Vec<Item<'m, ()>>) -> Vec<Decision> {
        let call = Call::keys(Api::Native);
        e.decide(
            call,
            |_, _| Ok::<_, NoPlans>((items.into(), ())),
            |a, ()| a.outcomes.iter().map(|o| o.decision).collect(),
        )
        .now_or_never()
        .expect("no wait without strict mode")
        .expect("admitted")
    }

    #[test]
    fn a_peek_answers_as_the_charge_would_and_changes_nothing() {
        let e = engine();
        let peek = |cost| Item {
            mode: Mode::Peek,
            ..Item::key("k", cost)
        };
        let d = keys(&e, vec![peek(2)]);
        assert!(d[0].allowed && d[0].remaining == 0, "{d:?}");
        assert_eq!(e.store().tracked(), 0, "a peek creates no cell");
        // The burst is all still there: the charge gets what the peek saw.
        assert_eq!(keys(&e, vec![Item::key("k", 2)]), d);
        let d = keys(&e, vec![peek(1)]);
        assert!(!d[0].allowed, "{d:?}");
        assert_eq!(d[0].retry_after, Some(NANOS_PER_SEC));
    }

    /// A door's refusal.
    #[derive(Debug, PartialEq)]
    struct Bad;

    impl From<NoPlans> for Bad {
        fn from(_: NoPlans) -> Self {
            Bad
        }
    }

    #[test]
    fn a_refused_call_is_not_rendered_and_charges_nothing() {
        let e = engine();
        let rendered = std::cell::Cell::new(false);
        let out = e
            .decide(
                Call::keys(Api::Batch),
                |_, _| Err::<Admitted<'_, (), ()>, _>(Bad),
                |_, ()| rendered.set(true),
            )
            .now_or_never()
            .expect("no wait");
        assert_eq!(out, Err(Bad));
        assert!(!rendered.get());
        assert_eq!(e.store().tracked(), 0);
        let text = e.metrics().render();
        let refused = text
            .lines()
            .find(|l| {
                l.starts_with("quotad_checks_total{")
                    && l.contains("api=\"batch\"")
                    && l.contains("result=\"error\"")
            })
            .unwrap_or_default();
        assert!(refused.ends_with(" 1"), "counted once: {text}");
    }

    #[test]
    fn descriptors_resolve_in_their_domain_and_a_replaced_rule_counts_nothing() {
        let e = engine();
        let user: &[(&str, &str)] = &[("user", "a")];
        let vip: &[(&str, &str)] = &[("vip", "x")];
        struct Pairs2<'a>(&'a [(&'a str, &'a str)]);
        impl Pairs for Pairs2<'_> {
            fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
                self.0.iter().copied()
            }
        }
        let (u, v) = (Pairs2(user), Pairs2(vip));
        let item = |entries| Item {
            key: None,
            entries,
            cost: 1,
            mode: Mode::Charge,
            limit: None,
        };
        let decide = |items: Vec<Item<'_, Pairs2<'_>>>| {
            let call = Call {
                door: Api::Rls,
                domain: Some("d"),
            };
            e.decide(
                call,
                |_, kind| {
                    assert!(matches!(kind, Kind::Rules(_)));
                    Ok::<_, NoPlans>((items.into(), ()))
                },
                |a, ()| {
                    a.outcomes
                        .iter()
                        .map(|o| match o.basis {
                            Basis::Rule { rule, .. } => rule.map(|r| r.name.clone()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                },
            )
            .now_or_never()
            .expect("no wait")
            .expect("admitted")
        };
        // Both match: `vip` replaces `user`, whose counter is untouched.
        let names = decide(vec![item(&u), item(&v)]);
        assert_eq!(names, [None, Some("vip".to_owned())]);
        assert_eq!(e.store().tracked(), 1, "only vip's counter");
        // Alone, `user` counts: 3 a minute.
        for _ in 0..3 {
            assert_eq!(decide(vec![item(&u)]), [Some("user".to_owned())]);
        }
        assert_eq!(e.store().tracked(), 2);
        // A limit the request brings matches no rule, and its counter
        // counts under the domain's budget like the rules' own.
        let own = RlsLimit::new(5, Unit::Hour, Algorithm::FixedWindow, None, "o".into());
        let names = decide(vec![Item {
            limit: Some(own.unwrap()),
            ..item(&v)
        }]);
        assert_eq!(names, [None]);
        let budgets = e.store().budgets();
        assert_eq!(budgets.held(KeySource::of_domain("d")), 3);
        assert_eq!(budgets.held(KeySource::PLANS), 0);
    }

    #[test]
    fn a_new_table_and_its_config_are_put_in_effect_together() {
        let e = engine();
        let mut config = crate::config::Config::embedded_default();
        config.live.requests.max_cost = 7;
        let config = Arc::new(config);
        let table = e.view().table().clone();
        e.install(table, Arc::clone(&config));
        let view = e.view();
        assert_eq!(view.live().requests.max_cost, 7);
        assert!(std::ptr::eq(view.config(), &*config));
        // An overrides change keeps the config.
        e.swap_table(view.table().clone());
        assert!(std::ptr::eq(e.view().config(), &*config));
    }

    #[test]
    fn hits_split_as_envoyproxy_ratelimit_counts_them() {
        let allowed = |remaining| Decision {
            allowed: true,
            remaining,
            ..Decision::UNLIMITED
        };
        let denied = Decision {
            allowed: false,
            ..Decision::UNLIMITED
        };
        // Limit 20, near at 80 % (16): 15 -> 17 is 1 past 16 of 2 hits.
        let h = hits(&allowed(3), (2, 0), 20, 80, false);
        assert_eq!((h.total, h.within, h.near, h.over), (2, 2, 1, 0));
        // Already past the threshold: every hit is near.
        let h = hits(&allowed(2), (1, 0), 20, 80, false);
        assert_eq!((h.within, h.near), (1, 1));
        // Below it: none.
        let h = hits(&allowed(10), (5, 0), 20, 80, false);
        assert_eq!((h.within, h.near), (5, 0));
        // Over from the start: every hit, and shadow mode's too when it
        // let them pass.
        let h = hits(&denied, (3, 3), 20, 80, false);
        assert_eq!(
            (h.total, h.over, h.near, h.shadow, h.within),
            (3, 3, 0, 0, 0)
        );
        let h = hits(&denied, (3, 3), 20, 80, true);
        assert_eq!((h.over, h.shadow), (3, 3));
        // 18 -> 23 crosses the limit: 3 over, 20 - 18 = 2 near.
        let h = hits(&denied, (5, 3), 20, 80, true);
        assert_eq!((h.over, h.near, h.shadow, h.within), (3, 2, 3, 0));
        // 14 -> 23: near only from the threshold, 16.
        let h = hits(&denied, (9, 3), 20, 80, false);
        assert_eq!((h.over, h.near), (3, 4));
    }
}
