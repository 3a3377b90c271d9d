//! Prometheus metrics through the `metrics` facade. The recorder is process-wide;
//! `/metrics` renders it, adding gauges read from the store at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Installs the recorder once per process (several servers in one test process share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (an embedding application's); then ours only renders.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!("batchgate_jobs_submitted_total", "Jobs accepted (202)");
    metrics::describe_counter!(
        "batchgate_jobs_finished_total",
        "Jobs that reached a terminal state"
    );
    metrics::describe_counter!("batchgate_attempts_total", "Attempts by outcome");
    metrics::describe_counter!(
        "batchgate_rejections_total",
        "Requests refused, by reason (the problem code)"
    );
    metrics::describe_counter!("batchgate_bytes_in_total", "Bytes staged for programs");
    metrics::describe_counter!(
        "batchgate_bytes_out_total",
        "Bytes of outputs and logs stored"
    );
    metrics::describe_counter!(
        "batchgate_cpu_milliseconds_total",
        "CPU time of programs (and the descendants they waited for)"
    );
    metrics::describe_histogram!("batchgate_run_seconds", "Wall time of attempts");
    metrics::describe_histogram!(
        "batchgate_queue_wait_seconds",
        "Time from submission to the first attempt's start"
    );
    metrics::describe_gauge!("batchgate_jobs", "Jobs in the store by tool and state");
}

pub fn submitted(tool: &str, tier: &str) {
    metrics::counter!("batchgate_jobs_submitted_total", "tool" => tool.to_owned(), "tier" => tier.to_owned())
        .increment(1);
}

pub fn rejected(reason: &'static str, tier: &str) {
    let tier = if tier.is_empty() { "none" } else { tier };
    metrics::counter!("batchgate_rejections_total", "reason" => reason, "tier" => tier.to_owned())
        .increment(1);
}

pub fn queue_wait(tool: &str, wait: Duration) {
    metrics::histogram!("batchgate_queue_wait_seconds", "tool" => tool.to_owned())
        .record(wait.as_secs_f64());
}

/// One attempt's end.
pub struct AttemptFigures<'a> {
    pub tool: &'a str,
    pub tier: &'a str,
    pub outcome: &'a str,
    pub wall: Duration,
    pub cpu: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

pub fn attempt(figures: &AttemptFigures<'_>) {
    let tool = figures.tool.to_owned();
    let tier = figures.tier.to_owned();
    metrics::counter!("batchgate_attempts_total", "tool" => tool.clone(), "tier" => tier.clone(), "outcome" => figures.outcome.to_owned())
        .increment(1);
    metrics::histogram!("batchgate_run_seconds", "tool" => tool.clone(), "tier" => tier.clone())
        .record(figures.wall.as_secs_f64());
    if let Some(cpu) = figures.cpu {
        metrics::counter!("batchgate_cpu_milliseconds_total", "tool" => tool.clone(), "tier" => tier.clone())
            .increment(cpu.as_millis() as u64);
    }
    metrics::counter!("batchgate_bytes_in_total", "tool" => tool.clone(), "tier" => tier.clone())
        .increment(figures.bytes_in);
    metrics::counter!("batchgate_bytes_out_total", "tool" => tool, "tier" => tier)
        .increment(figures.bytes_out);
}

pub fn finished(tool: &str, tier: &str, state: &str) {
    metrics::counter!("batchgate_jobs_finished_total", "tool" => tool.to_owned(), "tier" => tier.to_owned(), "state" => state.to_owned())
        .increment(1);
}

pub fn job_gauge(tool: &str, state: &str, count: u64) {
    metrics::gauge!("batchgate_jobs", "tool" => tool.to_owned(), "state" => state.to_owned())
        .set(count as f64);
}
