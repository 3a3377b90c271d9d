//! Durable job state behind one trait. `sqlite` is the embedded default; every backend
//! runs the same conformance suite (`tests.rs`).
//!
//! Architecture invariant: every state change is a single conditional `UPDATE` whose
//! `WHERE` clause carries the expected state (and, for a running job, the attempt
//! number), so a stale worker can never overwrite a newer attempt's outcome.

pub mod sqlite;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::jobs::{Job, JobError, JobState, Progress, StoredOutput};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the job store is unavailable: {0}")]
    Unavailable(String),
    #[error("the job store holds data it cannot read: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The result of inserting a job that carries an idempotency key.
#[derive(Debug)]
pub enum Inserted {
    Created,
    /// A job with the same owner and idempotency key exists already.
    Existing(Box<Job>),
}

/// What a heartbeat learnt.
#[derive(Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease is renewed; `cancel_requested` says a cancel was asked for.
    Held { cancel_requested: bool },
    /// The attempt no longer owns the job (lease expired and taken over, or finished).
    Lost,
}

/// A page request of a caller's job history.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub owner: String,
    pub state: Option<JobState>,
    pub tool: Option<String>,
    /// Only jobs older than this one (the previous page's last id).
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// The end of an attempt, committed only if the attempt still owns the job.
#[derive(Debug, Clone)]
pub struct Completion {
    pub state: JobState,
    pub error: Option<JobError>,
    pub outputs: Vec<StoredOutput>,
    pub finished_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new queued job. With an idempotency key already used by the same owner,
    /// stores nothing and returns the existing job.
    async fn insert(&self, job: &Job) -> Result<Inserted, StoreError>;
    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError>;
    async fn find_by_idempotency_key(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<Job>, StoreError>;
    /// Newest first.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError>;

    /// Takes the oldest due queued job (skipping tools in `exclude`, given as
    /// `name@version`), starts its next attempt and leases it until `lease_until`.
    async fn claim(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        exclude: &[String],
    ) -> Result<Option<Job>, StoreError>;
    /// Renews the lease of `attempt` and records its progress.
    async fn heartbeat(
        &self,
        id: Uuid,
        attempt: u32,
        lease_until: DateTime<Utc>,
        progress: Option<&Progress>,
    ) -> Result<Heartbeat, StoreError>;
    /// Ends `attempt` with a terminal state. False (and no change) if the attempt no
    /// longer owns the job.
    async fn complete(
        &self,
        id: Uuid,
        attempt: u32,
        completion: &Completion,
    ) -> Result<bool, StoreError>;
    /// Puts `attempt`'s job back in the queue, due at `run_after`.
    async fn requeue(
        &self,
        id: Uuid,
        attempt: u32,
        run_after: DateTime<Utc>,
        error: &JobError,
    ) -> Result<bool, StoreError>;
    /// Cancels a queued job at once, or flags a running one for its worker. Returns the
    /// job afterwards (`None` if absent).
    async fn request_cancel(&self, id: Uuid, now: DateTime<Utc>)
        -> Result<Option<Job>, StoreError>;
    /// Marks a terminal job's data as deleted. False if it is not terminal.
    async fn mark_purged(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Running jobs whose lease ended before `now`: back to the queue if attempts are
    /// left, otherwise failed. Returns how many were recovered.
    async fn recover_expired_leases(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Queued jobs due before this one.
    async fn queued_ahead(&self, job: &Job) -> Result<u64, StoreError>;
    /// Mean run time of the tool's last successful jobs.
    async fn recent_run_time(
        &self,
        tool: &str,
        version: u32,
    ) -> Result<Option<Duration>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The error recorded on a job whose worker vanished.
pub fn lease_lost_error(attempt: u32, final_attempt: bool) -> JobError {
    let message = if final_attempt {
        format!(
            "the worker running attempt {attempt} stopped responding and no attempts are left; \
             submit the job again"
        )
    } else {
        format!("the worker running attempt {attempt} stopped responding; the job was queued again")
    };
    JobError {
        code: "worker-lost".into(),
        message,
        exit_code: None,
        signal: None,
        stderr_tail: None,
    }
}
