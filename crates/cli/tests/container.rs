//! The container executor against a real podman (its Docker-compatible API service).
//! Gated by `BATCHGATE_TEST_CONTAINER_ENGINE=unix:///run/podman/podman.sock`; the demo
//! image is built offline by `examples/container/demo-image.sh` (a static busybox and the
//! demo analyzer), once.
//!
//! Each test labels its containers uniquely (`[container] label`), so that the tests (and
//! their sweeps) never see one another's.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

const IMAGE: &str = "localhost/batchgate-demo:1";

/// Tools beside the demo analyzer (from `examples/container.toml`), all in the demo image:
/// a shell script that echoes a parameter (request data only ever as an argument) and
/// reports what it sees of its surroundings, a memory hog, sleepers, and a missing image.
const TOOLS: &str = r#"
[[tools]]
name = "echo"
executor = "container"
command = ["/bin/sh", "-c", "printf '%s\n' \"$1\" > out.txt; id -u >> out.txt; ls /sys/class/net >> out.txt; echo \"to stderr: $1\" >&2; exit \"$2\"", "sh", "{params.text}", "{params.code}"]
[tools.container]
image = "localhost/batchgate-demo:1"
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
executor = "container"
command = ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=300M", "count=1"]
[tools.container]
image = "localhost/batchgate-demo:1"
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.limits]
memory_mb = 32
[tools.example]
parameters = {}

[[tools]]
name = "sleeper"
executor = "container"
command = ["/bin/sh", "-c", "sleep \"$1\"; echo slept", "sh", "{params.seconds}"]
[tools.container]
image = "localhost/batchgate-demo:1"
[tools.parameters]
type = "object"
properties.seconds = { type = "integer" }
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.limits]
timeout_seconds = 2
kill_grace_seconds = 1
[tools.example]
parameters = { seconds = 1 }

[[tools]]
name = "long"
executor = "container"
command = ["/bin/sh", "-c", "sleep \"$1\"; echo slept", "sh", "{params.seconds}"]
[tools.container]
image = "localhost/batchgate-demo:1"
[tools.parameters]
type = "object"
properties.seconds = { type = "integer" }
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.limits]
timeout_seconds = 120
kill_grace_seconds = 1
[tools.example]
parameters = { seconds = 1 }

[[tools]]
name = "absent"
executor = "container"
command = ["/bin/true"]
[tools.container]
image = "localhost/batchgate-no-such-image:1"
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]
parameters = {}
"#;

struct Engine {
    deployment: common::Deployment,
    label: String,
}

impl std::ops::Deref for Engine {
    type Target = common::Deployment;

    fn deref(&self) -> &common::Deployment {
        &self.deployment
    }
}

impl Engine {
    /// `None` (after a visible skip) without `BATCHGATE_TEST_CONTAINER_ENGINE`.
    fn new() -> Option<Engine> {
        let Ok(engine) = std::env::var("BATCHGATE_TEST_CONTAINER_ENGINE") else {
            common::skip("set BATCHGATE_TEST_CONTAINER_ENGINE=unix:///run/podman/podman.sock (podman system service) to run the container tests");
            return None;
        };
        demo_image();
        let deployment = common::Deployment::new();
        let label = format!(
            "bgtest-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/container.toml"),
        )
        .unwrap();
        let config = example.replace(
            "engine = \"unix:///run/podman/podman.sock\"",
            &format!("engine = \"{engine}\"\nlabel = \"{label}\"\nsweep_interval_seconds = 1"),
        ) + TOOLS;
        assert!(
            config.contains(&label),
            "the example's [container] table changed"
        );
        deployment.configure(&config);
        Some(Engine { deployment, label })
    }

    /// This test's containers: (name, state).
    fn containers(&self) -> Vec<(String, String)> {
        let output = Command::new("podman")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=batchgate.label={}", self.label),
                "--format",
                "{{.Names}}|{{.Status}}",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "podman ps failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('|'))
            .map(|(name, status)| {
                let state = if status.starts_with("Up") {
                    "running"
                } else {
                    "exited"
                };
                (name.to_owned(), state.to_owned())
            })
            .collect()
    }

    fn containers_of(&self, id: &str) -> Vec<(String, String)> {
        self.containers()
            .into_iter()
            .filter(|(name, _)| name.contains(id))
            .collect()
    }

    async fn wait_running(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .containers_of(id)
            .iter()
            .any(|(_, state)| state == "running")
        {
            assert!(Instant::now() < deadline, "no running container for {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for (name, _) in self.containers() {
            let _ = Command::new("podman").args(["rm", "-f", &name]).output();
        }
    }
}

/// Builds the demo image once per test binary (the script is idempotent).
fn demo_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(root.join("examples/container/demo-image.sh"))
            .arg(env!("CARGO_BIN_EXE_batchgate"))
            .arg(IMAGE)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "building the demo image failed");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(feature = "containers", gate_container)),
    ignore = "needs a container engine: set BATCHGATE_TEST_CONTAINER_ENGINE=unix:///run/podman/podman.sock, and the `containers` feature (--all-features)"
)]
async fn the_demo_tool_runs_in_its_image_and_every_ending_is_mapped() {
    let Some(engine) = Engine::new() else {
        return;
    };
    let server = engine.start(&["serve", "--workers", "8"]);
    let client = common::client();
    let canary = engine.dir.path().join("pwned");
    let hostile = common::hostile_text(&canary);

    let common::Endings {
        analyzer,
        echo,
        exit3,
        hog,
        slow,
        canceled,
    } = common::Endings::submit(&client, &server, "boxed", &hostile).await;
    let absent = common::submit(&client, &server, "absent", json!({})).await;

    // The demo analyzer ran in its image; its progress and result came back.
    let status = common::ended(&client, &server, &analyzer).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["progress"]["percent"], 100.0, "{status}");
    let result = common::result(&client, &server, &analyzer).await;
    let rows = result["insights"].as_array().expect("insights rows");
    assert!(
        rows.iter().any(|row| row.to_string().contains("boxed")),
        "{result}"
    );

    // Request data is an argument, never shell text; the program runs as the worker's
    // user and has no network but loopback.
    let status = common::ended(&client, &server, &echo).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let result = common::result(&client, &server, &echo).await;
    let uid = own_uid();
    assert_eq!(result["out"], json!([hostile, uid, "lo"]));
    assert!(!canary.exists(), "request data ran as shell code");

    let status = common::ended(&client, &server, &exit3).await;
    common::assert_exit_status(&status, 3, "to stderr: bad");

    // The memory limit is the container's cgroup: the kernel's OOM killer stops the
    // program. podman 4.3 with runc on cgroup v1 does not report `OOMKilled`, only the
    // SIGKILL (status 137); an engine that does report it gets `out-of-memory`.
    let status = common::ended(&client, &server, &hog).await;
    assert_eq!(status["status"], "failed");
    let killed_for_memory = status["error"]["code"] == "out-of-memory"
        || (status["error"]["code"] == "program-killed"
            && status["error"]["signal"] == 9
            && status["error"]["message"]
                .as_str()
                .unwrap()
                .contains("memory"));
    assert!(killed_for_memory, "{status}");

    let status = common::ended(&client, &server, &slow).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"]["code"], "timeout", "{status}");

    engine.wait_running(&canceled).await;
    common::cancel(&client, &server, &canceled).await;
    let status = common::ended(&client, &server, &canceled).await;
    assert_eq!(status["status"], "canceled", "{status}");

    let status = common::ended(&client, &server, &absent).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"]["code"], "program-not-found", "{status}");
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batchgate-no-such-image"),
        "{status}"
    );

    // Every container is removed once its attempt ends.
    assert_eq!(engine.containers(), Vec::<(String, String)>::new());
}

fn own_uid() -> String {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(feature = "containers", gate_container)),
    ignore = "needs a container engine: set BATCHGATE_TEST_CONTAINER_ENGINE=unix:///run/podman/podman.sock, and the `containers` feature (--all-features)"
)]
async fn a_restarted_worker_reattaches_to_the_running_container() {
    let Some(engine) = Engine::new() else {
        return;
    };
    let client = common::client();
    for signal in ["KILL", "TERM"] {
        let server = engine.start(&["serve"]);
        let id = common::submit(
            &client,
            &server,
            "long",
            json!({"parameters": {"seconds": 5}}),
        )
        .await;
        engine.wait_running(&id).await;
        server.signal(signal);
        let mut server = server;
        let exit = server.child.wait().unwrap();
        if signal == "TERM" {
            assert!(
                exit.success(),
                "a clean exit after handing the job back: {exit}"
            );
        }
        // The container outlives the worker.
        assert_eq!(
            engine.containers_of(&id),
            vec![(format!("batchgate-{id}-1"), "running".to_owned())],
            "after SIG{signal}"
        );

        let server = engine.start(&["serve"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            // Followed, never started again: no container of a second attempt.
            assert!(
                engine
                    .containers_of(&id)
                    .iter()
                    .all(|(name, _)| name.ends_with("-1")),
                "after SIG{signal}: {:?}",
                engine.containers_of(&id)
            );
            let status =
                common::get_json(&client, &format!("{}/v1/jobs/{id}", server.address)).await;
            if status["status"] != "running" && status["status"] != "queued" {
                break status;
            }
            assert!(Instant::now() < deadline, "{status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status["status"], "succeeded", "after SIG{signal}: {status}");
        assert_eq!(status["attempt"], 2, "taken over by a second attempt");
        let result = common::result(&client, &server, &id).await;
        assert_eq!(result["out"], json!(["slept"]));
        assert!(engine.containers_of(&id).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(feature = "containers", gate_container)),
    ignore = "needs a container engine: set BATCHGATE_TEST_CONTAINER_ENGINE=unix:///run/podman/podman.sock, and the `containers` feature (--all-features)"
)]
async fn a_container_whose_job_was_canceled_meanwhile_is_swept() {
    let Some(engine) = Engine::new() else {
        return;
    };
    let client = common::client();
    let mut server = engine.start(&["serve"]);
    let id = common::submit(
        &client,
        &server,
        "long",
        json!({"parameters": {"seconds": 60}}),
    )
    .await;
    engine.wait_running(&id).await;
    server.signal("TERM");
    server.child.wait().unwrap();

    // No worker follows the container while the caller cancels the (queued) job.
    let api = engine.start(&["serve", "--no-worker"]);
    common::cancel(&client, &api, &id).await;
    let status = common::ended(&client, &api, &id).await;
    assert_eq!(status["status"], "canceled");
    assert_eq!(engine.containers_of(&id).len(), 1);

    // A worker's sweep removes the container and its work directory.
    let _worker = engine.worker();
    let deadline = Instant::now() + Duration::from_secs(30);
    let workdir = engine.dir.path().join("data/work").join(format!("{id}-1"));
    while !engine.containers_of(&id).is_empty() || workdir.exists() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}, {}",
            engine.containers_of(&id),
            workdir.exists()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
