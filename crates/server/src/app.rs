//! Wiring: builds the runtime (store, blobs, tools, executor, worker pool) and the HTTP
//! server, for `main` and for tests alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::auth::signing::Signer;
use crate::auth::Tiers;
use crate::blobs::{BlobStore, LocalBlobStore};
use crate::config::{AuthMode, Config, Settings};
use crate::retention::Retention;
use crate::running::RunningJobs;
use crate::store::postgres::PgJobStore;
use crate::store::sqlite::SqliteJobStore;
use crate::store::JobStore;
use crate::tools::ToolRegistry;
use crate::worker::WorkerState;
pub use crate::StartError;

/// What a process opens whatever its role: the store, the blobs, the tools, and the
/// registry of attempts running here.
struct Common {
    settings: Arc<Settings>,
    tools: Arc<ToolRegistry>,
    tiers: Tiers,
    store: Arc<dyn JobStore>,
    blobs: Arc<dyn BlobStore>,
    running: Arc<RunningJobs>,
    stopping: CancellationToken,
}

impl Common {
    async fn open(config: Config) -> Result<Common, StartError> {
        let settings = Arc::new(config.settings);
        crate::telemetry::handle();
        for tool in config.tools.all() {
            for warning in &tool.warnings {
                tracing::warn!(tool = %tool.id(), "{warning}");
            }
        }
        let data_dir = std::path::absolute(&settings.data_dir)?;
        crate::datadir::prepare(&data_dir)?;
        let store = open_store(&settings).await?;
        let blobs = open_blobs(&settings, &data_dir).await?;
        Ok(Common {
            settings,
            tools: Arc::new(config.tools),
            tiers: config.tiers,
            store,
            blobs,
            running: Arc::default(),
            stopping: CancellationToken::new(),
        })
    }

    async fn api(&self) -> Result<ApiState, StartError> {
        let signer = Signer::load(self.store.clone()).await?;
        Ok(ApiState::open(
            self.settings.clone(),
            self.tools.clone(),
            self.tiers.clone(),
            signer,
            self.store.clone(),
            self.blobs.clone(),
            self.running.clone(),
            self.stopping.clone(),
        )?)
    }

    async fn worker(&self) -> Result<WorkerState, StartError> {
        WorkerState::open(
            self.settings.clone(),
            self.tools.clone(),
            self.store.clone(),
            self.blobs.clone(),
            self.running.clone(),
            self.stopping.clone(),
        )
        .await
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

/// The blob store the settings name.
async fn open_blobs(
    settings: &Settings,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn BlobStore>, StartError> {
    let root = match settings.blobs.as_str() {
        "local" => data_dir.join("blobs"),
        url if crate::blobs::is_object_url(url) => return open_object_store(url).await,
        shared => PathBuf::from(shared),
    };
    Ok(Arc::new(LocalBlobStore::open(&root).await?))
}

#[cfg(feature = "object-store")]
async fn open_object_store(url: &str) -> Result<Arc<dyn BlobStore>, StartError> {
    let store = crate::blobs::object::ObjectBlobStore::open(url)?;
    store
        .ping()
        .await
        .map_err(|error| format!("blob storage {url} is not reachable: {error}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "object-store"))]
async fn open_object_store(_url: &str) -> Result<Arc<dyn BlobStore>, StartError> {
    Err(crate::config::missing_feature("blobs", "object-store").into())
}

/// Without keys, a server is open to anyone who can reach it: allowed on a loopback
/// address (a laptop), refused elsewhere unless `insecure_open` says it is meant.
async fn check_open_access(settings: &Settings, store: &dyn JobStore) -> Result<(), StartError> {
    if settings.auth == AuthMode::Required || store.has_keys().await? {
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

/// Whether a serving process runs jobs too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// The embedded pool (`serve`): one process does everything.
    Embedded,
    /// None (`serve --no-worker`): `batchgate worker` processes run the jobs.
    Elsewhere,
}

/// A built server, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    api: Arc<ApiState>,
    worker: Option<Arc<WorkerState>>,
    retention: Retention,
}

impl Application {
    pub async fn build(config: Config, workers: Workers) -> Result<Application, StartError> {
        let listen = config.settings.listen;
        let common = Common::open(config).await?;
        check_open_access(&common.settings, common.store.as_ref()).await?;
        let api = Arc::new(common.api().await?);
        let worker = match workers {
            Workers::Embedded => Some(Arc::new(common.worker().await?)),
            Workers::Elsewhere => None,
        };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
        Ok(Application {
            listener,
            retention: api.retention.clone(),
            api,
            worker,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// What the API's handlers work with (tests reach the store and the signer through
    /// it).
    pub fn api_state(&self) -> Arc<ApiState> {
        self.api.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let workers = match &self.worker {
            Some(worker) => {
                let count = worker.settings.worker_count();
                tracing::info!(workers = count, "embedded worker pool started");
                crate::worker::spawn_pool(worker.clone(), count, shutdown.clone())
            }
            None => Vec::new(),
        };
        let interval = Duration::from_secs_f64(self.api.settings.reaper_interval_seconds.max(0.05));
        let reaper = tokio::spawn(self.retention.run(interval, shutdown.clone()));
        let stopping = self.api.stopping.clone();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            signal.cancelled().await;
            stopping.cancel();
        });
        let router = crate::api::router(self.api.clone());
        let serving = async {
            let served =
                crate::api::serve(self.listener, router, &self.api.settings, shutdown.clone())
                    .await;
            shutdown.cancel();
            served
        };
        // The grace period of running jobs starts with the shutdown, not after the last
        // HTTP connection has drained (which may take up to its own 10 s).
        let draining = async {
            shutdown.cancelled().await;
            if let Some(worker) = &self.worker {
                crate::worker::drain(worker, workers).await;
            }
        };
        let (served, ()) = tokio::join!(serving, draining);
        reaper.abort();
        served
    }
}

/// `batchgate worker`: runs jobs from the shared store, without serving the API, until
/// `shutdown`; then lets running jobs finish (or hands them back) and returns.
pub async fn run_worker(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let common = Common::open(config).await?;
    let worker = Arc::new(common.worker().await?);
    let count = worker.settings.worker_count();
    tracing::info!(workers = count, store = %redact_url(&worker.settings.store), "worker started");
    let workers = crate::worker::spawn_pool(worker.clone(), count, shutdown.clone());
    shutdown.cancelled().await;
    worker.stopping.cancel();
    crate::worker::drain(&worker, workers).await;
    Ok(())
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
