//! Authentication and the request-rate limit, as one middleware in front of `/v1` and
//! `/metrics`. It puts an [`Access`] in the request's extensions: the caller of a key (or
//! the anonymous caller of an open server), or a signed URL to be checked by the handler
//! against the job it names.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeZone, Utc};

use super::problem::Code;
use super::problem::ProblemCode;
use super::ApiState;
use super::{header_value, ApiError, AppState};
use crate::auth::signing::Signature;
use crate::auth::{keys, Caller, Tier};
use crate::config::AuthMode;

/// How a request may reach job data.
#[derive(Debug, Clone)]
pub enum Access {
    Caller(Caller),
    /// A signed URL: no key; the handler checks the signature against the job.
    Signed(Signature),
}

impl Access {
    /// The caller of a key (or the anonymous caller). A signed URL opens only the result
    /// and outputs it was made for; anywhere else it is refused (403).
    pub fn caller(&self) -> Result<&Caller, ApiError> {
        match self {
            Access::Caller(caller) => Ok(caller),
            Access::Signed(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::SignedUrlInvalid,
                "a signed URL opens only the result and outputs it was made for",
            )),
        }
    }
}

/// The length of a request-rate window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

pub async fn authenticate(
    State(runtime): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    // The JavaScript client is public like the web UI that loads it.
    if !(path.starts_with("/v1/") || path == "/metrics") || path == "/v1/client.js" {
        return next.run(request).await;
    }
    if let Some(signature) = signed_query(request.method(), path, request.uri().query()) {
        request.extensions_mut().insert(Access::Signed(signature));
        return next.run(request).await;
    }
    let caller = match identify(&runtime, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => {
            crate::telemetry::rejected(error.code.as_str(), "");
            return error.into_response();
        }
    };
    let mut quota_headers = Vec::new();
    if let Some(tier) = caller.tier.clone() {
        let policy = policy(&tier);
        if !policy.is_empty() {
            quota_headers.push((
                header::HeaderName::from_static("ratelimit-policy"),
                header_value(&policy),
            ));
        }
        if let Some(limit) = tier.requests_per_minute {
            let now = runtime.store.now();
            let window_start = window_start(now);
            let count = match runtime
                .store
                .count_request(&caller.owner, window_start)
                .await
            {
                Ok(count) => count,
                Err(error) => return ApiError::from(error).into_response(),
            };
            let reset = seconds_until(window_start + RATE_WINDOW, now);
            let remaining = limit.saturating_sub(count);
            quota_headers.push((
                header::HeaderName::from_static("ratelimit"),
                header_value(&format!("\"requests\";r={remaining};t={reset}")),
            ));
            if count > limit {
                crate::telemetry::rejected(Code::RateLimited.as_str(), caller.tier_label());
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    Code::RateLimited,
                    format!(
                        "tier `{}` allows {limit} requests per minute; try again in {reset} s",
                        caller.tier_name
                    ),
                )
                .with_retry_after(reset);
                error.headers.extend(quota_headers);
                return error.into_response();
            }
        }
    }
    let tier = caller.tier_label().to_owned();
    request.extensions_mut().insert(Access::Caller(caller));
    let mut response = next.run(request).await;
    if let Some(ProblemCode(code)) = response.extensions().get::<ProblemCode>() {
        crate::telemetry::rejected(code.as_str(), &tier);
    }
    // A refusal describes only the limit it is about (the handler's own item); any other
    // answer lists the handler's items (the jobs left after a submit) and the requests left.
    let refused = response.status() == StatusCode::TOO_MANY_REQUESTS;
    for (name, value) in quota_headers {
        let combined = match response.headers().get(&name) {
            None => Some(value),
            Some(_) if refused || name != "ratelimit" => None,
            Some(own) => {
                let mut items = own.as_bytes().to_vec();
                items.extend_from_slice(b", ");
                items.extend_from_slice(value.as_bytes());
                HeaderValue::from_bytes(&items).ok()
            }
        };
        if let Some(value) = combined {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the tier's quotas.
fn policy(tier: &Tier) -> String {
    let mut policies = Vec::new();
    if let Some(limit) = tier.requests_per_minute {
        policies.push(format!(
            "\"requests\";q={limit};w={}",
            RATE_WINDOW.as_secs()
        ));
    }
    if let Some(limit) = tier.jobs_per_window {
        policies.push(format!("\"jobs\";q={limit};w={}", tier.window_seconds));
    }
    if let Some(limit) = tier.concurrent_jobs {
        policies.push(format!("\"concurrent\";q={limit}"));
    }
    policies.join(", ")
}

fn window_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let width = RATE_WINDOW.as_millis() as i64;
    let start = now.timestamp_millis() / width * width;
    Utc.timestamp_millis_opt(start).single().unwrap_or(now)
}

/// Whole seconds from `now` until `then`, at least 1.
pub fn seconds_until(then: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = (then - now).num_milliseconds().max(0) as u64;
    millis.div_ceil(1000).max(1)
}

/// A `GET` of a result or output carrying `expires`, `kid` and `sig`.
fn signed_query(method: &Method, path: &str, query: Option<&str>) -> Option<Signature> {
    if method != Method::GET || !path.starts_with("/v1/jobs/") {
        return None;
    }
    let query = query?;
    let (mut expires, mut kid, mut sig) = (None, None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("expires", value)) => expires = Some(value),
            Some(("kid", value)) => kid = Some(value),
            Some(("sig", value)) => sig = Some(value),
            _ => {}
        }
    }
    // A URL with `sig` is a signed URL even when the rest is damaged: it must be refused
    // as such (403), never fall back to key authentication.
    sig?;
    Some(Signature {
        expires: expires.and_then(|v| v.parse().ok()).unwrap_or(0),
        kid: kid.and_then(|v| v.parse().ok()).unwrap_or(0),
        sig: sig.unwrap_or_default().to_owned(),
    })
}

fn unauthorized(code: Code, detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"batchgate\""),
    )
}

/// The key presented with `Authorization: Bearer` or `X-API-Key`.
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or_default();
        let key = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                unauthorized(
                    Code::InvalidApiKey,
                    "the Authorization header must be `Bearer <key>`",
                )
            })?;
        return Ok(Some(key));
    }
    match headers.get("x-api-key") {
        Some(value) => Ok(Some(value.to_str().unwrap_or_default().trim())),
        None => Ok(None),
    }
}

async fn identify(runtime: &ApiState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(presented) = presented_key(headers)? else {
        if auth_required(runtime).await? {
            return Err(unauthorized(
                Code::ApiKeyRequired,
                "this server requires an API key: `Authorization: Bearer <key>`",
            ));
        }
        return Ok(Caller::anonymous(
            &runtime.tiers,
            runtime.settings.anonymous_tier.as_deref(),
        ));
    };
    let invalid = || unauthorized(Code::InvalidApiKey, "the API key is not valid");
    let id = keys::parse_id(presented).ok_or_else(invalid)?;
    let record = runtime.store.find_key(id).await?.ok_or_else(invalid)?;
    if !keys::matches(&record, presented) {
        return Err(invalid());
    }
    if record.revoked_at.is_some() {
        return Err(unauthorized(Code::ApiKeyRevoked, "the API key was revoked"));
    }
    let tier = runtime.tiers.get(&record.tier).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            Code::TierUnknown,
            format!(
                "the key's tier `{}` is not configured on this server",
                record.tier
            ),
        )
    })?;
    Ok(Caller {
        owner: record.id,
        tier_name: record.tier,
        tier: Some(tier),
        admin: record.admin,
    })
}

/// Is a key needed? Always with `auth = "required"`; with `auto`, once a key exists
/// (the store remembers that, so this costs no query per request).
pub async fn auth_required(runtime: &ApiState) -> Result<bool, ApiError> {
    Ok(runtime.settings.auth == AuthMode::Required || runtime.store.has_keys().await?)
}
