//! `LocalExecutor`: the attempt runs as a child process of this server.

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{process, Executor, ExecutorError, RunOutcome, RunSpec};
use crate::jobs::Progress;

#[derive(Debug, Default)]
pub struct LocalExecutor;

#[async_trait]
impl Executor for LocalExecutor {
    async fn run(
        &self,
        spec: RunSpec,
        progress: watch::Sender<Option<Progress>>,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, ExecutorError> {
        process::run(spec, progress, cancel).await
    }
}
