//! Health, readiness, the OpenAPI document, the API reference page and the index.

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use batchgate_protocol::{Health, HealthCheck};
use utoipa::OpenApi;

use super::problem::Code;
use super::{ApiError, AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "batchgate", description = "Legacy command-line batch programs behind an asynchronous HTTP API (Asynchronous Request-Reply)."),
    paths(
        super::tools::list, super::tools::describe, super::submit::submit,
        super::jobs::status, super::jobs::result, super::jobs::output, super::jobs::logs,
        super::jobs::delete, super::jobs::list, super::live::events, super::live::operation, super::usage::usage, healthz, readyz
    ),
    tags((name = "jobs", description = "Submit jobs, poll them, fetch results"), (name = "tools", description = "The tool catalogue"), (name = "usage", description = "Costs and limits of the caller"))
)]
pub struct ApiDoc;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)), tag = "meta")]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        checks: Vec::new(),
    })
}

/// Readiness: the job store and the blob store are reachable (and, informative, whether
/// this machine's clock agrees with the store's).
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Health), (status = 503, body = Health)), tag = "meta")]
pub async fn readyz(State(runtime): State<AppState>) -> Response {
    let store = runtime.store.ping().await;
    let blobs = runtime.blobs.ping().await;
    let checks = vec![
        HealthCheck {
            name: "store".into(),
            ok: store.is_ok(),
            detail: store.err().map(|e| e.to_string()),
        },
        HealthCheck {
            name: "blobs".into(),
            ok: blobs.is_ok(),
            detail: blobs.err().map(|e| e.to_string()),
        },
    ];
    let ready = checks.iter().all(|check| check.ok);
    // Informative: leases and backoff follow the store's clock whatever this one says,
    // but an operator should know (and fix NTP).
    let mut checks = checks;
    if let Some(offset) = runtime.store.clock_offset() {
        let tolerance =
            chrono::Duration::from_std(crate::store::postgres::CLOCK_TOLERANCE).unwrap_or_default();
        checks.push(HealthCheck {
            name: "clock".into(),
            ok: offset.abs() <= tolerance,
            detail: Some(format!(
                "this machine's clock is {} ms from the database's (leases and backoff follow the database's)",
                -offset.num_milliseconds()
            )),
        });
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if ready { "ready" } else { "unavailable" }.into(),
        checks,
    };
    (status, Json(body)).into_response()
}

pub async fn openapi() -> Response {
    let document = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

/// A self-contained API reference page (no CDN): it renders /openapi.json in the browser.
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

/// The web UI and the JavaScript client: files of `web/`, embedded in the binary.
pub async fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("../../../../web/index.html"),
    )
}

pub async fn ui_script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/app.js"),
    )
}

pub async fn ui_style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../../../web/style.css"),
    )
}

pub async fn client_script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../../../web/client.js"),
    )
}

fn asset(media_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, media_type),
            // Revalidated each time, so an upgraded server never runs an old script.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        format!("no resource at {}", uri.path()),
    )
}
