//! Running jobs: cancel, timeout, failures, progress, history, versions, deletion.

use std::time::Duration;

use batchgate_protocol::JobState;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, WAIT};

#[tokio::test]
async fn cancel_stops_the_whole_process_tree() {
    let app = spawn_app().await;
    let location = app.submit_ok("sleeper", &json!({})).await;
    app.wait_for_state(&location, JobState::Running, WAIT).await;
    // The shell and its two sleeps.
    let started = std::time::Instant::now();
    while app.processes_in_work_dirs().len() < 3 {
        assert!(started.elapsed() < WAIT, "the program tree never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = app.client.delete(app.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let done = app.wait_until_done(&location, WAIT).await;
    assert_eq!(done.status, JobState::Canceled);
    let survivors = app.processes_in_work_dirs();
    assert!(
        survivors.is_empty(),
        "processes outlived the cancel: {survivors:?}"
    );
    let result = app
        .client
        .get(app.url(&format!("{location}/result")))
        .send()
        .await
        .unwrap();
    assert_problem(result, 409, "job-canceled").await;
}

#[tokio::test]
async fn cancel_of_a_queued_job_is_immediate() {
    let app = spawn_app_with("workers = 1").await;
    let blocker = app.submit_ok("sleeper", &json!({})).await;
    app.wait_for_state(&blocker, JobState::Running, WAIT).await;
    let queued = app
        .submit_ok("sort", &json!({"inputs": {"lines": ["a"]}}))
        .await;
    let response = app.client.delete(app.url(&queued)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "canceled");
    app.client.delete(app.url(&blocker)).send().await.unwrap();
    assert_eq!(
        app.wait_until_done(&blocker, WAIT).await.status,
        JobState::Canceled
    );
}

#[tokio::test]
async fn program_failures_end_failed_with_an_actionable_reason() {
    let app = spawn_app().await;
    let cases = [
        (
            "failing",
            "program-exit-status",
            "exited with status 3: bad input: row 7",
        ),
        ("slow", "timeout", "longer than the tool's limit of 1 s"),
        (
            "missing",
            "program-not-found",
            "cannot start `legacy-program`",
        ),
        ("nooutput", "missing-output", "results/out.csv"),
        ("badjson", "output-unparseable", "not valid json"),
        (
            "chatty",
            "output-too-large",
            "larger than the tool's limit of 1000 bytes",
        ),
        ("crashing", "program-killed", "signal 9"),
    ];
    for (tool, code, message) in cases {
        let location = app.submit_ok(tool, &json!({})).await;
        let done = app.wait_until_done(&location, WAIT).await;
        assert_eq!(done.status, JobState::Failed, "{tool}");
        let error = done.error.expect("a failed job has an error");
        assert_eq!(error.code, code, "{tool}: {error:?}");
        assert!(error.message.contains(message), "{tool}: {}", error.message);
        // Never a path of the server's machine.
        let shown = format!("{} {:?}", error.message, error.stderr_tail);
        for path in ["/gone/", &app.data_dir.to_string_lossy()] {
            assert!(!shown.contains(path), "{tool}: {shown}");
        }
        assert_eq!(done.attempt, 1, "a program's own failure is not retried");
        let result = app
            .client
            .get(app.url(&format!("{location}/result")))
            .send()
            .await
            .unwrap();
        let problem = assert_problem(result, 500, "job-failed").await;
        assert_eq!(problem["job_error"]["code"], code);
        assert_eq!(problem["attempts"], 1);
    }
    let location = app.submit_ok("failing", &json!({})).await;
    let done = app.wait_until_done(&location, WAIT).await;
    let error = done.error.unwrap();
    assert_eq!(error.exit_code, Some(3));
    assert_eq!(
        error.stderr_tail.as_deref(),
        Some("line one\nbad input: row 7")
    );
    let logs = app.get_text(&format!("{location}/logs")).await;
    assert_eq!(
        logs,
        "==> stdout <==\nworking\n==> stderr <==\nline one\nbad input: row 7\n"
    );

    // The demo program's own validation error reaches the user.
    let bad = json!({"inputs": {"records": [{"sensor": "s", "timestamp": "t", "value": "high"}]}});
    let location = app.submit_ok("analyzer", &bad).await;
    let error = app.wait_until_done(&location, WAIT).await.error.unwrap();
    assert_eq!(error.exit_code, Some(2));
    assert!(
        error.message.contains("value 'high' is not a number"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_tool_concurrency_limit_holds_while_other_tools_run() {
    let app = spawn_app().await; // two workers
    let first = app.submit_ok("exclusive", &json!({})).await;
    let second = app.submit_ok("exclusive", &json!({})).await;
    app.wait_for_state(&first, JobState::Running, WAIT).await;
    // A free worker takes a later job of another tool, but not the second `exclusive`.
    let other = app
        .submit_ok("sort", &json!({"inputs": {"lines": ["a"]}}))
        .await;
    assert_eq!(
        app.wait_until_done(&other, WAIT).await.status,
        JobState::Succeeded
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.status(&second).await.1.status, JobState::Queued);
    app.client.delete(app.url(&first)).send().await.unwrap();
    app.wait_for_state(&second, JobState::Running, WAIT).await;
    app.client.delete(app.url(&second)).send().await.unwrap();
    assert_eq!(
        app.wait_until_done(&second, WAIT).await.status,
        JobState::Canceled
    );
}

#[tokio::test]
async fn progress_is_reported_while_running() {
    let app = spawn_app().await;
    let request = json!({
        "parameters": {"delay_seconds": 2},
        "inputs": {"records": [{"sensor": "s", "timestamp": "t", "value": 1}]}
    });
    let location = app.submit_ok("analyzer", &request).await;
    let started = std::time::Instant::now();
    let mut seen = None;
    loop {
        let (code, status) = app.status(&location).await;
        if let Some(progress) = status.progress.clone().filter(|_| code == 200) {
            assert_eq!(status.status, JobState::Running);
            seen = Some(progress);
            break;
        }
        if code == 303 || started.elapsed() > WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let progress = seen.expect("progress was visible while the job ran");
    assert!(
        progress.percent.is_some_and(|p| (0.0..100.0).contains(&p)),
        "{progress:?}"
    );
    assert!(progress.message.is_some());
    // Logs while running show what the program has written so far (a copy at most a
    // second old, from wherever the job runs).
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let logs = app
            .get_text(&format!("{location}/logs?stream=stdout"))
            .await;
        if logs.contains("PROGRESS") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no live log: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = app.wait_until_done(&location, WAIT).await;
    assert_eq!(done.status, JobState::Succeeded);
    assert_eq!(done.progress.and_then(|p| p.percent), Some(100.0));
}

#[tokio::test]
async fn history_is_newest_first_filtered_and_paged() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let tool = if i == 2 { "wordfreq" } else { "sort" };
        let body = if i == 2 {
            json!({"inputs": {"text": "a a"}})
        } else {
            json!({"inputs": {"lines": ["x"]}})
        };
        let location = app.submit_ok(tool, &body).await;
        ids.push(location.rsplit('/').next().unwrap().to_owned());
    }
    let (_, page) = app.get_json("/v1/jobs?limit=2").await;
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[4].as_str(), ids[3].as_str()]);
    let (_, page2) = app.get_json(page["next"].as_str().unwrap()).await;
    let listed: Vec<&str> = page2["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[1].as_str()]);
    let (_, page3) = app.get_json(page2["next"].as_str().unwrap()).await;
    assert_eq!(page3["jobs"].as_array().unwrap().len(), 1);
    assert!(page3.get("next").is_none());
    let (_, words) = app.get_json("/v1/jobs?tool=wordfreq").await;
    assert_eq!(words["jobs"].as_array().unwrap().len(), 1);
    for id in &ids {
        app.wait_until_done(&format!("/v1/jobs/{id}"), WAIT).await;
    }
    let (_, succeeded) = app.get_json("/v1/jobs?status=succeeded&limit=100").await;
    assert_eq!(succeeded["jobs"].as_array().unwrap().len(), 5);
    let bad = app
        .client
        .get(app.url("/v1/jobs?status=done"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(bad, 400, "invalid-query").await;
    assert_eq!(body["errors"][0]["path"], "/query/status");
    assert_problem(
        app.client
            .get(app.url("/v1/jobs?limit=0"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid-query",
    )
    .await;
}

#[tokio::test]
async fn two_versions_are_served_side_by_side() {
    let app = spawn_app().await;
    let records = json!([{"sensor": "s", "timestamp": "t", "value": 1}]);
    let v2_only = json!({"parameters": {"statistics": ["min"]}, "inputs": {"records": records}});
    let body = assert_problem(
        app.submit_json("analyzer@1", &v2_only).await,
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(body["errors"][0]["path"], "/parameters");
    let v1 = app
        .submit_ok("analyzer@1", &json!({"inputs": {"records": records}}))
        .await;
    let v2 = app.submit_ok("analyzer@2", &v2_only).await;
    let v1_done = app.wait_until_done(&v1, WAIT).await;
    let v2_done = app.wait_until_done(&v2, WAIT).await;
    assert_eq!((v1_done.tool_version, v2_done.tool_version), (1, 2));
    let (_, v2_result) = app.get_json(&format!("{v2}/result")).await;
    assert_eq!(v2_result["insights"][0]["name"], "min");
    let (_, description) = app.get_json("/v1/tools/analyzer@1").await;
    assert_eq!(description["versions"], json!([1, 2]));
    assert_eq!(description["version"], 1);
}

#[tokio::test]
async fn deleting_a_finished_job_removes_its_data_then_410() {
    // Programs as the server's user: their emptied directories are kept for reuse.
    let app = spawn_app_with("run_as_uid = \"server\"").await;
    let location = app
        .submit_ok("sort", &json!({"inputs": {"lines": ["b", "a"]}}))
        .await;
    app.wait_until_done(&location, WAIT).await;
    let (_, result) = app.get_json(&format!("{location}/result")).await;
    assert_eq!(result, json!({"sorted": ["a", "b"]}));
    let id = location.rsplit('/').next().unwrap();
    let blob_dir = app.data_dir.join("blobs/jobs").join(id);
    assert!(blob_dir.exists());
    let response = app.client.delete(app.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert!(!blob_dir.exists(), "the job's blobs are gone");
    assert_problem(
        app.client.get(app.url(&location)).send().await.unwrap(),
        410,
        "job-expired",
    )
    .await;
    let result = app
        .client
        .get(app.url(&format!("{location}/result")))
        .send()
        .await
        .unwrap();
    assert_problem(result, 410, "job-expired").await;
    let unknown = app
        .client
        .get(app.url("/v1/jobs/01a2002b-4d6c-774b-aa96-a779251d31bc"))
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 404, "job-not-found").await;
    assert_problem(
        app.client
            .get(app.url("/v1/jobs/not-a-uuid"))
            .send()
            .await
            .unwrap(),
        404,
        "job-not-found",
    )
    .await;
    // Work directories are cleaned after every attempt (the worker's lock file stays, and
    // emptied directories kept for reuse hold nothing of any job).
    let work = app.data_dir.join("work");
    let mut left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [".lock", ".spare"]);
    for spare in std::fs::read_dir(work.join(".spare")).unwrap() {
        let spare = spare.unwrap().path();
        let mut inside: Vec<_> = std::fs::read_dir(&spare)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        inside.sort();
        assert_eq!(inside, [spare.join(".batchgate"), spare.join("tmp")]);
        for directory in inside {
            assert_eq!(std::fs::read_dir(directory).unwrap().count(), 0);
        }
    }
}

#[tokio::test]
async fn pending_status_202_setting_for_durable_functions_clients() {
    let app = spawn_app_with("pending_status = 202").await;
    let location = app.submit_ok("sleeper", &json!({})).await;
    let response = app.client.get(app.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), 202);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["location"], location.as_str());
    let result = app
        .client
        .get(app.url(&format!("{location}/result")))
        .send()
        .await
        .unwrap();
    assert_problem(result, 404, "job-not-finished").await;
    app.client.delete(app.url(&location)).send().await.unwrap();
    assert_eq!(
        app.wait_until_done(&location, WAIT).await.status,
        JobState::Canceled
    );
}
