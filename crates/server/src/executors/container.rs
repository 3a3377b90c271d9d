//! `ContainerExecutor`: each attempt runs in a container of the tool's image, through the
//! Docker-compatible engine API (podman's `podman system service`, or Docker) with
//! `bollard`.
//!
//! The attempt's work directory is bind-mounted at `/work`; the program is the image's
//! command replaced by the tool's argv (entrypoint = argv[0], no shell); its environment is
//! the worker's allowlist; no network unless the tool asks for one; memory (without swap),
//! CPUs, processes and rlimits from the tool; all capabilities dropped, no new privileges,
//! a read-only image with a private `/tmp`; it runs as the worker's own uid so that what it
//! writes stays the worker's. stdout and stderr come from the engine's log stream and are
//! captured like a local program's. Cancel and timeout stop the container (TERM, the tool's
//! grace, KILL); it is removed afterwards. The container's name is recorded with the
//! attempt, so a worker taking the job over re-attaches to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::detached::{attempt_label, job_ended, parse_label, Reference};
use super::{Executor, ExecutorError, JobLookup, RunControl, RunOutcome, RunSpec, Termination};
use crate::config::ContainerSettings;
use crate::tools::decl::{ContainerDecl, ProgressStream};

/// This executor's name in the references it records.
const EXECUTOR: &str = "container";
/// Where the work directory appears inside the container.
pub const WORKDIR_IN_CONTAINER: &str = "/work";
/// A call to the engine that is not a stream must answer within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ContainerExecutor {
    docker: Docker,
    settings: ContainerSettings,
    work_root: PathBuf,
    /// `uid:gid` of this worker: the default user inside the container.
    user: String,
}

impl ContainerExecutor {
    /// Connects to the engine and checks that it answers.
    pub async fn open(
        settings: ContainerSettings,
        work_root: PathBuf,
    ) -> Result<ContainerExecutor, String> {
        // Streams (logs, wait) last as long as the program: the client's own timeout is
        // a day, and each plain call gets `CALL_TIMEOUT` here.
        let day = 24 * 3600;
        let docker = if settings.engine.is_empty() {
            Docker::connect_with_local_defaults()
        } else {
            Docker::connect_with_socket(&settings.engine, day, bollard::API_DEFAULT_VERSION)
        }
        .map_err(|error| format!("[container] engine: {error}"))?
        .with_timeout(Duration::from_secs(day));
        call(docker.ping()).await.map_err(|error| {
            format!(
                "[container] engine `{}` does not answer: {error}",
                settings.engine
            )
        })?;
        let user = format!(
            "{}:{}",
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw()
        );
        Ok(ContainerExecutor {
            docker,
            settings,
            work_root,
            user,
        })
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs_f64(self.settings.sweep_interval_seconds)
    }

    fn reference_of(&self, reference: &str) -> Option<Reference> {
        Reference::parse(reference, EXECUTOR, &self.work_root, |id| {
            id.starts_with("batchgate-")
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    }

    /// Creates and starts the container; its name, or how starting failed.
    async fn start(&self, spec: &RunSpec, image: &ContainerDecl) -> Result<String, Started> {
        let label = attempt_label(&spec.workdir);
        let name = format!("batchgate-{label}");
        let exists = call(self.docker.inspect_image(&image.image)).await;
        if let Err(error) = exists {
            return Err(if is_not_found(&error) {
                Started::Refused {
                    not_found: true,
                    message: format!(
                        "the image `{}` is not on the container engine (pull or load it there)",
                        image.image
                    ),
                }
            } else {
                Started::Transient(error)
            });
        }
        // A container of the same attempt left by a crash is replaced.
        let _ = self.remove(&name).await;
        let limits = &spec.rlimits;
        let ulimits = ulimits(limits);
        let read_only = image.read_only.unwrap_or(true);
        let host = HostConfig {
            binds: Some(vec![format!(
                "{}:{WORKDIR_IN_CONTAINER}:rw",
                spec.workdir.display()
            )]),
            network_mode: Some(if image.network { "bridge" } else { "none" }.to_owned()),
            memory: limits.memory_bytes.map(|bytes| bytes as i64),
            memory_swap: limits.memory_bytes.map(|bytes| bytes as i64),
            nano_cpus: image.cpus.map(|cpus| (cpus * 1e9) as i64),
            pids_limit: limits.processes.map(|count| count as i64),
            ulimits: Some(ulimits),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            readonly_rootfs: Some(read_only),
            tmpfs: read_only
                .then(|| HashMap::from([("/tmp".to_owned(), "rw,size=256m".to_owned())])),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.image.clone()),
            entrypoint: Some(spec.argv[..1].to_vec()),
            cmd: Some(spec.argv[1..].to_vec()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(WORKDIR_IN_CONTAINER.to_owned()),
            user: Some(image.user.clone().unwrap_or_else(|| self.user.clone())),
            labels: Some(HashMap::from([
                ("batchgate.label".to_owned(), self.settings.label.clone()),
                ("batchgate.attempt".to_owned(), label),
            ])),
            network_disabled: Some(!image.network),
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        call(self.docker.create_container(Some(options), body))
            .await
            .map_err(|error| Started::Refused {
                not_found: false,
                message: format!("the container engine refused the container: {error}"),
            })?;
        if let Err(error) = call(self.docker.start_container(&name, None)).await {
            let _ = self.remove(&name).await;
            let text = error.to_string();
            let not_found = text.contains("not found") || text.contains("no such file");
            return Err(Started::Refused {
                not_found,
                message: format!(
                    "cannot start `{}` in `{}`: {text}",
                    spec.argv[0], image.image
                ),
            });
        }
        Ok(name)
    }

    async fn stop(&self, name: &str, grace: Duration) {
        let options = StopContainerOptions {
            t: Some(grace.as_secs().max(1) as i32),
            ..Default::default()
        };
        let bound = grace + CALL_TIMEOUT;
        match tokio::time::timeout(bound, self.docker.stop_container(name, Some(options))).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(container = name, %error, "cannot stop the container"),
            Err(_) => tracing::warn!(container = name, "stopping the container timed out"),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), bollard::errors::Error> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        call(self.docker.remove_container(name, Some(options))).await
    }

    /// The container's end: its exit status, and whether the kernel killed it for memory.
    async fn ended(&self, name: &str) -> Result<(i64, bool), bollard::errors::Error> {
        let inspected = call(self.docker.inspect_container(name, None)).await?;
        let state = inspected.state.unwrap_or_default();
        Ok((
            state.exit_code.unwrap_or(-1),
            state.oom_killed.unwrap_or(false),
        ))
    }

    /// Follows the container to its end.
    async fn follow(
        &self,
        name: &str,
        spec: &RunSpec,
        control: &RunControl,
        overflow: &super::process::Overflow,
    ) -> Result<Termination, String> {
        let mut wait = Box::pin(self.docker.wait_container(name, None));
        let ended = tokio::select! {
            biased;
            () = control.detach.cancelled() => return Ok(Termination::Detached),
            () = control.cancel.cancelled() => Some(Termination::Canceled),
            stream = overflow.stream() => Some(Termination::OutputTooLarge { stream }),
            () = tokio::time::sleep(spec.timeout) => Some(Termination::TimedOut),
            status = wait.next() => match status {
                // A non-zero status arrives as an error; `ended` reads it either way.
                Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => None,
                Some(Err(error)) => return Err(format!("waiting for the container: {error}")),
                None => return Err("the engine closed the wait".into()),
            },
        };
        if let Some(stopped) = ended {
            self.stop(name, spec.kill_grace).await;
            return Ok(stopped);
        }
        let (status, oom_killed) = self
            .ended(name)
            .await
            .map_err(|error| format!("inspecting the container: {error}"))?;
        Ok(match status {
            _ if oom_killed => Termination::OutOfMemory,
            // The engine reports a program killed by signal n as 128 + n (there is no
            // other way to tell; a program that exits with 137 itself reads as killed).
            129..=159 => Termination::Signaled(status as i32 - 128),
            _ => Termination::Exited(status as i32),
        })
    }
}

enum Started {
    Transient(bollard::errors::Error),
    Refused { not_found: bool, message: String },
}

fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// This process's hard limit of `resource` (unlimited: `u64::MAX`).
fn own_hard_limit(resource: rustix::process::Resource) -> u64 {
    rustix::process::getrlimit(resource)
        .maximum
        .unwrap_or(u64::MAX)
}

/// A plain call to the engine, bounded by `CALL_TIMEOUT`.
/// The container's rlimits, every one explicitly: an engine fills in the rest from its own
/// defaults, which may exceed what it may set (podman's nproc does, on these hosts).
/// RLIMIT_NPROC counts all processes of the uid on the host (the worker's own included),
/// so it stays generous; the tool's process cap is the pids limit.
fn ulimits(limits: &super::ResourceLimits) -> Vec<ResourcesUlimits> {
    let nproc = 4096.min(own_hard_limit(rustix::process::Resource::Nproc));
    let nofile = limits
        .open_files
        .unwrap_or(1024)
        .min(own_hard_limit(rustix::process::Resource::Nofile));
    [
        ("core", Some(0)),
        ("cpu", limits.cpu_seconds),
        ("fsize", limits.file_size_bytes),
        ("nofile", Some(nofile)),
        ("nproc", Some(nproc)),
    ]
    .into_iter()
    .filter_map(|(name, value)| {
        value.map(|value| ResourcesUlimits {
            name: Some(name.to_owned()),
            soft: Some(value as i64),
            hard: Some(value as i64),
        })
    })
    .collect()
}

async fn call<T>(
    future: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, bollard::errors::Error> {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .unwrap_or(Err(bollard::errors::Error::RequestTimeoutError))
}

#[async_trait]
impl Executor for ContainerExecutor {
    async fn run(&self, spec: RunSpec, control: RunControl) -> Result<RunOutcome, ExecutorError> {
        let started = Instant::now();
        let outcome = RunOutcome::bare;
        let Some(image) = &spec.container else {
            return Err(ExecutorError::Engine("the tool names no image".into()));
        };
        let name = match spec.attach.as_deref().and_then(|r| self.reference_of(r)) {
            Some(reference) => {
                tracing::info!(container = %reference.id, "re-attached to a running container");
                reference.id
            }
            None => match self.start(&spec, image).await {
                Ok(name) => {
                    Reference::record(&control, EXECUTOR, &name, &spec.workdir).await;
                    name
                }
                Err(Started::Transient(error)) => {
                    return Err(ExecutorError::Engine(format!("container engine: {error}")))
                }
                Err(Started::Refused { not_found, message }) => {
                    return Ok(outcome(
                        Termination::SpawnFailed { not_found, message },
                        started.elapsed(),
                    ))
                }
            },
        };

        // The engine's log stream, split into the two captures a local program has.
        let overflow = super::process::Overflow::default();
        let progress_on = |stream: ProgressStream| {
            spec.progress
                .clone()
                .filter(|p| p.stream == ProgressStream::Both || p.stream == stream)
        };
        let (stdout_writer, stdout_reader) = tokio::io::duplex(64 * 1024);
        let (stderr_writer, stderr_reader) = tokio::io::duplex(64 * 1024);
        let stdout_task = tokio::spawn(super::process::capture(
            stdout_reader,
            tokio::fs::File::create(&spec.stdout_path).await?,
            spec.stdout_cap,
            progress_on(ProgressStream::Stdout),
            control.progress.clone(),
            false,
            overflow.stdout.clone(),
        ));
        let stderr_task = tokio::spawn(super::process::capture(
            stderr_reader,
            tokio::fs::File::create(&spec.stderr_path).await?,
            spec.stderr_cap,
            progress_on(ProgressStream::Stderr),
            control.progress.clone(),
            true,
            overflow.stderr.clone(),
        ));
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let logs = self.docker.logs(&name, Some(options));
        let pump = tokio::spawn(pump_logs(logs, stdout_writer, stderr_writer));

        let termination = self.follow(&name, &spec, &control, &overflow).await;
        if matches!(termination, Ok(Termination::Detached)) {
            pump.abort();
            stdout_task.abort();
            stderr_task.abort();
            return Ok(outcome(Termination::Detached, started.elapsed()));
        }
        // The log stream ends with the container; bounded in case the engine keeps it open.
        let _ = tokio::time::timeout(Duration::from_secs(10), pump).await;
        let (stdout_truncated, _) = super::process::join_capture(stdout_task).await;
        let (_, stderr_tail) = super::process::join_capture(stderr_task).await;
        if let Err(error) = self.remove(&name).await {
            tracing::warn!(container = %name, %error, "cannot remove the container");
        }
        let termination = termination.map_err(ExecutorError::Engine)?;
        Ok(RunOutcome {
            stderr_tail,
            stdout_truncated,
            ..outcome(termination, started.elapsed())
        })
    }

    fn work_root(&self) -> &Path {
        &self.work_root
    }

    fn program_workdir(&self, _workdir: &Path) -> PathBuf {
        PathBuf::from(WORKDIR_IN_CONTAINER)
    }

    async fn locate(&self, reference: &str) -> Option<PathBuf> {
        let reference = self.reference_of(reference)?;
        call(self.docker.inspect_container(&reference.id, None))
            .await
            .ok()?;
        tokio::fs::try_exists(&reference.workdir)
            .await
            .unwrap_or(false)
            .then_some(reference.workdir)
    }

    /// Containers are found through the work directories of ended jobs (their names
    /// follow from the directory's): listing the engine's containers is not portable
    /// (podman reports states Docker's API does not have, which bollard refuses).
    async fn sweep(&self, jobs: &dyn JobLookup) -> usize {
        let Ok(mut entries) = tokio::fs::read_dir(&self.work_root).await else {
            return 0;
        };
        let mut swept = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let label = entry.file_name().to_string_lossy().into_owned();
            let Some((job_id, _)) = parse_label(&label) else {
                continue;
            };
            if !job_ended(jobs, job_id).await {
                continue;
            }
            let name = format!("batchgate-{label}");
            match self.remove(&name).await {
                Ok(()) => {
                    tracing::info!(container = %name, "removed a container whose job has ended");
                    swept += 1;
                }
                Err(error) if is_not_found(&error) => {}
                // Still there: try again at the next sweep, directory included.
                Err(_) => continue,
            }
            if tokio::fs::remove_dir_all(entry.path()).await.is_ok() {
                swept += 1;
            }
        }
        swept
    }
}

/// Copies the engine's log stream to the two captures until it ends.
async fn pump_logs(
    mut logs: impl futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>>
        + Unpin,
    mut stdout: tokio::io::DuplexStream,
    mut stderr: tokio::io::DuplexStream,
) {
    use bollard::container::LogOutput;
    while let Some(Ok(chunk)) = logs.next().await {
        let (sink, bytes) = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (&mut stdout, message)
            }
            LogOutput::StdErr { message } => (&mut stderr, message),
            LogOutput::StdIn { .. } => continue,
        };
        if sink.write_all(&bytes).await.is_err() {
            break;
        }
    }
}
