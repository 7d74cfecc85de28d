//! Where a check's keys come from: the native plans (the native API and
//! Envoy plan domains, which share their keys) or one envoyproxy/ratelimit
//! domain. The store keeps a budget per source, so a flood of keys
//! through one descriptor of one domain cannot take the cells of another
//! domain or of the plans (see [`crate::store`]).
//!
//! Domain names are interned once per process into small ids (a domain
//! keeps its id across reloads); past [`Source::MAX`] distinct names, the
//! rest share the last id.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// A source of keys: a small id the store files each cell under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(u16);

impl Source {
    /// The native plans: the native API and Envoy plan domains.
    pub const PLANS: Source = Source(0);
    /// The shared overflow cells: no source's budget, never displaced.
    pub const OVERFLOW: Source = Source(u16::MAX);
    /// How many sources the store keeps budgets for (ids `0..MAX`).
    pub const MAX: usize = 4096;

    /// The id as an index below [`Source::MAX`] (the overflow source has
    /// none).
    #[inline]
    pub fn index(self) -> Option<usize> {
        let i = usize::from(self.0);
        (i < Self::MAX).then_some(i)
    }

    /// The source with index `i`, if below [`Source::MAX`].
    pub fn from_index(i: usize) -> Option<Source> {
        (i < Self::MAX)
            .then(|| u16::try_from(i).ok())
            .flatten()
            .map(Source)
    }

    /// The raw id (for packing into a cell).
    #[inline]
    pub(crate) fn bits(self) -> u16 {
        self.0
    }

    /// A source from its raw id.
    #[inline]
    pub(crate) fn from_bits(bits: u16) -> Source {
        Source(bits)
    }

    /// The source of the envoyproxy/ratelimit domain `name`: the same id
    /// for the same name for the life of the process.
    pub fn of_domain(name: &str) -> Source {
        let mut names = registry().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = names.ids.get(name) {
            return Source(id);
        }
        // Ids 1..MAX-1 go to the first names; every later one shares the
        // last, so a config with thousands of domains cannot grow this.
        let next = names.names.len() + 1;
        let id = u16::try_from(next.min(Self::MAX - 1)).unwrap_or(u16::MAX - 1);
        if next < Self::MAX {
            names.names.push(name.to_owned());
            names.ids.insert(name.to_owned(), id);
        }
        Source(id)
    }

    /// The name for logs and metric labels: `plans`, a domain's name, or
    /// `(other)` for the shared last id and the overflow cells.
    pub fn name(self) -> String {
        if self == Self::PLANS {
            return "plans".to_owned();
        }
        let names = registry().lock().unwrap_or_else(PoisonError::into_inner);
        let i = usize::from(self.0);
        match names.names.get(i.wrapping_sub(1)) {
            Some(n) if i < Self::MAX - 1 => n.clone(),
            _ => "(other)".to_owned(),
        }
    }
}

#[derive(Default)]
struct Registry {
    /// Domain names in id order (id = index + 1).
    names: Vec<String>,
    ids: HashMap<String, u16>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_keeps_its_id_and_name() {
        let a = Source::of_domain("source-test-a");
        let b = Source::of_domain("source-test-b");
        assert_ne!(a, b);
        assert_ne!(a, Source::PLANS);
        assert_eq!(Source::of_domain("source-test-a"), a);
        assert_eq!(a.name(), "source-test-a");
        assert_eq!(Source::PLANS.name(), "plans");
        assert_eq!(Source::OVERFLOW.index(), None);
        assert_eq!(Source::OVERFLOW.name(), "(other)");
        assert!(a.index().is_some_and(|i| i < Source::MAX));
    }
}
