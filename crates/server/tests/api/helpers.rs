//! `spawn_app`: the real server on port 0 with a fresh data directory, spoken to over
//! real HTTP.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use batchgate_protocol::{JobState, JobStatus};
use batchgate_server::{Application, Config, ConfigSource, Overrides};
use reqwest::redirect::Policy;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How long a test waits for a trivial job to end.
pub const WAIT: Duration = Duration::from_secs(20);

/// Tools used only by the tests, next to the demo ones. Their argv is fixed text of the
/// test (no request data), so `/bin/sh -c` here is a test program, not a shell built
/// from input.
pub const TEST_TOOLS: &str = r#"
[[tools]]
name = "sleeper"
command = ["/bin/sh", "-c", "sleep 300 & sleep 300 & echo started; wait"]
limits.kill_grace_seconds = 1
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "slow"
command = ["sleep", "30"]
limits.timeout_seconds = 1
limits.kill_grace_seconds = 1
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "failing"
command = ["/bin/sh", "-c", "echo working; echo 'line one' >&2; echo 'bad input: row 7' >&2; exit 3"]
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "missing"
command = ["/nonexistent/legacy-program", "x"]
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "nooutput"
command = ["true"]
[[tools.outputs]]
name = "out"
path = "results/out.csv"
format = "csv"
[tools.example]

[[tools]]
name = "badjson"
command = ["echo", "this is not json"]
[[tools.outputs]]
name = "out"
from = "stdout"
format = "json"
[tools.example]

[[tools]]
name = "exclusive"
command = ["sleep", "300"]
limits.concurrency = 1
limits.kill_grace_seconds = 1
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "chatty"
command = ["seq", "1", "100000"]
limits.max_output_bytes = 1000
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "endless"
command = ["yes", "more output"]
limits.max_output_bytes = 100000
limits.timeout_seconds = 120
limits.kill_grace_seconds = 1
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "crashing"
command = ["/bin/sh", "-c", "kill -KILL $$"]
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "limits"
command = ["cat", "/proc/self/limits"]
[[tools.outputs]]
name = "limits"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "envdump"
command = ["/usr/bin/env"]
parameters = { type = "object", properties = { PATH = { type = "string" }, LD_PRELOAD = { type = "string" } } }
[[tools.outputs]]
name = "env"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "forkbomb"
command = ["/bin/sh", "-c", "bomb() {{ bomb | bomb & }}; bomb; sleep 30"]
limits.processes = 20
limits.timeout_seconds = 3
limits.kill_grace_seconds = 1
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "peek"
command = ["/bin/sh", "-c", """
echo "net: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ' | sed 's/ $//')"
echo "data: $(ls -A "$1/../.." | tr '\n' ' ' | sed 's/ $//')"
if touch /etc/batchgate-escape 2>/dev/null; then echo "etc: writable"; else echo "etc: read-only"; fi
""", "peek", "{workdir}"]
[[tools.outputs]]
name = "seen"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "pair"
command = ["cat", "{inputs.notes}", "{inputs.points}"]
[[tools.inputs]]
name = "notes"
format = "raw"
media_types = ["text/plain"]
[[tools.inputs]]
name = "points"
format = "csv"
columns = ["x", "y"]
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]
inputs.notes = "hello"
inputs.points = [{ x = 1, y = 2 }]

[[tools]]
name = "snoop"
parameters = { type = "object", properties = { other = { type = "string", pattern = "^[0-9a-f-]+$" } } }
command = ["/bin/sh", "-c", """
data="$1/../.."
reach() {{ label=$1; shift; if "$@" >/dev/null 2>&1; then echo "$label: reached"; else echo "$label: denied"; fi; }}
echo "uid: $(id -u)"
reach database head -c 15 "$data/jobs.db"
reach blobs ls "$data/blobs"
reach staging ls "$data/staging"
reach work ls "$data/work"
reach data ls "$data"
reach other-job ls "$data/work/$2-1"
reach server-environment cat "/proc/$(cut -d' ' -f4 /proc/$PPID/stat)/environ"
reach own-directory touch "$1/mine"
""", "snoop", "{workdir}", "{params.other}"]
[[tools.outputs]]
name = "seen"
from = "stdout"
format = "lines"
[tools.example]
parameters.other = "0"

[[tools]]
name = "linker"
command = ["/bin/sh", "-c", "ln -s /etc/shadow out.txt; mv .batchgate .moved && mkdir .batchgate && ln -s /etc/shadow .batchgate/stderr; echo done"]
[[tools.outputs]]
name = "out"
path = "out.txt"
format = "lines"
[tools.example]

[[tools]]
name = "leaver"
command = ["/bin/sh", "-c", "cat /tmp/batchgate-left-by-a-job 2>/dev/null || echo nothing; echo secret > /tmp/batchgate-left-by-a-job; mkdir -p /dev/shm/batchgate-left-by-a-job; ipcmk -M 4096 >/dev/null; ipcmk -Q >/dev/null"]
[[tools.outputs]]
name = "seen"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "daemon"
command = ["/bin/sh", "-c", "setsid -f sleep 307; (sleep 308 &); echo started"]
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "flood"
command = ["yes"]
limits.max_log_bytes = 1048576
limits.timeout_seconds = 30
limits.kill_grace_seconds = 1
[[tools.outputs]]
name = "out"
path = "out.txt"
format = "lines"
required = false
[tools.example]

[[tools]]
name = "spin"
command = ["/bin/sh", "-c", "while :; do :; done"]
limits.cpu_seconds = 1
limits.timeout_seconds = 30
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "segv"
command = ["/bin/sh", "-c", "kill -SEGV $$"]
retry.on_signals = ["SIGSEGV"]
retry.max_attempts = 2
retry.backoff_seconds = 0
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]

[[tools]]
name = "ordered"
command = ["sort", "{params.order}", "{inputs.lines}"]
parameters = { type = "object", properties = { order = { type = "string" } }, required = ["order"] }
[[tools.inputs]]
name = "lines"
format = "lines"
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]
parameters.order = "/dev/null"
inputs.lines = ["b", "a"]

[[tools]]
name = "ordered-options"
command = ["sort", "{params.order}", "{inputs.lines}"]
parameters = { type = "object", properties = { order = { type = "string", enum = ["-r", "-n"] } }, required = ["order"] }
accepts_options = ["order"]
[[tools.inputs]]
name = "lines"
format = "lines"
[[tools.outputs]]
name = "out"
from = "stdout"
format = "lines"
[tools.example]
parameters.order = "-r"
inputs.lines = ["b", "a"]

[[tools]]
name = "small"
command = ["cat", "{inputs.text}"]
limits.max_request_bytes = 100
[[tools.inputs]]
name = "text"
format = "raw"
media_types = ["text/plain"]
[[tools.outputs]]
name = "out"
from = "stdout"
format = "raw"
[tools.example]
inputs.text = "hi"
"#;

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    pub runtime: std::sync::Arc<batchgate_server::api::ApiState>,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Starts a server whose configuration is `settings` + the demo tools + the test tools.
pub async fn spawn_app_with(settings: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let demo = batchgate_server::demo::resolve(batchgate_server::demo::CONFIG, &data_dir).unwrap();
    let workers = if settings.contains("workers") {
        ""
    } else {
        "workers = 2"
    };
    // The `missing` tool's program is there when the server starts (a start refuses a
    // program that is not) and gone when a job runs it.
    let gone = data_dir.join("gone/legacy-program");
    std::fs::create_dir_all(gone.parent().unwrap()).unwrap();
    std::fs::write(&gone, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&gone, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tools = TEST_TOOLS.replace("/nonexistent/legacy-program", &gone.to_string_lossy());
    let text = format!("listen = \"127.0.0.1:0\"\n{workers}\n{settings}\n{demo}\n{tools}");
    let source = ConfigSource::Text {
        name: "test.toml".into(),
        text,
    };
    let overrides = Overrides {
        data_dir: Some(data_dir.clone()),
        ..Overrides::default()
    };
    let config =
        Config::load_with_env(&source, &overrides, false).expect("the test configuration loads");
    let application = Application::build(config, batchgate_server::Workers::Embedded)
        .await
        .expect("the server starts");
    std::fs::remove_file(&gone).unwrap();
    let address = format!("http://{}", application.local_addr());
    let runtime = application.api_state();
    let shutdown = CancellationToken::new();
    tokio::spawn(application.run_until_stopped(shutdown.clone()));
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    TestApp {
        address,
        client,
        data_dir,
        runtime,
        _dir: dir,
        shutdown,
    }
}

impl TestApp {
    /// Creates an API key in the server's store (as `batchgate keys create` does).
    pub async fn create_key(&self, tier: &str, admin: bool) -> String {
        let key = batchgate_server::auth::keys::generate("test", tier, admin, chrono::Utc::now());
        self.runtime.store.create_key(&key.record).await.unwrap();
        key.secret
    }

    /// A GET with `key` as a bearer token.
    pub async fn get_as(&self, key: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub async fn submit_as(&self, key: &str, tool: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/tools/{tool}/jobs")))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Submits with a key, checks the 202 and returns the status URL.
    pub async fn submit_ok_as(&self, key: &str, tool: &str, body: &Value) -> String {
        let response = self.submit_as(key, tool, body).await;
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(status, 202, "{}", response.text().await.unwrap());
        location.unwrap()
    }

    /// Polls with a key until the job ends; returns the final status document and the
    /// `Location` of the 303.
    pub async fn wait_as(&self, key: &str, location: &str) -> (JobStatus, String) {
        let started = Instant::now();
        loop {
            let response = self.get_as(key, location).await;
            if response.status() == 303 {
                let target = response.headers()["location"].to_str().unwrap().to_owned();
                return (response.json().await.unwrap(), target);
            }
            assert_eq!(response.status(), 200);
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the job did not end"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Job directories in the blob store.
    pub fn blob_job_dirs(&self) -> Vec<String> {
        match std::fs::read_dir(self.data_dir.join("blobs/jobs")) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Begins the server's shutdown (as SIGTERM does).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// The typed client (`crates/client`) pointed at this server.
    pub fn api(&self, key: Option<&str>) -> batchgate_client::Client {
        batchgate_client::Client::new(&self.address)
            .unwrap()
            .with_key(key.map(str::to_owned))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn submit_json(&self, tool: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/tools/{tool}/jobs")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Submits and checks the 202; returns the job's status URL.
    pub async fn submit_ok(&self, tool: &str, body: &Value) -> String {
        accepted(self.submit_json(tool, body).await).await
    }

    /// For a submission's answer: checks the 202, waits until the job succeeded and
    /// returns its JSON result.
    pub async fn result_of(&self, submitted: reqwest::Response) -> Value {
        let location = accepted(submitted).await;
        assert_eq!(
            self.wait_until_done(&location, WAIT).await.status,
            JobState::Succeeded
        );
        self.get_json(&format!("{location}/result")).await.1
    }

    pub async fn status(&self, location: &str) -> (u16, JobStatus) {
        let response = self.client.get(self.url(location)).send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap())
    }

    /// Polls the status monitor until the job ends (303), at most `limit`.
    pub async fn wait_until_done(&self, location: &str, limit: Duration) -> JobStatus {
        let started = Instant::now();
        loop {
            let (code, status) = self.status(location).await;
            if code == 303 {
                assert!(status.status.is_terminal());
                return status;
            }
            assert!(
                matches!(code, 200 | 202),
                "unexpected status monitor answer {code}"
            );
            assert!(
                started.elapsed() < limit,
                "the job did not end within {limit:?}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_for_state(
        &self,
        location: &str,
        state: JobState,
        limit: Duration,
    ) -> JobStatus {
        let started = Instant::now();
        loop {
            let (_, status) = self.status(location).await;
            if status.status == state {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the job never became {state}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let code = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Pids of processes whose working directory is inside this server's work root.
    pub fn processes_in_work_dirs(&self) -> Vec<u32> {
        let work = std::fs::canonicalize(self.data_dir.join("work")).unwrap();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
                if cwd.starts_with(&work) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

/// Asserts a problem document: status, media type, code; returns the body.
/// Checks that a submission was accepted (202) and returns its status URL.
pub async fn accepted(response: reqwest::Response) -> String {
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status, 202, "submit: {}", response.text().await.unwrap());
    location.unwrap()
}

pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "expected {status} {code}"
    );
    let media_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(media_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    body
}

/// Skips a test whose requirement is missing, with a visible message; under
/// `BATCHGATE_TEST_STRICT=1` (CI) the skip is a failure.
pub fn skip(reason: &str) {
    if std::env::var_os("BATCHGATE_TEST_STRICT").is_some() {
        panic!("required for CI but missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}
