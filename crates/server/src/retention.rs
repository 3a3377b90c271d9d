//! Retention: deletes finished jobs' data when their time is up, for the periodic pass and
//! for `DELETE` of a finished job alike. The row is marked first (the job answers 410
//! from then on, so no reader is sent to a blob that is going), then the blobs are
//! deleted, then the row records that they are gone. A purge interrupted by a crash is
//! finished by the next pass. An unfinished job is never touched.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::blobs::{BlobError, BlobStore, JobKeys};
use crate::store::{JobStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blobs(#[from] BlobError),
}

/// The retention service: what a job's data is kept in, and how it goes.
#[derive(Clone)]
pub struct Retention {
    store: Arc<dyn JobStore>,
    blobs: Arc<dyn BlobStore>,
}

impl Retention {
    pub fn new(store: Arc<dyn JobStore>, blobs: Arc<dyn BlobStore>) -> Retention {
        Retention { store, blobs }
    }

    /// Deletes one finished job's data. False if the job is not finished (nothing
    /// changes).
    pub async fn purge(&self, id: Uuid) -> Result<bool, PurgeError> {
        let now = self.store.now();
        if !self.store.mark_purged(id, now).await? {
            return Ok(false);
        }
        self.blobs.delete_prefix(&JobKeys::job(id)).await?;
        self.store.mark_cleaned(id, now).await?;
        Ok(true)
    }

    /// One pass: purges every job due. Returns how many were purged.
    pub async fn sweep(&self) -> Result<usize, PurgeError> {
        const BATCH: u32 = 100;
        let mut purged = 0;
        loop {
            let due = self.store.due_for_cleanup(self.store.now(), BATCH).await?;
            let batch = due.len();
            for id in due {
                if self.purge(id).await? {
                    tracing::info!(job_id = %id, "job data deleted (retention)");
                    purged += 1;
                }
            }
            if batch < BATCH as usize {
                break;
            }
        }
        // Request-rate windows older than a few minutes are no longer read.
        let old = self.store.now() - chrono::Duration::minutes(10);
        self.store.prune_request_counts(old).await?;
        Ok(purged)
    }

    /// Runs a pass every `interval` until `shutdown`.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.sweep().await {
                tracing::warn!(%error, "retention pass failed; it will be tried again");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
