//! `PgJobStore`: the scale-out store. Any number of API replicas and workers, on any
//! number of hosts, share one PostgreSQL database.
//!
//! - Claims take the first due queued row with `FOR UPDATE SKIP LOCKED`, through a partial
//!   index on queued rows, so concurrent workers never wait for one another and a claim
//!   costs the same however many finished jobs the table holds.
//! - Every change of a job is logged by a trigger (like SQLite's) that also announces it
//!   with `NOTIFY`; each store instance `LISTEN`s and feeds what others announce into its
//!   `Changes` registry: event streams, `Prefer: wait` and idle workers in one process wake
//!   up on changes made in another.
//! - Quota checks take a per-owner transaction-scoped advisory lock, so two replicas cannot
//!   both admit the last job of a window; idempotency keys are a unique index; request
//!   counters are upserts. All of it holds across replicas.
//! - Commits are durable when they return (`synchronous_commit` as the server has it; keep
//!   it `on`).
//!
//! Tables live in the connection's `search_path` (`?options=-csearch_path%3Dname` in the
//! URL picks a schema); the migrations run under an advisory lock, so replicas that start
//! together apply them once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use uuid::Uuid;

mod clock;
mod decode;
mod schema;

use super::cache::{FinishedJobs, KeysExist, RunTimes};
use super::changes::Changes;
use super::rows::{self, column};
use super::{
    lease_lost_error, Admission, ApiKey, AttemptUsage, Completion, Heartbeat, Inserted, JobStore,
    ListQuery, Standing, StoreError, UsageTotals,
};
use crate::jobs::{Job, JobError, JobEvent, JobState, Progress, StoredOutput};
pub use clock::CLOCK_TOLERANCE;
use clock::*;
use decode::*;
use schema::*;

/// Connections per store instance (the listener takes one more).
const POOL_SIZE: u32 = 16;

pub struct PgJobStore {
    pool: PgPool,
    changes: Arc<Changes>,
    finished: Arc<FinishedJobs>,
    keys_exist: KeysExist,
    run_times: RunTimes,
    listener: tokio::task::JoinHandle<()>,
    /// The database's clock minus this process's, in milliseconds: `now()` is the
    /// database's time, so that every process of a deployment sets and judges leases,
    /// backoff and retention on one clock whatever its own says. Measured at open and
    /// every `CLOCK_INTERVAL`.
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
    clock: tokio::task::JoinHandle<()>,
}

impl Drop for PgJobStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.clock.abort();
    }
}

impl PgJobStore {
    /// Connects to `url` (`postgres://…`), applies the migrations and starts listening for
    /// the changes other processes make.
    pub async fn open(url: &str) -> Result<PgJobStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| StoreError::Unavailable(format!("bad PostgreSQL URL: {error}")))?;
        PgJobStore::connect(options).await
    }

    pub async fn connect(options: PgConnectOptions) -> Result<PgJobStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        migrate(&pool).await?;
        let changes = Changes::new();
        let finished = Arc::new(FinishedJobs::default());
        let mut listener = PgListener::connect_with(&pool).await.map_err(unavailable)?;
        listener
            .listen("batchgate_changes")
            .await
            .map_err(unavailable)?;
        let listener = tokio::spawn(listen(listener, changes.clone(), finished.clone()));
        let measured = measure_offset(&pool).await?;
        warn_about_offset(measured, None);
        let offset_ms = Arc::new(std::sync::atomic::AtomicI64::new(measured));
        let clock = tokio::spawn(follow_clock(pool.clone(), offset_ms.clone()));
        Ok(PgJobStore {
            pool,
            changes,
            finished,
            keys_exist: KeysExist::default(),
            run_times: RunTimes::default(),
            listener,
            offset_ms,
            clock,
        })
    }
}

/// Feeds announced changes into `changes` until the store is dropped. After a lost
/// connection the listener reconnects; what was announced meanwhile is lost, which waiters
/// and workers cover by reading again on their timers.
async fn listen(mut listener: PgListener, changes: Arc<Changes>, finished: Arc<FinishedJobs>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let mut parts = notification.payload().split(' ');
                let Some(Ok(id)) = parts.next().map(Uuid::parse_str) else {
                    continue;
                };
                finished.forget(id);
                changes.notify(id);
                if parts.next() == Some("q") {
                    changes.job_queued();
                }
            }
            Ok(None) => {
                tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
                // Anything might have been queued meanwhile.
                changes.job_queued();
            }
            Err(error) => {
                tracing::warn!(%error, "PostgreSQL notifications unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A database error, classified as both stores classify it (`StoreError::from`).
fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::from(error)
}

#[cfg(test)]
impl PgJobStore {
    /// Gives job `id` a state no version of batchgate writes (the conformance suite's
    /// unreadable row).
    pub async fn damage_for_test(&self, id: Uuid) {
        sqlx::query("UPDATE jobs SET state = 'bogus' WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

#[async_trait]
impl JobStore for PgJobStore {
    fn now(&self) -> DateTime<Utc> {
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        crate::jobs::now() + chrono::Duration::milliseconds(offset)
    }

    fn clock_offset(&self) -> Option<chrono::Duration> {
        Some(chrono::Duration::milliseconds(
            self.offset_ms.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }

    async fn insert(&self, job: &Job, admission: &Admission) -> Result<Inserted, StoreError> {
        let (window_limit, window_since) = match admission.window {
            Some((limit, since)) => (Some(limit as i64), Some(since)),
            None => (None, None),
        };
        let concurrent = admission.concurrent.map(|limit| limit as i64);
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if window_limit.is_some() || concurrent.is_some() {
            // Admissions of one owner one at a time, whichever replica makes them: the
            // counts below then include every job admitted before.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
                .bind(&job.owner)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        let result = sqlx::query(
            "INSERT INTO jobs (id, owner, tier, priority, retention_ms, tool, tool_version, state, \
             params, inputs, created_at, attempt, max_attempts, run_after, idempotency_key, \
             request_hash) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 \
             WHERE ($17::bigint IS NULL \
                    OR (SELECT COUNT(*) FROM jobs WHERE owner = $2 AND created_at > $18) < $17) \
             AND ($19::bigint IS NULL OR (SELECT COUNT(*) FROM jobs WHERE owner = $2 \
                                          AND state IN ('queued', 'running')) < $19) \
             ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(job.id)
        .bind(&job.owner)
        .bind(&job.tier)
        .bind(job.priority)
        .bind(job.retention.as_millis() as i64)
        .bind(&job.tool)
        .bind(job.tool_version as i64)
        .bind(job.state.as_str())
        .bind(Json(&job.params))
        .bind(Json(&job.inputs))
        .bind(job.created_at)
        .bind(job.attempt as i64)
        .bind(job.max_attempts as i64)
        .bind(job.run_after)
        .bind(&job.idempotency_key)
        .bind(&job.request_hash)
        .bind(window_limit)
        .bind(window_since)
        .bind(concurrent)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        if result.rows_affected() == 1 {
            self.changes.job_queued();
            return Ok(Inserted::Created);
        }
        super::not_inserted(self, job, admission).await
    }

    async fn standing(&self, owner: &str, since: DateTime<Utc>) -> Result<Standing, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE owner = $1 AND created_at > $2), \
                    (SELECT MIN(created_at) FROM jobs WHERE owner = $1 AND created_at > $2), \
                    (SELECT COUNT(*) FROM jobs WHERE owner = $1 AND state IN ('queued', 'running'))",
        )
        .bind(owner)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(Standing {
            jobs_since: column::<i64, _, _>(&row, 0)? as u64,
            oldest_since: column(&row, 1)?,
            active: column::<i64, _, _>(&row, 2)? as u64,
        })
    }

    async fn queued_count(&self, cap: u64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' LIMIT $1) AS q",
        )
        .bind(cap.min(i64::MAX as u64) as i64)
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
        rows.iter()
            .map(|row| {
                Ok((
                    column(row, 0)?,
                    rows::state(column(row, 1)?)?,
                    column::<i64, _, _>(row, 2)? as u64,
                ))
            })
            .collect()
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        if let Some(job) = self.finished.get(id) {
            return Ok(Some(job));
        }
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
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
        let row = sqlx::query("SELECT * FROM jobs WHERE owner = $1 AND idempotency_key = $2")
            .bind(owner)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE ($1::text IS NULL OR owner = $1) \
             AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR tool = $3) \
             AND ($4::uuid IS NULL OR id < $4) \
             ORDER BY id DESC LIMIT $5",
        )
        .bind(&query.owner)
        .bind(query.state.map(JobState::as_str))
        .bind(&query.tool)
        .bind(query.before)
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
        // The first due row nobody else is claiming; a row another worker has locked is
        // skipped, not waited for.
        let row = sqlx::query(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_until = $1, \
             started_at = COALESCE(started_at, $2), progress = NULL \
             WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND run_after <= $2 \
                           AND NOT ((tool || '@' || tool_version::text) = ANY($3)) \
                         ORDER BY priority DESC, run_after, id LIMIT 1 \
                         FOR UPDATE SKIP LOCKED) \
             AND state = 'queued' RETURNING *",
        )
        .bind(lease_until)
        .bind(now)
        .bind(exclude)
        .fetch_optional(&self.pool)
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
        let cancel: Option<bool> = sqlx::query_scalar(
            "UPDATE jobs SET lease_until = $1, progress = COALESCE($2, progress) \
             WHERE id = $3 AND attempt = $4 AND state = 'running' RETURNING cancel_requested",
        )
        .bind(lease_until)
        .bind(progress.map(Json))
        .bind(id)
        .bind(attempt as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if cancel.is_some() && progress.is_some() {
            self.changes.progressed(id);
        }
        Ok(match cancel {
            Some(cancel_requested) => Heartbeat::Held { cancel_requested },
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
            "UPDATE jobs SET state = $1, error = $2, outputs = $3, finished_at = $4, \
             expires_at = $5, lease_until = NULL, cancel_requested = FALSE \
             WHERE id = $6 AND attempt = $7 AND state = 'running' RETURNING *",
        )
        .bind(completion.state.as_str())
        .bind(completion.error.as_ref().map(Json))
        .bind(Json(&completion.outputs))
        .bind(completion.finished_at)
        .bind(completion.expires_at)
        .bind(id)
        .bind(attempt as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(false);
        };
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
            "UPDATE jobs SET state = 'queued', run_after = $1, error = $2, lease_until = NULL \
             WHERE id = $3 AND attempt = $4 AND state = 'running'",
        )
        .bind(run_after)
        .bind(Json(error))
        .bind(id)
        .bind(attempt as i64)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let changed = result.rows_affected() == 1;
        if changed {
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
            "UPDATE jobs SET executor_ref = $1 WHERE id = $2 AND attempt = $3 AND state = 'running'",
        )
        .bind(reference)
        .bind(id)
        .bind(attempt as i64)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(result.rows_affected() == 1)
    }

    async fn request_cancel(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, StoreError> {
        sqlx::query(
            "UPDATE jobs SET \
               state = CASE WHEN state = 'queued' THEN 'canceled' ELSE state END, \
               finished_at = CASE WHEN state = 'queued' THEN $1 ELSE finished_at END, \
               error = CASE WHEN state = 'queued' THEN NULL ELSE error END, \
               cancel_requested = (state = 'running') \
             WHERE id = $2 AND state IN ('queued', 'running')",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        self.changes.notify(id);
        self.get(id).await
    }

    async fn mark_purged(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET purged_at = COALESCE(purged_at, $1), outputs = '[]' \
             WHERE id = $2 AND state IN ('succeeded', 'failed', 'canceled')",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let changed = result.rows_affected() == 1;
        if changed {
            self.finished.forget(id);
            self.changes.notify(id);
        }
        Ok(changed)
    }

    async fn mark_cleaned(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET cleaned_at = $1 WHERE id = $2 AND purged_at IS NOT NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn due_for_cleanup(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM (\
               SELECT id FROM jobs WHERE purged_at IS NULL AND expires_at IS NOT NULL \
                 AND expires_at <= $1 AND state IN ('succeeded', 'failed', 'canceled') \
               UNION ALL \
               SELECT id FROM jobs WHERE purged_at IS NOT NULL AND cleaned_at IS NULL) AS due \
             LIMIT $2",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn recover_expired_leases(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let rows = sqlx::query(
            "SELECT id, attempt, max_attempts FROM jobs \
             WHERE state = 'running' AND lease_until < $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut recovered = 0;
        for row in rows {
            let id: Uuid = column(&row, 0)?;
            let attempt = column::<i64, _, _>(&row, 1)? as u32;
            let max_attempts = column::<i64, _, _>(&row, 2)? as u32;
            let final_attempt = attempt >= max_attempts;
            let error = Json(lease_lost_error(attempt, final_attempt));
            // Fenced like a completion: only if the same attempt still holds an expired
            // lease (another replica may be recovering it at the same moment).
            let sql = if final_attempt {
                "UPDATE jobs SET state = 'failed', finished_at = $1, error = $2, \
                 lease_until = NULL \
                 WHERE id = $3 AND attempt = $4 AND state = 'running' AND lease_until < $1"
            } else {
                "UPDATE jobs SET state = 'queued', run_after = $1, error = $2, \
                 lease_until = NULL \
                 WHERE id = $3 AND attempt = $4 AND state = 'running' AND lease_until < $1"
            };
            let result = sqlx::query(sql)
                .bind(now)
                .bind(error)
                .bind(id)
                .bind(attempt as i64)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            if result.rows_affected() == 1 {
                recovered += 1;
                self.changes.notify(id);
                if !final_attempt {
                    self.changes.job_queued();
                }
            }
        }
        Ok(recovered)
    }

    async fn queued_ahead(&self, job: &Job) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (priority > $1 OR (priority = $1 \
             AND (run_after < $2 OR (run_after = $2 AND id < $3))))",
        )
        .bind(job.priority)
        .bind(job.run_after)
        .bind(job.id)
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
        let recent: Vec<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM finished_at - started_at)::float8 FROM jobs \
             WHERE tool = $1 AND tool_version = $2 AND state = 'succeeded' \
             ORDER BY finished_at DESC LIMIT 20",
        )
        .bind(tool)
        .bind(version as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let typical = super::typical_run_time(recent);
        self.run_times.record(tool, version, typical);
        Ok(typical)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn events(&self, id: Uuid, after: u64, limit: u32) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, job_id, kind, at, state, attempt, progress, error, cancel_requested \
             FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
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

    async fn create_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, hash, name, tier, admin, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(&key.hash)
        .bind(&key.name)
        .bind(&key.tier)
        .bind(key.admin)
        .bind(key.created_at)
        .bind(key.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        self.keys_exist.record(true);
        Ok(())
    }

    async fn find_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1")
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
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(result.rows_affected() == 1)
    }

    async fn has_keys(&self) -> Result<bool, StoreError> {
        if let Some(known) = self.keys_exist.known() {
            return Ok(known);
        }
        let found: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        self.keys_exist.record(found);
        Ok(found)
    }

    async fn count_request(
        &self,
        subject: &str,
        window_start: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO request_counts (subject, window_start, count) VALUES ($1, $2, 1) \
             ON CONFLICT (subject, window_start) \
             DO UPDATE SET count = request_counts.count + 1 \
             RETURNING count",
        )
        .bind(subject)
        .bind(window_start)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(count as u64)
    }

    async fn prune_request_counts(&self, before: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM request_counts WHERE window_start < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn signing_secrets(&self, count: u32) -> Result<Vec<(u32, String)>, StoreError> {
        let rows = sqlx::query("SELECT id, secret FROM signing_secrets ORDER BY id DESC LIMIT $1")
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
            "INSERT INTO signing_secrets (secret, created_at) VALUES ($1, $2) RETURNING id",
        )
        .bind(secret)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(id as u32)
    }

    async fn record_attempt(&self, usage: &AttemptUsage) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO attempts (job_id, attempt, owner, tier, tool, tool_version, \
             started_at, finished_at, outcome, wall_ms, cpu_ms, max_rss_bytes, bytes_in, bytes_out) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (job_id, attempt) DO UPDATE SET owner = EXCLUDED.owner, \
             tier = EXCLUDED.tier, tool = EXCLUDED.tool, tool_version = EXCLUDED.tool_version, \
             started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, \
             outcome = EXCLUDED.outcome, wall_ms = EXCLUDED.wall_ms, cpu_ms = EXCLUDED.cpu_ms, \
             max_rss_bytes = EXCLUDED.max_rss_bytes, bytes_in = EXCLUDED.bytes_in, \
             bytes_out = EXCLUDED.bytes_out",
        )
        .bind(usage.job_id)
        .bind(usage.attempt as i64)
        .bind(&usage.owner)
        .bind(&usage.tier)
        .bind(&usage.tool)
        .bind(usage.tool_version as i64)
        .bind(usage.started_at)
        .bind(usage.finished_at)
        .bind(&usage.outcome)
        .bind(usage.wall_ms as i64)
        .bind(usage.cpu_ms.map(|v| v as i64))
        .bind(usage.max_rss_bytes.map(|v| v as i64))
        .bind(usage.bytes_in as i64)
        .bind(usage.bytes_out as i64)
        .execute(&self.pool)
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
            "SELECT (SELECT COUNT(*) FROM jobs WHERE ($1::text IS NULL OR owner = $1) \
                       AND created_at > $2), \
                    COUNT(*), COALESCE(SUM(wall_ms), 0)::bigint, \
                    COALESCE(SUM(cpu_ms), 0)::bigint, COALESCE(MAX(max_rss_bytes), 0), \
                    COALESCE(SUM(bytes_in), 0)::bigint, COALESCE(SUM(bytes_out), 0)::bigint \
             FROM attempts WHERE ($1::text IS NULL OR owner = $1) AND finished_at > $2",
        )
        .bind(owner)
        .bind(since)
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
}
