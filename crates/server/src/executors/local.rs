//! `LocalExecutor`: the attempt runs as a child process of this server.

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{process, Executor, ExecutorError, RunOutcome, RunSpec};
use crate::jobs::Progress;

#[derive(Debug, Default)]
pub struct LocalExecutor {
    /// `batchgate-limits`, which sets a program's resource limits before it starts.
    limits: Option<std::path::PathBuf>,
}

impl LocalExecutor {
    /// Installs `batchgate-limits` under `data_dir`. Without it (the install failed),
    /// limits are set with prlimit(2) right after the program starts.
    pub fn new(data_dir: &std::path::Path) -> LocalExecutor {
        let limits =
            crate::embedded::install(data_dir, "batchgate-limits", crate::embedded::LIMITS)
                .inspect_err(|error| {
                    tracing::warn!(%error, "cannot install batchgate-limits; limits will be set after each program starts");
                })
                .ok();
        LocalExecutor { limits }
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    async fn run(
        &self,
        spec: RunSpec,
        progress: watch::Sender<Option<Progress>>,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError> {
        process::run(spec, self.limits.as_deref(), progress, cancel).await
    }
}
