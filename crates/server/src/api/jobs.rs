//! The status monitor, results, outputs, logs, cancel/delete and the job history.

use axum::body::Body;
use axum::extract::{Extension, OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use batchgate_protocol::{JobPage, JobStatus};
use chrono::Utc;
use serde::Deserialize;
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use super::auth::Access;
use super::problem::Code;
use super::ApiState;
use super::{header_value, job_status, no_store, retry_after_seconds, ApiError, AppState};
use crate::auth::signing::Refused;
use crate::auth::Caller;
use crate::blobs::JobKeys;
use crate::config::ResultDelivery;
use crate::jobs::{Job, JobState};
use crate::store::ListQuery;
use crate::transforms::FieldFault;

/// Loads a job the caller may see: another caller's job is absent (404), a purged one
/// gone (410).
pub(super) async fn load(runtime: &ApiState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    let job = find(runtime, id)
        .await?
        .filter(|job| caller.can_see(&job.owner))
        .ok_or_else(ApiError::job_not_found)?;
    present(job)
}

/// Like `load`, for the routes a signed URL may reach: with a signature, the job must be
/// the one it was signed for (method, path, job, owner, expiry), else 403.
async fn load_for(
    runtime: &ApiState,
    access: &Access,
    id: &str,
    path: &str,
) -> Result<Job, ApiError> {
    let signature = match access {
        Access::Caller(caller) => return load(runtime, caller, id).await,
        Access::Signed(signature) => signature,
    };
    let refused = |reason: Refused| match reason {
        Refused::Expired => ApiError::new(
            StatusCode::FORBIDDEN,
            Code::SignedUrlExpired,
            "this link has expired; ask the status monitor for a new one",
        ),
        Refused::Invalid => ApiError::new(
            StatusCode::FORBIDDEN,
            Code::SignedUrlInvalid,
            "this link's signature is not valid",
        ),
    };
    let job = find(runtime, id)
        .await?
        .ok_or_else(|| refused(Refused::Invalid))?;
    runtime
        .signer
        .verify(
            "GET",
            path,
            job.id,
            &job.owner,
            signature,
            Utc::now().timestamp(),
        )
        .await
        .map_err(refused)?;
    present(job)
}

async fn find(runtime: &ApiState, id: &str) -> Result<Option<Job>, ApiError> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(None);
    };
    Ok(runtime.store.get(id).await?)
}

fn present(job: Job) -> Result<Job, ApiError> {
    if job.purged_at.is_some() {
        return Err(ApiError::new(
            StatusCode::GONE,
            Code::JobExpired,
            "this job's data was deleted (retention ended or it was deleted)",
        ));
    }
    Ok(job)
}

/// The URL of a finished job's result or output: signed when results are delivered by
/// signed URL. When the blob store can presign (object storage) and the blob `key` holds
/// exactly what the URL serves, the URL is the store's own presigned one, so that the
/// download bypasses the gateway; otherwise the gateway signs its own path.
pub(super) async fn delivery_url(
    runtime: &ApiState,
    job: &Job,
    path: String,
    key: Option<String>,
) -> String {
    if runtime.settings.result_delivery != ResultDelivery::SignedUrl {
        return path;
    }
    let lifetime = std::time::Duration::from_secs(runtime.settings.signed_url_seconds);
    if let Some(key) = key.filter(|_| job.state == JobState::Succeeded) {
        match runtime.blobs.presigned_get(&key, lifetime).await {
            Ok(Some(url)) => return url,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(job_id = %job.id, %error, "cannot presign; the gateway signs instead");
            }
        }
    }
    let expires = Utc::now().timestamp() + lifetime.as_secs() as i64;
    let signature = runtime.signer.sign(&path, job.id, &job.owner, expires);
    format!("{path}?{}", signature.to_query())
}

/// Where a finished job's result is delivered (`Location` of the monitor's `303`).
pub(super) async fn result_url(runtime: &ApiState, job: &Job) -> String {
    let path = format!("/v1/jobs/{}/result", job.id);
    delivery_url(
        runtime,
        job,
        path,
        Some(JobKeys::result(job.id, job.attempt)),
    )
    .await
}

/// Job status monitor
///
/// While the job is queued or running: `200` (or `202` when the server is configured
/// for the Durable Functions convention) with `Retry-After`. Once it has ended:
/// `303 See Other` to its result. With `Prefer: wait=N` the answer comes as soon as the
/// job ends, or after N seconds (capped by `max_wait_seconds`), with
/// `Preference-Applied`.
#[utoipa::path(
    get, path = "/v1/jobs/{id}",
    params(("id" = Uuid, Path), ("Prefer" = Option<String>, Header, description = "`wait=N`: answer when the job ends, within N seconds")),
    responses(
        (status = 200, description = "Pending", body = batchgate_protocol::JobStatus, headers(("Retry-After" = u64))),
        (status = 303, description = "Ended; `Location` is the result", body = batchgate_protocol::JobStatus),
        (status = 404, description = "No such job", body = batchgate_protocol::Problem),
        (status = 410, description = "Data deleted", body = batchgate_protocol::Problem),
    ),
    tag = "jobs"
)]
pub async fn status(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = access.caller()?;
    let waiter = super::live::Waiter::before_reading(&runtime, &headers, &id);
    let job = load(&runtime, caller, &id).await?;
    let Some(waiter) = waiter else {
        return monitor(&runtime, &job).await;
    };
    let wait = waiter.limit;
    let job = super::live::wait_with(&runtime, job, waiter).await?;
    let mut response = monitor(&runtime, &job).await?;
    super::live::preference_applied(&mut response, wait);
    Ok(response)
}

/// A job's status document with its result and output links as callers get them
/// (signed when results are delivered by signed URL).
pub(super) async fn presented_status(runtime: &ApiState, job: &Job) -> JobStatus {
    let mut status = job_status(job);
    if job.state == JobState::Succeeded {
        status.links.result = result_url(runtime, job).await;
        for output in &mut status.links.outputs {
            let key = JobKeys::output(job.id, job.attempt, &output.name);
            output.href =
                delivery_url(runtime, job, std::mem::take(&mut output.href), Some(key)).await;
        }
    }
    status
}

/// The status monitor's answer for a job: `303` to the result once it has ended, else
/// the pending status with `Retry-After`.
pub(super) async fn monitor(runtime: &ApiState, job: &Job) -> Result<Response, ApiError> {
    let body = Json(presented_status(runtime, job).await);
    if job.state.is_terminal() {
        let location = result_url(runtime, job).await;
        return Ok((
            StatusCode::SEE_OTHER,
            [(header::LOCATION, header_value(&location)), no_store()],
            body,
        )
            .into_response());
    }
    let status = StatusCode::from_u16(runtime.settings.pending_status).unwrap_or(StatusCode::OK);
    let retry_after = retry_after_seconds(runtime, job, None).await;
    let mut response = (
        status,
        [(header::RETRY_AFTER, retry_after.into()), no_store()],
        body,
    )
        .into_response();
    if status == StatusCode::ACCEPTED {
        let location = format!("/v1/jobs/{}", job.id);
        response
            .headers_mut()
            .insert(header::LOCATION, header_value(&location));
    }
    Ok(response)
}

/// Job result
///
/// Succeeded: `200` with the result outputs converted to JSON, keyed by output name (or
/// one raw output when `Accept` names its media type). Failed: `500` with the job's
/// error. Canceled: `409`. Not finished: `404`.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/result",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The result, an object keyed by output name"),
        (status = 404, description = "No such job, or not finished", body = batchgate_protocol::Problem),
        (status = 409, description = "Canceled", body = batchgate_protocol::Problem),
        (status = 410, description = "Data deleted", body = batchgate_protocol::Problem),
        (status = 500, description = "The job failed", body = batchgate_protocol::Problem),
    ),
    tag = "jobs"
)]
pub async fn result(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = load_for(&runtime, &access, &id, uri.path()).await?;
    match job.state {
        JobState::Queued | JobState::Running => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            Code::JobNotFinished,
            format!(
                "the job is {}; poll /v1/jobs/{} until it ends",
                job.state, job.id
            ),
        )),
        JobState::Canceled => Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::JobCanceled,
            "the job was canceled",
        )),
        JobState::Failed => {
            let error = job.error.clone();
            let detail = error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "the job failed".into());
            let mut problem =
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, Code::JobFailed, detail);
            problem.job_error = error;
            problem.attempts = Some(job.attempt);
            Err(problem)
        }
        JobState::Succeeded => {
            // `Accept` naming exactly one output's own media type selects that output.
            if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
                let wanted: Vec<&str> = accept
                    .split(',')
                    .map(|part| part.split(';').next().unwrap_or("").trim())
                    .collect();
                let wants_json = wanted
                    .iter()
                    .any(|w| *w == "application/json" || *w == "*/*" || w.ends_with("+json"));
                if !wants_json {
                    let matching: Vec<_> = job
                        .outputs
                        .iter()
                        .filter(|o| wanted.contains(&o.media_type.as_str()))
                        .collect();
                    if let [output] = matching.as_slice() {
                        return stream_blob(
                            &runtime,
                            &JobKeys::output(job.id, job.attempt, &output.name),
                            &output.media_type,
                            None,
                        )
                        .await;
                    }
                }
            }
            stream_blob(
                &runtime,
                &JobKeys::result(job.id, job.attempt),
                "application/json",
                None,
            )
            .await
        }
    }
}

/// One output file, raw
#[utoipa::path(
    get, path = "/v1/jobs/{id}/outputs/{name}",
    params(("id" = Uuid, Path), ("name" = String, Path)),
    responses((status = 200, description = "The file, with its media type"),
              (status = 404, description = "No such job or output", body = batchgate_protocol::Problem)),
    tag = "jobs"
)]
pub async fn output(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    OriginalUri(uri): OriginalUri,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = load_for(&runtime, &access, &id, uri.path()).await?;
    let Some(output) = job
        .outputs
        .iter()
        .find(|o| o.name == name)
        .filter(|_| job.state == JobState::Succeeded)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            Code::OutputNotFound,
            format!("the job has no output `{name}`"),
        ));
    };
    let extension = runtime
        .tools
        .get(&job.tool, job.tool_version)
        .and_then(|tool| {
            tool.outputs
                .iter()
                .find(|o| o.name == name)
                .map(|o| o.format.extension())
        })
        .unwrap_or("bin");
    let disposition = format!("attachment; filename=\"{name}.{extension}\"");
    stream_blob(
        &runtime,
        &JobKeys::output(job.id, job.attempt, &output.name),
        &output.media_type,
        Some(disposition),
    )
    .await
}

async fn stream_blob(
    runtime: &ApiState,
    key: &str,
    media_type: &str,
    disposition: Option<String>,
) -> Result<Response, ApiError> {
    let blob = runtime.blobs.open(key).await?;
    let mut response = Body::from_stream(ReaderStream::new(blob.reader)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header_value(media_type));
    headers.insert(header::CONTENT_LENGTH, blob.size.into());
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, no-store"),
    );
    if let Some(disposition) = disposition {
        headers.insert(header::CONTENT_DISPOSITION, header_value(&disposition));
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// `stdout` or `stderr`; both when absent.
    stream: Option<String>,
}

/// The program's stdout and stderr (capped)
///
/// Of the current or last attempt; while it runs, what it has written so far.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/logs",
    params(("id" = Uuid, Path), ("stream" = Option<String>, Query, description = "`stdout` or `stderr`")),
    responses((status = 200, description = "text/plain"), (status = 404, body = batchgate_protocol::Problem)),
    tag = "jobs"
)]
pub async fn logs(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let job = load(&runtime, access.caller()?, &id).await?;
    let streams: Vec<&str> = match query.stream.as_deref() {
        None => vec!["stdout", "stderr"],
        Some(stream @ ("stdout" | "stderr")) => vec![stream],
        Some(_) => {
            return Err(ApiError::bad_request(
                Code::InvalidQuery,
                "`stream` is `stdout` or `stderr`",
            )
            .with_fields([FieldFault::new("/query/stream", "must be stdout or stderr")]))
        }
    };
    let mut text = String::new();
    for stream in &streams {
        // While the job runs, its worker keeps a copy of each stream under the same key
        // (at most a second old), wherever that worker runs.
        let bytes = if job.attempt == 0 {
            Vec::new()
        } else {
            match runtime
                .blobs
                .read(&JobKeys::log(job.id, job.attempt, stream))
                .await
            {
                Ok(bytes) => bytes,
                Err(error) if error.is_not_found() => Vec::new(),
                Err(error) => return Err(error.into()),
            }
        };
        if streams.len() > 1 {
            text.push_str(&format!("==> {stream} <==\n"));
        }
        text.push_str(&String::from_utf8_lossy(&bytes));
        if streams.len() > 1 && !text.ends_with('\n') {
            text.push('\n');
        }
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            no_store(),
        ],
        text,
    )
        .into_response())
}

/// Cancel a job, or delete a finished job's data
///
/// Queued: canceled at once (`200`). Running: the program is stopped (TERM to its
/// process group, a grace period, KILL) and the job ends `canceled` (`202`). Finished:
/// its inputs, outputs and logs are deleted (`204`); the job answers `410` afterwards.
#[utoipa::path(
    delete, path = "/v1/jobs/{id}",
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "Canceled", body = batchgate_protocol::JobStatus),
              (status = 202, description = "Cancel under way", body = batchgate_protocol::JobStatus),
              (status = 204, description = "Data deleted"),
              (status = 404, body = batchgate_protocol::Problem)),
    tag = "jobs"
)]
pub async fn delete(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = load(&runtime, access.caller()?, &id).await?;
    let now = runtime.store.now();
    if job.state.is_terminal() {
        runtime
            .retention
            .purge(job.id)
            .await
            .map_err(ApiError::internal)?;
        tracing::info!(job_id = %job.id, "job data deleted");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let updated = runtime
        .store
        .request_cancel(job.id, now)
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    if updated.state == JobState::Running {
        runtime.running.cancel(job.id);
        tracing::info!(job_id = %job.id, "cancel requested");
        return Ok((
            StatusCode::ACCEPTED,
            [no_store()],
            Json(job_status(&updated)),
        )
            .into_response());
    }
    Ok((StatusCode::OK, [no_store()], Json(job_status(&updated))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    tool: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// The caller's job history, newest first
#[utoipa::path(
    get, path = "/v1/jobs", operation_id = "list_jobs",
    params(("status" = Option<String>, Query), ("tool" = Option<String>, Query),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
           ("limit" = Option<u32>, Query, description = "1 to 100, default 20")),
    responses((status = 200, body = JobPage), (status = 400, body = batchgate_protocol::Problem)),
    tag = "jobs"
)]
pub async fn list(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let caller = access.caller()?;
    let state = match params.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(JobState::parse(text).ok_or_else(|| {
            ApiError::bad_request(Code::InvalidQuery, format!("unknown status `{text}`"))
                .with_fields([FieldFault::new(
                    "/query/status",
                    "one of queued, running, succeeded, failed, canceled",
                )])
        })?),
    };
    let before = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(Uuid::parse_str(text).map_err(|_| {
            ApiError::bad_request(Code::InvalidQuery, "bad cursor").with_fields([FieldFault::new(
                "/query/cursor",
                "not a cursor from this API",
            )])
        })?),
    };
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(
            ApiError::bad_request(Code::InvalidQuery, "limit is 1 to 100")
                .with_fields([FieldFault::new("/query/limit", "must be between 1 and 100")]),
        );
    }
    let tool = params.tool.filter(|t| !t.is_empty());
    let query = ListQuery {
        owner: (!caller.admin).then(|| caller.owner.clone()),
        state,
        tool: tool.clone(),
        before,
        limit: limit + 1,
    };
    let mut jobs = runtime.store.list(&query).await?;
    let more = jobs.len() > limit as usize;
    jobs.truncate(limit as usize);
    let next_cursor = more
        .then(|| jobs.last().map(|job| job.id.to_string()))
        .flatten();
    let next = next_cursor.as_ref().map(|cursor| {
        let mut url = format!("/v1/jobs?limit={limit}&cursor={cursor}");
        if let Some(state) = state {
            url.push_str(&format!("&status={state}"));
        }
        if let Some(tool) = &tool {
            url.push_str(&format!("&tool={tool}"));
        }
        url
    });
    let page = JobPage {
        jobs: jobs.iter().map(job_status).collect(),
        next_cursor,
        next,
    };
    Ok(([no_store()], Json(page)).into_response())
}
