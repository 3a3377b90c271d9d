//! The embedded worker pool: claims queued jobs and drives each attempt through
//! stage → run → collect → publish → commit (fenced) → clean up.

pub mod attempt;
pub mod reaper;
pub mod workdirs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::Runtime;

/// The attempts running in this process: `DELETE` stops a program at once instead of at
/// its next heartbeat, and a shutdown hands the attempts back.
#[derive(Default)]
pub struct RunningJobs {
    attempts: Mutex<HashMap<Uuid, Steering>>,
    handing_back: AtomicBool,
}

/// How one running attempt is stopped.
#[derive(Clone, Default)]
pub struct Steering {
    /// The caller canceled the job: stop the program.
    pub cancel: CancellationToken,
    /// This worker lets go of the attempt (shutdown, lost lease): an executor whose
    /// programs outlive it leaves the program running for the next worker.
    pub detach: CancellationToken,
}

impl RunningJobs {
    fn register(&self, id: Uuid) -> Steering {
        let steering = Steering::default();
        self.lock().insert(id, steering.clone());
        steering
    }

    fn unregister(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    /// Cancels the attempt if it runs here; false otherwise.
    pub fn cancel(&self, id: Uuid) -> bool {
        match self.lock().get(&id) {
            Some(steering) => {
                steering.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Lets go of every attempt running here; their jobs go back to the queue (the
    /// process is shutting down and the grace period is over).
    pub fn hand_back_all(&self) -> usize {
        self.handing_back.store(true, Ordering::SeqCst);
        let attempts = self.lock();
        for steering in attempts.values() {
            steering.detach.cancel();
        }
        attempts.len()
    }

    /// True once `hand_back_all` was called: a stopped attempt is handed back, not
    /// canceled.
    pub fn handing_back(&self) -> bool {
        self.handing_back.load(Ordering::SeqCst)
    }

    /// Attempts running here.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Steering>> {
        self.attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Per-tool counts of attempts running here, for tools with a concurrency limit.
#[derive(Default)]
struct ToolSlots {
    running: Mutex<HashMap<String, u32>>,
}

impl ToolSlots {
    fn saturated(&self, runtime: &Runtime) -> Vec<String> {
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
    runtime: Arc<Runtime>,
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
    runtime: Arc<Runtime>,
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
    runtime: &Arc<Runtime>,
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
pub async fn drain(runtime: &Runtime, workers: Vec<tokio::task::JoinHandle<()>>) {
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

async fn recovery_loop(runtime: Arc<Runtime>, shutdown: CancellationToken) {
    let period = (runtime.settings.lease() / 3).max(Duration::from_millis(100));
    let mut next_sweep = tokio::time::Instant::now() + runtime.executors.sweep_interval();
    loop {
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep += runtime.executors.sweep_interval();
            let swept = runtime.executors.sweep(runtime.store.as_ref()).await;
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

/// The uids programs run as (`run_as_uid`): one per running attempt on this machine, so
/// that a per-user process limit holds per job, jobs cannot signal or read one another,
/// and "every process of the uid" is exactly what a job started. A uid is held with an
/// exclusive `flock` on `/run/batchgate/uids/<uid>`, so every batchgate process of the
/// machine (several servers, workers, test servers) shares one pool without a
/// coordinator, and a crashed holder's lock goes with it; the next holder first kills
/// whatever the crashed one's job left running under that uid.
pub struct UidPool {
    first: u32,
    count: u32,
    directory: PathBuf,
    next: std::sync::atomic::AtomicU32,
}

/// Where the pool's lock files live.
pub const UID_LOCKS: &str = "/run/batchgate/uids";

impl UidPool {
    /// The pool of `count` uids from `first`; makes its lock directory (root only).
    pub fn open(first: u32, count: u32) -> std::io::Result<UidPool> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        if first == 0 || first.checked_add(count.max(1)).is_none() {
            return Err(std::io::Error::other(format!(
                "the pool {first} + {count} uids must lie between 1 and 4294967295"
            )));
        }
        let directory = PathBuf::from(UID_LOCKS);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&directory)?;
        let metadata = std::fs::metadata(&directory)?;
        if metadata.uid() != 0 || metadata.mode() & 0o022 != 0 {
            return Err(std::io::Error::other(format!(
                "{UID_LOCKS} must be owned by root and writable by no one else"
            )));
        }
        Ok(UidPool {
            first,
            count: count.max(1),
            directory,
            next: std::sync::atomic::AtomicU32::new(std::process::id() % count.max(1)),
        })
    }

    /// A uid no other running job of this machine holds.
    pub fn acquire(&self) -> Result<UidLease, String> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for offset in 0..self.count {
            let uid = self.first + (start.wrapping_add(offset)) % self.count;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.directory.join(uid.to_string()))
                .map_err(|error| format!("cannot lock a uid for the program: {error}"))?;
            let locked =
                rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
            if locked.is_ok() {
                return Ok(UidLease { uid, _lock: file });
            }
        }
        Err(format!(
            "all {} uids of the program users' pool are in use on this machine",
            self.count
        ))
    }
}

/// A uid held for one attempt; released when dropped (after its processes were killed).
pub struct UidLease {
    uid: u32,
    _lock: std::fs::File,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }
}
