//! Keys, tiers, quotas, rate limits, backpressure, signed URLs, retention and costs:
//! the abuse suite of the protection issue.

use std::time::Duration;

use batchgate_protocol::JobState;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with};

fn lines() -> Value {
    json!({"inputs": {"lines": ["b", "a"]}})
}

#[tokio::test]
async fn keys_turn_authentication_on_and_revocation_is_immediate() {
    let app = spawn_app().await;
    // No key exists: open (on loopback).
    let (code, _) = app.get_json("/v1/jobs").await;
    assert_eq!(code, 200);

    let key = app.create_key("standard", false).await;
    let response = app.client.get(app.url("/v1/jobs")).send().await.unwrap();
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_problem(response, 401, "api-key-required").await;
    // Catalogue and submissions too; health stays open.
    let response = app.client.get(app.url("/v1/tools")).send().await.unwrap();
    assert_problem(response, 401, "api-key-required").await;
    let response = app.submit_json("sort", &lines()).await;
    assert_problem(response, 401, "api-key-required").await;
    assert_eq!(app.get_json("/healthz").await.0, 200);

    for bad in ["nonsense", &key[..key.len() - 1], &flip_last_hex(&key)] {
        let response = app.get_as(bad, "/v1/jobs").await;
        let body = assert_problem(response, 401, "invalid-api-key").await;
        assert!(!body.to_string().contains(bad), "the key is echoed: {body}");
    }
    let response = app
        .client
        .get(app.url("/v1/jobs"))
        .header("authorization", format!("Basic {key}"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "invalid-api-key").await;

    assert_eq!(app.get_as(&key, "/v1/jobs").await.status(), 200);
    let response = app
        .client
        .get(app.url("/v1/jobs"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let id = batchgate_server::auth::keys::parse_id(&key)
        .unwrap()
        .to_owned();
    assert!(app
        .runtime
        .store
        .revoke_key(&id, chrono::Utc::now())
        .await
        .unwrap());
    let response = app.get_as(&key, "/v1/jobs").await;
    assert_problem(response, 401, "api-key-revoked").await;
    // Keys are stored only as hashes.
    let stored = app.runtime.store.find_key(&id).await.unwrap().unwrap();
    assert!(!stored.hash.contains(&key[20..]));
    let database = std::fs::read(app.data_dir.join("jobs.db")).unwrap();
    let secret_part = &key.as_bytes()[key.len() - 64..];
    assert!(!database.windows(64).any(|w| w == secret_part));
}

#[tokio::test]
async fn one_caller_never_sees_another_callers_jobs() {
    let app = spawn_app().await;
    let alice = app.create_key("standard", false).await;
    let bob = app.create_key("standard", false).await;
    let admin = app.create_key("standard", true).await;
    let location = app.submit_ok_as(&alice, "sort", &lines()).await;
    let (_, result) = app.wait_as(&alice, &location).await;
    assert_eq!(app.get_as(&alice, &result).await.status(), 200);

    let paths = [
        location.clone(),
        result.clone(),
        format!("{location}/outputs/sorted"),
        format!("{location}/logs"),
    ];
    for path in &paths {
        let response = app.get_as(&bob, path).await;
        assert_problem(response, 404, "job-not-found").await;
    }
    let response = app
        .client
        .delete(app.url(&location))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_problem(response, 404, "job-not-found").await;
    let (_, page) = parse(app.get_as(&bob, "/v1/jobs").await).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0);

    // The same Idempotency-Key from another caller is another job.
    let submit = |key: &str| {
        app.client
            .post(app.url("/v1/tools/sort/jobs"))
            .bearer_auth(key.to_owned())
            .header("idempotency-key", "order-1")
            .json(&lines())
            .send()
    };
    let first = submit(&alice).await.unwrap();
    let again = submit(&alice).await.unwrap();
    let other = submit(&bob).await.unwrap();
    let location_of = |r: &reqwest::Response| r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location_of(&first), location_of(&again));
    assert_ne!(location_of(&first), location_of(&other));

    // An admin sees everyone's jobs.
    assert_eq!(app.get_as(&admin, &location).await.status(), 303);
    let (_, page) = parse(app.get_as(&admin, "/v1/jobs").await).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3);
    let (_, page) = parse(app.get_as(&alice, "/v1/jobs").await).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
}

async fn parse(response: reqwest::Response) -> (u16, Value) {
    let code = response.status().as_u16();
    (code, response.json().await.unwrap())
}

#[tokio::test]
async fn a_tier_limits_tools_size_and_jobs_per_window_and_a_refusal_leaves_nothing() {
    let app = spawn_app().await;
    let free = app.create_key("free", false).await;
    // The demo's free tier: analyzer@2 and wordfreq only.
    for tool in ["sort", "analyzer@1"] {
        let response = app.submit_as(&free, tool, &lines()).await;
        assert_problem(response, 403, "tool-not-allowed").await;
    }
    // 1 MiB for the free tier, though the tool allows 10 MiB: by Content-Length…
    let big = "x".repeat(1_100_000);
    let response = app
        .client
        .post(app.url("/v1/tools/wordfreq/jobs"))
        .bearer_auth(&free)
        .header("content-type", "text/plain")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "payload-too-large").await;
    // …and while streaming a chunked body that announces no length.
    let chunks = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 100_000]))),
    );
    let response = app
        .client
        .post(app.url("/v1/tools/wordfreq/jobs"))
        .bearer_auth(&free)
        .header("content-type", "text/plain")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "payload-too-large").await;

    let text = json!({"inputs": {"text": "the cat and the hat"}});
    let response = app.submit_as(&free, "wordfreq", &text).await;
    assert_eq!(response.status(), 202);
    let policy = response.headers()["ratelimit-policy"].to_str().unwrap();
    assert!(policy.contains("\"jobs\";q=1;w=300"), "{policy}");
    // The 202 says how many jobs are left, and how many requests.
    let left = response.headers()["ratelimit"].to_str().unwrap();
    assert!(
        left.starts_with("\"jobs\";r=0;t=") && left.contains(", \"requests\";r="),
        "{left}"
    );
    let jobs_before = app
        .runtime
        .store
        .usage(None, chrono::Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap()
        .jobs;
    let blobs_before = app.blob_job_dirs().len();

    let response = app.submit_as(&free, "wordfreq", &text).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((290..=300).contains(&retry_after), "{retry_after}");
    assert!(response.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .contains("\"jobs\";r=0"));
    let body = assert_problem(response, 429, "quota-exceeded").await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("1 job(s) per 300 s"));
    let jobs_after = app
        .runtime
        .store
        .usage(None, chrono::Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap()
        .jobs;
    assert_eq!(jobs_after, jobs_before, "a refused job was stored");
    assert_eq!(
        app.blob_job_dirs().len(),
        blobs_before,
        "a refused job left blobs"
    );
    let staging = std::fs::read_dir(app.data_dir.join("staging"))
        .unwrap()
        .count();
    assert_eq!(staging, 0);

    let (_, usage) = parse(app.get_as(&free, "/v1/usage").await).await;
    assert_eq!(usage["tier"], "free");
    assert_eq!(usage["now"]["jobs_in_window"], 1);
    assert_eq!(usage["now"]["jobs_remaining"], 0);
    assert_eq!(usage["limits"]["jobs_per_window"], 1);
}

#[tokio::test]
async fn concurrent_jobs_and_request_rate_are_limited_with_headers() {
    let app = spawn_app_with(
        r#"
        [tiers.tight]
        requests_per_minute = 6
        concurrent_jobs = 1
        "#,
    )
    .await;
    let key = app.create_key("tight", false).await;
    let running = app.submit_ok_as(&key, "exclusive", &json!({})).await; // 1
    let response = app.submit_as(&key, "sort", &lines()).await; // 2
                                                                // The refusal describes the limit it is about, the tier's policies say which.
    assert_eq!(response.headers()["ratelimit"], "\"concurrent\";r=0");
    let policy = response.headers()["ratelimit-policy"].to_str().unwrap();
    assert!(policy.contains("\"concurrent\";q=1"), "{policy}");
    assert_problem(response, 429, "too-many-concurrent-jobs").await;
    for _ in 0..3 {
        // 3, 4, 5
        assert_eq!(app.get_as(&key, "/v1/tools").await.status(), 200);
    }
    let response = app.get_as(&key, "/v1/tools").await; // 6
    assert_eq!(response.status(), 200);
    let remaining = response.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(remaining.starts_with("\"requests\";r=0;t="), "{remaining}");
    let response = app.get_as(&key, "/v1/tools").await; // 7
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert!(response.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .contains("\"requests\";q=6;w=60"));
    assert_problem(response, 429, "rate-limited").await;
    // The count is in the store (it survives a restart and holds across replicas).
    let id = batchgate_server::auth::keys::parse_id(&key).unwrap();
    let window =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() / 60 * 60, 0).unwrap();
    assert_eq!(
        app.runtime.store.count_request(id, window).await.unwrap(),
        8
    );
    // Another key is not affected.
    let other = app.create_key("tight", false).await;
    assert_eq!(app.get_as(&other, "/v1/tools").await.status(), 200);
    let response = app
        .client
        .delete(app.url(&running))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let app = spawn_app_with("workers = 1\nmax_queued_jobs = 2").await;
    let first = app.submit_ok("exclusive", &json!({})).await;
    app.wait_for_state(&first, JobState::Running, Duration::from_secs(10))
        .await;
    let queued: Vec<String> = vec![
        app.submit_ok("exclusive", &json!({})).await,
        app.submit_ok("exclusive", &json!({})).await,
    ];
    let response = app.submit_json("sort", &lines()).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "queue-full").await;
    for location in queued.iter().chain([&first]) {
        app.client.delete(app.url(location)).send().await.unwrap();
    }
    app.wait_for_state(&first, JobState::Canceled, Duration::from_secs(10))
        .await;
    app.submit_ok("sort", &lines()).await;
}

#[tokio::test]
async fn signed_result_urls_work_without_a_key_until_they_expire() {
    let app = spawn_app_with("result_delivery = \"signed_url\"\nsigned_url_seconds = 600").await;
    let key = app.create_key("standard", false).await;
    let location = app.submit_ok_as(&key, "sort", &lines()).await;
    let (status, signed) = app.wait_as(&key, &location).await;
    assert!(
        signed.contains("/result?expires=") && signed.contains("&sig="),
        "{signed}"
    );
    let signed_output = status.links.outputs[0].href.clone();
    assert!(signed_output.contains("sig="));

    let response = app.client.get(app.url(&signed)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "private, no-store");
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["sorted"], json!(["a", "b"]));
    let response = app
        .client
        .get(app.url(&signed_output))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "a\nb\n");

    // Edited, moved to another path or job, or expired: 403.
    let other = app.submit_ok_as(&key, "sort", &lines()).await;
    let (_, other_signed) = app.wait_as(&key, &other).await;
    let (path, query) = signed.split_once('?').unwrap();
    let other_path = other_signed.split_once('?').unwrap().0;
    let expires: i64 = query.split('&').next().unwrap()[8..].parse().unwrap();
    let tampered = [
        format!(
            "{path}?{}",
            query.replace(&expires.to_string(), &(expires + 3600).to_string())
        ),
        format!("{path}?{}", flip_last_hex(query)),
        format!("{other_path}?{query}"),
        format!("{}/logs?{query}", path.trim_end_matches("/result")),
        format!(
            "{}/outputs/sorted?{query}",
            path.trim_end_matches("/result")
        ),
        format!("{path}?expires={expires}&sig=00"),
    ];
    for url in &tampered {
        let response = app.client.get(app.url(url)).send().await.unwrap();
        assert_eq!(response.status(), 403, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "signed-url-invalid", "{url}");
    }
    let job_id = status.id;
    let owner = batchgate_server::auth::keys::parse_id(&key).unwrap();
    let past = chrono::Utc::now().timestamp() - 1;
    let stale = app.runtime.signer.sign(path, job_id, owner, past);
    let response = app
        .client
        .get(app.url(&format!("{path}?{}", stale.to_query())))
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "signed-url-expired").await;

    // Rotation: the previous secret still verifies, the one before it no longer does.
    app.runtime.signer.rotate().await.unwrap();
    assert_eq!(
        app.client
            .get(app.url(&signed))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.runtime.signer.rotate().await.unwrap();
    assert_eq!(
        app.client
            .get(app.url(&signed))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // Purged: 410 (with a valid signature).
    let (_, fresh) = app.wait_as(&key, &other).await;
    app.client
        .delete(app.url(&other))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let response = app.client.get(app.url(&fresh)).send().await.unwrap();
    assert_problem(response, 410, "job-expired").await;
}

fn flip_last_hex(query: &str) -> String {
    let mut text = query.to_owned();
    let last = text.pop().unwrap();
    text.push(if last == '0' { '1' } else { '0' });
    text
}

#[tokio::test]
async fn retention_deletes_rows_data_and_blobs_together_and_never_unfinished_jobs() {
    let app = spawn_app_with(
        r#"
        reaper_interval_seconds = 0.2
        [tiers.brief]
        retention_seconds = 1
        "#,
    )
    .await;
    let key = app.create_key("brief", false).await;
    let slow = json!({"inputs": {"records": [
        {"sensor": "a", "timestamp": "2024-01-01T00:00:00Z", "value": 1.5}
    ]}, "parameters": {"delay_seconds": 60}});
    let running = app.submit_ok_as(&key, "analyzer", &slow).await;
    let done = app.submit_ok_as(&key, "sort", &lines()).await;
    let (status, _) = app.wait_as(&key, &done).await;
    let expires = status.expires_at.unwrap();
    let finished = status.finished_at.unwrap();
    assert!((expires - finished).num_milliseconds() <= 1000);
    assert!(app.blob_job_dirs().contains(&status.id.to_string()));

    let started = std::time::Instant::now();
    loop {
        let response = app.get_as(&key, &done).await;
        if response.status() == 410 {
            assert_problem(response, 410, "job-expired").await;
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Row and blobs went together; the running job kept its data. The row answers 410
    // first (purge order: mark, delete blobs, mark cleaned), so give the reaper the moment
    // it needs to finish deleting.
    let purge_started = std::time::Instant::now();
    while app.blob_job_dirs().contains(&status.id.to_string())
        && purge_started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dirs = app.blob_job_dirs();
    assert!(!dirs.contains(&status.id.to_string()));
    let running_status = app.get_as(&key, &running).await;
    assert_eq!(running_status.status(), 200);
    let running_id = running.rsplit('/').next().unwrap();
    assert!(dirs.contains(&running_id.to_owned()));
    // No orphan blobs, no row whose blobs are gone but not marked.
    for dir in &dirs {
        let job = app
            .runtime
            .store
            .get(dir.parse().unwrap())
            .await
            .unwrap()
            .expect("every blob directory has its job");
        assert!(job.purged_at.is_none(), "blobs of a purged job remain");
    }
    app.client
        .delete(app.url(&running))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn usage_and_metrics_count_every_attempt() {
    // A tier of this test alone, so that its metric series are not shared with others.
    let app = spawn_app_with("[tiers.metered]\nconcurrent_jobs = 16").await;
    let key = app.create_key("metered", false).await;
    let admin = app.create_key("standard", true).await;
    // A run of a second, so that its memory is sampled while it runs.
    let input = json!({"inputs": {"records": [
        {"sensor": "a", "timestamp": "2024-01-01T00:00:00Z", "value": 1.5},
        {"sensor": "a", "timestamp": "2024-01-01T00:01:00Z", "value": 2.5}
    ]}, "parameters": {"delay_seconds": 1}});
    let location = app.submit_ok_as(&key, "analyzer", &input).await;
    app.wait_as(&key, &location).await;
    let (code, usage) = parse(app.get_as(&key, "/v1/usage").await).await;
    assert_eq!(code, 200);
    let day = &usage["windows"][1];
    assert_eq!(day["name"], "day");
    assert_eq!(day["jobs"], 1);
    assert_eq!(day["attempts"], 1);
    assert!(day["bytes_in"].as_u64().unwrap() > 0, "{usage}");
    assert!(day["bytes_out"].as_u64().unwrap() > 0, "{usage}");
    assert!(
        day["peak_memory_bytes"].as_u64().unwrap() > 100_000,
        "{usage}"
    );
    assert!(day["cpu_seconds"].as_f64().unwrap() >= 0.0);
    assert!(day["wall_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(usage["limits"]["concurrent_jobs"], 16);
    // The admin's own usage does not include the other key's jobs.
    let (_, theirs) = parse(app.get_as(&admin, "/v1/usage").await).await;
    assert_eq!(theirs["windows"][1]["jobs"], 0);

    let response = app.get_as(&key, "/metrics").await;
    assert_problem(response, 403, "admin-required").await;
    let response = app.submit_as(&key, "no-such-tool", &json!({})).await;
    assert_problem(response, 404, "tool-not-found").await;
    let metrics = app.get_as(&admin, "/metrics").await.text().await.unwrap();
    for expected in [
        "batchgate_jobs_submitted_total{tool=\"analyzer\",tier=\"metered\"} 1\n",
        "batchgate_attempts_total{tool=\"analyzer\",tier=\"metered\",outcome=\"succeeded\"} 1\n",
        "batchgate_run_seconds_bucket{tool=\"analyzer\",tier=\"metered\"",
        // Each refusal is counted once.
        "batchgate_rejections_total{reason=\"tool-not-found\",tier=\"metered\"} 1\n",
        "batchgate_rejections_total{reason=\"admin-required\",tier=\"metered\"} 1\n",
        "batchgate_queue_wait_seconds_bucket{tool=\"analyzer\"",
        "batchgate_jobs{tool=\"analyzer\",state=\"succeeded\"}",
    ] {
        assert!(metrics.contains(expected), "missing {expected}:\n{metrics}");
    }
}

#[tokio::test]
async fn the_program_sees_only_its_environment_allowlist() {
    let app = spawn_app().await;
    let location = app
        .submit_ok(
            "envdump",
            &json!({"parameters": {"PATH": "/tmp/evil", "LD_PRELOAD": "/tmp/evil.so"}}),
        )
        .await;
    let status = app
        .wait_until_done(&location, Duration::from_secs(10))
        .await;
    assert_eq!(status.status, JobState::Succeeded);
    let (_, result) = app.get_json(&format!("{location}/result")).await;
    let mut names: Vec<String> = result["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line.as_str().unwrap().split('=').next().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["HOME", "LANG", "PATH", "TMPDIR"]);
    let lines = result["env"].to_string();
    assert!(lines.contains("PATH=/usr/local/bin:/usr/bin:/bin"));
    assert!(!lines.contains("evil"));
}

/// A tool that declares no limits still gets the default open-files limit (set by
/// `batchgate-limits` before its first instruction, soft = hard) and cannot dump core
/// (the server forbade core dumps for itself and its children).
#[tokio::test]
async fn a_program_without_declared_limits_gets_the_defaults_and_cannot_dump_core() {
    let app = spawn_app().await;
    let location = app.submit_ok("limits", &json!({})).await;
    let status = app
        .wait_until_done(&location, Duration::from_secs(20))
        .await;
    assert_eq!(status.status, JobState::Succeeded);
    let (_, result) = app.get_json(&format!("{location}/result")).await;
    let limit = |name: &str, words: usize| {
        result["limits"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|line| line.as_str())
            .find(|line| line.starts_with(name))
            .unwrap()
            .split_whitespace()
            .skip(words)
            .take(2)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(limit("Max core file size", 4), ["0", "0"], "core dumps");
    assert_eq!(limit("Max open files", 3), ["1024", "1024"], "open files");
}

#[tokio::test]
async fn a_program_that_writes_without_end_is_stopped() {
    let app = spawn_app().await;
    let started = std::time::Instant::now();
    let location = app.submit_ok("endless", &json!({})).await;
    let status = app
        .wait_until_done(&location, Duration::from_secs(20))
        .await;
    // Long before its 120 s timeout.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(status.status, JobState::Failed);
    let error = status.error.unwrap();
    assert_eq!(error.code, "output-too-large");
    assert!(error.message.contains("100000 bytes"), "{}", error.message);
    // What was kept is capped.
    let stdout = app
        .get_text(&format!("{location}/logs?stream=stdout"))
        .await;
    assert!(stdout.len() <= 100_000, "{}", stdout.len());
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(
        "max_connections = 2
header_timeout_seconds = 30",
    )
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let blocked = client
        .get(app.url("/healthz"))
        .timeout(Duration::from_millis(700))
        .send()
        .await;
    assert!(blocked.is_err(), "a third connection was served");
    drop(idle);
    let served = client
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app_with(
        "max_connections = 3
header_timeout_seconds = 1",
    )
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    // Clients that connect and never send a byte take every slot...
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // ...until the header timeout closes them: the server reads EOF-then-closes, so each
    // read ends (0 bytes) instead of waiting.
    let started = std::time::Instant::now();
    for stream in &mut silent {
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection stayed open: {read:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    let served = app
        .client
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}

#[tokio::test]
async fn slow_headers_huge_headers_and_unknown_encodings_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with("header_timeout_seconds = 1").await;
    let address = app.address.trim_start_matches("http://").to_owned();

    // A client that never finishes its headers is disconnected.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the connection was held open");
    assert!(started.elapsed() < Duration::from_secs(4));
    // The server still serves.
    assert_eq!(app.get_json("/healthz").await.0, 200);

    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-big", "a".repeat(64 * 1024))
        .send()
        .await;
    match response {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(error) => assert!(error.is_request() || error.is_connect(), "{error}"),
    }

    let response = app
        .client
        .post(app.url("/v1/tools/sort/jobs"))
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body("whatever")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(app.get_json("/healthz").await.0, 200);
}

#[tokio::test]
#[cfg_attr(
    not(gate_root),
    ignore = "needs root: set BATCHGATE_TEST_ROOT=1 when the tests run as root"
)]
async fn a_fork_bomb_is_contained_when_programs_run_as_their_own_users() {
    if !rustix::process::geteuid().is_root() {
        crate::helpers::skip("run_as_uid needs the tests to run as root");
        return;
    }
    let app = spawn_app_with("run_as_uid = 61000").await;
    let location = app.submit_ok("forkbomb", &json!({})).await;
    app.wait_for_state(&location, JobState::Running, Duration::from_secs(10))
        .await;
    // The bomb runs, held at its process limit, and the server keeps answering.
    let mut most = 0;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(app.get_json("/healthz").await.0, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        most = most.max(bomb_processes());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its shells die as their forks are refused and the wrapper, their subreaper, reaps
    // them at once: never more than the limit (20, and the wrapper) are seen.
    assert!(
        (1..=21).contains(&most),
        "{most} processes of the bomb seen (limit 20)"
    );
    let status = app
        .wait_until_done(&location, Duration::from_secs(30))
        .await;
    assert_eq!(status.status, JobState::Failed);
    // It ends by its timeout, or earlier when the shell gives up on a refused fork.
    let error = status.error.unwrap();
    assert!(
        ["timeout", "program-exit-status"].contains(&error.code.as_str()),
        "{error:?}"
    );
    // Nothing of it is left (zombies go once the system's init reaps them).
    let started = std::time::Instant::now();
    while bomb_processes() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} processes of the bomb remain",
            bomb_processes()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live processes of the bomb: its shell, under a uid of the pool (61000 on).
fn bomb_processes() -> usize {
    batchgate_server::executors::process::processes_of_range(61000..61512)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero()))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("bomb()"))
        })
        .count()
}

#[tokio::test]
#[cfg_attr(
    not(gate_tools),
    ignore = "needs bubblewrap, faketime and s3s-fs: set BATCHGATE_TEST_TOOLS=1 once installed"
)]
async fn the_sandbox_hides_the_network_and_the_servers_data() {
    if batchgate_server::executors::sandbox::find_bwrap().is_none() {
        crate::helpers::skip("bwrap is not installed (apt-get install bubblewrap)");
        return;
    }
    let app = spawn_app_with("sandbox = \"bwrap\"").await;
    let location = app.submit_ok("peek", &json!({})).await;
    let status = app
        .wait_until_done(&location, Duration::from_secs(20))
        .await;
    let (_, logs) = (0, app.get_text(&format!("{location}/logs")).await);
    assert_eq!(status.status, JobState::Succeeded, "{logs}");
    let (_, result) = app.get_json(&format!("{location}/result")).await;
    let seen: Vec<&str> = result["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(seen, ["net: lo", "data: work", "etc: read-only"], "{logs}");
    // The demo program (inside the data directory) still runs in the sandbox.
    let input = json!({"inputs": {"records": [
        {"sensor": "a", "timestamp": "2024-01-01T00:00:00Z", "value": 1.5}
    ]}});
    let location = app.submit_ok("analyzer", &input).await;
    let status = app
        .wait_until_done(&location, Duration::from_secs(20))
        .await;
    assert_eq!(status.status, JobState::Succeeded);
}

#[tokio::test]
async fn a_database_locked_by_another_process_answers_503_while_the_client_waits() {
    use sqlx::ConnectOptions;
    let app = spawn_app().await;
    let mut other = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(app.data_dir.join("jobs.db"))
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let response = app
        .client
        .post(app.url("/v1/tools/sort/jobs"))
        .json(&lines())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a client with a 5 s timeout got no answer: {:?}",
        started.elapsed()
    );
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "store-unavailable").await;
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let location = app.submit_ok("sort", &lines()).await;
    assert_eq!(
        app.wait_until_done(&location, Duration::from_secs(20))
            .await
            .status,
        JobState::Succeeded
    );
    // Nothing of the refused submission was kept.
    let (_, page) = app.get_json("/v1/jobs").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_outcome_that_cannot_be_stored_yet_is_stored_once_the_store_is_back() {
    use sqlx::ConnectOptions;
    let app = spawn_app().await;
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"sensor": "s", "timestamp": format!("t{i}"), "value": i}))
        .collect();
    let request = json!({"parameters": {"delay_seconds": 2}, "inputs": {"records": records}});
    let location = app.submit_ok("analyzer", &request).await;
    app.wait_for_state(&location, JobState::Running, Duration::from_secs(10))
        .await;
    // Another process locks the database while the program ends (after 2 s): the
    // attempt's completion cannot be committed.
    let mut other = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(app.data_dir.join("jobs.db"))
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The program has ended; its outcome is not stored yet.
    let (_, waiting) = app.status(&location).await;
    assert_eq!(waiting.status, JobState::Running, "{waiting:?}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    // Once the lock is gone, the outcome the program earned is stored: the first attempt.
    let status = app
        .wait_until_done(&location, Duration::from_secs(30))
        .await;
    assert_eq!(status.status, JobState::Succeeded, "{status:?}");
    assert_eq!(status.attempt, 1);
}

/// A tool's description shows the limits that apply to whoever asks: a tier's lower
/// request cap, not the tool's; an input without a cap of its own has no `max_bytes`
/// (not u64::MAX, which JavaScript cannot hold).
#[tokio::test]
async fn a_tool_description_shows_the_callers_own_limits() {
    let app = spawn_app_with("[tiers.small]\nmax_request_bytes = 65536").await;
    // A tier without quotas sends no (empty) RateLimit-Policy.
    let small_key = app.create_key("small", false).await;
    let response = app.get_as(&small_key, "/v1/tools").await;
    assert!(response.headers().get("ratelimit-policy").is_none());
    assert!(response.headers().get("ratelimit").is_none());
    let small = app.create_key("small", false).await;
    let unlimited = app.create_key("standard", false).await;
    let limit = |key: String| {
        let app = &app;
        async move {
            let response = app.get_as(&key, "/v1/tools/analyzer").await;
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["inputs"][0].get("max_bytes").is_none(), "{body}");
            body["limits"]["max_request_bytes"].as_u64().unwrap()
        }
    };
    assert_eq!(limit(small).await, 65536);
    assert!(limit(unlimited).await > 65536);
}
