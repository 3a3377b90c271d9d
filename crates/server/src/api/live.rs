//! Answers that follow a job as it changes: the event stream (SSE), `Prefer: wait=N`, and
//! the long-running-operation resource that generic pollers read.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use batchgate_protocol::{JobEvent as WireEvent, Operation, OperationError};
use futures_util::stream::{self, Stream};
use tokio::time::Instant;

use super::auth::Access;
use super::jobs::{load, result_url};
use super::problem::Code;
use super::ApiState;
use super::{header_value, no_store, retry_after_seconds, ApiError, AppState};
use crate::jobs::{Job, JobEvent, JobState};
use crate::store::Subscription;

/// How often a waiter re-reads the store even without a wake-up (changes made by
/// another process sharing the database).
const RECHECK: Duration = Duration::from_secs(2);
/// Events read from the store at a time.
const BATCH: u32 = 100;

/// The `wait` of a `Prefer` header (RFC 7240), capped by the server's `max_wait_seconds`.
pub(super) fn preferred_wait(runtime: &ApiState, headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|preference| {
            let token = preference.split(';').next()?.trim();
            let (name, value) = token.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .next()?;
    Some(Duration::from_secs(
        seconds.min(runtime.settings.max_wait_seconds),
    ))
}

pub(super) fn preference_applied(response: &mut Response, wait: Duration) {
    response.headers_mut().insert(
        "preference-applied",
        header_value(&format!("wait={}", wait.as_secs())),
    );
}

/// A subscription to a job's changes made before the job is read, for a request that
/// asked to wait (`Prefer: wait`): the job as read is where the wait starts, and no change
/// after that read is missed.
pub(super) struct Waiter {
    pub limit: Duration,
    changes: Subscription,
}

impl Waiter {
    /// `None` without a `wait` preference, or when `id` names no job (the read fails).
    pub(super) fn before_reading(
        runtime: &ApiState,
        headers: &HeaderMap,
        id: &str,
    ) -> Option<Self> {
        let limit = preferred_wait(runtime, headers)?;
        let id = uuid::Uuid::parse_str(id).ok()?;
        Some(Waiter {
            limit,
            changes: runtime.store.changes().subscribe(id),
        })
    }
}

/// Waits until the job ends or `limit` passes, and returns it as last read. `job` was just
/// read; the job is read again after a change that could have ended it (not after its
/// claim or progress) and when the re-check timer fires, which it does at the deadline.
pub(super) async fn wait_for_end(
    runtime: &ApiState,
    job: Job,
    limit: Duration,
) -> Result<Job, ApiError> {
    if job.state.is_terminal() || limit.is_zero() {
        return Ok(job);
    }
    // Subscribed only now: read again, so a change right before this still counts.
    let changes = runtime.store.changes().subscribe(job.id);
    let job = reread(runtime, job.id).await?;
    wait_with(runtime, job, Waiter { limit, changes }).await
}

/// `wait_for_end` for a job read after `waiter` subscribed.
pub(super) async fn wait_with(
    runtime: &ApiState,
    job: Job,
    waiter: Waiter,
) -> Result<Job, ApiError> {
    let Waiter { limit, mut changes } = waiter;
    let deadline = Instant::now() + limit;
    let mut current = job;
    loop {
        let now = Instant::now();
        if current.state.is_terminal() || current.purged_at.is_some() || now >= deadline {
            return Ok(current);
        }
        // Ends at the deadline at the latest, so the answer then is read then.
        let pause = RECHECK.min(deadline - now);
        tokio::select! {
            may_have_ended = changes.changed() => {
                if !may_have_ended {
                    continue;
                }
            }
            _ = tokio::time::sleep(pause) => {}
            // Shutting down: answer now with the job as it is.
            _ = runtime.stopping.cancelled() => return Ok(current),
        }
        current = reread(runtime, current.id).await?;
    }
}

async fn reread(runtime: &ApiState, id: uuid::Uuid) -> Result<Job, ApiError> {
    runtime
        .store
        .get(id)
        .await?
        .ok_or_else(ApiError::job_not_found)
}

/// The URL clients use to reach this server: `public_url`, or the request's host.
pub(super) fn public_base(runtime: &ApiState, headers: &HeaderMap, uri: &Uri) -> String {
    if let Some(url) = &runtime.settings.public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|authority| authority.to_string()))
        .unwrap_or_else(|| runtime.settings.listen.to_string());
    format!("http://{host}")
}

/// Job events (Server-Sent Events)
///
/// One event per change of the job's state, attempt, progress or cancel flag, oldest
/// first, from its creation; the stream closes after the event of a terminal state. The
/// SSE `id` is the event's sequence number: a reconnect with `Last-Event-ID` resumes right
/// after it, without loss. `204` when the job has ended and nothing is left to send (so
/// an `EventSource` stops reconnecting).
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events",
    params(("id" = uuid::Uuid, Path), ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "`text/event-stream` of `JobEvent`s", body = WireEvent),
        (status = 204, description = "The job has ended and no event is after `Last-Event-ID`"),
        (status = 404, body = batchgate_protocol::Problem),
        (status = 410, body = batchgate_protocol::Problem),
    ),
    tag = "jobs"
)]
pub async fn events(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = load(&runtime, access.caller()?, &id).await?;
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    Code::InvalidLastEventId,
                    "Last-Event-ID must be the id of an event of this stream",
                )
            })?,
    };
    let changes = runtime.store.changes().subscribe(job.id);
    let first = runtime.store.events(job.id, after, BATCH).await?;
    if first.is_empty() && job.state.is_terminal() {
        return Ok((StatusCode::NO_CONTENT, [no_store()]).into_response());
    }
    let follow = Follow {
        runtime: runtime.clone(),
        job,
        after,
        pending: first.into(),
        changes,
        ended: false,
    };
    let mut response = Sse::new(follow.into_stream())
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies such as nginx must pass events on at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The state of one event stream.
struct Follow {
    runtime: Arc<ApiState>,
    job: Job,
    /// The last sequence number sent (or read into `pending`).
    after: u64,
    pending: std::collections::VecDeque<JobEvent>,
    changes: Subscription,
    ended: bool,
}

impl Follow {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut follow| async move {
            let event = follow.next().await?;
            Some((Ok(event), follow))
        })
    }

    /// The next event to send, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                self.after = event.seq;
                self.ended = event.state.is_terminal();
                return Some(self.to_sse(&event).await);
            }
            let waited = tokio::select! {
                _ = self.changes.changed() => true,
                _ = tokio::time::sleep(RECHECK) => false,
                // Shutting down: end the stream; the client resumes elsewhere with
                // Last-Event-ID.
                _ = self.runtime.stopping.cancelled() => return None,
            };
            match self
                .runtime
                .store
                .events(self.job.id, self.after, BATCH)
                .await
            {
                Ok(events) => self.pending.extend(events),
                Err(error) => {
                    tracing::warn!(job_id = %self.job.id, %error, "event stream: store unavailable");
                    continue;
                }
            }
            if self.pending.is_empty() && !waited {
                // Nothing new for a while: stop if the job's data was deleted meanwhile
                // (its events went with it).
                match self.runtime.store.get(self.job.id).await {
                    Ok(Some(job)) if job.purged_at.is_none() => {}
                    Ok(_) => return None,
                    Err(_) => {}
                }
            }
        }
    }

    async fn to_sse(&self, event: &JobEvent) -> Event {
        let location = match event.state.is_terminal() {
            true => Some(result_url(&self.runtime, &self.job).await),
            false => None,
        };
        // The final event carries the final document (outputs and their links).
        let job = match event.state.is_terminal() {
            true => match self.runtime.store.get(self.job.id).await {
                Ok(Some(job)) => Some(Box::new(
                    super::jobs::presented_status(&self.runtime, &job).await,
                )),
                _ => None,
            },
            false => None,
        };
        let body = WireEvent {
            job_id: event.job_id,
            kind: event.kind.as_str().to_owned(),
            at: event.at,
            status: event.state,
            attempt: event.attempt,
            progress: event.progress.clone(),
            error: event.error.clone(),
            cancel_requested: event.cancel_requested,
            location,
            job,
        };
        Event::default()
            .id(event.seq.to_string())
            .event(event.kind.as_str())
            .json_data(body)
            .unwrap_or_else(|_| Event::default().comment("unserializable event"))
    }
}

/// The job as a long-running operation
///
/// For generic pollers (the Azure SDK's `LROBasePolling`, which finds it through the
/// `Operation-Location` header of the submit answer): always `200` with a `status` of
/// `notStarted`, `running`, `succeeded`, `failed` or `canceled`, `Retry-After` while
/// pending, and `resourceLocation` (the result) once succeeded.
#[utoipa::path(
    get, path = "/v1/operations/{id}",
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Operation), (status = 404, body = batchgate_protocol::Problem),
              (status = 410, body = batchgate_protocol::Problem)),
    tag = "jobs"
)]
pub async fn operation(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let waiter = Waiter::before_reading(&runtime, &headers, &id);
    let job = load(&runtime, access.caller()?, &id).await?;
    let wait = waiter.as_ref().map(|waiter| waiter.limit);
    let job = match waiter {
        Some(waiter) => wait_with(&runtime, job, waiter).await?,
        None => job,
    };
    let base = public_base(&runtime, &headers, &uri);
    let result = result_url(&runtime, &job).await;
    let body = Operation {
        id: job.id,
        status: Operation::status_of(job.state).to_owned(),
        created_date_time: job.created_at,
        last_action_date_time: job.finished_at.or(job.started_at).unwrap_or(job.created_at),
        percent_complete: match job.state {
            JobState::Succeeded => Some(100.0),
            _ => job.progress.as_ref().and_then(|p| p.percent),
        },
        resource_location: (job.state == JobState::Succeeded).then(|| {
            // A store's presigned URL is absolute already.
            if result.starts_with('/') {
                format!("{base}{result}")
            } else {
                result
            }
        }),
        error: job
            .error
            .as_ref()
            .filter(|_| job.state == JobState::Failed)
            .map(|error| OperationError {
                code: error.code.clone(),
                message: error.message.clone(),
            })
            .or_else(|| {
                (job.state == JobState::Canceled).then(|| OperationError {
                    code: "job-canceled".into(),
                    message: "the job was canceled".into(),
                })
            }),
    };
    let mut response = (StatusCode::OK, [no_store()], Json(body)).into_response();
    if let Some(wait) = wait {
        preference_applied(&mut response, wait);
    }
    if !job.state.is_terminal() {
        let retry_after = retry_after_seconds(&runtime, &job, None).await;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after.into());
    }
    Ok(response)
}
