//! The HTTP API (v1): the only module that knows HTTP.

mod auth;
mod jobs;
mod live;
mod meta;
mod problem;
mod serve;
mod submit;
mod tools;
mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use batchgate_protocol::{JobLinks, JobStatus, OutputInfo};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::trace::TraceLayer;

use crate::auth::signing::Signer;
use crate::auth::Tiers;
use crate::blobs::BlobStore;
use crate::config::Settings;
use crate::jobs::{Job, JobState};
use crate::retention::Retention;
use crate::running::RunningJobs;
use crate::store::JobStore;
use crate::tools::ToolRegistry;
pub use problem::ApiError;
pub use serve::serve;

/// What the handlers work with.
pub struct ApiState {
    pub settings: Arc<Settings>,
    pub tools: Arc<ToolRegistry>,
    pub tiers: Tiers,
    pub signer: Signer,
    pub store: Arc<dyn JobStore>,
    pub blobs: Arc<dyn BlobStore>,
    /// `DELETE` of a finished job.
    pub retention: Retention,
    /// Request bodies being received, before the job is committed.
    pub staging_root: PathBuf,
    /// Attempts running in this process (with an embedded worker pool): `DELETE` stops
    /// their programs at once.
    pub running: Arc<RunningJobs>,
    /// Cancelled when the server begins to shut down: long answers (event streams,
    /// `Prefer: wait`) end early so that the drain does not wait for them.
    pub stopping: CancellationToken,
}

impl ApiState {
    /// Takes `data_dir/staging` for this process: whatever a previous one left there
    /// (uploads never acknowledged) is removed.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        settings: Arc<Settings>,
        tools: Arc<ToolRegistry>,
        tiers: Tiers,
        signer: Signer,
        store: Arc<dyn JobStore>,
        blobs: Arc<dyn BlobStore>,
        running: Arc<RunningJobs>,
        stopping: CancellationToken,
    ) -> std::io::Result<ApiState> {
        let staging_root = std::path::absolute(&settings.data_dir)?.join("staging");
        let _ = std::fs::remove_dir_all(&staging_root);
        crate::datadir::create_with_mode(&staging_root, 0o700)?;
        Ok(ApiState {
            retention: Retention::new(store.clone(), blobs.clone()),
            settings,
            tools,
            tiers,
            signer,
            store,
            blobs,
            staging_root,
            running,
            stopping,
        })
    }
}

type AppState = Arc<ApiState>;

pub fn router(runtime: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/tools", get(tools::list))
        .route("/v1/tools/{tool}", get(tools::describe))
        .route("/v1/tools/{tool}/jobs", axum::routing::post(submit::submit))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::status).delete(jobs::delete))
        .route("/v1/jobs/{id}/result", get(jobs::result))
        .route("/v1/jobs/{id}/outputs/{name}", get(jobs::output))
        .route("/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/v1/jobs/{id}/events", get(live::events))
        .route("/v1/operations/{id}", get(live::operation))
        .route("/v1/usage", get(usage::usage))
        .route("/metrics", get(usage::metrics))
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/openapi.json", get(meta::openapi))
        .route("/docs", get(meta::docs))
        .route("/", get(meta::index))
        .route("/ui/app.js", get(meta::ui_script))
        .route("/ui/style.css", get(meta::ui_style))
        .route("/v1/client.js", get(meta::client_script))
        .fallback(meta::not_found)
        // Bodies are streamed and capped by the submit handler itself (per tool, and
        // after decompression), so axum's buffered-body default does not apply.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            runtime.clone(),
            auth::authenticate,
        ))
        // Spans name the path only: a query may carry a signed URL's signature, which must
        // never reach a log.
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path().escape_debug(),
                )
            }),
        )
        // Every error answer, the framework's own included, is a problem.
        .layer(axum::middleware::map_response(problem::problems_everywhere))
        // Outermost: a preflight never reaches authentication, and every answer (errors
        // too, so that a page can read the problem) carries the CORS headers.
        .layer(cors(&runtime.settings.cors_origins))
        .with_state(runtime)
}

/// CORS for the origins the settings allow (none by default: no header is added): the
/// methods and request headers the API uses, and the response headers a client reads.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|origin| origin.parse().ok()))
    };
    let names = |names: &[&'static str]| {
        names
            .iter()
            .map(|name| header::HeaderName::from_static(name))
            .collect::<Vec<_>>()
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::DELETE,
        ])
        .allow_headers(names(&[
            "authorization",
            "content-type",
            "content-encoding",
            "idempotency-key",
            "prefer",
            "last-event-id",
            "x-api-key",
        ]))
        .expose_headers(names(&[
            "location",
            "retry-after",
            "operation-location",
            "ratelimit",
            "ratelimit-policy",
            "preference-applied",
            "content-disposition",
        ]))
        .max_age(Duration::from_secs(3600))
}

/// The status body of a job, with links.
fn job_status(job: &Job) -> JobStatus {
    let base = format!("/v1/jobs/{}", job.id);
    JobStatus {
        id: job.id,
        tool: job.tool.clone(),
        tool_version: job.tool_version,
        status: job.state,
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        expires_at: job.expires_at,
        attempt: job.attempt,
        progress: job.progress.clone(),
        error: job
            .error
            .clone()
            .filter(|_| job.state != JobState::Succeeded),
        cancel_requested: job.cancel_requested && !job.state.is_terminal(),
        links: JobLinks {
            result: format!("{base}/result"),
            outputs: job
                .outputs
                .iter()
                .map(|output| OutputInfo {
                    name: output.name.clone(),
                    media_type: output.media_type.clone(),
                    size: output.size,
                    href: format!("{base}/outputs/{}", output.name),
                })
                .collect(),
            logs: format!("{base}/logs"),
            events: format!("{base}/events"),
            operation: format!("/v1/operations/{}", job.id),
            cancel: base.clone(),
            self_: base,
        },
    }
}

/// Seconds until the job is worth polling again (see `jobs::retry_after`).
/// `queued_ahead`: the jobs ahead of a queued `job`, if the caller knows them (else counted).
async fn retry_after_seconds(runtime: &ApiState, job: &Job, queued_ahead: Option<u64>) -> u64 {
    let typical = match runtime
        .store
        .recent_run_time(&job.tool, job.tool_version)
        .await
    {
        Ok(Some(measured)) => measured,
        _ => runtime
            .tools
            .get(&job.tool, job.tool_version)
            .map(|tool| tool.expected_run)
            .unwrap_or(Duration::from_secs(1)),
    };
    let queued_ahead = match (job.state, queued_ahead) {
        (JobState::Queued, Some(known)) => known,
        (JobState::Queued, None) => runtime.store.queued_ahead(job).await.unwrap_or(0),
        _ => 0,
    };
    let running_for = job
        .started_at
        .map(|started| (Utc::now() - started).to_std().unwrap_or_default())
        .unwrap_or_default();
    crate::jobs::retry_after(
        job.state,
        typical,
        queued_ahead,
        runtime.settings.worker_count(),
        running_for,
        Duration::from_secs(runtime.settings.retry_after_max_seconds),
    )
    .as_secs()
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn no_store() -> (header::HeaderName, HeaderValue) {
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}
