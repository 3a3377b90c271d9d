//! Clients that are not ours, against the real server: the Azure SDK's generic poller
//! (Python `azure-core`) and the web UI in a real browser (Chromium driven by
//! `playwright-core`). Each is gated by an environment variable naming what it needs, and
//! skips visibly without it (`.ci/run` sets them all).

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::{skip, spawn_app};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a client program to its end on a blocking thread and fails with its output.
async fn run_client(mut command: Command) {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the client program starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

#[tokio::test]
#[cfg_attr(
    not(gate_python),
    ignore = "needs Python with azure-core: set BATCHGATE_TEST_PYTHON=python3"
)]
async fn the_azure_sdk_poller_drives_jobs_to_their_result_and_raises_for_failures() {
    let Some(python) = std::env::var_os("BATCHGATE_TEST_PYTHON") else {
        return skip("BATCHGATE_TEST_PYTHON (a python3 with azure-core) is not set");
    };
    let app = spawn_app().await;
    let mut command = Command::new(python);
    command
        .arg(repository().join("tests/python/azure_lro.py"))
        .arg(&app.address)
        .arg(repository().join("examples/request.json"));
    run_client(command).await;
}

/// The JavaScript client under Node, downloaded from the gateway and given absolute URLs
/// (it resolves the status document's relative links against them).
#[tokio::test]
#[cfg_attr(
    not(gate_node),
    ignore = "needs Node 18+: set BATCHGATE_TEST_NODE=node"
)]
async fn the_javascript_client_runs_under_node() {
    let Some(node) = std::env::var_os("BATCHGATE_TEST_NODE") else {
        return skip("BATCHGATE_TEST_NODE (a Node 18+) is not set");
    };
    let app = spawn_app().await;
    let mut command = Command::new(node);
    command
        .arg(repository().join("tests/node/client.mjs"))
        .arg(&app.address)
        .arg(repository().join("examples/request.json"));
    run_client(command).await;
}

#[tokio::test]
#[cfg_attr(
    not(gate_browser),
    ignore = "needs Chromium and playwright-core: set BATCHGATE_TEST_BROWSER=/usr/bin/chromium"
)]
async fn the_web_ui_runs_cancels_and_downloads_jobs_in_a_real_browser() {
    let Some(chromium) = std::env::var_os("BATCHGATE_TEST_BROWSER") else {
        return skip("BATCHGATE_TEST_BROWSER (a Chromium binary) is not set");
    };
    let scripts = repository().join("tests/browser");
    if !scripts.join("node_modules/playwright-core").exists() {
        return skip("playwright-core is not installed: npm ci --prefix tests/browser");
    }
    let app = spawn_app().await;
    let key = app.create_key("standard", false).await;
    let screenshots = repository().join("target/ui-screenshots");
    let mut command = Command::new("node");
    command
        .current_dir(&scripts)
        .arg("ui.mjs")
        .arg(&app.address)
        .arg(&key)
        .arg(&screenshots)
        .env("BATCHGATE_CHROMIUM", chromium);
    run_client(command).await;
    assert!(screenshots.join("03-result.png").exists());
}
