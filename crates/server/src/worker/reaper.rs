//! Retention: deletes finished jobs' data when their time is up. The row is marked first
//! (the job answers 410 from then on, so no reader is sent to a blob that is going), then
//! the blobs are deleted, then the row records that they are gone. A purge interrupted
//! by a crash is finished by the next pass. An unfinished job is never touched.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::Runtime;
use crate::blobs::{BlobError, JobKeys};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blobs(#[from] BlobError),
}

/// Deletes one finished job's data. False if the job is not finished (nothing changes).
pub async fn purge(runtime: &Runtime, id: Uuid) -> Result<bool, PurgeError> {
    let now = runtime.store.now();
    if !runtime.store.mark_purged(id, now).await? {
        return Ok(false);
    }
    runtime.blobs.delete_prefix(&JobKeys::job(id)).await?;
    runtime.store.mark_cleaned(id, now).await?;
    Ok(true)
}

/// One pass: purges every job due. Returns how many were purged.
pub async fn sweep(runtime: &Runtime) -> Result<usize, PurgeError> {
    let mut purged = 0;
    loop {
        let due = runtime
            .store
            .due_for_cleanup(runtime.store.now(), 100)
            .await?;
        if due.is_empty() {
            break;
        }
        let batch = due.len();
        for id in due {
            if purge(runtime, id).await? {
                tracing::info!(job_id = %id, "job data deleted (retention)");
                purged += 1;
            }
        }
        if batch < 100 {
            break;
        }
    }
    // Request-rate windows older than a few minutes are no longer read.
    let old = runtime.store.now() - chrono::Duration::minutes(10);
    runtime.store.prune_request_counts(old).await?;
    Ok(purged)
}

pub async fn run(runtime: Arc<Runtime>, shutdown: CancellationToken) {
    let interval = Duration::from_secs_f64(runtime.settings.reaper_interval_seconds.max(0.05));
    loop {
        if let Err(error) = sweep(&runtime).await {
            tracing::warn!(%error, "retention pass failed; it will be tried again");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
