//! SQLite rows into jobs, events and keys (times are Unix milliseconds, JSON is text).

use super::*;

pub(super) fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub(super) fn time(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("bad timestamp {ms}")))
}

pub(super) fn optional_time(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(time).transpose()
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store values serialize")
}

pub(super) fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let id: String = column(row, "id")?;
    let state: String = column(row, "state")?;
    let progress: Option<String> = column(row, "progress")?;
    let error: Option<String> = column(row, "error")?;
    Ok(Job {
        id: rows::uuid(&id)?,
        owner: column(row, "owner")?,
        tier: column(row, "tier")?,
        priority: column::<i64, _, _>(row, "priority")? as i32,
        retention: Duration::from_millis(column::<i64, _, _>(row, "retention_ms")?.max(0) as u64),
        tool: column(row, "tool")?,
        tool_version: column::<i64, _, _>(row, "tool_version")? as u32,
        state: rows::state(&state)?,
        params: from_json(&column::<String, _, _>(row, "params")?)?,
        inputs: from_json(&column::<String, _, _>(row, "inputs")?)?,
        created_at: time(column(row, "created_at")?)?,
        started_at: optional_time(column(row, "started_at")?)?,
        finished_at: optional_time(column(row, "finished_at")?)?,
        expires_at: optional_time(column(row, "expires_at")?)?,
        attempt: column::<i64, _, _>(row, "attempt")? as u32,
        max_attempts: column::<i64, _, _>(row, "max_attempts")? as u32,
        lease_until: optional_time(column(row, "lease_until")?)?,
        run_after: time(column(row, "run_after")?)?,
        progress: progress.as_deref().map(from_json::<Progress>).transpose()?,
        error: error.as_deref().map(from_json::<JobError>).transpose()?,
        outputs: from_json(&column::<String, _, _>(row, "outputs")?)?,
        cancel_requested: column::<i64, _, _>(row, "cancel_requested")? != 0,
        idempotency_key: column(row, "idempotency_key")?,
        request_hash: column(row, "request_hash")?,
        purged_at: optional_time(column(row, "purged_at")?)?,
        executor_ref: column(row, "executor_ref")?,
    })
}

pub(super) fn event_from_row(row: &SqliteRow) -> Result<JobEvent, StoreError> {
    let job_id: String = column(row, "job_id")?;
    let kind: String = column(row, "kind")?;
    let state: String = column(row, "state")?;
    let progress: Option<String> = column(row, "progress")?;
    let error: Option<String> = column(row, "error")?;
    Ok(JobEvent {
        seq: column::<i64, _, _>(row, "seq")? as u64,
        job_id: rows::uuid(&job_id)?,
        kind: rows::event_kind(&kind)?,
        at: time(column(row, "at")?)?,
        state: rows::state(&state)?,
        attempt: column::<i64, _, _>(row, "attempt")? as u32,
        progress: progress.as_deref().map(from_json::<Progress>).transpose()?,
        error: error.as_deref().map(from_json::<JobError>).transpose()?,
        cancel_requested: column::<i64, _, _>(row, "cancel_requested")? != 0,
    })
}

pub(super) fn key_from_row(row: &SqliteRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: column(row, "id")?,
        hash: column(row, "hash")?,
        name: column(row, "name")?,
        tier: column(row, "tier")?,
        admin: column::<i64, _, _>(row, "admin")? != 0,
        created_at: time(column(row, "created_at")?)?,
        revoked_at: optional_time(column(row, "revoked_at")?)?,
    })
}
