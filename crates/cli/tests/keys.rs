//! The binary's security switches: `batchgate keys`, the refusal to serve an open API on
//! a public address, and logs that neither leak secrets nor can be forged.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn batchgate(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("the binary runs")
}

struct Server {
    child: Child,
    address: String,
}

impl Server {
    /// Stops the server and returns everything it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        logs
    }
}

fn serve(data_dir: &Path, extra: &[&str]) -> Server {
    let mut command = common::batchgate(&[
        "--log-format",
        "json",
        "serve",
        "--workers",
        "1",
        "--data-dir",
    ]);
    command
        .arg(data_dir)
        .args(extra)
        .env("BATCHGATE_LOG", "debug")
        .env("BATCHGATE__RESULT_DELIVERY", "signed_url")
        .stderr(Stdio::piped());
    let (child, address) = common::start(command);
    Server { child, address }
}

/// Starts `serve` on a public address (`0.0.0.0:0`) and stops it again: it started.
fn starts_publicly(data_dir: &Path, extra: &[&str]) {
    let mut command = common::batchgate(&["serve", "--listen", "0.0.0.0:0", "--data-dir"]);
    command.arg(data_dir).args(extra).stderr(Stdio::null());
    let (mut child, address) = common::start(command);
    assert!(address.starts_with("http://0.0.0.0:"), "{address}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn keys_are_created_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let created = batchgate(data, &["keys", "create", "--name", "ci", "--tier", "free"]);
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("bgk_") && key.len() > 64, "{key}");
    let id = &key[4..16];

    let listed = batchgate(data, &["keys", "list"]);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(listing.contains(id) && listing.contains("free") && listing.contains("ci"));
    assert!(!listing.contains(&key[17..]), "the key itself is listed");

    let unknown = batchgate(data, &["keys", "create", "--name", "x", "--tier", "gold"]);
    assert_eq!(unknown.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("free, standard"), "{stderr}");
    // Without --config the tiers are the demo's: said, with the way out.
    assert!(
        stderr.contains("built-in demo configuration (pass --config FILE"),
        "{stderr}"
    );

    assert!(batchgate(data, &["keys", "revoke", id]).status.success());
    assert_eq!(
        batchgate(data, &["keys", "revoke", id]).status.code(),
        Some(66)
    );
    let listing = String::from_utf8(batchgate(data, &["keys", "list"]).stdout).unwrap();
    let row = listing.lines().find(|l| l.starts_with(id)).unwrap();
    assert!(!row.contains(" - "), "the revocation time is listed: {row}");

    assert!(batchgate(data, &["keys", "rotate-url-secret"])
        .status
        .success());
}

#[test]
fn an_open_server_is_refused_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_batchgate"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve on 0.0.0.0:0 without API keys"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure-open"));

    // With the explicit flag, or once a key exists, it starts.
    starts_publicly(dir.path(), &["--insecure-open"]);
    let created = batchgate(
        dir.path(),
        &["keys", "create", "--name", "a", "--tier", "free"],
    );
    assert!(created.status.success());
    starts_publicly(dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_without_secrets_whatever_the_request_holds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let created = batchgate(
        data,
        &["keys", "create", "--name", "ci", "--tier", "standard"],
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let server = serve(data, &["--listen", "127.0.0.1:0"]);
    let client = common::client();
    let url = |path: &str| format!("{}{path}", server.address);

    // Requests made to forge log lines: line breaks and escape sequences in the path, a
    // header, the tool name and the parameters.
    let forged = "x%0A%7B%22level%22%3A%22ERROR%22%7D%1B%5B31m";
    let _ = client
        .post(url(&format!("/v1/tools/{forged}/jobs")))
        .bearer_auth(&key)
        .header("idempotency-key", "a\u{1b}[31mb")
        .json(&serde_json::json!({"inputs": {}}))
        .send()
        .await;
    let _ = client
        .post(url("/v1/tools/sort/jobs"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"inputs": {"lines": ["a\n{\"level\":\"ERROR\"}", "\u{1b}[2J"]}}))
        .send()
        .await
        .unwrap();
    let _ = client
        .get(url("/v1/jobs"))
        .bearer_auth("bgk_000000000000_nope")
        .send()
        .await;
    // A signed result URL is fetched: its signature must not be logged.
    let response = client
        .post(url("/v1/tools/sort/jobs"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"inputs": {"lines": ["b", "a"]}}))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let mut signed = None;
    for _ in 0..200 {
        let status = client
            .get(url(&location))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if status.status() == 303 {
            signed = Some(status.headers()["location"].to_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signed = signed.expect("the job ended");
    let sig = signed.split("sig=").nth(1).unwrap().to_owned();
    assert_eq!(client.get(url(&signed)).send().await.unwrap().status(), 200);

    let logs = server.stop();
    assert!(logs.lines().count() > 5, "too few log lines:\n{logs}");
    for line in logs.lines() {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line:?}"));
        assert!(parsed.get("level").is_some(), "{line}");
        assert!(
            !line.contains('\u{1b}'),
            "a raw escape sequence was logged: {line:?}"
        );
    }
    assert!(!logs.contains(&key[17..]), "the API key was logged");
    assert!(!logs.contains(&sig), "the URL signature was logged");
    // The job ran and the request path is there, escaped.
    assert!(logs.contains("\"path\":"), "{logs}");
}
