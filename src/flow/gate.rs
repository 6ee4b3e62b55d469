//! The worker's gate: closed while the lock store or the ledger is unreachable.
//!
//! The pipeline reports an unreachable dependency (`Outcome::Unavailable`); the worker then
//! [`pause`](Gate::pause)s the gate, stops taking deliveries, sends what it already holds to the
//! wait queue unattempted, and probes the dependency with backoff; the first answer
//! [`resume`](Gate::resume)s it. Cheap to clone: clones share the state, and
//! [`changed`](Gate::changed) wakes the consume loop on every transition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{PauseReason, Paused, announce_pause, announce_resume};

/// A dependency every posting needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    LockStore,
    Ledger,
}

impl Dependency {
    /// Label value (`lock_store`, `ledger`).
    pub fn label(self) -> &'static str {
        match self {
            Self::LockStore => "lock_store",
            Self::Ledger => "ledger",
        }
    }
}

/// The paused dependencies and since when.
type State = BTreeMap<Dependency, Instant>;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Gate {
    state: Arc<watch::Sender<State>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(State::new())),
        }
    }
}

impl Gate {
    /// Closes the gate for `dependency`; returns whether it was open for it (the caller then
    /// starts probing). `detail` says what failed, for the one log line.
    pub fn pause(&self, dependency: Dependency, detail: &str) -> bool {
        let newly = self.state.send_if_modified(|paused| {
            if paused.contains_key(&dependency) {
                return false;
            }
            paused.insert(dependency, Instant::now());
            true
        });
        if newly {
            announce_pause(dependency.label(), PauseReason::Unavailable, detail);
        }
        newly
    }

    /// Opens the gate for `dependency` (it answered).
    pub fn resume(&self, dependency: Dependency) {
        let mut since = None;
        self.state.send_if_modified(|paused| {
            since = paused.remove(&dependency);
            since.is_some()
        });
        if let Some(since) = since {
            announce_resume(dependency.label(), PauseReason::Unavailable, since);
        }
    }

    /// Whether every dependency answers (deliveries may be taken).
    pub fn is_open(&self) -> bool {
        self.state.borrow().is_empty()
    }

    /// The first paused dependency, if any.
    pub fn first_paused(&self) -> Option<Dependency> {
        self.state.borrow().keys().next().copied()
    }

    /// A view that wakes at every pause and resume after it was taken.
    pub fn watch(&self) -> GateWatch {
        GateWatch(self.state.subscribe())
    }

    /// The paused dependencies, for `/readyz`.
    pub fn paused(&self) -> Vec<Paused> {
        self.state
            .borrow()
            .iter()
            .map(|(dependency, since)| Paused {
                dependency: dependency.label().to_owned(),
                reason: PauseReason::Unavailable,
                since: *since,
            })
            .collect()
    }
}

/// See [`Gate::watch`].
#[derive(Debug)]
pub struct GateWatch(watch::Receiver<State>);

impl GateWatch {
    /// Resolves at the next pause or resume not yet seen (cancel-safe).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // Every gate dropped: nothing will change again.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pauses_once_per_dependency_and_resumes() {
        let gate = Gate::default();
        assert!(gate.is_open());
        let mut watch = gate.watch();
        let woken = tokio::spawn(async move { watch.changed().await });
        assert!(gate.pause(Dependency::Ledger, "down"));
        assert!(
            !gate.pause(Dependency::Ledger, "still down"),
            "announced once"
        );
        woken.await.unwrap();
        assert!(!gate.is_open());
        assert_eq!(gate.first_paused(), Some(Dependency::Ledger));
        assert_eq!(gate.paused()[0].dependency, "ledger");
        gate.pause(Dependency::LockStore, "down");
        gate.resume(Dependency::Ledger);
        assert!(!gate.is_open(), "the lock store is still paused");
        gate.resume(Dependency::LockStore);
        assert!(gate.is_open());
    }
}
