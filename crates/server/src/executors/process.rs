//! The one place that spawns programs: argv only, a cleared environment, its own process
//! group, rlimits, capped capture of stdout/stderr, progress parsing, timeout and cancel
//! that kill the whole group.

use std::collections::VecDeque;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Rlimit, Signal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{ExecutorError, ResourceLimits, RunOutcome, RunSpec, Termination};
use crate::jobs::Progress;
use crate::tools::decl::ProgressStream;
use crate::tools::ProgressSpec;

/// Bytes of stderr kept for the error message of a failed job.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;
/// A progress line longer than this is not parsed.
const MAX_LINE: usize = 4096;
/// Kills the process groups that attempts of a previous, crashed server left running in
/// `work_root`: every process whose working directory is inside it (a program starts in
/// its work directory and leads its own process group) takes its group with it. Read from
/// `/proc` once at start, so that a running attempt writes no file for it.
pub fn reap_orphans(work_root: &std::path::Path) -> usize {
    let own_group = rustix::process::getpgrp();
    let mut groups = std::collections::BTreeSet::new();
    for (pid, directory) in processes() {
        let cwd = std::fs::read_link(directory.join("cwd"));
        if !cwd.is_ok_and(|cwd| cwd.starts_with(work_root) && cwd != work_root) {
            continue;
        }
        if let Ok(group) = rustix::process::getpgid(Some(pid)) {
            if group != own_group {
                groups.insert(group.as_raw_nonzero());
            }
        }
    }
    for group in &groups {
        if let Some(group) = Pid::from_raw(group.get()) {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
    }
    groups.len()
}

/// A program that passes the cap of a captured stream is stopped: each stream's token is
/// cancelled when it does.
#[derive(Debug, Default, Clone)]
pub struct Overflow {
    pub stdout: CancellationToken,
    pub stderr: CancellationToken,
}

impl Overflow {
    /// Waits until a stream passes its cap; its name.
    pub async fn stream(&self) -> &'static str {
        tokio::select! {
            () = self.stdout.cancelled() => "stdout",
            () = self.stderr.cancelled() => "stderr",
        }
    }
}

/// How long past the grace period a contained program's wrapper may take to end
/// everything before the server kills its process group itself.
const WRAPPER_MARGIN: Duration = Duration::from_secs(2);

pub async fn run(
    spec: RunSpec,
    limits: Option<&std::path::Path>,
    progress: watch::Sender<Option<Progress>>,
    cancel: CancellationToken,
) -> Result<RunOutcome, ExecutorError> {
    let started = Instant::now();
    let mut spec = spec;
    match spec.run_as {
        // RLIMIT_NPROC counts every process of the user: the server's own user would be
        // capped, not the program.
        None => spec.rlimits.processes = None,
        // Whatever an earlier holder of this uid left running goes first.
        Some(uid) => kill_user(limits, uid).await,
    }
    // The capture files are the server's, opened before the program exists: a program
    // cannot swap the directory under them for a link.
    let stdout_file = tokio::fs::File::create(&spec.stdout_path).await?;
    let stderr_file = tokio::fs::File::create(&spec.stderr_path).await?;
    let spawned = match spawn(&spec, limits).await {
        Ok(spawned) => spawned,
        Err(error) => {
            let termination = spawn_failure(&spec.argv[0], &error);
            return Ok(RunOutcome::bare(termination, started.elapsed()));
        }
    };
    let Spawned {
        group,
        mut exit,
        stdout,
        stderr,
        limits_applied_at_exec,
        contained,
    } = spawned;
    let guard = GroupGuard {
        group: Some(group),
        uid: spec.run_as,
        limits: limits.map(std::path::Path::to_owned),
    };
    if !limits_applied_at_exec {
        apply_rlimits(group, &spec.rlimits);
    }

    let peak_memory = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_peak_memory(group, peak_memory.clone()));
    let overflow = Overflow::default();
    let [stdout_task, stderr_task] = start_captures(
        &spec,
        [Box::new(stdout), Box::new(stderr)],
        [stdout_file, stderr_file],
        progress,
        &overflow,
    );

    // A contained program's wrapper ends everything itself after the grace period.
    let grace = if contained {
        spec.kill_grace + WRAPPER_MARGIN
    } else {
        spec.kill_grace
    };
    let (termination, usage) = tokio::select! {
        ended = &mut exit => {
            let usage = ended.map_err(|_| std::io::Error::other("the waiting thread ended"))??;
            (termination_of(usage.status), Some(usage))
        }
        () = tokio::time::sleep(spec.timeout) => {
            (Termination::TimedOut, stop_group(group, &mut exit, grace).await)
        }
        () = cancel.cancelled() => {
            (Termination::Canceled, stop_group(group, &mut exit, grace).await)
        }
        stream = overflow.stream() => {
            // A program that writes without end is stopped, not drained until its timeout.
            (Termination::OutputTooLarge { stream }, stop_group(group, &mut exit, grace).await)
        }
    };
    // The leader is gone; whatever it left behind in its group goes too, so no process
    // of the attempt outlives it (and the capture pipes close). A program with a uid of
    // its own loses every process of that uid, wherever it moved.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .map_err(std::io::Error::other)?;
    sampler.abort();
    let sampled_peak = Some(peak_memory.load(Ordering::Relaxed)).filter(|&bytes| bytes > 0);
    let (stdout_truncated, _) = join_capture(stdout_task).await;
    let (_, stderr_tail) = join_capture(stderr_task).await;
    Ok(RunOutcome {
        termination,
        stderr_tail,
        stdout_truncated,
        wall_time: started.elapsed(),
        cpu_time: usage
            .as_ref()
            .map(|usage| usage.rusage.utime + usage.rusage.stime),
        peak_memory_bytes: sampled_peak,
    })
}

/// Copies the program's stdout and stderr into their capture files (up to their caps,
/// reading progress lines) until the pipes close; each task gives whether it truncated
/// and the stream's tail.
fn start_captures(
    spec: &RunSpec,
    pipes: [Box<dyn AsyncRead + Send + Unpin>; 2],
    files: [tokio::fs::File; 2],
    progress: watch::Sender<Option<Progress>>,
    overflow: &Overflow,
) -> [tokio::task::JoinHandle<(bool, String)>; 2] {
    let [stdout, stderr] = pipes;
    let [stdout_file, stderr_file] = files;
    let streams = [
        (
            ProgressStream::Stdout,
            stdout,
            stdout_file,
            spec.stdout_cap,
            false,
            &overflow.stdout,
        ),
        (
            ProgressStream::Stderr,
            stderr,
            stderr_file,
            spec.stderr_cap,
            true,
            &overflow.stderr,
        ),
    ];
    streams.map(|(stream, pipe, file, cap, keep_tail, overflowed)| {
        let progress_spec = spec
            .progress
            .clone()
            .filter(|p| p.stream == ProgressStream::Both || p.stream == stream);
        tokio::spawn(capture(
            pipe,
            file,
            cap,
            progress_spec,
            progress.clone(),
            keep_tail,
            overflowed.clone(),
        ))
    })
}

/// Why a program could not start, named by its file name only (a path of this machine is
/// not the client's).
fn spawn_failure(program: &str, error: &std::io::Error) -> Termination {
    let name = std::path::Path::new(program).file_name().map_or_else(
        || program.to_owned(),
        |name| name.to_string_lossy().into_owned(),
    );
    let reason = match error.kind() {
        std::io::ErrorKind::NotFound => "no such program".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => error.kind().to_string(),
    };
    Termination::SpawnFailed {
        not_found: error.kind() == std::io::ErrorKind::NotFound,
        message: format!("cannot start `{name}`: {reason}"),
    }
}

/// How an exit status reads.
fn termination_of(status: std::process::ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited(code),
        (None, Some(signal)) => Termination::Signaled(signal),
        (None, None) => Termination::Exited(-1),
    }
}

/// Ends every process of `uid` (a job's own user): `batchgate-limits kill-all` run as
/// that user sends SIGKILL to all of them in one `kill(-1)`, which a fork bomb cannot
/// outrun; repeated until `/proc` shows none alive. Without the wrapper, each process
/// found in `/proc` is killed in turn. Then what the uid left in `/tmp`, `/var/tmp` and
/// `/dev/shm` is removed.
pub async fn kill_user(limits: Option<&std::path::Path>, uid: u32) {
    let limits = limits.map(std::path::Path::to_owned);
    let _ = tokio::task::spawn_blocking(move || kill_user_now(limits.as_deref(), uid)).await;
}

/// `kill_user`, blocking the calling thread (a few milliseconds), then what the uid
/// left outside its work directory (`remove_files_of`, `remove_ipc_of`).
fn kill_user_now(limits: Option<&std::path::Path>, uid: u32) {
    kill_processes_of(limits, uid);
    remove_files_of(uid);
    remove_ipc_of(uid);
}

/// Directories every user may write to: what a job's uid leaves there would be read by
/// the next job given the same uid.
const SHARED_TEMPORARY: [&str; 5] = ["/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock"];

/// Removes the System V shared memory segments, message queues and semaphore sets `uid`
/// owns (they outlive their processes, and the next job given the uid could attach to
/// them), with util-linux `ipcrm` (fixed argv).
pub fn remove_ipc_of(uid: u32) {
    let mut arguments: Vec<String> = Vec::new();
    for (table, flag) in [("shm", "-m"), ("msg", "-q"), ("sem", "-s")] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/sysvipc/{table}")) else {
            continue;
        };
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let (Some(id_column), Some(uid_column)) = (
            header
                .iter()
                .position(|name| name.ends_with("id") && *name != "uid"),
            header.iter().position(|name| *name == "uid"),
        ) else {
            continue;
        };
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(uid_column) == Some(&uid.to_string().as_str()) {
                if let Some(id) = fields.get(id_column) {
                    arguments.extend([flag.to_owned(), (*id).to_owned()]);
                }
            }
        }
    }
    if arguments.is_empty() {
        return;
    }
    let removed = std::process::Command::new("ipcrm")
        .args(&arguments)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !removed.is_ok_and(|status| status.success()) {
        tracing::warn!(
            uid,
            "cannot remove the System V IPC objects a job's user left"
        );
    }
}

/// Removes what `uid` left at the top of the shared temporary directories (files,
/// directories with their contents; a link is removed, never followed). Only a job's own
/// uid is ever passed here, once its processes are gone.
pub fn remove_files_of(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    for directory in SHARED_TEMPORARY {
        let Ok(entries) = std::fs::read_dir(directory) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.uid() != uid {
                continue;
            }
            let removed = if metadata.is_dir() {
                std::fs::remove_dir_all(entry.path())
            } else {
                std::fs::remove_file(entry.path())
            };
            if let Err(error) = removed {
                tracing::warn!(uid, %error, "cannot remove a file a job's user left");
            }
        }
    }
}

fn kill_processes_of(limits: Option<&std::path::Path>, uid: u32) {
    for _ in 0..50 {
        let alive = processes_of(uid);
        if alive.is_empty() {
            return;
        }
        let killed_at_once = limits.is_some_and(|limits| {
            std::process::Command::new(limits)
                .arg("kill-all")
                .env_clear()
                .current_dir("/")
                .uid(uid)
                .gid(uid)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        });
        if !killed_at_once {
            for pid in alive {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::warn!(uid, "processes of a job's user survived repeated kills");
}

/// Every process of the machine (as this process sees `/proc`): its pid and directory.
fn processes() -> impl Iterator<Item = (Pid, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i32>().ok())
                .and_then(Pid::from_raw)?;
            Some((pid, entry.path()))
        })
}

/// The live (not zombie) processes whose real uid is `uid`.
pub fn processes_of(uid: u32) -> Vec<Pid> {
    processes_of_range(uid..uid + 1)
}

/// The live (not zombie) processes owned by a uid in `uids` (the owner of `/proc/<pid>`,
/// its effective uid: one `stat` per process, not a read of its status).
pub fn processes_of_range(uids: std::ops::Range<u32>) -> Vec<Pid> {
    use std::os::unix::fs::MetadataExt;
    processes()
        .filter(|(_, directory)| {
            std::fs::metadata(directory).is_ok_and(|metadata| uids.contains(&metadata.uid()))
        })
        .filter(|(_, directory)| {
            // "pid (comm) S ...": the state follows the last parenthesis.
            std::fs::read_to_string(directory.join("stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or_default()
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// The program's peak resident memory, read from `/proc/<pid>/status` (`VmHWM`, the
/// high-water mark of its own address space) every 50 ms while it runs. `wait4`'s
/// `ru_maxrss` cannot be used: it keeps the high-water mark across `exec`, so it reports
/// the server's own size at the fork. A program that ends before the first sample has no
/// figure.
async fn sample_peak_memory(pid: Pid, peak: Arc<AtomicU64>) {
    let leader = pid.as_raw_nonzero().get();
    let children = format!("/proc/{leader}/task/{leader}/children");
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticker.tick().await;
        // The leader is the program, or its wrapper with the program as a child.
        let mut pids = vec![leader.to_string()];
        if let Ok(list) = tokio::fs::read_to_string(&children).await {
            pids.extend(list.split_whitespace().map(str::to_owned));
        }
        let mut leader_alive = false;
        for (index, pid) in pids.iter().enumerate() {
            let Ok(status) = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await else {
                continue;
            };
            // A zombie has no memory figures left.
            let Some(kb) = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
            else {
                continue;
            };
            leader_alive |= index == 0;
            peak.fetch_max(kb * 1024, Ordering::Relaxed);
        }
        if !leader_alive {
            return;
        }
    }
}

/// A started program: its process group (led by it), the end of its `wait4` (exit status
/// and resource usage), and its output streams.
struct Spawned {
    group: Pid,
    exit: oneshot::Receiver<std::io::Result<wait4::ResUse>>,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    /// The limits were set before the program's first instruction (or there were none).
    limits_applied_at_exec: bool,
    /// The group leader is `batchgate-limits contain`: it ends every descendant of the
    /// program when the program ends, and everything `kill_grace` after a SIGTERM.
    contained: bool,
}

/// Kills the process group when dropped, and every process of the program's own uid if
/// it has one: no program outlives its attempt, even when the attempt itself is abandoned
/// (a server shutting down).
struct GroupGuard {
    group: Option<Pid>,
    uid: Option<u32>,
    limits: Option<std::path::PathBuf>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.group.take() {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
        if let Some(uid) = self.uid.take() {
            kill_user_now(self.limits.as_deref(), uid);
        }
    }
}

/// Starts the program. With `limits` (`batchgate-limits`, see `launcher/limits.c`), that
/// small static program sets the limits on itself and then runs the program as its
/// child: they hold from its first instruction (a fork bomb cannot outrun them), without a
/// `pre_exec` hook (no unsafe code), and as a child subreaper it ends whatever the
/// program started, in any session or process group, when the program ends.
async fn spawn(spec: &RunSpec, limits: Option<&std::path::Path>) -> std::io::Result<Spawned> {
    let program = &spec.argv[0];
    if !program_exists(program, &spec.env, &spec.workdir) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such program",
        ));
    }
    let options = launcher_options(&spec.rlimits);
    let argv = if let Some(wrapper) = limits {
        let mut argv = vec![wrapper.to_string_lossy().into_owned()];
        argv.extend(options.iter().cloned());
        argv.push("contain".into());
        argv.push(format!("grace={}", spec.kill_grace.as_millis()));
        argv.push("--".into());
        argv.extend(spec.argv.iter().cloned());
        argv
    } else {
        spec.argv.clone()
    };
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = spec.run_as {
        // The standard library drops supplementary groups when root changes user.
        command.uid(uid).gid(uid);
    }
    // A program file that another thread of this process has just written can be
    // briefly busy for exec (ETXTBSY, a fork inherited the writable descriptor).
    let mut delay = Duration::from_millis(5);
    let mut tries = 0;
    let mut child = loop {
        match command.spawn() {
            Err(error)
                if tries < 5
                    && error.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) =>
            {
                tries += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => break other?,
        }
    };
    let group = Pid::from_raw(child.id() as i32).expect("a child has a positive pid");
    let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().expect("piped"))?;
    let stderr = tokio::process::ChildStderr::from_std(child.stderr.take().expect("piped"))?;
    // wait4(2) returns the resource usage with the exit status; it blocks, so it gets a
    // thread of the blocking pool for the program's lifetime.
    let (sender, exit) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        use wait4::Wait4;
        let _ = sender.send(child.wait4());
    });
    Ok(Spawned {
        group,
        exit,
        stdout,
        stderr,
        limits_applied_at_exec: limits.is_some() || options.is_empty(),
        contained: limits.is_some(),
    })
}

/// Is `program` an executable file (a path, or a name found on the program's `PATH`)?
fn program_exists(program: &str, env: &[(String, String)], workdir: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(&workdir.join(program));
    }
    let path = env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map_or("/usr/bin:/bin", |(_, value)| value.as_str());
    std::env::split_paths(path).any(|dir| executable(&dir.join(program)))
}

/// The limits to set: (resource, `batchgate-limits` name, soft limit, hard limit). Soft
/// = hard, so the program cannot raise them, except for CPU time: the hard limit is a
/// second higher, so the program gets SIGXCPU (and the job says "CPU time limit") before
/// the kernel's SIGKILL. No core dumps.
fn limit_list(limits: &ResourceLimits) -> Vec<(Resource, &'static str, u64, u64)> {
    [
        (
            Resource::Core,
            "core",
            (!server_forbids_core_dumps()).then_some(0),
        ),
        (Resource::Cpu, "cpu", limits.cpu_seconds),
        (Resource::As, "as", limits.memory_bytes),
        (Resource::Fsize, "fsize", limits.file_size_bytes),
        (Resource::Nofile, "nofile", limits.open_files),
        (Resource::Nproc, "nproc", limits.processes),
    ]
    .into_iter()
    .filter_map(|(resource, name, value)| {
        let hard = |soft: u64| match resource {
            Resource::Cpu => soft.saturating_add(CPU_HARD_MARGIN_SECONDS),
            // The wrapper that contains the program is one process of its user too.
            Resource::Nproc => soft.saturating_add(1),
            _ => soft,
        };
        value.map(|soft| (resource, name, soft, hard(soft)))
    })
    .collect()
}

/// Seconds of CPU time between SIGXCPU (the tool's limit) and the kernel's SIGKILL.
pub const CPU_HARD_MARGIN_SECONDS: u64 = 1;

/// Sets the server's own core-dump limit to zero, once: a dump of the server would hold
/// its secrets, and every program it starts inherits the limit, so no program needs a
/// wrapper only to forbid core dumps. False if the limit could not be set.
fn server_forbids_core_dumps() -> bool {
    static FORBIDDEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORBIDDEN.get_or_init(|| {
        let zero = Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        rustix::process::setrlimit(Resource::Core, zero).is_ok()
    })
}

fn launcher_options(limits: &ResourceLimits) -> Vec<String> {
    limit_list(limits)
        .into_iter()
        .map(|(_, name, soft, hard)| format!("{name}={soft}:{hard}"))
        .collect()
}

/// The fallback without `batchgate-limits`: prlimit(2) on the child right after it
/// starts (the program may run for microseconds before its limits hold).
fn apply_rlimits(pid: Pid, limits: &ResourceLimits) {
    for (resource, _, soft, hard) in limit_list(limits) {
        let limit = Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        };
        if let Err(error) = rustix::process::prlimit(Some(pid), resource, limit) {
            tracing::warn!(?resource, %error, "cannot set a resource limit");
        }
    }
}

/// TERM to the whole group, a grace period for the leader to exit, then KILL. Returns
/// the leader's resource usage. (A contained program's wrapper forwards the TERM and kills
/// everything itself once its own grace period is over: `grace` then includes a margin.)
async fn stop_group(
    group: Pid,
    exit: &mut oneshot::Receiver<std::io::Result<wait4::ResUse>>,
    grace: Duration,
) -> Option<wait4::ResUse> {
    let _ = rustix::process::kill_process_group(group, Signal::TERM);
    let ended = match tokio::time::timeout(grace, &mut *exit).await {
        Ok(ended) => ended,
        Err(_) => {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
            exit.await
        }
    };
    ended.ok().and_then(Result::ok)
}

pub(crate) async fn join_capture(task: tokio::task::JoinHandle<(bool, String)>) -> (bool, String) {
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(result)) => result,
        _ => (false, String::new()),
    }
}

/// Copies a stream to `file` up to `cap` bytes (then cancels `overflow`, so that the
/// program is stopped, and drains and drops the rest), parses progress lines, and keeps
/// the stream's tail. Returns (truncated, tail).
pub(crate) async fn capture(
    mut stream: impl AsyncRead + Unpin,
    file: tokio::fs::File,
    cap: u64,
    progress: Option<ProgressSpec>,
    sender: watch::Sender<Option<Progress>>,
    keep_tail: bool,
    overflow: CancellationToken,
) -> (bool, String) {
    let mut file = tokio::io::BufWriter::new(file);
    let mut written: u64 = 0;
    let mut truncated = false;
    let mut line = Vec::new();
    let mut tail: VecDeque<u8> = VecDeque::new();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        let room = cap.saturating_sub(written) as usize;
        if room < chunk.len() {
            truncated = true;
            overflow.cancel();
        }
        let kept = &chunk[..room.min(chunk.len())];
        // Flushed per chunk so that the logs of a running job can be read live.
        if !kept.is_empty() && file.write_all(kept).await.is_ok() && file.flush().await.is_ok() {
            written += kept.len() as u64;
        }
        if keep_tail {
            tail.extend(chunk);
            let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
            tail.drain(..excess);
        }
        if let Some(spec) = &progress {
            for &byte in chunk {
                if byte == b'\n' {
                    if let Some(parsed) = parse_progress(spec, &String::from_utf8_lossy(&line)) {
                        sender.send_replace(Some(parsed));
                    }
                    line.clear();
                } else if line.len() < MAX_LINE {
                    line.push(byte);
                }
            }
        }
    }
    let _ = file.flush().await;
    let tail = String::from_utf8_lossy(tail.make_contiguous()).into_owned();
    (truncated, last_lines(&tail, 20))
}

/// Reads percent and message from a line matching the tool's pattern: named groups
/// `percent` and `message`, else groups 1 and 2.
pub fn parse_progress(spec: &ProgressSpec, line: &str) -> Option<Progress> {
    let captures = spec.pattern.captures(line.trim_end_matches('\r'))?;
    let named = spec.pattern.capture_names().flatten().next().is_some();
    let group = |name: &str, index: usize| {
        if named {
            captures.name(name)
        } else {
            captures.get(index)
        }
    };
    let percent_text = group("percent", 1);
    let message = group("message", 2);
    let percent = percent_text
        .and_then(|m| m.as_str().parse::<f64>().ok())
        .map(|p| p.clamp(0.0, 100.0));
    let message = message
        .map(|m| m.as_str().trim().to_owned())
        .filter(|m| !m.is_empty());
    if percent.is_none() && message.is_none() {
        return None;
    }
    Some(Progress { percent, message })
}

pub(crate) fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(count);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn spec(pattern: &str) -> ProgressSpec {
        ProgressSpec {
            pattern: Regex::new(pattern).unwrap(),
            stream: ProgressStream::Both,
        }
    }

    #[test]
    fn progress_lines() {
        let named = spec(r"^PROGRESS (?P<percent>\d+)\s*(?P<message>.*)$");
        let cases = [
            ("PROGRESS 40 halfway", Some((Some(40.0), Some("halfway")))),
            ("PROGRESS 100", Some((Some(100.0), None))),
            ("PROGRESS 400 x", Some((Some(100.0), Some("x")))),
            ("progress 4", None),
            ("other", None),
        ];
        for (line, expected) in cases {
            let parsed = parse_progress(&named, line);
            let got = parsed.as_ref().map(|p| (p.percent, p.message.as_deref()));
            assert_eq!(got, expected, "line {line}");
        }
        let positional = spec(r"^(\d+)% (.*)$");
        let parsed = parse_progress(&positional, "12% step two\r").unwrap();
        assert_eq!(
            (parsed.percent, parsed.message.as_deref()),
            (Some(12.0), Some("step two"))
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = last_lines(&text, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
    }
}
