//! Scale-out with the real binary: API replicas (`serve --no-worker`) and workers
//! (`worker`) as separate processes sharing a PostgreSQL store and a blob directory, and
//! the faults they must survive. The PostgreSQL tests need `BATCHGATE_TEST_PG_URL`, the
//! object storage ones `BATCHGATE_TEST_S3_URL` / `BATCHGATE_TEST_AZURE_URL` (CI sets
//! them); they skip visibly otherwise. Each uses a schema (or prefix) of its own.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::postgres::PgPool;

/// A fresh schema: the URL every process gets, and a pool for the test's own checks.
struct Database {
    url: String,
    pool: PgPool,
}

async fn database() -> Option<Database> {
    let (url, pool) = common::pg_schema("scale").await?;
    Some(Database { url, pool })
}

struct Process {
    child: Child,
    address: Option<String>,
}

impl Process {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address.as_deref().expect("an API replica"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The settings every process of one deployment shares.
struct Deployment {
    store: String,
    blobs: PathBuf,
    root: PathBuf,
    lease_seconds: &'static str,
}

impl Deployment {
    fn new(database: &Database, root: &Path, lease_seconds: &'static str) -> Deployment {
        let blobs = root.join("shared-blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        Deployment {
            store: database.url.clone(),
            blobs,
            root: root.to_owned(),
            lease_seconds,
        }
    }

    fn command(&self, role: &str, name: &str) -> std::process::Command {
        let mut command = common::batchgate(&[role]);
        command
            .arg("--data-dir")
            .arg(self.root.join(name))
            .arg("--store")
            .arg(&self.store)
            .arg("--blobs")
            .arg(&self.blobs)
            .env("BATCHGATE__LEASE_SECONDS", self.lease_seconds)
            .env("BATCHGATE_LOG", "warn")
            .stderr(Stdio::inherit());
        command
    }

    /// `serve --no-worker` on a free port.
    fn replica(&self, name: &str) -> Process {
        let mut command = self.command("serve", name);
        command.args(["--no-worker", "--listen", "127.0.0.1:0"]);
        let (child, address) = common::start(command);
        Process {
            child,
            address: Some(address),
        }
    }

    fn worker(&self, name: &str, workers: &str) -> Process {
        let mut command = self.command("worker", name);
        command.args(["--workers", workers]).stdout(Stdio::null());
        Process {
            child: command.spawn().expect("the worker starts"),
            address: None,
        }
    }
}

fn request(label: &str, delay_seconds: u32) -> Value {
    json!({
        "parameters": {"label": label, "delay_seconds": delay_seconds},
        "inputs": {"records": [{"sensor": "s", "timestamp": "t", "value": 1}]}
    })
}

async fn submit(client: &reqwest::Client, replica: &Process, body: &Value) -> String {
    let response = client
        .post(replica.url("/v1/tools/analyzer/jobs"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let status: Value = response.json().await.unwrap();
    status["id"].as_str().unwrap().to_owned()
}

/// Polls until the job is terminal and returns its status body.
async fn finished(
    client: &reqwest::Client,
    replica: &Process,
    id: &str,
    within: Duration,
) -> Value {
    let address = replica.address.as_deref().expect("an API replica");
    common::wait_ended(client, address, id, within).await
}

async fn label_of_result(client: &reqwest::Client, replica: &Process, id: &str) -> String {
    let result = common::get_json(client, &replica.url(&format!("/v1/jobs/{id}/result"))).await;
    let name = result["insights"][0]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{result}"));
    name.split(':').next().unwrap().to_owned()
}

/// Waits until the job runs and returns its attempt number.
async fn running(database: &Database, id: &str) -> i64 {
    let id = uuid::Uuid::parse_str(id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT state, attempt FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&database.pool)
                .await
                .unwrap();
        if let Some(("running", attempt)) = row.as_ref().map(|(s, a)| (s.as_str(), *a)) {
            return attempt;
        }
        assert!(Instant::now() < deadline, "job {id} never ran: {row:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Terminal events logged for the job (exactly one if it finished exactly once).
async fn terminal_events(database: &Database, id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM job_events WHERE job_id = $1 \
         AND state IN ('succeeded', 'failed', 'canceled')",
    )
    .bind(uuid::Uuid::parse_str(id).unwrap())
    .fetch_one(&database.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_pg),
    ignore = "needs PostgreSQL: set BATCHGATE_TEST_PG_URL=postgres://…"
)]
async fn two_replicas_and_two_workers_finish_500_jobs_exactly_once() {
    let Some(database) = database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::new(&database, dir.path(), "10");
    let replicas = [deployment.replica("api-a"), deployment.replica("api-b")];
    let _workers = [
        deployment.worker("worker-a", "4"),
        deployment.worker("worker-b", "4"),
    ];
    let client = common::client();
    let replicas = &replicas;
    let submitted: Vec<(usize, String)> = futures_util::future::join_all((0..500).map(|i| {
        let client = client.clone();
        async move {
            // Alternately to both replicas, 500 at once.
            let id = submit(&client, &replicas[i % 2], &request(&format!("job{i}"), 0)).await;
            (i, id)
        }
    }))
    .await;
    for (i, id) in &submitted {
        // Read back through the other replica than the one that accepted it.
        let replica = &replicas[(i + 1) % 2];
        let status = finished(&client, replica, id, Duration::from_secs(120)).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        assert_eq!(
            label_of_result(&client, replica, id).await,
            format!("job{i}")
        );
    }
    let (jobs, succeeded, terminal): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM jobs), \
                (SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'), \
                (SELECT COUNT(*) FROM job_events \
                 WHERE state IN ('succeeded', 'failed', 'canceled'))",
    )
    .fetch_one(&database.pool)
    .await
    .unwrap();
    assert_eq!(
        (jobs, succeeded, terminal),
        (500, 500, 500),
        "each finished exactly once"
    );
    // Both workers took part.
    let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts")
        .fetch_one(&database.pool)
        .await
        .unwrap();
    assert!(attempts >= 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_pg),
    ignore = "needs PostgreSQL: set BATCHGATE_TEST_PG_URL=postgres://…"
)]
async fn a_killed_workers_job_runs_again_and_no_partial_output_is_visible() {
    let Some(database) = database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::new(&database, dir.path(), "1");
    let replica = deployment.replica("api");
    let doomed = deployment.worker("worker-a", "1");
    let client = common::client();
    let id = submit(&client, &replica, &request("survivor", 2)).await;
    assert_eq!(running(&database, &id).await, 1);
    doomed.signal("KILL");
    drop(doomed);
    // While nobody runs it, nothing of the dead attempt is offered.
    for path in ["result", "outputs/insights"] {
        let response = client
            .get(replica.url(&format!("/v1/jobs/{id}/{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} of an unfinished job");
    }
    let _rescuer = deployment.worker("worker-b", "1");
    let status = finished(&client, &replica, &id, Duration::from_secs(60)).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["attempt"], 2, "{status}");
    assert_eq!(label_of_result(&client, &replica, &id).await, "survivor");
    assert_eq!(terminal_events(&database, &id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_pg),
    ignore = "needs PostgreSQL: set BATCHGATE_TEST_PG_URL=postgres://…"
)]
async fn a_stale_worker_resumed_after_its_lease_changes_nothing() {
    let Some(database) = database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::new(&database, dir.path(), "1");
    let replica = deployment.replica("api");
    let stale = deployment.worker("worker-a", "1");
    let client = common::client();
    let id = submit(&client, &replica, &request("fenced", 1)).await;
    assert_eq!(running(&database, &id).await, 1);
    stale.signal("STOP");
    let _other = deployment.worker("worker-b", "1");
    let status = finished(&client, &replica, &id, Duration::from_secs(60)).await;
    assert_eq!(
        (status["status"].clone(), status["attempt"].clone()),
        (json!("succeeded"), json!(2))
    );
    let before = common::get_json(&client, &replica.url(&format!("/v1/jobs/{id}"))).await;
    stale.signal("CONT");
    // The stale attempt ends as discarded (its heartbeat finds the lease lost, or its
    // completion is fenced off); the job is unchanged.
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outcome: Option<String> =
            sqlx::query_scalar("SELECT outcome FROM attempts WHERE job_id = $1 AND attempt = 1")
                .bind(uuid)
                .fetch_optional(&database.pool)
                .await
                .unwrap();
        if let Some(outcome) = outcome {
            assert_eq!(outcome, "discarded");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed worker never ended its attempt"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = common::get_json(&client, &replica.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(before, after);
    assert_eq!(terminal_events(&database, &id).await, 1);
    assert_eq!(label_of_result(&client, &replica, &id).await, "fenced");
}

/// A server on object storage with `result_delivery = "signed_url"`: the monitor's `303`
/// points at the storage service's own presigned URL, which serves the result without
/// any key; inputs, outputs and logs live in the bucket.
async fn presigned_result_delivery(variable: &str) {
    let Ok(blobs) = std::env::var(variable) else {
        common::skip(&format!(
            "set {variable} to run the object storage end-to-end test"
        ));
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut command = common::batchgate(&["serve", "--listen", "127.0.0.1:0", "--workers", "1"]);
    command
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--blobs")
        .arg(format!("{blobs}/e2e-{}", uuid::Uuid::now_v7().simple()))
        .env("BATCHGATE__RESULT_DELIVERY", "signed_url")
        .env("BATCHGATE_LOG", "warn")
        .stderr(Stdio::inherit());
    let (child, address) = common::start(command);
    let server = Process {
        child,
        address: Some(address),
    };
    let client = common::client();
    let id = submit(&client, &server, &request("bucketed", 0)).await;
    let status = finished(&client, &server, &id, Duration::from_secs(60)).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let response = client
        .get(server.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let address = server.address.clone().unwrap();
    assert!(
        location.starts_with("http") && !location.starts_with(&address),
        "the storage service's URL, not the gateway's: {location}"
    );
    let result: Value = reqwest::get(&location).await.unwrap().json().await.unwrap();
    assert_eq!(
        result["insights"][0]["name"]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("bucketed"),
        "{result}"
    );
    // The gateway still serves the result itself to its key holder.
    assert_eq!(label_of_result(&client, &server, &id).await, "bucketed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(feature = "object-store", all(gate_pg, gate_s3))),
    ignore = "needs PostgreSQL and S3: set BATCHGATE_TEST_PG_URL and BATCHGATE_TEST_S3_URL, and the `object-store` feature (--all-features)"
)]
async fn s3_results_are_delivered_by_presigned_url() {
    presigned_result_delivery("BATCHGATE_TEST_S3_URL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(feature = "object-store", all(gate_pg, gate_azure))),
    ignore = "needs PostgreSQL and Azurite: set BATCHGATE_TEST_PG_URL and BATCHGATE_TEST_AZURE_URL, and the `object-store` feature (--all-features)"
)]
async fn azure_results_are_delivered_by_presigned_url() {
    presigned_result_delivery("BATCHGATE_TEST_AZURE_URL").await;
}

/// On one machine, without PostgreSQL: an API-only process and a worker process share one
/// data directory (SQLite and local blobs); a second worker on it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_process_and_a_worker_process_share_one_sqlite_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let start = |role: &str| {
        let mut command = common::batchgate(&[role, "--data-dir"]);
        command
            .arg(&data_dir)
            .env("BATCHGATE_LOG", "warn")
            .stderr(Stdio::inherit());
        command
    };
    let mut api = start("serve");
    api.args(["--no-worker", "--listen", "127.0.0.1:0"]);
    let (child, address) = common::start(api);
    let replica = Process {
        child,
        address: Some(address),
    };
    let mut worker = start("worker");
    worker.stdout(Stdio::null());
    let _worker = Process {
        child: worker.spawn().unwrap(),
        address: None,
    };
    let client = common::client();
    let id = submit(&client, &replica, &request("shared", 0)).await;
    let status = finished(&client, &replica, &id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(label_of_result(&client, &replica, &id).await, "shared");
    // A second worker would kill the first one's programs at start: refused.
    let second = start("worker").stderr(Stdio::piped()).output().unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("another batchgate process runs jobs"),
        "{said}"
    );
}
