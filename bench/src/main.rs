//! batchgate-bench: starts the real `batchgate` binary on its embedded defaults (SQLite, a
//! local blob directory, local processes) with a trivial tool and prints one JSON line per
//! figure. See `bench/README.md` for the figures, the targets and the latest results.

mod http;
mod postgres;
mod store;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use serde_json::{json, Value};

use http::Conn;
use postgres::Postgres;
use store::Backend;

/// The trivial legacy program: prints the time of its first instruction, copies its input.
const STAMP: &str = env!("BATCHGATE_BENCH_STAMP");

#[derive(Parser)]
#[command(about = "Benchmarks batchgate on this machine; prints one JSON line per figure")]
struct Args {
    /// A few seconds in all, with small counts: checks that every benchmark still works.
    #[arg(long)]
    smoke: bool,
    /// The batchgate binary (default: `batchgate` beside this program).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Seconds of sustained load behind `e2e_jobs_per_s`.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients submitting and waiting (closed loop).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The server's workers (jobs run at once).
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// PostgreSQL to measure on as well, when it answers: the server figures and
    /// `claim_us` are measured again there, each in a schema of its own made in this
    /// database and dropped afterwards.
    #[arg(
        long,
        env = "BATCHGATE_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// Measure on the embedded SQLite only.
    #[arg(long)]
    no_postgres: bool,
    /// Only these figures (comma-separated): spawn, upload, e2e, start, status, claim.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|f| f == figure)
    }

    fn load_seconds(&self) -> f64 {
        if self.smoke {
            1.0
        } else {
            self.seconds.max(1) as f64
        }
    }
}

/// Prints one figure as a JSON line (stdout, flushed, so a reader sees it at once).
fn emit(figure: &str, value: f64, unit: &str, extra: Value) {
    let mut line = json!({ "figure": figure, "value": round(value), "unit": unit });
    if let (Value::Object(line), Value::Object(extra)) = (&mut line, extra) {
        line.extend(extra);
    }
    println!("{line}");
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The `p`-th percentile (0..=1) of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos()
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let outcome = run(&args).await;
    // Only now: see `ENDED_SERVERS`.
    ENDED_SERVERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clear();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("batchgate-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), Failure> {
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("batchgate"),
    };
    if !binary.exists() {
        return Err(format!(
            "{} not found: build it first (`cargo build --release -p batchgate`) or pass --server",
            binary.display()
        )
        .into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    emit(
        "machine",
        cores as f64,
        "cores",
        json!({ "kernel": kernel(), "smoke": args.smoke, "profile": profile_of(&binary) }),
    );

    let mut spawn_rate = None;
    if args.wants("spawn") {
        spawn_rate = Some(spawn_limit(args, cores * 2)?);
    }
    if args.wants("upload") {
        // A fresh server: nothing else has raised its memory yet.
        let server = Server::start(&binary, args.workers, None)?;
        upload_growth(&server, args.smoke).await?;
    }
    let postgres = match args.no_postgres {
        true => None,
        false => Postgres::reachable(&args.postgres).await,
    };
    server_figures(args, &binary, None, spawn_rate).await?;
    if let Some(postgres) = &postgres {
        if SERVER_FIGURES.iter().any(|f| args.wants(f)) {
            let schema = postgres.schema("server").await?;
            server_figures(args, &binary, Some(&schema.url), spawn_rate).await?;
            schema.drop().await?;
        }
    }
    if args.wants("claim") {
        let sizes: &[u64] = if args.smoke {
            &[1_000, 10_000]
        } else {
            &[1_000, 1_000_000]
        };
        let samples = if args.smoke { 200 } else { 2_000 };
        store::claim_cost(Backend::Sqlite, sizes, samples).await?;
        if let Some(postgres) = &postgres {
            store::claim_cost(Backend::Postgres(postgres), sizes, samples).await?;
        }
    }
    Ok(())
}

/// The figures measured through a running server.
const SERVER_FIGURES: [&str; 3] = ["e2e", "start", "status"];

/// `e2e_jobs_per_s`, `submit_to_start_ms` and `status_polls_per_s` on one server, whose
/// job store is `store` (`--store` of `batchgate serve`; `None`: the embedded SQLite).
async fn server_figures(
    args: &Args,
    binary: &Path,
    store: Option<&str>,
    spawn_rate: Option<f64>,
) -> Result<(), Failure> {
    if !SERVER_FIGURES.iter().any(|f| args.wants(f)) {
        return Ok(());
    }
    let server = Server::start(binary, args.workers, store)?;
    let mut sustainable = None;
    if args.wants("e2e") {
        let rate = end_to_end(&server, args).await?;
        let extra = match spawn_rate {
            Some(spawn) => json!({ "store": server.store, "clients": args.clients,
                "workers": args.workers, "of_spawn_limit": round(rate / spawn) }),
            None => {
                json!({ "store": server.store, "clients": args.clients, "workers": args.workers })
            }
        };
        emit("e2e_jobs_per_s", rate, "jobs/s", extra);
        sustainable = Some(rate);
    }
    if args.wants("start") {
        let rate = (sustainable.unwrap_or(200.0) / 2.0).max(1.0);
        submit_to_start(&server, rate, args.load_seconds().min(5.0)).await?;
    }
    if args.wants("status") {
        status_polls(&server, args).await?;
    }
    server.check_no_failures().await
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn profile_of(binary: &Path) -> String {
    binary
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The data directories of servers that have stopped, deleted only when the benchmark
/// ends: deleting tens of thousands of files slows every later file creation on ext4
/// without a journal for minutes (bench/README.md), which would slow the next server.
static ENDED_SERVERS: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());

/// A `batchgate serve` child process with the benchmark's tool, on a free port.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// `sqlite` or `postgres`, for the figures' `store` field.
    store: &'static str,
    dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start(binary: &Path, workers: usize, store: Option<&str>) -> Result<Server, Failure> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("bench.toml");
        std::fs::write(&config, config_text(&dir.path().join("data"), workers))?;
        let mut command = Command::new(binary);
        command.arg("serve").arg("--config").arg(&config);
        if let Some(store) = store {
            command.arg("--store").arg(store);
        }
        let mut child = command
            .env("BATCHGATE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("batchgate listening on http://")
            .ok_or_else(|| format!("the server did not start: {line:?}"))?
            .parse()?;
        Ok(Server {
            child,
            addr,
            store: match store {
                Some(url) if url.starts_with("postgres") => "postgres",
                _ => "sqlite",
            },
            dir: Some(dir),
        })
    }

    /// (current, peak) resident memory in KiB.
    fn rss_kib(&self) -> Result<(u64, u64), Failure> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .ok_or_else(|| format!("no {name} in /proc/PID/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Resets the peak resident memory to the current one (Linux `clear_refs` 5).
    fn reset_peak(&self) -> Result<(), Failure> {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")?;
        Ok(())
    }

    async fn conn(&self) -> Result<Conn, Failure> {
        Conn::open(self.addr).await
    }

    /// Every job the benchmark ran must have succeeded.
    async fn check_no_failures(&self) -> Result<(), Failure> {
        let mut conn = self.conn().await?;
        for state in ["failed", "canceled"] {
            let response = conn
                .get(&format!("/v1/jobs?status={state}&limit=1"), None)
                .await?;
            let page: Value = serde_json::from_slice(response.body())?;
            let jobs = page["jobs"].as_array().map_or(0, Vec::len);
            if jobs > 0 {
                return Err(format!("a benchmark job ended {state}: {page}").into());
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.dir.take() {
            ENDED_SERVERS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(dir);
        }
    }
}

fn config_text(data_dir: &Path, workers: usize) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
data_dir = "{data}"
workers = {workers}
max_request_bytes = 209715200
max_queued_jobs = 1000000
body_timeout_seconds = 300

[[tools]]
name = "copy"
title = "Copies its input (benchmark)"
command = ["{stamp}", "{{inputs.data}}", "{{outputs.copy}}"]
expected_run_seconds = 0.001

[[tools.inputs]]
name = "data"
format = "raw"
media_types = ["application/octet-stream"]

[[tools.outputs]]
name = "copy"
path = "copy.bin"
format = "raw"
result = false

[[tools.outputs]]
name = "started"
from = "stdout"
format = "lines"

[tools.example]
inputs.data = "hello"
"#,
        data = data_dir.display(),
        stamp = STAMP,
    )
}

/// The 100-byte input of every benchmark job.
fn input() -> Bytes {
    Bytes::from((0..100u8).map(|i| b'a' + i % 26).collect::<Vec<u8>>())
}

/// `spawn_limit_per_s`: fork/exec/wait of the same program with the same files, stdout
/// through a pipe as the server reads it, from `threads` threads at once.
fn spawn_limit(args: &Args, threads: usize) -> Result<f64, Failure> {
    let dir = tempfile::tempdir()?;
    let seconds = if args.smoke { 1.0 } else { 5.0 };
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for index in 0..threads {
        let work = dir.path().join(index.to_string());
        std::fs::create_dir(&work)?;
        std::fs::write(work.join("in"), input())?;
        let (stop, count) = (stop.clone(), count.clone());
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                let output = Command::new(STAMP)
                    .arg(work.join("in"))
                    .arg(work.join("out"))
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| e.to_string())?;
                if !output.status.success() {
                    return Err(format!("stamp failed: {:?}", output));
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (start, before) = (Instant::now(), count.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (elapsed, after) = (start.elapsed(), count.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().expect("a spawn thread")?;
    }
    let rate = (after - before) as f64 / elapsed.as_secs_f64();
    emit(
        "spawn_limit_per_s",
        rate,
        "spawns/s",
        json!({ "threads": threads }),
    );
    Ok(rate)
}

/// Submits one job with `body` and returns its status monitor's path.
async fn submit(conn: &mut Conn, body: Bytes) -> Result<String, Failure> {
    let response = conn
        .post("/v1/tools/copy/jobs", "application/octet-stream", body)
        .await?;
    if response.status() != 202 {
        return Err(format!(
            "submit answered {}: {}",
            response.status(),
            String::from_utf8_lossy(response.body())
        )
        .into());
    }
    Ok(response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("a 202 without Location")?
        .to_owned())
}

/// Waits (with `Prefer: wait`) until the monitor answers `303`; returns the redirect.
async fn wait_done(conn: &mut Conn, monitor: &str) -> Result<String, Failure> {
    loop {
        let response = conn.get(monitor, Some("wait=30")).await?;
        match response.status().as_u16() {
            200 | 202 => continue,
            303 => {
                return Ok(response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned())
            }
            status => return Err(format!("the monitor answered {status}").into()),
        }
    }
}

/// `upload_rss_growth_mb`: peak resident memory of the server while it accepts a large
/// upload and runs its job, minus its resident memory just before.
async fn upload_growth(server: &Server, smoke: bool) -> Result<(), Failure> {
    let mut conn = server.conn().await?;
    // Warm up: the first job initialises what every later one reuses.
    let monitor = submit(&mut conn, input()).await?;
    wait_done(&mut conn, &monitor).await?;
    let sizes: &[usize] = if smoke { &[10] } else { &[10, 100] };
    for &mb in sizes {
        let body = Bytes::from(vec![b'x'; mb * 1024 * 1024]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (idle, _) = server.rss_kib()?;
        server.reset_peak()?;
        let start = Instant::now();
        let monitor = submit(&mut conn, body).await?;
        let accepted = start.elapsed();
        wait_done(&mut conn, &monitor).await?;
        let (_, peak) = server.rss_kib()?;
        let copy = conn.get(&format!("{monitor}/outputs/copy"), None).await?;
        if copy.body().len() != mb * 1024 * 1024 {
            return Err(format!("the {mb} MB job's output has {} bytes", copy.body().len()).into());
        }
        emit(
            "upload_rss_growth_mb",
            peak.saturating_sub(idle) as f64 / 1024.0,
            "MB",
            json!({ "upload_mb": mb, "idle_rss_mb": round(idle as f64 / 1024.0),
                    "accepted_ms": round(accepted.as_secs_f64() * 1e3) }),
        );
    }
    Ok(())
}

/// `e2e_jobs_per_s`: `clients` clients each submit a job and wait for its end, again and
/// again; the rate of finished jobs over the measured seconds (after a warm-up).
async fn end_to_end(server: &Server, args: &Args) -> Result<f64, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let mut conn = server.conn().await?;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let body = input();
            while !stop.load(Ordering::Relaxed) {
                let monitor = submit(&mut conn, body.clone()).await?;
                wait_done(&mut conn, &monitor).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), Failure>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(if args.smoke { 0.5 } else { 2.0 })).await;
    let (start, before) = (Instant::now(), done.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs_f64(args.load_seconds())).await;
    let (elapsed, after) = (start.elapsed(), done.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    // One job's output, checked byte for byte.
    let mut conn = server.conn().await?;
    let monitor = submit(&mut conn, input()).await?;
    wait_done(&mut conn, &monitor).await?;
    let copy = conn.get(&format!("{monitor}/outputs/copy"), None).await?;
    if copy.body() != &input() {
        return Err("a benchmark job's output differs from its input".into());
    }
    Ok((after - before) as f64 / elapsed.as_secs_f64())
}

/// `submit_to_start_ms`: jobs submitted at a steady `rate` (open loop); for each, the time
/// from just before its POST to the program's first instruction (which prints its clock).
async fn submit_to_start(server: &Server, rate: f64, seconds: f64) -> Result<(), Failure> {
    let senders = 16usize;
    let interval = Duration::from_secs_f64(senders as f64 / rate);
    let count = ((rate * seconds) as usize / senders).max(2);
    let mut tasks = Vec::new();
    for index in 0..senders {
        let mut conn = server.conn().await?;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(interval.mul_f64(index as f64 / senders as f64)).await;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = Vec::with_capacity(count);
            for _ in 0..count {
                ticker.tick().await;
                let at = unix_nanos();
                sent.push((submit(&mut conn, input()).await?, at));
            }
            Ok::<_, Failure>(sent)
        }));
    }
    let mut submitted = Vec::new();
    for task in tasks {
        submitted.extend(task.await??);
    }
    let mut conn = server.conn().await?;
    let mut latencies = Vec::with_capacity(submitted.len());
    for (monitor, sent_at) in &submitted {
        wait_done(&mut conn, monitor).await?;
        let started = conn
            .get(&format!("{monitor}/outputs/started"), None)
            .await?;
        let started: u128 = std::str::from_utf8(started.body())?.trim().parse()?;
        latencies.push(started.saturating_sub(*sent_at) as f64 / 1e6);
    }
    let latencies = sorted(latencies);
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        emit(
            "submit_to_start_ms",
            percentile(&latencies, p),
            "ms",
            json!({ "percentile": name, "rate_per_s": round(rate), "jobs": latencies.len(),
                    "store": server.store }),
        );
    }
    Ok(())
}

/// `status_polls_per_s`: many clients read a finished job's status monitor (`303`).
async fn status_polls(server: &Server, args: &Args) -> Result<(), Failure> {
    let mut conn = server.conn().await?;
    let monitor = submit(&mut conn, input()).await?;
    wait_done(&mut conn, &monitor).await?;
    let monitor: Arc<str> = monitor.into();
    let clients = 32;
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut conn = server.conn().await?;
        let (stop, measuring, monitor) = (stop.clone(), measuring.clone(), monitor.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let response = conn.get(&monitor, None).await?;
                let took = start.elapsed();
                if response.status() != 303 {
                    return Err(format!("status poll answered {}", response.status()).into());
                }
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(took.as_secs_f64() * 1e3);
                }
            }
            Ok::<_, Failure>(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.load_seconds().min(5.0))).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let latencies = sorted(latencies);
    emit(
        "status_polls_per_s",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        "requests/s",
        json!({ "clients": clients, "p50_ms": round(percentile(&latencies, 0.5)),
                "p99_ms": round(percentile(&latencies, 0.99)), "store": server.store }),
    );
    Ok(())
}
