//! TLS handshakes in progress on one listener, so that connections that
//! never finish one cannot keep others out.
//!
//! Each lasts at most `server.tls_handshake_timeout`. At most
//! `server.max_handshakes_per_peer` are in progress from one peer address
//! and [`MAX_HANDSHAKES`] in all; a new connection past either cap ends
//! the oldest unfinished handshake (that peer's, or anyone's) instead of
//! being turned away. A flood of silent connections thus only ever
//! displaces its own earlier connections, and a real client, whose
//! handshake takes milliseconds, finishes long before enough newer ones
//! pile up behind it, even from the same address.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// Handshakes in progress at once, per listener.
pub const MAX_HANDSHAKES: usize = 1_024;

/// The handshakes of one listener.
#[derive(Debug)]
pub struct Handshakes {
    per_peer: usize,
    total: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// By start order: the first is the oldest.
    pending: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    by_peer: HashMap<IpAddr, VecDeque<u64>>,
}

impl State {
    /// Ends handshake `id`, if it is still in progress.
    fn end(&mut self, id: u64) -> Option<Arc<Notify>> {
        let (peer, stop) = self.pending.remove(&id)?;
        if let Some(ids) = self.by_peer.get_mut(&peer) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        Some(stop)
    }
}

/// One handshake in progress: ends it in the books when dropped, and
/// says when it was displaced.
#[derive(Debug)]
pub struct Pending {
    id: u64,
    stop: Arc<Notify>,
    owner: Arc<Handshakes>,
}

impl Pending {
    /// Resolves when a newer connection displaced this handshake.
    pub async fn displaced(&self) {
        self.stop.notified().await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.owner.lock().end(self.id);
    }
}

impl Handshakes {
    /// At most `per_peer` in progress from one address, `total` in all.
    pub fn new(per_peer: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_peer: per_peer.max(1),
            total: total.max(1),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a handshake from `peer`, displacing the oldest one in
    /// progress (the peer's own first) when a cap is reached; says
    /// whether it displaced one.
    pub fn start(self: &Arc<Self>, peer: IpAddr) -> (Pending, bool) {
        let mut s = self.lock();
        let mut displaced = false;
        let own = s.by_peer.get(&peer).map_or(0, VecDeque::len);
        let victim = if own >= self.per_peer {
            s.by_peer.get(&peer).and_then(|ids| ids.front().copied())
        } else if s.pending.len() >= self.total {
            s.pending.keys().next().copied()
        } else {
            None
        };
        if let Some(stop) = victim.and_then(|v| s.end(v)) {
            stop.notify_one();
            displaced = true;
        }
        let id = s.next;
        s.next += 1;
        let stop = Arc::new(Notify::new());
        s.pending.insert(id, (peer, Arc::clone(&stop)));
        s.by_peer.entry(peer).or_default().push_back(id);
        let pending = Pending {
            id,
            stop,
            owner: Arc::clone(self),
        };
        (pending, displaced)
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn the_oldest_of_a_peer_then_of_all_is_displaced() {
        let h = Handshakes::new(2, 3);
        let (a1, d) = h.start(ip(1));
        assert!(!d);
        let (_a2, _) = h.start(ip(1));
        // A third from the same peer ends its first.
        let (_a3, d) = h.start(ip(1));
        assert!(d);
        tokio::time::timeout(std::time::Duration::from_secs(1), a1.displaced())
            .await
            .expect("the first was told");
        assert_eq!(h.in_progress(), 2);
        let (b1, d) = h.start(ip(2));
        assert!(!d);
        assert_eq!(h.in_progress(), 3);
        // All three slots taken: a newcomer ends the oldest of all.
        let (_c1, d) = h.start(ip(3));
        assert!(d);
        assert_eq!(h.in_progress(), 3);
        drop(b1);
        assert_eq!(h.in_progress(), 2);
    }
}
