//! PostgreSQL rows into jobs, events and keys.

use super::*;

pub(super) fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    let progress: Option<Json<Progress>> = column(row, "progress")?;
    let error: Option<Json<JobError>> = column(row, "error")?;
    Ok(Job {
        id: column(row, "id")?,
        owner: column(row, "owner")?,
        tier: column(row, "tier")?,
        priority: column(row, "priority")?,
        retention: Duration::from_millis(column::<i64, _, _>(row, "retention_ms")?.max(0) as u64),
        tool: column(row, "tool")?,
        tool_version: column::<i64, _, _>(row, "tool_version")? as u32,
        state: rows::state(column(row, "state")?)?,
        params: column::<Json<_>, _, _>(row, "params")?.0,
        inputs: column::<Json<_>, _, _>(row, "inputs")?.0,
        created_at: column(row, "created_at")?,
        started_at: column(row, "started_at")?,
        finished_at: column(row, "finished_at")?,
        expires_at: column(row, "expires_at")?,
        attempt: column::<i64, _, _>(row, "attempt")? as u32,
        max_attempts: column::<i64, _, _>(row, "max_attempts")? as u32,
        lease_until: column(row, "lease_until")?,
        run_after: column(row, "run_after")?,
        progress: progress.map(|json| json.0),
        error: error.map(|json| json.0),
        outputs: column::<Json<Vec<StoredOutput>>, _, _>(row, "outputs")?.0,
        cancel_requested: column(row, "cancel_requested")?,
        idempotency_key: column(row, "idempotency_key")?,
        request_hash: column(row, "request_hash")?,
        purged_at: column(row, "purged_at")?,
        executor_ref: column(row, "executor_ref")?,
    })
}

pub(super) fn event_from_row(row: &PgRow) -> Result<JobEvent, StoreError> {
    let kind: String = column(row, "kind")?;
    let progress: Option<Json<Progress>> = column(row, "progress")?;
    let error: Option<Json<JobError>> = column(row, "error")?;
    Ok(JobEvent {
        seq: column::<i64, _, _>(row, "seq")? as u64,
        job_id: column(row, "job_id")?,
        kind: rows::event_kind(&kind)?,
        at: column(row, "at")?,
        state: rows::state(column(row, "state")?)?,
        attempt: column::<i64, _, _>(row, "attempt")? as u32,
        progress: progress.map(|json| json.0),
        error: error.map(|json| json.0),
        cancel_requested: column(row, "cancel_requested")?,
    })
}

pub(super) fn key_from_row(row: &PgRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: column(row, "id")?,
        hash: column(row, "hash")?,
        name: column(row, "name")?,
        tier: column(row, "tier")?,
        admin: column(row, "admin")?,
        created_at: column(row, "created_at")?,
        revoked_at: column(row, "revoked_at")?,
    })
}
