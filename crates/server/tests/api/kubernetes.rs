//! The Kubernetes executor against a FAKE API server (`fake_kubernetes.rs`): no real
//! Kubernetes API server can run on these machines. What these tests establish is the
//! executor's side of the contract — the Job it sends, how it reads documented Job and
//! Pod states, cancel, re-attach by label, cleanup — not that a real cluster behaves like
//! the fake.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchgate_server::config::KubernetesSettings;
use batchgate_server::executors::kubernetes::KubernetesExecutor;
use batchgate_server::executors::{
    Executor, References, ResourceLimits, RunControl, RunSpec, Termination,
};
use batchgate_server::tools::decl::KubernetesDecl;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::fake_kubernetes::FakeKubernetes;
use crate::helpers::{accepted, spawn_app_with, WAIT};

fn tools(url: &str, share: &std::path::Path) -> String {
    format!(
        r#"
[kubernetes]
url = "{url}"
namespace = "batch"
pvc = "batchgate-work"
work_dir = "{share}"
service_account = "batchgate-runner"
sweep_interval_seconds = 1

[[tools]]
name = "k8s-echo"
executor = "kubernetes"
command = ["/bin/sh", "-c", "printf '%s\n' \"$1\" > out.txt; echo \"to stderr: $1\" >&2; exit \"$2\"", "sh", "{{params.text}}", "{{params.code}}"]
[tools.kubernetes]
image = "fake.local/run"
cpu = "250m"
[tools.parameters]
type = "object"
properties.text = {{ type = "string" }}
properties.code = {{ type = "integer", default = 0 }}
[[tools.outputs]]
name = "out"
path = "out.txt"
format = "lines"
[tools.limits]
memory_mb = 64
timeout_seconds = 30
[tools.example]
parameters = {{ text = "hi" }}

[[tools]]
name = "k8s-oom"
executor = "kubernetes"
command = ["/prog"]
kubernetes.image = "fake.local/oom"
outputs = [{{ name = "out", path = "out.txt", format = "lines" }}]
example = {{}}

[[tools]]
name = "k8s-evicted"
executor = "kubernetes"
command = ["/prog"]
kubernetes.image = "fake.local/evicted"
retry = {{ max_attempts = 2, backoff_seconds = 0.1 }}
outputs = [{{ name = "out", path = "out.txt", format = "lines" }}]
example = {{}}

[[tools]]
name = "k8s-deadline"
executor = "kubernetes"
command = ["/prog"]
kubernetes.image = "fake.local/deadline"
limits = {{ timeout_seconds = 1 }}
outputs = [{{ name = "out", path = "out.txt", format = "lines" }}]
example = {{}}

[[tools]]
name = "k8s-slow-start"
executor = "kubernetes"
command = ["/bin/sh", "-c", "echo started late > out.txt"]
kubernetes.image = "fake.local/slow-start"
limits = {{ timeout_seconds = 1 }}
outputs = [{{ name = "out", path = "out.txt", format = "lines" }}]
example = {{}}

[[tools]]
name = "k8s-hang"
executor = "kubernetes"
command = ["/prog"]
kubernetes.image = "fake.local/hang"
outputs = [{{ name = "out", path = "out.txt", format = "lines" }}]
example = {{}}
"#,
        share = share.display()
    )
}

async fn ended(app: &crate::helpers::TestApp, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, status) = app.get_json(&format!("/v1/jobs/{id}")).await;
        if matches!(
            status["status"].as_str(),
            Some("succeeded" | "failed" | "canceled")
        ) {
            return status;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_kubernetes_jobs_and_every_ending_is_mapped_fake_api() {
    let share = tempfile::tempdir().unwrap();
    let fake = FakeKubernetes::start(share.path().to_owned()).await;
    let app = spawn_app_with(&format!("workers = 8\n{}", tools(&fake.url, share.path()))).await;
    let submit = |tool: &'static str, body: Value| {
        let app = &app;
        async move {
            let location = accepted(app.submit_json(tool, &body).await).await;
            location.rsplit('/').next().unwrap().to_owned()
        }
    };
    let hostile = "a  b; $(touch /tmp/x) `y` \"q\"";
    let echo = submit("k8s-echo", json!({"parameters": {"text": hostile}})).await;
    let exit3 = submit(
        "k8s-echo",
        json!({"parameters": {"text": "bad", "code": 3}}),
    )
    .await;
    let oom = submit("k8s-oom", json!({})).await;
    let evicted = submit("k8s-evicted", json!({})).await;
    let deadline = submit("k8s-deadline", json!({})).await;
    let slow_start = submit("k8s-slow-start", json!({})).await;
    let hang = submit("k8s-hang", json!({})).await;

    // The program ran in the "pod"; its output came back through the shared volume.
    let status = ended(&app, &echo).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let (_, result) = app.get_json(&format!("/v1/jobs/{echo}/result")).await;
    assert_eq!(result["out"], json!([hostile]));

    // The Job as sent.
    let name = format!("batchgate-{echo}-1");
    let job = fake
        .created()
        .into_iter()
        .find(|job| job["metadata"]["name"] == name.as_str())
        .expect("the Job was created");
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0, "batchgate owns retries");
    // The tool's timeout and the default allowance for the pod's start.
    assert_eq!(spec["activeDeadlineSeconds"], 30 + 600);
    let labels = &job["metadata"]["labels"];
    assert_eq!(labels["batchgate.dev/job"], echo.as_str());
    assert_eq!(labels["batchgate.dev/attempt"], "1");
    assert_eq!(spec["template"]["metadata"]["labels"], *labels);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "batchgate-runner");
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "batchgate-work"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "fake.local/run");
    assert_eq!(container["command"], json!(["/bin/sh"]));
    assert_eq!(container["args"][2], "sh");
    assert_eq!(
        container["args"][3], hostile,
        "request data is one argument"
    );
    assert_eq!(container["workingDir"], "/work");
    assert_eq!(
        container["volumeMounts"][0],
        json!({"name": "work", "mountPath": "/work", "subPath": format!("{echo}-1")})
    );
    let limits = json!({"memory": "64Mi", "cpu": "250m"});
    assert_eq!(container["resources"]["limits"], limits);
    assert_eq!(container["resources"]["requests"], limits);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    let env: Vec<String> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap()
            )
        })
        .collect();
    assert!(env.contains(&"HOME=/work".to_owned()), "{env:?}");
    // Deleted with its pods once it ended.
    assert!(
        fake.deleted()
            .iter()
            .any(|d| d["name"] == name.as_str() && d["propagationPolicy"] == "Background"),
        "{:?}",
        fake.deleted()
    );

    let status = ended(&app, &exit3).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"]["code"], "program-exit-status", "{status}");
    assert_eq!(status["error"]["exit_code"], 3);
    assert!(
        status["error"]["stderr_tail"]
            .as_str()
            .unwrap()
            .contains("to stderr: bad"),
        "the pod log: {status}"
    );

    let status = ended(&app, &oom).await;
    assert_eq!(status["error"]["code"], "out-of-memory", "{status}");

    // An evicted pod is not the program's fault: retried, up to the tool's attempts.
    let status = ended(&app, &evicted).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["attempt"], 2, "{status}");
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evicted"),
        "{status}"
    );

    let status = ended(&app, &deadline).await;
    assert_eq!(status["error"]["code"], "timeout", "{status}");

    // Waiting to be scheduled does not count against the program's timeout (1 s here):
    // the Job's deadline has an allowance for the pod's start.
    let status = ended(&app, &slow_start).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let manifest = fake
        .created()
        .into_iter()
        .find(|job| job["metadata"]["name"] == format!("batchgate-{slow_start}-1"))
        .unwrap();
    assert_eq!(manifest["spec"]["activeDeadlineSeconds"], 601, "{manifest}");

    // DELETE of a running job deletes its Kubernetes Job.
    let hang_name = format!("batchgate-{hang}-1");
    let deadline_at = Instant::now() + WAIT;
    while !fake.existing().contains(&hang_name) {
        assert!(Instant::now() < deadline_at);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = app
        .client
        .delete(app.url(&format!("/v1/jobs/{hang}")))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let status = ended(&app, &hang).await;
    assert_eq!(status["status"], "canceled", "{status}");
    assert!(!fake.existing().contains(&hang_name));

    // A Job of this deployment that no job wants (left by a crash) is swept.
    let orphan = format!("batchgate-{}-1", uuid::Uuid::now_v7());
    let stray = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": orphan, "labels": {"batchgate.dev/label": "batchgate",
            "batchgate.dev/job": orphan.trim_start_matches("batchgate-").trim_end_matches("-1"),
            "batchgate.dev/attempt": "1"}},
        "spec": {"template": {"metadata": {"labels": {}}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "program", "image": "fake.local/hang"}]}}}});
    let response = reqwest::Client::new()
        .post(format!("{}/apis/batch/v1/namespaces/batch/jobs", fake.url))
        .json(&stray)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let deadline_at = Instant::now() + WAIT;
    while fake.existing().contains(&orphan) {
        assert!(Instant::now() < deadline_at, "the stray Job was not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fake.existing().is_empty(), "{:?}", fake.existing());
}

#[derive(Default)]
struct Recorded(Mutex<Vec<String>>);

#[async_trait]
impl References for Recorded {
    async fn record(&self, reference: &str) -> Result<(), String> {
        self.0.lock().unwrap().push(reference.to_owned());
        Ok(())
    }
}

fn control(references: Arc<Recorded>) -> (RunControl, CancellationToken) {
    let detach = CancellationToken::new();
    let (progress, _) = tokio::sync::watch::channel(None);
    (
        RunControl {
            progress,
            cancel: CancellationToken::new(),
            detach: detach.clone(),
            references,
        },
        detach,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_taking_over_finds_the_job_by_its_labels_and_follows_it_fake_api() {
    let share = tempfile::tempdir().unwrap();
    let fake = FakeKubernetes::start(share.path().to_owned()).await;
    let executor = KubernetesExecutor::open(KubernetesSettings {
        url: Some(fake.url.clone()),
        namespace: Some("batch".into()),
        pvc: "batchgate-work".into(),
        work_dir: share.path().to_owned(),
        ..KubernetesSettings::default()
    })
    .await
    .unwrap();
    let id = uuid::Uuid::now_v7();
    let workdir = share.path().join(format!("{id}-1"));
    std::fs::create_dir_all(workdir.join(".batchgate")).unwrap();
    let spec = RunSpec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "sleep 1; echo done > out.txt".into(),
        ],
        workdir: workdir.clone(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        timeout: Duration::from_secs(30),
        kill_grace: Duration::from_secs(1),
        rlimits: ResourceLimits::default(),
        progress: None,
        stdout_path: workdir.join(".batchgate/stdout"),
        stdout_cap: 1 << 20,
        stderr_path: workdir.join(".batchgate/stderr"),
        stderr_cap: 1 << 20,
        run_as: None,
        attach: None,
        slurm: Default::default(),
        container: None,
        kubernetes: Some(KubernetesDecl {
            image: "fake.local/run".into(),
            cpu: None,
        }),
    };

    // The first worker starts the Job, records it, and lets go (a shutdown).
    let references = Arc::new(Recorded::default());
    let (first, detach) = control(references.clone());
    let running = tokio::spawn({
        let executor_spec = spec.clone();
        let executor = Arc::new(executor);
        let handle = executor.clone();
        async move { (handle.run(executor_spec, first).await, executor) }
    });
    let deadline = Instant::now() + WAIT;
    while references.0.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    detach.cancel();
    let (outcome, executor) = running.await.unwrap();
    assert_eq!(outcome.unwrap().termination, Termination::Detached);
    let name = format!("batchgate-{id}-1");
    assert_eq!(
        fake.existing(),
        vec![name.clone()],
        "the Job outlives the worker"
    );

    // The next worker finds it by its labels and follows it to its end: one Job in all.
    let reference = references.0.lock().unwrap()[0].clone();
    assert_eq!(executor.locate(&reference).await, Some(workdir.clone()));
    let (second, _) = control(Arc::new(Recorded::default()));
    let attached = RunSpec {
        attach: Some(reference.clone()),
        ..spec.clone()
    };
    let outcome = executor.run(attached, second).await.unwrap();
    assert_eq!(outcome.termination, Termination::Exited(0));
    assert_eq!(
        std::fs::read_to_string(workdir.join("out.txt")).unwrap(),
        "done\n"
    );
    assert_eq!(fake.created().len(), 1, "followed, not created again");
    assert!(fake.existing().is_empty(), "deleted once it ended");

    // A Job that no longer exists is not found: the attempt starts afresh.
    assert_eq!(executor.locate(&reference).await, None);
}
