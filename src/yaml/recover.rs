//! Reading past a mistake, so a file's every error is reported at once
//! (up to [`MAX_REPORTED`]), not only its first.
//!
//! serde stops at the first error and cannot resume inside a half-read
//! value, so the document is read again, once per error found, each time
//! skipping the items found wrong before. An *item* is an entry of a
//! mapping or an element of a list whose visitor takes part (the config's
//! top-level sections, [`crate::limits::file`]'s `plans`, `keys` and
//! `limits`, the limits files' descriptors): each is read through
//! [`Reading::item`], which knows the item's position (one index per
//! level that takes part), skips it (reads it as ignored, and leaves it
//! out) when an earlier pass found it wrong, and otherwise marks an error
//! coming out of it with that position, innermost first. An error outside
//! any item (a syntax error, the document not a mapping) ends the passes.
//!
//! The pass's state is thread-local, because `Deserialize` impls take no
//! context; it exists only inside [`read_all`], so a visitor outside it
//! reads every item and marks nothing.

use std::cell::RefCell;
use std::collections::HashSet;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// The most errors one file reports; past it the message says reading
/// stopped.
pub const MAX_REPORTED: usize = 20;

/// Where the reading of one pass is, and what it skips.
#[derive(Default)]
struct Pass {
    /// The position being read: one index per level that takes part.
    at: Vec<usize>,
    /// Items an earlier pass found wrong: read as ignored.
    skip: HashSet<Vec<usize>>,
    /// The innermost item the pass's error came out of.
    failed: Option<Vec<usize>>,
}

thread_local! {
    static PASS: RefCell<Option<Pass>> = const { RefCell::new(None) };
}

/// Ends the pass in progress should a reading unwind, so no later
/// reading on this thread skips or marks anything.
struct Unwind;

impl Drop for Unwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            PASS.with(|p| p.borrow_mut().take());
        }
    }
}

/// An item's visit: the position is entered on creation and left on drop.
pub(crate) struct Reading {
    active: bool,
}

impl Reading {
    /// Reads item `index` of the level being read: `None` when an earlier
    /// pass found it wrong (then the caller reads it as ignored, with
    /// [`skipped`]), else a guard that is in the item until dropped.
    pub(crate) fn item(index: usize) -> Option<Reading> {
        PASS.with(|p| {
            let mut p = p.borrow_mut();
            let Some(pass) = p.as_mut() else {
                return Some(Reading { active: false });
            };
            pass.at.push(index);
            if pass.skip.contains(&pass.at) {
                pass.at.pop();
                None
            } else {
                Some(Reading { active: true })
            }
        })
    }

    /// `result`, an error of which is marked as this item's (unless an
    /// item inside it already claimed it).
    pub(crate) fn mark<T, E>(&self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() && self.active {
            PASS.with(|p| {
                if let Some(pass) = p.borrow_mut().as_mut()
                    && pass.failed.is_none()
                {
                    pass.failed = Some(pass.at.clone());
                }
            });
        }
        result
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if self.active {
            PASS.with(|p| {
                if let Some(pass) = p.borrow_mut().as_mut() {
                    pass.at.pop();
                }
            });
        }
    }
}

/// What a skipped item is read as.
pub(crate) type Skipped = IgnoredAny;

/// Reads with `read` until it succeeds, skipping each time the item its
/// last error came out of; returns the value and the errors found, in
/// the order found (at most [`MAX_REPORTED`], and whether reading stopped
/// there), or only the errors when the last pass failed too. A `fatal`
/// error (the text is not well-formed: nothing after it can be read)
/// ends the reading; so does an error that `repeats` the last one (met
/// again while skipping), which is not reported twice.
pub(crate) fn read_all<T, E>(
    mut read: impl FnMut() -> Result<T, E>,
    fatal: impl Fn(&E) -> bool,
    repeats: impl Fn(&E, &E) -> bool,
) -> Outcome<T, E> {
    let mut skip = HashSet::new();
    let mut errors = Vec::new();
    loop {
        PASS.with(|p| {
            *p.borrow_mut() = Some(Pass {
                at: Vec::new(),
                skip: std::mem::take(&mut skip),
                failed: None,
            });
        });
        let unwinding = Unwind;
        let result = read();
        drop(unwinding);
        let pass = PASS.with(|p| p.borrow_mut().take()).unwrap_or_default();
        skip = pass.skip;
        match result {
            Ok(value) => {
                return Outcome {
                    value: Some(value),
                    errors,
                    stopped: false,
                };
            }
            Err(e) => {
                if errors.last().is_some_and(|last| repeats(&e, last)) {
                    return Outcome {
                        value: None,
                        errors,
                        stopped: false,
                    };
                }
                let end = fatal(&e);
                errors.push(e);
                if end {
                    return Outcome {
                        value: None,
                        errors,
                        stopped: false,
                    };
                }
                // An error outside any item, or an item already skipped
                // (which cannot fail again): nothing more can be read.
                let next = pass.failed.filter(|f| !skip.contains(f));
                match next {
                    Some(item) if errors.len() < MAX_REPORTED => {
                        skip.insert(item);
                    }
                    other => {
                        return Outcome {
                            value: None,
                            errors,
                            stopped: other.is_some(),
                        };
                    }
                }
            }
        }
    }
}

/// What [`read_all`] found.
pub(crate) struct Outcome<T, E> {
    /// The value read past every error (items found wrong left out);
    /// `None` when an error could not be read past.
    pub value: Option<T>,
    /// The errors, in the order found.
    pub errors: Vec<E>,
    /// Whether reading stopped at [`MAX_REPORTED`] with more to read.
    pub stopped: bool,
}

/// A list whose elements take part: an element found wrong is reported
/// and left out, and the rest is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Items<T>(pub Vec<T>);

impl<T> Default for Items<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Items<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemsVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ItemsVisitor<T> {
            type Value = Items<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Items<T>, A::Error> {
                let mut out = Vec::new();
                for i in 0.. {
                    match next_element::<T, _>(&mut seq, i)? {
                        None => break,
                        Some(Some(item)) => out.push(item),
                        Some(None) => {}
                    }
                }
                Ok(Items(out))
            }
        }

        d.deserialize_seq(ItemsVisitor(std::marker::PhantomData))
    }
}

/// Reads one more element of a list whose visitor takes part: `Ok(None)`
/// at the end, `Ok(Some(None))` for an element skipped.
pub(crate) fn next_element<'de, T, A>(
    seq: &mut A,
    index: usize,
) -> Result<Option<Option<T>>, A::Error>
where
    T: Deserialize<'de>,
    A: serde::de::SeqAccess<'de>,
{
    match Reading::item(index) {
        None => Ok(seq.next_element::<Skipped>()?.map(|_| None)),
        Some(r) => Ok(r.mark(seq.next_element::<T>())?.map(Some)),
    }
}

/// Reads one more entry of a mapping whose visitor takes part: `Ok(None)`
/// at the end, `Ok(Some(None))` for an entry skipped.
pub(crate) fn next_entry<'de, K, V, A>(
    map: &mut A,
    index: usize,
) -> Result<Option<Option<(K, V)>>, A::Error>
where
    K: Deserialize<'de>,
    V: Deserialize<'de>,
    A: serde::de::MapAccess<'de>,
{
    match Reading::item(index) {
        None => Ok(map.next_entry::<Skipped, Skipped>()?.map(|_| None)),
        Some(r) => {
            let Some(k) = r.mark(map.next_key::<K>())? else {
                return Ok(None);
            };
            let v = r.mark(map.next_value::<V>())?;
            Ok(Some(Some((k, v))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of numbers whose elements take part.
    type Numbers = Items<u32>;

    fn read(text: &str) -> Outcome<Numbers, String> {
        read_all(
            || serde_saphyr::from_str::<Numbers>(text).map_err(|e| e.to_string()),
            |e| e.contains("unclosed"),
            |e, last| e == last,
        )
    }

    #[test]
    fn every_wrong_element_is_reported_and_the_rest_is_read() {
        let out = read("[1, x, 3, y, 5]");
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
        assert_eq!(out.value.map(|n| n.0), Some(vec![1, 3, 5]));
        assert!(!out.stopped);
    }

    #[test]
    fn reading_stops_at_the_cap_and_says_so() {
        let text = format!("[{}]", vec!["x"; MAX_REPORTED + 5].join(", "));
        let out = read(&text);
        assert_eq!(out.errors.len(), MAX_REPORTED);
        assert!(out.stopped);
        assert!(out.value.is_none());
    }

    #[test]
    fn a_fatal_error_ends_the_reading_keeping_what_came_before() {
        let out = read("- x\n- 2\n- [\n");
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
        assert!(out.value.is_none() && !out.stopped);
    }

    #[test]
    fn an_error_outside_any_item_ends_the_reading() {
        let out = read("{a: 1}");
        assert_eq!(out.errors.len(), 1);
        assert!(out.value.is_none() && !out.stopped);
    }

    #[test]
    fn an_error_met_again_while_skipping_is_not_reported_twice() {
        let out = read_all(
            || -> Result<(), &str> {
                match Reading::item(0) {
                    Some(r) => r.mark(Err("limit")),
                    None => Err("limit"),
                }
            },
            |_| false,
            |e, last| e == last,
        );
        assert_eq!(out.errors, ["limit"]);
        assert!(!out.stopped);
    }

    #[test]
    fn a_reading_that_unwinds_ends_its_pass() {
        let unwound = std::panic::catch_unwind(|| {
            read_all(
                || -> Result<(), ()> { panic!("a bug in a visitor") },
                |_| false,
                |_, _| false,
            )
        });
        assert!(unwound.is_err());
        PASS.with(|p| assert!(p.borrow().is_none()));
    }

    #[test]
    fn outside_read_all_every_item_is_read_and_nothing_is_marked() {
        assert!(serde_saphyr::from_str::<Numbers>("[1, x]").is_err());
        let n: Numbers = serde_saphyr::from_str("[1, 2]").expect("numbers");
        assert_eq!(n.0, vec![1, 2]);
        PASS.with(|p| assert!(p.borrow().is_none()));
    }
}
