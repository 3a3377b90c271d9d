//! Settings and tool declarations: from a TOML file (or the embedded demo), then
//! `BATCHGATE__…` environment variables, then command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::auth::{Tier, Tiers};
use crate::tools::decl::ToolDecl;
use crate::tools::{Tool, ToolDefaults, ToolError, ToolRegistry};

/// Server settings. Every field can be set in the file's top level or as
/// `BATCHGATE__FIELD` in the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where job state is kept: `sqlite` (a file in the data directory, the default) or a
    /// PostgreSQL URL (`postgres://user@host/db`) shared by replicas and workers.
    pub store: String,
    /// Where inputs, outputs and logs are kept: `local` (the data directory, the default),
    /// an absolute path to a directory that every replica and worker shares, or object
    /// storage: `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`.
    pub blobs: String,
    /// On SIGTERM, running jobs get this long to finish; the rest are handed back to the
    /// queue for another worker.
    pub shutdown_grace_seconds: u64,
    /// Jobs run at once by the embedded worker; 0 means the number of cores.
    pub workers: usize,
    /// A running attempt's lease; a worker renews it every third of this.
    pub lease_seconds: f64,
    /// Status code of the status monitor while a job is pending: 200 (default) or 202
    /// (the Durable Functions convention).
    pub pending_status: u16,
    /// Default request size cap for tools that set none.
    pub max_request_bytes: u64,
    /// A request body must arrive within this time.
    pub body_timeout_seconds: u64,
    pub default_timeout_seconds: u64,
    pub retention_seconds: u64,
    /// Upper bound of the `Retry-After` estimate.
    pub retry_after_max_seconds: u64,
    /// Upper bound of `Prefer: wait=N` on submit and on the status monitor.
    pub max_wait_seconds: u64,
    /// The server's URL as its clients reach it (e.g. `https://batch.example.org`), for
    /// the absolute URLs some clients need (`Operation-Location`, `resourceLocation`).
    /// Absent: taken from the request's `Host`.
    pub public_url: Option<String>,
    /// Origins whose web pages may call the API from a browser (CORS), e.g.
    /// `["https://app.example.org"]`; `["*"]` allows any. Default: none.
    pub cors_origins: Vec<String>,
    /// `auto`: keys are required as soon as one exists; `required`: always.
    pub auth: AuthMode,
    /// Serve without keys on a non-loopback address (`--insecure-open`).
    pub insecure_open: bool,
    /// The tier of the anonymous caller of an open server (none: no tier limits).
    pub anonymous_tier: Option<String>,
    /// `[tiers.NAME]`: limits per API key tier.
    pub tiers: BTreeMap<String, Tier>,
    /// Beyond this many queued jobs, submissions get `503` + `Retry-After`.
    pub max_queued_jobs: u64,
    /// `direct`: the status monitor's `303` points at `/result` (a key is needed);
    /// `signed_url`: at a URL that works without a key until it expires.
    pub result_delivery: ResultDelivery,
    pub signed_url_seconds: u64,
    /// How often the retention reaper looks for expired jobs.
    pub reaper_interval_seconds: f64,
    /// A client must send its request headers within this time.
    pub header_timeout_seconds: u64,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: usize,
    /// Open connections at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Who local programs run as: a number is the first uid of a pool of
    /// `run_as_uid_count` uids, one per running job on this machine (the server must run
    /// as root); `"server"` is the server's own user. Unset: the pool from 61000 when
    /// the server runs as root (a program never runs as root), else the server's user.
    pub run_as_uid: Option<RunAs>,
    /// How many uids the pool of `run_as_uid` holds.
    pub run_as_uid_count: u32,
    /// `bwrap`: run programs in a bubblewrap sandbox (no network, read-only outside their
    /// work directory, the server's data hidden).
    pub sandbox: SandboxMode,
    /// `[slurm]`: the cluster that runs tools with `executor = "slurm"`.
    pub slurm: Option<SlurmSettings>,
    /// `[container]`: the container engine that runs tools with `executor = "container"`.
    pub container: Option<ContainerSettings>,
    /// `[kubernetes]`: the cluster that runs tools with `executor = "kubernetes"`.
    pub kubernetes: Option<KubernetesSettings>,
    /// Ignored here: tools are read separately so their errors can name the tool.
    #[serde(default, skip_serializing)]
    pub tools: Option<serde::de::IgnoredAny>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./batchgate-data"),
            store: "sqlite".into(),
            blobs: "local".into(),
            shutdown_grace_seconds: 30,
            workers: 0,
            lease_seconds: 30.0,
            pending_status: 200,
            max_request_bytes: 10 * 1024 * 1024,
            body_timeout_seconds: 60,
            default_timeout_seconds: 300,
            retention_seconds: 7 * 24 * 3600,
            retry_after_max_seconds: 60,
            max_wait_seconds: 60,
            public_url: None,
            cors_origins: Vec::new(),
            auth: AuthMode::Auto,
            insecure_open: false,
            anonymous_tier: None,
            tiers: BTreeMap::new(),
            max_queued_jobs: 10_000,
            result_delivery: ResultDelivery::Direct,
            signed_url_seconds: 3600,
            reaper_interval_seconds: 60.0,
            header_timeout_seconds: 10,
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            run_as_uid: None,
            run_as_uid_count: 512,
            sandbox: SandboxMode::None,
            slurm: None,
            container: None,
            kubernetes: None,
            tools: None,
        }
    }
}

impl Settings {
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.workers
        }
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.lease_seconds.max(0.3))
    }

    fn tool_defaults(&self) -> ToolDefaults {
        ToolDefaults {
            max_request_bytes: self.max_request_bytes,
            timeout: Duration::from_secs(self.default_timeout_seconds),
            retention: Duration::from_secs(self.retention_seconds),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Auto,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultDelivery {
    Direct,
    SignedUrl,
}

/// `[slurm]`: how a worker reaches the Slurm cluster (its client commands, `sbatch` and
/// friends, must be installed and configured on the worker's host).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSettings {
    /// A directory that the workers and every compute node see at the same path (NFS,
    /// Lustre, CephFS…): each attempt's work directory is made here.
    pub work_dir: PathBuf,
    /// Defaults for tools that do not name their own.
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// The name of every batch job batchgate submits (how it finds its own jobs in
    /// `squeue`).
    pub job_name: String,
    /// How often the queue is read (one `squeue` for all the jobs a worker follows).
    pub poll_interval_seconds: f64,
    /// How often jobs and work directories left behind (a job canceled while no worker
    /// followed it) are cleaned up.
    pub sweep_interval_seconds: f64,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            work_dir: PathBuf::new(),
            partition: None,
            account: None,
            qos: None,
            job_name: "batchgate".into(),
            poll_interval_seconds: 1.0,
            sweep_interval_seconds: 60.0,
        }
    }
}

/// `[container]`: the Docker-compatible engine API (podman's or Docker's) on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerSettings {
    /// The engine's socket: `unix:///run/podman/podman.sock`, `unix:///var/run/docker.sock`.
    /// Empty: `DOCKER_HOST`, else Docker's default socket.
    pub engine: String,
    /// Every container batchgate makes carries the label `batchgate.label=<this>` (how a
    /// worker finds its own in the engine).
    pub label: String,
    /// How often containers left behind by ended jobs are removed.
    pub sweep_interval_seconds: f64,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        ContainerSettings {
            engine: String::new(),
            label: "batchgate".into(),
            sweep_interval_seconds: 60.0,
        }
    }
}

/// `[kubernetes]`: where attempts run as `batch/v1` Jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSettings {
    /// The API server without credentials (`kubectl proxy`'s `http://127.0.0.1:8001`);
    /// absent: the in-cluster service account, else the kubeconfig.
    pub url: Option<String>,
    /// Absent: the configuration's default namespace.
    pub namespace: Option<String>,
    /// The PersistentVolumeClaim holding the work directories (NFS, Azure Files…).
    pub pvc: String,
    /// Where this worker mounts that same volume.
    pub work_dir: PathBuf,
    /// The Jobs' pods run as this service account (absent: the namespace's default; its
    /// token is never mounted).
    pub service_account: Option<String>,
    /// Every Job carries the label `batchgate.dev/label=<this>`.
    pub label: String,
    pub sweep_interval_seconds: f64,
    /// Time a Job's pod may take to be scheduled and started, added to the tool's timeout
    /// for the Job's `activeDeadlineSeconds`; the program's own timeout counts from its
    /// start.
    pub start_allowance_seconds: u64,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            url: None,
            namespace: None,
            pvc: String::new(),
            work_dir: PathBuf::new(),
            service_account: None,
            label: "batchgate".into(),
            sweep_interval_seconds: 60.0,
            start_allowance_seconds: 600,
        }
    }
}

/// `run_as_uid`: a uid, or `"server"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunAs {
    /// The first uid of the pool.
    Uid(u32),
    Keyword(RunAsKeyword),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunAsKeyword {
    /// Programs run as the server's own user.
    Server,
}

/// Who local programs run as, once the setting and the server's own user are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramUsers {
    /// The server's own user (uid).
    Server(u32),
    /// One uid of `first..first + count` per running job.
    Pool { first: u32, count: u32 },
}

/// The first uid of the pool when the server runs as root and `run_as_uid` is unset.
pub const DEFAULT_FIRST_UID: u32 = 61000;

impl Settings {
    /// Who local programs run as (see `run_as_uid`).
    pub fn program_users(&self) -> ProgramUsers {
        let own = rustix::process::geteuid().as_raw();
        let count = self.run_as_uid_count.max(1);
        match self.run_as_uid {
            Some(RunAs::Uid(first)) => ProgramUsers::Pool { first, count },
            Some(RunAs::Keyword(RunAsKeyword::Server)) => ProgramUsers::Server(own),
            None if own == 0 => ProgramUsers::Pool {
                first: DEFAULT_FIRST_UID,
                count,
            },
            None => ProgramUsers::Server(own),
        }
    }

    /// What a program can reach under these settings, for `serve` and `check-config` to
    /// say plainly; `None` when programs are contained (a uid of their own).
    pub fn containment_warning(&self) -> Option<String> {
        let ProgramUsers::Server(uid) = self.program_users() else {
            return None;
        };
        let sandboxed = self.sandbox == SandboxMode::Bwrap;
        let reach = if sandboxed {
            "they run in the bubblewrap sandbox (no network, the data directory hidden, the \
             rest of the machine read-only), but as this user they can still signal the \
             server and read what it can read outside the data directory"
        } else {
            "they can read and change everything this user can: the database with its \
             URL-signing secret, every job's inputs and outputs, other running jobs and the \
             server's own environment"
        };
        let remedy = if uid == 0 {
            "set run_as_uid to a uid (or leave it unset) to give each job a user of its own"
        } else if sandboxed {
            "run the server as root to give each job a user of its own"
        } else {
            "set sandbox = \"bwrap\", or run the server as root to give each job a user of \
             its own"
        };
        Some(format!(
            "programs run as the server's own user (uid {uid}): {reach}; to contain them, {remedy}"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    None,
    Bwrap,
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A TOML file given by the user.
    File(PathBuf),
    /// The demo configuration compiled into the binary.
    Demo,
    /// TOML text (tests), named for error messages.
    Text { name: String, text: String },
}

/// A configuration mistake, naming the file, and the tool and field when it is in a tool.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub message: String,
}

/// Settings overridden on the command line (highest precedence).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_open: Option<bool>,
}

/// Why a configuration cannot run on this binary: it names what a cargo feature left out.
pub fn missing_feature(field: &str, feature: &str) -> String {
    format!(
        "field `{field}`: this batchgate was built without the `{feature}` feature; rebuild \
         it with `cargo build --release -p batchgate --features {feature}` (or --all-features)"
    )
}

impl Settings {
    /// The first section (field, cargo feature) the settings use that this binary was
    /// built without.
    pub fn features_missing(&self) -> Option<(&'static str, &'static str)> {
        let missing = [
            (
                self.container.is_some() && !cfg!(feature = "containers"),
                ("container", "containers"),
            ),
            (
                self.kubernetes.is_some() && !cfg!(feature = "kubernetes"),
                ("kubernetes", "kubernetes"),
            ),
            (
                crate::blobs::is_object_url(&self.blobs) && !cfg!(feature = "object-store"),
                ("blobs", "object-store"),
            ),
        ];
        missing
            .into_iter()
            .find_map(|(missing, what)| missing.then_some(what))
    }
}

#[derive(Debug)]
pub struct Config {
    pub settings: Settings,
    pub tools: ToolRegistry,
    pub tiers: Tiers,
}

impl Config {
    pub fn load(source: &ConfigSource, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with_env(source, overrides, true)
    }

    /// Like `load`, without reading the environment (tests run in parallel and share it).
    pub fn load_with_env(
        source: &ConfigSource,
        overrides: &Overrides,
        read_env: bool,
    ) -> Result<Config, ConfigError> {
        let (source_name, text) = source.read()?;
        let fail = |message: String| ConfigError {
            source_name: source_name.clone(),
            message,
        };
        let mut figment =
            Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(&text));
        if read_env {
            figment = figment.merge(Env::prefixed("BATCHGATE__").split("__"));
        }
        let settings: Settings = figment
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|error| fail(error.to_string()))?;
        settings.check().map_err(fail)?;
        // The demo names its program `@DEMO_BIN@/analyzer` (so may any configuration, to
        // offer the demo program); the settings above do not depend on it, and the data
        // directory they give is where a worker installs it.
        let text = if text.contains("@DEMO_BIN@") {
            crate::demo::resolve(&text, &settings.data_dir).map_err(|error| {
                fail(format!(
                    "the data directory {} cannot be made absolute: {error}",
                    settings.data_dir.display()
                ))
            })?
        } else {
            text
        };
        let tools = load_tools(&text, &settings.tool_defaults()).map_err(fail)?;
        settings.check_executors(&tools).map_err(fail)?;
        let tools = ToolRegistry::new(tools).map_err(|error| fail(error.to_string()))?;
        let tiers = Tiers::new(settings.tiers.clone(), &tools).map_err(fail)?;
        if let Some(name) = &settings.anonymous_tier {
            if tiers.get(name).is_none() {
                return Err(fail(format!(
                    "field `anonymous_tier`: no tier `{name}` (declare it under [tiers.{name}])"
                )));
            }
        }
        Ok(Config {
            settings,
            tools,
            tiers,
        })
    }
}

impl ConfigSource {
    /// The source's name (for errors) and its text.
    fn read(&self) -> Result<(String, String), ConfigError> {
        Ok(match self {
            ConfigSource::File(path) => (
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|error| ConfigError {
                    source_name: path.display().to_string(),
                    message: format!("cannot read: {error}"),
                })?,
            ),
            ConfigSource::Demo => (
                "built-in demo configuration".to_owned(),
                crate::demo::CONFIG.to_owned(),
            ),
            ConfigSource::Text { name, text } => (name.clone(), text.clone()),
        })
    }
}

impl Settings {
    /// The settings' own consistency (tools aside).
    fn check(&self) -> Result<(), String> {
        if self.pending_status != 200 && self.pending_status != 202 {
            return Err("field `pending_status`: must be 200 or 202".into());
        }
        let store = self.store.as_str();
        if store != "sqlite"
            && !store.starts_with("postgres://")
            && !store.starts_with("postgresql://")
        {
            return Err(
                "field `store`: must be `sqlite` or a PostgreSQL URL (postgres://user@host/db)"
                    .into(),
            );
        }
        if self.blobs != "local"
            && !self.blobs.starts_with('/')
            && !crate::blobs::is_object_url(&self.blobs)
        {
            return Err(
                "field `blobs`: must be `local`, an absolute directory path, or \
                 s3://bucket/prefix, az://container/prefix, gs://bucket/prefix"
                    .into(),
            );
        }
        if let Some((field, feature)) = self.features_missing() {
            return Err(missing_feature(field, feature));
        }
        if let Some(url) = &self.public_url {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.ends_with('/') || url.contains(['?', '#', ' ']) {
                return Err(format!(
                    "field `public_url`: `{url}` must be an http(s) URL without a trailing \
                     slash, query or fragment, e.g. https://batch.example.org"
                ));
            }
        }
        for origin in &self.cors_origins {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let valid = origin == "*"
                || host.is_some_and(|host| {
                    !host.is_empty()
                        && !host.contains(['/', '?', '#', ' ', '@'])
                        && origin.parse::<axum::http::HeaderValue>().is_ok()
                });
            if !valid {
                return Err(format!(
                    "field `cors_origins`: `{origin}` is not an origin (scheme://host[:port], \
                     no path, or \"*\")"
                ));
            }
        }
        if let Some(slurm) = &self.slurm {
            if !slurm.work_dir.is_absolute() {
                return Err(
                    "field `slurm.work_dir`: must be an absolute path that every compute node \
                     sees (a shared filesystem)"
                        .into(),
                );
            }
            if !(slurm.poll_interval_seconds > 0.0 && slurm.sweep_interval_seconds > 0.0) {
                return Err(
                    "field `slurm.poll_interval_seconds`/`sweep_interval_seconds`: must be positive"
                        .into(),
                );
            }
        }
        if let Some(kubernetes) = &self.kubernetes {
            if kubernetes.pvc.is_empty() || !kubernetes.work_dir.is_absolute() {
                return Err(
                    "field `kubernetes`: needs `pvc` (the claim holding the work directories) \
                     and `work_dir` (the absolute path where this worker mounts it)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Every tool's executor has its section.
    fn check_executors(&self, tools: &[Tool]) -> Result<(), String> {
        use crate::tools::decl::ExecutorDecl;
        let sections = [
            (
                ExecutorDecl::Slurm,
                self.slurm.is_some(),
                "`executor = \"slurm\"` needs a [slurm] section with `work_dir` (a directory \
                 shared with the compute nodes)",
            ),
            (
                ExecutorDecl::Kubernetes,
                self.kubernetes.is_some(),
                "`executor = \"kubernetes\"` needs a [kubernetes] section (`pvc` and `work_dir`)",
            ),
            (
                ExecutorDecl::Container,
                self.container.is_some(),
                "`executor = \"container\"` needs a [container] section (`engine = \
                 \"unix:///run/podman/podman.sock\"`, or empty for DOCKER_HOST)",
            ),
        ];
        for (executor, configured, message) in sections {
            if configured {
                continue;
            }
            if let Some(tool) = tools.iter().find(|tool| tool.executor == executor) {
                return Err(format!("tool `{}`: {message}", tool.id()));
            }
        }
        Ok(())
    }
}

/// Every program a local tool runs is an executable file, at its absolute path or as a
/// bare name on the programs' `PATH` (`tools::PROGRAM_PATH`), so that a typo
/// stops the start instead of failing every job with `program-not-found`. The demo
/// analyzer counts as there: a worker installs it under `data_dir` before it runs jobs.
/// Tools of the other executors run their programs elsewhere (a cluster, an image).
pub fn check_programs(tools: &ToolRegistry, data_dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let demo = crate::embedded::location(data_dir, "analyzer", crate::embedded::ANALYZER).ok();
    let executable = |path: &std::path::Path| {
        demo.as_deref() == Some(path)
            || std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    for tool in tools.all() {
        if tool.executor != crate::tools::decl::ExecutorDecl::Local {
            continue;
        }
        let Some(program) = tool.command.first().and_then(|argument| argument.literal()) else {
            continue;
        };
        let found = if program.starts_with('/') {
            executable(std::path::Path::new(program))
        } else if program.contains('/') {
            return Err(format!(
                "tool `{}`: field `command[0]`: `{program}` is a relative path; give an \
                 absolute path or a program name on PATH",
                tool.id()
            ));
        } else {
            std::env::split_paths(crate::tools::PROGRAM_PATH)
                .any(|directory| executable(&directory.join(program)))
        };
        if !found {
            return Err(format!(
                "tool `{}`: field `command[0]`: `{program}` is not an executable file{}",
                tool.id(),
                if program.starts_with('/') {
                    String::new()
                } else {
                    format!(" on PATH ({})", crate::tools::PROGRAM_PATH)
                }
            ));
        }
    }
    Ok(())
}

/// The `[[tools]]` of a configuration's text, each checked (errors name the tool, its
/// index and the field).
fn load_tools(text: &str, defaults: &ToolDefaults) -> Result<Vec<Tool>, String> {
    let document: toml::Table = toml::from_str(text).map_err(|error| error.to_string())?;
    let declarations = match document.get("tools") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items.clone(),
        Some(_) => return Err("`tools` must be an array of tables ([[tools]])".into()),
    };
    if declarations.is_empty() {
        return Err("no tools are declared (add a [[tools]] table)".into());
    }
    let mut tools = Vec::new();
    for (index, value) in declarations.into_iter().enumerate() {
        let label = tool_label(&value, index);
        let decl: ToolDecl = serde_path_to_error::deserialize(value).map_err(|error| {
            let path = error.path().to_string();
            format!(
                "tool `{label}` (tools[{index}]): field `{path}`: {}",
                error.inner()
            )
        })?;
        let tool = Tool::from_decl(decl, defaults).map_err(|error: ToolError| {
            format!(
                "tool `{}` (tools[{index}]): field `{}`: {}",
                error.tool, error.field, error.message
            )
        })?;
        tools.push(tool);
    }
    Ok(tools)
}

fn tool_label(value: &toml::Value, index: usize) -> String {
    let name = value.get("name").and_then(toml::Value::as_str);
    let version = value
        .get("version")
        .and_then(toml::Value::as_integer)
        .unwrap_or(1);
    match name {
        Some(name) => format!("{name}@{version}"),
        None => format!("#{index}"),
    }
}

#[cfg(test)]
mod tests;
