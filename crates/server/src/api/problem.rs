//! `ApiError`: every error answer is an RFC 9457 problem document with a stable `code`.
//! 5xx answers are opaque; their cause is logged once, here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use batchgate_protocol::{FieldError, JobError, Problem};

use crate::blobs::BlobError;
use crate::store::StoreError;
use crate::transforms::FieldFault;

/// Declares `Code` with the string each variant is sent as.
macro_rules! problem_codes {
    ($($variant:ident = $text:literal,)*) => {
        /// Every problem `code` the API answers with: one list, so that nothing misspells
        /// a code and the OpenAPI document can name them all.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }
        }
    };
}

problem_codes! {
    BadRequest = "bad-request",
    MethodNotAllowed = "method-not-allowed",
    NotAcceptable = "not-acceptable",
    AdminRequired = "admin-required",
    ApiKeyRequired = "api-key-required",
    ApiKeyRevoked = "api-key-revoked",
    BodyReadFailed = "body-read-failed",
    IdempotencyKeyReused = "idempotency-key-reused",
    Internal = "internal",
    InvalidApiKey = "invalid-api-key",
    InvalidIdempotencyKey = "invalid-idempotency-key",
    InvalidLastEventId = "invalid-last-event-id",
    InvalidQuery = "invalid-query",
    JobCanceled = "job-canceled",
    JobExpired = "job-expired",
    JobFailed = "job-failed",
    JobNotFinished = "job-not-finished",
    JobNotFound = "job-not-found",
    MalformedJson = "malformed-json",
    MalformedMultipart = "malformed-multipart",
    NotFound = "not-found",
    OutputNotFound = "output-not-found",
    PayloadTooLarge = "payload-too-large",
    QueueFull = "queue-full",
    QuotaExceeded = "quota-exceeded",
    RateLimited = "rate-limited",
    RequestTimeout = "request-timeout",
    SignedUrlExpired = "signed-url-expired",
    SignedUrlInvalid = "signed-url-invalid",
    StorageFull = "storage-full",
    StorageUnavailable = "storage-unavailable",
    StoreUnavailable = "store-unavailable",
    TierUnknown = "tier-unknown",
    TooManyConcurrentJobs = "too-many-concurrent-jobs",
    ToolNotAllowed = "tool-not-allowed",
    ToolNotFound = "tool-not-found",
    UnexpectedQuery = "unexpected-query",
    UnsupportedMediaType = "unsupported-media-type",
    ValidationFailed = "validation-failed",
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Boxed so that `Result<_, ApiError>` stays small on the happy path.
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorBody>);

#[derive(Debug)]
pub struct ApiErrorBody {
    pub status: StatusCode,
    pub code: Code,
    pub detail: Option<String>,
    pub errors: Vec<FieldError>,
    pub job_error: Option<JobError>,
    pub attempts: Option<u32>,
    pub retry_after: Option<u64>,
    /// Extra headers (`WWW-Authenticate`, `RateLimit`, …).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// The problem code of an error response, as a response extension.
#[derive(Debug, Clone, Copy)]
pub struct ProblemCode(pub Code);

impl ApiError {
    pub fn new(status: StatusCode, code: Code, detail: impl Into<String>) -> ApiError {
        ApiError(Box::new(ApiErrorBody {
            status,
            code,
            detail: Some(detail.into()),
            errors: Vec::new(),
            job_error: None,
            attempts: None,
            retry_after: None,
            headers: Vec::new(),
        }))
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn with_fields(mut self, faults: impl IntoIterator<Item = FieldFault>) -> ApiError {
        self.errors
            .extend(faults.into_iter().map(|fault| FieldError {
                path: fault.path,
                message: fault.message,
            }));
        self
    }

    pub fn bad_request(code: Code, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(fault: FieldFault) -> ApiError {
        let detail = format!("{}: {}", display_path(&fault.path), fault.message);
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::ValidationFailed,
            detail,
        )
        .with_fields([fault])
    }

    pub fn job_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, Code::JobNotFound, "no such job")
    }

    pub fn too_large(limit: u64, what: &str) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::PayloadTooLarge,
            format!("{what} is larger than the limit of {limit} bytes"),
        )
    }

    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(cause = %cause, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            "an internal error occurred",
        )
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "body"
    } else {
        path
    }
}

impl std::ops::Deref for ApiError {
    type Target = ApiErrorBody;
    fn deref(&self) -> &ApiErrorBody {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ApiErrorBody {
        &mut self.0
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Full(_) => ApiError::storage_full(error),
            StoreError::Unavailable(_) => {
                tracing::error!(%error, "job store unavailable");
                let mut problem = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Code::StoreUnavailable,
                    "the job store is unavailable; try again shortly",
                );
                problem.retry_after = Some(5);
                problem
            }
            StoreError::Corrupt(_) => ApiError::internal(error),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(error: BlobError) -> ApiError {
        match &error {
            BlobError::Io(io) => ApiError::from_io(io),
            BlobError::Unavailable(_) => {
                tracing::error!(%error, "blob storage unavailable");
                let mut problem = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Code::StorageUnavailable,
                    "the blob storage is unavailable; try again shortly",
                );
                problem.retry_after = Some(5);
                problem
            }
            BlobError::NotFound(_) => ApiError::internal(error),
        }
    }
}

impl From<crate::transforms::WriteError> for ApiError {
    fn from(error: crate::transforms::WriteError) -> ApiError {
        match error {
            crate::transforms::WriteError::Invalid(fault) => ApiError::unprocessable(fault),
            crate::transforms::WriteError::Io(error) => ApiError::from_io(&error),
        }
    }
}

impl ApiError {
    /// The server's own storage is full: `507` with `Retry-After`, never the client's
    /// fault.
    pub fn storage_full(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(cause = %cause, "storage full");
        let mut problem = ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            Code::StorageFull,
            "the server's storage is full; try again later",
        );
        problem.retry_after = Some(30);
        problem
    }

    /// A failure of the server's own files: `507` when the disk is full, else `500`.
    pub fn from_io(error: &std::io::Error) -> ApiError {
        if crate::datadir::is_full(error) {
            ApiError::storage_full(error)
        } else {
            ApiError::internal(error)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.title().to_owned();
        let body = *self.0;
        let problem = Problem {
            type_: format!("https://batchgate.dev/problems/{}", body.code),
            title,
            status: body.status.as_u16(),
            code: body.code.as_str().to_owned(),
            detail: body.detail,
            errors: body.errors,
            job_error: body.job_error,
            attempts: body.attempts,
        };
        let serialized = serde_json::to_vec(&problem).expect("a problem serializes");
        let mut response = (body.status, serialized).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = body.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        for (name, value) in body.headers {
            headers.insert(name, value);
        }
        // For the rejection metrics (counted where the caller's tier is known).
        response.extensions_mut().insert(ProblemCode(body.code));
        response
    }
}

/// Turns the error answers that the framework makes itself (a route's `405`, an extractor's
/// `400` with a plain-text reason, the decompression layer's empty `415`) into problem
/// documents, so that every error a client sees is `application/problem+json` with a
/// code. An answer that already is one passes untouched (`Allow` and other headers kept).
pub async fn problems_everywhere(response: Response) -> Response {
    let status = response.status();
    // The framework's own answers have no body or a plain-text one; a document a
    // handler made (a problem, `/readyz`'s checks) is left as it is.
    let framework_made = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|value| value.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !framework_made {
        return response;
    }
    let (parts, body) = response.into_parts();
    let reason = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .filter(|text| !text.is_empty());
    let code = match status {
        StatusCode::BAD_REQUEST => Code::BadRequest,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
        StatusCode::NOT_ACCEPTABLE => Code::NotAcceptable,
        StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY => Code::ValidationFailed,
        StatusCode::REQUEST_TIMEOUT => Code::RequestTimeout,
        status if status.is_server_error() => Code::Internal,
        _ => Code::BadRequest,
    };
    let detail = match (status, reason) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            "this resource does not answer this method; the Allow header lists those it \
             answers"
                .to_owned()
        }
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, None) => {
            "the request's Content-Encoding is not supported (gzip or identity)".to_owned()
        }
        // A server error's own text is not the client's business.
        (status, _) if status.is_server_error() => "an internal error occurred".to_owned(),
        (_, Some(reason)) => reason,
        (status, None) => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let mut problem = ApiError::new(status, code, detail);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem = problem.with_header(name.clone(), value.clone());
        }
    }
    problem.into_response()
}

#[cfg(test)]
mod tests {
    use super::Code;

    /// Codes are what clients branch on: distinct, and in the one style.
    #[test]
    fn codes_are_distinct_and_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                !text.starts_with('-') && text.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{text}"
            );
        }
        assert_eq!(Code::ValidationFailed.to_string(), "validation-failed");
    }
}
