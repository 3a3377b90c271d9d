//! Wiring: builds the runtime (store, blobs, tools, executor, worker pool) and the HTTP
//! server, for `main` and for tests alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::signing::Signer;
use crate::auth::Tiers;
use crate::blobs::{BlobStore, LocalBlobStore};
use crate::config::{AuthMode, Config, ProgramUsers, SandboxMode, Settings};
use crate::executors::container::ContainerExecutor;
use crate::executors::kubernetes::KubernetesExecutor;
use crate::executors::local::LocalExecutor;
use crate::executors::slurm::SlurmExecutor;
use crate::executors::Executors;
use crate::store::postgres::PgJobStore;
use crate::store::sqlite::SqliteJobStore;
use crate::store::JobStore;
use crate::tools::ToolRegistry;
use crate::worker::workdirs::WorkDirs;
use crate::worker::{RunningJobs, UidPool};

/// Everything the API handlers and the workers share.
pub struct Runtime {
    pub settings: Settings,
    pub tools: ToolRegistry,
    pub tiers: Tiers,
    pub signer: Signer,
    pub store: Arc<dyn JobStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub executors: Executors,
    /// Work directories of attempts run by the local executor (`<id>-<attempt>`).
    pub work_root: PathBuf,
    /// Request bodies being received, before the job is committed.
    pub staging_root: PathBuf,
    pub running: RunningJobs,
    /// Makes, and recycles, the work directories of attempts on this host.
    pub work_dirs: WorkDirs,
    /// The uids programs run as, one per job; `None`: the server's own user.
    pub uids: Option<UidPool>,
    /// `bwrap`, when programs run sandboxed.
    pub sandbox: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Cancelled when the server begins to shut down: long answers (event streams,
    /// `Prefer: wait`) end early so that the drain does not wait for them.
    pub stopping: CancellationToken,
    /// Held while this process runs jobs in `work_root` (see `lock_work_root`).
    _work_lock: Option<std::fs::File>,
}

impl Runtime {
    /// `serves_api`: this process receives uploads (it owns the staging directory);
    /// `runs_jobs`: it runs programs (it owns the work directory). A `serve --no-worker`
    /// and a `worker` may share one data directory without disturbing each other.
    pub async fn open(
        config: Config,
        serves_api: bool,
        runs_jobs: bool,
    ) -> Result<Runtime, StartError> {
        let settings = config.settings;
        crate::telemetry::handle();
        for tool in config.tools.all() {
            for warning in &tool.warnings {
                tracing::warn!(tool = %tool.id(), "{warning}");
            }
        }
        let data_dir = std::path::absolute(&settings.data_dir)?;
        crate::datadir::prepare(&data_dir)?;
        let store = open_store(&settings).await?;
        let signer = Signer::load(store.clone()).await?;
        let blobs = open_blobs(&settings, &data_dir).await?;
        let work_root = data_dir.join("work");
        let staging_root = data_dir.join("staging");
        // Whatever a previous process left half-done here is abandoned: uploads that were
        // never acknowledged, and work directories of attempts that will be re-run.
        if serves_api {
            let _ = std::fs::remove_dir_all(&staging_root);
        }
        crate::datadir::create_with_mode(&work_root, 0o711)?;
        let work_lock = if runs_jobs {
            Some(lock_work_root(&work_root)?)
        } else {
            None
        };
        if runs_jobs {
            let orphans = crate::executors::process::reap_orphans(&work_root);
            if orphans > 0 {
                tracing::warn!(
                    orphans,
                    "stopped programs left running by a previous server"
                );
            }
            // This worker owns every lease a crashed predecessor held on a single-node
            // store, whatever clock set them (a store shared by workers does nothing).
            let adopted = store
                .adopt_predecessor(store.now(), crate::jobs::MAX_BACKOFF)
                .await?;
            if adopted > 0 {
                tracing::info!(adopted, "took over the jobs a previous server left");
            }
            let abandoned =
                crate::worker::workdirs::remove_abandoned(&work_root, store.as_ref()).await;
            if abandoned > 0 {
                tracing::info!(
                    abandoned,
                    "removed work directories of attempts a previous server left"
                );
            }
        }
        crate::datadir::create_with_mode(&staging_root, 0o700)?;
        let uids = if runs_jobs {
            program_users(&settings, &data_dir)?
        } else {
            None
        };
        // Only a process that runs jobs owns the work root (and its spare directories).
        let work_dirs = WorkDirs::new(
            &work_root,
            if runs_jobs {
                settings.worker_count()
            } else {
                0
            },
        );
        let sandbox = match settings.sandbox {
            SandboxMode::None => None,
            SandboxMode::Bwrap => Some(crate::executors::sandbox::find_bwrap().ok_or(
                "`sandbox = \"bwrap\"` but bwrap is not installed (apt-get install bubblewrap)",
            )?),
        };
        let slurm = match (&settings.slurm, runs_jobs) {
            (Some(slurm), true) => Some(SlurmExecutor::open(slurm.clone()).await?),
            _ => None,
        };
        let container = match (&settings.container, runs_jobs) {
            (Some(container), true) => {
                Some(ContainerExecutor::open(container.clone(), work_root.clone()).await?)
            }
            _ => None,
        };
        let kubernetes = match (&settings.kubernetes, runs_jobs) {
            (Some(kubernetes), true) => Some(KubernetesExecutor::open(kubernetes.clone()).await?),
            _ => None,
        };
        let executors = Executors {
            local: LocalExecutor::new(&data_dir, work_root.clone()),
            slurm,
            container,
            kubernetes,
        };
        Ok(Runtime {
            settings,
            tools: config.tools,
            tiers: config.tiers,
            signer,
            store,
            blobs,
            executors,
            work_root,
            staging_root,
            running: RunningJobs::default(),
            work_dirs,
            uids,
            sandbox,
            data_dir,
            stopping: CancellationToken::new(),
            _work_lock: work_lock,
        })
    }
}

/// The job store a configuration names (also for `batchgate keys`, beside a running
/// server).
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn JobStore>, StartError> {
    if settings.store != "sqlite" {
        return Ok(Arc::new(PgJobStore::open(&settings.store).await?));
    }
    let data_dir = std::path::absolute(&settings.data_dir)?;
    std::fs::create_dir_all(&data_dir)?;
    Ok(Arc::new(
        SqliteJobStore::open(&data_dir.join("jobs.db")).await?,
    ))
}

/// One process runs jobs in a work directory: at start it stops the programs a previous
/// process left running there, which must never be another live worker's.
fn lock_work_root(work_root: &std::path::Path) -> Result<std::fs::File, StartError> {
    let file = std::fs::File::create(work_root.join(".lock"))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            format!(
                "another batchgate process runs jobs in {}; give each worker its own data_dir",
                work_root.display()
            )
        },
    )?;
    Ok(file)
}

/// The blob store the settings name.
async fn open_blobs(
    settings: &Settings,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn BlobStore>, StartError> {
    let root = match settings.blobs.as_str() {
        "local" => data_dir.join("blobs"),
        url if crate::blobs::object::is_object_url(url) => {
            let store = crate::blobs::object::ObjectBlobStore::open(url)?;
            store
                .ping()
                .await
                .map_err(|error| format!("blob storage {url} is not reachable: {error}"))?;
            return Ok(Arc::new(store));
        }
        shared => PathBuf::from(shared),
    };
    Ok(Arc::new(LocalBlobStore::open(&root).await?))
}

/// The pool of uids local programs run as, or `None` when they run as the server's own
/// user (said in the log, with what that lets them reach). A pool needs the server to be
/// root, uids that belong to no account of this machine (every process of a job's uid is
/// killed when the job ends), and a data directory other users can pass through.
fn program_users(
    settings: &Settings,
    data_dir: &std::path::Path,
) -> Result<Option<UidPool>, StartError> {
    let (first, count) = match settings.program_users() {
        ProgramUsers::Server(_) => {
            if let Some(warning) = settings.containment_warning() {
                tracing::warn!("{warning}");
            }
            return Ok(None);
        }
        ProgramUsers::Pool { first, count } => (first, count),
    };
    if !rustix::process::geteuid().is_root() {
        return Err(
            "`run_as_uid` needs the server to run as root (or run_as_uid = \"server\")".into(),
        );
    }
    let last = first.saturating_add(count - 1);
    if let Some((account, uid)) = account_in(first..=last) {
        return Err(format!(
            "uid {uid} of the program users' pool ({first}–{last}) belongs to the account \
             `{account}`: every process of a job's uid is killed when the job ends; choose \
             another range with run_as_uid and run_as_uid_count"
        )
        .into());
    }
    crate::datadir::reachable_by_others(data_dir)?;
    let pool = UidPool::open(first, count)
        .map_err(|error| format!("cannot prepare the program users' pool: {error}"))?;
    tracing::info!(
        first,
        last,
        "programs run as uids of their own, one per running job (run_as_uid; \"server\" opts out)"
    );
    Ok(Some(pool))
}

/// An account of `/etc/passwd` whose uid is in `range`.
fn account_in(range: std::ops::RangeInclusive<u32>) -> Option<(String, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid = fields.nth(1)?.parse::<u32>().ok()?;
        range.contains(&uid).then(|| (name.to_owned(), uid))
    })
}

/// Without keys, a server is open to anyone who can reach it: allowed on a loopback
/// address (a laptop), refused elsewhere unless `insecure_open` says it is meant.
async fn check_open_access(runtime: &Runtime) -> Result<(), StartError> {
    let settings = &runtime.settings;
    if settings.auth == AuthMode::Required || runtime.store.has_keys().await? {
        return Ok(());
    }
    if settings.listen.ip().is_loopback() {
        return Ok(());
    }
    if settings.insecure_open {
        tracing::warn!(listen = %settings.listen, "serving WITHOUT authentication (--insecure-open)");
        return Ok(());
    }
    Err(format!(
        "refusing to serve on {} without API keys: create one with \
         `batchgate keys create --name NAME --tier TIER`, listen on a loopback address, \
         or pass --insecure-open to serve anyone who can reach this address",
        settings.listen
    )
    .into())
}

/// Why the server could not start: reported once and the process exits.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// A built server, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    runtime: Arc<Runtime>,
    with_worker: bool,
}

impl Application {
    pub async fn build(config: Config, with_worker: bool) -> Result<Application, StartError> {
        let listen = config.settings.listen;
        let runtime = Arc::new(Runtime::open(config, true, with_worker).await?);
        check_open_access(&runtime).await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
        Ok(Application {
            listener,
            runtime,
            with_worker,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let workers = if self.with_worker {
            let count = self.runtime.settings.worker_count();
            tracing::info!(workers = count, "embedded worker pool started");
            crate::worker::spawn_pool(self.runtime.clone(), count, shutdown.clone())
        } else {
            Vec::new()
        };
        let reaper = tokio::spawn(crate::worker::reaper::run(
            self.runtime.clone(),
            shutdown.clone(),
        ));
        let stopping = self.runtime.stopping.clone();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            signal.cancelled().await;
            stopping.cancel();
        });
        let router = crate::api::router(self.runtime.clone());
        let served = crate::api::serve(
            self.listener,
            router,
            &self.runtime.settings,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        reaper.abort();
        crate::worker::drain(&self.runtime, workers).await;
        served
    }
}

/// `batchgate worker`: runs jobs from the shared store, without serving the API, until
/// `shutdown`; then lets running jobs finish (or hands them back) and returns.
pub async fn run_worker(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let runtime = Arc::new(Runtime::open(config, false, true).await?);
    let count = runtime.settings.worker_count();
    tracing::info!(workers = count, store = %runtime.store_label(), "worker started");
    let workers = crate::worker::spawn_pool(runtime.clone(), count, shutdown.clone());
    shutdown.cancelled().await;
    runtime.stopping.cancel();
    crate::worker::drain(&runtime, workers).await;
    Ok(())
}

impl Runtime {
    /// The store for logs: `sqlite` or the PostgreSQL URL without its password.
    pub fn store_label(&self) -> String {
        redact_url(&self.settings.store)
    }
}

/// A URL without the password it may carry.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if scheme < at => {
            let user_info = &url[scheme + 3..at];
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{}://{user}@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
