//! Durable job state behind one trait. `sqlite` is the embedded default, `postgres` the
//! store shared by many replicas and workers; both run the same conformance suite
//! (`tests.rs`).
//!
//! Architecture invariant: every state change is a single conditional `UPDATE` whose
//! `WHERE` clause carries the expected state (and, for a running job, the attempt
//! number), so a stale worker can never overwrite a newer attempt's outcome.

pub mod cache;
pub mod changes;
pub mod durable;
pub mod postgres;
mod rows;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::jobs::{Job, JobError, JobEvent, JobState, Progress, StoredOutput};
pub use changes::{Changes, Subscription};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Down, unreachable, locked by another process, restarting: it may pass.
    #[error("the job store is unavailable: {0}")]
    Unavailable(String),
    /// The disk under the store is full: it passes when space is made.
    #[error("the job store's disk is full: {0}")]
    Full(String),
    /// A row it cannot read, or a statement it refuses: retrying does not help.
    #[error("the job store holds data it cannot read: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// What went wrong, in words a client may read (no database message).
    pub fn summary(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "the job store is unavailable",
            StoreError::Full(_) => "the job store's disk is full",
            StoreError::Corrupt(_) => "the job store failed",
        }
    }

    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Full(_))
    }
}

/// One classification of the database's errors for both stores (the conformance suite
/// checks it): what may pass (the server or its disk, a lock, a lost connection) is
/// `Unavailable` or `Full`; what cannot (a row it cannot decode, a statement the store
/// should never send) is `Corrupt`.
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        use sqlx::Error;
        let text = error.to_string();
        match &error {
            Error::Database(database) => match database_condition(database.as_ref()) {
                Condition::Full => StoreError::Full(text),
                Condition::Passing => StoreError::Unavailable(text),
                Condition::Permanent => StoreError::Corrupt(text),
            },
            Error::Io(io) if crate::datadir::is_full(io) => StoreError::Full(text),
            Error::Io(_)
            | Error::Tls(_)
            | Error::Protocol(_)
            | Error::PoolTimedOut
            | Error::PoolClosed
            | Error::WorkerCrashed => StoreError::Unavailable(text),
            _ => StoreError::Corrupt(text),
        }
    }
}

/// The store's own file operations (SQLite's group-commit sync, its files' modes).
impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> StoreError {
        if crate::datadir::is_full(&error) {
            StoreError::Full(error.to_string())
        } else {
            StoreError::Unavailable(error.to_string())
        }
    }
}

#[cfg(test)]
mod classification {
    use super::StoreError;

    fn kind(error: sqlx::Error) -> &'static str {
        match StoreError::from(error) {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Full(_) => "full",
            StoreError::Corrupt(_) => "corrupt",
        }
    }

    #[test]
    fn what_may_pass_is_retryable_and_what_cannot_is_not() {
        let io = |errno: rustix::io::Errno| {
            sqlx::Error::Io(std::io::Error::from_raw_os_error(errno.raw_os_error()))
        };
        let cases = [
            (sqlx::Error::PoolTimedOut, "unavailable"),
            (sqlx::Error::PoolClosed, "unavailable"),
            (io(rustix::io::Errno::CONNREFUSED), "unavailable"),
            (io(rustix::io::Errno::NOSPC), "full"),
            (sqlx::Error::ColumnNotFound("state".into()), "corrupt"),
            (sqlx::Error::Decode("not a uuid".into()), "corrupt"),
            (sqlx::Error::RowNotFound, "corrupt"),
        ];
        for (error, expected) in cases {
            let text = error.to_string();
            assert_eq!(kind(error), expected, "{text}");
        }
    }

    /// A real SQLite lock held by another connection: the store's busy timeout runs out
    /// and the write is `Unavailable` (a `503`), not a crash or a wait without end.
    #[tokio::test]
    async fn a_database_locked_by_another_process_is_unavailable() {
        use sqlx::ConnectOptions;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let store = super::sqlite::SqliteJobStore::open(&path).await.unwrap();
        let mut other = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut other)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let error = super::JobStore::create_key(&store, &test_key())
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        super::JobStore::create_key(&store, &test_key())
            .await
            .unwrap();
    }

    fn test_key() -> super::ApiKey {
        super::ApiKey {
            id: "lock".into(),
            hash: "0".repeat(64),
            name: "lock".into(),
            tier: "free".into(),
            admin: false,
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }
    }
}

enum Condition {
    Full,
    Passing,
    Permanent,
}

/// What a database's own error code says: SQLite's result codes (the primary code, the
/// low byte of the extended one), PostgreSQL's SQLSTATE classes.
fn database_condition(error: &dyn sqlx::error::DatabaseError) -> Condition {
    let code = error.code().unwrap_or_default();
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        return match code.parse::<i32>().map(|code| code & 0xff) {
            // SQLITE_FULL
            Ok(13) => Condition::Full,
            // BUSY, LOCKED, READONLY, IOERR, CANTOPEN, PROTOCOL
            Ok(5 | 6 | 8 | 10 | 14 | 15) => Condition::Passing,
            _ => Condition::Permanent,
        };
    }
    match code.as_ref() {
        // disk_full
        "53100" => Condition::Full,
        // connection exceptions, insufficient resources, operator intervention (a
        // restart), serialization failures and deadlocks, read-only transactions
        sqlstate
            if ["08", "53", "57", "40"]
                .iter()
                .any(|class| sqlstate.starts_with(class))
                || sqlstate == "25006" =>
        {
            Condition::Passing
        }
        _ => Condition::Permanent,
    }
}

/// The result of inserting a job.
#[derive(Debug)]
pub enum Inserted {
    Created,
    /// A job with the same owner and idempotency key exists already.
    Existing(Box<Job>),
    /// The owner's quota refused it; nothing was stored.
    Refused(Refusal),
}

/// Quota checks made atomically with an insert.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// At most `limit` jobs of the owner created since `since`.
    pub window: Option<(u64, DateTime<Utc>)>,
    /// At most this many of the owner's jobs queued or running.
    pub concurrent: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The window is full; it frees when its oldest job leaves it.
    JobsPerWindow {
        oldest: DateTime<Utc>,
    },
    Concurrent,
}

/// An owner's current standing against its quotas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    pub jobs_since: u64,
    /// Creation time of the oldest of those jobs.
    pub oldest_since: Option<DateTime<Utc>>,
    pub active: u64,
}

/// What one attempt cost.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptUsage {
    pub job_id: Uuid,
    pub attempt: u32,
    pub owner: String,
    pub tier: String,
    pub tool: String,
    pub tool_version: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `succeeded`, `failed`, `canceled`, `retry`, `discarded`.
    pub outcome: String,
    pub wall_ms: u64,
    /// CPU time (user + system) of the program and the descendants it waited for.
    pub cpu_ms: Option<u64>,
    pub max_rss_bytes: Option<u64>,
    /// Inputs and control file staged for the program.
    pub bytes_in: u64,
    /// Outputs and logs stored.
    pub bytes_out: u64,
}

/// Summed attempt costs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    pub jobs: u64,
    pub attempts: u64,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub max_rss_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
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
    /// `None`: every owner's jobs (an admin's view).
    pub owner: Option<String>,
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

/// A key as stored: never the key itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    pub name: String,
    pub tier: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new queued job. With an idempotency key already used by the same owner,
    /// stores nothing and returns the existing job.
    /// Quota checks in `admission` are made in the same atomic step.
    async fn insert(&self, job: &Job, admission: &Admission) -> Result<Inserted, StoreError>;
    /// The owner's jobs since `since` and its jobs queued or running.
    async fn standing(&self, owner: &str, since: DateTime<Utc>) -> Result<Standing, StoreError>;
    /// Queued jobs, counted up to `cap` (so the cost is bounded).
    async fn queued_count(&self, cap: u64) -> Result<u64, StoreError>;
    /// Jobs per (tool, state), for the metrics gauges.
    async fn state_counts(&self) -> Result<Vec<(String, JobState, u64)>, StoreError>;
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
    /// Records (or clears, with `None`) where `attempt`'s program can be found again by a
    /// worker that takes the job over, e.g. a Slurm job id: an executor whose programs
    /// outlive the worker re-attaches to it instead of starting the program again. Claims,
    /// requeues and lease recoveries keep it. False if the attempt no longer owns the job.
    async fn set_executor_ref(
        &self,
        id: Uuid,
        attempt: u32,
        reference: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Cancels a queued job at once, or flags a running one for its worker. Returns the
    /// job afterwards (`None` if absent).
    async fn request_cancel(&self, id: Uuid, now: DateTime<Utc>)
        -> Result<Option<Job>, StoreError>;
    /// Marks a terminal job's data as deleted (it answers 410 from then on). False if it
    /// is not terminal.
    async fn mark_purged(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Records that a purged job's blobs are gone.
    async fn mark_cleaned(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Jobs whose data must go: finished jobs past their expiry, and purged jobs whose
    /// blobs were not yet deleted (a purge interrupted by a crash). Never an unfinished
    /// job.
    async fn due_for_cleanup(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError>;
    /// Running jobs whose lease ended before `now`: back to the queue if attempts are
    /// left, otherwise failed. Returns how many were recovered.
    async fn recover_expired_leases(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Queued jobs due before this one.
    async fn queued_ahead(&self, job: &Job) -> Result<u64, StoreError>;
    /// Typical run time of the tool's last successful jobs: the median of the last 20,
    /// so that a few slow runs do not make every client wait for them (an estimate:
    /// cached for up to a second).
    async fn recent_run_time(
        &self,
        tool: &str,
        version: u32,
    ) -> Result<Option<Duration>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;

    /// The deployment's clock. Every time a process hands the store (a lease's end, a
    /// retry's due time, "now" for recovery, quotas and retention) is read from it, so
    /// that all processes judge on one clock whatever their own says: the database's for
    /// PostgreSQL; this process's for SQLite, whose only worker owns every lease.
    fn now(&self) -> DateTime<Utc> {
        crate::jobs::now()
    }

    /// How far this process's clock is from the store's, for a store with a clock of its
    /// own (`None`: the store uses this process's clock).
    fn clock_offset(&self) -> Option<chrono::Duration> {
        None
    }

    /// Takes over what a crashed predecessor left, at the start of the only worker of a
    /// single-node store: its leases end now, and a retry due further ahead than
    /// `max_delay` (its clock ran ahead) becomes due now. A store shared by several
    /// workers leaves leases to expire on the shared clock and does nothing.
    async fn adopt_predecessor(
        &self,
        _now: DateTime<Utc>,
        _max_delay: Duration,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Job `id`'s events after `after` (a `seq`), oldest first, at most `limit`. A purged
    /// job has none.
    async fn events(&self, id: Uuid, after: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError>;
    /// Wake-ups after each change this store commits (and, for a shared database, that
    /// other processes announce).
    fn changes(&self) -> &std::sync::Arc<Changes>;

    // API keys.
    async fn create_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    async fn find_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// False if there is no such key or it was revoked already.
    async fn revoke_key(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Has any key ever been created (revoked ones count)?
    async fn has_keys(&self) -> Result<bool, StoreError>;

    /// Counts one request of `subject` in the fixed window starting at `window_start`
    /// and returns the window's count including it.
    async fn count_request(
        &self,
        subject: &str,
        window_start: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Forgets request windows that started before `before`.
    async fn prune_request_counts(&self, before: DateTime<Utc>) -> Result<(), StoreError>;

    /// The newest `count` URL-signing secrets (generation, hex secret), newest first.
    async fn signing_secrets(&self, count: u32) -> Result<Vec<(u32, String)>, StoreError>;
    /// Adds a secret and returns its generation.
    async fn add_signing_secret(&self, secret: &str, now: DateTime<Utc>)
        -> Result<u32, StoreError>;

    async fn record_attempt(&self, usage: &AttemptUsage) -> Result<(), StoreError>;
    /// Attempts that ended since `since` (and jobs created since then), of one owner or
    /// of everyone.
    async fn usage(
        &self,
        owner: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<UsageTotals, StoreError>;
}

/// Why an insert stored nothing: the idempotency key was used already (the existing job),
/// or a quota refused it. For a backend's `insert` after its conditional insert changed
/// no row.
async fn not_inserted(
    store: &(impl JobStore + ?Sized),
    job: &Job,
    admission: &Admission,
) -> Result<Inserted, StoreError> {
    if let Some(key) = job.idempotency_key.as_deref() {
        if let Some(existing) = store.find_by_idempotency_key(&job.owner, key).await? {
            return Ok(Inserted::Existing(Box::new(existing)));
        }
    }
    let since = admission.window.map_or(job.created_at, |(_, since)| since);
    let standing = store.standing(&job.owner, since).await?;
    match (admission.window, admission.concurrent) {
        (Some((limit, _)), _) if standing.jobs_since >= limit => {
            Ok(Inserted::Refused(Refusal::JobsPerWindow {
                oldest: standing.oldest_since.unwrap_or(job.created_at),
            }))
        }
        (_, Some(limit)) if standing.active >= limit => Ok(Inserted::Refused(Refusal::Concurrent)),
        _ => Err(StoreError::Unavailable("insert changed nothing".into())),
    }
}

/// The median of recent run times (seconds), `None` without any.
pub fn typical_run_time(mut seconds: Vec<f64>) -> Option<Duration> {
    seconds.retain(|s| s.is_finite());
    if seconds.is_empty() {
        return None;
    }
    seconds.sort_by(f64::total_cmp);
    let middle = seconds.len() / 2;
    let median = if seconds.len() % 2 == 1 {
        seconds[middle]
    } else {
        (seconds[middle - 1] + seconds[middle]) / 2.0
    };
    Some(Duration::from_secs_f64(median.max(0.0)))
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
