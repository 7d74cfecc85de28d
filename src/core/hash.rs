//! Keyed hashing of API keys.
//!
//! Raw API keys never leave the process and are not even kept in memory
//! after a check: the store, the static key table, logs and (later) Redis
//! key names all use [`KeyHasher::key_hash`], a SipHash-1-3 keyed with a
//! 128-bit secret. Without the secret an attacker cannot predict hashes, so
//! cannot aim collisions at a victim's bucket; with 64-bit hashes an
//! accidental collision among a million active keys has probability about
//! 3·10⁻⁸.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// A keyed hash of API keys. Cheap to copy.
#[derive(Clone, Copy)]
pub struct KeyHasher {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(<secret>)")
    }
}

impl KeyHasher {
    /// A hasher with a fixed secret. Nodes that must agree on hashes (log
    /// correlation, Redis key names) share the secret.
    pub fn with_secret(secret: [u8; 16]) -> Self {
        let (a, b) = secret.split_at(8);
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(a);
        k1.copy_from_slice(b);
        Self {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// A hasher with a fresh random secret.
    pub fn random() -> Self {
        Self::with_secret(rand::random())
    }

    /// The keyed hash of an API key.
    #[inline]
    pub fn key_hash(&self, key: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(key);
        h.finish()
    }

    /// The keyed hash of a sequence of (key, value) pairs, in order; 0 for
    /// an empty sequence, never 0 otherwise. Streams into the hasher, so it
    /// allocates nothing.
    pub fn entries_hash<'a>(&self, entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        let mut any = false;
        for (k, v) in entries {
            any = true;
            // Length prefixes keep ("ab","c") apart from ("a","bc").
            h.write_usize(k.len());
            h.write(k.as_bytes());
            h.write_usize(v.len());
            h.write(v.as_bytes());
        }
        if any { h.finish().max(1) } else { 0 }
    }

    /// The keyed hash of an Envoy RLS descriptor in `domain`: its entries,
    /// in order, after the domain (as an entry with an empty key, which no
    /// request entry can have). What a descriptor's counters are filed
    /// under, as envoyproxy/ratelimit's cache key is built.
    pub fn descriptor_hash<'a>(
        &self,
        domain: &'a str,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> u64 {
        self.entries_hash(std::iter::once(("", domain)).chain(entries))
    }

    /// A short printable form of a key's hash, for logs: 16 hex digits.
    pub fn display(&self, key: &[u8]) -> String {
        hex16(self.key_hash(key))
    }
}

/// A key hash (or cell id) as logs, listings and Redis names show it: 16
/// hex digits.
pub fn hex16(h: u64) -> String {
    format!("{h:016x}")
}

/// Bytes (a digest) as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Combines two 64-bit values into a well-mixed cell id (the splitmix64
/// finalizer over `a` and a rotated `b`). Both inputs are already hashes, so
/// this needs no secret of its own.
#[inline]
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable, unkeyed 64-bit id for a name (plan and limit names), so a
/// limit keeps its buckets across config reloads and restarts.
pub fn name_id(parts: &[&str]) -> u64 {
    let mut h = SipHasher13::new_with_keys(0x7175_6f74_6164_0001, 0x6c69_6d69_7473_0002);
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_same_hash_other_secret_other_hash() {
        let a = KeyHasher::with_secret([1; 16]);
        let b = KeyHasher::with_secret([1; 16]);
        let c = KeyHasher::with_secret([2; 16]);
        assert_eq!(a.key_hash(b"k"), b.key_hash(b"k"));
        assert_ne!(a.key_hash(b"k"), c.key_hash(b"k"));
        assert_ne!(a.key_hash(b"k"), a.key_hash(b"k2"));
    }

    #[test]
    fn entries_hash_is_ordered_and_separated() {
        let h = KeyHasher::with_secret([5; 16]);
        assert_eq!(h.entries_hash([]), 0);
        let ab = h.entries_hash([("a", "1"), ("b", "2")]);
        assert_ne!(ab, 0);
        assert_ne!(ab, h.entries_hash([("b", "2"), ("a", "1")]));
        assert_ne!(h.entries_hash([("ab", "c")]), h.entries_hash([("a", "bc")]));
        assert_eq!(ab, h.entries_hash([("a", "1"), ("b", "2")]));
    }

    #[test]
    fn debug_hides_the_secret() {
        let a = KeyHasher::with_secret([7; 16]);
        assert_eq!(format!("{a:?}"), "KeyHasher(<secret>)");
        assert_eq!(a.display(b"key").len(), 16);
    }

    #[test]
    fn name_ids_separate_parts() {
        assert_ne!(name_id(&["ab", "c"]), name_id(&["a", "bc"]));
        assert_eq!(name_id(&["free", "daily"]), name_id(&["free", "daily"]));
    }

    #[test]
    fn mix_depends_on_both_inputs() {
        assert_ne!(mix(1, 2), mix(2, 1));
        assert_ne!(mix(1, 2), mix(1, 3));
    }
}
