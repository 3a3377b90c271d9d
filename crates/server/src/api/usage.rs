//! `GET /v1/usage` (the caller's costs and limits) and `/metrics` (Prometheus).

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use batchgate_protocol::{TierLimits, Usage, UsageNow, UsageWindow};

use super::auth::{auth_required, Access};
use super::problem::Code;
use super::{no_store, ApiError, AppState};

/// The caller's usage and limits
///
/// Totals of the caller's attempts per window (the tier's quota window, a day, 30 days),
/// the tier's limits and the caller's standing against them now.
#[utoipa::path(
    get, path = "/v1/usage",
    responses((status = 200, body = Usage), (status = 401, body = batchgate_protocol::Problem)),
    tag = "usage"
)]
pub async fn usage(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Response, ApiError> {
    let caller = access.caller()?;
    let now = runtime.store.now();
    let tier = caller.tier.clone();
    let window = tier
        .as_ref()
        .map_or(std::time::Duration::from_secs(3600), |tier| tier.window());
    let window_since = now - chrono::Duration::from_std(window).unwrap_or_default();
    let standing = runtime.store.standing(&caller.owner, window_since).await?;
    let mut windows = Vec::new();
    for (name, since) in [
        ("window", window_since),
        ("day", now - chrono::Duration::days(1)),
        ("month", now - chrono::Duration::days(30)),
    ] {
        let totals = runtime.store.usage(Some(&caller.owner), since).await?;
        windows.push(UsageWindow {
            name: name.to_owned(),
            since,
            jobs: totals.jobs,
            attempts: totals.attempts,
            wall_seconds: totals.wall_ms as f64 / 1000.0,
            cpu_seconds: totals.cpu_ms as f64 / 1000.0,
            peak_memory_bytes: totals.max_rss_bytes,
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
        });
    }
    let limits = tier.as_ref().map(|tier| TierLimits {
        requests_per_minute: tier.requests_per_minute,
        jobs_per_window: tier.jobs_per_window,
        window_seconds: tier.window_seconds,
        concurrent_jobs: tier.concurrent_jobs,
        max_request_bytes: tier.max_request_bytes,
        retention_seconds: tier.retention_seconds,
        tools: tier.tools.clone(),
        priority: tier.priority,
    });
    let body = Usage {
        key: (!caller.owner.is_empty()).then(|| caller.owner.clone()),
        tier: (!caller.tier_name.is_empty()).then(|| caller.tier_name.clone()),
        now: UsageNow {
            jobs_in_window: standing.jobs_since,
            jobs_remaining: tier
                .as_ref()
                .and_then(|tier| tier.jobs_per_window)
                .map(|limit| limit.saturating_sub(standing.jobs_since)),
            concurrent_jobs: standing.active,
        },
        limits,
        windows,
    };
    Ok(([no_store()], Json(body)).into_response())
}

/// Prometheus metrics. With authentication on, an admin key is required.
pub async fn metrics(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Response, ApiError> {
    let caller = access.caller()?;
    if !caller.admin && auth_required(&runtime).await? {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Code::AdminRequired,
            "metrics need an admin key",
        ));
    }
    for (tool, state, count) in runtime.store.state_counts().await? {
        crate::telemetry::job_gauge(&tool, state.as_str(), count);
    }
    let text = crate::telemetry::handle().render();
    Ok((
        [
            (
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            ),
            no_store(),
        ],
        text,
    )
        .into_response())
}
