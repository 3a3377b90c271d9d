//! Wake-ups for whoever waits on one job (an event stream, a `Prefer: wait`): the store
//! calls `notify` after every committed change of a job; a waiter subscribes *before* it
//! reads, so no change between its read and its wait is missed.
//!
//! It also wakes idle workers when a job becomes claimable (`job_queued`).
//!
//! This only carries "something changed" and whether the change could have ended the job
//! (a claim or a progress report cannot: a `Prefer: wait` need not re-read the job for
//! them); what changed is read from the store (its event log), so a lost or merged
//! wake-up costs latency, never data. Waiters also re-read on a timer. A store shared by
//! several processes (PostgreSQL) feeds the changes the others announce into the same
//! registry, as changes that could have ended the job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Changes {
    /// Per watched job: how many changes that could have ended it were announced.
    watched: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    queued: Notify,
}

impl Changes {
    pub fn new() -> Arc<Changes> {
        Arc::new(Changes::default())
    }

    /// Wakes the subscribers of job `id`, if any, for a change that could have ended it.
    pub fn notify(&self, id: Uuid) {
        self.wake(id, 1);
    }

    /// Wakes the subscribers of job `id` for a change that cannot have ended it (a claim,
    /// a heartbeat with progress).
    pub fn progressed(&self, id: Uuid) {
        self.wake(id, 0);
    }

    fn wake(&self, id: Uuid, ends: u64) {
        let watched = self.watched.lock().expect("changes lock");
        if let Some(sender) = watched.get(&id) {
            sender.send_modify(|count| *count += ends);
        }
    }

    /// A job became claimable: wakes one idle worker (or the next one to wait).
    pub fn job_queued(&self) {
        self.queued.notify_one();
    }

    /// Waits until a job is queued (a wake-up, not a promise: the claim may find none).
    pub async fn queued(&self) {
        self.queued.notified().await;
    }

    /// A subscription to job `id`'s changes from now on.
    pub fn subscribe(self: &Arc<Self>, id: Uuid) -> Subscription {
        let mut watched = self.watched.lock().expect("changes lock");
        let receiver = watched
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        let ends = *receiver.borrow();
        Subscription {
            changes: self.clone(),
            id,
            receiver,
            ends,
        }
    }

    /// How many jobs have subscribers (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.watched.lock().expect("changes lock").len()
    }
}

pub struct Subscription {
    changes: Arc<Changes>,
    id: Uuid,
    receiver: watch::Receiver<u64>,
    /// The sender's count of possibly ending changes when this subscriber last looked.
    ends: u64,
}

impl Subscription {
    /// Waits until the job changed since the subscription began or since the last call
    /// returned; true if one of those changes could have ended it.
    pub async fn changed(&mut self) -> bool {
        if self.receiver.changed().await.is_err() {
            // The sender lives as long as a subscription exists; never here.
            std::future::pending::<()>().await;
        }
        let ends = *self.receiver.borrow_and_update();
        std::mem::replace(&mut self.ends, ends) != ends
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.changes.watched.lock().expect("changes lock");
        // This receiver is still alive while dropping: it is the last one at 1.
        if watched
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            watched.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_change_after_subscribing_wakes_and_the_last_subscriber_cleans_up() {
        let changes = Changes::new();
        let id = Uuid::now_v7();
        let other = Uuid::now_v7();
        changes.notify(id); // nobody listens: nothing kept
        assert_eq!(changes.watched(), 0);
        let mut first = changes.subscribe(id);
        let second = changes.subscribe(id);
        let waited = tokio::time::timeout(Duration::from_millis(50), first.changed()).await;
        assert!(waited.is_err(), "no change yet");
        changes.notify(other);
        let waited = tokio::time::timeout(Duration::from_millis(50), first.changed()).await;
        assert!(waited.is_err(), "another job's change does not wake");
        changes.notify(id);
        let ended = tokio::time::timeout(Duration::from_secs(1), first.changed())
            .await
            .expect("woken");
        assert!(ended, "a change that could have ended the job says so");
        changes.progressed(id);
        let ended = tokio::time::timeout(Duration::from_secs(1), first.changed())
            .await
            .expect("woken by progress");
        assert!(!ended, "progress cannot have ended the job");
        // Merged wake-ups: an ending change among them is not lost.
        changes.notify(id);
        changes.progressed(id);
        let ended = tokio::time::timeout(Duration::from_secs(1), first.changed())
            .await
            .expect("woken");
        assert!(ended, "an ending change merged with progress still counts");
        drop(first);
        assert_eq!(changes.watched(), 1);
        drop(second);
        assert_eq!(changes.watched(), 0);
    }
}
