//! Executors run one attempt's program in a prepared work directory and report how it
//! ended. Staging inputs and collecting outputs belong to the worker, so every executor
//! (local process today; Slurm, containers, Kubernetes later) shares that logic.

pub mod local;
pub mod process;
pub mod sandbox;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::jobs::Progress;
use crate::tools::ProgressSpec;

/// Everything needed to run one attempt.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The program and its arguments; never passed through a shell.
    pub argv: Vec<String>,
    pub workdir: PathBuf,
    /// The complete environment of the program.
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub rlimits: ResourceLimits,
    pub progress: Option<ProgressSpec>,
    /// Where stdout and stderr are captured, and how many bytes of each are kept.
    pub stdout_path: PathBuf,
    pub stdout_cap: u64,
    /// Stop the program once stdout passes its cap (stdout is an output, so the job fails
    /// anyway); otherwise the excess is dropped and the program goes on.
    pub stop_at_stdout_cap: bool,
    pub stderr_path: PathBuf,
    pub stderr_cap: u64,
    /// Run as this uid and gid (the server must be root).
    pub run_as: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct ResourceLimits {
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: Option<u64>,
    /// RLIMIT_NPROC: counted per user, so it contains a fork bomb only when the program
    /// runs as a user of its own (`RunSpec::run_as`).
    pub processes: Option<u64>,
}

/// How the program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Canceled,
    /// Stopped because stdout (an output) passed its cap.
    OutputTooLarge,
    /// The program could not be started.
    SpawnFailed {
        not_found: bool,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub termination: Termination,
    /// The last lines of stderr (at most a few KB).
    pub stderr_tail: String,
    pub stdout_truncated: bool,
    pub wall_time: Duration,
    /// User + system CPU time of the program and the descendants it waited for.
    pub cpu_time: Option<Duration>,
    /// The largest resident set of the program or one of those descendants.
    pub peak_memory_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("executor failed: {0}")]
    Io(#[from] std::io::Error),
}

#[async_trait]
pub trait Executor: Send + Sync {
    /// Runs the program to its end, reporting progress as it goes; `cancel` stops it
    /// (TERM to the whole process group, a grace period, then KILL).
    async fn run(
        &self,
        spec: RunSpec,
        progress: watch::Sender<Option<Progress>>,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError>;
}
