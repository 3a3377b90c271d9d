//! The client commands of the `batchgate` binary: they speak to a running server through
//! `batchgate-client`.
//!
//! Exit codes (also in `--help`): 0 done (job succeeded), 1 the job failed, 3 the job was
//! canceled, 64 usage error, 65 the server refused the request (a 4xx problem), 69 the
//! server is unreachable or unavailable, 130 interrupted (the job keeps running).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use batchgate_client::{
    finished, Cancel, Client, Error, JobEvent, JobFilter, JobState, JobStatus, Poll, Progress,
    Submission,
};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_CANCELED: u8 = 3;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_REFUSED: u8 = 65;
pub const EXIT_UNAVAILABLE: u8 = 69;
pub const EXIT_INTERRUPTED: u8 = 130;

/// Where the server is and who we are.
#[derive(clap::Args, Clone)]
pub struct Remote {
    /// Client commands: the server's URL [default: `url` of the client config file,
    /// else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "BATCHGATE_URL")]
    pub url: Option<String>,
    /// Client commands: the API key [default: `key` of the client config file].
    #[arg(long, global = true, env = "BATCHGATE_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum RemoteCommand {
    /// Submit a job; with --wait follow it to its end and write or print its result.
    Submit {
        /// `name` (newest version) or `name@version`.
        tool: String,
        /// An input file, uploaded as it is: NAME=FILE (repeatable).
        #[arg(long = "input", short = 'i', value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// A parameter: KEY=VALUE, the value read as JSON when it is JSON (42, true,
        /// ["a","b"]), else as text (repeatable; wins over --params-file).
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Parameters from a JSON object in a file.
        #[arg(long, value_name = "FILE")]
        params_file: Option<PathBuf>,
        /// The same key and request give the same job, however often it is sent.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the job to its end (progress on stderr).
        #[arg(long, short)]
        wait: bool,
        /// With --wait: write the outputs into this directory instead of printing the
        /// JSON result.
        #[arg(long, short, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Follow a job to its end, then write or print its result.
    Wait {
        id: String,
        #[arg(long, short, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Print a job's status (JSON).
    Status { id: String },
    /// List your jobs, newest first.
    Jobs {
        /// queued, running, succeeded, failed or canceled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        /// At most this many (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The `next` cursor printed after a full page.
        #[arg(long)]
        cursor: Option<String>,
        /// Print the page as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's program output (stdout and stderr).
    Logs {
        id: String,
        /// Keep printing until the job ends.
        #[arg(long, short)]
        follow: bool,
        /// Only `stdout` or `stderr`.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Cancel a queued or running job; delete a finished job's data.
    Cancel { id: String },
    /// Download a finished job's outputs (one, or all of them).
    Download {
        id: String,
        /// The output's name (all outputs when absent).
        name: Option<String>,
        /// The directory to write into.
        #[arg(long, short, value_name = "DIR", default_value = ".")]
        output: PathBuf,
    },
    /// List the tools.
    Tools {
        #[arg(long)]
        json: bool,
    },
    /// Describe a tool: inputs, parameters, outputs, limits, an example request.
    Tool {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// A failure of a command, with its exit code.
struct Exit(u8, String);

impl From<Error> for Exit {
    fn from(error: Error) -> Exit {
        let code = match &error {
            Error::Api { status, .. } if *status >= 500 => EXIT_UNAVAILABLE,
            Error::Api { .. } => EXIT_REFUSED,
            Error::Unreachable { .. } | Error::Unexpected { .. } => EXIT_UNAVAILABLE,
            Error::JobFailed(_) => EXIT_FAILED,
            Error::JobCanceled(_) => EXIT_CANCELED,
            Error::File { .. } | Error::Config(_) => EXIT_USAGE,
        };
        let mut message = error.to_string();
        // "error sending request" says little: add the causes (connection refused, …).
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            let text = inner.to_string();
            if !message.contains(&text) {
                message.push_str(&format!(": {text}"));
            }
            cause = inner.source();
        }
        if let Error::Api { problem, .. } = &error {
            for field in &problem.errors {
                message.push_str(&format!("\n  {}: {}", field.path, field.message));
            }
        }
        if let Error::JobFailed(status) = &error {
            if let Some(tail) = status.error.as_ref().and_then(|e| e.stderr_tail.as_deref()) {
                message.push_str("\n--- the program's last words (stderr) ---\n");
                message.push_str(tail.trim_end());
            }
        }
        Exit(code, message)
    }
}

fn usage(message: impl Into<String>) -> Exit {
    Exit(EXIT_USAGE, message.into())
}

pub fn run(command: RemoteCommand, remote: &Remote) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(dispatch(command, remote)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit(code, message)) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            ExitCode::from(code)
        }
    }
}

/// The client config file: `$XDG_CONFIG_HOME/batchgate/client.toml` (or
/// `~/.config/batchgate/client.toml`), with `url` and `key`.
pub fn config_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("batchgate").join("client.toml"))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    key: Option<String>,
}

fn client(remote: &Remote) -> Result<Client, Exit> {
    let file = match config_file().filter(|path| path.exists()) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };
    let url = remote
        .url
        .clone()
        .or(file.url)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let key = remote.key.clone().or(file.key);
    Ok(Client::new(&url)
        .map_err(|e| usage(e.to_string()))?
        .with_key(key))
}

async fn dispatch(command: RemoteCommand, remote: &Remote) -> Result<(), Exit> {
    match command {
        RemoteCommand::Submit {
            tool,
            inputs,
            params,
            params_file,
            idempotency_key,
            wait,
            output,
        } => {
            if output.is_some() && !wait {
                return Err(usage("--output needs --wait (or use `batchgate download`)"));
            }
            let submission = submission(inputs, params, params_file, idempotency_key)?;
            let client = client(remote)?;
            let submitted = client.submit(&tool, &submission).await?;
            let id = submitted.status.id.to_string();
            if !wait {
                eprintln!("submitted job {id} ({})", submitted.status.status);
                say!("{id}");
                return Ok(());
            }
            eprintln!("submitted job {id}");
            finish(&client, &id, output.as_deref()).await
        }
        RemoteCommand::Wait { id, output } => {
            finish(&client(remote)?, &id, output.as_deref()).await
        }
        RemoteCommand::Status { id } => {
            let status = client(remote)?.status(&id).await?;
            print_json(&status);
            Ok(())
        }
        RemoteCommand::Jobs {
            status,
            tool,
            limit,
            cursor,
            json,
        } => {
            let filter = JobFilter {
                status: status.as_deref().map(parse_state).transpose()?,
                tool,
                cursor,
                limit: Some(limit),
            };
            list_jobs(remote, &filter, json).await
        }
        RemoteCommand::Logs { id, follow, stream } => {
            logs(&client(remote)?, &id, follow, stream.as_deref()).await
        }
        RemoteCommand::Cancel { id } => {
            match client(remote)?.cancel(&id).await? {
                Cancel::Canceled(_) => eprintln!("job {id} canceled"),
                Cancel::Stopping(_) => eprintln!("job {id} is being stopped"),
                Cancel::Deleted => eprintln!("job {id} had ended; its data was deleted"),
            }
            Ok(())
        }
        RemoteCommand::Download { id, name, output } => {
            let client = client(remote)?;
            let status = client.status(&id).await?;
            if status.status != JobState::Succeeded {
                return Err(Exit(
                    EXIT_REFUSED,
                    format!(
                        "job {id} is {}; only a succeeded job has outputs",
                        status.status
                    ),
                ));
            }
            download(&client, &status, name.as_deref(), &output).await
        }
        RemoteCommand::Tools { json } => {
            let catalogue = client(remote)?.tools().await?;
            if json {
                print_json(&catalogue);
                return Ok(());
            }
            for tool in &catalogue.tools {
                say!("{:<20} v{:<3} {}", tool.name, tool.version, tool.title);
            }
            Ok(())
        }
        RemoteCommand::Tool { name, json } => {
            let tool = client(remote)?.tool(&name).await?;
            if json {
                print_json(&tool);
                return Ok(());
            }
            describe_tool(&tool);
            Ok(())
        }
    }
}

fn parse_state(text: &str) -> Result<JobState, Exit> {
    JobState::parse(text).ok_or_else(|| {
        usage(format!(
            "--status `{text}`: one of queued, running, succeeded, failed, canceled"
        ))
    })
}

/// `batchgate jobs`: a page of the history, as a table (or JSON).
async fn list_jobs(remote: &Remote, filter: &JobFilter, json: bool) -> Result<(), Exit> {
    let page = client(remote)?.jobs(filter).await?;
    if json {
        print_json(&page);
        return Ok(());
    }
    say!(
        "{:<36}  {:<16}  {:<9}  {:<19}  PROGRESS",
        "ID",
        "TOOL",
        "STATUS",
        "CREATED"
    );
    for job in &page.jobs {
        say!(
            "{:<36}  {:<16}  {:<9}  {:<19}  {}",
            job.id,
            format!("{}@{}", job.tool, job.tool_version),
            job.status,
            job.created_at.format("%Y-%m-%d %H:%M:%S"),
            describe_progress(job)
        );
    }
    if let Some(cursor) = &page.next_cursor {
        eprintln!("more: batchgate jobs --cursor {cursor}");
    }
    Ok(())
}

fn submission(
    inputs: Vec<String>,
    params: Vec<String>,
    params_file: Option<PathBuf>,
    idempotency_key: Option<String>,
) -> Result<Submission, Exit> {
    let mut parameters = match params_file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(usage(format!("{}: not a JSON object", path.display()))),
                Err(e) => return Err(usage(format!("{}: {e}", path.display()))),
            }
        }
        None => Map::new(),
    };
    for param in params {
        let (key, value) = param
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| usage(format!("--param `{param}`: expected KEY=VALUE")))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        parameters.insert(key.to_owned(), value);
    }
    let mut files = Vec::new();
    for input in inputs {
        let (name, file) = input
            .split_once('=')
            .filter(|(name, file)| !name.is_empty() && !file.is_empty())
            .ok_or_else(|| usage(format!("--input `{input}`: expected NAME=FILE")))?;
        let path = PathBuf::from(file);
        if !path.is_file() {
            return Err(usage(format!("--input {name}: no file {file}")));
        }
        files.push((name.to_owned(), path));
    }
    Ok(Submission {
        files,
        parameters,
        idempotency_key,
        ..Submission::default()
    })
}

/// Follows the job with a progress bar until it ends, then writes or prints the result.
/// Ctrl-C stops following (exit 130), not the job.
async fn finish(client: &Client, id: &str, output: Option<&Path>) -> Result<(), Exit> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {pos:>3}% {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let followed = tokio::select! {
        followed = follow(client, id, &bar) => followed,
        _ = tokio::signal::ctrl_c() => {
            bar.abandon();
            return Err(Exit(
                EXIT_INTERRUPTED,
                format!("interrupted; job {id} keeps running. Resume with: batchgate wait {id}"),
            ));
        }
    };
    let done = match followed {
        Ok(done) => done,
        Err(error) => {
            bar.abandon();
            return Err(error.into());
        }
    };
    bar.finish_and_clear();
    let elapsed = match (done.status.started_at, done.status.finished_at) {
        (Some(start), Some(end)) => format!(" in {:.1}s", (end - start).as_seconds_f64()),
        _ => String::new(),
    };
    eprintln!("job {id} succeeded{elapsed}");
    match output {
        Some(dir) => download(client, &done.status, None, dir).await,
        None => {
            print_json(&client.result(id).await?);
            Ok(())
        }
    }
}

/// Follows the job's event stream (reconnecting after the last event seen), and falls
/// back to polling if the stream is not available.
async fn follow(client: &Client, id: &str, bar: &ProgressBar) -> Result<Poll, Error> {
    let mut last = None;
    let mut failures = 0;
    loop {
        match client.events(id, last).await {
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok((seq, event)) => {
                            last = Some(seq);
                            failures = 0;
                            show_event(bar, &event);
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(error) if error.is_transient() && failures < 5 => failures += 1,
            Err(Error::Api { status: 404, .. }) if last.is_none() => {
                // A server without event streams: poll, honouring Retry-After.
                return client.wait(id, |status| show_status(bar, status)).await;
            }
            Err(error) => return Err(error),
        }
        let poll = client.poll(id, None).await?;
        show_status(bar, &poll.status);
        if let Some(outcome) = finished(poll) {
            return outcome;
        }
        // The stream broke: reconnect after a pause.
        tokio::time::sleep(Duration::from_millis(500 << failures.min(4))).await;
    }
}

fn show(bar: &ProgressBar, state: JobState, attempt: u32, progress: Option<&Progress>) {
    let percent = progress.and_then(|p| p.percent).unwrap_or(0.0);
    bar.set_position(percent.clamp(0.0, 100.0) as u64);
    bar.set_message(describe(
        state,
        attempt,
        progress.and_then(|p| p.message.as_deref()),
    ));
}

fn show_event(bar: &ProgressBar, event: &JobEvent) {
    show(bar, event.status, event.attempt, event.progress.as_ref());
}

fn show_status(bar: &ProgressBar, status: &JobStatus) {
    show(bar, status.status, status.attempt, status.progress.as_ref());
}

fn describe(state: JobState, attempt: u32, message: Option<&str>) -> String {
    let mut text = state.to_string();
    if attempt > 1 {
        text.push_str(&format!(" (attempt {attempt})"));
    }
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        text.push_str(": ");
        text.push_str(message);
    }
    text
}

fn describe_progress(job: &JobStatus) -> String {
    match (&job.progress, &job.error) {
        (_, Some(error)) if job.status == JobState::Failed => error.code.clone(),
        (Some(progress), _) => match progress.percent {
            Some(percent) => format!("{percent:.0}%"),
            None => progress.message.clone().unwrap_or_default(),
        },
        _ => String::new(),
    }
}

async fn download(
    client: &Client,
    status: &JobStatus,
    only: Option<&str>,
    dir: &Path,
) -> Result<(), Exit> {
    let outputs: Vec<_> = status
        .links
        .outputs
        .iter()
        .filter(|output| only.is_none_or(|name| output.name == name))
        .collect();
    if outputs.is_empty() {
        let known: Vec<&str> = status
            .links
            .outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        return Err(Exit(
            EXIT_REFUSED,
            format!(
                "job {} has no output {} (outputs: {})",
                status.id,
                only.unwrap_or(""),
                known.join(", ")
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| usage(format!("{}: {e}", dir.display())))?;
    for output in outputs {
        let (path, size) = client.save_output(output, dir).await?;
        eprintln!("wrote {} ({size} bytes)", path.display());
    }
    Ok(())
}

async fn logs(client: &Client, id: &str, follow: bool, stream: Option<&str>) -> Result<(), Exit> {
    use std::io::Write;
    let mut printed = 0;
    loop {
        // Read the state first: logs read after it are complete once it is terminal.
        let ended = !follow || client.status(id).await?.status.is_terminal();
        let text = client.logs(id, stream).await?;
        if text.len() >= printed {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&text.as_bytes()[printed..]);
            let _ = out.flush();
            printed = text.len();
        }
        if ended {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn describe_tool(tool: &batchgate_client::ToolDescription) {
    say!("{}@{} — {}", tool.name, tool.version, tool.title);
    if !tool.description.is_empty() {
        say!("{}", tool.description);
    }
    say!("\ninputs:");
    for input in &tool.inputs {
        let columns = if input.columns.is_empty() {
            String::new()
        } else {
            format!(" columns {}", input.columns.join(","))
        };
        let cap = input
            .max_bytes
            .map(|bytes| format!(" (up to {bytes} bytes)"))
            .unwrap_or_default();
        say!(
            "  {:<16} {}{}{}{cap}",
            input.name,
            input.format,
            columns,
            if input.required { "" } else { ", optional" },
        );
    }
    say!("\nparameters:");
    if let Some(properties) = tool.parameters["properties"].as_object() {
        for (name, schema) in properties {
            let kind = schema["type"].as_str().unwrap_or("any");
            let default = schema
                .get("default")
                .map(|d| format!(" (default {d})"))
                .unwrap_or_default();
            let about = schema["description"].as_str().unwrap_or("");
            say!("  {name:<16} {kind}{default} {about}");
        }
    }
    say!("\noutputs:");
    for output in &tool.outputs {
        say!(
            "  {:<16} {} ({}){}",
            output.name,
            output.format,
            output.media_type,
            if output.result {
                ", in the JSON result"
            } else {
                ""
            }
        );
    }
    say!(
        "\nlimits: {} s timeout, {} bytes per request, {} attempts",
        tool.limits.timeout_seconds,
        tool.limits.max_request_bytes,
        tool.limits.max_attempts
    );
    say!("\nexample request (POST {}):", tool.submit);
    print_json(&tool.example);
}

fn print_json(value: &impl serde::Serialize) {
    say!(
        "{}",
        serde_json::to_string_pretty(value).expect("wire types serialize")
    );
}
