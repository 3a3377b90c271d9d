//! PostgreSQL stopped and started again under load: while it is down the API answers
//! `503` (never a `202` for a job it could not store), it recovers by itself, and every
//! job it accepted finishes. A test binary of its own, because it stops the server that
//! other tests use. Needs `BATCHGATE_TEST_PG_URL` and `BATCHGATE_TEST_PG_CLUSTER`
//! (`VERSION/NAME` for `pg_ctlcluster`, e.g. `15/main`; CI sets both).

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `pg_ctlcluster VERSION NAME ACTION`; dropping a stopped cluster's guard starts it.
struct Cluster {
    version: String,
    name: String,
}

impl Cluster {
    fn control(&self, action: &str) {
        let mut command = Command::new("pg_ctlcluster");
        command.args([
            "--skip-systemctl-redirect",
            &self.version,
            &self.name,
            action,
        ]);
        if action == "stop" {
            command.args(["-m", "fast"]);
        }
        let status = command.status().expect("pg_ctlcluster runs");
        assert!(status.success(), "pg_ctlcluster {action} failed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Whatever happened in the test, leave the server running for the others.
        let _ = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &self.version,
                &self.name,
                "start",
            ])
            .stderr(Stdio::null())
            .status();
    }
}

/// A submission's status code, and the job id if it was accepted.
type Answer = (u16, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(gate_pg, gate_pg_cluster)),
    ignore = "restarts a PostgreSQL cluster: set BATCHGATE_TEST_PG_URL and BATCHGATE_TEST_PG_CLUSTER=15/main"
)]
async fn postgres_restarted_under_load_gives_503_then_recovers_and_loses_nothing() {
    let (Ok(_), Ok(cluster)) = (
        std::env::var("BATCHGATE_TEST_PG_URL"),
        std::env::var("BATCHGATE_TEST_PG_CLUSTER"),
    ) else {
        common::skip(
            "set BATCHGATE_TEST_PG_URL and BATCHGATE_TEST_PG_CLUSTER (e.g. 15/main) to restart \
             PostgreSQL under load",
        );
        return;
    };
    let (version, name) = cluster.split_once('/').expect("VERSION/NAME");
    let cluster = Cluster {
        version: version.to_owned(),
        name: name.to_owned(),
    };
    let Some((url, pool)) = common::pg_schema("restart").await else {
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let mut command = common::batchgate(&["serve", "--listen", "127.0.0.1:0", "--workers", "2"]);
    command
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--store")
        .arg(&url)
        .env("BATCHGATE__LEASE_SECONDS", "2")
        .env("BATCHGATE_LOG", "error")
        .stderr(Stdio::inherit());
    let (mut child, address) = common::start(command);

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop_load = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for client_index in 0..3 {
        let client = client.clone();
        let address = address.clone();
        let answers = answers.clone();
        let stop_load = stop_load.clone();
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop_load.is_cancelled() {
                i += 1;
                let request = json!({
                    "parameters": {"label": format!("c{client_index}-{i}")},
                    "inputs": {"records": [{"sensor": "s", "timestamp": "t", "value": i}]}
                });
                let Ok(response) = client
                    .post(format!("{address}/v1/tools/analyzer/jobs"))
                    .json(&request)
                    .send()
                    .await
                else {
                    continue;
                };
                let code = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                let id = (code == 202).then(|| body["id"].as_str().unwrap().to_owned());
                if code != 202 {
                    assert_eq!(code, 503, "{body}");
                    assert_eq!(body["code"], "store-unavailable", "{body}");
                }
                answers.lock().unwrap().push((code, id));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let count = |code: u16| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| *c == code)
            .count()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(count(202) > 0, "the load runs");

    cluster.control("stop");
    let ready = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready without its store");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(503) < 3 {
        assert!(Instant::now() < deadline, "no 503 while PostgreSQL is down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.control("start");
    let accepted_before = count(202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(202) < accepted_before + 10 {
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_load.cancel();
    for task in load {
        task.await.unwrap();
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server kept running"
    );

    // Every job that was accepted finishes (exactly once, checked in the database).
    let accepted: Vec<String> = answers
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, id)| id.clone())
        .collect();
    for id in &accepted {
        let status = common::wait_ended(&client, &address, id, Duration::from_secs(60)).await;
        assert_eq!(status["status"], "succeeded", "{status}");
    }
    let (jobs, terminal): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'), \
                (SELECT COUNT(*) FROM job_events WHERE state = 'succeeded')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // A commit whose answer was lost with the connection may have stored a job that got
    // a 503; never the other way round.
    assert!(
        jobs as usize >= accepted.len(),
        "{jobs} stored, {} accepted",
        accepted.len()
    );
    assert_eq!(jobs, terminal, "each job finished once");
    let _ = child.kill();
    let _ = child.wait();
}
