//! What an attempt does with storage: waits out trouble that may pass (`patiently`),
//! publishes a running program's logs (`LiveLogs`), and words a blob failure for the job.

use super::*;

/// An attempt's blob operation that failed, as the job's error says it: what was being
/// done and the kind of trouble; the storage's own words (its URLs, paths) go to the log.
pub(super) fn blob_failure(what: &str, error: &crate::blobs::BlobError) -> String {
    tracing::warn!(%error, "{what} failed");
    format!("{what}: {}", error.summary())
}

/// Copies of a running attempt's logs in the blob store, under the keys its final logs
/// take, so that `GET /v1/jobs/{id}/logs` reads them from there whichever process runs the
/// job and whichever executor (a Slurm job or a container writes them where this worker
/// reads them; a Kubernetes pod's log is fetched at its end). Published a quarter of
/// `LIVE_LOG_INTERVAL` after the start, then every interval when a stream grew, at most
/// `LIVE_LOG_BYTES` of it (its end).
pub(super) struct LiveLogs {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub(super) const LIVE_LOG_INTERVAL: Duration = Duration::from_secs(1);
pub(super) const LIVE_LOG_BYTES: u64 = 4 * 1024 * 1024;

impl LiveLogs {
    pub(super) fn start(runtime: &WorkerState, job: &Job, paths: [PathBuf; 2]) -> LiveLogs {
        let stop = CancellationToken::new();
        let blobs = runtime.blobs.clone();
        let keys = ["stdout", "stderr"].map(|stream| JobKeys::log(job.id, job.attempt, stream));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut published = [0u64; 2];
            // The first copy soon (a quick look at a job just started), then every second.
            let mut wait = LIVE_LOG_INTERVAL / 4;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopped.cancelled() => return,
                }
                wait = LIVE_LOG_INTERVAL;
                for index in 0..2 {
                    let Ok(size) = tokio::fs::metadata(&paths[index]).await.map(|m| m.len()) else {
                        continue;
                    };
                    if size == published[index] {
                        continue;
                    }
                    let Ok(bytes) = tail(&paths[index], LIVE_LOG_BYTES).await else {
                        continue;
                    };
                    if blobs.put_bytes(&keys[index], &bytes).await.is_ok() {
                        published[index] = size;
                    }
                }
            }
        });
        LiveLogs { stop, task }
    }

    /// Stops publishing and waits for a copy being written.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The last `limit` bytes of a file.
pub(super) async fn tail(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    file.seek(std::io::SeekFrom::Start(size.saturating_sub(limit)))
        .await?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

/// Trouble of the platform that waiting may end.
pub(super) trait MayPass {
    fn may_pass(&self) -> bool;
}

impl MayPass for crate::store::StoreError {
    fn may_pass(&self) -> bool {
        self.is_retryable()
    }
}

impl MayPass for crate::blobs::BlobError {
    fn may_pass(&self) -> bool {
        self.is_retryable()
    }
}

/// How long an attempt waits for its storage to come back before it gives up (and the job
/// is retried as an infrastructure failure).
pub(super) const STORAGE_PATIENCE: Duration = Duration::from_secs(600);

/// Runs a store or blob operation of an attempt, trying again with backoff (up to 10 s
/// apart) while its trouble may pass, for at most `STORAGE_PATIENCE` or until the server
/// stops: an outage of the storage (a full disk, a lock, an object store down) waits
/// instead of using up the job's attempts or throwing away an outcome the program earned.
/// The attempt's heartbeat keeps its lease meanwhile.
pub(super) async fn patiently<T, E, F, Fut>(runtime: &WorkerState, operation: F) -> Result<T, E>
where
    E: MayPass + std::fmt::Display,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match operation().await {
            Err(error)
                if error.may_pass()
                    && started.elapsed() < STORAGE_PATIENCE
                    && !runtime.stopping.is_cancelled() =>
            {
                tracing::warn!(%error, retry_ms = delay.as_millis() as u64, "storage trouble; waiting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = runtime.stopping.cancelled() => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}
