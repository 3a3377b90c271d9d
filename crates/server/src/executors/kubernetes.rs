//! `KubernetesExecutor`: each attempt is one `batch/v1` Job (the `kube` and
//! `k8s-openapi` crates).
//!
//! The attempt's work directory is made under `[kubernetes] work_dir`, where this worker
//! mounts the volume (a PVC: NFS, Azure Files, CephFS…) that the Job's pod mounts at
//! `/work` with the directory as its `subPath`. The Job: the tool's image, the argv as
//! command and args (no shell), the allowlisted environment, requests = limits from the
//! tool, `activeDeadlineSeconds` = its timeout + `start_allowance_seconds` (the program's
//! own timeout counts from the moment its container runs, so that pods waiting to be
//! scheduled under load do not fail as timeouts), `backoffLimit: 0` (batchgate owns
//! retries), no service-account token, no privilege escalation, all capabilities dropped,
//! labels naming the job and attempt. The executor watches the Job until it completes or
//! fails, reads the pod for the reason (exit code, `OOMKilled`, evicted, deadline) and its
//! log, then deletes the Job with its pods. The Job's name is recorded with the attempt;
//! a worker taking the job over finds the Job by its labels and follows it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use kube::Api;
use serde_json::json;
use uuid::Uuid;

use super::detached::{attempt_label, parse_label, still_wanted, Reference};
use super::{Executor, ExecutorError, JobLookup, RunControl, RunOutcome, RunSpec, Termination};
use crate::config::KubernetesSettings;

/// This executor's name in the references it records.
const EXECUTOR: &str = "kubernetes";
/// Where the work directory appears in the pod.
pub const WORKDIR_IN_POD: &str = "/work";
/// Label keys on every Job and pod batchgate makes.
const LABEL: &str = "batchgate.dev/label";
const JOB_LABEL: &str = "batchgate.dev/job";
const ATTEMPT_LABEL: &str = "batchgate.dev/attempt";
/// A watch is renewed this often (the API server ends watches on its own schedule too).
const WATCH_SECONDS: u32 = 60;

pub struct KubernetesExecutor {
    jobs: Api<Job>,
    pods: Api<Pod>,
    settings: KubernetesSettings,
}

impl KubernetesExecutor {
    /// Connects with `[kubernetes] url` (no credentials: a proxy such as `kubectl proxy`,
    /// or a test server), else the in-cluster service account or the kubeconfig.
    pub async fn open(settings: KubernetesSettings) -> Result<KubernetesExecutor, String> {
        std::fs::create_dir_all(&settings.work_dir).map_err(|error| {
            format!(
                "[kubernetes] work_dir {}: cannot create it: {error}",
                settings.work_dir.display()
            )
        })?;
        let config = match &settings.url {
            Some(url) => kube::Config::new(
                url.parse()
                    .map_err(|error| format!("[kubernetes] url `{url}`: {error}"))?,
            ),
            None => kube::Config::infer()
                .await
                .map_err(|error| format!("[kubernetes]: no cluster configuration: {error}"))?,
        };
        let namespace = settings
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client =
            kube::Client::try_from(config).map_err(|error| format!("[kubernetes]: {error}"))?;
        Ok(KubernetesExecutor {
            jobs: Api::namespaced(client.clone(), &namespace),
            pods: Api::namespaced(client, &namespace),
            settings,
        })
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs_f64(self.settings.sweep_interval_seconds)
    }

    fn reference_of(&self, reference: &str) -> Option<Reference> {
        Reference::parse(reference, EXECUTOR, &self.settings.work_dir, |id| {
            id.starts_with("batchgate-")
        })
    }

    /// The Job of one attempt.
    fn manifest(&self, spec: &RunSpec, name: &str) -> Result<Job, String> {
        let Some(tool) = &spec.kubernetes else {
            return Err("the tool names no image".into());
        };
        let label = attempt_label(&spec.workdir);
        let (job_id, attempt) =
            parse_label(&label).ok_or_else(|| format!("unexpected work directory {label}"))?;
        let labels = json!({
            LABEL: self.settings.label,
            JOB_LABEL: job_id.to_string(),
            ATTEMPT_LABEL: attempt.to_string(),
        });
        let mut resources = BTreeMap::new();
        if let Some(bytes) = spec.rlimits.memory_bytes {
            resources.insert("memory", format!("{}Mi", bytes.div_ceil(1024 * 1024)));
        }
        if let Some(cpu) = &tool.cpu {
            resources.insert("cpu", cpu.clone());
        }
        let env: Vec<_> = spec
            .env
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        let mut pod_spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "program",
                "image": tool.image,
                "command": spec.argv[..1],
                "args": spec.argv[1..],
                "workingDir": WORKDIR_IN_POD,
                "env": env,
                "resources": {"limits": resources, "requests": resources},
                "volumeMounts": [{"name": "work", "mountPath": WORKDIR_IN_POD, "subPath": label}],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
            "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": self.settings.pvc}}],
        });
        if let Some(account) = &self.settings.service_account {
            pod_spec["serviceAccountName"] = json!(account);
        }
        let job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": self.job_deadline(spec).as_secs().max(1),
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        });
        serde_json::from_value(job).map_err(|error| format!("the Job manifest: {error}"))
    }

    /// The Job's own deadline: the program's timeout and the time its pod may take to
    /// start.
    fn job_deadline(&self, spec: &RunSpec) -> Duration {
        spec.timeout + Duration::from_secs(self.settings.start_allowance_seconds)
    }

    /// Follows Job `name` to its end (watching it, renewing the watch as needed). The
    /// program's timeout counts from when its container is first seen running.
    async fn follow(&self, name: &str, spec: &RunSpec, control: &RunControl) -> Termination {
        // Kubernetes enforces the Job's deadline; this is a backstop if it does not.
        let backstop =
            tokio::time::sleep(self.job_deadline(spec) + spec.kill_grace + Duration::from_secs(60));
        tokio::pin!(backstop);
        let mut started: Option<Instant> = None;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(WATCH_SECONDS);
            let mut events = match self.jobs.watch(&params, "0").await {
                Ok(events) => events.boxed(),
                Err(error) => {
                    tracing::warn!(k8s_job = name, %error, "cannot watch the Job");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                let event = tokio::select! {
                    biased;
                    () = control.detach.cancelled() => return Termination::Detached,
                    () = control.cancel.cancelled() => {
                        self.delete(name).await;
                        return Termination::Canceled;
                    }
                    () = &mut backstop => {
                        self.delete(name).await;
                        return Termination::TimedOut;
                    }
                    _ = ticker.tick() => {
                        match started {
                            Some(at) if at.elapsed() >= spec.timeout => {
                                self.delete(name).await;
                                return Termination::TimedOut;
                            }
                            Some(_) => {}
                            None if self.pod_running(name).await => started = Some(Instant::now()),
                            None => {}
                        }
                        continue;
                    }
                    event = events.try_next() => event,
                };
                match event {
                    Ok(Some(WatchEvent::Added(job) | WatchEvent::Modified(job))) => {
                        if let Some(ended) = job_ended(&job) {
                            return self.ended(name, ended, started.is_some()).await;
                        }
                    }
                    Ok(Some(WatchEvent::Deleted(_))) => {
                        return pod_lost(name, "the Job was deleted")
                    }
                    Ok(Some(WatchEvent::Bookmark(_))) => {}
                    Ok(Some(WatchEvent::Error(error))) => {
                        tracing::debug!(k8s_job = name, ?error, "the watch ended");
                        break;
                    }
                    // The server ended the watch: look, then watch again.
                    Ok(None) | Err(_) => break,
                }
            }
            match self.jobs.get_opt(name).await {
                Ok(None) => return pod_lost(name, "the Job was deleted"),
                Ok(Some(job)) => {
                    if let Some(ended) = job_ended(&job) {
                        return self.ended(name, ended, started.is_some()).await;
                    }
                }
                Err(error) => tracing::warn!(k8s_job = name, %error, "cannot read the Job"),
            }
        }
    }

    /// Whether the Job's pod has a container that runs or ran.
    async fn pod_running(&self, name: &str) -> bool {
        let Some(pod) = self.pod_of(name).await else {
            return false;
        };
        pod.status
            .as_ref()
            .and_then(|status| status.container_statuses.as_ref())
            .and_then(|statuses| statuses.first())
            .and_then(|container| container.state.as_ref())
            .is_some_and(|state| state.running.is_some() || state.terminated.is_some())
    }

    /// Maps an ended Job (and its pod) to a termination. `started`: the program was seen
    /// running.
    async fn ended(&self, name: &str, ended: JobEnd, started: bool) -> Termination {
        if ended == JobEnd::DeadlineExceeded {
            if started || self.pod_running(name).await {
                return Termination::TimedOut;
            }
            return Termination::Engine {
                code: "not-started",
                message: format!(
                    "the Job's pod was not started within {} s (start_allowance_seconds)",
                    self.settings.start_allowance_seconds
                ),
                retry: true,
            };
        }
        let pod = self.pod_of(name).await;
        let status = pod.as_ref().and_then(|pod| pod.status.as_ref());
        if status.and_then(|s| s.reason.as_deref()) == Some("Evicted") {
            let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
            return pod_lost(name, &format!("the pod was evicted ({message})"));
        }
        let terminated = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|statuses| statuses.first())
            .and_then(|container| container.state.as_ref())
            .and_then(|state| state.terminated.as_ref());
        match terminated {
            Some(terminated) if terminated.reason.as_deref() == Some("OOMKilled") => {
                Termination::OutOfMemory
            }
            Some(terminated) => match terminated.exit_code {
                // The runtime reports a program killed by signal n as 128 + n.
                code @ 129..=159 => Termination::Signaled(code - 128),
                code => Termination::Exited(code),
            },
            None if ended == JobEnd::Complete => Termination::Exited(0),
            None => pod_lost(name, "its pod ended without a container status"),
        }
    }

    async fn pod_of(&self, name: &str) -> Option<Pod> {
        let params = ListParams::default().labels(&format!("job-name={name}"));
        let pods = self.pods.list(&params).await.ok()?;
        pods.items.into_iter().next()
    }

    /// Deletes the Job and its pods.
    async fn delete(&self, name: &str) {
        match self.jobs.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(response)) if response.code == 404 => {}
            Err(error) => tracing::warn!(k8s_job = name, %error, "cannot delete the Job"),
        }
    }

    /// The pod's log (both streams: Kubernetes interleaves them), capped, into `path`.
    async fn save_log(&self, name: &str, path: &Path, cap: u64) -> (bool, String) {
        let Some(pod) = self.pod_of(name).await else {
            return (false, String::new());
        };
        let pod_name = pod.metadata.name.unwrap_or_default();
        let log = self
            .pods
            .logs(&pod_name, &LogParams::default())
            .await
            .unwrap_or_default();
        let bytes = log.as_bytes();
        let truncated = bytes.len() as u64 > cap;
        let kept = &bytes[..bytes.len().min(cap as usize)];
        if let Err(error) = tokio::fs::write(path, kept).await {
            tracing::warn!(k8s_job = name, %error, "cannot save the pod's log");
        }
        let tail_start = bytes
            .len()
            .saturating_sub(super::process::STDERR_TAIL_BYTES);
        let tail = String::from_utf8_lossy(&bytes[tail_start..]);
        (truncated, super::process::last_lines(&tail, 20))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobEnd {
    Complete,
    Failed,
    DeadlineExceeded,
}

/// Whether the Job has ended, from its conditions.
fn job_ended(job: &Job) -> Option<JobEnd> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|condition| condition.status == "True")
        .find_map(|condition| match condition.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => Some(JobEnd::Complete),
            "Failed" if condition.reason.as_deref() == Some("DeadlineExceeded") => {
                Some(JobEnd::DeadlineExceeded)
            }
            "Failed" | "FailureTarget" => Some(JobEnd::Failed),
            _ => None,
        })
}

fn pod_lost(name: &str, why: &str) -> Termination {
    Termination::Engine {
        code: "pod-lost",
        message: format!("Kubernetes Job {name}: {why}; the job is run again"),
        retry: true,
    }
}

#[async_trait]
impl Executor for KubernetesExecutor {
    async fn run(&self, spec: RunSpec, control: RunControl) -> Result<RunOutcome, ExecutorError> {
        let started = Instant::now();
        let outcome = RunOutcome::bare;
        let name = match spec.attach.as_deref().and_then(|r| self.reference_of(r)) {
            Some(reference) => {
                tracing::info!(k8s_job = %reference.id, "re-attached to a running Kubernetes Job");
                reference.id
            }
            None => {
                let name = format!("batchgate-{}", attempt_label(&spec.workdir));
                let job = self.manifest(&spec, &name).map_err(ExecutorError::Engine)?;
                // A Job of the same attempt left by a crash is replaced.
                self.delete(&name).await;
                match self.jobs.create(&PostParams::default(), &job).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(response))
                        if (400..500).contains(&response.code)
                            && response.code != 409
                            && response.code != 429 =>
                    {
                        let message = format!("Kubernetes refused the Job: {}", response.message);
                        return Ok(outcome(
                            Termination::SpawnFailed {
                                not_found: false,
                                message,
                            },
                            started.elapsed(),
                        ));
                    }
                    Err(error) => {
                        return Err(ExecutorError::Engine(format!(
                            "creating the Kubernetes Job: {error}"
                        )))
                    }
                }
                Reference::record(&control, EXECUTOR, &name, &spec.workdir).await;
                name
            }
        };
        let termination = self.follow(&name, &spec, &control).await;
        if termination == Termination::Detached {
            return Ok(outcome(termination, started.elapsed()));
        }
        let (_, stderr_tail) = self
            .save_log(&name, &spec.stderr_path, spec.stderr_cap)
            .await;
        self.delete(&name).await;
        Ok(RunOutcome {
            stderr_tail,
            ..outcome(termination, started.elapsed())
        })
    }

    fn work_root(&self) -> &Path {
        &self.settings.work_dir
    }

    fn program_workdir(&self, _workdir: &Path) -> PathBuf {
        PathBuf::from(WORKDIR_IN_POD)
    }

    /// The Job is looked up by its labels (job and attempt), as a restarted worker that
    /// did not record its name would.
    async fn locate(&self, reference: &str) -> Option<PathBuf> {
        let reference = self.reference_of(reference)?;
        let (job_id, attempt) = parse_label(&attempt_label(&reference.workdir))?;
        let selector = format!(
            "{LABEL}={},{JOB_LABEL}={job_id},{ATTEMPT_LABEL}={attempt}",
            self.settings.label
        );
        let found = self
            .jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        let exists = found
            .items
            .iter()
            .any(|job| job.metadata.name.as_deref() == Some(reference.id.as_str()));
        exists.then_some(reference.workdir)
    }

    async fn sweep(&self, jobs: &dyn JobLookup) -> usize {
        let selector = format!("{LABEL}={}", self.settings.label);
        let found = match self
            .jobs
            .list(&ListParams::default().labels(&selector))
            .await
        {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "cannot list Kubernetes Jobs to clean up");
                return 0;
            }
        };
        let mut swept = 0;
        for job in found.items {
            let labels = job.metadata.labels.clone().unwrap_or_default();
            let (Some(job_id), Some(attempt)) = (
                labels
                    .get(JOB_LABEL)
                    .and_then(|id| Uuid::parse_str(id).ok()),
                labels
                    .get(ATTEMPT_LABEL)
                    .and_then(|n| n.parse::<u32>().ok()),
            ) else {
                continue;
            };
            let name = job.metadata.name.clone().unwrap_or_default();
            if still_wanted(jobs, job_id, attempt, EXECUTOR, &name).await {
                continue;
            }
            tracing::info!(k8s_job = %name, "deleting a Kubernetes Job whose job has ended");
            self.delete(&name).await;
            swept += 1;
            let workdir = self.settings.work_dir.join(format!("{job_id}-{attempt}"));
            if tokio::fs::remove_dir_all(&workdir).await.is_ok() {
                swept += 1;
            }
        }
        swept
    }
}
