//! `LocalExecutor`: the attempt runs as a child process of this server.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{process, Executor, ExecutorError, RunControl, RunOutcome, RunSpec};

#[derive(Debug)]
pub struct LocalExecutor {
    /// `batchgate-limits`, which sets a program's resource limits before it starts.
    limits: Option<std::path::PathBuf>,
    work_root: std::path::PathBuf,
}

impl LocalExecutor {
    /// Installs `batchgate-limits` under `data_dir`. Without it (the install failed),
    /// limits are set with prlimit(2) right after the program starts.
    pub fn new(data_dir: &std::path::Path, work_root: std::path::PathBuf) -> LocalExecutor {
        let limits =
            crate::embedded::install(data_dir, "batchgate-limits", crate::embedded::LIMITS)
                .inspect_err(|error| {
                    tracing::warn!(%error, "cannot install batchgate-limits; limits will be set after each program starts");
                })
                .ok();
        LocalExecutor { limits, work_root }
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    async fn run(&self, spec: RunSpec, control: RunControl) -> Result<RunOutcome, ExecutorError> {
        // A child process cannot outlive this worker: detaching stops it too.
        let stop = CancellationToken::new();
        let RunControl {
            progress,
            cancel,
            detach,
            ..
        } = control;
        let relay = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = detach.cancelled() => {}
                }
                stop.cancel();
            })
        };
        let outcome = process::run(spec, self.limits.as_deref(), progress, stop).await;
        relay.abort();
        outcome
    }

    fn work_root(&self) -> &std::path::Path {
        &self.work_root
    }

    fn on_this_host(&self) -> bool {
        true
    }
}
