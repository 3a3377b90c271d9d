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
    let (job, queued_before) =
        submit_as(&runtime, access.caller()?, &tool_ref, &query, request).await?;
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
    Ok(response)
}

/// The job, and how many jobs were queued when it was admitted (`None` for a replay):
/// the HTTP request is read (`receive`), checked (`validate`), then committed (`commit`).
async fn submit_as(
    runtime: &ApiState,
    caller: &Caller,
    tool_ref: &str,
    query: &[(String, String)],
    request: Request,
) -> Result<(Job, Option<u64>), ApiError> {
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
    let queued_before = match replaying {
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
        Committed::Created(job) => Ok((job, queued_before)),
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

/// Refuses early, before the body is read: a full queue (503) or a full quota (429).
/// Returns how many jobs are queued.
async fn admit(runtime: &ApiState, caller: &Caller) -> Result<u64, ApiError> {
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
        return Ok(queued);
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
    Ok(queued)
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
        .with_retry_after(5),
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

/// What a request body turned into.
struct Received {
    inputs: Vec<StoredInput>,
    parameters: Map<String, Value>,
    /// SHA-256 of the media type and the (decompressed) body, for idempotency.
    hash: String,
}

async fn receive(
    tool: &Arc<Tool>,
    request: Request,
    media_type: Option<&str>,
    query: &[(String, String)],
    staging: &Staging,
    limit: u64,
) -> Result<Received, ApiError> {
    let Some(media_type) = media_type else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::UnsupportedMediaType,
            "a Content-Type header is required (application/json, multipart/form-data, or the input's own type)",
        ));
    };
    let mut hasher = Sha256::new();
    hasher.update(media_type.as_bytes());
    hasher.update([0]);

    if media_type == "application/json" || media_type.ends_with("+json") {
        if !query.is_empty() {
            return Err(ApiError::bad_request(
                Code::UnexpectedQuery,
                "with a JSON body, parameters go in the body's `parameters`, not the query string",
            ));
        }
        let body_path = staging.files.body();
        let mut counter = Budget::new(limit);
        stream_body(request.into_body(), &body_path, &mut counter, &mut hasher).await?;
        let tool = tool.clone();
        let files = staging.files.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let file = std::io::BufReader::new(std::fs::File::open(&body_path)?);
            let mut sinks = FileSinks {
                tool: &tool,
                files: &files,
                sizes: Vec::new(),
            };
            let result = parse_json_request(file, &mut sinks);
            let _ = std::fs::remove_file(&body_path);
            result.map(|(parameters, _)| (parameters, sinks.sizes))
        })
        .await
        .map_err(ApiError::internal)?;
        let (parameters, inputs) = parsed.map_err(request_error)?;
        return Ok(Received {
            inputs,
            parameters,
            hash: hex::encode(hasher.finalize()),
        });
    }

    if media_type == "multipart/form-data" {
        let multipart = Multipart::from_request(request, &())
            .await
            .map_err(|rejection| {
                ApiError::bad_request(Code::MalformedMultipart, rejection.body_text())
            })?;
        return receive_multipart(tool, multipart, staging, limit, hasher).await;
    }

    // Any other media type: the body is the tool's single input.
    let [input] = tool.inputs.as_slice() else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::UnsupportedMediaType,
            format!(
                "`{media_type}`: this tool takes {} inputs; send application/json or multipart/form-data",
                tool.inputs.len()
            ),
        ));
    };
    if !accepts(&input.media_types, media_type) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::UnsupportedMediaType,
            format!(
                "`{media_type}` is not accepted; send application/json, multipart/form-data or one of: {}",
                input.media_types.join(", ")
            ),
        ));
    }
    let path = staging.files.input(&input.name);
    let mut counter = Budget::new(limit);
    let size = stream_body(request.into_body(), &path, &mut counter, &mut hasher).await?;
    normalize(&input.layout, &path, &input.name).await?;
    for (key, value) in query {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    Ok(Received {
        inputs: vec![StoredInput {
            name: input.name.clone(),
            size,
        }],
        parameters: tool.parameters_from_query(query),
        hash: hex::encode(hasher.finalize()),
    })
}

async fn receive_multipart(
    tool: &Arc<Tool>,
    mut multipart: Multipart,
    staging: &Staging,
    limit: u64,
    mut hasher: Sha256,
) -> Result<Received, ApiError> {
    let mut budget = Budget::new(limit);
    let mut parameters = None;
    let mut inputs: Vec<StoredInput> = Vec::new();
    let malformed = |error: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(Code::MalformedMultipart, error.body_text())
    };
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let part_type = field.content_type().map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        hasher.update(name.as_bytes());
        hasher.update([0]);
        if name == "parameters" {
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                budget.take(chunk.len())?;
                hasher.update(&chunk);
                text.extend_from_slice(&chunk);
            }
            let value: Value = serde_json::from_slice(&text).map_err(|error| {
                ApiError::bad_request(
                    Code::MalformedJson,
                    format!("part `parameters` is not valid JSON: {error}"),
                )
            })?;
            match value {
                Value::Object(map) => parameters = Some(map),
                _ => {
                    return Err(ApiError::unprocessable(FieldFault::new(
                        "/parameters",
                        "must be an object",
                    )))
                }
            }
            continue;
        }
        let path_of = |n: &str| format!("/inputs/{}", pointer_token(n));
        let Some(input) = tool.input(&name) else {
            return Err(ApiError::unprocessable(FieldFault::new(
                path_of(&name),
                "this tool has no such input (multipart parts are named after inputs, plus `parameters`)",
            )));
        };
        if inputs.iter().any(|stored| stored.name == name) {
            return Err(ApiError::unprocessable(FieldFault::new(
                path_of(&name),
                "input given twice",
            )));
        }
        let target = staging.files.input(&input.name);
        let as_json =
            part_type.as_deref() == Some("application/json") && input.layout.format != Format::Json;
        let raw_path = if as_json {
            staging.files.json_part(&input.name)
        } else {
            target.clone()
        };
        let io = |error: std::io::Error| ApiError::from_io(&error);
        let mut file = tokio::fs::File::create(&raw_path).await.map_err(io)?;
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            budget.take(chunk.len())?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        drop(file);
        if as_json {
            convert_json_part(tool, &input.name, &raw_path, &staging.files).await?;
        } else {
            normalize(&input.layout, &target, &input.name).await?;
        }
        let size = tokio::fs::metadata(&target).await.map_err(io)?.len();
        inputs.push(StoredInput {
            name: input.name.clone(),
            size,
        });
    }
    Ok(Received {
        inputs,
        parameters: parameters.unwrap_or_default(),
        hash: hex::encode(hasher.finalize()),
    })
}

/// A JSON part for a non-JSON input: records (or text) converted like in a JSON body.
async fn convert_json_part(
    tool: &Arc<Tool>,
    name: &str,
    source: &Path,
    files: &StagedFiles,
) -> Result<(), ApiError> {
    let (tool, name, source, files) = (
        tool.clone(),
        name.to_owned(),
        source.to_owned(),
        files.clone(),
    );
    let wrapped = tokio::task::spawn_blocking(move || -> Result<(), RequestError> {
        // Parse `{"inputs": {name: <part>}}` without building it: chain the part between
        // a prefix and a suffix, and convert it like an input of a JSON body.
        let prefix = format!(
            "{{\"inputs\":{{{}:",
            serde_json::to_string(&name).expect("a string serializes")
        );
        let reader = std::io::Read::chain(
            std::io::Read::chain(
                prefix.as_bytes(),
                std::io::BufReader::new(std::fs::File::open(&source)?),
            ),
            &b"}}"[..],
        );
        let mut sinks = FileSinks {
            tool: &tool,
            files: &files,
            sizes: Vec::new(),
        };
        parse_json_request(reader, &mut sinks)?;
        let _ = std::fs::remove_file(&source);
        Ok(())
    })
    .await
    .map_err(ApiError::internal)?;
    wrapped.map_err(request_error)
}

/// A JSON body (or part) that could not be converted: 400 if it is not JSON, 422 if it is
/// JSON the tool does not take.
fn request_error(error: RequestError) -> ApiError {
    match error {
        RequestError::Malformed(detail) => ApiError::bad_request(
            Code::MalformedJson,
            format!("the body is not valid JSON: {detail}"),
        ),
        RequestError::Invalid(fault) => ApiError::unprocessable(fault),
        RequestError::Io(error) => ApiError::from_io(&error),
    }
}

/// A csv/tsv input given as a file: its header must name the declared columns (in any
/// order; the file is rewritten in the declared order).
async fn normalize(layout: &Layout, path: &Path, name: &str) -> Result<(), ApiError> {
    if !(layout.format.is_tabular() && layout.header && !layout.columns.is_empty()) {
        return Ok(());
    }
    let (layout, path, pointer) = (
        layout.clone(),
        path.to_owned(),
        format!("/inputs/{}", pointer_token(name)),
    );
    tokio::task::spawn_blocking(move || normalize_tabular_file(&layout, &path, &pointer))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// Input files written into the staging directory, one per input, named by the server.
struct FileSinks<'a> {
    tool: &'a Tool,
    files: &'a StagedFiles,
    sizes: Vec<StoredInput>,
}

impl InputSinks for FileSinks<'_> {
    type Sink = std::io::BufWriter<std::fs::File>;
    fn layout(&self, name: &str) -> Option<Layout> {
        self.tool.input(name).map(|input| input.layout.clone())
    }
    fn open(&mut self, name: &str) -> std::io::Result<Self::Sink> {
        Ok(std::io::BufWriter::new(std::fs::File::create(
            self.files.input(name),
        )?))
    }
    fn close(&mut self, name: &str, sink: Self::Sink) -> std::io::Result<()> {
        let file = sink.into_inner().map_err(|error| error.into_error())?;
        let size = file.metadata()?.len();
        self.sizes.push(StoredInput {
            name: name.to_owned(),
            size,
        });
        Ok(())
    }
}

/// Counts received bytes against the cap.
struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    fn new(limit: u64) -> Budget {
        Budget { limit, used: 0 }
    }
    fn take(&mut self, bytes: usize) -> Result<(), ApiError> {
        self.used += bytes as u64;
        if self.used > self.limit {
            return Err(ApiError::too_large(
                self.limit,
                "the request body (after decompression)",
            ));
        }
        Ok(())
    }
}

/// Bytes of a body held in memory before they are written: a small body (most job
/// requests) reaches its file in one blocking call, a large one in steps of this size.
const BODY_BUFFER: usize = 256 * 1024;

/// Streams a body into `path`, hashing and counting; holds at most `BODY_BUFFER` bytes
/// and a chunk.
async fn stream_body(
    body: Body,
    path: &Path,
    budget: &mut Budget,
    hasher: &mut Sha256,
) -> Result<u64, ApiError> {
    let mut file: Option<std::fs::File> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            // A body over a decompression cap or a broken connection ends up here.
            ApiError::bad_request(
                Code::BodyReadFailed,
                format!("the request body could not be read: {error}"),
            )
        })?;
        budget.take(chunk.len())?;
        hasher.update(&chunk);
        pending.extend_from_slice(&chunk);
        if pending.len() >= BODY_BUFFER {
            let written;
            (file, written) = write_body(file, path, pending).await?;
            pending = written;
        }
    }
    write_body(file, path, pending).await?;
    Ok(budget.used)
}

/// Appends `bytes` to the body's file (created on the first call) in one blocking call;
/// returns the file and the emptied buffer for reuse.
async fn write_body(
    file: Option<std::fs::File>,
    path: &Path,
    mut bytes: Vec<u8>,
) -> Result<(Option<std::fs::File>, Vec<u8>), ApiError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = match file {
            Some(file) => file,
            None => std::fs::File::create(&path)?,
        };
        std::io::Write::write_all(&mut file, &bytes)?;
        bytes.clear();
        Ok::<_, std::io::Error>((Some(file), bytes))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|error| ApiError::from_io(&error))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The media type of the body, lowercased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    (!essence.is_empty()).then_some(essence)
}

fn accepts(accepted: &[String], media_type: &str) -> bool {
    accepted.iter().any(|candidate| {
        candidate == media_type
            || candidate == "*/*"
            || candidate
                .strip_suffix("/*")
                .is_some_and(|family| media_type.split('/').next() == Some(family))
    })
}

/// Where a request's files wait until its job is accepted: `<staging>/<job id>-<name>`,
/// names the server makes from the tool's declared inputs. Files, not a directory per
/// request: a directory made and removed per job costs an inode allocation and leaves a
/// freed inode that some filesystems search past for minutes (bench/README.md).
#[derive(Clone)]
struct StagedFiles {
    root: PathBuf,
    id: Uuid,
}

impl StagedFiles {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{}-{name}", self.id))
    }

    /// Input `name`, as the program will get it.
    fn input(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    /// A JSON request body, before its inputs are taken out of it.
    fn body(&self) -> PathBuf {
        self.path(".body.json")
    }

    /// A multipart part of input `name` sent as JSON, before its conversion.
    fn json_part(&self, name: &str) -> PathBuf {
        self.path(&format!(".{name}.json"))
    }
}

/// A request's staged files, removed when the request ends (accepted inputs were moved
/// out by then).
struct Staging {
    files: StagedFiles,
    /// Every file a request for this tool may stage.
    paths: Vec<PathBuf>,
}

impl Staging {
    fn new(root: &Path, id: Uuid, tool: &Tool) -> Staging {
        let files = StagedFiles {
            root: root.to_owned(),
            id,
        };
        let mut paths = vec![files.body()];
        for input in &tool.inputs {
            paths.push(files.input(&input.name));
            paths.push(files.json_part(&input.name));
        }
        Staging { files, paths }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}
