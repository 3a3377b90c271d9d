//! Wire types of the batchgate HTTP API (v1), shared by the server and its clients.
//!
//! Everything here is plain data with serde and OpenAPI schemas; no behaviour lives here
//! beyond small predicates, so that a client can depend on this crate without pulling in
//! the server.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// The state of a job. `queued → running → succeeded | failed | canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Canceled,
    ];

    /// True once the job can no longer change state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress reported by the program (parsed from its output by the tool's pattern).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// 0 to 100, when the program reports a figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a job failed, in terms a user can act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    /// Stable kebab-case code, e.g. `program-exit-status`, `timeout`, `missing-output`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The last lines the program wrote to stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
}

/// One output file of a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputInfo {
    pub name: String,
    pub media_type: String,
    pub size: u64,
    pub href: String,
}

/// Links from a job to its related resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobLinks {
    #[serde(rename = "self")]
    pub self_: String,
    pub result: String,
    pub outputs: Vec<OutputInfo>,
    pub logs: String,
    /// Server-Sent Events of the job's state and progress changes.
    pub events: String,
    pub cancel: String,
    /// The job as a long-running-operation status resource (Azure SDK pollers).
    pub operation: String,
}

/// The body of the status monitor and of every job listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    pub id: Uuid,
    pub tool: String,
    pub tool_version: u32,
    pub status: JobState,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The number of the current (or last) attempt; 0 before the first one starts.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// True once a cancel was asked for a running job and not yet carried out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    pub links: JobLinks,
}

/// One Server-Sent Event of `GET /v1/jobs/{id}/events` (its `data`). The SSE `id` is the
/// event's sequence number: send it back as `Last-Event-ID` to resume after it; the SSE
/// `event` is `kind`. The stream ends after the event of a terminal state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobEvent {
    pub job_id: Uuid,
    /// `state` (created, or state or attempt changed), `progress` or `cancel-requested`.
    pub kind: String,
    pub at: DateTime<Utc>,
    pub status: JobState,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// A failed job's error, or why a queued job is waiting for another attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// At a terminal state: where the status monitor redirects (the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// At a terminal state: the job's status document, as the status monitor's `303`
    /// carries it (with the outputs' links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<JobStatus>>,
}

/// `GET /v1/operations/{id}`: the job as a long-running-operation status resource, the
/// shape the Azure SDK pollers (`Operation-Location`) read. Always `200`; `status` is
/// `notStarted`, `running`, `succeeded`, `failed` or `canceled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub id: Uuid,
    pub status: String,
    pub created_date_time: DateTime<Utc>,
    pub last_action_date_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_complete: Option<f64>,
    /// Once succeeded: the absolute URL of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OperationError {
    pub code: String,
    pub message: String,
}

impl Operation {
    /// The operation status of a job state.
    pub fn status_of(state: JobState) -> &'static str {
        match state {
            JobState::Queued => "notStarted",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }
}

/// A page of the caller's job history, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobStatus>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One failing field of a rejected request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON-pointer-like path of the failing field, e.g. `/parameters/window` or
    /// `/inputs/records/3/value`.
    pub path: String,
    pub message: String,
}

/// An RFC 9457 problem document, the body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    /// Stable kebab-case code to branch on.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For a failed job: the job's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_error: Option<JobError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// A tool as listed in the catalogue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolSummary {
    pub name: String,
    /// The newest version; the bare name means this one.
    pub version: u32,
    /// Every version served, oldest first.
    pub versions: Vec<u32>,
    pub title: String,
    pub description: String,
    pub href: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolCatalogue {
    pub tools: Vec<ToolSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InputInfo {
    pub name: String,
    /// `csv`, `tsv`, `jsonl`, `json`, `lines` or `raw`.
    pub format: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    pub required: bool,
    /// Media types accepted as a raw body or a multipart part.
    pub media_types: Vec<String>,
    /// This input's own size cap, when it has one (the request's cap applies anyway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputDeclInfo {
    pub name: String,
    pub format: String,
    pub media_type: String,
    /// True when this output is part of the JSON result.
    pub result: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolLimits {
    pub timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// The largest request body accepted from the caller who asked (the tool's cap, or
    /// the caller's tier's when lower).
    pub max_request_bytes: u64,
    pub max_output_bytes: u64,
    pub max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// The full description of one tool version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolDescription {
    pub name: String,
    pub version: u32,
    pub versions: Vec<u32>,
    pub title: String,
    pub description: String,
    pub inputs: Vec<InputInfo>,
    /// JSON Schema of `parameters`.
    pub parameters: Value,
    pub outputs: Vec<OutputDeclInfo>,
    pub limits: ToolLimits,
    /// A complete, valid request body for `POST /v1/tools/{tool}/jobs`.
    pub example: SubmitRequest,
    pub submit: String,
}

/// The JSON body of `POST /v1/tools/{tool}/jobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct SubmitRequest {
    /// One entry per input: an array of records (objects or arrays), an array of lines,
    /// or a string holding the file's text.
    #[serde(default)]
    pub inputs: serde_json::Map<String, Value>,
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
}

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_and_terminality() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!(!JobState::Queued.is_terminal());
        assert!(!JobState::Running.is_terminal());
        assert!(JobState::Succeeded.is_terminal());
        assert!(JobState::Failed.is_terminal());
        assert!(JobState::Canceled.is_terminal());
        assert_eq!(JobState::parse("done"), None);
    }
}

/// A tier's limits, as `GET /v1/usage` reports them (absent: no limit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TierLimits {
    pub requests_per_minute: Option<u64>,
    pub jobs_per_window: Option<u64>,
    pub window_seconds: u64,
    pub concurrent_jobs: Option<u64>,
    pub max_request_bytes: Option<u64>,
    pub retention_seconds: Option<u64>,
    /// Tools the tier may use (absent: all).
    pub tools: Option<Vec<String>>,
    pub priority: i32,
}

/// The caller's standing against its quotas now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageNow {
    /// Jobs submitted in the tier's current window.
    pub jobs_in_window: u64,
    /// Jobs that may still be submitted in it (absent: no limit).
    pub jobs_remaining: Option<u64>,
    /// Jobs queued or running.
    pub concurrent_jobs: u64,
}

/// Summed costs of the caller's attempts that ended within a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageWindow {
    /// `window` (the tier's quota window), `day` or `month` (30 days).
    pub name: String,
    pub since: DateTime<Utc>,
    /// Jobs submitted since then.
    pub jobs: u64,
    pub attempts: u64,
    pub wall_seconds: f64,
    /// CPU time of the programs and the processes they waited for.
    pub cpu_seconds: f64,
    /// The largest peak memory of one attempt.
    pub peak_memory_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// The key's public id (absent for the anonymous caller).
    pub key: Option<String>,
    pub tier: Option<String>,
    pub limits: Option<TierLimits>,
    pub now: UsageNow,
    pub windows: Vec<UsageWindow>,
}
