//! A typed client of the batchgate HTTP API (v1).
//!
//! ```no_run
//! # async fn demo() -> Result<(), batchgate_client::Error> {
//! use batchgate_client::{Client, Submission};
//! let client = Client::new("http://127.0.0.1:8080")?.with_key(std::env::var("BATCHGATE_KEY").ok());
//! let example = client.tool("analyzer").await?.example;
//! let done = client
//!     .submit_and_wait("analyzer", &Submission::json(example), |status| {
//!         eprintln!("{} {:?}", status.status, status.progress);
//!     })
//!     .await?;
//! println!("{}", done.result);
//! # Ok(()) }
//! ```
//!
//! Waiting honours `Retry-After` (never polling sooner than the server asks) and asks the
//! server to hold each poll until the job ends (`Prefer: wait`), so the end of a job is
//! seen at once; the `303` of the status monitor is followed to the result. Errors are
//! typed: a refusal carries the server's problem document, a failed job its error.

pub mod sse;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use batchgate_protocol::{
    JobEvent, JobPage, JobState, JobStatus, OutputInfo, Problem, Progress, SubmitRequest,
    ToolCatalogue, ToolDescription, Usage,
};
use futures_util::{Stream, StreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::redirect::Policy;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a problem document (invalid input, no key, quota, …).
    #[error("{status} {}: {}", problem.code, problem.detail.as_deref().unwrap_or(&problem.title))]
    Api {
        status: u16,
        problem: Box<Problem>,
        /// Seconds to wait before trying again (`429`, `503`).
        retry_after: Option<u64>,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from {url}: {message}")]
    Unexpected { url: String, message: String },
    /// The job ended `failed`; its status carries the error.
    #[error("job {} failed: {}", .0.id, .0.error.as_ref().map_or("no reason given", |e| e.message.as_str()))]
    JobFailed(Box<JobStatus>),
    #[error("job {} was canceled", .0.id)]
    JobCanceled(Box<JobStatus>),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid client setting: {0}")]
    Config(String),
}

impl Error {
    /// True when the same request may succeed later (unreachable, `429`, `502`–`504`).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// The problem code of an API refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { problem, .. } => Some(&problem.code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to submit: a JSON request, or files uploaded as multipart parts.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub inputs: Map<String, Value>,
    /// `(input name, file)`, uploaded as they are (streamed).
    pub files: Vec<(String, PathBuf)>,
    pub parameters: Map<String, Value>,
    pub idempotency_key: Option<String>,
}

impl Submission {
    pub fn json(request: SubmitRequest) -> Submission {
        Submission {
            inputs: request.inputs,
            parameters: request.parameters,
            ..Submission::default()
        }
    }
}

/// One answer of the status monitor.
#[derive(Debug, Clone)]
pub struct Poll {
    pub status: JobStatus,
    /// While pending: when to ask again.
    pub retry_after: Option<Duration>,
    /// Once ended: where the result is (the `303`'s `Location`).
    pub location: Option<String>,
    /// The server held the request (`Preference-Applied: wait`).
    pub waited: bool,
}

/// A job that succeeded, with its result.
#[derive(Debug, Clone)]
pub struct Completed {
    pub status: JobStatus,
    /// The result outputs converted to JSON, keyed by output name.
    pub result: Value,
}

/// What `DELETE /v1/jobs/{id}` did.
#[derive(Debug, Clone)]
pub enum Cancel {
    /// Queued: canceled at once.
    Canceled(Box<JobStatus>),
    /// Running: the program is being stopped.
    Stopping(Box<JobStatus>),
    /// Finished: its data was deleted.
    Deleted,
}

/// Filters of the job history.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobState>,
    pub tool: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    max_poll: Duration,
    retries: u32,
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Client> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!(
                "the server URL `{base_url}` must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("batchgate-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::Config(error.to_string()))?;
        Ok(Client {
            http,
            base,
            key: None,
            max_poll: Duration::from_secs(30),
            retries: 5,
        })
    }

    /// The API key sent as `Authorization: Bearer`.
    pub fn with_key(mut self, key: Option<String>) -> Client {
        self.key = key.filter(|key| !key.is_empty());
        self
    }

    /// The longest pause between two polls (and the longest `Prefer: wait`).
    pub fn with_max_poll_interval(mut self, interval: Duration) -> Client {
        self.max_poll = interval.max(Duration::from_millis(10));
        self
    }

    /// How many times a poll is retried after a transient failure while waiting.
    pub fn with_retries(mut self, retries: u32) -> Client {
        self.retries = retries;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// An absolute URL for a path (or an absolute URL) the server gave.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let url = self.url(path);
        // The key goes to this server only, never to a signed URL elsewhere.
        let ours = url
            .strip_prefix(&self.base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let builder = self.http.request(method, url);
        match &self.key {
            Some(key) if ours => builder.bearer_auth(key),
            _ => builder,
        }
    }

    async fn send(&self, builder: RequestBuilder) -> Result<Response> {
        let request = builder
            .build()
            .map_err(|error| Error::Config(error.to_string()))?;
        let url = strip_query(request.url().as_str());
        self.http
            .execute(request)
            .await
            .map_err(|source| Error::Unreachable { url, source })
    }

    /// Sends and decodes a `2xx` JSON answer; anything else becomes an error.
    async fn json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T> {
        let response = self.send(builder).await?;
        let response = refuse(response).await?;
        decode(response).await
    }

    pub async fn tools(&self) -> Result<ToolCatalogue> {
        self.json(self.request(Method::GET, "/v1/tools")).await
    }

    pub async fn tool(&self, name: &str) -> Result<ToolDescription> {
        self.json(self.request(Method::GET, &format!("/v1/tools/{}", segment(name))))
            .await
    }

    pub async fn usage(&self) -> Result<Usage> {
        self.json(self.request(Method::GET, "/v1/usage")).await
    }

    /// Submits a job and returns its status (`202`). `tool` is `name` or `name@version`.
    pub async fn submit(&self, tool: &str, submission: &Submission) -> Result<Poll> {
        let path = format!("/v1/tools/{}/jobs", segment(tool));
        let mut builder = self.request(Method::POST, &path);
        if let Some(key) = &submission.idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        builder = if submission.files.is_empty() {
            builder.json(&SubmitRequest {
                inputs: submission.inputs.clone(),
                parameters: submission.parameters.clone(),
            })
        } else {
            builder.multipart(multipart(submission).await?)
        };
        let response = refuse(self.send(builder).await?).await?;
        poll_of(response).await
    }

    /// One poll of the status monitor; `wait` asks the server to answer as soon as the
    /// job ends, within that time.
    pub async fn poll(&self, id: &str, wait: Option<Duration>) -> Result<Poll> {
        let mut builder = self.request(Method::GET, &format!("/v1/jobs/{}", segment(id)));
        if let Some(wait) = wait.filter(|wait| wait.as_secs() > 0) {
            builder = builder.header("prefer", format!("wait={}", wait.as_secs()));
        }
        let response = refuse(self.send(builder).await?).await?;
        poll_of(response).await
    }

    pub async fn status(&self, id: &str) -> Result<JobStatus> {
        Ok(self.poll(id, None).await?.status)
    }

    /// Follows a job until it ends, calling `on_poll` with every status seen. A job that
    /// failed or was canceled is an error (`JobFailed`, `JobCanceled`) carrying its
    /// status. Transient failures (unreachable, `503`) are retried with backoff.
    pub async fn wait(&self, id: &str, mut on_poll: impl FnMut(&JobStatus)) -> Result<Poll> {
        let mut hint = Duration::from_secs(1);
        let mut failures = 0;
        loop {
            let poll = match self.poll(id, Some(hint.min(self.max_poll))).await {
                Ok(poll) => {
                    failures = 0;
                    poll
                }
                Err(error) if error.is_transient() && failures < self.retries => {
                    failures += 1;
                    let backoff = match &error {
                        Error::Api {
                            retry_after: Some(seconds),
                            ..
                        } => Duration::from_secs(*seconds),
                        _ => Duration::from_millis(250 << failures.min(6)),
                    };
                    tokio::time::sleep(backoff.min(self.max_poll)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            on_poll(&poll.status);
            let waited = poll.waited;
            let retry_after = poll.retry_after;
            if let Some(outcome) = finished(poll) {
                return outcome;
            }
            let retry_after = retry_after.unwrap_or(Duration::from_secs(1));
            hint = retry_after;
            if !waited {
                // The server did not hold the request: wait as long as it asked.
                tokio::time::sleep(retry_after.min(self.max_poll)).await;
            }
        }
    }

    /// Submits, waits (see `wait`) and fetches the result.
    pub async fn submit_and_wait(
        &self,
        tool: &str,
        submission: &Submission,
        mut on_poll: impl FnMut(&JobStatus),
    ) -> Result<Completed> {
        let submitted = self.submit(tool, submission).await?;
        on_poll(&submitted.status);
        let id = submitted.status.id.to_string();
        let done = self.wait(&id, on_poll).await?;
        let location = done
            .location
            .clone()
            .unwrap_or_else(|| done.status.links.result.clone());
        let result = self.json(self.request(Method::GET, &location)).await?;
        Ok(Completed {
            status: done.status,
            result,
        })
    }

    /// A succeeded job's result (the outputs converted to JSON, keyed by name).
    pub async fn result(&self, id: &str) -> Result<Value> {
        self.json(self.request(Method::GET, &format!("/v1/jobs/{}/result", segment(id))))
            .await
    }

    /// Writes output `name` of a succeeded job to `path`, streamed; returns its size.
    pub async fn download(&self, id: &str, name: &str, path: &Path) -> Result<u64> {
        let status = self.status(id).await?;
        let href = status
            .links
            .outputs
            .iter()
            .find(|output| output.name == name)
            .map(|output| output.href.clone())
            .unwrap_or_else(|| format!("/v1/jobs/{}/outputs/{}", segment(id), segment(name)));
        let (_, size) = self.fetch_to(&href, |_| path.to_owned()).await?;
        Ok(size)
    }

    /// Writes an output (from a job's `links.outputs`) into `dir` under the file name the
    /// server gives it (`insights.csv`); returns the path and the size.
    pub async fn save_output(&self, output: &OutputInfo, dir: &Path) -> Result<(PathBuf, u64)> {
        self.fetch_to(&output.href, |response| {
            dir.join(attachment_name(response.headers()).unwrap_or_else(|| output.name.clone()))
        })
        .await
    }

    /// Streams a GET answer into a file: written beside it and renamed, so a broken
    /// download leaves no half file.
    async fn fetch_to(
        &self,
        href: &str,
        path_for: impl FnOnce(&Response) -> PathBuf,
    ) -> Result<(PathBuf, u64)> {
        let response = refuse(self.send(self.request(Method::GET, href)).await?).await?;
        let url = strip_query(response.url().as_str());
        let path = path_for(&response);
        let file_error = |source| Error::File {
            path: path.clone(),
            source,
        };
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(file_error)?;
        let mut written = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| Error::Unreachable {
                url: url.clone(),
                source,
            })?;
            file.write_all(&chunk).await.map_err(file_error)?;
            written += chunk.len() as u64;
        }
        file.sync_all().await.map_err(file_error)?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(file_error)?;
        Ok((path, written))
    }

    /// The program's output so far (`stream`: `stdout`, `stderr`, or both).
    pub async fn logs(&self, id: &str, stream: Option<&str>) -> Result<String> {
        let mut builder = self.request(Method::GET, &format!("/v1/jobs/{}/logs", segment(id)));
        if let Some(stream) = stream {
            builder = builder.query(&[("stream", stream)]);
        }
        let response = refuse(self.send(builder).await?).await?;
        let url = strip_query(response.url().as_str());
        response
            .text()
            .await
            .map_err(|source| Error::Unreachable { url, source })
    }

    /// Cancels a queued or running job, or deletes a finished job's data.
    pub async fn cancel(&self, id: &str) -> Result<Cancel> {
        let builder = self.request(Method::DELETE, &format!("/v1/jobs/{}", segment(id)));
        let response = refuse(self.send(builder).await?).await?;
        match response.status() {
            StatusCode::NO_CONTENT => Ok(Cancel::Deleted),
            StatusCode::ACCEPTED => Ok(Cancel::Stopping(Box::new(decode(response).await?))),
            _ => Ok(Cancel::Canceled(Box::new(decode(response).await?))),
        }
    }

    /// A page of the caller's job history, newest first.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<JobPage> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(status) = filter.status {
            query.push(("status", status.to_string()));
        }
        if let Some(tool) = &filter.tool {
            query.push(("tool", tool.clone()));
        }
        if let Some(cursor) = &filter.cursor {
            query.push(("cursor", cursor.clone()));
        }
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        self.json(self.request(Method::GET, "/v1/jobs").query(&query))
            .await
    }

    /// The job's events from after `last_event_id` (all of them when `None`), as `(id,
    /// event)`; the stream ends after the event of a terminal state. Empty when the job
    /// has ended and nothing is after `last_event_id`.
    pub async fn events(
        &self,
        id: &str,
        last_event_id: Option<u64>,
    ) -> Result<impl Stream<Item = Result<(u64, JobEvent)>>> {
        let mut builder = self
            .request(Method::GET, &format!("/v1/jobs/{}/events", segment(id)))
            .header(header::ACCEPT, "text/event-stream");
        if let Some(last) = last_event_id {
            builder = builder.header("last-event-id", last.to_string());
        }
        let response = refuse(self.send(builder).await?).await?;
        let url = strip_query(response.url().as_str());
        let body = response.bytes_stream().boxed();
        let state = (
            body,
            sse::Parser::default(),
            Vec::<sse::RawEvent>::new(),
            url,
        );
        Ok(futures_util::stream::unfold(
            state,
            |(mut body, mut parser, mut ready, url)| async move {
                loop {
                    if !ready.is_empty() {
                        let raw = ready.remove(0);
                        let item = decode_event(&raw, &url);
                        return Some((item, (body, parser, ready, url)));
                    }
                    match body.next().await? {
                        Ok(bytes) => ready = parser.push(&bytes),
                        Err(source) => {
                            let error = Error::Unreachable {
                                url: url.clone(),
                                source,
                            };
                            return Some((Err(error), (body, parser, ready, url)));
                        }
                    }
                }
            },
        ))
    }
}

/// What a poll means for someone waiting: `None` while the job is pending; the poll once
/// it succeeded; `JobFailed` or `JobCanceled` once it ended otherwise.
pub fn finished(poll: Poll) -> Option<Result<Poll>> {
    match poll.status.status {
        JobState::Queued | JobState::Running => None,
        JobState::Succeeded => Some(Ok(poll)),
        JobState::Failed => Some(Err(Error::JobFailed(Box::new(poll.status)))),
        JobState::Canceled => Some(Err(Error::JobCanceled(Box::new(poll.status)))),
    }
}

fn decode_event(raw: &sse::RawEvent, url: &str) -> Result<(u64, JobEvent)> {
    let unexpected = |message: String| Error::Unexpected {
        url: url.to_owned(),
        message,
    };
    let id = raw
        .id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| unexpected(format!("an event without a numeric id: {raw:?}")))?;
    let event = serde_json::from_str(&raw.data)
        .map_err(|error| unexpected(format!("event {id}: {error}")))?;
    Ok((id, event))
}

/// URL path segment escaping for names and ids given by the caller.
fn segment(text: &str) -> String {
    if text == "." || text == ".." {
        return text.replace('.', "%2E");
    }
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                escaped.push(byte as char)
            }
            _ => escaped.push_str(&format!("%{byte:02X}")),
        }
    }
    escaped
}

/// A URL without its query (which may hold a signature) for error messages.
fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

async fn multipart(submission: &Submission) -> Result<reqwest::multipart::Form> {
    use reqwest::multipart::{Form, Part};
    let mut form = Form::new();
    for (name, path) in &submission.files {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
        let length = file
            .metadata()
            .await
            .map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?
            .len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.clone());
        let part = Part::stream_with_length(body, length)
            .file_name(file_name)
            .mime_str(media_type_of(path))
            .map_err(|error| Error::Config(error.to_string()))?;
        form = form.part(name.clone(), part);
    }
    for (name, value) in &submission.inputs {
        // A string is the file's text; records (an array) go as JSON, as in a JSON body.
        let part = match value {
            Value::String(text) => Part::text(text.clone()),
            other => Part::text(other.to_string())
                .mime_str("application/json")
                .map_err(|error| Error::Config(error.to_string()))?,
        };
        form = form.part(name.clone(), part);
    }
    if !submission.parameters.is_empty() {
        let parameters = Part::text(Value::Object(submission.parameters.clone()).to_string())
            .mime_str("application/json")
            .map_err(|error| Error::Config(error.to_string()))?;
        form = form.part("parameters", parameters);
    }
    Ok(form)
}

/// The media type of an uploaded file, from its extension.
fn media_type_of(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => "text/csv",
        Some("tsv") => "text/tab-separated-values",
        Some("json") => "application/json",
        Some("jsonl" | "ndjson") => "application/x-ndjson",
        Some("txt" | "text" | "log") => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Passes a `2xx`/`3xx` answer through; turns anything else into `Error::Api`.
async fn refuse(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        return Ok(response);
    }
    let url = strip_query(response.url().as_str());
    let retry_after = seconds(response.headers(), header::RETRY_AFTER);
    let text = response.text().await.unwrap_or_default();
    let problem = serde_json::from_str::<Problem>(&text).unwrap_or_else(|_| Problem {
        type_: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("error").into(),
        status: status.as_u16(),
        code: format!("http-{}", status.as_u16()),
        detail: Some(format!("{url} answered {status}: {}", text.trim())),
        errors: Vec::new(),
        job_error: None,
        attempts: None,
    });
    Err(Error::Api {
        status: status.as_u16(),
        problem: Box::new(problem),
        retry_after,
    })
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<T> {
    let url = strip_query(response.url().as_str());
    let bytes = response
        .bytes()
        .await
        .map_err(|source| Error::Unreachable {
            url: url.clone(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|error| Error::Unexpected {
        url,
        message: error.to_string(),
    })
}

async fn poll_of(response: Response) -> Result<Poll> {
    let headers = response.headers().clone();
    let redirected = response.status() == StatusCode::SEE_OTHER;
    let status: JobStatus = decode(response).await?;
    Ok(Poll {
        retry_after: seconds(&headers, header::RETRY_AFTER).map(Duration::from_secs),
        location: redirected
            .then(|| text(&headers, header::LOCATION))
            .flatten(),
        waited: headers.contains_key("preference-applied"),
        status,
    })
}

/// The file name of `Content-Disposition: attachment; filename="…"`, if it is a plain
/// name (no directory part, not hidden).
fn attachment_name(headers: &HeaderMap) -> Option<String> {
    let disposition = text(headers, header::CONTENT_DISPOSITION)?;
    let name = disposition.split("filename=\"").nth(1)?.split('"').next()?;
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    plain.then(|| name.to_owned())
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value: &HeaderValue| value.to_str().ok())
        .map(str::to_owned)
}

fn seconds(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    text(headers, name).and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_as_one_path_segment() {
        assert_eq!(segment("analyzer@2"), "analyzer@2");
        assert_eq!(segment("../x y"), "..%2Fx%20y");
        assert_eq!(segment(".."), "%2E%2E");
    }

    #[test]
    fn only_a_plain_attachment_name_is_used() {
        let named = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(value).unwrap(),
            );
            attachment_name(&headers)
        };
        assert_eq!(
            named("attachment; filename=\"insights.csv\"").as_deref(),
            Some("insights.csv")
        );
        assert_eq!(named("attachment; filename=\"../etc/passwd\""), None);
        assert_eq!(named("attachment; filename=\".bashrc\""), None);
        assert_eq!(named("attachment"), None);
    }

    #[test]
    fn urls_must_be_http() {
        assert!(Client::new("ftp://x").is_err());
        let client = Client::new("http://h:1/").unwrap();
        assert_eq!(client.url("/v1/jobs"), "http://h:1/v1/jobs");
        assert_eq!(client.url("https://s3/x?sig=1"), "https://s3/x?sig=1");
        assert_eq!(strip_query("http://h/x?sig=secret"), "http://h/x");
    }
}
