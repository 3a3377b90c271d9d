//! Read caches a store keeps in front of its database, for the reads that every request
//! makes and whose answer almost never changes: a finished job (status monitors are
//! polled far more often than jobs finish), whether any API key exists, and a tool's
//! recent run time (an estimate behind every `Retry-After`).
//!
//! Each entry is trusted for at most `FRESH` after it was read, so a change made by
//! another process that shares the database (a reaper purging a job, `batchgate keys
//! create`) is seen within that time; changes made through the same store instance
//! update the cache at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::jobs::Job;

/// How long a cached answer is trusted without asking the database again.
pub const FRESH: Duration = Duration::from_secs(1);

/// Entries kept at most; when full, the cache starts over (cheaper than tracking recency,
/// and an entry costs one read to bring back).
const CAPACITY: usize = 10_000;

/// Finished jobs by id. Only terminal jobs are cached: a queued or running job changes
/// with every attempt, a terminal one only when its data is purged.
#[derive(Default)]
pub struct FinishedJobs {
    entries: Mutex<HashMap<Uuid, (Job, Instant)>>,
}

impl FinishedJobs {
    pub fn get(&self, id: Uuid) -> Option<Job> {
        let entries = self.lock();
        let (job, read_at) = entries.get(&id)?;
        (read_at.elapsed() < FRESH).then(|| job.clone())
    }

    /// Remembers `job` if it has ended.
    pub fn offer(&self, job: &Job) {
        if !job.state.is_terminal() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(job.id, (job.clone(), Instant::now()));
    }

    /// Forgets a job this store has just changed.
    pub fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Job, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether any API key exists. Once one does, keys are required for good, so only the
/// "none yet" answer needs re-reading.
#[derive(Default)]
pub struct KeysExist {
    found: AtomicBool,
    checked_at: Mutex<Option<Instant>>,
}

impl KeysExist {
    /// The answer, if it is known well enough not to ask the database.
    pub fn known(&self) -> Option<bool> {
        if self.found.load(Ordering::Relaxed) {
            return Some(true);
        }
        let checked_at = *self
            .checked_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        checked_at
            .is_some_and(|at| at.elapsed() < FRESH)
            .then_some(false)
    }

    pub fn record(&self, found: bool) {
        if found {
            self.found.store(true, Ordering::Relaxed);
        }
        *self
            .checked_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }
}

/// (tool, version) → (its mean run time, `None` before its first run; when it was read).
type RunTimeEntries = HashMap<(String, u32), (Option<Duration>, Instant)>;

/// A tool version's recent mean run time, by tool and version.
#[derive(Default)]
pub struct RunTimes {
    entries: Mutex<RunTimeEntries>,
}

impl RunTimes {
    /// The cached answer, if it was read less than `FRESH` ago.
    pub fn get(&self, tool: &str, version: u32) -> Option<Option<Duration>> {
        let entries = self.lock();
        let (mean, read_at) = entries.get(&(tool.to_owned(), version))?;
        (read_at.elapsed() < FRESH).then_some(*mean)
    }

    pub fn record(&self, tool: &str, version: u32, mean: Option<Duration>) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert((tool.to_owned(), version), (mean, Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunTimeEntries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobState;

    #[test]
    fn only_finished_jobs_are_cached_and_forget_drops_them() {
        let cache = FinishedJobs::default();
        let mut job = crate::store::tests::new_job("t", None);
        cache.offer(&job);
        assert!(cache.get(job.id).is_none(), "a queued job is never cached");
        job.state = JobState::Succeeded;
        cache.offer(&job);
        assert_eq!(
            cache.get(job.id).map(|j| j.state),
            Some(JobState::Succeeded)
        );
        cache.forget(job.id);
        assert!(cache.get(job.id).is_none());
    }

    #[test]
    fn a_found_key_is_remembered_and_none_found_is_rechecked() {
        let keys = KeysExist::default();
        assert_eq!(keys.known(), None);
        keys.record(false);
        assert_eq!(keys.known(), Some(false));
        keys.record(true);
        assert_eq!(keys.known(), Some(true));
    }

    #[test]
    fn run_times_are_kept_per_tool_version_including_none_yet() {
        let times = RunTimes::default();
        assert_eq!(times.get("t", 1), None, "never read");
        times.record("t", 1, None);
        times.record("t", 2, Some(Duration::from_millis(40)));
        assert_eq!(times.get("t", 1), Some(None), "no run yet is an answer too");
        assert_eq!(times.get("t", 2), Some(Some(Duration::from_millis(40))));
        assert_eq!(times.get("u", 2), None);
    }
}
