//! A small shutdown signal shared by every task: one [`Trigger`] fires it,
//! any number of [`Shutdown`] handles wait for it.

use tokio::sync::watch;

/// Fires the shutdown. Dropping it fires too, so a task that loses its
/// owner does not run forever.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Waits for the shutdown. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and handle.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Signals every handle.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once the shutdown has fired (at once if it already has).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means shut down.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// Whether the shutdown has fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fire_wakes_every_handle() {
        let (t, s) = channel();
        let mut a = s.clone();
        let mut b = s;
        assert!(!a.is_fired());
        t.fire();
        a.wait().await;
        b.wait().await;
        assert!(b.is_fired());
    }

    #[tokio::test]
    async fn dropping_the_trigger_counts_as_firing() {
        let (t, mut s) = channel();
        drop(t);
        s.wait().await;
    }
}
