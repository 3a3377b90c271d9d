//! `POST /v1/tools/{tool}/jobs`: receive a request (JSON, multipart or a raw body),
//! stream it to disk, convert and validate it, commit the job, answer 202.
//!
//! Nothing is queued unless everything validated; the job row and its inputs are
//! durable before the 202 is sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, FromRequest, Multipart, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::auth::{seconds_until, Access};
use super::problem::Code;
use super::ApiState;
use super::{header_value, job_status, live, retry_after_seconds, ApiError, AppState};
use crate::auth::Caller;
use crate::blobs::JobKeys;
use crate::jobs::{Job, StoredInput, Submission};
use crate::store::{Admission, Inserted, Refusal};
use crate::tools::Tool;
use crate::transforms::records::{normalize_tabular_file, Layout};
use crate::transforms::request::{parse_json_request, InputSinks, RequestError};
use crate::transforms::{pointer_token, FieldFault, Format};

mod body;

use body::{content_length, media_type, receive, Received, StagedFiles, Staging};

/// Submit a job
///
/// The body is `application/json` (`{"inputs": …, "parameters": …}`), `multipart/form-data`
/// (one part per input plus a `parameters` part), or any other media type accepted by the
/// tool's single input (parameters from the query string).
#[utoipa::path(
    post,
    path = "/v1/tools/{tool}/jobs",
    params(("tool" = String, Path, description = "`name` (newest version) or `name@version`"),
           ("Idempotency-Key" = Option<String>, Header, description = "Same key and body → the same job"),
           ("Prefer" = Option<String>, Header, description = "`wait=N`: if the job ends within N seconds, answer like the status monitor (`303`)")),
    request_body(content = batchgate_protocol::SubmitRequest, description = "Inputs and parameters"),
    responses(
        (status = 202, description = "Accepted; poll `Location` (or `Operation-Location`)", body = batchgate_protocol::JobStatus,
         headers(("Location" = String), ("Operation-Location" = String), ("Retry-After" = u64))),
        (status = 303, description = "With `Prefer: wait=N`: the job ended in time; `Location` is its result", body = batchgate_protocol::JobStatus),
        (status = 400, description = "Malformed body", body = batchgate_protocol::Problem),
        (status = 401, description = "No valid API key", body = batchgate_protocol::Problem),
        (status = 403, description = "The key's tier may not use this tool", body = batchgate_protocol::Problem),
        (status = 404, description = "Unknown tool", body = batchgate_protocol::Problem),
        (status = 413, description = "Too large (per tool and per tier)", body = batchgate_protocol::Problem),
        (status = 415, description = "Unsupported media type", body = batchgate_protocol::Problem),
        (status = 422, description = "Invalid inputs or parameters", body = batchgate_protocol::Problem),
        (status = 429, description = "Rate limit or quota reached; see `Retry-After`", body = batchgate_protocol::Problem),
        (status = 503, description = "The queue is full; see `Retry-After`", body = batchgate_protocol::Problem),
    ),
    tag = "jobs"
)]
pub async fn submit(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    UrlPath(tool_ref): UrlPath<String>,
    Query(query): Query<Vec<(String, String)>>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let uri = request.uri().clone();
    // Refusals are counted by the auth middleware, which knows the caller's tier.
    let (job, admitted) = submit_as(&runtime, access.caller()?, &tool_ref, &query, request).await?;
    let queued_before = admitted.as_ref().map(|admitted| admitted.queued);
    let operation = format!(
        "{}/v1/operations/{}",
        live::public_base(&runtime, &headers, &uri),
        job.id
    );
    let mut response = match live::preferred_wait(&runtime, &headers) {
        None => accepted(&runtime, &job, queued_before).await?,
        Some(wait) => {
            // The job is stored whatever happens now: a failed wait still answers 202.
            let waited = live::wait_for_end(&runtime, job.clone(), wait)
                .await
                .unwrap_or(job);
            let mut response = if waited.state.is_terminal() {
                super::jobs::monitor(&runtime, &waited).await?
            } else {
                accepted(&runtime, &waited, None).await?
            };
            live::preference_applied(&mut response, wait);
            response
        }
    };
    response
        .headers_mut()
        .insert("operation-location", header_value(&operation));
    if let Some(jobs_left) = admitted.and_then(|admitted| admitted.jobs_left) {
        response
            .headers_mut()
            .insert("ratelimit", header_value(&jobs_left));
    }
    Ok(response)
}

/// The job, and what its admission saw (`None` for a replay):
/// the HTTP request is read (`receive`), checked (`validate`), then committed (`commit`).
async fn submit_as(
    runtime: &ApiState,
    caller: &Caller,
    tool_ref: &str,
    query: &[(String, String)],
    request: Request,
) -> Result<(Job, Option<Admitted>), ApiError> {
    let tool = allowed_tool(runtime, caller, tool_ref)?;
    let headers = request.headers().clone();
    let limit = caller.max_request_bytes(tool.limits.max_request_bytes);
    if let Some(length) = content_length(&headers) {
        if length > limit {
            return Err(ApiError::too_large(limit, "the request body"));
        }
    }
    let idempotency_key = idempotency_key(&headers)?;
    // A repeated idempotent request is answered with its job even when the quota is
    // full now; anything else is refused before its body is read.
    let replaying = match &idempotency_key {
        Some(key) => runtime
            .store
            .find_by_idempotency_key(&caller.owner, key)
            .await?
            .is_some(),
        None => false,
    };
    let admitted = match replaying {
        true => None,
        false => Some(admit(runtime, caller).await?),
    };
    let id = Uuid::now_v7();
    let staging = Staging::new(&runtime.staging_root, id, &tool);
    let deadline = Duration::from_secs(runtime.settings.body_timeout_seconds);
    let media_type = media_type(&headers);
    let receiving = receive(
        &tool,
        request,
        media_type.as_deref(),
        query,
        &staging,
        limit,
    );
    let received = tokio::time::timeout(deadline, receiving)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                Code::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s",
                    deadline.as_secs()
                ),
            )
        })??;
    let Received {
        inputs,
        parameters,
        hash,
    } = received;
    let (parameters, control) = validate(&tool, &inputs, parameters)?;
    if let Some(key) = &idempotency_key {
        if let Some(existing) = runtime
            .store
            .find_by_idempotency_key(&caller.owner, key)
            .await?
        {
            return Ok((replay(existing, &hash, &tool)?, None));
        }
    }
    let submission = Submission {
        owner: caller.owner.clone(),
        tier: caller.tier_label().to_owned(),
        priority: caller.priority(),
        retention: caller.retention(tool.retention),
        tool: tool.name.clone(),
        tool_version: tool.version,
        max_attempts: tool.retry.max_attempts,
        params: parameters,
        inputs,
        idempotency_key,
        request_hash: Some(hash),
    };
    let staged = Staged {
        id,
        files: &staging.files,
        control,
    };
    match commit(runtime, caller, &tool, staged, submission).await? {
        Committed::Created(job) => Ok((job, admitted)),
        Committed::Replayed(job) => Ok((job, None)),
    }
}

/// The tool `tool_ref` names, if the caller's tier may use it.
fn allowed_tool(
    runtime: &ApiState,
    caller: &Caller,
    tool_ref: &str,
) -> Result<Arc<Tool>, ApiError> {
    let tool = runtime.tools.resolve(tool_ref).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            Code::ToolNotFound,
            format!("no tool `{tool_ref}`; see /v1/tools"),
        )
    })?;
    if let Some(tier) = &caller.tier {
        if !tier.allows(&tool) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::ToolNotAllowed,
                format!(
                    "tier `{}` may not use tool `{}`",
                    caller.tier_name,
                    tool.id()
                ),
            ));
        }
    }
    Ok(tool)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request(
                Code::InvalidIdempotencyKey,
                "Idempotency-Key must be 1 to 255 visible characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// Every required input is there and within its size, the parameters validate
/// (defaults applied), the control file renders.
fn validate(
    tool: &Tool,
    inputs: &[StoredInput],
    parameters: Map<String, Value>,
) -> Result<(Map<String, Value>, Option<String>), ApiError> {
    for input in &tool.inputs {
        let given = inputs.iter().find(|stored| stored.name == input.name);
        match given {
            None if input.required => {
                return Err(ApiError::unprocessable(FieldFault::new(
                    format!("/inputs/{}", pointer_token(&input.name)),
                    "this input is required",
                )))
            }
            Some(stored) if stored.size > input.max_bytes => {
                return Err(ApiError::too_large(
                    input.max_bytes,
                    &format!("input `{}`", input.name),
                ))
            }
            _ => {}
        }
    }
    let parameters = tool.validate_parameters(parameters).map_err(|faults| {
        let detail = faults
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::ValidationFailed,
            detail,
        )
        .with_fields(faults)
    })?;
    let control = match &tool.control {
        Some(template) => Some(
            template
                .render(&parameters)
                .map_err(ApiError::unprocessable)?,
        ),
        None => None,
    };
    Ok((parameters, control))
}

/// A validated request's files, ready to be committed.
struct Staged<'a> {
    id: Uuid,
    files: &'a StagedFiles,
    control: Option<String>,
}

enum Committed {
    Created(Job),
    /// Another request with the same idempotency key won the race.
    Replayed(Job),
}

/// Inputs and control file first (fsynced), then the row with the quota checks. A crash
/// between the two leaves unreferenced blobs, never a job without its inputs; a refusal
/// leaves nothing.
async fn commit(
    runtime: &ApiState,
    caller: &Caller,
    tool: &Tool,
    staged: Staged<'_>,
    submission: Submission,
) -> Result<Committed, ApiError> {
    let id = staged.id;
    for input in &submission.inputs {
        runtime
            .blobs
            .put_file(
                &JobKeys::input(id, &input.name),
                &staged.files.input(&input.name),
            )
            .await?;
    }
    if let Some(control) = &staged.control {
        runtime
            .blobs
            .put_bytes(&JobKeys::control(id), control.as_bytes())
            .await?;
    }
    let now = runtime.store.now();
    let job = Job::queued(id, submission, now);
    let inserted = runtime.store.insert(&job, &admission(caller, now)).await;
    let discard = || async { drop(runtime.blobs.delete_prefix(&JobKeys::job(id)).await) };
    match inserted {
        Ok(Inserted::Created) => {}
        Err(error) => {
            discard().await;
            return Err(error.into());
        }
        Ok(Inserted::Existing(existing)) => {
            discard().await;
            let hash = job.request_hash.as_deref().unwrap_or_default();
            return Ok(Committed::Replayed(replay(*existing, hash, tool)?));
        }
        Ok(Inserted::Refused(refusal)) => {
            // A concurrent request took the last place: nothing of this one stays.
            discard().await;
            return Err(quota_error(caller, &refusal));
        }
    }
    crate::telemetry::submitted(&job.tool, &job.tier);
    tracing::info!(job_id = %id, tool = %tool.id(), key = %caller.owner, "job accepted");
    Ok(Committed::Created(job))
}

/// The quota checks made with the insert.
fn admission(caller: &Caller, now: chrono::DateTime<chrono::Utc>) -> Admission {
    let Some(tier) = &caller.tier else {
        return Admission::default();
    };
    Admission {
        window: tier.jobs_per_window.map(|limit| {
            let window = chrono::Duration::from_std(tier.window()).unwrap_or_default();
            (limit, now - window)
        }),
        concurrent: tier.concurrent_jobs,
    }
}

/// What the early admission check saw.
struct Admitted {
    /// Jobs queued (for the `Retry-After` of the `202`).
    queued: u64,
    /// The caller's jobs quota after this job (a `RateLimit` item), if the tier has one.
    jobs_left: Option<String>,
}

/// Refuses early, before the body is read: a full queue (503) or a full quota (429).
async fn admit(runtime: &ApiState, caller: &Caller) -> Result<Admitted, ApiError> {
    let cap = runtime.settings.max_queued_jobs;
    let queued = runtime.store.queued_count(cap).await?;
    if queued >= cap {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::QueueFull,
            format!("{cap} jobs are waiting already; try again shortly"),
        )
        .with_retry_after(runtime.settings.retry_after_max_seconds.min(30)));
    }
    let now = runtime.store.now();
    let admission = admission(caller, now);
    if admission.window.is_none() && admission.concurrent.is_none() {
        return Ok(Admitted {
            queued,
            jobs_left: None,
        });
    }
    let since = admission.window.map_or(now, |(_, since)| since);
    let standing = runtime.store.standing(&caller.owner, since).await?;
    if let Some((limit, _)) = admission.window {
        if standing.jobs_since >= limit {
            let oldest = standing.oldest_since.unwrap_or(now);
            return Err(quota_error(caller, &Refusal::JobsPerWindow { oldest }));
        }
    }
    if let Some(limit) = admission.concurrent {
        if standing.active >= limit {
            return Err(quota_error(caller, &Refusal::Concurrent));
        }
    }
    let jobs_left = admission.window.map(|(limit, since)| {
        let window = now - since;
        let frees = standing.oldest_since.unwrap_or(now) + window;
        let left = limit.saturating_sub(standing.jobs_since + 1);
        format!("\"jobs\";r={left};t={}", seconds_until(frees, now))
    });
    Ok(Admitted { queued, jobs_left })
}

fn quota_error(caller: &Caller, refusal: &Refusal) -> ApiError {
    let Some(tier) = &caller.tier else {
        return ApiError::internal("a quota refusal without a tier");
    };
    match refusal {
        Refusal::JobsPerWindow { oldest } => {
            let limit = tier.jobs_per_window.unwrap_or_default();
            let frees = *oldest + chrono::Duration::from_std(tier.window()).unwrap_or_default();
            let wait = seconds_until(frees, chrono::Utc::now());
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Code::QuotaExceeded,
                format!(
                    "tier `{}` allows {limit} job(s) per {} s; the next one can start in {wait} s",
                    caller.tier_name, tier.window_seconds
                ),
            )
            .with_retry_after(wait)
            .with_header(
                header::HeaderName::from_static("ratelimit"),
                header_value(&format!("\"jobs\";r=0;t={wait}")),
            )
        }
        Refusal::Concurrent => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Code::TooManyConcurrentJobs,
            format!(
                "tier `{}` allows {} job(s) queued or running at once; wait for one to finish",
                caller.tier_name,
                tier.concurrent_jobs.unwrap_or_default()
            ),
        )
        .with_retry_after(5)
        .with_header(
            header::HeaderName::from_static("ratelimit"),
            header_value("\"concurrent\";r=0"),
        ),
    }
}

/// The answer to a repeated idempotent request: the original job, or 422 when the body
/// differs.
fn replay(existing: Job, request_hash: &str, tool: &Tool) -> Result<Job, ApiError> {
    let same_tool = existing.tool == tool.name && existing.tool_version == tool.version;
    if !same_tool || existing.request_hash.as_deref() != Some(request_hash) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::IdempotencyKeyReused,
            "this Idempotency-Key was already used with a different request",
        ));
    }
    Ok(existing)
}

/// `202` for `job`; `queued_before` (jobs queued when it was admitted) stands for the jobs
/// ahead of it in the `Retry-After` estimate, sparing a count.
async fn accepted(
    runtime: &ApiState,
    job: &Job,
    queued_before: Option<u64>,
) -> Result<Response, ApiError> {
    let location = format!("/v1/jobs/{}", job.id);
    let retry_after = retry_after_seconds(runtime, job, queued_before).await;
    Ok((
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, header_value(&location)),
            (header::RETRY_AFTER, retry_after.into()),
            super::no_store(),
        ],
        Json(job_status(job)),
    )
        .into_response())
}
