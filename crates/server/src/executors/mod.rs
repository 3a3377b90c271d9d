//! Executors run one attempt's program in a prepared work directory and report how it
//! ended. Staging inputs and collecting outputs belong to the worker, so every executor
//! (a local process, a Slurm batch job; containers and Kubernetes later) shares that
//! logic.

#[cfg(feature = "containers")]
pub mod container;
pub mod detached;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod local;
pub mod process;
pub mod sandbox;
pub mod slurm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// Where stdout and stderr are captured, and how many bytes of each are kept. A
    /// program that writes past a cap is stopped (`Termination::OutputTooLarge`): a stream
    /// without end would otherwise run until the timeout and cost the server its draining.
    pub stdout_path: PathBuf,
    pub stdout_cap: u64,
    pub stderr_path: PathBuf,
    pub stderr_cap: u64,
    /// Run as this uid and gid (the server must be root).
    pub run_as: Option<u32>,
    /// Follow the program an earlier attempt started (an executor reference found by
    /// `Executor::locate`) instead of starting it again.
    pub attach: Option<String>,
    /// What a Slurm batch job asks of the cluster (the Slurm executor only).
    pub slurm: crate::tools::decl::SlurmDecl,
    /// The image (the container executor only).
    pub container: Option<crate::tools::decl::ContainerDecl>,
    /// The pod's image (the Kubernetes executor only).
    pub kubernetes: Option<crate::tools::decl::KubernetesDecl>,
}

#[derive(Debug, Clone, Default)]
pub struct ResourceLimits {
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: Option<u64>,
    /// Processes the program may have at once. How it holds is the executor's: the local
    /// executor sets RLIMIT_NPROC, which counts per user, only for a program with a uid of
    /// its own (`RunSpec::run_as`); a container gets it as its pids limit; Slurm and
    /// Kubernetes leave it to the cluster.
    pub processes: Option<u64>,
}

/// How the program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Canceled,
    /// Stopped because a captured stream (`"stdout"` or `"stderr"`) passed its cap.
    OutputTooLarge {
        stream: &'static str,
    },
    /// The program could not be started.
    SpawnFailed {
        not_found: bool,
        message: String,
    },
    /// Killed for using more memory than the tool's limit (the execution engine says so).
    OutOfMemory,
    /// The execution engine ended the attempt for a reason of its own (a node failed,
    /// the job was preempted or canceled by an administrator). `retry`: the program is
    /// not at fault, so the job runs again.
    Engine {
        code: &'static str,
        message: String,
        retry: bool,
    },
    /// The program was left running (`RunControl::detach`): another worker follows it.
    Detached,
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

impl RunOutcome {
    /// An outcome with nothing measured or captured.
    pub fn bare(termination: Termination, wall_time: Duration) -> RunOutcome {
        RunOutcome {
            termination,
            stderr_tail: String::new(),
            stdout_truncated: false,
            wall_time,
            cpu_time: None,
            peak_memory_bytes: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("executor failed: {0}")]
    Io(#[from] std::io::Error),
    /// The execution engine (Slurm, the container engine, Kubernetes) failed or did not
    /// answer: the platform's fault, so the attempt is retried.
    #[error("{0}")]
    Engine(String),
}

/// How a worker steers a running attempt.
pub struct RunControl {
    pub progress: watch::Sender<Option<Progress>>,
    /// Stop the program (TERM, a grace period, then KILL).
    pub cancel: CancellationToken,
    /// Stop following the program: this worker is going away (shutdown, or its lease was
    /// lost). An executor whose programs outlive the worker leaves it running and ends
    /// with `Termination::Detached`; the local executor stops it like `cancel`.
    pub detach: CancellationToken,
    /// Where the executor records how to find its program again.
    pub references: Arc<dyn References>,
}

/// The durable note of where an attempt's program runs (the job's `executor_ref`).
#[async_trait]
pub trait References: Send + Sync {
    /// Records `reference` before the executor starts following the program; an error
    /// means it could not be kept (the program then runs unrecorded, as a local one).
    async fn record(&self, reference: &str) -> Result<(), String>;
}

#[async_trait]
pub trait Executor: Send + Sync {
    /// Runs the program to its end (or follows `spec.attach`), reporting progress as it
    /// goes.
    async fn run(&self, spec: RunSpec, control: RunControl) -> Result<RunOutcome, ExecutorError>;

    /// The directory under which attempts' work directories are made.
    fn work_root(&self) -> &Path;

    /// Programs run as children of this worker: the host's sandbox (`sandbox = "bwrap"`)
    /// and per-job users (`run_as_uid`) apply to them.
    fn on_this_host(&self) -> bool {
        false
    }

    /// Where the program sees its work directory `workdir` (argv placeholders, `HOME` and
    /// `TMPDIR` are written with it): the same path, unless it is mounted elsewhere.
    fn program_workdir(&self, workdir: &Path) -> PathBuf {
        workdir.to_owned()
    }

    /// The work directory of the program an earlier attempt started (`reference`, as
    /// recorded), if this executor can still follow it or read how it ended. `None`: start
    /// the program again.
    async fn locate(&self, _reference: &str) -> Option<PathBuf> {
        None
    }

    /// Cleans up what attempts left behind while no worker followed them (a program whose
    /// job was canceled meanwhile); returns how many things it removed.
    async fn sweep(&self, _jobs: &dyn JobLookup) -> usize {
        0
    }
}

/// All an executor may ask of the job store: how a job stands. Executors reach the store
/// only through this and `References` (the worker provides both).
#[async_trait]
pub trait JobLookup: Send + Sync {
    /// `Ok(None)`: no such job; `Err`: the store did not answer (keep what may be wanted).
    async fn standing(&self, id: uuid::Uuid) -> Result<Option<Standing>, LookupFailed>;
}

/// How a job stands, as an executor's sweep needs it.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The job is finished (succeeded, failed or canceled).
    pub ended: bool,
    /// The attempt running now (or the last one).
    pub attempt: u32,
    /// Where the current attempt's program runs (`Reference`, as recorded).
    pub executor_ref: Option<String>,
}

/// The store did not answer a `JobLookup`.
#[derive(Debug, Clone, Copy)]
pub struct LookupFailed;

/// The executors a worker has: the local one always, Slurm, containers and Kubernetes
/// when `[slurm]`, `[container]` and `[kubernetes]` are configured.
pub struct Executors {
    pub local: local::LocalExecutor,
    pub slurm: Option<slurm::SlurmExecutor>,
    #[cfg(feature = "containers")]
    pub container: Option<container::ContainerExecutor>,
    #[cfg(feature = "kubernetes")]
    pub kubernetes: Option<kubernetes::KubernetesExecutor>,
}

impl Executors {
    /// The executor that runs `tool`'s programs.
    pub fn for_tool(&self, tool: &crate::tools::Tool) -> Result<&dyn Executor, String> {
        use crate::tools::decl::ExecutorDecl;
        let (executor, section): (Option<&dyn Executor>, &str) = match tool.executor {
            ExecutorDecl::Local => return Ok(&self.local),
            ExecutorDecl::Slurm => (self.slurm.as_ref().map(|e| e as _), "slurm"),
            #[cfg(feature = "containers")]
            ExecutorDecl::Container => (self.container.as_ref().map(|e| e as _), "container"),
            #[cfg(feature = "kubernetes")]
            ExecutorDecl::Kubernetes => (self.kubernetes.as_ref().map(|e| e as _), "kubernetes"),
            #[cfg(not(feature = "containers"))]
            ExecutorDecl::Container => (None, "container"),
            #[cfg(not(feature = "kubernetes"))]
            ExecutorDecl::Kubernetes => (None, "kubernetes"),
        };
        executor.ok_or_else(|| format!("this worker has no [{section}] configuration"))
    }

    /// The shortest sweep interval of the executors whose programs outlive the worker
    /// (an hour when there are none: nothing to sweep).
    pub fn sweep_interval(&self) -> Duration {
        [
            self.slurm.as_ref().map(|slurm| slurm.sweep_interval()),
            #[cfg(feature = "containers")]
            self.container.as_ref().map(|c| c.sweep_interval()),
            #[cfg(feature = "kubernetes")]
            self.kubernetes.as_ref().map(|k| k.sweep_interval()),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(3600))
    }

    /// Every configured executor's `sweep`.
    pub async fn sweep(&self, jobs: &dyn JobLookup) -> usize {
        let mut swept = 0;
        if let Some(slurm) = &self.slurm {
            swept += slurm.sweep(jobs).await;
        }
        #[cfg(feature = "containers")]
        if let Some(container) = &self.container {
            swept += container.sweep(jobs).await;
        }
        #[cfg(feature = "kubernetes")]
        if let Some(kubernetes) = &self.kubernetes {
            swept += kubernetes.sweep(jobs).await;
        }
        swept
    }
}
