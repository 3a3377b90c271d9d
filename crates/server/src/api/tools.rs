//! The tool catalogue.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use batchgate_protocol::{ToolCatalogue, ToolDescription, ToolSummary};

use super::auth::Access;
use super::problem::Code;
use super::{ApiError, AppState};

/// The tools this server offers (newest version of each)
#[utoipa::path(get, path = "/v1/tools", operation_id = "list_tools", responses((status = 200, body = ToolCatalogue)), tag = "tools")]
pub async fn list(State(runtime): State<AppState>) -> Json<ToolCatalogue> {
    let tools = runtime
        .tools
        .latest()
        .map(|tool| ToolSummary {
            name: tool.name.clone(),
            version: tool.version,
            versions: runtime.tools.versions(&tool.name),
            title: tool.title.clone(),
            description: tool.description.clone(),
            href: format!("/v1/tools/{}", tool.name),
        })
        .collect();
    Json(ToolCatalogue { tools })
}

/// One tool: inputs, parameter schema, outputs, limits and a complete example request
#[utoipa::path(
    get, path = "/v1/tools/{tool}",
    params(("tool" = String, Path, description = "`name` or `name@version`")),
    responses((status = 200, body = ToolDescription), (status = 404, body = batchgate_protocol::Problem)),
    tag = "tools"
)]
pub async fn describe(
    State(runtime): State<AppState>,
    Extension(access): Extension<Access>,
    Path(reference): Path<String>,
) -> Result<Json<ToolDescription>, ApiError> {
    let tool = runtime.tools.resolve(&reference).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            Code::ToolNotFound,
            format!("no tool `{reference}`; see /v1/tools"),
        )
    })?;
    let mut description = tool.describe(runtime.tools.versions(&tool.name));
    // The limits that apply to whoever asks: a tier may cap requests lower.
    if let Ok(caller) = access.caller() {
        description.limits.max_request_bytes =
            caller.max_request_bytes(tool.limits.max_request_bytes);
    }
    Ok(Json(description))
}
