//! `SqliteJobStore`: the embedded default, one file in the data directory.
//!
//! WAL mode with `synchronous = FULL`, so a committed job survives a power cut (the 202
//! is sent after the commit). Timestamps are stored as Unix milliseconds; structured
//! fields as JSON text.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{lease_lost_error, Completion, Heartbeat, Inserted, JobStore, ListQuery, StoreError};
use crate::jobs::{Job, JobError, JobState, Progress};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    tool             TEXT NOT NULL,
    tool_version     INTEGER NOT NULL,
    state            TEXT NOT NULL,
    params           TEXT NOT NULL,
    inputs           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    expires_at       INTEGER,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_until      INTEGER,
    run_after        INTEGER NOT NULL,
    progress         TEXT,
    error            TEXT,
    outputs          TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    request_hash     TEXT,
    purged_at        INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (run_after, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_history ON jobs (owner, id);
CREATE INDEX IF NOT EXISTS jobs_runs ON jobs (tool, tool_version, finished_at) WHERE state = 'succeeded';
"#;

pub struct SqliteJobStore {
    pool: SqlitePool,
}

impl SqliteJobStore {
    pub async fn open(path: &Path) -> Result<SqliteJobStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(unavailable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        Ok(SqliteJobStore { pool })
    }
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

fn time(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("bad timestamp {ms}")))
}

fn optional_time(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(time).transpose()
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store values serialize")
}

fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt(error.to_string()))
}

fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let get_err = |error: sqlx::Error| StoreError::Corrupt(error.to_string());
    let id: String = row.try_get("id").map_err(get_err)?;
    let state: String = row.try_get("state").map_err(get_err)?;
    let progress: Option<String> = row.try_get("progress").map_err(get_err)?;
    let error: Option<String> = row.try_get("error").map_err(get_err)?;
    Ok(Job {
        id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        owner: row.try_get("owner").map_err(get_err)?,
        tool: row.try_get("tool").map_err(get_err)?,
        tool_version: row.try_get::<i64, _>("tool_version").map_err(get_err)? as u32,
        state: JobState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("state {state}")))?,
        params: from_json(&row.try_get::<String, _>("params").map_err(get_err)?)?,
        inputs: from_json(&row.try_get::<String, _>("inputs").map_err(get_err)?)?,
        created_at: time(row.try_get("created_at").map_err(get_err)?)?,
        started_at: optional_time(row.try_get("started_at").map_err(get_err)?)?,
        finished_at: optional_time(row.try_get("finished_at").map_err(get_err)?)?,
        expires_at: optional_time(row.try_get("expires_at").map_err(get_err)?)?,
        attempt: row.try_get::<i64, _>("attempt").map_err(get_err)? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts").map_err(get_err)? as u32,
        lease_until: optional_time(row.try_get("lease_until").map_err(get_err)?)?,
        run_after: time(row.try_get("run_after").map_err(get_err)?)?,
        progress: progress.as_deref().map(from_json::<Progress>).transpose()?,
        error: error.as_deref().map(from_json::<JobError>).transpose()?,
        outputs: from_json(&row.try_get::<String, _>("outputs").map_err(get_err)?)?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested").map_err(get_err)? != 0,
        idempotency_key: row.try_get("idempotency_key").map_err(get_err)?,
        request_hash: row.try_get("request_hash").map_err(get_err)?,
        purged_at: optional_time(row.try_get("purged_at").map_err(get_err)?)?,
    })
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn insert(&self, job: &Job) -> Result<Inserted, StoreError> {
        let result = sqlx::query(
            "INSERT INTO jobs (id, owner, tool, tool_version, state, params, inputs, created_at, \
             attempt, max_attempts, run_after, idempotency_key, request_hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(&job.owner)
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
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        if result.rows_affected() == 1 {
            return Ok(Inserted::Created);
        }
        let key = job.idempotency_key.as_deref().unwrap_or_default();
        match self.find_by_idempotency_key(&job.owner, key).await? {
            Some(existing) => Ok(Inserted::Existing(Box::new(existing))),
            None => Err(StoreError::Unavailable("insert changed nothing".into())),
        }
    }

    async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(job_from_row).transpose()
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
            "SELECT * FROM jobs WHERE owner = ? \
             AND (? IS NULL OR state = ?) AND (? IS NULL OR tool = ?) AND (? IS NULL OR id < ?) \
             ORDER BY id DESC LIMIT ?",
        )
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
                         ORDER BY run_after, id LIMIT 1) \
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
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(job_from_row).transpose()
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
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(match row {
            Some(row) => Heartbeat::Held {
                cancel_requested: row.try_get::<i64, _>(0).map_err(unavailable)? != 0,
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
        let result = sqlx::query(
            "UPDATE jobs SET state = ?, error = ?, outputs = ?, finished_at = ?, expires_at = ?, \
             lease_until = NULL, cancel_requested = 0 \
             WHERE id = ? AND attempt = ? AND state = 'running'",
        )
        .bind(completion.state.as_str())
        .bind(completion.error.as_ref().map(json))
        .bind(json(&completion.outputs))
        .bind(millis(completion.finished_at))
        .bind(completion.expires_at.map(millis))
        .bind(id.to_string())
        .bind(attempt as i64)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(result.rows_affected() == 1)
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
        let id_text = id.to_string();
        sqlx::query(
            "UPDATE jobs SET state = 'canceled', finished_at = ?, error = NULL \
             WHERE id = ? AND state = 'queued'",
        )
        .bind(millis(now))
        .bind(&id_text)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'")
            .bind(&id_text)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        self.get(id).await
    }

    async fn mark_purged(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET purged_at = COALESCE(purged_at, ?), outputs = '[]' \
             WHERE id = ? AND state IN ('succeeded', 'failed', 'canceled')",
        )
        .bind(millis(now))
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(result.rows_affected() == 1)
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
            let id: String = row.try_get(0).map_err(unavailable)?;
            let attempt = row.try_get::<i64, _>(1).map_err(unavailable)? as u32;
            let max_attempts = row.try_get::<i64, _>(2).map_err(unavailable)? as u32;
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
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            recovered += result.rows_affected();
        }
        Ok(recovered)
    }

    async fn queued_ahead(&self, job: &Job) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (run_after < ? OR (run_after = ? AND id < ?))",
        )
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
        let mean: Option<f64> = sqlx::query_scalar(
            "SELECT AVG(finished_at - started_at) FROM (SELECT finished_at, started_at FROM jobs \
             WHERE tool = ? AND tool_version = ? AND state = 'succeeded' \
             ORDER BY finished_at DESC LIMIT 20)",
        )
        .bind(tool)
        .bind(version as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(mean.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
