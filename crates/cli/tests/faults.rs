//! The real binary when the machine misbehaves: its object store stops, its disk fills.
//! Each answer says whose fault it is, with `Retry-After`, and nothing accepted is lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::Server;

/// A server on the demo tools, with `data_dir` and more arguments and environment.
fn serve(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = common::batchgate(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command
        .arg(data_dir)
        .args(args)
        .env("BATCHGATE_LOG", "warn")
        .envs(env.iter().copied())
        .stderr(Stdio::inherit());
    let (child, address) = common::start(command);
    Server { child, address }
}

/// A submission's answer: status, `Retry-After`, body, and how long it took.
async fn try_submit(client: &reqwest::Client, server: &Server) -> (u16, bool, Value, Duration) {
    let started = Instant::now();
    let response = client
        .post(format!("{}/v1/tools/analyzer/jobs", server.address))
        .json(&common::analyzer_request("during"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body, started.elapsed())
}

fn slow_request() -> Value {
    json!({
        "parameters": {"delay_seconds": 3, "label": "slow"},
        "inputs": {"records": [{"sensor": "s", "timestamp": "t", "value": 1}]}
    })
}

/// An S3 server of the test's own (`s3s-fs`, which checks signatures), stopped and started
/// on the same port and directory.
struct ObjectStore {
    binary: PathBuf,
    port: u16,
    root: PathBuf,
    child: Option<Child>,
}

impl ObjectStore {
    fn start(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", "faultkey", "--secret-key", "faultsecret"])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "faultkey".into()),
            ("AWS_SECRET_ACCESS_KEY", "faultsecret".into()),
        ]
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.stop();
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(feature = "object-store", gate_tools)),
    ignore = "needs bubblewrap, faketime and s3s-fs: set BATCHGATE_TEST_TOOLS=1 once installed, and the `object-store` feature (--all-features)"
)]
async fn an_object_store_outage_is_a_503_and_a_running_job_waits_for_it() {
    let Some(binary) = on_path("s3s-fs") else {
        common::skip("s3s-fs is not installed (cargo install s3s-fs --version 0.14.1 --locked --features binary)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("s3/faults")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut store = ObjectStore {
        binary,
        port,
        root: dir.path().join("s3"),
        child: None,
    };
    store.start();
    let env = store.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = serve(
        &dir.path().join("data"),
        &["--blobs", "s3://faults/ci"],
        &env,
    );
    let client = common::client();
    let running = common::submit(&client, &server, "analyzer", slow_request()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::get_json(&client, &format!("{}/v1/jobs/{running}", server.address)).await
        ["status"]
        != "running"
    {
        assert!(Instant::now() < deadline, "the slow job never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    store.stop();
    let (status, retry_after, body, took) = try_submit(&client, &server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "storage-unavailable", "{body}");
    assert!(retry_after, "a 503 says when to come back");
    assert!(took < Duration::from_secs(10), "the answer took {took:?}");
    // The running job ends during the outage; its outputs wait for the store.
    tokio::time::sleep(Duration::from_secs(5)).await;
    store.start();

    let status =
        common::wait_ended(&client, &server.address, &running, Duration::from_secs(60)).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(
        status["attempt"], 1,
        "the outage used up no attempt: {status}"
    );
    let (status, _, body, _) = try_submit(&client, &server).await;
    assert_eq!(status, 202, "{body}");
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_root),
    ignore = "needs root: set BATCHGATE_TEST_ROOT=1 when the tests run as root"
)]
async fn a_full_disk_is_a_507_never_the_clients_fault() {
    let own_uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if own_uid != 0 {
        common::skip("mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=30m", "tmpfs"])
        .arg(&data_dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a tmpfs");
    let disk = SmallDisk(data_dir.clone());
    let server = serve(&data_dir, &[], &[]);
    let client = common::client();
    let before = common::submit(
        &client,
        &server,
        "analyzer",
        common::analyzer_request("before"),
    )
    .await;
    common::wait_ended(&client, &server.address, &before, Duration::from_secs(20)).await;

    // Fill the disk (the file is the test's, in the data directory's file system).
    let filler = data_dir.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1024 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    for _ in 0..3 {
        let (status, retry_after, body, _) = try_submit(&client, &server).await;
        assert_eq!(status, 507, "{body}");
        assert_eq!(body["code"], "storage-full", "{body}");
        assert!(retry_after, "a 507 says when to come back");
        assert!(
            !body.to_string().contains(&data_dir.display().to_string()),
            "{body}"
        );
    }
    std::fs::remove_file(&filler).unwrap();

    // Space is back: the server serves again, and only the first job and this one exist.
    let after = common::submit(
        &client,
        &server,
        "analyzer",
        common::analyzer_request("after"),
    )
    .await;
    let status =
        common::wait_ended(&client, &server.address, &after, Duration::from_secs(20)).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let page = common::get_json(&client, &format!("{}/v1/jobs", server.address)).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2, "{page}");
    drop(server);
    drop(disk);
}

/// `batchgate <role>` of a deployment on PostgreSQL (`url`) with a blob directory shared
/// by its processes and a data directory of its own (`name`).
fn role(dir: &Path, url: &str, name: &str, role: &[&str]) -> Command {
    let mut command = common::batchgate(role);
    command
        .arg("--store")
        .arg(url)
        .arg("--data-dir")
        .arg(dir.join(name))
        .arg("--blobs")
        .arg(dir.join("blobs"))
        .env("BATCHGATE__LEASE_SECONDS", "3")
        .env("BATCHGATE_LOG", "warn")
        .stderr(Stdio::inherit());
    command
}

/// `serve --no-worker` of such a deployment.
fn api_replica(dir: &Path, url: &str) -> Server {
    let mut api = role(
        dir,
        url,
        "api",
        &["serve", "--no-worker", "--listen", "127.0.0.1:0"],
    );
    api.stdout(Stdio::piped());
    let (child, address) = common::start(api);
    Server { child, address }
}

/// `LD_PRELOAD` and `FAKETIME` that run a process with its clock `offset` (libfaketime,
/// Debian `faketime`) ahead; `None` (after a visible skip) without the library.
fn clock_ahead(offset: &str) -> Option<Vec<(&'static str, String)>> {
    let library = std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.is_file());
    let Some(library) = library else {
        common::skip("libfaketime is not installed (apt-get install faketime)");
        return None;
    };
    Some(vec![
        ("LD_PRELOAD", library.display().to_string()),
        ("FAKETIME", offset.to_owned()),
    ])
}

async fn wait_running(client: &reqwest::Client, server: &Server, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = common::get_json(
            client,
            &format!("{}/v1/jobs?status=running", server.address),
        )
        .await;
        if page["jobs"].as_array().unwrap().len() >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{count} jobs never ran: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_tools),
    ignore = "needs bubblewrap, faketime and s3s-fs: set BATCHGATE_TEST_TOOLS=1 once installed"
)]
async fn a_clock_that_steps_back_strands_no_job_on_sqlite() {
    let Some(ahead) = clock_ahead("+1h") else {
        return;
    };
    let ahead: Vec<(&str, &str)> = ahead.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = common::client();
    // A server an hour ahead takes four jobs, runs two, and dies.
    let server = serve(&data_dir, &["--workers", "2"], &ahead);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(common::submit(&client, &server, "analyzer", slow_request()).await);
    }
    wait_running(&client, &server, 2).await;
    drop(server); // SIGKILL

    // The same data directory with the right clock: nothing waits for the hour.
    let server = serve(&data_dir, &["--workers", "2"], &[]);
    for id in &ids {
        let status =
            common::wait_ended(&client, &server.address, id, Duration::from_secs(40)).await;
        assert_eq!(status["status"], "succeeded", "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(gate_pg, gate_tools)),
    ignore = "needs PostgreSQL and faketime: set BATCHGATE_TEST_PG_URL and BATCHGATE_TEST_TOOLS=1"
)]
async fn a_worker_whose_clock_is_ahead_steals_no_live_job_on_postgres() {
    let Some(ahead) = clock_ahead("+1h") else {
        return;
    };
    let Some((url, _pool)) = common::pg_schema("clock").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = api_replica(dir.path(), &url);
    let worker = |name: &str, env: &[(&'static str, String)]| {
        let mut command = role(dir.path(), &url, name, &["worker", "--workers", "2"]);
        command.envs(env.iter().map(|(k, v)| (*k, v.clone())));
        command.stdout(Stdio::null());
        Server {
            child: command.spawn().unwrap(),
            address: String::new(),
        }
    };
    let _right = worker("right", &[]);
    let client = common::client();
    let request = json!({
        "parameters": {"delay_seconds": 6, "label": "long"},
        "inputs": {"records": [{"sensor": "s", "timestamp": "t", "value": 1}]}
    });
    let first = common::submit(&client, &api, "analyzer", request.clone()).await;
    let second = common::submit(&client, &api, "analyzer", request).await;
    wait_running(&client, &api, 2).await;
    // A worker an hour ahead joins while both run.
    let _ahead = worker("ahead", &ahead);
    for id in [&first, &second] {
        let status = common::wait_ended(&client, &api.address, id, Duration::from_secs(40)).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        assert_eq!(status["attempt"], 1, "a live job was taken over: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gate_pg),
    ignore = "needs PostgreSQL: set BATCHGATE_TEST_PG_URL=postgres://…"
)]
async fn live_logs_reach_an_api_replica_that_runs_no_job() {
    let Some((url, _pool)) = common::pg_schema("logs").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = api_replica(dir.path(), &url);
    let mut worker = role(dir.path(), &url, "worker", &["worker", "--workers", "1"]);
    worker.stdout(Stdio::null());
    let _worker = Server {
        child: worker.spawn().unwrap(),
        address: String::new(),
    };
    let client = common::client();
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"sensor": "s", "timestamp": format!("t{i}"), "value": i}))
        .collect();
    let request = json!({"parameters": {"delay_seconds": 8}, "inputs": {"records": records}});
    let id = common::submit(&client, &api, "analyzer", request).await;
    wait_running(&client, &api, 1).await;
    // The worker's progress lines reach the API's logs while the job runs, in seconds.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let response = client
            .get(format!("{}/v1/jobs/{id}/logs?stream=stdout", api.address))
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        let status = common::get_json(&client, &format!("{}/v1/jobs/{id}", api.address)).await;
        if text.contains("PROGRESS") {
            assert_eq!(status["status"], "running", "the logs came only at the end");
            break;
        }
        assert!(Instant::now() < deadline, "no live log: {text:?} {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = common::wait_ended(&client, &api.address, &id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "succeeded", "{status}");
}
