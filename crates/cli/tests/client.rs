//! The client commands of the real binary against a real server (the built-in demo): what
//! they print, write, and their exit codes.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut command = common::batchgate(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command
        .arg(dir.path().join("data"))
        .env("BATCHGATE_LOG", "warn")
        .stderr(Stdio::inherit());
    let (child, address) = common::start(command);
    Server {
        child,
        address,
        _dir: dir,
    }
}

/// `batchgate ARGS…` as a client of `server`, with no client config file in reach.
fn client(server: &Server, args: &[&str]) -> Command {
    let mut command = common::batchgate(args);
    command
        .env("BATCHGATE_URL", &server.address)
        .env_remove("BATCHGATE_KEY")
        .env("XDG_CONFIG_HOME", server._dir.path().join("no-config"))
        .stderr(Stdio::piped());
    command
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Submits the demo analyzer@2 made to last `seconds`, without waiting; returns the id.
fn submit_slow(server: &Server, seconds: u32) -> String {
    let input = format!("records={}", records());
    let delay = format!("delay_seconds={seconds}");
    let (code, stdout, stderr) = run(&mut client(
        server,
        &["submit", "analyzer@2", "-i", &input, "-p", &delay],
    ));
    assert_eq!(code, 0, "{stderr}");
    stdout.trim().to_owned()
}

fn records() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/records.csv")
        .display()
        .to_string()
}

#[test]
fn submit_wait_writes_outputs_or_prints_the_result() {
    let server = serve();
    let out = server._dir.path().join("out");
    let input = format!("records={}", records());
    let (code, _, stderr) = run(client(
        &server,
        &[
            "submit",
            "analyzer",
            "-i",
            &input,
            "-p",
            "threshold=50",
            "-p",
            "window=2",
            "--wait",
            "-o",
        ],
    )
    .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("succeeded"), "{stderr}");
    let csv = std::fs::read_to_string(out.join("insights.csv")).unwrap();
    assert!(csv.starts_with("sensor,kind,name,value,at\n"), "{csv}");

    let (code, stdout, stderr) = run(&mut client(
        &server,
        &["submit", "analyzer", "-i", &input, "--wait"],
    ));
    assert_eq!(code, 0, "{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(result["insights"].as_array().unwrap().len() > 1, "{result}");

    // Without --wait: the id on stdout, for scripts; `status` and `jobs` find it.
    let (code, stdout, _) = run(&mut client(&server, &["submit", "analyzer", "-i", &input]));
    assert_eq!(code, 0);
    let id = stdout.trim().to_owned();
    let (code, stdout, _) = run(&mut client(&server, &["wait", &id]));
    assert_eq!(code, 0);
    assert!(stdout.contains("insights"));
    let (_, stdout, _) = run(&mut client(&server, &["status", &id]));
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["status"], "succeeded");
    let (_, stdout, _) = run(&mut client(&server, &["jobs", "--status", "succeeded"]));
    assert!(stdout.contains(&id), "{stdout}");
    assert_eq!(
        stdout.lines().count(),
        4,
        "a header and three jobs: {stdout}"
    );
    let (code, _, stderr) =
        run(client(&server, &["download", &id, "insights", "-o"])
            .arg(server._dir.path().join("again")));
    assert_eq!(code, 0, "{stderr}");
    assert!(server._dir.path().join("again/insights.csv").exists());
}

#[test]
fn exit_codes_tell_failed_canceled_refused_unreachable_and_usage_apart() {
    let server = serve();
    let bad = server._dir.path().join("bad.csv");
    std::fs::write(&bad, "sensor,timestamp,value\ns1,t1,abc\n").unwrap();
    let (code, _, stderr) = run(&mut client(
        &server,
        &[
            "submit",
            "analyzer",
            "--wait",
            "-i",
            &format!("records={}", bad.display()),
        ],
    ));
    assert_eq!(code, 1, "failed: {stderr}");
    assert!(stderr.contains("'abc' is not a number"), "{stderr}");

    let input = format!("records={}", records());
    let id = submit_slow(&server, 30);
    let (code, _, _) = run(&mut client(&server, &["cancel", &id]));
    assert_eq!(code, 0);
    let (code, _, stderr) = run(&mut client(&server, &["wait", &id]));
    assert_eq!(code, 3, "canceled: {stderr}");

    let (code, _, stderr) = run(&mut client(&server, &["submit", "no-such-tool"]));
    assert_eq!(code, 65, "refused: {stderr}");
    assert!(stderr.contains("tool-not-found"), "{stderr}");
    let (code, _, stderr) = run(&mut client(
        &server,
        &["submit", "analyzer", "-i", &input, "-p", "window=0"],
    ));
    assert_eq!(code, 65, "invalid: {stderr}");
    assert!(
        stderr.contains("/parameters/window"),
        "the failing field: {stderr}"
    );

    let (code, _, stderr) = run(&mut client(
        &server,
        &["--url", "http://127.0.0.1:9", "tools"],
    ));
    assert_eq!(code, 69, "unreachable: {stderr}");
    assert!(stderr.contains("refused"), "the cause is named: {stderr}");

    for args in [
        vec!["submit", "analyzer", "-p", "no-equals-sign"],
        vec!["submit", "analyzer", "-i", "records=/no/such/file.csv"],
        vec!["submit", "analyzer", "--no-such-flag"],
        vec!["jobs", "--status", "done"],
    ] {
        let (code, _, stderr) = run(&mut client(&server, &args));
        assert_eq!(code, 64, "usage error for {args:?}: {stderr}");
    }
}

#[test]
fn ctrl_c_while_waiting_leaves_the_job_running_and_says_how_to_resume() {
    let server = serve();
    let input = format!("records={}", records());
    let mut command = client(
        &server,
        &[
            "submit",
            "analyzer@2",
            "-i",
            &input,
            "-p",
            "delay_seconds=30",
            "--wait",
        ],
    );
    let mut child = command.spawn().unwrap();
    // Wait until the job is submitted (its id is on stderr), then interrupt.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let started = Instant::now();
    while !seen.contains("submitted job") {
        let mut buffer = [0u8; 256];
        let read = std::io::Read::read(&mut stderr, &mut buffer).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        assert!(started.elapsed() < Duration::from_secs(10), "{seen}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    std::io::Read::read_to_string(&mut stderr, &mut seen).unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    let id = seen
        .split("submitted job ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(seen.contains(&format!("batchgate wait {id}")), "{seen}");
    let (_, stdout, _) = run(&mut client(&server, &["status", &id]));
    let job: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        ["queued", "running"].contains(&job["status"].as_str().unwrap()),
        "the job keeps running: {job}"
    );
    run(&mut client(&server, &["cancel", &id]));
}

#[test]
fn the_config_file_names_the_server_and_logs_follow_a_job() {
    let server = serve();
    let config = server._dir.path().join("config");
    std::fs::create_dir_all(config.join("batchgate")).unwrap();
    std::fs::write(
        config.join("batchgate/client.toml"),
        format!("url = \"{}\"\n", server.address),
    )
    .unwrap();
    // Submitted with no URL but the file's; the job is then found on this server.
    let input = format!("records={}", records());
    let mut command = common::batchgate(&["submit", "analyzer", "-i", &input]);
    command
        .env_remove("BATCHGATE_URL")
        .env("XDG_CONFIG_HOME", &config);
    let (code, stdout, _) = run(&mut command);
    assert_eq!(code, 0);
    let (code, _, stderr) = run(&mut client(&server, &["status", stdout.trim()]));
    assert_eq!(code, 0, "the job is on the configured server: {stderr}");

    let id = submit_slow(&server, 2);
    let (code, stdout, _) = run(&mut client(
        &server,
        &["logs", &id, "--follow", "--stream", "stdout"],
    ));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("PROGRESS 0 reading input\n"), "{stdout}");
    assert!(
        stdout.contains("PROGRESS 100 "),
        "follows to the end: {stdout}"
    );
    assert_eq!(
        stdout.matches("PROGRESS 0 ").count(),
        1,
        "no line twice: {stdout}"
    );
}
