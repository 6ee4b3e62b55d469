//! The leases waiting for their first renewal, in due order, and the one task that starts it.
//!
//! Nearly every lease is released within milliseconds, long before its first renewal is due (a
//! third of its TTL). A renewal task spawned per lease cost a task, a timer and an abort per
//! posting for a renewal that almost never ran. Here a held lease only takes a place in the
//! queue; one scheduler task per [`Renewals`] starts a lease's renewal loop
//! ([`super::watchdog`]) when its first renewal falls due and the lease is still held. From then
//! on the lease renews exactly as it always did.
//!
//! The scheduler sleeps until the earliest due renewal and is woken only when a lease falls due
//! before that: with one TTL for every lease that is when the queue was empty, not per lease.
//! It ends once the [`Renewals`] and every lease it holds are gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Lease, LockStore};

/// Starts the renewal of held leases when it falls due; one per pipeline. Leases it holds are
/// renewed until released, whether or not the `Renewals` itself is still there.
#[derive(Clone, Default)]
pub struct Renewals {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the scheduler for a renewal due before the one it sleeps for, or to end.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Queue {
    /// Leases not yet renewed, by first renewal due, then arrival.
    waiting: BTreeMap<(Instant, u64), Waiting>,
    /// The renewal loops started, by ticket.
    running: HashMap<u64, JoinHandle<()>>,
    next_id: u64,
    /// When the scheduler looks next; `None` while it waits to be woken.
    looks_at: Option<Instant>,
    scheduler: Option<JoinHandle<()>>,
}

/// What a renewal loop needs, kept until it starts.
pub(super) struct Waiting {
    pub(super) store: Arc<dyn LockStore>,
    pub(super) lease: Lease,
    pub(super) state: watch::Sender<Option<Instant>>,
}

/// A lease's place in [`Renewals`]: waiting at `due`, or running once started.
pub(super) struct Ticket {
    shared: Arc<Shared>,
    due: Instant,
    id: u64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing in the queue's critical sections can panic halfway through a change.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Renewals {
    /// An empty queue; its scheduler starts with the first lease, on the runtime it comes from.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `waiting` for its first renewal at `due`.
    pub(super) fn enqueue(&self, due: Instant, waiting: Waiting) -> Ticket {
        let shared = &self.shared;
        let mut queue = shared.queue();
        if queue.scheduler.as_ref().is_none_or(JoinHandle::is_finished) {
            // The first lease, or the runtime that ran the scheduler is gone (a test's). Spawned
            // before the lease is queued: outside a runtime the spawn panics, and no entry
            // without a ticket (renewed forever) may be left behind.
            queue.scheduler = Some(tokio::spawn(schedule(
                Arc::downgrade(shared),
                shared.wake.clone(),
            )));
            queue.looks_at = Some(due);
        } else if queue.looks_at.is_none_or(|at| due < at) {
            queue.looks_at = Some(due);
            shared.wake.notify_one();
        }
        let id = queue.next_id;
        queue.next_id += 1;
        queue.waiting.insert((due, id), waiting);
        Ticket {
            shared: shared.clone(),
            due,
            id,
        }
    }
}

impl Drop for Shared {
    /// The scheduler wakes to find nothing left to schedule, and ends.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

impl Ticket {
    /// Ends the lease's renewal, waiting or running.
    pub(super) fn cancel(self) {
        let mut queue = self.shared.queue();
        let waiting = queue.waiting.remove(&(self.due, self.id));
        let running = match waiting {
            Some(_) => None,
            None => queue.running.remove(&self.id),
        };
        drop(queue);
        // Dropped and aborted outside the lock.
        drop(waiting);
        if let Some(running) = running {
            running.abort();
        }
    }
}

/// The scheduler: starts every renewal that is due, then sleeps until the next one (or a wake).
/// It holds the queue only while it looks, so the queue's end is its own.
async fn schedule(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut queue = shared.queue();
            let now = Instant::now();
            while let Some(entry) = queue.waiting.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, id), waiting) = entry.remove_entry();
                let renewal = tokio::spawn(super::watchdog::renew(
                    waiting.store,
                    waiting.lease,
                    waiting.state,
                ));
                queue.running.insert(id, renewal);
            }
            let next = queue.waiting.first_key_value().map(|(&(due, _), _)| due);
            queue.looks_at = next;
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
