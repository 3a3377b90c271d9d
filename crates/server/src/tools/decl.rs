//! The tool declaration as written in TOML, before validation.
//!
//! Every struct denies unknown fields so that a typo (`timout_seconds`) stops the server at
//! start instead of being silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::transforms::Format;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDecl {
    pub name: String,
    #[serde(default = "default_version")]
    pub version: u32,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: String,
    /// argv template: each element is one argument; placeholders `{inputs.NAME}`,
    /// `{outputs.NAME}`, `{control}`, `{workdir}`, `{params.NAME}`; `{{`/`}}` for braces.
    pub command: Vec<String>,
    #[serde(default)]
    pub inputs: Vec<InputDecl>,
    /// JSON Schema of the parameters (an object schema).
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub control: Option<ControlDecl>,
    #[serde(default)]
    pub outputs: Vec<OutputDecl>,
    #[serde(default)]
    pub env: EnvDecl,
    #[serde(default)]
    pub limits: LimitsDecl,
    #[serde(default = "default_success_codes")]
    pub success_exit_codes: Vec<i32>,
    #[serde(default)]
    pub retry: RetryDecl,
    #[serde(default)]
    pub progress: Option<ProgressDecl>,
    /// How long a finished job's data is kept.
    #[serde(default)]
    pub retention_seconds: Option<u64>,
    /// Where the program runs: `local` (a child process of the worker, the default) or
    /// `slurm` (a batch job of the cluster configured in the server's `[slurm]`).
    #[serde(default)]
    pub executor: ExecutorDecl,
    /// Resources requested from Slurm (`executor = "slurm"`); time and memory come from
    /// `limits`.
    #[serde(default)]
    pub slurm: Option<SlurmDecl>,
    /// The image and its settings (`executor = "container"`).
    #[serde(default)]
    pub container: Option<ContainerDecl>,
    /// The image of the Job's pod (`executor = "kubernetes"`).
    #[serde(default)]
    pub kubernetes: Option<KubernetesDecl>,
    /// Parameters whose values may start with `-` where they fill a whole argument of
    /// `command` (the program reads them as options). Other such values are refused with
    /// `422`, so that request data never becomes an option.
    #[serde(default)]
    pub accepts_options: Vec<String>,
    /// A complete request body (`{"inputs": …, "parameters": …}`), checked at start.
    pub example: Value,
    /// A first guess of the run time, for `Retry-After` before any run was measured.
    #[serde(default)]
    pub expected_run_seconds: Option<f64>,
}

fn default_version() -> u32 {
    1
}

fn default_success_codes() -> Vec<i32> {
    vec![0]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDecl {
    pub name: String,
    pub format: Format,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default = "yes")]
    pub header: bool,
    /// Media types accepted for a raw body or a multipart part (default from the format).
    #[serde(default)]
    pub media_types: Vec<String>,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlDecl {
    /// File name in the work directory (a plain name, no directories).
    #[serde(default = "default_control_file")]
    pub file: String,
    /// minijinja template; `params` holds the validated parameters.
    pub template: String,
    /// `reject` (default): a value with a line break or control character fails the
    /// request; `json`: string values are written as JSON string literals.
    #[serde(default)]
    pub values: ControlValues,
}

fn default_control_file() -> String {
    "control.txt".into()
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlValues {
    #[default]
    Reject,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDecl {
    pub name: String,
    /// Path relative to the work directory; absent when `from = "stdout"`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub from: OutputSource,
    pub format: Format,
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default = "yes")]
    pub header: bool,
    #[serde(default)]
    pub media_type: Option<String>,
    /// Part of the JSON result.
    #[serde(default = "yes")]
    pub result: bool,
    /// A missing optional output is not an error.
    #[serde(default = "yes")]
    pub required: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputSource {
    #[default]
    File,
    Stdout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvDecl {
    /// Fixed values.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Names passed through from the server's own environment when set there.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDecl {
    pub timeout_seconds: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub memory_mb: Option<u64>,
    pub file_size_mb: Option<u64>,
    pub open_files: Option<u64>,
    /// Processes the program may have at once (RLIMIT_NPROC; enforced when programs run
    /// as dedicated users, see the `run_as_uid` setting).
    pub processes: Option<u64>,
    pub max_request_bytes: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub max_log_bytes: Option<u64>,
    pub concurrency: Option<u32>,
    pub kill_grace_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDecl {
    /// Attempts in all, including the first (default 3). Infrastructure failures (a lost
    /// worker, a storage error) are retried up to this bound.
    pub max_attempts: Option<u32>,
    /// Program exit codes that mean "try again" (by default none: a program's own failure
    /// is final).
    #[serde(default)]
    pub on_exit_codes: Vec<i32>,
    /// Signals that mean "try again" when they end the program (`"SIGSEGV"`, `"SEGV"` or
    /// 11): a program killed by a signal has no exit code for `on_exit_codes` to match.
    #[serde(default)]
    pub on_signals: Vec<SignalDecl>,
    #[serde(default)]
    pub on_timeout: bool,
    pub backoff_seconds: Option<f64>,
}

/// A signal by name (`"SIGSEGV"`, `"SEGV"`) or number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SignalDecl {
    Number(i32),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressDecl {
    /// Regex with a `percent` group (a number) and/or a `message` group; unnamed groups
    /// 1 and 2 are read as percent and message when the names are absent.
    pub pattern: String,
    #[serde(default)]
    pub stream: ProgressStream,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressStream {
    #[default]
    Both,
    Stdout,
    Stderr,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorDecl {
    #[default]
    Local,
    Slurm,
    Container,
    Kubernetes,
}

/// `[tools.kubernetes]`: the pod of each attempt's Job. Memory (requests = limits) and
/// the deadline come from `limits`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDecl {
    pub image: String,
    /// A CPU quantity (`"500m"`, `"2"`): requests = limits.
    #[serde(default)]
    pub cpu: Option<String>,
}

/// `[tools.container]`: the image the program ships in. Memory, CPU time, file size, open
/// files and processes come from `limits`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDecl {
    /// An image the container engine has (`localhost/analyzer:2`, `registry/x@sha256:…`).
    pub image: String,
    /// Give the program a network (the engine's default one); without it, none at all.
    #[serde(default)]
    pub network: bool,
    /// CPUs the program may use (fractions allowed).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// `uid[:gid]` inside the container; default the worker's own, so that the files the
    /// program writes in its work directory belong to the worker.
    #[serde(default)]
    pub user: Option<String>,
    /// The image's filesystem is read-only (a private `/tmp` is writable). Default true.
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// `[tools.slurm]`: what the tool's batch jobs ask of the cluster. Unset values fall back
/// to the server's `[slurm]` defaults, then to Slurm's.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmDecl {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Node features (`--constraint`).
    pub constraint: Option<String>,
    /// CPUs of the program's one task (`--cpus-per-task`, default 1).
    pub cpus: Option<u32>,
}
