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
use crate::config::{AuthMode, Config, SandboxMode, Settings};
use crate::executors::local::LocalExecutor;
use crate::executors::Executor;
use crate::store::sqlite::SqliteJobStore;
use crate::store::JobStore;
use crate::tools::ToolRegistry;
use crate::worker::{RunningJobs, UidPool, Wakeup};

/// Everything the API handlers and the workers share.
pub struct Runtime {
    pub settings: Settings,
    pub tools: ToolRegistry,
    pub tiers: Tiers,
    pub signer: Signer,
    pub store: Arc<dyn JobStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub executor: Arc<dyn Executor>,
    /// Work directories of running attempts (`<id>-<attempt>`).
    pub work_root: PathBuf,
    /// Request bodies being received, before the job is committed.
    pub staging_root: PathBuf,
    pub wakeup: Wakeup,
    pub running: RunningJobs,
    pub uids: UidPool,
    /// `bwrap`, when programs run sandboxed.
    pub sandbox: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Cancelled when the server begins to shut down: long answers (event streams,
    /// `Prefer: wait`) end early so that the drain does not wait for them.
    pub stopping: CancellationToken,
}

impl Runtime {
    pub async fn open(config: Config) -> Result<Runtime, StartError> {
        let settings = config.settings;
        crate::telemetry::handle();
        let data_dir = std::path::absolute(&settings.data_dir)?;
        std::fs::create_dir_all(&data_dir)?;
        let store = open_store(&settings).await?;
        let signer = Signer::load(store.clone()).await?;
        let blobs = LocalBlobStore::open(&data_dir.join("blobs")).await?;
        let work_root = data_dir.join("work");
        let staging_root = data_dir.join("staging");
        // Whatever a previous process left half-done here is abandoned: uploads that were
        // never acknowledged, and work directories of attempts that will be re-run.
        let _ = std::fs::remove_dir_all(&staging_root);
        let orphans = crate::executors::process::reap_orphans(&work_root);
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "stopped programs left running by a previous server"
            );
        }
        std::fs::create_dir_all(&staging_root)?;
        std::fs::create_dir_all(&work_root)?;
        if settings.run_as_uid.is_some() {
            prepare_run_as(&work_root)?;
        }
        let uids = UidPool::new(settings.run_as_uid, settings.worker_count());
        let sandbox = match settings.sandbox {
            SandboxMode::None => None,
            SandboxMode::Bwrap => Some(crate::executors::sandbox::find_bwrap().ok_or(
                "`sandbox = \"bwrap\"` but bwrap is not installed (apt-get install bubblewrap)",
            )?),
        };
        Ok(Runtime {
            settings,
            tools: config.tools,
            tiers: config.tiers,
            signer,
            store,
            blobs: Arc::new(blobs),
            executor: Arc::new(LocalExecutor::new(&data_dir)),
            work_root,
            staging_root,
            wakeup: Wakeup::default(),
            running: RunningJobs::default(),
            uids,
            sandbox,
            data_dir,
            stopping: CancellationToken::new(),
        })
    }
}

/// The job store a configuration names (also for `batchgate keys`, beside a running
/// server).
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn JobStore>, StartError> {
    let data_dir = std::path::absolute(&settings.data_dir)?;
    std::fs::create_dir_all(&data_dir)?;
    Ok(Arc::new(
        SqliteJobStore::open(&data_dir.join("jobs.db")).await?,
    ))
}

/// Programs run as other users need the server to be root, and must be able to reach
/// their work directories: every directory above them must be searchable by others.
fn prepare_run_as(work_root: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        return Err("`run_as_uid` needs the server to run as root".into());
    }
    std::fs::set_permissions(work_root, std::fs::Permissions::from_mode(0o711))?;
    for directory in work_root.ancestors().skip(1) {
        let mode = std::fs::metadata(directory)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "`run_as_uid`: programs cannot reach their work directories because {} is \
                 not searchable by other users (chmod o+x it, or choose another data_dir)",
                directory.display()
            )
            .into());
        }
    }
    Ok(())
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
        let runtime = Arc::new(Runtime::open(config).await?);
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
        for worker in workers {
            worker.abort();
        }
        served
    }
}
