//! The Slurm executor against a real single-node cluster (Debian's slurm-wlm; start it
//! with `tests/slurm/start.sh`). Gated by `BATCHGATE_TEST_SLURM=1`.
//!
//! Each test names its batch jobs uniquely (`[slurm] job_name`), so that the tests (and
//! their sweeps) never see one another's jobs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

/// Tools beside the demo analyzer (from `examples/slurm.toml`): a shell script that
/// echoes a parameter (request data only ever as an argument), a memory hog and a
/// sleeper.
const TOOLS: &str = r#"
[[tools]]
name = "echo"
executor = "slurm"
command = ["/bin/sh", "-c", "printf '%s\n' \"$1\" > out.txt; echo \"to stderr: $1\" >&2; exit \"$2\"", "sh", "{params.text}", "{params.code}"]
[tools.parameters]
type = "object"
properties.text = { type = "string" }
properties.code = { type = "integer", default = 0 }
[[tools.outputs]]
name = "out"
path = "out.txt"
format = "lines"
[tools.example]
parameters = { text = "hi" }

[[tools]]
name = "hog"
executor = "slurm"
command = ["python3", "-c", "import time; x = bytearray(400 * 1024 * 1024); time.sleep(3)"]
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.limits]
memory_mb = 64
[tools.example]
parameters = {}

[[tools]]
name = "sleeper"
executor = "slurm"
command = ["/bin/sh", "-c", "sleep \"$1\"; echo slept", "sh", "{params.seconds}"]
[tools.parameters]
type = "object"
properties.seconds = { type = "integer" }
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.limits]
timeout_seconds = 3
[tools.example]
parameters = { seconds = 1 }

[[tools]]
name = "long"
executor = "slurm"
command = ["/bin/sh", "-c", "sleep \"$1\"; echo slept", "sh", "{params.seconds}"]
[tools.parameters]
type = "object"
properties.seconds = { type = "integer" }
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.limits]
timeout_seconds = 120
[tools.example]
parameters = { seconds = 1 }
"#;

struct Cluster {
    deployment: common::Deployment,
    job_name: String,
}

impl std::ops::Deref for Cluster {
    type Target = common::Deployment;

    fn deref(&self) -> &common::Deployment {
        &self.deployment
    }
}

impl Cluster {
    /// `None` (after a visible skip) without `BATCHGATE_TEST_SLURM`.
    fn new() -> Option<Cluster> {
        if std::env::var_os("BATCHGATE_TEST_SLURM").is_none() {
            common::skip("set BATCHGATE_TEST_SLURM=1 with a running Slurm (tests/slurm/start.sh) to run the Slurm tests");
            return None;
        }
        let deployment = common::Deployment::new();
        let dir = &deployment.dir;
        let job_name = format!(
            "bgtest-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/slurm.toml"),
        )
        .unwrap();
        let shared = dir.path().join("shared");
        let config = example
            .replace(
                "work_dir = \"/var/tmp/batchgate-slurm\"",
                &format!(
                    "work_dir = \"{}\"\njob_name = \"{job_name}\"\npoll_interval_seconds = 0.2\nsweep_interval_seconds = 1",
                    shared.display()
                ),
            )
            + TOOLS;
        assert!(
            config.contains(&job_name),
            "the example's [slurm] table changed"
        );
        deployment.configure(&config);
        Some(Cluster {
            deployment,
            job_name,
        })
    }

    fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// This test's batch jobs in the controller: (Slurm id, state, comment).
    fn slurm_jobs(&self) -> Vec<(String, String, String)> {
        let output = Command::new("squeue")
            .args(["-h", "-t", "all", "-n", &self.job_name, "-o", "%i|%T|%k"])
            .output()
            .unwrap();
        assert!(output.status.success(), "squeue failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let mut fields = line.splitn(3, '|').map(str::to_owned);
                (
                    fields.next().unwrap(),
                    fields.next().unwrap(),
                    fields.next().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The Slurm jobs submitted for batchgate job `id`: (state, comment).
    fn slurm_jobs_of(&self, id: &str) -> Vec<(String, String)> {
        self.slurm_jobs()
            .into_iter()
            .filter(|(_, _, comment)| comment.contains(id))
            .map(|(_, state, comment)| (state, comment))
            .collect()
    }

    async fn wait_slurm_state(&self, id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.slurm_jobs_of(id).iter().any(|(s, _)| s == state) {
            assert!(
                Instant::now() < deadline,
                "no {state} Slurm job for {id}: {:?}",
                self.slurm_jobs_of(id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("scancel")
            .args(["-n", &self.job_name])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_slurm),
    ignore = "needs Slurm: set BATCHGATE_TEST_SLURM=1 with a running cluster (tests/slurm/start.sh)"
)]
async fn jobs_run_as_slurm_batch_jobs_and_every_ending_is_mapped() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    let server = cluster.start(&["serve", "--workers", "8"]);
    let client = common::client();
    let canary = cluster.dir.path().join("pwned");
    let hostile = common::hostile_text(&canary);

    let common::Endings {
        analyzer,
        echo,
        exit3,
        hog,
        slow,
        canceled,
    } = common::Endings::submit(&client, &server, "slurm", &hostile).await;

    // The demo analyzer ran in Slurm (its batch job is named after the attempt) and its
    // result came back.
    let status = common::ended(&client, &server, &analyzer).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let result = common::result(&client, &server, &analyzer).await;
    let rows = result["insights"].as_array().expect("insights rows");
    assert!(
        rows.iter().any(|row| row.to_string().contains("slurm")),
        "the label reached the program: {result}"
    );
    assert_eq!(
        cluster.slurm_jobs_of(&analyzer),
        vec![("COMPLETED".to_owned(), format!("batchgate {analyzer}-1"))]
    );

    // Request data is an argument, never shell text.
    let status = common::ended(&client, &server, &echo).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let result = common::result(&client, &server, &echo).await;
    assert_eq!(result["out"], json!([hostile]));
    assert!(!canary.exists(), "request data ran as shell code");

    // A program's failure: its exit status and stderr.
    let status = common::ended(&client, &server, &exit3).await;
    common::assert_exit_status(&status, 3, "to stderr: bad");

    // Slurm's OUT_OF_MEMORY (the tool's memory_mb is `--mem`, held by the cgroup).
    let status = common::ended(&client, &server, &hog).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"]["code"], "out-of-memory", "{status}");
    assert!(cluster
        .slurm_jobs_of(&hog)
        .iter()
        .any(|(state, _)| state == "OUT_OF_MEMORY"));

    // The tool's timeout counts from the start of the run; the batch job is canceled.
    let status = common::ended(&client, &server, &slow).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"]["code"], "timeout", "{status}");
    cluster.wait_slurm_state(&slow, "CANCELLED").await;

    // DELETE of a running job: scancel.
    cluster.wait_slurm_state(&canceled, "RUNNING").await;
    common::cancel(&client, &server, &canceled).await;
    let status = common::ended(&client, &server, &canceled).await;
    assert_eq!(status["status"], "canceled", "{status}");
    cluster.wait_slurm_state(&canceled, "CANCELLED").await;

    // Every attempt's work directory on the shared path is gone.
    let left: Vec<String> = std::fs::read_dir(cluster.shared())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_slurm),
    ignore = "needs Slurm: set BATCHGATE_TEST_SLURM=1 with a running cluster (tests/slurm/start.sh)"
)]
async fn a_restarted_worker_reattaches_to_the_running_batch_job() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    let client = common::client();
    for signal in ["KILL", "TERM"] {
        let server = cluster.start(&["serve"]);
        let id = common::submit(
            &client,
            &server,
            "long",
            json!({"parameters": {"seconds": 5}}),
        )
        .await;
        cluster.wait_slurm_state(&id, "RUNNING").await;
        server.signal(signal);
        let mut server = server;
        let exit = server.child.wait().unwrap();
        if signal == "TERM" {
            assert!(
                exit.success(),
                "a clean exit after handing the job back: {exit}"
            );
        }
        // The batch job outlives the worker.
        assert_eq!(
            cluster.slurm_jobs_of(&id),
            vec![("RUNNING".to_owned(), format!("batchgate {id}-1"))],
            "after SIG{signal}"
        );

        let server = cluster.start(&["serve"]);
        let status = common::ended(&client, &server, &id).await;
        assert_eq!(status["status"], "succeeded", "after SIG{signal}: {status}");
        assert_eq!(status["attempt"], 2, "taken over by a second attempt");
        let result = common::result(&client, &server, &id).await;
        assert_eq!(result["out"], json!(["slept"]));
        // Followed, not submitted again: one batch job, the first attempt's.
        assert_eq!(
            cluster.slurm_jobs_of(&id),
            vec![("COMPLETED".to_owned(), format!("batchgate {id}-1"))],
            "after SIG{signal}"
        );
        assert!(!cluster.shared().join(format!("{id}-1")).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_slurm),
    ignore = "needs Slurm: set BATCHGATE_TEST_SLURM=1 with a running cluster (tests/slurm/start.sh)"
)]
async fn a_batch_job_whose_job_was_canceled_meanwhile_is_swept() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    let client = common::client();
    let mut server = cluster.start(&["serve"]);
    let id = common::submit(
        &client,
        &server,
        "long",
        json!({"parameters": {"seconds": 60}}),
    )
    .await;
    cluster.wait_slurm_state(&id, "RUNNING").await;
    server.signal("TERM");
    server.child.wait().unwrap();

    // No worker follows the batch job while the caller cancels the (queued) job.
    let api = cluster.start(&["serve", "--no-worker"]);
    common::cancel(&client, &api, &id).await;
    let status = common::ended(&client, &api, &id).await;
    assert_eq!(status["status"], "canceled");
    assert_eq!(cluster.slurm_jobs_of(&id)[0].0, "RUNNING");

    // A worker's sweep cancels the batch job and removes its work directory.
    let _worker = cluster.worker();
    cluster.wait_slurm_state(&id, "CANCELLED").await;
    let workdir = cluster.shared().join(format!("{id}-1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while workdir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not removed",
            workdir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
