//! The readiness latch: whether the node is ready (serving, and nothing it
//! depends on missing), shared by the app, Redis sync's readiness policy
//! and the health endpoints that report it (see [`crate::telemetry`]).
//! A leaf: it imports no other module of the crate.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// A ready/not-ready latch shared by the app and the health endpoints.
///
/// Ready means both: the daemon is serving (limits loaded, listeners up,
/// not shutting down: [`Readiness::set`]) and nothing it depends on is
/// missing ([`Readiness::hold`]: Redis, when limits in the table are
/// strict and Redis is unreachable).
#[derive(Debug, Clone)]
pub struct Readiness {
    ready: watch::Sender<bool>,
    inputs: Arc<Mutex<Inputs>>,
}

#[derive(Debug, Default)]
struct Inputs {
    serving: bool,
    held: Option<&'static str>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            ready: watch::Sender::new(false),
            inputs: Arc::default(),
        }
    }
}

impl Readiness {
    /// Not ready yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Marks the daemon serving (or not: starting, shutting down).
    pub fn set(&self, serving: bool) {
        self.update(|i| i.serving = serving);
    }
    /// Holds readiness back for `why` (or releases it with `None`).
    pub fn hold(&self, why: Option<&'static str>) {
        self.update(|i| i.held = why);
    }
    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }
    /// What holds readiness back, if anything does while serving.
    pub fn held(&self) -> Option<&'static str> {
        self.lock().held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inputs> {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Inputs)) {
        let mut inputs = self.lock();
        change(&mut inputs);
        let ready = inputs.serving && inputs.held.is_none();
        self.ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    /// A receiver of every change (for gRPC health `Watch` streams).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}

/// A line of `/readyz`'s body about something the node depends on (the
/// Redis sync state), read per request; the caller wires it in, so this
/// module need not know what it reports on.
pub type StateLine = Arc<dyn Fn() -> &'static str + Send + Sync>;
