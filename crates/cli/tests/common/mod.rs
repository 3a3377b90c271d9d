//! Starting the real binary in the binary's tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// `batchgate ARGS…` with stdout piped (stderr as `command` sets it).
pub fn batchgate(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchgate"));
    command.args(args).stdout(Stdio::piped());
    command
}

/// Spawns a `serve` command and reads the address from the line it prints first.
pub fn start(mut command: Command) -> (Child, String) {
    let mut child = command.spawn().expect("the binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("batchgate listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, address)
}

/// Skips a test whose requirement is missing, with a visible message; under
/// `BATCHGATE_TEST_STRICT=1` (CI) the skip is a failure.
#[allow(dead_code)] // not every test binary skips
pub fn skip(reason: &str) {
    if std::env::var_os("BATCHGATE_TEST_STRICT").is_some() {
        panic!("required for CI but missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// A new, empty PostgreSQL schema on the server `BATCHGATE_TEST_PG_URL` names: the URL
/// a batchgate process gets (the schema chosen with libpq's `options`, as an operator
/// would), and a pool on it for the test's own checks. `None` (after a visible skip)
/// without the variable.
#[allow(dead_code)] // not every test binary uses PostgreSQL
pub async fn pg_schema(prefix: &str) -> Option<(String, sqlx::PgPool)> {
    use std::str::FromStr;
    let Ok(base) = std::env::var("BATCHGATE_TEST_PG_URL") else {
        skip("set BATCHGATE_TEST_PG_URL to run the PostgreSQL tests");
        return None;
    };
    let schema = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let pool = sqlx::PgPool::connect_with(
        sqlx::postgres::PgConnectOptions::from_str(&base)
            .unwrap()
            .options([("search_path", schema.as_str())]),
    )
    .await
    .unwrap();
    Some((url, pool))
}

/// An HTTP client that shows redirects (the status monitor's `303`) instead of following
/// them.
#[allow(dead_code)] // not every test binary speaks HTTP
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Polls job `id`'s status monitor on the server at `address` until it answers `303`
/// (the job ended), and returns that status body.
#[allow(dead_code)] // not every test binary runs jobs
pub async fn wait_ended(
    client: &reqwest::Client,
    address: &str,
    id: &str,
    within: std::time::Duration,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let response = client
            .get(format!("{address}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let status: serde_json::Value = response.json().await.unwrap();
        if code == 303 {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never finished: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// GET `url` as JSON.
#[allow(dead_code)]
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// A deployment under test: a temporary directory holding `batchgate.toml` and the data
/// directory that every process started from it shares.
#[allow(dead_code)]
pub struct Deployment {
    pub dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl Deployment {
    pub fn new() -> Deployment {
        Deployment {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes the configuration every process of the deployment reads.
    pub fn configure(&self, config: &str) {
        std::fs::write(self.dir.path().join("batchgate.toml"), config).unwrap();
    }

    /// `batchgate <role>` on this configuration (2 s lease, 1 s shutdown grace).
    pub fn command(&self, role: &[&str]) -> Command {
        let mut command = batchgate(role);
        command
            .arg("--config")
            .arg(self.dir.path().join("batchgate.toml"))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .env("BATCHGATE__LEASE_SECONDS", "2")
            .env("BATCHGATE__SHUTDOWN_GRACE_SECONDS", "1")
            .env("BATCHGATE_LOG", "warn")
            .stderr(Stdio::inherit());
        command
    }

    /// `batchgate serve …` on a free port.
    pub fn start(&self, role: &[&str]) -> Server {
        let mut command = self.command(role);
        command.args(["--listen", "127.0.0.1:0"]);
        let (child, address) = start(command);
        Server { child, address }
    }

    /// `batchgate worker`.
    pub fn worker(&self) -> Server {
        let mut command = self.command(&["worker"]);
        command.stdout(Stdio::null());
        Server {
            child: command.spawn().expect("the worker starts"),
            address: String::new(),
        }
    }
}

/// A running `batchgate` process, killed when dropped.
#[allow(dead_code)]
pub struct Server {
    pub child: Child,
    pub address: String,
}

#[allow(dead_code)]
impl Server {
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits `body` to `tool`, expects `202`, returns the job id.
#[allow(dead_code)]
pub async fn submit(
    client: &reqwest::Client,
    server: &Server,
    tool: &str,
    body: serde_json::Value,
) -> String {
    let response = client
        .post(format!("{}/v1/tools/{tool}/jobs", server.address))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let body: serde_json::Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// `wait_ended` with the patience of a job run by an external engine.
#[allow(dead_code)]
pub async fn ended(client: &reqwest::Client, server: &Server, id: &str) -> serde_json::Value {
    wait_ended(
        client,
        &server.address,
        id,
        std::time::Duration::from_secs(90),
    )
    .await
}

/// `GET /v1/jobs/{id}/result` as JSON.
#[allow(dead_code)]
pub async fn result(client: &reqwest::Client, server: &Server, id: &str) -> serde_json::Value {
    get_json(client, &format!("{}/v1/jobs/{id}/result", server.address)).await
}

/// `DELETE /v1/jobs/{id}`, which must be accepted.
#[allow(dead_code)]
pub async fn cancel(client: &reqwest::Client, server: &Server, id: &str) {
    let response = client
        .delete(format!("{}/v1/jobs/{id}", server.address))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// Request text full of shell syntax that would create `canary` if it ever ran as shell
/// code.
#[allow(dead_code)]
pub fn hostile_text(canary: &std::path::Path) -> String {
    format!(
        "a  b; touch {} $(touch {}) `x` \"q\" 'r'",
        canary.display(),
        canary.display()
    )
}

/// A request to the demo analyzer whose rows are labelled `label`.
#[allow(dead_code)]
pub fn analyzer_request(label: &str) -> serde_json::Value {
    serde_json::json!({
        "parameters": {"threshold": 50, "window": 2, "label": label},
        "inputs": {"records": [
            {"sensor": "s1", "timestamp": "t1", "value": 10},
            {"sensor": "s1", "timestamp": "t2", "value": 90},
            {"sensor": "s1", "timestamp": "t3", "value": 95}
        ]}
    })
}

/// The jobs an executor's test submits at once, one per way a run can end: the demo
/// analyzer (rows labelled `label`), `echo` of request text full of shell syntax, `echo`
/// exiting 3, a memory `hog`, a `sleeper` over its timeout, and a `long` one to cancel.
/// The test's configuration declares those tools for its executor.
#[allow(dead_code)]
pub struct Endings {
    pub analyzer: String,
    pub echo: String,
    pub exit3: String,
    pub hog: String,
    pub slow: String,
    pub canceled: String,
}

impl Endings {
    #[allow(dead_code)]
    pub async fn submit(
        client: &reqwest::Client,
        server: &Server,
        label: &str,
        hostile: &str,
    ) -> Endings {
        use serde_json::json;
        Endings {
            analyzer: submit(client, server, "analyzer", analyzer_request(label)).await,
            echo: submit(
                client,
                server,
                "echo",
                json!({"parameters": {"text": hostile}}),
            )
            .await,
            exit3: submit(
                client,
                server,
                "echo",
                json!({"parameters": {"text": "bad", "code": 3}}),
            )
            .await,
            hog: submit(client, server, "hog", json!({})).await,
            slow: submit(
                client,
                server,
                "sleeper",
                json!({"parameters": {"seconds": 60}}),
            )
            .await,
            canceled: submit(
                client,
                server,
                "long",
                json!({"parameters": {"seconds": 60}}),
            )
            .await,
        }
    }
}

/// The job failed because its program exited with `code`, and its error carries the
/// end of stderr, which contains `stderr`.
#[allow(dead_code)]
pub fn assert_exit_status(status: &serde_json::Value, code: i64, stderr: &str) {
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["error"]["code"], "program-exit-status", "{status}");
    assert_eq!(status["error"]["exit_code"], code, "{status}");
    let tail = status["error"]["stderr_tail"].as_str().unwrap_or_default();
    assert!(tail.contains(stderr), "{status}");
}
