//! The embedded worker pool: claims queued jobs and drives each attempt through
//! stage → run → collect → publish → commit (fenced) → clean up.

pub mod attempt;
mod startup;
mod uids;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::config::Settings;
use crate::executors::Executors;
use crate::running::RunningJobs;
use crate::store::JobStore;
use crate::tools::ToolRegistry;
use crate::workdirs::WorkDirs;
use startup::StoreLookup;
pub use uids::{UidLease, UidPool, UID_LOCKS};

/// What the worker pool works with. Made by `WorkerState::open`, which owns the work
/// directory (see `startup.rs`).
pub struct WorkerState {
    pub settings: Arc<Settings>,
    pub tools: Arc<ToolRegistry>,
    pub store: Arc<dyn JobStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub executors: Executors,
    /// Shared with the API in one process: `DELETE` stops a program running here at once.
    pub running: Arc<RunningJobs>,
    /// Makes, and recycles, the work directories of attempts on this host.
    pub work_dirs: WorkDirs,
    /// The uids programs run as, one per job; `None`: the server's own user.
    pub uids: Option<UidPool>,
    /// `bwrap`, when programs run sandboxed.
    pub sandbox: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Cancelled when the process begins to shut down.
    pub stopping: CancellationToken,
    /// Held while this process runs jobs in the work root (see `startup::lock_work_root`).
    _work_lock: std::fs::File,
}

/// Per-tool counts of attempts running here, for tools with a concurrency limit.
#[derive(Default)]
struct ToolSlots {
    running: Mutex<HashMap<String, u32>>,
}

impl ToolSlots {
    fn saturated(&self, runtime: &WorkerState) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        runtime
            .tools
            .all()
            .filter(|tool| {
                tool.limits
                    .concurrency
                    .is_some_and(|limit| running.get(&tool.id()).copied().unwrap_or(0) >= limit)
            })
            .map(|tool| tool.id())
            .collect()
    }

    fn adjust(&self, tool: &str, delta: i32) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let count = running.entry(tool.to_owned()).or_default();
        *count = count.saturating_add_signed(delta);
    }
}

/// Starts `count` worker loops and the lease-recovery loop; they stop with `shutdown`.
pub fn spawn_pool(
    runtime: Arc<WorkerState>,
    count: usize,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let slots = Arc::new(ToolSlots::default());
    let mut handles = Vec::new();
    for index in 0..count {
        let runtime = runtime.clone();
        let slots = slots.clone();
        let shutdown = shutdown.clone();
        handles.push(tokio::spawn(async move {
            worker_loop(runtime, slots, index, shutdown).await;
        }));
    }
    let recovery_runtime = runtime.clone();
    handles.push(tokio::spawn(async move {
        recovery_loop(recovery_runtime, shutdown).await;
    }));
    handles
}

async fn worker_loop(
    runtime: Arc<WorkerState>,
    slots: Arc<ToolSlots>,
    index: usize,
    shutdown: CancellationToken,
) {
    tracing::debug!(worker = index, "worker started");
    while !shutdown.is_cancelled() {
        match try_execute_next(&runtime, &slots).await {
            Ok(ExecutionOutcome::Executed) => continue,
            Ok(ExecutionOutcome::EmptyQueue) => {}
            Err(error) => {
                tracing::warn!(worker = index, %error, "claiming a job failed");
            }
        }
        tokio::select! {
            // The store wakes a worker when a job is queued, here or in another process.
            () = runtime.store.changes().queued() => {}
            // Retries and lease recoveries become due without a notification.
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

enum ExecutionOutcome {
    Executed,
    EmptyQueue,
}

/// Claims one due job and runs its attempt to the end.
async fn try_execute_next(
    runtime: &Arc<WorkerState>,
    slots: &ToolSlots,
) -> Result<ExecutionOutcome, crate::store::StoreError> {
    let now = runtime.store.now();
    let lease = chrono::Duration::from_std(runtime.settings.lease()).unwrap_or_default();
    let exclude = slots.saturated(runtime);
    let Some(job) = runtime.store.claim(now, now + lease, &exclude).await? else {
        return Ok(ExecutionOutcome::EmptyQueue);
    };
    let tool_id = format!("{}@{}", job.tool, job.tool_version);
    slots.adjust(&tool_id, 1);
    attempt::run(runtime.clone(), job).await;
    slots.adjust(&tool_id, -1);
    Ok(ExecutionOutcome::Executed)
}

/// After `shutdown`: waits for the worker loops (each finishing its attempt) for the
/// grace period, then hands the remaining attempts back to the queue and waits for them
/// to record it (bounded: a lease that is not handed back expires anyway).
pub async fn drain(runtime: &WorkerState, workers: Vec<tokio::task::JoinHandle<()>>) {
    if workers.is_empty() {
        return;
    }
    let running = runtime.running.count();
    if running > 0 {
        tracing::info!(
            running,
            grace_s = runtime.settings.shutdown_grace_seconds,
            "waiting for running jobs to finish"
        );
    }
    let mut all = tokio::spawn(futures_util::future::join_all(workers));
    let grace = Duration::from_secs(runtime.settings.shutdown_grace_seconds);
    if tokio::time::timeout(grace, &mut all).await.is_ok() {
        return;
    }
    let handed = runtime.running.hand_back_all();
    tracing::warn!(
        handed,
        "grace period over: handing running jobs back to the queue"
    );
    if tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .is_err()
    {
        tracing::error!("running jobs did not stop; their leases will expire");
    }
}

async fn recovery_loop(runtime: Arc<WorkerState>, shutdown: CancellationToken) {
    let period = (runtime.settings.lease() / 3).max(Duration::from_millis(100));
    let mut next_sweep = tokio::time::Instant::now() + runtime.executors.sweep_interval();
    loop {
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep += runtime.executors.sweep_interval();
            let swept = runtime
                .executors
                .sweep(&StoreLookup(runtime.store.clone()))
                .await;
            if swept > 0 {
                tracing::info!(swept, "cleaned up what jobs no worker followed left behind");
            }
        }
        match runtime
            .store
            .recover_expired_leases(runtime.store.now())
            .await
        {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(count, "recovered jobs whose worker stopped responding");
            }
            Err(error) => tracing::warn!(%error, "lease recovery failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => break,
        }
    }
}
