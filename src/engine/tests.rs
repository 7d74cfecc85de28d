//! The engine's unit tests: plan decisions, multi-limit atomicity under
//! races, the store's cap and overflow, descriptor limits, resets.

use std::num::NonZeroU64;

use std::sync::Arc;

use super::view::waits_longer;
use super::*;
use crate::core::clock::{ManualClock, NANOS_PER_SEC};
use crate::core::decision::DenyReason;
use crate::core::decision::PlanId;
use crate::core::window::Window;
use crate::core::{gcra, quota};
use crate::limits::LimitKind;
use crate::limits::{Plan, Quota, Rate};

const T0: Nanos = 1_795_780_800 * NANOS_PER_SEC; // 2026-11-27T12:00:00Z

fn nz(v: u64) -> NonZeroU64 {
    NonZeroU64::new(v).unwrap()
}

fn rate(plan: &str, name: &str, r: u64, b: u64) -> Limit {
    let rate = Rate::new(nz(r), NANOS_PER_SEC, nz(b)).unwrap();
    Limit::new(plan, name, LimitKind::Rate(rate))
}

fn quota(plan: &str, name: &str, q: u64, window: Window) -> Limit {
    Limit::new(
        plan,
        name,
        LimitKind::Quota(Quota {
            quota: nz(q),
            window,
        }),
    )
}

fn limiter(limits: Vec<Limit>, max_cells: usize) -> (Engine, Arc<ManualClock>) {
    let hasher = KeyHasher::with_secret([9; 16]);
    let plans = vec![
        Plan {
            concurrency: None,
            name: "p".into(),
            limits,
        },
        Plan {
            concurrency: None,
            name: "open".into(),
            limits: vec![],
        },
    ];
    let table = Table::new(plans, "p", [("vip", "open")], &hasher).unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let l = Engine::new(table, hasher, StoreLimits { max_cells }, clock.clone());
    (l, clock)
}

impl Engine {
    /// One descriptor limit's charge for the cells filed under `key`, as
    /// the RLS door's items make it (a cost of 0 only reads).
    fn check_limit(&self, limit: &Limit, key: u64, cost: u64, source: KeySource) -> Verdict {
        let now = self.clock.now();
        self.apply_as(limit, (key, source), now, cost, Mode::Charge.act(cost))
            .0
    }
}

fn req(key: &str, cost: u64) -> Request<'_> {
    Request::new(key, cost)
}

/// `threads` threads each make `each` cost-1 checks of `key` at once;
/// returns how many were admitted.
fn hammer(l: &Engine, threads: usize, each: usize, key: &str) -> u64 {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| (0..each).filter(|_| l.check(&req(key, 1)).allowed).count() as u64))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

#[test]
fn a_denial_by_a_later_limit_refunds_the_earlier_ones() {
    let (l, _) = limiter(
        vec![rate("p", "rate", 10, 20), quota("p", "q", 12, Window::Day)],
        100,
    );
    assert!(l.check(&req("k", 10)).allowed);
    // The bucket has 10 left and would allow 5; the quota (2 left) denies.
    let d = l.check(&req("k", 5));
    assert!(!d.allowed);
    assert_eq!(l.view().limit(&d).unwrap().name, "q");
    assert_eq!(d.remaining, 2);
    // Spending the last 2 of the quota is allowed; a dry run of the
    // bucket then shows 8 left: the denied check took nothing from it.
    let d = l.check(&req("k", 2));
    assert!(d.allowed);
    assert_eq!(d.remaining, 0, "closest limit is the quota");
    let snap = l.view();
    let bucket = &snap.table().plan(PlanId(0)).limits[0];
    let (v, _) = l.apply(
        bucket,
        (l.hasher.key_hash(b"k"), KeySource::PLANS),
        l.now(),
        0,
        false,
    );
    assert_eq!(v.remaining, 8);
}

#[test]
fn denial_reports_the_longest_wait() {
    let (l, _) = limiter(
        vec![rate("p", "rate", 1, 1), quota("p", "q", 1, Window::Day)],
        100,
    );
    assert!(l.check(&req("k", 1)).allowed);
    let d = l.check(&req("k", 1));
    assert!(!d.allowed);
    assert_eq!(l.view().limit(&d).unwrap().name, "q");
    assert_eq!(d.retry_after, Some(12 * 3_600 * NANOS_PER_SEC));
    assert_eq!(d.reason, Some(DenyReason::Limited));
    let d = l.check(&req("k", 2));
    assert_eq!(d.reason, Some(DenyReason::CostExceedsCapacity));
    assert_eq!(d.retry_after, None);
}

#[test]
fn allowed_reports_the_limit_closest_to_exhaustion() {
    let (l, _) = limiter(
        vec![
            rate("p", "rate", 100, 100),
            quota("p", "q", 10, Window::Hour),
        ],
        100,
    );
    let d = l.check(&req("k", 1));
    assert_eq!(l.view().limit(&d).unwrap().name, "q");
    assert_eq!((d.limit, d.remaining), (10, 9));
}

#[test]
fn plan_without_limits_is_unlimited() {
    let (l, _) = limiter(vec![rate("p", "rate", 1, 1)], 100);
    let d = l.check(&req("vip", u64::MAX));
    assert_eq!(
        d.plan
            .map(|p| l.view().table().plan(p).name.clone())
            .as_deref(),
        Some("open")
    );
    assert_eq!(Decision { plan: None, ..d }, Decision::UNLIMITED);
    assert_eq!(l.store().tracked(), 0);
}

#[test]
fn a_full_store_keeps_keys_charged_twice_and_sends_one_shot_newcomers_to_overflow() {
    let (l, _) = limiter(vec![rate("p", "rate", 1, 3)], 2);
    for k in ["a", "a", "b", "b"] {
        assert!(l.check(&req(k, 1)).allowed);
    }
    assert_eq!(l.store().tracked(), 2);
    // Newcomers asking once cannot displace a key charged twice: they
    // share one overflow bucket of burst 3.
    for k in ["c", "d", "e"] {
        assert!(l.check(&req(k, 1)).allowed, "{k}");
    }
    assert!(!l.check(&req("f", 1)).allowed);
    // Three charges went to the overflow bucket, four checks were
    // judged there; the denial charged nothing.
    assert_eq!(l.store().overflowed(), 3);
    assert_eq!(l.store().overflow_checks(), 4);
    assert_eq!(l.store().displaced().refused, 4);
    // Existing keys keep their own buckets (one token left each).
    assert!(l.check(&req("a", 1)).allowed);
    assert!(!l.check(&req("b", 2)).allowed);
    // Two real cells plus the one overflow cell.
    assert_eq!(l.store().tracked(), 3);
}

#[test]
fn a_new_key_displaces_the_cheapest_cell_and_what_it_held_is_counted() {
    let (l, clock) = limiter(vec![quota("p", "q", 100, Window::Day)], 3);
    for _ in 0..3 {
        assert!(l.check(&req("busy", 1)).allowed);
    }
    assert!(l.check(&req("once", 7)).allowed);
    clock.advance(1_000_000);
    assert!(l.check(&req("newer", 1)).allowed);
    assert!(l.store().is_full());
    // "once" and "newer" were charged once each: the newer goes.
    let d = l.check(&req("new", 1));
    assert!(d.allowed && d.remaining == 99, "{d:?}");
    let lost = l.store().displaced();
    assert_eq!((lost.counters, lost.units, lost.refused), (1, 1, 0));
    assert_eq!(l.store().overflow_checks(), 0);
    assert_eq!(l.check(&req("busy", 0)).remaining, 97, "kept");
    assert_eq!(l.check(&req("once", 0)).remaining, 93, "kept");
    // A full window over holds nothing: it goes first, at no loss.
    clock.advance(86_400 * NANOS_PER_SEC);
    assert!(l.check(&req("later", 1)).allowed);
    let lost = l.store().displaced();
    assert_eq!((lost.counters, lost.units), (2, 1));
    assert_eq!(l.store().tracked(), 3);
}

#[test]
fn a_key_that_keeps_asking_wins_a_cell_from_one_charged_less() {
    let (l, _) = limiter(vec![rate("p", "rate", 1, 10)], 1);
    for _ in 0..3 {
        assert!(l.check(&req("old", 1)).allowed);
    }
    // The overflow bucket (burst 10) serves it meanwhile.
    assert!(l.check(&req("new", 1)).allowed);
    assert!(l.check(&req("new", 1)).allowed);
    assert_eq!(l.store().overflowed(), 2);
    // Its third ask matches the old key's three charges.
    let d = l.check(&req("new", 1));
    assert!(d.allowed && d.remaining == 9, "its own bucket: {d:?}");
    assert_eq!(l.store().overflowed(), 2);
    assert_eq!(l.store().displaced().buckets, 1);
}

#[test]
fn budgets_keep_a_flood_through_one_domain_off_another_domains_cells() {
    let (l, _) = limiter(vec![], 10);
    let w = window(100);
    let (shop, flood) = (
        KeySource::of_domain("limiter-test-shop"),
        KeySource::of_domain("limiter-test-flood"),
    );
    for key in 0..3 {
        assert!(l.check_limit(&w, key, 1, shop).allowed);
    }
    // A one-shot flood through another domain fills the rest, then
    // only displaces its own cells: the shop's stay, each at 1, though
    // they were charged no more often than the flood's.
    for key in 1_000..3_000 {
        assert!(l.check_limit(&w, key, 1, flood).allowed);
    }
    assert_eq!(l.store().budgets().held(shop), 3);
    assert_eq!(l.store().budgets().held(flood), 7);
    for key in 0..3 {
        assert_eq!(l.check_limit(&w, key, 0, shop).remaining, 99, "{key}");
    }
    // A new shop key, under its share (5 of 10), takes a flood cell.
    assert!(l.check_limit(&w, 10, 1, shop).allowed);
    assert_eq!(l.store().budgets().held(shop), 4);
    assert_eq!(l.store().overflow_checks(), 0);
}

fn window(limit: u64) -> Limit {
    let period = 60 * NANOS_PER_SEC;
    let kind = LimitKind::Window(crate::limits::FixedWindow { limit, period });
    Limit::new("rls", "w", kind)
}

#[test]
fn fixed_windows_count_refused_hits_in_their_own_cell() {
    let (l, _) = limiter(vec![], 10);
    let w = window(3);
    // A first hit larger than the limit is refused, and counted.
    assert!(!l.check_limit(&w, 7, 5, KeySource::PLANS).allowed);
    assert_eq!(l.store().tracked(), 1);
    assert!(!l.check_limit(&w, 7, 1, KeySource::PLANS).allowed);
    // A peek counts nothing and creates nothing.
    assert!(l.check_limit(&w, 8, 0, KeySource::PLANS).allowed);
    assert_eq!(l.store().tracked(), 1);
    // A refund gives back to the own cell only.
    let v = l.refund_limit(&w, 7, 6);
    assert!(v.allowed);
    assert_eq!(v.remaining, 3);
    // Limit 0 counts its hits too (a peek of it is over once one was).
    assert!(l.check_limit(&window(0), 9, 0, KeySource::PLANS).allowed);
    assert!(!l.check_limit(&window(0), 9, 1, KeySource::PLANS).allowed);
    assert_eq!(l.store().tracked(), 2);
    assert!(!l.check_limit(&window(0), 9, 0, KeySource::PLANS).allowed);
}

#[test]
fn refused_fixed_window_hits_never_fill_the_shared_overflow_counter() {
    let (l, _) = limiter(vec![], 1);
    let w = window(2);
    // Charged twice: no newcomer asking once displaces it.
    assert!(l.check_limit(&w, 1, 1, KeySource::PLANS).allowed);
    assert!(l.check_limit(&w, 1, 1, KeySource::PLANS).allowed);
    assert!(l.store().is_full());
    // New descriptors share one overflow counter of limit 2; refused
    // hits (too big for the limit) are not added to it.
    for key in 100..110 {
        assert!(
            !l.check_limit(&w, key, 3, KeySource::PLANS).allowed,
            "{key}"
        );
    }
    assert!(l.check_limit(&w, 200, 1, KeySource::PLANS).allowed);
    assert!(l.check_limit(&w, 201, 1, KeySource::PLANS).allowed);
    assert!(!l.check_limit(&w, 202, 1, KeySource::PLANS).allowed);
    // Another limit of the same unit has its own overflow counter.
    assert!(l.check_limit(&window(5), 203, 1, KeySource::PLANS).allowed);
    assert_eq!(l.store().overflowed(), 3);
}

#[test]
fn sweep_drops_idle_cells_and_frees_the_cap() {
    let (l, clock) = limiter(
        vec![
            rate("p", "rate", 10, 10),
            quota("p", "q", 100, Window::Minute),
        ],
        4,
    );
    assert!(l.check(&req("a", 5)).allowed);
    assert!(l.check(&req("b", 5)).allowed);
    assert_eq!(l.store().tracked(), 4);
    // Half a second later the buckets are full again but the minute's
    // window is still open.
    clock.advance(NANOS_PER_SEC / 2);
    let r = l.sweep();
    assert_eq!((r.buckets, r.quotas), (2, 0));
    assert_eq!(l.store().tracked(), 2);
    clock.advance(60 * NANOS_PER_SEC);
    let r = l.sweep();
    assert_eq!(r.quotas, 2);
    assert_eq!(l.store().tracked(), 0);
    assert!(l.check(&req("c", 1)).allowed);
    assert_eq!(l.store().overflowed(), 0);
}

#[test]
fn refund_gives_units_back() {
    let (l, _) = limiter(vec![rate("p", "rate", 1, 10)], 100);
    assert!(l.check(&req("k", 10)).allowed);
    assert!(!l.check(&req("k", 1)).allowed);
    let d = l.view().refund(&req("k", 4));
    assert_eq!(d.remaining, 4);
    assert!(l.check(&req("k", 4)).allowed);
}

#[test]
fn swapped_table_applies_to_the_next_check() {
    let (l, _) = limiter(vec![rate("p", "rate", 1, 1)], 100);
    assert!(l.check(&req("k", 1)).allowed);
    assert!(!l.check(&req("k", 1)).allowed);
    let hasher = *l.hasher();
    let plans = vec![Plan {
        concurrency: None,
        name: "p".into(),
        limits: vec![],
    }];
    l.swap_table(Table::new(plans, "p", [], &hasher).unwrap());
    assert!(l.check(&req("k", 1)).allowed);
}

#[test]
fn denials_peeks_and_refunds_create_no_cells() {
    let (l, _) = limiter(
        vec![rate("p", "rate", 1, 2), quota("p", "q", 5, Window::Month)],
        100,
    );
    for i in 0..50 {
        let key = format!("k{i}");
        // Cost above the burst: denied without a cell.
        assert!(!l.check(&req(&key, 3)).allowed);
        // A peek and a refund of an unknown key.
        assert!(l.check(&req(&key, 0)).allowed);
        l.view().refund(&req(&key, 1));
    }
    assert_eq!(l.store().tracked(), 0);
    assert_eq!(l.store().cells_in_maps(), 0);
    // A quota denial on a two-limit plan creates nothing either.
    assert!(l.check(&req("a", 2)).allowed);
    assert_eq!(l.store().tracked(), 2);
    assert!(!l.check(&req("a", 1)).allowed);
    assert_eq!(l.store().tracked(), 2);
}

#[test]
fn concurrent_checks_on_one_key_admit_exactly_the_burst() {
    let (l, _) = limiter(
        vec![
            rate("p", "rate", 1, 1_000),
            quota("p", "q", 100_000, Window::Day),
        ],
        100,
    );
    let admitted = hammer(&l, 4, 1_000, "hot");
    // The clock does not move: exactly the burst passes, and the quota
    // counted exactly what passed (refunds of raced charges included).
    assert_eq!(admitted, 1_000);
    let snap = l.view();
    let q = &snap.table().plan(PlanId(0)).limits[1];
    let (v, _) = l.apply(
        q,
        (l.hasher.key_hash(b"hot"), KeySource::PLANS),
        l.now(),
        0,
        false,
    );
    assert_eq!(v.remaining, 100_000 - 1_000);
}

/// The quota comes first, so when threads race for the bucket's last
/// tokens the loser's quota charge must be refunded: whatever the
/// interleaving, the quota counts exactly what was admitted.
#[test]
fn lost_races_refund_the_earlier_limits_exactly() {
    let (l, _) = limiter(
        vec![
            quota("p", "q", 100_000, Window::Day),
            rate("p", "rate", 1, 1_000),
        ],
        100,
    );
    let admitted = hammer(&l, 4, 2_000, "hot");
    assert_eq!(admitted, 1_000);
    let snap = l.view();
    let q = &snap.table().plan(PlanId(0)).limits[0];
    let (v, _) = l.apply(
        q,
        (l.hasher.key_hash(b"hot"), KeySource::PLANS),
        l.now(),
        0,
        false,
    );
    assert_eq!(v.remaining, 100_000 - admitted);
}

#[test]
fn refunds_never_refill_the_overflow_bucket() {
    let (l, _) = limiter(vec![rate("p", "rate", 1, 5)], 1);
    for _ in 0..3 {
        assert!(l.check(&req("a", 1)).allowed);
    }
    // Store full: "b" and "c" share the overflow bucket (burst 5).
    assert!(l.check(&req("b", 5)).allowed);
    assert!(!l.check(&req("c", 1)).allowed);
    // "c" returning units it never spent must not refill it.
    l.view().refund(&req("c", 2));
    assert!(!l.check(&req("c", 1)).allowed);
}

#[test]
fn sweeping_during_checks_keeps_the_cell_count_exact() {
    let (l, clock) = limiter(vec![rate("p", "rate", 1_000, 1)], 1_000_000);
    let l = Arc::new(l);
    std::thread::scope(|s| {
        let checker = {
            let l = Arc::clone(&l);
            let clock = Arc::clone(&clock);
            s.spawn(move || {
                for i in 0..20_000u64 {
                    l.check(&req(&format!("k{}", i % 5_000), 1));
                    if i % 100 == 0 {
                        clock.advance(1_000_000);
                    }
                }
            })
        };
        let sweeper = {
            let l = Arc::clone(&l);
            s.spawn(move || {
                for _ in 0..200 {
                    l.sweep();
                }
            })
        };
        checker.join().unwrap();
        sweeper.join().unwrap();
    });
    assert_eq!(l.store().tracked(), l.store().cells_in_maps());
    clock.advance(NANOS_PER_SEC);
    l.sweep();
    assert_eq!(l.store().tracked(), 0);
    assert_eq!(l.store().cells_in_maps(), 0);
}

#[test]
fn scopes_file_cells_apart_under_the_same_plan() {
    let (l, _) = limiter(vec![rate("p", "rate", 1, 1)], 100);
    assert!(l.check(&req("k", 1)).allowed);
    assert!(!l.check(&req("k", 1)).allowed);
    let scoped = Request {
        scope: 42,
        ..req("k", 1)
    };
    assert!(l.check(&scoped).allowed);
    assert!(!l.check(&scoped).allowed);
    // The plan is the key's: "vip" is unlimited whatever the scope.
    assert!(
        l.check(&Request {
            scope: 42,
            ..req("vip", 9)
        })
        .allowed
    );
}

/// A sequential model of a plan: each limit's state per key, decided
/// with the same pure `decide` functions, orchestrated the obvious way.
struct Model {
    limits: Vec<Limit>,
    /// (key, limit) → bucket arrival time.
    tat: std::collections::HashMap<(u8, usize), Nanos>,
    /// (key, limit, window) → units used.
    used: std::collections::HashMap<(u8, usize, u64), u64>,
}

impl Model {
    fn check(&mut self, key: u8, cost: u64, now: Nanos) -> (bool, u64, Option<Nanos>, usize) {
        let verdicts: Vec<Verdict> = self
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| match &l.kind {
                LimitKind::Rate(r) => {
                    let tat = self.tat.get(&(key, i)).copied().unwrap_or(0);
                    gcra::decide(r, tat, now, cost).0
                }
                LimitKind::Quota(q) => {
                    let span = q.window.span(now);
                    let used = self.used.get(&(key, i, span.index)).copied().unwrap_or(0);
                    quota::decide(q, used, span, now, cost).0
                }
                LimitKind::Window(_) => unreachable!("plans hold no fixed windows"),
            })
            .collect();
        let denied: Vec<usize> = (0..verdicts.len())
            .filter(|&i| !verdicts[i].allowed)
            .collect();
        if let Some(&first) = denied.first() {
            let mut worst = first;
            for &i in &denied[1..] {
                if waits_longer(verdicts[i].retry_after, verdicts[worst].retry_after) {
                    worst = i;
                }
            }
            let v = verdicts[worst];
            return (false, v.remaining, v.retry_after, worst);
        }
        for (i, l) in self.limits.iter().enumerate() {
            match &l.kind {
                LimitKind::Rate(r) => {
                    let tat = self.tat.get(&(key, i)).copied().unwrap_or(0);
                    if let (_, Some(next)) = gcra::decide(r, tat, now, cost) {
                        self.tat.insert((key, i), next);
                    }
                }
                LimitKind::Quota(q) => {
                    let span = q.window.span(now);
                    let e = self.used.entry((key, i, span.index)).or_insert(0);
                    *e += cost;
                }
                LimitKind::Window(_) => unreachable!("plans hold no fixed windows"),
            }
        }
        let mut closest = 0;
        for i in 1..verdicts.len() {
            if verdicts[i].remaining < verdicts[closest].remaining {
                closest = i;
            }
        }
        let v = verdicts[closest];
        (true, v.remaining, v.retry_after, closest)
    }
}

impl Model {
    /// A report: every limit charged whatever it holds; the answer is the
    /// limit with the fewest units left (then the longest wait, the most
    /// over, the first): (remaining, retry_after, limit, over).
    fn report(&mut self, key: u8, cost: u64, now: Nanos) -> (u64, Option<Nanos>, usize, u64) {
        let mut verdicts = Vec::new();
        for (i, l) in self.limits.iter().enumerate() {
            let v = match &l.kind {
                LimitKind::Rate(r) => {
                    let tat = self.tat.entry((key, i)).or_insert(0);
                    *tat = (*tat).max(now) + r.emission(cost);
                    gcra::after(r, *tat, now)
                }
                LimitKind::Quota(q) => {
                    let span = q.window.span(now);
                    let used = self.used.entry((key, i, span.index)).or_insert(0);
                    *used += cost;
                    quota::counted(q.quota.get(), *used, span.end - now)
                }
                LimitKind::Window(_) => unreachable!("plans hold no fixed windows"),
            };
            verdicts.push(v);
        }
        let mut best = 0;
        for (i, v) in verdicts.iter().enumerate().skip(1) {
            let b = verdicts[best];
            let closer = if v.remaining != b.remaining {
                v.remaining < b.remaining
            } else if v.retry_after != b.retry_after {
                waits_longer(v.retry_after, b.retry_after)
            } else {
                v.excess > b.excess
            };
            if closer {
                best = i;
            }
        }
        let v = verdicts[best];
        (v.remaining, v.retry_after, best, v.excess)
    }
}

proptest::proptest! {
    /// With peeks and reports among the checks, the limiter still
    /// decides exactly like the model: a peek answers as the charge would
    /// and changes nothing (the model does not move, and the limiter's
    /// next answers still match it), a report charges every limit
    /// whatever it holds.
    #[test]
    fn peeks_change_nothing_and_reports_charge_all_as_the_model_says(
        ops in proptest::collection::vec((0u8..3, 0u64..30, 0u64..3_000, 0u8..3), 1..200),
    ) {
        let limits = vec![
            rate("p", "fast", 5, 3),
            quota("p", "minute", 12, Window::Minute),
            rate("p", "slow", 1, 6),
        ];
        let (l, clock) = limiter(limits.clone(), 1_000);
        let mut model = Model { limits, tat: Default::default(), used: Default::default() };
        for (key, cost, dt_ms, mode) in ops {
            clock.advance(dt_ms * 1_000_000);
            let name = format!("key{key}");
            let r = req(&name, cost.max(1));
            let now = l.now();
            match mode {
                0 => {
                    let d = l.check(&r);
                    let (allowed, remaining, retry, _) = model.check(key, cost.max(1), now);
                    proptest::prop_assert_eq!((d.allowed, d.remaining, d.retry_after), (allowed, remaining, retry));
                }
                1 => {
                    let (tat, used) = (model.tat.clone(), model.used.clone());
                    let tracked = l.store().tracked();
                    let d = l.view().decide(&r, false);
                    let mut seen = Model { limits: model.limits.clone(), tat, used };
                    let (allowed, remaining, retry, _) = seen.check(key, cost.max(1), now);
                    proptest::prop_assert_eq!((d.allowed, d.remaining, d.retry_after), (allowed, remaining, retry));
                    // Asked again, the same answer; no cell made.
                    proptest::prop_assert_eq!(l.view().decide(&r, false), d);
                    proptest::prop_assert_eq!(l.store().tracked(), tracked);
                }
                _ => {
                    let d = l.view().report(&r);
                    let (remaining, retry, policy, over) = model.report(key, cost.max(1), now);
                    proptest::prop_assert!(d.allowed);
                    proptest::prop_assert_eq!((d.remaining, d.retry_after, d.over), (remaining, retry, over));
                    proptest::prop_assert_eq!(d.policy.map(|p| p.limit as usize), Some(policy));
                }
            }
        }
    }
}

proptest::proptest! {
    /// The limiter decides exactly like the sequential model over any
    /// schedule of checks, peeks, clock moves and sweeps: rollback,
    /// cell creation and sweeping never change an answer.
    #[test]
    fn limiter_matches_a_sequential_model(
        ops in proptest::collection::vec((0u8..4, 0u64..6, 0u64..3_000, proptest::bool::ANY), 1..200),
    ) {
        let limits = vec![
            rate("p", "fast", 5, 3),
            quota("p", "minute", 12, Window::Minute),
            rate("p", "slow", 1, 6),
        ];
        let (l, clock) = limiter(limits.clone(), 1_000);
        let mut model = Model { limits, tat: Default::default(), used: Default::default() };
        for (key, cost, dt_ms, sweep) in ops {
            clock.advance(dt_ms * 1_000_000);
            if sweep {
                l.sweep();
            }
            let name = format!("key{key}");
            let d = l.check(&req(&name, cost));
            let (allowed, remaining, retry, policy) = model.check(key, cost, l.now());
            proptest::prop_assert_eq!(d.allowed, allowed);
            proptest::prop_assert_eq!(d.remaining, remaining);
            proptest::prop_assert_eq!(d.retry_after, retry);
            proptest::prop_assert_eq!(d.policy.map(|p| p.limit as usize), Some(policy));
        }
        proptest::prop_assert_eq!(l.store().tracked(), l.store().cells_in_maps());
    }
}

#[test]
fn a_new_window_takes_the_place_and_standing_of_its_keys_last_one_in_a_full_store() {
    // A store of 3 cells, full of one key charged often and two one-shot
    // keys; a new minute: the established key's new counter takes its
    // own old one's place (no sample, no overflow) and its standing, so
    // one-shot newcomers still cannot take it.
    let (l, clock) = limiter(vec![quota("p", "m", 100, Window::Minute)], 3);
    for _ in 0..5 {
        assert!(l.check(&req("steady", 1)).allowed);
    }
    assert!(l.check(&req("once", 1)).allowed);
    assert!(l.check(&req("twice", 1)).allowed);
    assert!(l.store().is_full());
    clock.advance(60 * NANOS_PER_SEC);
    let d = l.check(&req("steady", 1));
    assert!(d.allowed && d.remaining == 99, "a new window: {d:?}");
    let s = l.store();
    assert_eq!((s.tracked(), s.overflow_checks()), (3, 0));
    assert_eq!(
        s.displaced().counters,
        0,
        "its own old counter, not a displacement"
    );
    // One-shot newcomers take the other keys' ended counters, then each
    // other's, never the established key's: it carried its five charges
    // into the new window.
    for i in 0..20 {
        assert!(l.check(&req(&format!("n{i}"), 1)).allowed);
    }
    assert_eq!(l.store().displaced().counters, 20);
    assert_eq!(l.check(&req("steady", 0)).remaining, 99, "kept");
}

#[test]
fn a_counter_replaced_before_its_flush_still_sends_its_change() {
    let (mut l, clock) = limiter(vec![quota("p", "m", 100, Window::Minute)], 2);
    l.enable_sync();
    for _ in 0..3 {
        assert!(l.check(&req("k", 1)).allowed);
    }
    clock.advance(60 * NANOS_PER_SEC);
    assert!(l.check(&req("k", 2)).allowed);
    assert_eq!(
        l.store().tracked(),
        1,
        "the new window took the old one's place"
    );
    let mut sent: Vec<i64> = l
        .store()
        .drain_journal()
        .iter()
        .map(|(_, p)| p.delta)
        .collect();
    sent.sort_unstable();
    assert_eq!(sent, [2, 3], "both windows' changes, once each");
}

#[test]
fn a_report_the_full_stores_overflow_cell_has_no_room_for_is_absorbed() {
    // A store of one cell, held by an established key: new keys share
    // the overflow cell (10 a second, burst 20).
    let (l, _) = limiter(vec![rate("p", "r", 10, 20)], 1);
    for _ in 0..5 {
        assert!(l.check(&req("steady", 1)).allowed);
    }
    for i in 0..50 {
        let name = format!("flood{i}");
        let d = l.report(&req(&name, 7));
        assert!(d.allowed, "a report is never refused: {d:?}");
        assert_eq!(d.over, 0, "never debt on the shared cell: {d:?}");
    }
    // Two reports of 7 fit the shared 20; the other 48 were absorbed: it
    // holds 6, not a debt, so a new key's 6 still pass (and a 7th not).
    assert!(l.store().overflow_checks() >= 50);
    let d = l.check(&req("newcomer", 6));
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    assert!(!l.check(&req("another", 1)).allowed);
    assert_eq!(l.peek(&req("steady", 1)).remaining, 14, "untouched");
}
