//! The attempts running in this process and how each is stopped: `DELETE` (the API)
//! stops a program at once instead of at its next heartbeat, and a shutdown (the worker)
//! hands the attempts back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The attempts running in this process: `DELETE` stops a program at once instead of at
/// its next heartbeat, and a shutdown hands the attempts back.
#[derive(Default)]
pub struct RunningJobs {
    attempts: Mutex<HashMap<Uuid, Steering>>,
    handing_back: AtomicBool,
}

/// How one running attempt is stopped.
#[derive(Clone, Default)]
pub struct Steering {
    /// The caller canceled the job: stop the program.
    pub cancel: CancellationToken,
    /// This worker lets go of the attempt (shutdown, lost lease): an executor whose
    /// programs outlive it leaves the program running for the next worker.
    pub detach: CancellationToken,
}

impl RunningJobs {
    /// Registers an attempt that starts now. One that starts after `hand_back_all` (its
    /// claim raced the shutdown) is let go at once, like those running then.
    pub fn register(&self, id: Uuid) -> Steering {
        let steering = Steering::default();
        let mut attempts = self.lock();
        // Read under the lock that `hand_back_all` takes after setting the flag: either
        // the flag is seen here or the attempt is in the map it walks.
        if self.handing_back() {
            steering.detach.cancel();
        }
        attempts.insert(id, steering.clone());
        steering
    }

    pub fn unregister(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    /// Cancels the attempt if it runs here; false otherwise.
    pub fn cancel(&self, id: Uuid) -> bool {
        match self.lock().get(&id) {
            Some(steering) => {
                steering.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Lets go of every attempt running here; their jobs go back to the queue (the
    /// process is shutting down and the grace period is over).
    pub fn hand_back_all(&self) -> usize {
        self.handing_back.store(true, Ordering::SeqCst);
        let attempts = self.lock();
        for steering in attempts.values() {
            steering.detach.cancel();
        }
        attempts.len()
    }

    /// True once `hand_back_all` was called: a stopped attempt is handed back, not
    /// canceled.
    pub fn handing_back(&self) -> bool {
        self.handing_back.load(Ordering::SeqCst)
    }

    /// Attempts running here.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Steering>> {
        self.attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt whose claim raced the shutdown is handed back too, not run to its end.
    #[test]
    fn an_attempt_registered_after_the_hand_back_is_let_go() {
        let running = RunningJobs::default();
        let before = running.register(Uuid::now_v7());
        assert_eq!(running.hand_back_all(), 1);
        assert!(before.detach.is_cancelled());
        let after = running.register(Uuid::now_v7());
        assert!(after.detach.is_cancelled());
        assert!(!after.cancel.is_cancelled(), "handed back, not canceled");
    }
}
