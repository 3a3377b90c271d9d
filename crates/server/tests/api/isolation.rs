//! The isolation model seen from outside: hostile stand-in programs run through the real
//! server try to reach the server's data, other jobs and the machine, to outlive their
//! job, to flood it, and to smuggle options and NUL bytes into argv.

use std::time::{Duration, Instant};

use batchgate_protocol::JobState;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, TestApp, WAIT};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What the `snoop` program reached, line by line.
async fn snoop(app: &TestApp, other_job: &str) -> Vec<String> {
    let location = app
        .submit_ok("snoop", &json!({"parameters": {"other": other_job}}))
        .await;
    let status = app.wait_until_done(&location, WAIT).await;
    assert_eq!(status.status, JobState::Succeeded, "{status:?}");
    let (_, result) = app.get_json(&format!("{location}/result")).await;
    result["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line.as_str().unwrap().to_owned())
        .collect()
}

fn job_id(location: &str) -> &str {
    location.rsplit('/').next().unwrap()
}

#[tokio::test]
#[cfg_attr(
    not(gate_root),
    ignore = "needs root: set BATCHGATE_TEST_ROOT=1 when the tests run as root"
)]
async fn under_root_a_program_gets_a_uid_of_its_own_and_reaches_nothing_of_the_server() {
    if !is_root() {
        crate::helpers::skip("per-job uids need the tests to run as root");
        return;
    }
    // The default settings: no run_as_uid, no sandbox.
    let app = spawn_app().await;
    let other = app.submit_ok("sleeper", &json!({})).await;
    app.wait_for_state(&other, JobState::Running, WAIT).await;
    let seen = snoop(&app, job_id(&other)).await;
    let uid: u32 = seen[0].strip_prefix("uid: ").unwrap().parse().unwrap();
    assert!(
        (61000..61512).contains(&uid),
        "the program ran as uid {uid}: {seen:?}"
    );
    assert_eq!(
        &seen[1..],
        [
            "database: denied",
            "blobs: denied",
            "staging: denied",
            "work: denied",
            "data: denied",
            "other-job: denied",
            "server-environment: denied",
            "own-directory: reached",
        ]
    );
    // The installed demo program still runs under its uid.
    let input = json!({"inputs": {"records": [
        {"sensor": "a", "timestamp": "2024-01-01T00:00:00Z", "value": 1.5}
    ]}});
    let location = app.submit_ok("analyzer", &input).await;
    assert_eq!(
        app.wait_until_done(&location, WAIT).await.status,
        JobState::Succeeded
    );
    let response = app.client.delete(app.url(&other)).send().await.unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn the_data_directory_is_private_to_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let location = app
        .submit_ok("sort", &json!({"inputs": {"lines": ["b", "a"]}}))
        .await;
    app.wait_until_done(&location, WAIT).await;
    let mode = |path: &str| {
        std::fs::metadata(app.data_dir.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for (path, expected) in [
        ("", 0o711),
        ("jobs.db", 0o600),
        ("jobs.db-wal", 0o600),
        ("blobs", 0o700),
        ("staging", 0o700),
        ("work", 0o711),
        ("bin", 0o711),
    ] {
        assert_eq!(mode(path), expected, "data_dir/{path}: {:o}", mode(path));
    }
}

/// Live processes of a uid in `uids` whose command line is exactly `argv`.
fn processes_running(uids: std::ops::Range<u32>, argv: &[&str]) -> usize {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    batchgate_server::executors::process::processes_of_range(uids)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero()))
                .is_ok_and(|cmdline| cmdline == wanted)
        })
        .count()
}

/// The daemons of the `daemon` tool, run as a uid in `uids`, end with their job (and
/// the job does not wait for them).
async fn daemons_end_with_their_job(app: &TestApp, uids: std::ops::Range<u32>) {
    let started = Instant::now();
    let location = app.submit_ok("daemon", &json!({})).await;
    let status = app.wait_until_done(&location, WAIT).await;
    assert_eq!(status.status, JobState::Succeeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the job waited {:?} for daemons holding its output",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_running(uids.clone(), &["sleep", "307"])
            + processes_running(uids.clone(), &["sleep", "308"]);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} daemons outlived their job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_daemon_in_a_new_session_ends_with_its_job_as_the_servers_user() {
    // The server's own user: the wrapper, a child subreaper, ends what escaped the group.
    let app = spawn_app_with("run_as_uid = \"server\"").await;
    let own = rustix::process::geteuid().as_raw();
    daemons_end_with_their_job(&app, own..own + 1).await;
}

#[tokio::test]
#[cfg_attr(
    not(gate_root),
    ignore = "needs root: set BATCHGATE_TEST_ROOT=1 when the tests run as root"
)]
async fn a_daemon_in_a_new_session_ends_with_its_job_under_its_own_uid() {
    if !is_root() {
        crate::helpers::skip("per-job uids need the tests to run as root");
        return;
    }
    let app = spawn_app().await;
    daemons_end_with_their_job(&app, 61000..61512).await;
}

#[tokio::test]
async fn links_to_the_servers_files_are_not_taken_as_outputs_or_logs() {
    let app = spawn_app().await;
    let location = app.submit_ok("linker", &json!({})).await;
    let status = app.wait_until_done(&location, WAIT).await;
    let error = status.error.unwrap();
    assert_eq!(error.code, "missing-output", "{error:?}");
    let logs = app.get_text(&format!("{location}/logs")).await;
    assert!(!logs.contains("root:"), "{logs}");
    let stderr = app
        .get_text(&format!("{location}/logs?stream=stderr"))
        .await;
    assert!(!stderr.contains("root:"), "{stderr}");
}

#[tokio::test]
#[cfg_attr(
    not(gate_root),
    ignore = "needs root: set BATCHGATE_TEST_ROOT=1 when the tests run as root"
)]
async fn the_next_job_with_the_same_uid_finds_nothing_of_the_last_one() {
    if !is_root() {
        crate::helpers::skip("per-job uids need the tests to run as root");
        return;
    }
    // A pool of one uid of its own: the two jobs run under the same uid, one after the
    // other.
    let app = spawn_app_with("run_as_uid = 62900\nrun_as_uid_count = 1").await;
    for _ in 0..2 {
        let location = app.submit_ok("leaver", &json!({})).await;
        let status = app.wait_until_done(&location, WAIT).await;
        assert_eq!(status.status, JobState::Succeeded, "{status:?}");
        let (_, result) = app.get_json(&format!("{location}/result")).await;
        assert_eq!(
            result["seen"],
            json!(["nothing"]),
            "a file of the last job was read"
        );
    }
    for left in [
        "/tmp/batchgate-left-by-a-job",
        "/dev/shm/batchgate-left-by-a-job",
    ] {
        assert!(!std::path::Path::new(left).exists(), "{left}");
    }
    // Nor a System V shared memory segment or message queue of the uid.
    for table in ["shm", "msg"] {
        let text = std::fs::read_to_string(format!("/proc/sysvipc/{table}")).unwrap();
        let uid_column = text
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .position(|name| name == "uid")
            .unwrap();
        let owned = text
            .lines()
            .skip(1)
            .filter(|line| line.split_whitespace().nth(uid_column) == Some("62900"))
            .count();
        assert_eq!(owned, 0, "{table} objects of the job's uid are left");
    }
}

#[tokio::test]
async fn a_log_flood_stops_the_program_at_the_cap() {
    let app = spawn_app().await;
    let started = Instant::now();
    let location = app.submit_ok("flood", &json!({})).await;
    let status = app.wait_until_done(&location, WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the flood ran {:?}",
        started.elapsed()
    );
    let error = status.error.unwrap();
    assert_eq!(error.code, "log-too-large", "{error:?}");
    assert!(error.message.contains("max_log_bytes"), "{}", error.message);
    assert!(error.message.contains("1048576"), "{}", error.message);
}

#[tokio::test]
async fn a_cpu_time_limit_is_reported_as_such() {
    let app = spawn_app().await;
    let location = app.submit_ok("spin", &json!({})).await;
    let status = app.wait_until_done(&location, WAIT).await;
    let error = status.error.unwrap();
    assert_eq!(error.code, "cpu-time-limit", "{error:?}");
    assert!(error.message.contains("cpu_seconds"), "{}", error.message);
    assert!(!error.message.contains("memory"), "{}", error.message);
}

#[tokio::test]
async fn a_retry_policy_can_name_a_signal() {
    let app = spawn_app().await;
    let location = app.submit_ok("segv", &json!({})).await;
    let status = app.wait_until_done(&location, WAIT).await;
    assert_eq!(status.status, JobState::Failed);
    assert_eq!(status.attempt, 2, "SIGSEGV was retried once");
    let error = status.error.unwrap();
    assert_eq!(error.signal, Some(11), "{error:?}");
}

#[tokio::test]
async fn a_parameter_cannot_become_an_option_or_hold_a_nul() {
    let app = spawn_app().await;
    let lines = json!(["b", "a"]);
    for (order, reason) in [
        ("--output=/tmp/batchgate-escape", "option"),
        ("-r", "option"),
        ("a\u{0}b", "NUL"),
    ] {
        let body = json!({"inputs": {"lines": lines}, "parameters": {"order": order}});
        let response = app.submit_json("ordered", &body).await;
        let problem = assert_problem(response, 422, "validation-failed").await;
        let field = &problem["errors"][0];
        assert_eq!(field["path"], "/parameters/order", "{problem}");
        assert!(
            field["message"].as_str().unwrap().contains(reason),
            "{problem}"
        );
    }
    assert!(!std::path::Path::new("/tmp/batchgate-escape").exists());
    // Nothing was queued.
    let (_, page) = app.get_json("/v1/jobs").await;
    assert_eq!(page["jobs"], json!([]));
    // A tool that declares the parameter an option takes it.
    let body = json!({"inputs": {"lines": lines}, "parameters": {"order": "-r"}});
    let result = app
        .result_of(app.submit_json("ordered-options", &body).await)
        .await;
    assert_eq!(result["out"], json!(["b", "a"]));
    // In the query string of a raw body too.
    let response = app
        .client
        .post(app.url("/v1/tools/ordered/jobs?order=-o%2Ftmp%2Fx"))
        .header("content-type", "text/plain")
        .body("b\na\n")
        .send()
        .await
        .unwrap();
    assert_problem(response, 422, "validation-failed").await;
}

#[tokio::test]
async fn work_directories_left_by_a_previous_server_are_removed_at_start() {
    // What an attempt of a killed server leaves: its input copy, control file and logs.
    // (`crates/cli/tests/restart.rs` kills a real server; this checks a foreign id too.)
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let left = data_dir.join("work/01900000-0000-7000-8000-000000000000-3");
    std::fs::create_dir_all(left.join(".batchgate")).unwrap();
    std::fs::write(left.join("lines.txt"), "a tenant's data").unwrap();
    let unrelated = data_dir.join("work/notes");
    std::fs::create_dir_all(&unrelated).unwrap();
    let server = restart_on(&data_dir).await;
    assert!(!left.exists(), "an attempt's directory outlived its server");
    assert!(unrelated.exists(), "only attempt directories are removed");
    drop(server);
}

/// A server on an existing data directory (the demo tools only).
async fn restart_on(data_dir: &std::path::Path) -> batchgate_server::Application {
    let demo = batchgate_server::demo::resolve(batchgate_server::demo::CONFIG, data_dir).unwrap();
    let source = batchgate_server::ConfigSource::Text {
        name: "restart.toml".into(),
        text: format!("listen = \"127.0.0.1:0\"\n{demo}"),
    };
    let overrides = batchgate_server::Overrides {
        data_dir: Some(data_dir.to_owned()),
        ..batchgate_server::Overrides::default()
    };
    let config = batchgate_server::Config::load_with_env(&source, &overrides, false).unwrap();
    batchgate_server::Application::build(config, batchgate_server::Workers::Embedded)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_status_document_names_no_path_of_the_server() {
    let app = spawn_app().await;
    let location = app.submit_ok("missing", &json!({})).await;
    let status = app.wait_until_done(&location, WAIT).await;
    let text = serde_json::to_string(&status).unwrap();
    let program_dir = app.data_dir.join("gone").to_string_lossy().into_owned();
    assert!(!text.contains(&program_dir), "{text}");
    let response = app
        .client
        .get(app.url(&format!("{location}/result")))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(!body.to_string().contains(&program_dir), "{body}");
    assert!(body.to_string().contains("legacy-program"), "{body}");
}
