//! `SlurmExecutor`: each attempt is one Slurm batch job.
//!
//! The attempt's work directory is made under `[slurm] work_dir`, a path every compute
//! node shares. `sbatch --parsable` submits a fixed script, `exec "$@"`, with the program's
//! argv as the script's arguments: request data is never shell text. The program's
//! environment is exactly the worker's allowlist (`sbatch` runs with only that environment
//! and `--export=ALL`); resources come from the tool (`--time` from the timeout, `--mem`
//! from the memory limit, CPUs, partition, account, QOS). One `squeue` per poll interval
//! follows every job a worker watches; how a job ended comes from `scontrol`, or `sacct`
//! once the controller has forgotten it. The Slurm job id is recorded with the attempt, so
//! a worker taking the job over (after a restart, a crash or a hand-back) re-attaches to
//! the running batch job instead of submitting it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::detached::{attempt_label, job_ended, parse_label, still_wanted, Reference};
use super::{Executor, ExecutorError, JobLookup, RunControl, RunOutcome, RunSpec, Termination};
use crate::config::SlurmSettings;
use crate::jobs::Progress;
use crate::tools::ProgressSpec;

/// This executor's name in the references it records.
const EXECUTOR: &str = "slurm";
/// The batch script: it runs its arguments. Nothing in it comes from a request.
const SCRIPT: &str =
    "#!/bin/sh\n# Written by batchgate: runs the program given as arguments.\nexec \"$@\"\n";
/// A Slurm client command that has not answered by then has failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this much of a log is read per poll for progress lines.
const READ_PER_POLL: u64 = 1 << 20;

pub struct SlurmExecutor {
    settings: SlurmSettings,
    /// `batchgate-limits` on the shared path (the compute nodes run it).
    limits: Option<PathBuf>,
    queue: Queue,
}

impl SlurmExecutor {
    /// Checks that the Slurm client commands answer and the shared directory is usable.
    pub async fn open(settings: SlurmSettings) -> Result<SlurmExecutor, String> {
        std::fs::create_dir_all(&settings.work_dir).map_err(|error| {
            format!(
                "[slurm] work_dir {}: cannot create it: {error}",
                settings.work_dir.display()
            )
        })?;
        slurm_command("sbatch", &["--version".to_owned()], &[])
            .await
            .map_err(|error| {
                format!("[slurm]: the Slurm client commands cannot be run here: {error}")
            })?;
        let limits = crate::embedded::install(
            &settings.work_dir.join(crate::workdirs::META),
            "batchgate-limits",
            crate::embedded::LIMITS,
        )
        .inspect_err(|error| {
            tracing::warn!(%error, "cannot install batchgate-limits on the shared path; Slurm jobs run without rlimits");
        })
        .ok();
        let interval = Duration::from_secs_f64(settings.poll_interval_seconds);
        Ok(SlurmExecutor {
            queue: Queue {
                job_name: settings.job_name.clone(),
                interval,
                snapshot: tokio::sync::Mutex::new(Snapshot::default()),
            },
            settings,
            limits,
        })
    }

    fn poll_interval(&self) -> Duration {
        self.queue.interval
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs_f64(self.settings.sweep_interval_seconds)
    }

    /// `sbatch`: the job's id, or how the submission failed.
    async fn submit(&self, spec: &RunSpec) -> Result<String, Submission> {
        let meta = crate::workdirs::meta_dir(&spec.workdir);
        let script = meta.join("job.sh");
        tokio::fs::write(&script, SCRIPT)
            .await
            .map_err(|error| Submission::Transient(format!("write the batch script: {error}")))?;
        let resources = &spec.slurm;
        let text = |path: &Path| path.to_string_lossy().into_owned();
        let minutes = (spec.timeout + spec.kill_grace)
            .as_secs()
            .div_ceil(60)
            .max(1);
        let mut args = vec![
            "--parsable".to_owned(),
            format!("--job-name={}", self.settings.job_name),
            format!("--comment=batchgate {}", attempt_label(&spec.workdir)),
            format!("--chdir={}", text(&spec.workdir)),
            format!("--output={}", text(&spec.stdout_path)),
            format!("--error={}", text(&spec.stderr_path)),
            // batchgate owns retries: a failed node is reported, not silently requeued.
            "--no-requeue".to_owned(),
            // The environment is exactly `sbatch`'s own, which is the allowlist below.
            "--export=ALL".to_owned(),
            "--nodes=1".to_owned(),
            "--ntasks=1".to_owned(),
            format!("--cpus-per-task={}", resources.cpus.unwrap_or(1)),
            format!("--time={minutes}"),
        ];
        if let Some(bytes) = spec.rlimits.memory_bytes {
            args.push(format!("--mem={}M", bytes.div_ceil(1024 * 1024)));
        }
        let choices = [
            ("partition", &resources.partition, &self.settings.partition),
            ("account", &resources.account, &self.settings.account),
            ("qos", &resources.qos, &self.settings.qos),
            ("constraint", &resources.constraint, &None),
        ];
        for (option, tool_value, default) in choices {
            if let Some(value) = tool_value.as_ref().or(default.as_ref()) {
                args.push(format!("--{option}={value}"));
            }
        }
        args.push(text(&script));
        args.extend(self.program_argv(spec));
        let output = slurm_command("sbatch", &args, &spec.env)
            .await
            .map_err(|error| {
                if is_transient(&error) {
                    Submission::Transient(error)
                } else {
                    Submission::Refused(error)
                }
            })?;
        // `--parsable`: `<id>` or `<id>;<cluster>`.
        let id = output
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
            return Err(Submission::Transient(format!(
                "sbatch printed no job id: {output:?}"
            )));
        }
        Ok(id)
    }

    /// The program's argv, behind `batchgate-limits` when there are limits to set. Memory
    /// is not among them: `--mem` has Slurm's cgroup hold it.
    fn program_argv(&self, spec: &RunSpec) -> Vec<String> {
        let limits = &spec.rlimits;
        let options: Vec<String> = [
            ("core", Some(0)),
            ("cpu", limits.cpu_seconds),
            ("fsize", limits.file_size_bytes),
            ("nofile", limits.open_files),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| format!("{name}={value}")))
        .collect();
        match &self.limits {
            Some(wrapper) => {
                let mut argv = vec![wrapper.to_string_lossy().into_owned()];
                argv.extend(options);
                argv.push("--".into());
                argv.extend(spec.argv.iter().cloned());
                argv
            }
            None => spec.argv.clone(),
        }
    }

    /// Follows job `id` to its end.
    async fn follow(
        &self,
        id: &str,
        spec: &RunSpec,
        control: &RunControl,
        logs: &mut Logs,
    ) -> (Termination, Option<Instant>) {
        let since = Instant::now();
        let mut running_since: Option<Instant> = None;
        let mut ticker = tokio::time::interval(self.poll_interval());
        let mut warned = false;
        loop {
            tokio::select! {
                biased;
                () = control.detach.cancelled() => return (Termination::Detached, running_since),
                () = control.cancel.cancelled() => {
                    self.stop(id, spec.kill_grace).await;
                    return (Termination::Canceled, running_since);
                }
                _ = ticker.tick() => {}
            }
            logs.poll(&control.progress).await;
            if let Some(stream) = logs.over_cap(spec) {
                self.stop(id, spec.kill_grace).await;
                return (Termination::OutputTooLarge { stream }, running_since);
            }
            if running_since.is_some_and(|start| start.elapsed() >= spec.timeout) {
                self.stop(id, spec.kill_grace).await;
                return (Termination::TimedOut, running_since);
            }
            match self.queue.state(id, since).await {
                Ok(Some(state)) if !is_terminal(&state) => {
                    if (state == "RUNNING" || state == "COMPLETING") && running_since.is_none() {
                        running_since = Some(Instant::now());
                    }
                }
                // Ended, or already forgotten by the controller: ask how it ended.
                Ok(_) => return (self.ended(id).await, running_since),
                Err(error) => {
                    // The job runs on in Slurm; a controller that does not answer now may
                    // later.
                    if !warned {
                        tracing::warn!(slurm_job = id, %error, "cannot read the Slurm queue");
                        warned = true;
                    }
                }
            }
        }
    }

    /// How job `id` ended, mapped to a termination.
    async fn ended(&self, id: &str) -> Termination {
        let Some(record) = end_record(id).await else {
            return Termination::Engine {
                code: "engine-lost",
                message: format!("Slurm no longer knows batch job {id}; it is run again"),
                retry: true,
            };
        };
        termination_of(id, &record)
    }

    /// `scancel`, then waits (bounded) for the job to end: Slurm sends TERM, waits its
    /// `KillWait`, then KILL.
    async fn stop(&self, id: &str, grace: Duration) {
        if let Err(error) = slurm_command("scancel", &[id.to_owned()], &[]).await {
            tracing::warn!(slurm_job = id, %error, "scancel failed");
            return;
        }
        let since = Instant::now();
        let deadline = since + grace + Duration::from_secs(35);
        while Instant::now() < deadline {
            tokio::time::sleep(self.poll_interval()).await;
            match self.queue.state(id, since).await {
                Ok(Some(state)) if !is_terminal(&state) => continue,
                Ok(_) => return,
                Err(_) => continue,
            }
        }
        tracing::warn!(slurm_job = id, "the canceled Slurm job has not ended yet");
    }

    fn reference_of(&self, reference: &str) -> Option<Reference> {
        Reference::parse(reference, EXECUTOR, &self.settings.work_dir, |id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        })
    }
}

enum Submission {
    /// The controller did not answer: the platform's fault, retried.
    Transient(String),
    /// Slurm refused the job (an unknown partition, more memory than any node has): the
    /// tool's configuration must change.
    Refused(String),
}

fn is_transient(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "unable to contact",
        "timed out",
        "socket",
        "connection refused",
        "zero bytes",
        "try again",
        "temporarily",
        "cannot run",
    ]
    .iter()
    .any(|needle| error.contains(needle))
}

#[async_trait]
impl Executor for SlurmExecutor {
    async fn run(&self, spec: RunSpec, control: RunControl) -> Result<RunOutcome, ExecutorError> {
        let started = Instant::now();
        let outcome = RunOutcome::bare;
        let id = match spec.attach.as_deref().and_then(|r| self.reference_of(r)) {
            Some(reference) => {
                tracing::info!(slurm_job = %reference.id, "re-attached to a running Slurm job");
                reference.id
            }
            None => match self.submit(&spec).await {
                Ok(id) => {
                    Reference::record(&control, EXECUTOR, &id, &spec.workdir).await;
                    tracing::info!(slurm_job = %id, "submitted to Slurm");
                    id
                }
                Err(Submission::Transient(error)) => {
                    return Err(ExecutorError::Engine(format!("sbatch: {error}")))
                }
                Err(Submission::Refused(error)) => {
                    let message = format!("Slurm refused the batch job: {error}");
                    return Ok(outcome(
                        Termination::SpawnFailed {
                            not_found: false,
                            message,
                        },
                        started.elapsed(),
                    ));
                }
            },
        };
        let mut logs = Logs::new(&spec);
        let (termination, running_since) = self.follow(&id, &spec, &control, &mut logs).await;
        let wall_time = running_since.unwrap_or(started).elapsed();
        if termination == Termination::Detached {
            return Ok(outcome(termination, wall_time));
        }
        logs.poll(&control.progress).await;
        let (stdout_truncated, stderr_tail) = logs.finish(&spec).await;
        Ok(RunOutcome {
            stderr_tail,
            stdout_truncated,
            ..outcome(termination, wall_time)
        })
    }

    fn work_root(&self) -> &Path {
        &self.settings.work_dir
    }

    async fn locate(&self, reference: &str) -> Option<PathBuf> {
        let reference = self.reference_of(reference)?;
        if !tokio::fs::try_exists(&reference.workdir)
            .await
            .unwrap_or(false)
        {
            return None;
        }
        let known = match self.queue.state(&reference.id, Instant::now()).await {
            Ok(Some(_)) => true,
            // Ended and forgotten by the controller, or the controller is not answering:
            // the accounting record says whether it ran.
            Ok(None) | Err(_) => end_record(&reference.id).await.is_some(),
        };
        known.then_some(reference.workdir)
    }

    async fn sweep(&self, jobs: &dyn JobLookup) -> usize {
        let queued = match self.queue.snapshot(Instant::now()).await {
            Ok(queued) => queued,
            Err(error) => {
                tracing::warn!(%error, "cannot read the Slurm queue to clean up");
                return 0;
            }
        };
        let mut swept = 0;
        let mut busy_dirs = Vec::new();
        for (slurm_job, entry) in &queued {
            let Some((job_id, attempt)) = entry
                .comment
                .strip_prefix("batchgate ")
                .and_then(parse_label)
            else {
                continue;
            };
            if is_terminal(&entry.state) {
                continue;
            }
            if still_wanted(jobs, job_id, attempt, EXECUTOR, slurm_job).await {
                busy_dirs.push(format!("{job_id}-{attempt}"));
            } else {
                tracing::info!(slurm_job, job_id = %job_id, "canceling a Slurm job whose batchgate job has ended");
                if slurm_command("scancel", std::slice::from_ref(slurm_job), &[])
                    .await
                    .is_ok()
                {
                    swept += 1;
                }
            }
        }
        let Ok(mut entries) = tokio::fs::read_dir(&self.settings.work_dir).await else {
            return swept;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((job_id, _)) = parse_label(&name) else {
                continue;
            };
            if busy_dirs.contains(&name) {
                continue;
            }
            if job_ended(jobs, job_id).await
                && tokio::fs::remove_dir_all(entry.path()).await.is_ok()
            {
                tracing::info!(dir = %name, "removed the work directory of an ended job");
                swept += 1;
            }
        }
        swept
    }
}

/// States after which a Slurm job never runs again (`--no-requeue`).
fn is_terminal(state: &str) -> bool {
    matches!(
        state.split_whitespace().next().unwrap_or_default(),
        "COMPLETED"
            | "FAILED"
            | "TIMEOUT"
            | "OUT_OF_MEMORY"
            | "CANCELLED"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "REVOKED"
            | "SPECIAL_EXIT"
    )
}

/// How a job ended: its state and `ExitCode` (`<status>:<signal>`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct EndRecord {
    state: String,
    exit_status: i32,
    signal: i32,
}

/// Maps an ended Slurm job to a termination.
fn termination_of(id: &str, record: &EndRecord) -> Termination {
    let state = record.state.split_whitespace().next().unwrap_or_default();
    match state {
        "COMPLETED" | "FAILED" if record.signal != 0 => Termination::Signaled(record.signal),
        "COMPLETED" | "FAILED" => Termination::Exited(record.exit_status),
        "TIMEOUT" => Termination::TimedOut,
        "OUT_OF_MEMORY" => Termination::OutOfMemory,
        "NODE_FAIL" | "BOOT_FAIL" => Termination::Engine {
            code: "node-failure",
            message: format!("the node running Slurm job {id} failed ({state}); the job is run again"),
            retry: true,
        },
        "PREEMPTED" => Termination::Engine {
            code: "preempted",
            message: format!("Slurm preempted job {id} for a job of higher priority; the job is run again"),
            retry: true,
        },
        "CANCELLED" => Termination::Engine {
            code: "scheduler-canceled",
            message: format!(
                "Slurm job {id} was canceled outside batchgate (scancel by an operator or an administrator)"
            ),
            retry: false,
        },
        "DEADLINE" => Termination::Engine {
            code: "scheduler-deadline",
            message: format!("Slurm job {id} passed its deadline before it could run"),
            retry: false,
        },
        other => Termination::Engine {
            code: "engine-failure",
            message: format!("Slurm ended job {id} in state {other}; the job is run again"),
            retry: true,
        },
    }
}

/// The job's end from `scontrol` (while the controller remembers it, `MinJobAge`), else
/// from `sacct` (the accounting database, or `-c`: the job completion log).
async fn end_record(id: &str) -> Option<EndRecord> {
    let show = ["show", "job", "-o", id].map(str::to_owned);
    if let Ok(text) = slurm_command("scontrol", &show, &[]).await {
        if let Some(record) = parse_scontrol(&text) {
            return Some(record);
        }
    }
    let fields = ["-n", "-P", "-X", "-j", id, "-o", "State,ExitCode"].map(str::to_owned);
    for extra in [None, Some("-c")] {
        let mut args: Vec<String> = extra.into_iter().map(str::to_owned).collect();
        args.extend(fields.iter().cloned());
        if let Ok(text) = slurm_command("sacct", &args, &[]).await {
            if let Some(record) = parse_sacct(&text) {
                return Some(record);
            }
        }
    }
    None
}

/// `scontrol show job -o`: one line of `Key=Value` words. `JobState` and `ExitCode` come
/// before the fields that hold request data (`Command`), so the first of each is Slurm's.
fn parse_scontrol(text: &str) -> Option<EndRecord> {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(str::to_owned)
    };
    let state = field("JobState=")?;
    if !is_terminal(&state) {
        return None;
    }
    let (exit_status, signal) = parse_exit(&field("ExitCode=")?)?;
    Some(EndRecord {
        state,
        exit_status,
        signal,
    })
}

/// `sacct -n -P -X -o State,ExitCode`: `FAILED|3:0` (`CANCELLED by 0|0:15`).
fn parse_sacct(text: &str) -> Option<EndRecord> {
    let line = text.lines().rev().find(|line| !line.trim().is_empty())?;
    let (state, exit) = line.split_once('|')?;
    if !is_terminal(state) {
        return None;
    }
    let (exit_status, signal) = parse_exit(exit.trim())?;
    Some(EndRecord {
        state: state.trim().to_owned(),
        exit_status,
        signal,
    })
}

fn parse_exit(text: &str) -> Option<(i32, i32)> {
    let (status, signal) = text.split_once(':')?;
    Some((status.parse().ok()?, signal.parse().ok()?))
}

/// One `squeue` for every job this worker follows, refreshed at most once per interval.
struct Queue {
    job_name: String,
    interval: Duration,
    snapshot: tokio::sync::Mutex<Snapshot>,
}

#[derive(Default)]
struct Snapshot {
    read_at: Option<Instant>,
    jobs: HashMap<String, QueueEntry>,
}

#[derive(Debug, Clone)]
struct QueueEntry {
    state: String,
    comment: String,
}

impl Queue {
    /// The state of job `id` in a reading of the queue taken after `since` (`None`: not
    /// in the queue).
    async fn state(&self, id: &str, since: Instant) -> Result<Option<String>, String> {
        let jobs = self.snapshot(since).await?;
        Ok(jobs.get(id).map(|entry| entry.state.clone()))
    }

    async fn snapshot(&self, since: Instant) -> Result<HashMap<String, QueueEntry>, String> {
        let mut snapshot = self.snapshot.lock().await;
        let fresh = snapshot
            .read_at
            .is_some_and(|at| at >= since && at.elapsed() < self.interval);
        if !fresh {
            let args =
                ["-h", "-t", "all", "-n", &self.job_name, "-o", "%i|%T|%k"].map(str::to_owned);
            let read_at = Instant::now();
            let text = slurm_command("squeue", &args, &[]).await?;
            snapshot.jobs = text
                .lines()
                .filter_map(|line| {
                    let mut fields = line.splitn(3, '|');
                    let id = fields.next()?.trim().to_owned();
                    let state = fields.next()?.trim().to_owned();
                    let comment = fields.next().unwrap_or_default().trim().to_owned();
                    Some((id, QueueEntry { state, comment }))
                })
                .collect();
            snapshot.read_at = Some(read_at);
        }
        Ok(snapshot.jobs.clone())
    }
}

/// Runs a Slurm client command (a fixed argv, no shell) with `env` as its whole
/// environment, plus what the client itself needs to find its cluster. Returns stdout.
async fn slurm_command(
    program: &str,
    args: &[String],
    env: &[(String, String)],
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if !env.iter().any(|(name, _)| name == "PATH") {
        command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    }
    for name in ["SLURM_CONF", "MUNGE_SOCKET"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("{program} timed out"))?
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{program}: {}", stderr.trim()))
    }
}

/// The program's stdout and stderr, which Slurm writes to the shared work directory:
/// read as they grow for progress lines, capped and tailed at the end.
struct Logs {
    streams: Vec<Follower>,
}

struct Follower {
    path: PathBuf,
    offset: u64,
    line: Vec<u8>,
    progress: Option<ProgressSpec>,
}

impl Logs {
    fn new(spec: &RunSpec) -> Logs {
        use crate::tools::decl::ProgressStream;
        let progress_on = |stream: ProgressStream| {
            spec.progress
                .clone()
                .filter(|p| p.stream == ProgressStream::Both || p.stream == stream)
        };
        Logs {
            streams: vec![
                Follower::new(&spec.stdout_path, progress_on(ProgressStream::Stdout)),
                Follower::new(&spec.stderr_path, progress_on(ProgressStream::Stderr)),
            ],
        }
    }

    /// The stream that grew past its cap, if one did.
    fn over_cap(&self, spec: &RunSpec) -> Option<&'static str> {
        let caps = [("stdout", spec.stdout_cap), ("stderr", spec.stderr_cap)];
        self.streams
            .iter()
            .zip(caps)
            .find(|(stream, (_, cap))| stream.offset > *cap)
            .map(|(_, (name, _))| name)
    }

    async fn poll(&mut self, progress: &watch::Sender<Option<Progress>>) {
        for stream in &mut self.streams {
            stream.poll(progress).await;
        }
    }

    /// Cuts each log to its cap; returns (stdout was cut, the last lines of stderr).
    async fn finish(&self, spec: &RunSpec) -> (bool, String) {
        let tail = read_tail(&spec.stderr_path, super::process::STDERR_TAIL_BYTES as u64)
            .await
            .map(|tail| super::process::last_lines(&tail, 20))
            .unwrap_or_default();
        let stdout_truncated = cap(&spec.stdout_path, spec.stdout_cap).await;
        cap(&spec.stderr_path, spec.stderr_cap).await;
        (stdout_truncated, tail)
    }
}

impl Follower {
    fn new(path: &Path, progress: Option<ProgressSpec>) -> Follower {
        Follower {
            path: path.to_owned(),
            offset: 0,
            line: Vec::new(),
            progress,
        }
    }

    async fn poll(&mut self, sender: &watch::Sender<Option<Progress>>) {
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
            return;
        };
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let Some(spec) = &self.progress else {
            self.offset = size;
            return;
        };
        if size <= self.offset
            || file
                .seek(std::io::SeekFrom::Start(self.offset))
                .await
                .is_err()
        {
            return;
        }
        let mut chunk = Vec::new();
        let want = (size - self.offset).min(READ_PER_POLL);
        if (&mut file)
            .take(want)
            .read_to_end(&mut chunk)
            .await
            .is_err()
        {
            return;
        }
        self.offset += chunk.len() as u64;
        for &byte in &chunk {
            if byte == b'\n' {
                if let Some(parsed) =
                    super::process::parse_progress(spec, &String::from_utf8_lossy(&self.line))
                {
                    sender.send_replace(Some(parsed));
                }
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(byte);
            }
        }
    }
}

async fn read_tail(path: &Path, bytes: u64) -> Option<String> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let size = file.metadata().await.ok()?.len();
    file.seek(std::io::SeekFrom::Start(size.saturating_sub(bytes)))
        .await
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).await.ok()?;
    Some(String::from_utf8_lossy(&tail).into_owned())
}

/// Truncates the file to `limit` bytes; true if it was longer.
async fn cap(path: &Path, limit: u64) -> bool {
    let Ok(file) = tokio::fs::OpenOptions::new().write(true).open(path).await else {
        return false;
    };
    let longer = file.metadata().await.is_ok_and(|m| m.len() > limit);
    if longer {
        let _ = file.set_len(limit).await;
    }
    longer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slurm_end_maps_to_a_termination() {
        let record = |state: &str, exit: &str| {
            let (exit_status, signal) = parse_exit(exit).unwrap();
            termination_of(
                "7",
                &EndRecord {
                    state: state.into(),
                    exit_status,
                    signal,
                },
            )
        };
        assert_eq!(record("COMPLETED", "0:0"), Termination::Exited(0));
        assert_eq!(record("FAILED", "3:0"), Termination::Exited(3));
        assert_eq!(record("FAILED", "0:9"), Termination::Signaled(9));
        assert_eq!(record("TIMEOUT", "0:15"), Termination::TimedOut);
        assert_eq!(record("OUT_OF_MEMORY", "0:125"), Termination::OutOfMemory);
        for (state, code, retry) in [
            ("NODE_FAIL", "node-failure", true),
            ("BOOT_FAIL", "node-failure", true),
            ("PREEMPTED", "preempted", true),
            ("CANCELLED by 0", "scheduler-canceled", false),
            ("DEADLINE", "scheduler-deadline", false),
            ("REVOKED", "engine-failure", true),
        ] {
            match record(state, "0:0") {
                Termination::Engine {
                    code: got,
                    retry: again,
                    ..
                } => assert_eq!((got, again), (code, retry), "{state}"),
                other => panic!("{state}: {other:?}"),
            }
        }
    }

    #[test]
    fn end_records_are_read_from_scontrol_and_sacct() {
        let line = "JobId=4 JobName=batchgate UserId=root(0) JobState=FAILED Reason=NonZeroExitCode \
                    Dependency=(null) ExitCode=3:0 RunTime=00:00:00 Command=/w/job.sh prog JobState=COMPLETED ExitCode=0:0";
        assert_eq!(
            parse_scontrol(line),
            Some(EndRecord {
                state: "FAILED".into(),
                exit_status: 3,
                signal: 0
            }),
            "request data after Command= cannot pass for Slurm's fields"
        );
        assert_eq!(
            parse_scontrol("JobId=5 JobState=RUNNING ExitCode=0:0"),
            None
        );
        assert_eq!(
            parse_sacct("CANCELLED by 0|0:15\n"),
            Some(EndRecord {
                state: "CANCELLED by 0".into(),
                exit_status: 0,
                signal: 15
            })
        );
        assert_eq!(parse_sacct("RUNNING|0:0\n"), None);
        assert_eq!(parse_sacct(""), None);
    }
}
