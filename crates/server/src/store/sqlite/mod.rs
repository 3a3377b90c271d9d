//! `SqliteJobStore`: the embedded default, one file in the data directory.
//!
//! WAL mode; one writer connection; every write a caller is told about (a job accepted
//! with 202, a result, a cancel, a purge, a key) is fsynced before the call returns, with
//! concurrent writers sharing the fsync (`durable.rs`), so it survives a power cut. Timestamps are stored as Unix milliseconds; structured
//! fields as JSON text.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::SqlitePool;
use uuid::Uuid;

mod decode;
mod schema;

use super::cache::{FinishedJobs, KeysExist, RunTimes};
use super::changes::Changes;
use super::durable::WalSync;
use super::rows::{self, column, from_json};
use super::{
    lease_lost_error, Admission, ApiKey, AttemptUsage, Completion, Heartbeat, Inserted, JobStore,
    ListQuery, Standing, StoreError, UsageTotals,
};
use crate::jobs::{Job, JobError, JobEvent, JobState, Progress};
use decode::*;
use schema::*;

pub struct SqliteJobStore {
    /// Reads. WAL readers never wait for the writer.
    pool: SqlitePool,
    /// Every write, through one connection: SQLite allows one writer at a time, and
    /// writers of the same process queueing here (an async wait) instead of on the
    /// database lock (SQLite's busy handler sleeps 1–100 ms) is what lets the worker
    /// keep up with a burst of submits.
    writer: SqlitePool,
    /// Makes the writer's commits durable, shared between concurrent writers. Writes
    /// whose loss in a power cut is harmless (a claim, a heartbeat, a request counter,
    /// usage records) do not wait for it; the next durable write covers them anyway.
    wal: WalSync,
    changes: Arc<Changes>,
    finished: FinishedJobs,
    keys_exist: KeysExist,
    run_times: RunTimes,
}

/// How long a statement waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a write waits for the one writer connection.
const WRITER_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// The database holds the URL-signing secret and every job's parameters: readable by the
/// server's user only. SQLite gives its `-wal` and `-shm` files the database's mode, so
/// the database is made 0600 before SQLite first opens it.
fn private_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

impl SqliteJobStore {
    pub async fn open(path: &Path) -> Result<SqliteJobStore, StoreError> {
        private_files(path)?;
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(unavailable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Another process holding the write lock (an operator's `sqlite3`, a backup)
            // makes a write wait this long, then fail as `Unavailable`: a client gets a
            // `503` while it still waits for an answer.
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // While another process holds the lock, writes queue behind each other's busy
            // timeout: one waiting longer than this for its turn fails as `Unavailable`.
            .acquire_timeout(WRITER_QUEUE_TIMEOUT)
            .connect_with(options.clone().synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(unavailable)?;
        migrate(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Ok(SqliteJobStore {
            pool,
            writer,
            wal: WalSync::new(path),
            changes: Changes::new(),
            finished: FinishedJobs::default(),
            keys_exist: KeysExist::default(),
            run_times: RunTimes::default(),
        })
    }
}

impl SqliteJobStore {
    /// Waits until every commit so far is on disk (see `durable.rs`).
    async fn durable(&self) -> Result<(), StoreError> {
        self.wal.sync().await.map_err(StoreError::from)
    }
}

/// A database error, classified as both stores classify it (`StoreError::from`).
fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::from(error)
}

#[cfg(test)]
impl SqliteJobStore {
    /// Gives job `id` a state no version of batchgate writes (the conformance suite's
    /// unreadable row).
    pub async fn damage_for_test(&self, id: Uuid) {
        sqlx::query("UPDATE jobs SET state = 'bogus' WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .unwrap();
    }
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn insert(&self, job: &Job, admission: &Admission) -> Result<Inserted, StoreError> {
        // One statement, so the quota check and the insert are atomic (SQLite holds the
        // write lock for the whole statement).
        let (window_limit, window_since) = match admission.window {
            Some((limit, since)) => (Some(limit as i64), millis(since)),
            None => (None, 0),
        };
        let concurrent = admission.concurrent.map(|limit| limit as i64);
        let result = sqlx::query(
            "INSERT INTO jobs (id, owner, tier, priority, retention_ms, tool, tool_version, state, \
             params, inputs, created_at, attempt, max_attempts, run_after, idempotency_key, \
             request_hash) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? \
             WHERE (? IS NULL OR (SELECT COUNT(*) FROM jobs WHERE owner = ? AND created_at > ?) < ?) \
             AND (? IS NULL OR (SELECT COUNT(*) FROM jobs WHERE owner = ? \
                                AND state IN ('queued', 'running')) < ?) \
             ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(&job.owner)
        .bind(&job.tier)
        .bind(job.priority as i64)
        .bind(job.retention.as_millis() as i64)
        .bind(&job.tool)
        .bind(job.tool_version as i64)
        .bind(job.state.as_str())
        .bind(json(&job.params))
        .bind(json(&job.inputs))
        .bind(millis(job.created_at))
        .bind(job.attempt as i64)
        .bind(job.max_attempts as i64)
        .bind(millis(job.run_after))
        .bind(&job.idempotency_key)
        .bind(&job.request_hash)
        .bind(window_limit)
        .bind(&job.owner)
        .bind(window_since)
        .bind(window_limit)
        .bind(concurrent)
        .bind(&job.owner)
        .bind(concurrent)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        if result.rows_affected() == 1 {
            self.durable().await?;
            self.changes.job_queued();
            return Ok(Inserted::Created);
        }
        super::not_inserted(self, job, admission).await
    }

    async fn standing(&self, owner: &str, since: DateTime<Utc>) -> Result<Standing, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE owner = ? AND created_at > ?), \
                    (SELECT MIN(created_at) FROM jobs WHERE owner = ? AND created_at > ?), \
                    (SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN ('queued', 'running'))",
        )
        .bind(owner)
        .bind(millis(since))
        .bind(owner)
        .bind(millis(since))
        .bind(owner)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(Standing {
            jobs_since: column::<i64, _, _>(&row, 0)? as u64,
            oldest_since: optional_time(column(&row, 1)?)?,
            active: column::<i64, _, _>(&row, 2)? as u64,
        })
    }

    async fn queued_count(&self, cap: u64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' LIMIT ?)",
        )
        .bind(cap as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(count as u64)
    }

    async fn state_counts(&self) -> Result<Vec<(String, JobState, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tool, state, COUNT(*) FROM jobs WHERE purged_at IS NULL GROUP BY tool, state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut counts = Vec::new();
        for row in rows {
            let state: String = column(&row, 1)?;
            let state = rows::state(&state)?;
            counts.push((
                column(&row, 0)?,
                state,
                column::<i64, _, _>(&row, 2)? as u64,
            ));
        }
        Ok(counts)
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        if let Some(job) = self.finished.get(id) {
            return Ok(Some(job));
        }
        let row = sqlx::query("SELECT * FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        let job = row.as_ref().map(job_from_row).transpose()?;
        if let Some(job) = &job {
            self.finished.offer(job);
        }
        Ok(job)
    }

    async fn find_by_idempotency_key(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?")
            .bind(owner)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE (? IS NULL OR owner = ?) \
             AND (? IS NULL OR state = ?) AND (? IS NULL OR tool = ?) AND (? IS NULL OR id < ?) \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(&query.owner)
        .bind(&query.owner)
        .bind(query.state.map(JobState::as_str))
        .bind(query.state.map(JobState::as_str))
        .bind(&query.tool)
        .bind(&query.tool)
        .bind(query.before.map(|id| id.to_string()))
        .bind(query.before.map(|id| id.to_string()))
        .bind(query.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(job_from_row).collect()
    }

    async fn claim(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        exclude: &[String],
    ) -> Result<Option<Job>, StoreError> {
        // One statement: SQLite holds the write lock for its whole duration, so two
        // workers can never claim the same row.
        let exclusion = if exclude.is_empty() {
            String::new()
        } else {
            format!(
                " AND (tool || '@' || tool_version) NOT IN ({})",
                vec!["?"; exclude.len()].join(", ")
            )
        };
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_until = ?, \
             started_at = COALESCE(started_at, ?), progress = NULL \
             WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND run_after <= ?{exclusion} \
                         ORDER BY priority DESC, run_after, id LIMIT 1) \
             AND state = 'queued' RETURNING *"
        );
        let mut statement = sqlx::query(&sql)
            .bind(millis(lease_until))
            .bind(millis(now))
            .bind(millis(now));
        for tool in exclude {
            statement = statement.bind(tool);
        }
        let row = statement
            .fetch_optional(&self.writer)
            .await
            .map_err(unavailable)?;
        let job = row.as_ref().map(job_from_row).transpose()?;
        if let Some(job) = &job {
            self.changes.progressed(job.id);
        }
        Ok(job)
    }

    async fn heartbeat(
        &self,
        id: Uuid,
        attempt: u32,
        lease_until: DateTime<Utc>,
        progress: Option<&Progress>,
    ) -> Result<Heartbeat, StoreError> {
        let row = sqlx::query(
            "UPDATE jobs SET lease_until = ?, progress = COALESCE(?, progress) \
             WHERE id = ? AND attempt = ? AND state = 'running' RETURNING cancel_requested",
        )
        .bind(millis(lease_until))
        .bind(progress.map(json))
        .bind(id.to_string())
        .bind(attempt as i64)
        .fetch_optional(&self.writer)
        .await
        .map_err(unavailable)?;
        if row.is_some() && progress.is_some() {
            self.changes.progressed(id);
        }
        Ok(match row {
            Some(row) => Heartbeat::Held {
                cancel_requested: column::<i64, _, _>(&row, 0)? != 0,
            },
            None => Heartbeat::Lost,
        })
    }

    async fn complete(
        &self,
        id: Uuid,
        attempt: u32,
        completion: &Completion,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "UPDATE jobs SET state = ?, error = ?, outputs = ?, finished_at = ?, expires_at = ?, \
             lease_until = NULL, cancel_requested = 0 \
             WHERE id = ? AND attempt = ? AND state = 'running' RETURNING *",
        )
        .bind(completion.state.as_str())
        .bind(completion.error.as_ref().map(json))
        .bind(json(&completion.outputs))
        .bind(millis(completion.finished_at))
        .bind(completion.expires_at.map(millis))
        .bind(id.to_string())
        .bind(attempt as i64)
        .fetch_optional(&self.writer)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(false);
        };
        self.durable().await?;
        // The ended job as stored: its waiters' next read needs no round trip.
        self.finished.offer(&job_from_row(&row)?);
        self.changes.notify(id);
        Ok(true)
    }

    async fn requeue(
        &self,
        id: Uuid,
        attempt: u32,
        run_after: DateTime<Utc>,
        error: &JobError,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET state = 'queued', run_after = ?, error = ?, lease_until = NULL \
             WHERE id = ? AND attempt = ? AND state = 'running'",
        )
        .bind(millis(run_after))
        .bind(json(error))
        .bind(id.to_string())
        .bind(attempt as i64)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        let changed = result.rows_affected() == 1;
        if changed {
            self.durable().await?;
            self.finished.forget(id);
            self.changes.notify(id);
            self.changes.job_queued();
        }
        Ok(changed)
    }

    async fn set_executor_ref(
        &self,
        id: Uuid,
        attempt: u32,
        reference: Option<&str>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET executor_ref = ? WHERE id = ? AND attempt = ? AND state = 'running'",
        )
        .bind(reference)
        .bind(id.to_string())
        .bind(attempt as i64)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        let changed = result.rows_affected() == 1;
        if changed {
            // A program that outlives this worker must be found again after a power cut.
            self.durable().await?;
        }
        Ok(changed)
    }

    async fn request_cancel(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, StoreError> {
        let id_text = id.to_string();
        sqlx::query(
            "UPDATE jobs SET state = 'canceled', finished_at = ?, error = NULL \
             WHERE id = ? AND state = 'queued'",
        )
        .bind(millis(now))
        .bind(&id_text)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'")
            .bind(&id_text)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        self.durable().await?;
        self.changes.notify(id);
        self.get(id).await
    }

    async fn mark_purged(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET purged_at = COALESCE(purged_at, ?), outputs = '[]' \
             WHERE id = ? AND state IN ('succeeded', 'failed', 'canceled')",
        )
        .bind(millis(now))
        .bind(id.to_string())
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        let changed = result.rows_affected() == 1;
        if changed {
            self.durable().await?;
            self.finished.forget(id);
            self.changes.notify(id);
        }
        Ok(changed)
    }

    async fn mark_cleaned(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET cleaned_at = ? WHERE id = ? AND purged_at IS NOT NULL")
            .bind(millis(now))
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn due_for_cleanup(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM (\
               SELECT id FROM jobs WHERE purged_at IS NULL AND expires_at IS NOT NULL \
                 AND expires_at <= ? AND state IN ('succeeded', 'failed', 'canceled') \
               UNION ALL \
               SELECT id FROM jobs WHERE purged_at IS NOT NULL AND cleaned_at IS NULL) \
             LIMIT ?",
        )
        .bind(millis(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        ids.iter()
            .map(|id| Uuid::parse_str(id).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    async fn adopt_predecessor(
        &self,
        now: DateTime<Utc>,
        max_delay: Duration,
    ) -> Result<u64, StoreError> {
        // A lease set by a clock that ran ahead would hold a dead worker's job for as long.
        let ended = sqlx::query(
            "UPDATE jobs SET lease_until = ? WHERE state = 'running' AND lease_until >= ?",
        )
        .bind(millis(now) - 1)
        .bind(millis(now))
        .execute(&self.writer)
        .await
        .map_err(unavailable)?
        .rows_affected();
        let horizon = now + chrono::Duration::from_std(max_delay).unwrap_or_default();
        let due =
            sqlx::query("UPDATE jobs SET run_after = ? WHERE state = 'queued' AND run_after > ?")
                .bind(millis(now))
                .bind(millis(horizon))
                .execute(&self.writer)
                .await
                .map_err(unavailable)?
                .rows_affected();
        if due > 0 {
            self.changes.job_queued();
        }
        let recovered = self.recover_expired_leases(now).await?;
        Ok(ended.max(recovered) + due)
    }

    async fn recover_expired_leases(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let rows = sqlx::query(
            "SELECT id, attempt, max_attempts FROM jobs WHERE state = 'running' AND lease_until < ?",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut recovered = 0;
        for row in rows {
            let id: String = column(&row, 0)?;
            let attempt = column::<i64, _, _>(&row, 1)? as u32;
            let max_attempts = column::<i64, _, _>(&row, 2)? as u32;
            let final_attempt = attempt >= max_attempts;
            let error = json(&lease_lost_error(attempt, final_attempt));
            // Fenced like a completion: only if the same attempt still holds an expired lease.
            let sql = if final_attempt {
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, lease_until = NULL \
                 WHERE id = ? AND attempt = ? AND state = 'running' AND lease_until < ?"
            } else {
                "UPDATE jobs SET state = 'queued', run_after = ?, error = ?, lease_until = NULL \
                 WHERE id = ? AND attempt = ? AND state = 'running' AND lease_until < ?"
            };
            let result = sqlx::query(sql)
                .bind(millis(now))
                .bind(error)
                .bind(&id)
                .bind(attempt as i64)
                .bind(millis(now))
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
            if result.rows_affected() == 1 {
                recovered += 1;
                if let Ok(id) = Uuid::parse_str(&id) {
                    self.changes.notify(id);
                }
                if !final_attempt {
                    self.changes.job_queued();
                }
            }
        }
        if recovered > 0 {
            self.durable().await?;
        }
        Ok(recovered)
    }

    async fn queued_ahead(&self, job: &Job) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (priority > ? OR (priority = ? \
             AND (run_after < ? OR (run_after = ? AND id < ?))))",
        )
        .bind(job.priority as i64)
        .bind(job.priority as i64)
        .bind(millis(job.run_after))
        .bind(millis(job.run_after))
        .bind(job.id.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(count as u64)
    }

    async fn recent_run_time(
        &self,
        tool: &str,
        version: u32,
    ) -> Result<Option<Duration>, StoreError> {
        if let Some(typical) = self.run_times.get(tool, version) {
            return Ok(typical);
        }
        let recent: Vec<i64> = sqlx::query_scalar(
            "SELECT finished_at - started_at FROM jobs \
             WHERE tool = ? AND tool_version = ? AND state = 'succeeded' \
             ORDER BY finished_at DESC LIMIT 20",
        )
        .bind(tool)
        .bind(version as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let seconds = recent.iter().map(|&ms| ms as f64 / 1000.0).collect();
        let typical = super::typical_run_time(seconds);
        self.run_times.record(tool, version, typical);
        Ok(typical)
    }

    async fn create_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, hash, name, tier, admin, created_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.hash)
        .bind(&key.name)
        .bind(&key.tier)
        .bind(key.admin as i64)
        .bind(millis(key.created_at))
        .bind(key.revoked_at.map(millis))
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        self.durable().await?;
        self.keys_exist.record(true);
        Ok(())
    }

    async fn find_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        if row.is_some() {
            self.keys_exist.record(true);
        }
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query("SELECT * FROM api_keys ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(millis(now))
                .bind(id)
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
        self.durable().await?;
        Ok(result.rows_affected() == 1)
    }

    async fn has_keys(&self) -> Result<bool, StoreError> {
        if let Some(known) = self.keys_exist.known() {
            return Ok(known);
        }
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM api_keys LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        self.keys_exist.record(found.is_some());
        Ok(found.is_some())
    }

    async fn count_request(
        &self,
        subject: &str,
        window_start: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO request_counts (subject, window_start, count) VALUES (?, ?, 1) \
             ON CONFLICT (subject, window_start) DO UPDATE SET count = count + 1 \
             RETURNING count",
        )
        .bind(subject)
        .bind(millis(window_start))
        .fetch_one(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(count as u64)
    }

    async fn prune_request_counts(&self, before: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM request_counts WHERE window_start < ?")
            .bind(millis(before))
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn signing_secrets(&self, count: u32) -> Result<Vec<(u32, String)>, StoreError> {
        let rows = sqlx::query("SELECT id, secret FROM signing_secrets ORDER BY id DESC LIMIT ?")
            .bind(count as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| Ok((column::<i64, _, _>(row, 0)? as u32, column(row, 1)?)))
            .collect()
    }

    async fn add_signing_secret(
        &self,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO signing_secrets (secret, created_at) VALUES (?, ?) RETURNING id",
        )
        .bind(secret)
        .bind(millis(now))
        .fetch_one(&self.writer)
        .await
        .map_err(unavailable)?;
        self.durable().await?;
        Ok(id as u32)
    }

    async fn record_attempt(&self, usage: &AttemptUsage) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO attempts (job_id, attempt, owner, tier, tool, tool_version, \
             started_at, finished_at, outcome, wall_ms, cpu_ms, max_rss_bytes, bytes_in, bytes_out) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(usage.job_id.to_string())
        .bind(usage.attempt as i64)
        .bind(&usage.owner)
        .bind(&usage.tier)
        .bind(&usage.tool)
        .bind(usage.tool_version as i64)
        .bind(millis(usage.started_at))
        .bind(millis(usage.finished_at))
        .bind(&usage.outcome)
        .bind(usage.wall_ms as i64)
        .bind(usage.cpu_ms.map(|v| v as i64))
        .bind(usage.max_rss_bytes.map(|v| v as i64))
        .bind(usage.bytes_in as i64)
        .bind(usage.bytes_out as i64)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn usage(
        &self,
        owner: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<UsageTotals, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE (? IS NULL OR owner = ?) AND created_at > ?), \
                    COUNT(*), COALESCE(SUM(wall_ms), 0), COALESCE(SUM(cpu_ms), 0), \
                    COALESCE(MAX(max_rss_bytes), 0), COALESCE(SUM(bytes_in), 0), \
                    COALESCE(SUM(bytes_out), 0) \
             FROM attempts WHERE (? IS NULL OR owner = ?) AND finished_at > ?",
        )
        .bind(owner)
        .bind(owner)
        .bind(millis(since))
        .bind(owner)
        .bind(owner)
        .bind(millis(since))
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        let get = |index: usize| -> Result<u64, StoreError> {
            Ok(column::<i64, _, _>(&row, index)?.max(0) as u64)
        };
        Ok(UsageTotals {
            jobs: get(0)?,
            attempts: get(1)?,
            wall_ms: get(2)?,
            cpu_ms: get(3)?,
            max_rss_bytes: get(4)?,
            bytes_in: get(5)?,
            bytes_out: get(6)?,
        })
    }

    async fn events(&self, id: Uuid, after: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, job_id, kind, at, state, attempt, progress, error, cancel_requested \
             FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id.to_string())
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_from_row).collect()
    }

    fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
