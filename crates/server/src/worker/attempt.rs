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

/// Paths of this machine that a failed attempt's message or stderr may hold (a program
/// names its input file, a sandbox the program it could not find): the client is told
/// what went wrong, never where the server keeps things.
struct HostPaths {
    /// (path, what the client sees instead), longest first.
    replacements: Vec<(String, String)>,
}

impl HostPaths {
    fn of(runtime: &WorkerState, tool: &Tool, workdir: &Path) -> HostPaths {
        let text = |path: &Path| path.to_string_lossy().into_owned();
        let mut replacements = vec![
            (format!("{}/", text(workdir)), String::new()),
            (text(workdir), ".".to_owned()),
            (text(&runtime.data_dir), "<data_dir>".to_owned()),
        ];
        let program = tool.command.first().and_then(|argument| {
            let values = ArgValues {
                workdir,
                inputs: &BTreeMap::new(),
                outputs: &BTreeMap::new(),
                control: None,
                params: &Map::new(),
            };
            argument.render(&values).ok()
        });
        if let Some(program) = program.filter(|program| program.contains('/')) {
            let name = Path::new(&program)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            replacements.push((program, name));
        }
        replacements.retain(|(path, _)| path.len() > 1);
        replacements.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        HostPaths { replacements }
    }

    fn clean(&self, text: &str) -> String {
        self.replacements
            .iter()
            .fold(text.to_owned(), |text, (path, shown)| {
                text.replace(path, shown)
            })
    }

    fn remove_from(&self, outcome: AttemptOutcome) -> AttemptOutcome {
        let clean_error = |mut error: JobError| {
            error.message = self.clean(&error.message);
            error.stderr_tail = error.stderr_tail.map(|tail| self.clean(&tail));
            error
        };
        match outcome {
            AttemptOutcome::ProgramFailed(error) => {
                AttemptOutcome::ProgramFailed(clean_error(error))
            }
            AttemptOutcome::TimedOut(error) => AttemptOutcome::TimedOut(clean_error(error)),
            AttemptOutcome::Infrastructure(message) => {
                AttemptOutcome::Infrastructure(self.clean(&message))
            }
            other => other,
        }
    }
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

/// An attempt's blob operation that failed, as the job's error says it: what was being
/// done and the kind of trouble; the storage's own words (its URLs, paths) go to the log.
fn blob_failure(what: &str, error: &crate::blobs::BlobError) -> String {
    tracing::warn!(%error, "{what} failed");
    format!("{what}: {}", error.summary())
}

/// Copies of a running attempt's logs in the blob store, under the keys its final logs
/// take, so that `GET /v1/jobs/{id}/logs` reads them from there whichever process runs the
/// job and whichever executor (a Slurm job or a container writes them where this worker
/// reads them; a Kubernetes pod's log is fetched at its end). Published a quarter of
/// `LIVE_LOG_INTERVAL` after the start, then every interval when a stream grew, at most
/// `LIVE_LOG_BYTES` of it (its end).
struct LiveLogs {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

const LIVE_LOG_INTERVAL: Duration = Duration::from_secs(1);
const LIVE_LOG_BYTES: u64 = 4 * 1024 * 1024;

impl LiveLogs {
    fn start(runtime: &WorkerState, job: &Job, paths: [PathBuf; 2]) -> LiveLogs {
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
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The last `limit` bytes of a file.
async fn tail(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
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
trait MayPass {
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
const STORAGE_PATIENCE: Duration = Duration::from_secs(600);

/// Runs a store or blob operation of an attempt, trying again with backoff (up to 10 s
/// apart) while its trouble may pass, for at most `STORAGE_PATIENCE` or until the server
/// stops: an outage of the storage (a full disk, a lock, an object store down) waits
/// instead of using up the job's attempts or throwing away an outcome the program earned.
/// The attempt's heartbeat keeps its lease meanwhile.
async fn patiently<T, E, F, Fut>(runtime: &WorkerState, operation: F) -> Result<T, E>
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

/// Stages, runs and collects (ARCHITECTURE's pipeline: stage → spec → run → publish).
/// `Err` is an infrastructure failure (retried); a program's failure is an `Ok` outcome.
async fn execute(
    runtime: &WorkerState,
    attempt: Attempt<'_>,
    control: RunControl,
    measured: &mut Measured,
) -> Result<(AttemptOutcome, Vec<StoredOutput>), String> {
    measured.started = Some(crate::jobs::now());
    let files = stage(runtime, &attempt, measured).await?;
    let spec = run_spec(runtime, &attempt, &files)?;
    if let Some(uid) = spec.run_as {
        hand_over(attempt.workdir, uid)
            .await
            .map_err(|error| format!("give the work directory to the program's user: {error}"))?;
    }
    let logs = [spec.stdout_path.clone(), spec.stderr_path.clone()];
    let live = LiveLogs::start(runtime, attempt.job, logs.clone());
    let run = attempt.executor.run(spec, control).await;
    // The final logs below replace the live copies; none may land after them.
    live.stop().await;
    let run = run.map_err(|error| error.to_string())?;
    if run.termination == Termination::Detached {
        measured.detached = true;
        return Ok((AttemptOutcome::Canceled, Vec::new()));
    }
    // The program has ended: a worker taking the job over must not follow it again.
    if attempt.attach.is_some() || attempt.references.recorded() {
        runtime
            .store
            .set_executor_ref(attempt.job.id, attempt.job.attempt, None)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "cannot clear the executor reference");
                format!("clear the executor reference: {}", error.summary())
            })?;
    }
    measured.wall = run.wall_time;
    measured.cpu = run.cpu_time;
    measured.peak_memory = run.peak_memory_bytes;
    publish(runtime, &attempt, &run, &files.outputs, logs, measured).await
}

/// Where an attempt's files are in its work directory (as the worker sees it).
struct AttemptFiles {
    inputs: BTreeMap<String, PathBuf>,
    outputs: BTreeMap<String, PathBuf>,
    control: Option<PathBuf>,
}

/// Makes the work directory and copies the inputs and the control file into it (unless
/// the attempt follows a program an earlier one started, whose directory has them).
async fn stage(
    runtime: &WorkerState,
    attempt: &Attempt<'_>,
    measured: &mut Measured,
) -> Result<AttemptFiles, String> {
    let Attempt {
        job, tool, workdir, ..
    } = *attempt;
    let staging = attempt.attach.is_none();
    let mut outputs = BTreeMap::new();
    for output in &tool.outputs {
        if let Some(relative) = &output.path {
            outputs.insert(output.name.clone(), workdir.join(relative));
        }
    }
    if staging {
        let directories = outputs
            .values()
            .filter_map(|path| path.parent())
            .filter(|parent| *parent != workdir)
            .map(Path::to_owned)
            .collect();
        runtime
            .work_dirs
            .create(workdir, directories, attempt.executor.on_this_host())
            .await
            .map_err(|error| format!("create the work directory: {error}"))?;
    }
    let mut inputs = BTreeMap::new();
    for stored in &job.inputs {
        let spec = tool
            .input(&stored.name)
            .ok_or_else(|| format!("the tool has no input `{}` any more", stored.name))?;
        let path = workdir.join(&spec.file_name);
        if staging {
            let key = JobKeys::input(job.id, &stored.name);
            measured.bytes_in += patiently(runtime, || runtime.blobs.copy_to_file(&key, &path))
                .await
                .map_err(|error| blob_failure(&format!("stage input `{}`", stored.name), &error))?;
        }
        inputs.insert(stored.name.clone(), path);
    }
    let control = match &tool.control {
        Some(control) => {
            let path = workdir.join(&control.file);
            if staging {
                let key = JobKeys::control(job.id);
                measured.bytes_in += patiently(runtime, || runtime.blobs.copy_to_file(&key, &path))
                    .await
                    .map_err(|error| blob_failure("stage the control file", &error))?;
            }
            Some(path)
        }
        None => None,
    };
    Ok(AttemptFiles {
        inputs,
        outputs,
        control,
    })
}

/// What the executor runs: the rendered argv (wrapped in the sandbox on this host), the
/// environment, the limits and where the streams go.
fn run_spec(
    runtime: &WorkerState,
    attempt: &Attempt<'_>,
    files: &AttemptFiles,
) -> Result<RunSpec, String> {
    let Attempt {
        job,
        tool,
        executor,
        workdir,
        ..
    } = *attempt;
    // The argv names the files as the program sees them (a container mounts the work
    // directory elsewhere).
    let view = executor.program_workdir(workdir);
    let seen = |path: &PathBuf| view.join(path.strip_prefix(workdir).unwrap_or(path));
    let seen_all = |paths: &BTreeMap<String, PathBuf>| {
        paths
            .iter()
            .map(|(name, path)| (name.clone(), seen(path)))
            .collect::<BTreeMap<_, _>>()
    };
    let (seen_inputs, seen_outputs) = (seen_all(&files.inputs), seen_all(&files.outputs));
    let seen_control = files.control.as_ref().map(seen);
    let values = ArgValues {
        workdir: &view,
        inputs: &seen_inputs,
        outputs: &seen_outputs,
        control: seen_control.as_deref(),
        params: &job.params,
    };
    let mut argv = tool
        .command
        .iter()
        .map(|argument| argument.render(&values))
        .collect::<Result<Vec<_>, _>>()?;
    // The sandbox and per-job users belong to this host; a container or a cluster job
    // gets the engine's isolation.
    let local = executor.on_this_host();
    if let Some(bwrap) = runtime.sandbox.as_ref().filter(|_| local) {
        argv = crate::executors::sandbox::wrap(bwrap, argv, workdir, &runtime.data_dir);
    }
    let stdout_is_output = tool
        .outputs
        .iter()
        .any(|o| o.source == OutputSource::Stdout);
    Ok(RunSpec {
        argv,
        workdir: workdir.to_owned(),
        env: environment(tool, &view),
        timeout: tool.limits.timeout,
        kill_grace: tool.limits.kill_grace,
        rlimits: ResourceLimits {
            cpu_seconds: tool.limits.cpu_seconds,
            memory_bytes: tool.limits.memory_bytes,
            file_size_bytes: tool.limits.file_size_bytes,
            open_files: Some(tool.limits.open_files),
            processes: Some(tool.limits.processes),
        },
        progress: tool.progress.clone(),
        stdout_path: live_log(workdir, "stdout"),
        stdout_cap: if stdout_is_output {
            tool.limits.max_output_bytes
        } else {
            tool.limits.max_log_bytes
        },
        stderr_path: live_log(workdir, "stderr"),
        stderr_cap: tool.limits.max_log_bytes,
        run_as: attempt.run_as.filter(|_| local),
        attach: attempt.attach.clone(),
        slurm: tool.slurm.clone(),
        container: tool.container.clone(),
        kubernetes: tool.kubernetes.clone(),
    })
}

/// Stores the logs (whatever happened: they are how a user understands a failure) and,
/// when the program succeeded, its file outputs, in one call; then converts the outputs.
async fn publish(
    runtime: &WorkerState,
    attempt: &Attempt<'_>,
    run: &RunOutcome,
    output_paths: &BTreeMap<String, PathBuf>,
    [stdout_path, stderr_path]: [PathBuf; 2],
    measured: &mut Measured,
) -> Result<(AttemptOutcome, Vec<StoredOutput>), String> {
    let Attempt {
        job, tool, workdir, ..
    } = *attempt;
    let (id, number) = (job.id, job.attempt);
    let failure = classify(tool, run);
    let logs = [("stdout", stdout_path), ("stderr", stderr_path)];
    let file_outputs: Vec<(&OutputSpec, &PathBuf)> = match failure {
        Some(_) => Vec::new(),
        None => tool
            .outputs
            .iter()
            .filter_map(|output| Some((output, output_paths.get(&output.name)?)))
            .collect(),
    };
    let mut probed: Vec<PathBuf> = logs.iter().map(|(_, path)| path.clone()).collect();
    probed.extend(file_outputs.iter().map(|(_, path)| (*path).clone()));
    let sizes = file_sizes(workdir, probed).await;
    let (log_sizes, output_sizes) = sizes.split_at(logs.len());
    let mut files: Vec<(String, PathBuf)> = logs
        .iter()
        .zip(log_sizes)
        .filter(|(_, size)| size.is_some())
        .map(|((stream, path), _)| (JobKeys::log(id, number, stream), path.clone()))
        .collect();
    let stored_logs = files.len();
    let failure = failure.or_else(|| check_outputs(tool, run, &file_outputs, output_sizes));
    if failure.is_none() {
        files.extend(
            file_outputs
                .iter()
                .zip(output_sizes)
                .filter(|(_, size)| size.is_some())
                .map(|((output, path), _)| {
                    (JobKeys::output(id, number, &output.name), (*path).clone())
                }),
        );
    }
    let stored = patiently(runtime, || runtime.blobs.put_files(&files))
        .await
        .map_err(|error| blob_failure("store the logs and outputs", &error))?;
    measured.bytes_out += stored[..stored_logs].iter().sum::<u64>();
    match failure {
        Some(failure) => Ok((failure, Vec::new())),
        None => {
            let sizes = files[stored_logs..]
                .iter()
                .zip(&stored[stored_logs..])
                .map(|((key, _), size)| (key.clone(), *size))
                .collect();
            collect_outputs(runtime, job, tool, run, sizes).await
        }
    }
}

/// The size of each path that is a regular file reached from `workdir` without a link,
/// in one blocking call. The program may have replaced an output, or the directory of
/// its logs, with a link to a file only the server may read; its processes are all gone
/// by now, so what is checked here is what is read.
async fn file_sizes(workdir: &Path, paths: Vec<PathBuf>) -> Vec<Option<u64>> {
    let count = paths.len();
    let workdir = workdir.to_owned();
    tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|path| {
                let linked = path
                    .ancestors()
                    .take_while(|ancestor| *ancestor != workdir)
                    .any(|ancestor| {
                        std::fs::symlink_metadata(ancestor)
                            .is_ok_and(|m| m.file_type().is_symlink())
                    });
                std::fs::symlink_metadata(path)
                    .ok()
                    .filter(|metadata| !linked && metadata.is_file())
                    .map(|metadata| metadata.len())
            })
            .collect()
    })
    .await
    .unwrap_or_else(|_| vec![None; count])
}

/// Gives the work directory (except the server's own `.batchgate`) to the program's
/// user, so that a program running as that user can read its inputs and write outputs,
/// and no other job's user can enter it (0700).
async fn hand_over(workdir: &Path, uid: u32) -> std::io::Result<()> {
    let workdir = workdir.to_owned();
    tokio::task::spawn_blocking(move || {
        crate::datadir::set_mode(&workdir, 0o700)?;
        let mut pending = vec![workdir.clone()];
        while let Some(path) = pending.pop() {
            // Nothing here is the program's yet, but links are never followed.
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
            if std::fs::symlink_metadata(&path)?.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    let entry = entry?;
                    if entry.file_name() != crate::workdirs::META || path != workdir {
                        pending.push(entry.path());
                    }
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The program's environment: a fixed base, the tool's allowlist from the server's own
/// environment, then the tool's fixed values. Nothing else.
fn environment(tool: &Tool, workdir: &Path) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("HOME".into(), workdir.to_string_lossy().into_owned());
    env.insert(
        "TMPDIR".into(),
        workdir
            .join(crate::workdirs::TMP)
            .to_string_lossy()
            .into_owned(),
    );
    env.insert("LANG".into(), "C.UTF-8".into());
    for name in &tool.env_allow {
        if let Ok(value) = std::env::var(name) {
            env.insert(name.clone(), value);
        }
    }
    for (name, value) in &tool.env_vars {
        env.insert(name.clone(), value.clone());
    }
    env.into_iter().collect()
}

/// The outcome of a run that did not succeed, or `None` when outputs should be collected.
fn classify(tool: &Tool, run: &RunOutcome) -> Option<AttemptOutcome> {
    let tail = (!run.stderr_tail.is_empty()).then(|| run.stderr_tail.clone());
    let last_line = run
        .stderr_tail
        .lines()
        .last()
        .map(|line| format!(": {line}"))
        .unwrap_or_default();
    let error =
        |code: &str, message: String, exit_code: Option<i32>, signal: Option<i32>| JobError {
            code: code.into(),
            message,
            exit_code,
            signal,
            stderr_tail: tail.clone(),
        };
    match &run.termination {
        Termination::Exited(code) if tool.success_exit_codes.contains(code) => None,
        Termination::Exited(code) => Some(AttemptOutcome::ProgramFailed(error(
            "program-exit-status",
            format!("the program exited with status {code}{last_line}"),
            Some(*code),
            None,
        ))),
        Termination::Signaled(signal) if cpu_limit_reached(tool, run, *signal) => {
            Some(AttemptOutcome::ProgramFailed(error(
                "cpu-time-limit",
                format!(
                    "the program used more CPU time than the tool's limit of {} s (limits.cpu_seconds) and was stopped",
                    tool.limits.cpu_seconds.unwrap_or_default()
                ),
                None,
                Some(*signal),
            )))
        }
        Termination::Signaled(signal) => Some(AttemptOutcome::ProgramFailed(error(
            "program-killed",
            format!(
                "the program was killed by signal {signal}{}",
                signal_reason(tool, *signal)
            ),
            None,
            Some(*signal),
        ))),
        Termination::TimedOut => Some(AttemptOutcome::TimedOut(error(
            "timeout",
            format!(
                "the program ran longer than the tool's limit of {} s and was stopped",
                tool.limits.timeout.as_secs()
            ),
            None,
            None,
        ))),
        Termination::Canceled | Termination::Detached => Some(AttemptOutcome::Canceled),
        Termination::OutOfMemory => Some(AttemptOutcome::ProgramFailed(error(
            "out-of-memory",
            format!(
                "the program used more memory than the tool's limit{} and was killed",
                tool.limits
                    .memory_bytes
                    .map(|bytes| format!(" of {} MB", bytes / (1024 * 1024)))
                    .unwrap_or_default()
            ),
            None,
            None,
        ))),
        Termination::Engine {
            message,
            retry: true,
            ..
        } => Some(AttemptOutcome::Infrastructure(message.clone())),
        Termination::Engine { code, message, .. } => Some(AttemptOutcome::ProgramFailed(
            error(code, message.clone(), None, None),
        )),
        Termination::OutputTooLarge { stream } => {
            let (code, message) = stream_too_large(tool, stream);
            Some(AttemptOutcome::ProgramFailed(error(code, message, None, None)))
        }
        Termination::SpawnFailed { not_found, message } => {
            Some(AttemptOutcome::ProgramFailed(error(
                if *not_found {
                    "program-not-found"
                } else {
                    "program-not-started"
                },
                if *not_found {
                    format!("{message}; the program is not installed on this server (an operator must fix the tool)")
                } else {
                    message.clone()
                },
                None,
                None,
            )))
        }
    }
}

/// What a signal usually means, for the failure message.
fn signal_reason(tool: &Tool, signal: i32) -> &'static str {
    match signal {
        25 => " (file size limit reached)",
        9 if tool.limits.memory_bytes.is_some() => " (killed; it may have run out of memory)",
        9 => " (killed)",
        11 => " (segmentation fault)",
        6 => " (aborted)",
        _ => "",
    }
}

/// The code and message of a stream that outgrew its cap: the output (a stdout output)
/// or a log.
fn stream_too_large(tool: &Tool, stream: &str) -> (&'static str, String) {
    let is_output = stream == "stdout"
        && tool
            .outputs
            .iter()
            .any(|o| o.source == OutputSource::Stdout);
    if is_output {
        (
            "output-too-large",
            format!(
                "the program's output (stdout) is larger than the tool's limit of {} bytes \
                 (limits.max_output_bytes); the program was stopped",
                tool.limits.max_output_bytes
            ),
        )
    } else {
        (
            "log-too-large",
            format!(
                "the program wrote more than the tool's limit of {} bytes to {stream} \
                 (limits.max_log_bytes); the program was stopped",
                tool.limits.max_log_bytes
            ),
        )
    }
}

/// Did the kernel end the program for its CPU time? SIGXCPU at the tool's limit, or the
/// SIGKILL at the hard limit a second later for a program that ignores SIGXCPU.
fn cpu_limit_reached(tool: &Tool, run: &RunOutcome, signal: i32) -> bool {
    let Some(limit) = tool.limits.cpu_seconds else {
        return false;
    };
    match signal {
        24 => true,
        9 => run
            .cpu_time
            .is_some_and(|used| used >= Duration::from_secs(limit)),
        _ => false,
    }
}

/// A run that ended well whose outputs cannot be taken: the program's failure, with the
/// end of its stderr.
fn output_failure(run: &RunOutcome, code: &str, message: String) -> AttemptOutcome {
    AttemptOutcome::ProgramFailed(JobError {
        code: code.into(),
        message,
        exit_code: None,
        signal: None,
        stderr_tail: (!run.stderr_tail.is_empty()).then(|| run.stderr_tail.clone()),
    })
}

/// Why a successful run's outputs cannot be taken (missing, too large), if they cannot.
/// `sizes` holds the size of each file output's path (`None`: not a file).
fn check_outputs(
    tool: &Tool,
    run: &RunOutcome,
    file_outputs: &[(&OutputSpec, &PathBuf)],
    sizes: &[Option<u64>],
) -> Option<AttemptOutcome> {
    let program_failed = |code: &str, message: String| Some(output_failure(run, code, message));
    let limit = tool.limits.max_output_bytes;
    if run.stdout_truncated {
        if let Some(output) = tool
            .outputs
            .iter()
            .find(|o| o.source == OutputSource::Stdout)
        {
            return program_failed(
                "output-too-large",
                format!(
                    "output `{}` (stdout) is larger than the tool's limit of {limit} bytes",
                    output.name
                ),
            );
        }
    }
    for ((output, _), size) in file_outputs.iter().zip(sizes) {
        match size {
            None if !output.required => {}
            None => {
                return program_failed(
                    "missing-output",
                    format!(
                        "the program ended successfully but did not write its output `{}` ({})",
                        output.name,
                        output.path.as_deref().unwrap_or_default()
                    ),
                )
            }
            Some(size) if *size > limit => {
                return program_failed(
                    "output-too-large",
                    format!(
                        "output `{}` is {size} bytes, over the tool's limit of {limit}",
                        output.name
                    ),
                )
            }
            Some(_) => {}
        }
    }
    None
}

/// Takes the outputs of a successful run: file outputs are stored already (`stored`:
/// blob key → size), a stdout output is its log blob under its own key; outputs marked
/// `result` are parsed into the job's JSON result.
async fn collect_outputs(
    runtime: &WorkerState,
    job: &Job,
    tool: &Tool,
    run: &RunOutcome,
    stored: BTreeMap<String, u64>,
) -> Result<(AttemptOutcome, Vec<StoredOutput>), String> {
    let id = job.id;
    let attempt = job.attempt;
    let mut taken = Vec::new();
    let mut result = Map::new();
    for output in &tool.outputs {
        let key = JobKeys::output(id, attempt, &output.name);
        let size = match output.source {
            OutputSource::Stdout => {
                let log = JobKeys::log(id, attempt, "stdout");
                patiently(runtime, || runtime.blobs.copy(&log, &key))
                    .await
                    .map_err(|error| blob_failure("store output", &error))?
            }
            // An optional output the program did not write.
            OutputSource::File => match stored.get(&key) {
                Some(size) => *size,
                None => continue,
            },
        };
        if output.result {
            let bytes = patiently(runtime, || runtime.blobs.read(&key))
                .await
                .map_err(|error| blob_failure("read output", &error))?;
            let (format, columns, header) = (output.format, output.columns.clone(), output.header);
            let parsed = tokio::task::spawn_blocking(move || {
                outputs::to_json(format, &columns, header, &bytes[..])
            })
            .await
            .map_err(|error| error.to_string())?;
            match parsed {
                Ok(value) => {
                    result.insert(output.name.clone(), value);
                }
                Err(error) => {
                    let message = format!(
                        "output `{}` is not valid {}: {}",
                        output.name,
                        output.format.as_str(),
                        error.0
                    );
                    return Ok((
                        output_failure(run, "output-unparseable", message),
                        Vec::new(),
                    ));
                }
            }
        }
        taken.push(StoredOutput {
            name: output.name.clone(),
            media_type: output.media_type.clone(),
            size,
        });
    }
    let body = serde_json::to_vec(&Value::Object(result)).expect("JSON serializes");
    let key = JobKeys::result(id, attempt);
    patiently(runtime, || runtime.blobs.put_bytes(&key, &body))
        .await
        .map_err(|error| blob_failure("store the result", &error))?;
    Ok((AttemptOutcome::Succeeded, taken))
}

/// A fraction in [0, 1) for retry jitter, from the clock's nanoseconds.
fn rand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}
