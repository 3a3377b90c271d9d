//! A FAKE Kubernetes API server (and kubelet) for the Kubernetes executor's tests: no real
//! API server can run on these machines. It answers the few endpoints the executor uses
//! with documents shaped like the real API's (batch/v1 Job, v1 Pod and PodList, watch
//! events, Status), as documented in the Kubernetes API reference:
//!
//! - `POST/GET/DELETE /apis/batch/v1/namespaces/{ns}/jobs[/{name}]`, list with
//!   `labelSelector`, and `?watch=true` (newline-delimited `WatchEvent`s);
//! - `GET /api/v1/namespaces/{ns}/pods?labelSelector=…` and `…/pods/{name}/log`.
//!
//! The fake kubelet "runs" a Job's pod by its image:
//! - `fake.local/run`: the container's command runs as a LOCAL process, with `/work`
//!   mapped to the volume's sub-directory under `share` (so outputs are real files);
//! - `fake.local/oom`: the container is `OOMKilled` (exit 137);
//! - `fake.local/evicted`: the pod is evicted (phase Failed, reason Evicted, no
//!   container state);
//! - `fake.local/deadline`: runs until `activeDeadlineSeconds`, then the Job fails with
//!   `DeadlineExceeded`;
//! - `fake.local/hang`: runs until the Job is deleted.
//! - `fake.local/slow-start`: the pod waits 2.5 s to be "scheduled", then runs like
//!   `fake.local/run`; as the real Job controller does, `activeDeadlineSeconds` counts
//!   from the Job's start, so a deadline shorter than the wait fails the Job first.
//!
//! What it does not model: scheduling, image pulls, resource enforcement, admission,
//! authentication, resourceVersion semantics beyond a counter.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(Clone)]
pub struct FakeKubernetes {
    pub url: String,
    state: Arc<Shared>,
}

struct Shared {
    share: PathBuf,
    jobs: Mutex<HashMap<String, FakeJob>>,
    /// Every request that changed something: ("create", job) and ("delete", name + body).
    pub requests: Mutex<Vec<(String, Value)>>,
    version: Mutex<u64>,
}

struct FakeJob {
    job: Value,
    pod: Value,
    log: String,
    changed: watch::Sender<u64>,
}

impl FakeKubernetes {
    /// Starts the fake on a free port; `share` is where the "PVC" lives on this host.
    pub async fn start(share: PathBuf) -> FakeKubernetes {
        let state = Arc::new(Shared {
            share,
            jobs: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            version: Mutex::new(1),
        });
        let app = Router::new()
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs",
                get(list_jobs).post(create_job),
            )
            .route(
                "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
                get(get_job).delete(delete_job),
            )
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeKubernetes { url, state }
    }

    /// The Jobs created so far (their manifests as received).
    pub fn created(&self) -> Vec<Value> {
        self.requests("create")
    }

    /// The bodies of the DELETE requests (with the job name under `name`).
    pub fn deleted(&self) -> Vec<Value> {
        self.requests("delete")
    }

    fn requests(&self, kind: &str) -> Vec<Value> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Names of the Jobs that exist now.
    pub fn existing(&self) -> Vec<String> {
        self.state.jobs.lock().unwrap().keys().cloned().collect()
    }
}

impl Shared {
    fn next_version(&self) -> String {
        let mut version = self.version.lock().unwrap();
        *version += 1;
        version.to_string()
    }

    /// Applies `change` to job `name` and wakes its watchers.
    fn update(&self, name: &str, change: impl FnOnce(&mut FakeJob)) {
        let version = self.next_version();
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(job) = jobs.get_mut(name) {
            change(job);
            job.job["metadata"]["resourceVersion"] = json!(version);
            job.changed.send_modify(|n| *n += 1);
        }
    }
}

fn status_document(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
}

fn matches_selector(labels: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        labels[key].as_str() == Some(value.trim_start_matches('='))
    })
}

async fn create_job(
    State(state): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Json(mut job): Json<Value>,
) -> Response {
    let name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    state
        .requests
        .lock()
        .unwrap()
        .push(("create".into(), job.clone()));
    if state.jobs.lock().unwrap().contains_key(&name) {
        return status_document(
            409,
            "AlreadyExists",
            &format!("jobs.batch \"{name}\" already exists"),
        );
    }
    let uid = uuid::Uuid::now_v7().to_string();
    job["apiVersion"] = json!("batch/v1");
    job["kind"] = json!("Job");
    job["metadata"]["namespace"] = json!(ns);
    job["metadata"]["uid"] = json!(uid);
    job["metadata"]["resourceVersion"] = json!(state.next_version());
    job["metadata"]["creationTimestamp"] = json!(chrono::Utc::now().to_rfc3339());
    job["status"] = json!({"active": 1, "startTime": chrono::Utc::now().to_rfc3339()});
    let pod_name = format!("{name}-x7k2p");
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    labels["job-name"] = json!(name);
    labels["batch.kubernetes.io/job-name"] = json!(name);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": true}]},
        "spec": job["spec"]["template"]["spec"].clone(),
        "status": {"phase": "Pending"}
    });
    let (changed, _) = watch::channel(0);
    state.jobs.lock().unwrap().insert(
        name.clone(),
        FakeJob {
            job: job.clone(),
            pod,
            log: String::new(),
            changed,
        },
    );
    tokio::spawn(kubelet(state.clone(), name));
    (StatusCode::CREATED, Json(job)).into_response()
}

/// The fake kubelet and Job controller for one Job.
async fn kubelet(state: Arc<Shared>, name: String) {
    let (container, deadline) = {
        let jobs = state.jobs.lock().unwrap();
        let job = &jobs[&name].job;
        (
            job["spec"]["template"]["spec"]["containers"][0].clone(),
            job["spec"]["activeDeadlineSeconds"].as_u64(),
        )
    };
    let created = std::time::Instant::now();
    let pending = if container["image"] == "fake.local/slow-start" {
        Duration::from_millis(2500)
    } else {
        Duration::from_millis(150)
    };
    tokio::time::sleep(pending).await;
    let expired_before_start =
        deadline.is_some_and(|seconds| created.elapsed() >= Duration::from_secs(seconds));
    let started = chrono::Utc::now().to_rfc3339();
    if !expired_before_start {
        state.update(&name, |job| {
            job.pod["status"] = json!({"phase": "Running", "startTime": started,
                "containerStatuses": [{"name": "program", "ready": true, "restartCount": 0,
                  "image": container["image"], "state": {"running": {"startedAt": started}}}]});
        });
    }
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    let terminated = |exit: i64, reason: &str| {
        json!({"phase": if exit == 0 { "Succeeded" } else { "Failed" },
               "containerStatuses": [{"name": "program", "ready": false, "restartCount": 0,
                 "image": container["image"],
                 "state": {"terminated": {"exitCode": exit, "reason": reason,
                   "startedAt": started, "finishedAt": chrono::Utc::now().to_rfc3339()}}}]})
    };
    let (pod_status, job_condition, log) = match image.as_str() {
        _ if expired_before_start => (
            json!({"phase": "Failed", "reason": "DeadlineExceeded"}),
            (
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ),
            String::new(),
        ),
        "fake.local/run" | "fake.local/slow-start" => {
            let (exit, log) = run_locally(&state, &container).await;
            let reason = if exit == 0 { "Completed" } else { "Error" };
            let condition = if exit == 0 {
                ("Complete", "", "")
            } else {
                (
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            };
            (terminated(exit, reason), condition, log)
        }
        "fake.local/oom" => (
            terminated(137, "OOMKilled"),
            (
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ),
            String::new(),
        ),
        "fake.local/evicted" => (
            json!({"phase": "Failed", "reason": "Evicted",
                   "message": "The node was low on resource: memory."}),
            (
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ),
            String::new(),
        ),
        "fake.local/deadline" => {
            tokio::time::sleep(Duration::from_secs(deadline.unwrap_or(3600))).await;
            (
                json!({"phase": "Failed", "reason": "DeadlineExceeded",
                       "message": "Pod was active on the node longer than the specified deadline"}),
                (
                    "Failed",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ),
                String::new(),
            )
        }
        // `fake.local/hang` and anything else: runs until deleted.
        _ => return,
    };
    let now = chrono::Utc::now().to_rfc3339();
    let (kind, reason, message) = job_condition;
    state.update(&name, |job| {
        job.pod["status"] = pod_status;
        job.log = log;
        let mut condition = json!({"type": kind, "status": "True",
            "lastProbeTime": now, "lastTransitionTime": now});
        if !reason.is_empty() {
            condition["reason"] = json!(reason);
            condition["message"] = json!(message);
        }
        let counts = if kind == "Complete" {
            json!({"succeeded": 1})
        } else {
            json!({"failed": 1})
        };
        job.job["status"] = json!({"startTime": job.job["status"]["startTime"],
            "conditions": [condition]});
        for (key, value) in counts.as_object().unwrap() {
            job.job["status"][key] = value.clone();
        }
        if kind == "Complete" {
            job.job["status"]["completionTime"] = json!(now);
        }
    });
}

/// Runs the container's command as a local process in the volume's sub-directory.
async fn run_locally(state: &Shared, container: &Value) -> (i64, String) {
    let mount = &container["volumeMounts"][0];
    let mount_path = mount["mountPath"].as_str().unwrap_or("/work");
    let dir = state
        .share
        .join(mount["subPath"].as_str().unwrap_or_default());
    let host = dir.to_string_lossy().into_owned();
    let map = |text: &str| text.replace(mount_path, &host);
    let argv: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["args"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .map(map)
        .collect();
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                map(e["value"].as_str().unwrap_or_default()),
            )
        })
        .collect();
    let output = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&dir)
        .output()
        .await;
    match output {
        Ok(output) => {
            // The pod log interleaves both streams.
            let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
            log.push_str(&String::from_utf8_lossy(&output.stderr));
            (output.status.code().unwrap_or(137) as i64, log)
        }
        Err(error) => (128, format!("exec failed: {error}")),
    }
}

async fn get_job(
    State(state): State<Arc<Shared>>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    match state.jobs.lock().unwrap().get(&name) {
        Some(job) => Json(job.job.clone()).into_response(),
        None => status_document(404, "NotFound", &format!("jobs.batch \"{name}\" not found")),
    }
}

async fn delete_job(
    State(state): State<Arc<Shared>>,
    Path((_ns, name)): Path<(String, String)>,
    body: String,
) -> Response {
    let mut request: Value = serde_json::from_str(&body).unwrap_or(json!({}));
    request["name"] = json!(name);
    state
        .requests
        .lock()
        .unwrap()
        .push(("delete".into(), request));
    let removed = state.jobs.lock().unwrap().remove(&name);
    match removed {
        Some(job) => {
            job.changed.send_modify(|n| *n += 1);
            Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": {"name": name, "group": "batch", "kind": "jobs", "uid": job.job["metadata"]["uid"]}}))
                .into_response()
        }
        None => status_document(404, "NotFound", &format!("jobs.batch \"{name}\" not found")),
    }
}

async fn list_jobs(
    State(state): State<Arc<Shared>>,
    Path(_ns): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch_job(state, query);
    }
    let items: Vec<Value> = state
        .jobs
        .lock()
        .unwrap()
        .values()
        .filter(|job| matches_selector(&job.job["metadata"]["labels"], query.get("labelSelector")))
        .map(|job| job.job.clone())
        .collect();
    Json(json!({"apiVersion": "batch/v1", "kind": "JobList",
                "metadata": {"resourceVersion": state.next_version()}, "items": items}))
    .into_response()
}

/// `?watch=true&fieldSelector=metadata.name=NAME`: the Job's current state, then every
/// change, until it is deleted or `timeoutSeconds` pass.
fn watch_job(state: Arc<Shared>, query: HashMap<String, String>) -> Response {
    let name = query
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
        .unwrap_or_default()
        .to_owned();
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(300u64);
    let receiver = state
        .jobs
        .lock()
        .unwrap()
        .get(&name)
        .map(|job| job.changed.subscribe());
    let stream = async_stream(state, name, receiver, Duration::from_secs(timeout));
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn async_stream(
    state: Arc<Shared>,
    name: String,
    receiver: Option<watch::Receiver<u64>>,
    timeout: Duration,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    let deadline = tokio::time::Instant::now() + timeout;
    futures_util::stream::unfold(
        (state, name, receiver, true, false),
        move |(state, name, receiver, first, done)| async move {
            if done {
                return None;
            }
            let mut receiver = receiver?;
            if !first {
                let changed = tokio::time::timeout_at(deadline, receiver.changed()).await;
                if !matches!(changed, Ok(Ok(()))) {
                    // Timed out, or the Job is gone: end the watch.
                    let gone = !state.jobs.lock().unwrap().contains_key(&name);
                    if gone && changed.is_ok() {
                        let event = json!({"type": "DELETED", "object": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}}});
                        return Some((
                            Ok(format!("{event}\n")),
                            (state, name, Some(receiver), false, true),
                        ));
                    }
                    return None;
                }
            }
            let object = state
                .jobs
                .lock()
                .unwrap()
                .get(&name)
                .map(|job| job.job.clone());
            match object {
                Some(object) => {
                    let kind = if first { "ADDED" } else { "MODIFIED" };
                    let event = json!({"type": kind, "object": object});
                    Some((
                        Ok(format!("{event}\n")),
                        (state, name, Some(receiver), false, false),
                    ))
                }
                None => {
                    let event = json!({"type": "DELETED", "object": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}}});
                    Some((
                        Ok(format!("{event}\n")),
                        (state, name, Some(receiver), false, true),
                    ))
                }
            }
        },
    )
}

async fn list_pods(
    State(state): State<Arc<Shared>>,
    Path(_ns): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let items: Vec<Value> = state
        .jobs
        .lock()
        .unwrap()
        .values()
        .filter(|job| matches_selector(&job.pod["metadata"]["labels"], query.get("labelSelector")))
        .map(|job| job.pod.clone())
        .collect();
    Json(json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": state.next_version()}, "items": items}))
    .into_response()
}

async fn pod_log(
    State(state): State<Arc<Shared>>,
    Path((_ns, pod)): Path<(String, String)>,
) -> Response {
    let jobs = state.jobs.lock().unwrap();
    match jobs
        .values()
        .find(|job| job.pod["metadata"]["name"] == pod.as_str())
    {
        Some(job) => job.log.clone().into_response(),
        None => status_document(404, "NotFound", &format!("pods \"{pod}\" not found")),
    }
}
