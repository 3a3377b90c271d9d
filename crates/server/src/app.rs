//! Wiring: builds the runtime (store, blobs, tools, executor, worker pool) and the HTTP
//! server, for `main` and for tests alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::blobs::{BlobStore, LocalBlobStore};
use crate::config::{Config, Settings};
use crate::executors::local::LocalExecutor;
use crate::executors::Executor;
use crate::store::sqlite::SqliteJobStore;
use crate::store::JobStore;
use crate::tools::ToolRegistry;
use crate::worker::{RunningJobs, Wakeup};

/// Everything the API handlers and the workers share.
pub struct Runtime {
    pub settings: Settings,
    pub tools: ToolRegistry,
    pub store: Arc<dyn JobStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub executor: Arc<dyn Executor>,
    /// Work directories of running attempts (`<id>-<attempt>`).
    pub work_root: PathBuf,
    /// Request bodies being received, before the job is committed.
    pub staging_root: PathBuf,
    pub wakeup: Wakeup,
    pub running: RunningJobs,
}

impl Runtime {
    pub async fn open(config: Config) -> Result<Runtime, StartError> {
        let settings = config.settings;
        let data_dir = std::path::absolute(&settings.data_dir)?;
        std::fs::create_dir_all(&data_dir)?;
        let store = SqliteJobStore::open(&data_dir.join("jobs.db")).await?;
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
        Ok(Runtime {
            settings,
            tools: config.tools,
            store: Arc::new(store),
            blobs: Arc::new(blobs),
            executor: Arc::new(LocalExecutor),
            work_root,
            staging_root,
            wakeup: Wakeup::default(),
            running: RunningJobs::default(),
        })
    }
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
        let router = crate::api::router(self.runtime.clone());
        let signal = shutdown.clone();
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .await;
        shutdown.cancel();
        for worker in workers {
            worker.abort();
        }
        served
    }
}
