//! Following jobs: the event stream, `Prefer: wait`, the operation resource for generic
//! pollers, and the typed client (`crates/client`) end to end.

use std::time::{Duration, Instant};

use batchgate_client::{Error, JobFilter, JobState, Submission};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with};

fn slow_analyzer(seconds: u64) -> Value {
    json!({
        "inputs": {"records": [
            {"sensor": "s1", "timestamp": "t1", "value": 1},
            {"sensor": "s1", "timestamp": "t2", "value": 2},
        ]},
        "parameters": {"delay_seconds": seconds, "window": 1}
    })
}

fn submission(body: Value) -> Submission {
    Submission::json(serde_json::from_value(body).unwrap())
}

#[tokio::test]
async fn the_event_stream_shows_every_change_and_resumes_after_last_event_id() {
    let app = spawn_app().await;
    let client = app.api(None);
    let job = client
        .submit("analyzer@2", &submission(slow_analyzer(2)))
        .await
        .unwrap()
        .status;
    let id = job.id.to_string();
    assert_eq!(job.links.events, format!("/v1/jobs/{id}/events"));
    let events: Vec<_> = client
        .events(&id, None)
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;

    let kinds: Vec<(&str, JobState)> = events
        .iter()
        .map(|(_, e)| (e.kind.as_str(), e.status))
        .collect();
    assert_eq!(kinds[0], ("state", JobState::Queued), "{kinds:?}");
    assert_eq!(kinds[1], ("state", JobState::Running), "{kinds:?}");
    assert_eq!(
        kinds.last().unwrap(),
        &("state", JobState::Succeeded),
        "the stream closes after the terminal event: {kinds:?}"
    );
    let percents: Vec<f64> = events
        .iter()
        .filter(|(_, e)| e.kind == "progress")
        .filter_map(|(_, e)| e.progress.as_ref()?.percent)
        .collect();
    assert!(
        percents.len() >= 3,
        "progress is streamed as it happens: {percents:?}"
    );
    assert!(percents.windows(2).all(|p| p[0] <= p[1]), "{percents:?}");
    let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    let last = &events.last().unwrap().1;
    assert_eq!(
        last.location.as_deref(),
        Some(&*format!("/v1/jobs/{id}/result"))
    );

    // A reconnect after the second event gets exactly the rest.
    let resumed: Vec<_> = client
        .events(&id, Some(ids[1]))
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(resumed, events[2..].to_vec());

    // Nothing after the last one: 204, so an EventSource stops reconnecting.
    let response = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .header("last-event-id", ids.last().unwrap().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // The stream's subscriptions are gone with it.
    assert_eq!(app.runtime.store.changes().watched(), 0);
}

#[tokio::test]
async fn a_live_stream_sees_a_cancel_and_ends_with_it() {
    let app = spawn_app().await;
    let client = app.api(None);
    let job = client
        .submit("sleeper", &Submission::default())
        .await
        .unwrap()
        .status;
    let id = job.id.to_string();
    let mut stream = Box::pin(client.events(&id, None).await.unwrap());
    let mut seen = Vec::new();
    while let Some(item) = stream.next().await {
        let (_, event) = item.unwrap();
        if event.status == JobState::Running && event.kind == "state" {
            client.cancel(&id).await.unwrap();
        }
        seen.push((event.kind.clone(), event.status));
    }
    assert!(
        seen.contains(&("cancel-requested".to_owned(), JobState::Running)),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().unwrap(),
        &("state".to_owned(), JobState::Canceled)
    );
}

#[tokio::test]
async fn prefer_wait_answers_as_soon_as_the_job_ends() {
    let app = spawn_app_with("max_wait_seconds = 5").await;
    // On submit: a quick job is answered like the status monitor once it has ended.
    let response = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs"))
        .header("prefer", "respond-async, wait=5")
        .body(include_str!("../../../../examples/request.json"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["preference-applied"], "wait=5");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.ends_with("/result"), "{location}");
    assert!(response.headers().contains_key("operation-location"));
    let (status, result) = app.get_json(&location).await;
    assert_eq!(status, 200);
    assert!(result["insights"].is_array(), "{result}");

    // On the status monitor: the answer comes when the job ends, not after N seconds.
    let submitted = app.submit_ok("analyzer@2", &slow_analyzer(1)).await;
    let started = Instant::now();
    let response = app
        .client
        .get(app.url(&submitted))
        .header("prefer", "wait=30")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["preference-applied"],
        "wait=5",
        "capped by max_wait_seconds"
    );
    assert!(took < Duration::from_secs(4), "answered in {took:?}");

    // A job that does not end in time: the pending answer after the wait.
    let sleeping = app.submit_ok("sleeper", &json!({})).await;
    let started = Instant::now();
    let response = app
        .client
        .get(app.url(&sleeping))
        .header("prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    assert!(response.headers().contains_key("retry-after"));
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Without the preference nothing waits and nothing is claimed applied.
    let response = app.client.get(app.url(&sleeping)).send().await.unwrap();
    assert!(!response.headers().contains_key("preference-applied"));

    // The pending answer shows the job as it is when the wait ends (its progress during
    // the wait included), not as it was when the wait began.
    let progressing = app.submit_ok("analyzer@2", &slow_analyzer(4)).await;
    let response = app
        .client
        .get(app.url(&progressing))
        .header("prefer", "wait=2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let pending: Value = response.json().await.unwrap();
    assert_eq!(pending["status"], "running", "{pending}");
    let percent = pending["progress"]["percent"].as_f64().unwrap_or(0.0);
    assert!(percent >= 20.0, "progress made during the wait: {pending}");
}

#[tokio::test]
async fn the_operation_resource_speaks_the_generic_poller_dialect() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs"))
        .header("content-type", "application/json")
        .body(include_str!("../../../../examples/request.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let operation = response.headers()["operation-location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        operation.starts_with(&format!("{}/v1/operations/", app.address)),
        "absolute, from the request's Host: {operation}"
    );
    let body = loop {
        let body: Value = app
            .client
            .get(&operation)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] == "succeeded" {
            break body;
        }
        assert!(
            ["notStarted", "running"].contains(&body["status"].as_str().unwrap()),
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["percentComplete"], 100.0);
    let result: Value = app
        .client
        .get(body["resourceLocation"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(result["insights"].is_array(), "{result}");

    // A failed job: status failed with the job's error; always 200.
    let location = app.submit_ok("failing", &json!({})).await;
    app.wait_until_done(&location, Duration::from_secs(10))
        .await;
    let id = location.rsplit('/').next().unwrap();
    let response = app
        .client
        .get(app.url(&format!("/v1/operations/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"]["code"], "program-exit-status");
    assert!(body.get("resourceLocation").is_none());

    // The configured public URL wins over the Host header.
    let app = spawn_app_with("public_url = \"https://batch.example.org\"").await;
    let response = app
        .submit_json("analyzer", &json!({"inputs": {"records": []}}))
        .await;
    assert_eq!(
        response.headers()["operation-location"]
            .to_str()
            .unwrap()
            .rsplit_once('/')
            .unwrap()
            .0,
        "https://batch.example.org/v1/operations"
    );
}

#[tokio::test]
async fn the_client_submits_waits_and_reports_each_poll() {
    let app = spawn_app().await;
    let client = app.api(None);
    let example = client.tool("analyzer").await.unwrap().example;
    let mut polls = Vec::new();
    let done = client
        .submit_and_wait("analyzer", &Submission::json(example), |status| {
            polls.push(status.status)
        })
        .await
        .unwrap();
    assert_eq!(done.status.status, JobState::Succeeded);
    assert_eq!(polls.first(), Some(&JobState::Queued));
    assert_eq!(polls.last(), Some(&JobState::Succeeded));
    assert!(done.result["insights"].is_array(), "{}", done.result);

    // An upload from a file, and a download of an output to a file.
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.csv");
    std::fs::write(&records, "sensor,timestamp,value\ns1,t1,5\ns1,t2,500\n").unwrap();
    let upload = Submission {
        files: vec![("records".into(), records)],
        parameters: serde_json::from_value(json!({"threshold": 10, "window": 1})).unwrap(),
        ..Submission::default()
    };
    let done = client
        .submit_and_wait("analyzer", &upload, |_| {})
        .await
        .unwrap();
    let id = done.status.id.to_string();
    let target = dir.path().join("insights.csv");
    let size = client.download(&id, "insights", &target).await.unwrap();
    let text = std::fs::read_to_string(&target).unwrap();
    assert_eq!(size as usize, text.len());
    assert!(text.contains("s1,alert"), "{text}");
    // A file and records in one upload: the records go as a JSON part, as in a JSON body.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "from a file\n").unwrap();
    let mixed = Submission {
        files: vec![("notes".into(), notes)],
        inputs: serde_json::from_value(json!({"points": [{"x": 3, "y": 4}]})).unwrap(),
        ..Submission::default()
    };
    let paired = client
        .submit_and_wait("pair", &mixed, |_| {})
        .await
        .unwrap();
    assert_eq!(paired.result["out"], json!(["from a file", "x,y", "3,4"]));

    let page = client
        .jobs(&JobFilter {
            status: Some(JobState::Succeeded),
            limit: Some(1),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.jobs[0].id, paired.status.id);
    assert!(page.next_cursor.is_some());
}

#[tokio::test]
async fn the_client_turns_failures_and_refusals_into_typed_errors() {
    let app = spawn_app().await;
    let client = app.api(None);
    match client
        .submit_and_wait("failing", &Submission::default(), |_| {})
        .await
    {
        Err(Error::JobFailed(status)) => {
            let error = status.error.unwrap();
            assert_eq!(error.code, "program-exit-status");
            assert!(error.stderr_tail.unwrap().contains("bad input: row 7"));
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    let invalid = submission(json!({"inputs": {"records": []}, "parameters": {"window": 0}}));
    match client.submit("analyzer", &invalid).await {
        Err(Error::Api {
            status, problem, ..
        }) => {
            assert_eq!(status, 422);
            assert_eq!(problem.errors[0].path, "/parameters/window");
        }
        other => panic!("expected a 422, got {other:?}"),
    }
    let error = client.tool("no-such-tool").await.unwrap_err();
    assert_eq!(error.code(), Some("tool-not-found"));
    assert!(!error.is_transient());
    // Nothing listens there: unreachable, which is worth retrying.
    let error = batchgate_client::Client::new("http://127.0.0.1:9")
        .unwrap()
        .tools()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn another_callers_job_has_no_events() {
    let app = spawn_app().await;
    let alice = app.create_key("standard", false).await;
    let bob = app.create_key("standard", false).await;
    let location = app.submit_ok_as(&alice, "sleeper", &json!({})).await;
    let response = app.get_as(&bob, &format!("{location}/events")).await;
    assert_eq!(response.status(), 404);
    let id = location.rsplit('/').next().unwrap();
    let response = app.get_as(&bob, &format!("/v1/operations/{id}")).await;
    assert_eq!(response.status(), 404);
    let response = app.get_as(&alice, &format!("{location}/events")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    app.api(Some(&alice)).cancel(id).await.unwrap();
}

#[tokio::test]
async fn open_streams_end_when_the_server_shuts_down() {
    let app = spawn_app().await;
    let client = app.api(None);
    let job = client
        .submit("sleeper", &Submission::default())
        .await
        .unwrap()
        .status;
    let mut stream = Box::pin(client.events(&job.id.to_string(), None).await.unwrap());
    let (_, first) = stream.next().await.unwrap().unwrap();
    assert_eq!(first.status, JobState::Queued);
    let waiting = tokio::spawn({
        let client = client.clone();
        let id = job.id.to_string();
        async move { client.poll(&id, Some(Duration::from_secs(60))).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Instant::now();
    app.stop();
    // The stream closes without a terminal event (a client resumes elsewhere), and the
    // held poll is answered, long before the drain's deadline.
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends at shutdown");
    assert!(rest
        .iter()
        .all(|item| !item.as_ref().is_ok_and(|(_, e)| e.status.is_terminal())));
    let poll = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the held poll is answered at shutdown")
        .unwrap()
        .unwrap();
    assert!(!poll.status.status.is_terminal());
    assert!(stopped.elapsed() < Duration::from_secs(5));
}
