//! The response headers that tell an API's callers where they stand,
//! computed once for both front doors (Envoy copies RLS
//! `response_headers_to_add` onto the response; the native API returns
//! the same list for other gateways to copy):
//!
//! - draft-03 of the IETF RateLimit fields, as envoyproxy/ratelimit sends
//!   them: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`
//!   (seconds), for one limit: the last one over its limit, else the one
//!   with the fewest units left (the first of equals);
//! - draft-11's structured fields, for every limit that applied:
//!   `RateLimit-Policy: "name";q=100;w=60` and
//!   `RateLimit: "name";r=42;t=17`;
//! - `Retry-After` (seconds) when the answer is over limit and waiting can
//!   help: the longest wait of the limits that are over.
//!
//! Seconds are rounded up, so a caller that waits as told is never early.

pub use crate::config::HeaderStyle;

use crate::core::clock::NANOS_PER_SEC;
use crate::core::{Decision, DenyReason, Nanos};
use crate::limits::Limit;
use crate::limits::header_text::{HeaderText, push_param, push_sf_string};

/// Where a caller stands against one limit that applied to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing<'a> {
    /// The policy's name (draft-11 item name).
    pub name: &'a str,
    /// Its capacity (requests per unit, burst or quota).
    pub limit: u64,
    /// Units left.
    pub remaining: u64,
    /// Time until it is back to full capacity.
    pub reset: Nanos,
    /// Its window in seconds (draft-11 `w`).
    pub window: u64,
    /// Whether this limit refused the request (shadow-mode refusals are
    /// not: the request passes).
    pub over: bool,
    /// For a limit that is over: when the request would fit; `None` if
    /// never.
    pub retry_after: Option<Nanos>,
    /// The limit's text rendered once (its quoted name, its policy item at
    /// its own capacity); `None` renders `name` on the spot.
    pub text: Option<&'a HeaderText>,
}

impl<'a> Standing<'a> {
    /// Where a plan's decision leaves the caller against its deciding
    /// limit `limit`.
    pub fn of(d: &Decision, limit: &'a Limit) -> Self {
        Standing {
            name: &limit.policy,
            limit: d.limit,
            remaining: d.remaining,
            reset: d.reset_after,
            window: limit.window_seconds(),
            over: !d.allowed,
            retry_after: d.retry_after,
            // The text is rendered under the policy name, which an
            // envoyproxy/ratelimit file's limit has not (and a limit built
            // without `Limit::rendered` has no text).
            text: (!limit.policy.is_empty() && !limit.text.name.is_empty()).then_some(&limit.text),
        }
    }
}

/// The `Retry-After` field's name.
const RETRY_AFTER: &str = "Retry-After";

/// One header to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name.
    pub name: &'static str,
    /// Field value.
    pub value: String,
}

/// The headers `style` asks for, given every limit that applied and
/// whether the answer is over limit (which adds `Retry-After`). Nothing
/// when no limit applied.
pub fn render(style: HeaderStyle, standings: &[Standing<'_>], over_limit: bool) -> Vec<Header> {
    if style == HeaderStyle::Off || standings.is_empty() {
        return Vec::new();
    }
    // At most 3 + 2 + Retry-After: one allocation.
    let mut out = Vec::with_capacity(6);
    if style.draft03()
        && let Some(s) = closest(standings)
    {
        out.push(header("RateLimit-Limit", number(s.limit)));
        out.push(header("RateLimit-Remaining", number(s.remaining)));
        out.push(header("RateLimit-Reset", number(seconds(s.reset))));
    }
    if style.draft11() {
        // One limit (the common case) needs no list of items.
        let (single, many);
        let items: &[&Standing<'_>] = if let [only] = standings {
            single = [only];
            &single
        } else {
            many = draft11_items(standings);
            &many
        };
        // One buffer per field, written in place: this runs on every answer.
        let mut policy = String::with_capacity(items.len() * 40);
        let mut state = String::with_capacity(items.len() * 40);
        for (i, s) in items.iter().enumerate() {
            if i > 0 {
                policy.push_str(", ");
                state.push_str(", ");
            }
            match s.text.and_then(|t| t.policy_for(s.limit, s.window)) {
                Some(item) => policy.push_str(item),
                None => {
                    quoted(&mut policy, s);
                    push_param(&mut policy, ";q=", s.limit);
                    push_param(&mut policy, ";w=", s.window);
                }
            }
            quoted(&mut state, s);
            push_param(&mut state, ";r=", s.remaining);
            push_param(&mut state, ";t=", seconds(s.reset));
        }
        out.push(header("RateLimit-Policy", policy));
        out.push(header("RateLimit", state));
    }
    if over_limit && let Some(wait) = retry_after(standings) {
        out.push(header(RETRY_AFTER, number(seconds(wait).max(1))));
    }
    out
}

/// `n` in decimal, in a string of its own size (this runs several times
/// per answer; `to_string` goes through the formatting machinery).
fn number(n: u64) -> String {
    itoa::Buffer::new().format(n).to_owned()
}

/// The headers for one plan decision: [`render`]'s, or for a blocked key
/// only `Retry-After`, when the block ends (see [`add_block`]).
pub fn for_decision(style: HeaderStyle, standings: &[Standing<'_>], d: &Decision) -> Vec<Header> {
    if d.reason == Some(DenyReason::Blocked) {
        let mut out = Vec::new();
        add_block(style, &mut out, d.retry_after);
        return out;
    }
    render(style, standings, !d.allowed)
}

/// Adds `Retry-After` for a block ending in `wait`, unless `out` already
/// has a longer one. A block without end takes any `Retry-After` away:
/// waiting cannot help.
pub fn add_block(style: HeaderStyle, out: &mut Vec<Header>, wait: Option<Nanos>) {
    let Some(wait) = wait else {
        out.retain(|h| h.name != RETRY_AFTER);
        return;
    };
    if style == HeaderStyle::Off {
        return;
    }
    let secs = seconds(wait).max(1);
    match out.iter_mut().find(|h| h.name == RETRY_AFTER) {
        Some(h) => {
            if h.value.parse::<u64>().is_ok_and(|v| v < secs) {
                h.value = number(secs);
            }
        }
        None => out.push(header(RETRY_AFTER, number(secs))),
    }
}

fn header(name: &'static str, value: String) -> Header {
    Header { name, value }
}

/// envoyproxy/ratelimit's pick for the draft-03 fields: the last limit
/// that is over, else the first with the fewest units left.
fn closest<'s, 'a>(standings: &'s [Standing<'a>]) -> Option<&'s Standing<'a>> {
    let mut pick: Option<&Standing<'_>> = None;
    for s in standings {
        let better = match pick {
            None => true,
            Some(p) => s.over || (!p.over && s.remaining < p.remaining),
        };
        if better {
            pick = Some(s);
        }
    }
    pick
}

/// One item per policy name (the fewest units left wins a tie of names),
/// in the order the limits applied.
fn draft11_items<'s, 'a>(standings: &'s [Standing<'a>]) -> Vec<&'s Standing<'a>> {
    let mut items: Vec<&Standing<'_>> = Vec::with_capacity(standings.len());
    if let [only] = standings {
        items.push(only);
        return items;
    }
    for s in standings {
        match items.iter_mut().find(|i| i.name == s.name) {
            Some(i) if s.remaining < i.remaining => *i = s,
            Some(_) => {}
            None => items.push(s),
        }
    }
    items
}

/// The longest wait among the limits that are over; `None` if one of them
/// can never pass (waiting does not help) or none is over.
fn retry_after(standings: &[Standing<'_>]) -> Option<Nanos> {
    let mut longest = None;
    for s in standings.iter().filter(|s| s.over) {
        let wait = s.retry_after?;
        longest = Some(longest.map_or(wait, |l: Nanos| l.max(wait)));
    }
    longest
}

/// Whole seconds, rounded up.
fn seconds(ns: Nanos) -> u64 {
    ns.div_ceil(NANOS_PER_SEC)
}

/// Appends `s`'s name as an sf-string: rendered once, or now.
fn quoted(out: &mut String, s: &Standing<'_>) {
    match s.text {
        Some(t) => out.push_str(&t.name),
        None => push_sf_string(out, s.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = NANOS_PER_SEC;

    fn st(name: &str, limit: u64, remaining: u64, reset: Nanos, over: bool) -> Standing<'_> {
        Standing {
            name,
            limit,
            remaining,
            reset,
            window: 60,
            over,
            retry_after: over.then_some(reset),
            text: None,
        }
    }

    #[test]
    fn text_rendered_once_reads_as_text_rendered_now() {
        let texts = [
            HeaderText::new("gold/per-minute", 100, 60),
            HeaderText::new("odd \"name\"", 7, 60),
        ];
        for t in &texts {
            let shown = if t.capacity == 100 {
                "gold/per-minute"
            } else {
                "odd \"name\""
            };
            // At the limit's own capacity, and at an override's (the
            // policy item is then rendered on the spot).
            for limit in [t.capacity, 5_000] {
                let now = st(shown, limit, 3, 2 * S, true);
                let once = Standing {
                    text: Some(t),
                    ..now
                };
                for style in [
                    HeaderStyle::Draft03,
                    HeaderStyle::Draft11,
                    HeaderStyle::Both,
                ] {
                    let two = [once, st("b", 10, 9, S, false)];
                    let two_now = [now, st("b", 10, 9, S, false)];
                    assert_eq!(render(style, &[once], true), render(style, &[now], true));
                    assert_eq!(render(style, &two, true), render(style, &two_now, true));
                }
            }
        }
    }

    fn get(h: &[Header], name: &str) -> Option<String> {
        h.iter().find(|x| x.name == name).map(|x| x.value.clone())
    }

    #[test]
    fn draft03_picks_the_closest_limit() {
        let s = [
            st("a", 100, 40, 30 * S, false),
            st("b", 10, 3, 1_500_000_000, false),
            st("c", 10, 3, 5 * S, false),
        ];
        let h = render(HeaderStyle::Draft03, &s, false);
        assert_eq!(
            h,
            vec![
                header("RateLimit-Limit", "10".into()),
                header("RateLimit-Remaining", "3".into()),
                header("RateLimit-Reset", "2".into()),
            ]
        );
    }

    #[test]
    fn draft03_prefers_the_last_over_limit_and_adds_retry_after() {
        let s = [
            st("a", 5, 0, 7 * S, true),
            st("b", 10, 0, 20 * S, false),
            st("c", 8, 0, 3 * S, true),
        ];
        let h = render(HeaderStyle::Draft03, &s, true);
        assert_eq!(get(&h, "RateLimit-Limit").as_deref(), Some("8"));
        assert_eq!(get(&h, "RateLimit-Reset").as_deref(), Some("3"));
        // The longest wait of the limits that are over.
        assert_eq!(get(&h, "Retry-After").as_deref(), Some("7"));
    }

    #[test]
    fn draft11_lists_every_policy() {
        let s = [
            st("per-minute", 100, 42, 17 * S, false),
            st("say \"hi\"\n", 5, 0, 1, false),
        ];
        let h = render(HeaderStyle::Draft11, &s, false);
        assert_eq!(
            h,
            vec![
                header(
                    "RateLimit-Policy",
                    r#""per-minute";q=100;w=60, "say \"hi\"?";q=5;w=60"#.into()
                ),
                header(
                    "RateLimit",
                    r#""per-minute";r=42;t=17, "say \"hi\"?";r=0;t=1"#.into()
                ),
            ]
        );
    }

    #[test]
    fn draft11_merges_repeated_names_keeping_the_tightest() {
        let s = [st("ip", 10, 7, S, false), st("ip", 10, 2, S, false)];
        let h = render(HeaderStyle::Draft11, &s, false);
        assert_eq!(get(&h, "RateLimit").as_deref(), Some(r#""ip";r=2;t=1"#));
    }

    #[test]
    fn no_retry_after_when_waiting_cannot_help_or_not_over() {
        let mut never = st("block", 0, 0, 60 * S, true);
        never.retry_after = None;
        let s = [st("a", 5, 0, 7 * S, true), never];
        assert_eq!(
            get(&render(HeaderStyle::Both, &s, true), "Retry-After"),
            None
        );
        let s = [st("a", 5, 0, 7 * S, true)];
        assert_eq!(
            get(&render(HeaderStyle::Both, &s, false), "Retry-After"),
            None
        );
        // A sub-second wait is still at least one second.
        let mut soon = st("a", 5, 0, 7 * S, true);
        soon.retry_after = Some(1);
        assert_eq!(
            get(&render(HeaderStyle::Both, &[soon], true), "Retry-After").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn off_and_empty_send_nothing() {
        assert!(render(HeaderStyle::Off, &[st("a", 1, 1, 1, false)], false).is_empty());
        assert!(render(HeaderStyle::Both, &[], true).is_empty());
        let both = render(HeaderStyle::Both, &[st("a", 1, 0, S, true)], true);
        let names: Vec<_> = both.iter().map(|h| h.name).collect();
        assert_eq!(
            names,
            [
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "RateLimit-Policy",
                "RateLimit",
                "Retry-After"
            ]
        );
    }

    #[test]
    fn styles_round_trip_their_names() {
        use crate::diag::one_of;
        let parse = |t| one_of("style", t, HeaderStyle::ALL, HeaderStyle::as_str).ok();
        for s in HeaderStyle::ALL {
            assert_eq!(parse(s.as_str()), Some(s));
        }
        assert_eq!(parse("draft-03"), None);
    }
}
