//! Submitting jobs: the three body kinds, every rejection, idempotency.

use std::io::Write;

use batchgate_protocol::JobState;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, WAIT};

fn sensor_request() -> Value {
    json!({
        "parameters": {"threshold": 50, "window": 2, "statistics": ["count", "max"]},
        "inputs": {"records": [
            {"sensor": "s1", "timestamp": "t1", "value": 10},
            {"sensor": "s1", "timestamp": "t2", "value": 90},
            {"sensor": "s1", "timestamp": "t3", "value": 95},
            ["s2", "t1", 1]
        ]}
    })
}

fn expected_insights() -> Value {
    json!([
        {"sensor": "s1", "kind": "alert", "name": "moving_mean_above_threshold", "value": 92.5, "at": "t3"},
        {"sensor": "s1", "kind": "stat", "name": "count", "value": 3, "at": null},
        {"sensor": "s1", "kind": "stat", "name": "max", "value": 95, "at": null},
        {"sensor": "s2", "kind": "stat", "name": "count", "value": 1, "at": null},
        {"sensor": "s2", "kind": "stat", "name": "max", "value": 1, "at": null}
    ])
}

#[tokio::test]
async fn json_body_202_then_poll_then_303_to_the_json_result() {
    let app = spawn_app().await;
    let response = app.submit_json("analyzer", &sensor_request()).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(
        body["tool_version"], 2,
        "the bare name means the newest version"
    );
    assert_eq!(
        location,
        format!("/v1/jobs/{}", body["id"].as_str().unwrap())
    );

    let done = app.wait_until_done(&location, WAIT).await;
    assert_eq!(done.status, JobState::Succeeded);
    assert_eq!(done.attempt, 1);
    let monitor = app.client.get(app.url(&location)).send().await.unwrap();
    assert_eq!(monitor.status(), 303);
    let result_url = monitor.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(result_url, format!("{location}/result"));
    let result = app.client.get(app.url(&result_url)).send().await.unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["content-type"], "application/json");
    let result: Value = result.json().await.unwrap();
    assert_eq!(result, json!({"insights": expected_insights()}));

    // A client that follows redirects (curl -L) lands on the result.
    let following = reqwest::Client::new()
        .get(app.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(following.status(), 200);
    assert_eq!(following.json::<Value>().await.unwrap(), result);

    // The raw output, and the result as CSV through Accept.
    let raw = app
        .client
        .get(app.url(&format!("{location}/outputs/insights")))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-type"], "text/csv");
    assert!(raw.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("insights.csv"));
    let csv = raw.text().await.unwrap();
    assert!(
        csv.starts_with("sensor,kind,name,value,at\ns1,alert,"),
        "{csv}"
    );
    let accept_csv = app
        .client
        .get(app.url(&result_url))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(accept_csv.text().await.unwrap(), csv);
}

#[tokio::test]
async fn raw_csv_body_with_query_parameters_and_any_column_order() {
    let app = spawn_app().await;
    let csv = "value,sensor,timestamp\n10,s1,t1\n90,s1,t2\n95,s1,t3\n1,s2,t1\n";
    let response = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs?threshold=50&window=2&statistics=count,max"))
        .header("content-type", "text/csv; charset=utf-8")
        .body(csv)
        .send()
        .await
        .unwrap();
    let result = app.result_of(response).await;
    assert_eq!(result, json!({"insights": expected_insights()}));
}

#[tokio::test]
async fn multipart_with_a_csv_part_or_a_json_part() {
    let app = spawn_app().await;
    let parameters =
        json!({"threshold": 50, "window": 2, "statistics": ["count", "max"]}).to_string();
    let csv = "sensor,timestamp,value\ns1,t1,10\ns1,t2,90\ns1,t3,95\ns2,t1,1\n";
    let form = reqwest::multipart::Form::new()
        .part(
            "records",
            reqwest::multipart::Part::text(csv)
                .file_name("readings.csv")
                .mime_str("text/csv")
                .unwrap(),
        )
        .part(
            "parameters",
            reqwest::multipart::Part::text(parameters.clone())
                .mime_str("application/json")
                .unwrap(),
        );
    let response = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let result = app.result_of(response).await;
    assert_eq!(result["insights"], expected_insights());

    let records = sensor_request()["inputs"]["records"].to_string();
    let form = reqwest::multipart::Form::new()
        .part("parameters", reqwest::multipart::Part::text(parameters))
        .part(
            "records",
            reqwest::multipart::Part::text(records)
                .mime_str("application/json")
                .unwrap(),
        );
    let response = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let result = app.result_of(response).await;
    assert_eq!(result["insights"], expected_insights());

    let form =
        reqwest::multipart::Form::new().part("nonsense", reqwest::multipart::Part::text("x"));
    let response = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 422, "validation-failed").await;
    assert_eq!(body["errors"][0]["path"], "/inputs/nonsense");
}

#[tokio::test]
async fn every_rejection_is_a_problem_document_and_queues_nothing() {
    let app = spawn_app().await;
    let post = |tool: &str| app.client.post(app.url(&format!("/v1/tools/{tool}/jobs")));

    assert_problem(
        app.submit_json("nope", &json!({})).await,
        404,
        "tool-not-found",
    )
    .await;
    assert_problem(
        app.submit_json("analyzer@9", &json!({})).await,
        404,
        "tool-not-found",
    )
    .await;

    let malformed = post("analyzer")
        .header("content-type", "application/json")
        .body("{\"inputs\": {")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400, "malformed-json").await;

    let no_type = post("analyzer").body("x").send().await.unwrap();
    assert_problem(no_type, 415, "unsupported-media-type").await;
    let xml = post("analyzer")
        .header("content-type", "application/xml")
        .body("<x/>")
        .send()
        .await
        .unwrap();
    let body = assert_problem(xml, 415, "unsupported-media-type").await;
    assert!(body["detail"].as_str().unwrap().contains("text/csv"));

    let mut bad = sensor_request();
    bad["parameters"]["window"] = json!(0);
    bad["parameters"]["statistics"] = json!(["median"]);
    let body = assert_problem(
        app.submit_json("analyzer", &bad).await,
        422,
        "validation-failed",
    )
    .await;
    let paths: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/parameters/window"), "{body}");
    assert!(paths.contains(&"/parameters/statistics/0"), "{body}");

    let mut bad = sensor_request();
    bad["inputs"]["records"][1] = json!({"sensor": "s1", "value": 3});
    let body = assert_problem(
        app.submit_json("analyzer", &bad).await,
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(body["errors"][0]["path"], "/inputs/records/1/timestamp");

    let body = assert_problem(
        app.submit_json("analyzer", &json!({"parameters": {}}))
            .await,
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(body["errors"][0]["path"], "/inputs/records");

    let mut injection = sensor_request();
    injection["parameters"]["label"] = json!("x\nthreshold 0");
    let body = assert_problem(
        app.submit_json("analyzer", &injection).await,
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(body["errors"][0]["path"], "/parameters/label");

    let bad_csv = post("analyzer")
        .header("content-type", "text/csv")
        .body("sensor,value\ns,1\n")
        .send()
        .await
        .unwrap();
    let body = assert_problem(bad_csv, 422, "validation-failed").await;
    assert!(
        body["detail"].as_str().unwrap().contains("timestamp"),
        "{body}"
    );

    // Size: declared too large, then streamed past the cap without a length.
    let big = "x".repeat(101);
    let declared = post("small")
        .header("content-type", "text/plain")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_problem(declared, 413, "payload-too-large").await;
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok("x".repeat(60)), Ok("x".repeat(60))];
    let chunked = post("small")
        .header("content-type", "text/plain")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_problem(chunked, 413, "payload-too-large").await;

    // A gzip body that inflates past the cap.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![b'a'; 20_000]).unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 100);
    let response = post("small")
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "payload-too-large").await;

    let (_, page) = app.get_json("/v1/jobs").await;
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        0,
        "nothing rejected was queued"
    );
    // And the server keeps serving.
    app.submit_ok("sort", &json!({"inputs": {"lines": ["b", "a"]}}))
        .await;
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let app = spawn_app().await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(sensor_request().to_string().as_bytes())
        .unwrap();
    let response = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(encoder.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        app.wait_until_done(&location, WAIT).await.status,
        JobState::Succeeded
    );
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job_or_422() {
    let app = spawn_app().await;
    let send = |body: Value| {
        app.client
            .post(app.url("/v1/tools/analyzer/jobs"))
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
    };
    let first = send(sensor_request()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = send(sensor_request()).await.unwrap();
    assert_eq!(second.status(), 202);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    let mut different = sensor_request();
    different["parameters"]["window"] = json!(3);
    assert_problem(
        send(different).await.unwrap(),
        422,
        "idempotency-key-reused",
    )
    .await;
    let (_, page) = app.get_json("/v1/jobs").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn every_tool_example_is_accepted_and_succeeds() {
    let app = spawn_app().await;
    let (_, catalogue) = app.get_json("/v1/tools").await;
    let names: Vec<String> = catalogue["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    for name in ["analyzer", "wordfreq", "sort"] {
        assert!(names.contains(&name.to_owned()));
        for version in ["", "@1"] {
            let (code, description) = app.get_json(&format!("/v1/tools/{name}{version}")).await;
            assert_eq!(code, 200);
            let location = app
                .submit_ok(&format!("{name}{version}"), &description["example"])
                .await;
            let done = app.wait_until_done(&location, WAIT).await;
            assert_eq!(
                done.status,
                JobState::Succeeded,
                "example of {name}{version}: {done:?}"
            );
        }
    }
    let (_, sorted) = app.get_json("/v1/tools/sort").await;
    assert_eq!(
        sorted["example"]["inputs"]["lines"],
        json!(["pear", "apple", "fig"])
    );
}

/// An input given as the file's text inside a JSON body gets the same checks as the same
/// text uploaded as a file: a header without the declared columns is a 422 naming the
/// input, a reordered header is accepted and reordered.
#[tokio::test]
async fn csv_text_in_a_json_body_is_checked_like_a_csv_upload() {
    let app = spawn_app().await;
    let wrong = json!({"inputs": {"records": "x,y\n1,2\n"}});
    let body = assert_problem(
        app.submit_json("analyzer", &wrong).await,
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(body["errors"][0]["path"], "/inputs/records", "{body}");
    let upload = app
        .client
        .post(app.url("/v1/tools/analyzer/jobs"))
        .header("content-type", "text/csv")
        .body("x,y\n1,2\n")
        .send()
        .await
        .unwrap();
    assert_problem(upload, 422, "validation-failed").await;

    let reordered = json!({"inputs": {"records": "value,sensor,timestamp\n90,s1,t1\n95,s1,t2\n"},
                           "parameters": {"threshold": 50, "window": 2, "statistics": ["count"]}});
    let result = app
        .result_of(app.submit_json("analyzer", &reordered).await)
        .await;
    assert!(result.to_string().contains("\"s1\""), "{result}");
}
