//! The real binary, killed with SIGKILL while jobs run, then restarted on the same data
//! directory: every accepted job ends in exactly one terminal state.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::Server;

/// Starts `batchgate serve` on port 0 (2 workers, a 2 s lease) and reads the address it
/// prints.
fn start(data_dir: &Path) -> Server {
    start_with(data_dir, &[])
}

/// `start` with more settings (`BATCHGATE__…` variables).
fn start_with(data_dir: &Path, settings: &[(&str, &str)]) -> Server {
    let mut command = common::batchgate(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--data-dir",
    ]);
    command
        .arg(data_dir)
        .env("BATCHGATE__LEASE_SECONDS", "2")
        .env("BATCHGATE_LOG", "warn")
        .envs(settings.iter().copied())
        .stderr(Stdio::inherit());
    let (child, address) = common::start(command);
    Server { child, address }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_restart_finishes_every_job_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = common::client();

    let server = start(&data_dir);
    let mut ids = Vec::new();
    for i in 0..6 {
        let request = json!({
            "parameters": {"delay_seconds": if i < 2 { 2 } else { 0 }, "label": format!("job{i}")},
            "inputs": {"records": [{"sensor": "s", "timestamp": "t", "value": i}]}
        });
        ids.push(common::submit(&client, &server, "analyzer", request).await);
    }
    // Wait until the two slow jobs run, then kill the server without warning.
    let started = Instant::now();
    loop {
        let page: Value = common::get_json(
            &client,
            &format!("{}/v1/jobs?status=running", server.address),
        )
        .await;
        if !page["jobs"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no job started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server); // SIGKILL
                  // The killed server's programs live on (their delay is 2 s)…
    let work = data_dir.join("work");
    assert!(
        !programs_in(&work).is_empty(),
        "a running program outlives the killed server"
    );

    let server = start(&data_dir);
    // …until the new server, before it runs anything, stops them.
    let orphans: Vec<i32> = programs_in(&work)
        .into_iter()
        .filter(|pid| !is_zombie(*pid))
        .collect();
    assert!(
        orphans
            .iter()
            .all(|pid| started_after_restart(*pid, &server)),
        "programs of the killed server still run: {orphans:?}"
    );
    let mut retried = 0;
    for (index, id) in ids.iter().enumerate() {
        let status =
            common::wait_ended(&client, &server.address, id, Duration::from_secs(60)).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        let attempt = status["attempt"].as_u64().unwrap();
        // 2 for a killed attempt; 3 when, on a loaded machine, a heartbeat came later
        // than the short test lease (a lost lease is retried by design).
        assert!((1..=3).contains(&attempt), "{status}");
        if attempt == 2 {
            retried += 1;
        }
        let result = common::result(&client, &server, id).await;
        let label = result["insights"][0]["name"].as_str().unwrap();
        assert!(label.starts_with(&format!("job{index}:")), "{result}");
    }
    assert!(retried >= 1, "the killed attempts ran again as attempt 2");
    // The killed attempts' work directories (inputs, control file, logs) are gone too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempts: Vec<String> = std::fs::read_dir(&work)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| ids.iter().any(|id| name.starts_with(id.as_str())))
            .collect();
        if attempts.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "work directories left: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page: Value =
        common::get_json(&client, &format!("{}/v1/jobs?limit=100", server.address)).await;
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        ids.len(),
        "no job lost or duplicated"
    );
}

/// Processes whose working directory is inside `work` (the programs of attempts).
fn programs_in(work: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cwd = std::fs::read_link(entry.path().join("cwd")).ok()?;
            (cwd.starts_with(work) && cwd != work).then_some(pid)
        })
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Whether `pid` is a child of the restarted server (an attempt it started itself).
fn started_after_restart(pid: i32, server: &Server) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            fields.get(1)?.parse::<u32>().ok()
        })
        .is_some_and(|parent| parent == server.child.id())
}

#[test]
fn a_bad_config_stops_the_server_naming_file_tool_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tools.toml");
    std::fs::write(
        &config,
        "[[tools]]\nname = \"mine\"\ncommand = [\"/bin/echo\", \"{inputs.nope}\"]\n[[tools.outputs]]\nname = \"o\"\nfrom = \"stdout\"\nformat = \"lines\"\n[tools.example]\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("tools.toml: tool `mine@1` (tools[0]): field `command[1]`: no input `nope`"),
        "{stderr}"
    );

    let check = check_config(&config);
    assert_eq!(check.status.code(), Some(78));
    let version = Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("batchgate "));
}

/// A reader that went away (`batchgate jobs | head`) ends the command quietly, exit 0,
/// not with a panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .arg("demo-config")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_demo_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .arg("demo-config")
        .output()
        .unwrap();
    let path = dir.path().join("demo.toml");
    // The printed demo names its program with @DEMO_BIN@; a user replaces it with a path.
    let text = String::from_utf8(demo.stdout)
        .unwrap()
        .replace("@DEMO_BIN@/analyzer", "/bin/true");
    std::fs::write(&path, text).unwrap();
    let check = check_config(&path);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("analyzer@2"));

    // A program that is not there stops check-config (and a start), named with the
    // tool and the field, instead of failing every job later.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("/bin/true", "/opt/legacy/analyzr");
    std::fs::write(&path, text).unwrap();
    let check = check_config(&path);
    assert_eq!(check.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("field `command[0]`") && stderr.contains("/opt/legacy/analyzr"),
        "{stderr}"
    );
    let serve = Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("BATCHGATE__RUN_AS_UID", "server")
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(stderr.contains("/opt/legacy/analyzr"), "{stderr}");
}

/// `batchgate check-config FILE`.
fn check_config(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap()
}

/// Waits for the process to exit and returns whether it exited successfully.
fn exits_within(server: &mut Server, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.success();
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(server: &Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn submit_slow(client: &reqwest::Client, server: &Server, delay_seconds: u32) -> String {
    let request = json!({
        "parameters": {"delay_seconds": delay_seconds, "label": "slow"},
        "inputs": {"records": [{"sensor": "s", "timestamp": "t", "value": 1}]}
    });
    let id = common::submit(client, server, "analyzer", request).await;
    let started = Instant::now();
    loop {
        let status = common::get_json(client, &format!("{}/v1/jobs/{id}", server.address)).await;
        if status["status"] == "running" {
            return id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never ran: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn final_status(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    common::wait_ended(client, &server.address, id, Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_lets_the_running_job_finish_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = common::client();
    let mut server = start(&data_dir);
    let id = submit_slow(&client, &server, 2).await;
    sigterm(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = client
        .get(format!("{}/healthz", server.address))
        .send()
        .await;
    assert!(refused.is_err(), "still accepting after SIGTERM");
    assert!(
        exits_within(&mut server, Duration::from_secs(20)),
        "exit status"
    );

    let server = start(&data_dir);
    let status = final_status(&client, &server, &id).await;
    assert_eq!(
        (status["status"].clone(), status["attempt"].clone()),
        (json!("succeeded"), json!(1)),
        "finished by the process that was stopping: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_hands_the_job_back() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = common::client();
    let mut server = start_with(&data_dir, &[("BATCHGATE__SHUTDOWN_GRACE_SECONDS", "1")]);
    let id = submit_slow(&client, &server, 8).await;
    // The client's idle connections go first: what is measured is the jobs' hand-back,
    // not how long the HTTP drain waits for a keep-alive connection.
    drop(client);
    let client = common::client();
    let stopping = Instant::now();
    sigterm(&server);
    assert!(
        exits_within(&mut server, Duration::from_secs(20)),
        "exit status"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "waited for the 8 s job instead of handing it back"
    );
    // A new process takes it up at once (no lease to wait for), as attempt 2; the first
    // attempt's reason is on record.
    let server = start(&data_dir);
    let events = client
        .get(format!("{}/v1/jobs/{id}/events", server.address))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap_or_default();
    let status = final_status(&client, &server, &id).await;
    assert_eq!(status["attempt"], 2, "{status}");
    assert_eq!(status["status"], "succeeded", "{status}");
    assert!(events.contains("worker-stopped"), "{events}");
}
