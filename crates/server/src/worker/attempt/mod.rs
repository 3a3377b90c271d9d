//! One attempt of one job, from a fresh work directory to a fenced commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::WorkerState;
use crate::blobs::JobKeys;
use crate::executors::{
    Executor, References, ResourceLimits, RunControl, RunOutcome, RunSpec, Termination,
};
use crate::jobs::{
    self, AttemptOutcome, Decision, Job, JobError, JobState, Progress, StoredOutput,
};
use crate::running::Steering;
use crate::store::{AttemptUsage, Completion, Heartbeat};
use crate::tools::argv::ArgValues;
use crate::tools::decl::OutputSource;
use crate::tools::{OutputSpec, Tool};
use crate::transforms::outputs;
use crate::workdirs::{live_log, work_dir};

mod outcome;
mod pipeline;
mod storage;

use outcome::{check_outputs, classify, collect_outputs, HostPaths};
use pipeline::execute;
use storage::{blob_failure, patiently, LiveLogs};

/// Runs one claimed attempt of `job` to its end, inside a span that names the job, the
/// attempt and the tool (every log line of the attempt carries them).
pub async fn run(runtime: Arc<WorkerState>, job: Job) {
    let span = tracing::info_span!(
        "attempt",
        job_id = %job.id,
        attempt = job.attempt,
        tool = %format_args!("{}@{}", job.tool, job.tool_version),
    );
    run_attempt(runtime, job).instrument(span).await;
}

async fn run_attempt(runtime: Arc<WorkerState>, job: Job) {
    let Some(tool) = runtime.tools.get(&job.tool, job.tool_version) else {
        let _ = finish(&runtime, &job, retired(&job), Vec::new()).await;
        return;
    };
    let (executor, uid) = match placed(&runtime, &tool) {
        Ok(placed) => placed,
        Err(message) => {
            let outcome = AttemptOutcome::Infrastructure(message);
            let decision = jobs::decide(outcome, job.attempt, &tool.retry, rand_fraction());
            let _ = finish(&runtime, &job, decision, Vec::new()).await;
            return;
        }
    };
    tracing::info!("attempt started");
    if job.attempt == 1 {
        if let Some(started) = job.started_at {
            let waited = (started - job.created_at).to_std().unwrap_or_default();
            crate::telemetry::queue_wait(&job.tool, waited);
        }
    }
    let steering = runtime.running.register(job.id);
    let heartbeat = HeartbeatGuard::start(&runtime, &job, steering.clone());
    let (workdir, attach) = place(&runtime, &job, executor).await;
    let mut measured = Measured::default();
    let references = Arc::new(StoreReferences {
        runtime: runtime.clone(),
        id: job.id,
        attempt: job.attempt,
        recorded: AtomicBool::new(false),
    });
    let control = RunControl {
        progress: heartbeat.progress.clone(),
        cancel: steering.cancel.clone(),
        detach: steering.detach.clone(),
        references: references.clone(),
    };
    let attempt = Attempt {
        job: &job,
        tool: &tool,
        executor,
        workdir: &workdir,
        attach,
        run_as: uid.as_ref().map(super::UidLease::uid),
        references,
    };
    let result = execute(&runtime, attempt, control, &mut measured).await;
    let attempt_ended = crate::jobs::now();
    runtime.running.unregister(job.id);
    heartbeat.record_last_progress(&runtime, &job).await;
    let (outcome, outputs) = match result {
        Ok(pair) => pair,
        Err(message) => (AttemptOutcome::Infrastructure(message), Vec::new()),
    };
    let outcome = HostPaths::of(&runtime, &tool, &workdir).remove_from(outcome);
    measured.bytes_out += outputs.iter().map(|output| output.size).sum::<u64>();
    let lease_lost = heartbeat.lease_lost.is_cancelled();
    let label = conclude(
        &runtime,
        &job,
        &tool,
        (outcome, outputs),
        lease_lost,
        &measured,
    )
    .await;
    // The heartbeat held the lease while the outcome was being stored.
    drop(heartbeat);
    // A program left running for the next worker keeps its directory.
    if !measured.detached {
        // Every process of the attempt has ended (with a uid of its own: every process
        // of that uid), so nothing can write into the directory while it is emptied.
        let recyclable = executor.on_this_host();
        runtime.work_dirs.release(&workdir, recyclable).await;
    }
    drop(uid);
    account(&runtime, &job, label, attempt_ended, &measured).await;
}

/// The executor of `tool` and, for a program on this host when the server has a pool,
/// the uid it runs as.
fn placed<'a>(
    runtime: &'a WorkerState,
    tool: &Tool,
) -> Result<(&'a dyn Executor, Option<super::UidLease>), String> {
    let executor = runtime.executors.for_tool(tool)?;
    let uid = match (&runtime.uids, executor.on_this_host()) {
        (Some(pool), true) => Some(pool.acquire()?),
        _ => None,
    };
    Ok((executor, uid))
}

/// A job whose tool version this server no longer offers fails at once.
fn retired(job: &Job) -> Decision {
    Decision::Finish {
        state: JobState::Failed,
        error: Some(JobError {
            code: "tool-retired".into(),
            message: format!(
                "tool `{}@{}` is no longer offered by this server",
                job.tool, job.tool_version
            ),
            exit_code: None,
            signal: None,
            stderr_tail: None,
        }),
    }
}

/// Commits what the attempt earned, unless another attempt owns the job now (then it
/// changes nothing); a job this worker's shutdown stopped goes back to the queue.
/// Returns the label the attempt is accounted under.
async fn conclude(
    runtime: &WorkerState,
    job: &Job,
    tool: &Tool,
    (outcome, outputs): (AttemptOutcome, Vec<StoredOutput>),
    lease_lost: bool,
    measured: &Measured,
) -> &'static str {
    if lease_lost {
        tracing::warn!("lease lost; discarding this attempt");
        discard_attempt(runtime, job.id, job.attempt).await;
        return "discarded";
    }
    let decision = if matches!(outcome, AttemptOutcome::Canceled)
        && (runtime.running.handing_back() || measured.detached)
    {
        // Stopped by this worker's shutdown, not by the caller: another worker runs it.
        tracing::info!("handing the job back to the queue");
        Decision::Retry {
            delay: Duration::ZERO,
            error: worker_stopped_error(job.attempt),
        }
    } else {
        jobs::decide(outcome, job.attempt, &tool.retry, rand_fraction())
    };
    finish(runtime, job, decision, outputs).await
}

/// The attempt's heartbeat (`heartbeat_loop`) for as long as the guard lives: it holds
/// the lease until the outcome is committed, and stops when dropped.
struct HeartbeatGuard {
    task: tokio::task::JoinHandle<()>,
    /// Where the executor reports progress.
    progress: watch::Sender<Option<Progress>>,
    last: watch::Receiver<Option<Progress>>,
    /// Cancelled when another attempt took the job.
    lease_lost: CancellationToken,
}

impl HeartbeatGuard {
    fn start(runtime: &Arc<WorkerState>, job: &Job, steering: Steering) -> HeartbeatGuard {
        let lease_lost = CancellationToken::new();
        let (progress, last) = watch::channel(None::<Progress>);
        let task = tokio::spawn(
            heartbeat_loop(
                runtime.clone(),
                job.id,
                job.attempt,
                last.clone(),
                steering,
                lease_lost.clone(),
            )
            .in_current_span(),
        );
        HeartbeatGuard {
            task,
            progress,
            last,
            lease_lost,
        }
    }

    /// The heartbeat writes progress at most every 200 ms: the last report is recorded
    /// when the program has ended.
    async fn record_last_progress(&self, runtime: &WorkerState, job: &Job) {
        let last_report = self.last.borrow().clone();
        if let Some(progress) = last_report {
            let lease = chrono::Duration::from_std(runtime.settings.lease()).unwrap_or_default();
            let until = runtime.store.now() + lease;
            let _ = runtime
                .store
                .heartbeat(job.id, job.attempt, until, Some(&progress))
                .await;
        }
    }
}

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn worker_stopped_error(attempt: u32) -> JobError {
    JobError {
        code: "worker-stopped".into(),
        message: format!(
            "the worker running attempt {attempt} was shut down; the job was queued again"
        ),
        exit_code: None,
        signal: None,
        stderr_tail: None,
    }
}

/// What an attempt cost, measured as it runs.
#[derive(Debug, Default)]
struct Measured {
    started: Option<chrono::DateTime<Utc>>,
    wall: Duration,
    cpu: Option<Duration>,
    peak_memory: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
    /// The program was left running for another worker to follow.
    detached: bool,
}

/// Records the attempt's cost (for `/v1/usage`) and its metrics.
async fn account(
    runtime: &WorkerState,
    job: &Job,
    outcome: &str,
    ended: chrono::DateTime<Utc>,
    measured: &Measured,
) {
    crate::telemetry::attempt(&crate::telemetry::AttemptFigures {
        tool: &job.tool,
        tier: &job.tier,
        outcome,
        wall: measured.wall,
        cpu: measured.cpu,
        bytes_in: measured.bytes_in,
        bytes_out: measured.bytes_out,
    });
    let usage = AttemptUsage {
        job_id: job.id,
        attempt: job.attempt,
        owner: job.owner.clone(),
        tier: job.tier.clone(),
        tool: job.tool.clone(),
        tool_version: job.tool_version,
        started_at: measured.started.unwrap_or(ended),
        finished_at: ended,
        outcome: outcome.to_owned(),
        wall_ms: measured.wall.as_millis() as u64,
        cpu_ms: measured.cpu.map(|cpu| cpu.as_millis() as u64),
        max_rss_bytes: measured.peak_memory,
        bytes_in: measured.bytes_in,
        bytes_out: measured.bytes_out,
    };
    if let Err(error) = runtime.store.record_attempt(&usage).await {
        tracing::warn!(%error, "cannot record the attempt's cost");
    }
}

/// Commits the decision (fenced by the attempt) and returns the outcome's label.
async fn finish(
    runtime: &WorkerState,
    job: &Job,
    decision: Decision,
    outputs: Vec<StoredOutput>,
) -> &'static str {
    let id = job.id;
    let attempt = job.attempt;
    let now = runtime.store.now();
    let (label, committed) = match decision {
        Decision::Finish { state, error } => {
            let retention = job.retention;
            let completion = Completion {
                state,
                outputs: if state == JobState::Succeeded {
                    outputs
                } else {
                    Vec::new()
                },
                error,
                finished_at: now,
                expires_at: chrono::Duration::from_std(retention).ok().map(|r| now + r),
            };
            tracing::info!(state = %state, "attempt finished");
            let committed =
                patiently(runtime, || runtime.store.complete(id, attempt, &completion)).await;
            if matches!(committed, Ok(true)) {
                crate::telemetry::finished(&job.tool, &job.tier, state.as_str());
            }
            (state.as_str(), committed)
        }
        Decision::Retry { delay, error } => {
            tracing::info!(delay_ms = delay.as_millis() as u64, code = %error.code, "attempt will be retried");
            let run_after = now + chrono::Duration::from_std(delay).unwrap_or_default();
            let committed = patiently(runtime, || {
                runtime.store.requeue(id, attempt, run_after, &error)
            })
            .await;
            ("retry", committed)
        }
    };
    match committed {
        Ok(true) => label,
        Ok(false) => {
            tracing::warn!("a newer attempt owns the job; this outcome is discarded");
            discard_attempt(runtime, id, attempt).await;
            "discarded"
        }
        Err(error) => {
            // The lease will expire and the job will be retried from scratch.
            tracing::error!(%error, "cannot record the attempt's outcome");
            "discarded"
        }
    }
}

async fn discard_attempt(runtime: &WorkerState, id: uuid::Uuid, attempt: u32) {
    if let Err(error) = runtime
        .blobs
        .delete_prefix(&JobKeys::attempt(id, attempt))
        .await
    {
        tracing::warn!(%error, "cannot delete a discarded attempt's blobs");
    }
}

/// Renews the lease every third of its length, records progress (at most every 200 ms),
/// and turns a remote cancel request or a lost lease into cancellation of the program.
async fn heartbeat_loop(
    runtime: Arc<WorkerState>,
    id: uuid::Uuid,
    attempt: u32,
    mut progress: watch::Receiver<Option<Progress>>,
    steering: Steering,
    lease_lost: CancellationToken,
) {
    let lease = runtime.settings.lease();
    let interval = lease / 3;
    let mut progress_open = true;
    loop {
        let progress_changed = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            changed = progress.changed(), if progress_open => {
                if changed.is_err() {
                    progress_open = false;
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                true
            }
        };
        let latest = if progress_changed {
            progress.borrow_and_update().clone()
        } else {
            None
        };
        let lease_until =
            runtime.store.now() + chrono::Duration::from_std(lease).unwrap_or_default();
        match runtime
            .store
            .heartbeat(id, attempt, lease_until, latest.as_ref())
            .await
        {
            Ok(Heartbeat::Held { cancel_requested }) => {
                if cancel_requested {
                    steering.cancel.cancel();
                }
            }
            Ok(Heartbeat::Lost) => {
                // Another attempt owns the job; a program it may follow is not stopped.
                lease_lost.cancel();
                steering.detach.cancel();
                return;
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed"),
        }
    }
}

/// What one attempt runs, and where.
struct Attempt<'a> {
    job: &'a Job,
    tool: &'a Tool,
    executor: &'a dyn Executor,
    workdir: &'a Path,
    /// The executor reference of a program an earlier attempt started, to follow.
    attach: Option<String>,
    run_as: Option<u32>,
    references: Arc<StoreReferences>,
}

/// Where the attempt runs: the work directory of a program an earlier attempt left
/// running (the job's `executor_ref`, if its executor still finds it), else a fresh one.
async fn place(
    runtime: &WorkerState,
    job: &Job,
    executor: &dyn Executor,
) -> (PathBuf, Option<String>) {
    if let Some(reference) = &job.executor_ref {
        if let Some(workdir) = executor.locate(reference).await {
            tracing::info!("following the program an earlier attempt started");
            return (workdir, Some(reference.clone()));
        }
        // Nothing left to follow: the program starts again.
        let _ = runtime
            .store
            .set_executor_ref(job.id, job.attempt, None)
            .await;
    }
    (work_dir(executor.work_root(), job.id, job.attempt), None)
}

/// Records an executor's reference to its program with the attempt (fenced by it).
struct StoreReferences {
    runtime: Arc<WorkerState>,
    id: uuid::Uuid,
    attempt: u32,
    recorded: AtomicBool,
}

impl StoreReferences {
    fn recorded(&self) -> bool {
        self.recorded.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl References for StoreReferences {
    async fn record(&self, reference: &str) -> Result<(), String> {
        self.recorded.store(true, Ordering::SeqCst);
        match self
            .runtime
            .store
            .set_executor_ref(self.id, self.attempt, Some(reference))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err("the attempt no longer owns the job".into()),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// A fraction in [0, 1) for retry jitter, from the clock's nanoseconds.
fn rand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}
