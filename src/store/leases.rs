//! Concurrency leases on this node: for each (concurrency limit, key) cell,
//! the leases held now, each a number of slots until it expires unless
//! renewed or released (issue 21: WebSockets, SSE, long calls).
//!
//! A lease's [`Token`] is its cell's id and 128 random bits from a
//! cryptographic generator: a caller who knows another key's cell id still
//! cannot renew or release its leases. Expired leases are pruned whenever
//! their cell is touched and by [`Leases::sweep`]; each one counts as an
//! expiry (a lease that timed out instead of being released: a sign of a
//! gateway that crashed). The number of leases held is bounded by
//! `max_leases`: past it, acquiring is refused, however many slots a limit
//! would still grant.
//!
//! With Redis the leases that count live there (`sync/leases.lua`); this
//! table then *mirrors* the leases this node granted ([`Leases::mirror`]):
//! they are what the node renews for its Hold streams, counts in its
//! gauge, and decides on should Redis fail under the `local` fail mode.
//! A mirrored lease that expires here is not counted as an expiry (it
//! may have been renewed or released through another node; Redis counts
//! the real ones).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use nohash_hasher::BuildNoHashHasher;
use parking_lot::Mutex;

use crate::core::clock::Nanos;

/// What names one lease: its cell and its secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The (limit, key) cell the lease holds slots of.
    pub cell: u64,
    secret: u128,
}

impl fmt::Debug for Token {
    /// The cell only: the secret is what releases the lease.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:016x}, …)", self.cell)
    }
}

impl fmt::Display for Token {
    /// 48 lowercase hex digits: the cell, then the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:032x}", self.cell, self.secret)
    }
}

impl Token {
    /// Length of a token's text.
    pub const LEN: usize = 48;

    /// A new token for cell `cell`: 128 bits from the thread's
    /// cryptographically secure generator.
    pub fn new(cell: u64) -> Self {
        Self {
            cell,
            secret: rand::random(),
        }
    }

    /// The secret as Redis stores it (32 hex digits).
    pub fn secret_hex(&self) -> String {
        format!("{:032x}", self.secret)
    }

    /// A token read back from its text; `None` unless it is exactly
    /// [`Token::LEN`] hex digits.
    pub fn parse(text: &str) -> Option<Token> {
        if text.len() != Self::LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let (cell, secret) = text.split_at(16);
        Some(Token {
            cell: u64::from_str_radix(cell, 16).ok()?,
            secret: u128::from_str_radix(secret, 16).ok()?,
        })
    }
}

/// One lease held.
#[derive(Debug, Clone)]
struct Held {
    secret: u128,
    slots: u32,
    /// The limit it was granted under (to put it back should Redis lose it).
    limit: u32,
    /// A copy of a lease Redis holds (not an expiry of its own when it
    /// times out here).
    mirror: bool,
    expires: Nanos,
    /// Its time to live, for renewals that give none.
    ttl: Nanos,
    /// When it was granted.
    granted: Nanos,
    /// The plan it was granted under (the gauge's label).
    plan: Arc<str>,
}

impl Held {
    /// Lease `token` of `ask`, until `expires` (granted a time to live
    /// before).
    fn of(token: Token, ask: &Ask, expires: Nanos, mirror: bool) -> Self {
        Self {
            secret: token.secret,
            slots: ask.slots,
            limit: ask.limit,
            mirror,
            expires,
            ttl: ask.ttl,
            granted: expires.saturating_sub(ask.ttl),
            plan: Arc::clone(&ask.plan),
        }
    }
}

/// Adds `lease` to a cell's leases, growing them by one, not four (what a
/// first push reserves): most keys hold a lease or two.
fn push(held: &mut Vec<Held>, lease: Held) {
    held.reserve_exact(1);
    held.push(lease);
}

/// What is asked of [`Leases::acquire`]: slots of which cell, and for
/// how long.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The (concurrency limit, key) cell.
    pub cell: u64,
    /// Slots the cell has.
    pub limit: u32,
    /// Slots wanted (at least 1: the door refuses 0).
    pub slots: u32,
    /// How long the lease lasts unless renewed.
    pub ttl: Nanos,
    /// The plan's name, for the gauge.
    pub plan: Arc<str>,
    /// Grant even past `limit` (the `allow` fail mode): the lease still
    /// records `limit`, for when Redis is back.
    pub over: bool,
}

/// What this node knows of one lease it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    /// Its slots.
    pub slots: u32,
    /// The limit it was granted under.
    pub limit: u32,
    /// Its time to live.
    pub ttl: Nanos,
    /// When it was granted (Unix ns).
    pub granted: Nanos,
}

/// What [`Leases::acquire`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The slots are the caller's until `expires`.
    Granted {
        /// The new lease.
        token: Token,
        /// Slots in use, this lease's included.
        in_use: u32,
        /// When it expires unless renewed (Unix ns).
        expires: Nanos,
    },
    /// Not enough slots are free.
    Denied {
        /// Slots in use.
        in_use: u32,
        /// How long until enough leases expire, if none is released first.
        retry_after: Nanos,
    },
    /// More slots asked for than the limit has: never granted.
    TooMany,
    /// This node holds `max_leases` leases already.
    Full,
}

/// Why a lease could not be renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No such lease: never granted, released, or expired.
    #[error("no such lease: it was released or expired (acquire again)")]
    NotFound,
}

/// Shards of the table.
const SHARDS: usize = 64;

/// One shard: the leases of each cell it holds.
type Shard = Mutex<HashMap<u64, Vec<Held>, BuildNoHashHasher<u64>>>;

/// The leases of this node. See the module docs.
#[derive(Debug)]
pub struct Leases {
    shards: Box<[Shard]>,
    held: AtomicUsize,
    max: usize,
    expired: AtomicU64,
}

impl Leases {
    /// An empty table holding at most `max_leases` leases.
    pub fn new(max_leases: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            held: AtomicUsize::new(0),
            max: max_leases,
            expired: AtomicU64::new(0),
        }
    }

    fn shard(&self, cell: u64) -> &Shard {
        &self.shards[(cell >> 40) as usize % SHARDS]
    }

    /// Drops the leases of `held` that expired by `now`, counting them.
    fn prune(&self, held: &mut Vec<Held>, now: Nanos) {
        let before = held.len();
        let mut expired = 0;
        held.retain(|h| {
            let live = h.expires > now;
            expired += u64::from(!live && !h.mirror);
            live
        });
        let gone = before - held.len();
        if gone > 0 {
            self.held.fetch_sub(gone, Ordering::AcqRel);
            self.expired.fetch_add(expired, Ordering::Relaxed);
        }
    }

    /// Takes `ask.slots` of cell `ask.cell` until `now + ask.ttl`, if
    /// that many are free.
    pub fn acquire(&self, ask: &Ask, now: Nanos) -> Acquired {
        let Ask {
            cell, limit, slots, ..
        } = *ask;
        if slots > limit {
            return Acquired::TooMany;
        }
        let mut map = self.shard(cell).lock();
        let held = map.entry(cell).or_default();
        self.prune(held, now);
        let in_use: u32 = held.iter().map(|h| h.slots).fold(0, u32::saturating_add);
        if !ask.over && in_use.saturating_add(slots) > limit {
            let retry_after = wait_for(held, in_use.saturating_add(slots) - limit, now);
            return Acquired::Denied {
                in_use,
                retry_after,
            };
        }
        if !self.take_one() {
            if held.is_empty() {
                map.remove(&cell);
            }
            return Acquired::Full;
        }
        let token = Token::new(cell);
        let expires = now.saturating_add(ask.ttl);
        push(held, Held::of(token, ask, expires, false));
        Acquired::Granted {
            token,
            in_use: in_use + slots,
            expires,
        }
    }

    /// Counts one more lease if the table has room.
    fn take_one(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Records lease `token`, which Redis granted until `expires`, as
    /// this node's; false if the table is full (the lease still holds in
    /// Redis, but this node will not renew or count it).
    pub fn mirror(&self, token: Token, ask: &Ask, expires: Nanos) -> bool {
        if !self.take_one() {
            return false;
        }
        let mut map = self.shard(token.cell).lock();
        push(
            map.entry(token.cell).or_default(),
            Held::of(token, ask, expires, true),
        );
        true
    }

    /// What this node knows of lease `token`, if it holds it unexpired
    /// at `now`.
    pub fn get(&self, token: Token, now: Nanos) -> Option<HeldLease> {
        let map = self.shard(token.cell).lock();
        map.get(&token.cell)?
            .iter()
            .find(|h| h.secret == token.secret && h.expires > now)
            .map(|h| HeldLease {
                slots: h.slots,
                limit: h.limit,
                ttl: h.ttl,
                granted: h.granted,
            })
    }

    /// Marks lease `token` as a copy of one Redis holds (it was put back
    /// there): its expiry is then Redis's to count.
    pub fn mark_mirror(&self, token: Token) {
        let mut map = self.shard(token.cell).lock();
        if let Some(h) = map
            .get_mut(&token.cell)
            .and_then(|held| held.iter_mut().find(|h| h.secret == token.secret))
        {
            h.mirror = true;
        }
    }

    /// Leases held at `now` by the plan they were granted under (the
    /// gauge; expired ones not yet pruned are not counted).
    pub fn by_plan(&self, now: Nanos) -> Vec<(Arc<str>, usize)> {
        let mut counts: HashMap<Arc<str>, usize> = HashMap::new();
        for shard in self.shards.iter() {
            for h in shard.lock().values().flatten().filter(|h| h.expires > now) {
                *counts.entry(Arc::clone(&h.plan)).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    /// Extends lease `token` to `now + ttl` (`None`: its own time to
    /// live); when it now expires.
    pub fn renew(&self, token: Token, ttl: Option<Nanos>, now: Nanos) -> Result<Nanos, LeaseError> {
        let mut map = self.shard(token.cell).lock();
        let held = map.get_mut(&token.cell).ok_or(LeaseError::NotFound)?;
        self.prune(held, now);
        let renewed = held
            .iter_mut()
            .find(|h| h.secret == token.secret)
            .map(|lease| {
                if let Some(ttl) = ttl {
                    lease.ttl = ttl;
                }
                lease.expires = now.saturating_add(lease.ttl);
                lease.expires
            });
        if held.is_empty() {
            map.remove(&token.cell);
        }
        renewed.ok_or(LeaseError::NotFound)
    }

    /// Frees lease `token`; whether it was held (releasing twice, or an
    /// expired lease, is fine).
    pub fn release(&self, token: Token, now: Nanos) -> bool {
        let mut map = self.shard(token.cell).lock();
        let Some(held) = map.get_mut(&token.cell) else {
            return false;
        };
        self.prune(held, now);
        let before = held.len();
        held.retain(|h| h.secret != token.secret);
        let freed = before - held.len();
        self.held.fetch_sub(freed, Ordering::AcqRel);
        if held.is_empty() {
            map.remove(&token.cell);
        }
        freed > 0
    }

    /// Frees every lease of cell `cell` (an operator's reset); how many
    /// of them were this node's own (not mirrors).
    pub fn release_all(&self, cell: u64) -> usize {
        let gone = self.shard(cell).lock().remove(&cell).unwrap_or_default();
        self.held.fetch_sub(gone.len(), Ordering::AcqRel);
        gone.iter().filter(|h| !h.mirror).count()
    }

    /// The leases of cell `cell` held at `now`: slots and expiry of each,
    /// soonest first.
    pub fn list(&self, cell: u64, now: Nanos) -> Vec<(u32, Nanos)> {
        let map = self.shard(cell).lock();
        let mut out: Vec<(u32, Nanos)> = map
            .get(&cell)
            .into_iter()
            .flatten()
            .filter(|h| h.expires > now)
            .map(|h| (h.slots, h.expires))
            .collect();
        out.sort_unstable_by_key(|&(_, expires)| expires);
        out
    }

    /// Drops every lease expired by `now`, shard by shard; how many.
    pub fn sweep(&self, now: Nanos) -> usize {
        let before = self.expired.load(Ordering::Relaxed);
        for shard in self.shards.iter() {
            let mut map = shard.lock();
            map.retain(|_, held| {
                self.prune(held, now);
                !held.is_empty()
            });
        }
        (self.expired.load(Ordering::Relaxed) - before) as usize
    }

    /// Leases held now (expired ones not yet pruned included).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Counts `n` expiries seen elsewhere (Redis pruned them).
    pub fn count_expired(&self, n: u64) {
        if n > 0 {
            self.expired.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The most leases the table holds.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Leases that expired instead of being released, since start.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }
}

/// How long from `now` until leases of `held` holding `need` slots in all
/// have expired, the soonest first.
fn wait_for(held: &[Held], need: u32, now: Nanos) -> Nanos {
    let mut expiries: Vec<(Nanos, u32)> = held.iter().map(|h| (h.expires, h.slots)).collect();
    expiries.sort_unstable();
    let mut freed = 0u32;
    for (expires, slots) in expiries {
        freed = freed.saturating_add(slots);
        if freed >= need {
            return expires.saturating_sub(now);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    fn ask(cell: u64, limit: u32, slots: u32, ttl: Nanos) -> Ask {
        Ask {
            cell,
            limit,
            slots,
            ttl,
            plan: Arc::from("free"),
            over: false,
        }
    }

    fn granted(a: Acquired) -> (Token, u32, Nanos) {
        match a {
            Acquired::Granted {
                token,
                in_use,
                expires,
            } => (token, in_use, expires),
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn grants_up_to_the_limit_then_says_when_a_slot_frees() {
        let l = Leases::new(100);
        let (a, in_use, expires) = granted(l.acquire(&ask(7, 3, 2, 30 * S), 0));
        assert_eq!((in_use, expires), (2, 30 * S));
        let (_, in_use, _) = granted(l.acquire(&ask(7, 3, 1, 10 * S), S));
        assert_eq!(in_use, 3);
        assert_eq!(
            l.acquire(&ask(7, 3, 1, S), 2 * S),
            Acquired::Denied {
                in_use: 3,
                retry_after: 9 * S
            },
            "the 1-slot lease expires first"
        );
        assert_eq!(
            l.acquire(&ask(7, 3, 3, S), 2 * S),
            Acquired::Denied {
                in_use: 3,
                retry_after: 28 * S
            },
            "three slots: both must go"
        );
        assert_eq!(l.acquire(&ask(7, 3, 4, S), 2 * S), Acquired::TooMany);
        // Another key's cell is apart.
        granted(l.acquire(&ask(8, 3, 3, S), 2 * S));
        assert!(l.release(a, 3 * S));
        assert!(!l.release(a, 3 * S), "releasing twice is fine");
        assert_eq!(granted(l.acquire(&ask(7, 3, 2, S), 3 * S)).1, 3);
        assert_eq!(l.held(), 3);
        // Cell 8's lease ended at 3 s: held (not yet pruned), not counted.
        assert_eq!(l.by_plan(3 * S), [(Arc::from("free"), 2)]);
    }

    #[test]
    fn mirrors_are_renewed_with_their_own_ttl_and_expire_uncounted() {
        let l = Leases::new(100);
        let t = Token::new(4);
        assert!(l.mirror(t, &ask(4, u32::MAX, 2, 10 * S), 10 * S));
        assert_eq!(
            l.get(t, 0),
            Some(HeldLease {
                slots: 2,
                limit: u32::MAX,
                ttl: 10 * S,
                granted: 0
            })
        );
        assert_eq!(l.renew(t, None, 5 * S), Ok(15 * S), "its own ttl");
        assert_eq!(l.list(4, 5 * S), [(2, 15 * S)]);
        assert_eq!(l.sweep(20 * S), 0, "a mirror's expiry is Redis's to count");
        assert_eq!((l.held(), l.expired()), (0, 0));
    }

    #[test]
    fn an_expired_lease_frees_its_slots_and_counts_as_an_expiry() {
        let l = Leases::new(100);
        let (t, _, _) = granted(l.acquire(&ask(1, 1, 1, 5 * S), 0));
        assert!(matches!(
            l.acquire(&ask(1, 1, 1, S), 4 * S),
            Acquired::Denied { .. }
        ));
        assert_eq!(l.renew(t, Some(5 * S), 4 * S), Ok(9 * S), "renewed in time");
        assert!(matches!(
            l.acquire(&ask(1, 1, 1, S), 8 * S),
            Acquired::Denied { .. }
        ));
        granted(l.acquire(&ask(1, 1, 1, S), 9 * S));
        assert_eq!(l.expired(), 1);
        assert_eq!(l.renew(t, Some(S), 9 * S), Err(LeaseError::NotFound));
        assert!(!l.release(t, 9 * S));
        assert_eq!(l.sweep(20 * S), 1);
        assert_eq!((l.held(), l.expired()), (0, 2));
        // Nothing is left behind for a cell without leases.
        granted(l.acquire(&ask(2, 1, 1, S), 30 * S));
        assert_eq!(l.renew(t, Some(S), 40 * S), Err(LeaseError::NotFound));
        assert!(
            l.shards
                .iter()
                .all(|s| s.lock().values().all(|h| !h.is_empty()))
        );
        assert_eq!(
            l.renew(Token { cell: 2, secret: 0 }, Some(S), 40 * S),
            Err(LeaseError::NotFound)
        );
        assert!(
            l.shards.iter().all(|s| s.lock().is_empty()),
            "cell 2's expired lease pruned, entry gone"
        );
    }

    #[test]
    fn a_token_without_its_secret_frees_nothing() {
        let l = Leases::new(100);
        let (t, _, _) = granted(l.acquire(&ask(1, 2, 1, S), 0));
        let guess = Token {
            cell: t.cell,
            secret: t.secret ^ 1,
        };
        assert!(!l.release(guess, 0));
        assert_eq!(l.renew(guess, Some(S), 0), Err(LeaseError::NotFound));
        assert_eq!(l.list(1, 0), [(1, S)]);
        let shown = format!("{t:?}");
        assert!(!shown.contains(&format!("{:032x}", t.secret)), "{shown}");
    }

    #[test]
    fn tokens_read_back_exactly_and_nothing_else_reads() {
        let l = Leases::new(100);
        let (t, _, _) = granted(l.acquire(&ask(u64::MAX, 1, 1, S), 0));
        let text = t.to_string();
        assert_eq!(text.len(), Token::LEN);
        assert_eq!(Token::parse(&text), Some(t));
        for bad in [
            "",
            "xyz",
            &text[1..],
            &format!("{text}0"),
            &text.replace('f', "g"),
            "+0000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(Token::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_table_holds_at_most_max_leases() {
        let l = Leases::new(3);
        for cell in 0..3 {
            granted(l.acquire(&ask(cell, 10, 1, S), 0));
        }
        assert_eq!(l.acquire(&ask(9, 10, 1, S), 0), Acquired::Full);
        assert_eq!(l.release_all(0), 1);
        granted(l.acquire(&ask(9, 10, 1, S), 0));
        assert_eq!(l.held(), 3);
    }

    #[test]
    fn racing_acquires_never_grant_more_than_the_limit() {
        let l = Leases::new(1_000);
        let granted_now = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2_000 {
                        if let Acquired::Granted { token, .. } = l.acquire(&ask(5, 10, 1, S), 0) {
                            let n = granted_now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            granted_now.fetch_sub(1, Ordering::SeqCst);
                            assert!(l.release(token, 0));
                        }
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 10);
        assert_eq!(l.held(), 0);
    }
}
