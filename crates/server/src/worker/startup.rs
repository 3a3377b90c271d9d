//! A worker's start: it takes the work directory (a lock, then it stops the programs and
//! removes the directories a crashed predecessor left), adopts a single-node
//! predecessor's leases, and opens its executors and its pool of program users.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{UidPool, WorkerState};
use crate::blobs::BlobStore;
use crate::config::{ProgramUsers, SandboxMode, Settings};
use crate::executors::detached::Reference;
use crate::executors::local::LocalExecutor;
use crate::executors::slurm::SlurmExecutor;
use crate::executors::{Executors, JobLookup, LookupFailed, Standing};
use crate::running::RunningJobs;
use crate::store::JobStore;
use crate::tools::ToolRegistry;
use crate::workdirs::{parse_label, WorkDirs};
use crate::StartError;

impl WorkerState {
    /// Takes `data_dir/work` for this process (another worker there is refused) and opens
    /// what running jobs needs.
    pub async fn open(
        settings: Arc<Settings>,
        tools: Arc<ToolRegistry>,
        store: Arc<dyn JobStore>,
        blobs: Arc<dyn BlobStore>,
        running: Arc<RunningJobs>,
        stopping: CancellationToken,
    ) -> Result<WorkerState, StartError> {
        let data_dir = std::path::absolute(&settings.data_dir)?;
        let work_root = data_dir.join("work");
        crate::datadir::create_with_mode(&work_root, 0o711)?;
        let work_lock = lock_work_root(&work_root)?;
        take_over(&work_root, store.as_ref()).await?;
        // The demo analyzer, for a configuration that names `@DEMO_BIN@`.
        crate::demo::install(&data_dir)?;
        crate::config::check_programs(&tools, &data_dir)?;
        let uids = program_users(&settings, &data_dir)?;
        let work_dirs = WorkDirs::new(&work_root, settings.worker_count());
        let sandbox = match settings.sandbox {
            SandboxMode::None => None,
            SandboxMode::Bwrap => Some(crate::executors::sandbox::find_bwrap().ok_or(
                "`sandbox = \"bwrap\"` but bwrap is not installed (apt-get install bubblewrap)",
            )?),
        };
        let executors = open_executors(&settings, &data_dir, &work_root).await?;
        Ok(WorkerState {
            settings,
            tools,
            store,
            blobs,
            executors,
            running,
            work_dirs,
            uids,
            sandbox,
            data_dir,
            stopping,
            _work_lock: work_lock,
        })
    }
}

/// What a predecessor that crashed left: its programs (stopped), its leases on a
/// single-node store (adopted, whatever clock set them), its work directories (removed
/// unless an executor still follows the program).
async fn take_over(work_root: &Path, store: &dyn JobStore) -> Result<(), StartError> {
    let orphans = crate::executors::process::reap_orphans(work_root);
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "stopped programs left running by a previous server"
        );
    }
    let adopted = store
        .adopt_predecessor(store.now(), crate::jobs::MAX_BACKOFF)
        .await?;
    if adopted > 0 {
        tracing::info!(adopted, "took over the jobs a previous server left");
    }
    let abandoned = remove_abandoned(work_root, store).await;
    if abandoned > 0 {
        tracing::info!(
            abandoned,
            "removed work directories of attempts a previous server left"
        );
    }
    Ok(())
}

async fn open_executors(
    settings: &Settings,
    data_dir: &Path,
    work_root: &Path,
) -> Result<Executors, StartError> {
    let slurm = match &settings.slurm {
        Some(slurm) => Some(SlurmExecutor::open(slurm.clone()).await?),
        None => None,
    };
    // A section for an executor this binary was built without is refused when the
    // configuration is loaded (`config::missing_feature`).
    Ok(Executors {
        local: LocalExecutor::new(data_dir, work_root.to_owned()),
        slurm,
        #[cfg(feature = "containers")]
        container: match &settings.container {
            Some(container) => Some(
                crate::executors::container::ContainerExecutor::open(
                    container.clone(),
                    work_root.to_owned(),
                )
                .await?,
            ),
            None => None,
        },
        #[cfg(feature = "kubernetes")]
        kubernetes: match &settings.kubernetes {
            Some(kubernetes) => Some(
                crate::executors::kubernetes::KubernetesExecutor::open(kubernetes.clone()).await?,
            ),
            None => None,
        },
    })
}

/// One process runs jobs in a work directory: at start it stops the programs a previous
/// process left running there, which must never be another live worker's.
fn lock_work_root(work_root: &Path) -> Result<std::fs::File, StartError> {
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

/// The pool of uids local programs run as, or `None` when they run as the server's own
/// user (said in the log, with what that lets them reach). A pool needs the server to be
/// root, uids that belong to no account of this machine (every process of a job's uid is
/// killed when the job ends), and a data directory other users can pass through.
fn program_users(settings: &Settings, data_dir: &Path) -> Result<Option<UidPool>, StartError> {
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

/// Removes, at start, the work directories that attempts of a crashed or killed
/// predecessor left in `work_root` (inputs, control file, logs: they must not outlive
/// their job's retention), keeping only those of programs an executor still follows (the
/// job's `executor_ref` names the directory). Nothing runs in `work_root` yet: the
/// process holds its lock and has stopped the predecessor's programs. Returns how many
/// were removed.
async fn remove_abandoned(work_root: &Path, store: &dyn JobStore) -> usize {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some((id, _)) = entry.file_name().to_str().and_then(parse_label) else {
            continue;
        };
        let followed = match store.get(id).await {
            Ok(Some(job)) => job.executor_ref.as_deref().is_some_and(|text| {
                serde_json::from_str::<Reference>(text)
                    .is_ok_and(|reference| reference.workdir == entry.path())
            }),
            Ok(None) => false,
            // A store that does not answer keeps everything until the next start.
            Err(_) => return removed,
        };
        if !followed {
            crate::workdirs::remove(&entry.path()).await;
            removed += 1;
        }
    }
    removed
}

/// The store as executors may see it (`JobLookup`): how a job stands, nothing else.
pub(super) struct StoreLookup(pub(super) Arc<dyn JobStore>);

#[async_trait]
impl JobLookup for StoreLookup {
    async fn standing(&self, id: Uuid) -> Result<Option<Standing>, LookupFailed> {
        match self.0.get(id).await {
            Ok(job) => Ok(job.map(|job| Standing {
                ended: job.state.is_terminal(),
                attempt: job.attempt,
                executor_ref: job.executor_ref,
            })),
            Err(_) => Err(LookupFailed),
        }
    }
}
