//! The `batchgate` binary: the server (`serve`, `keys`, `check-config`) and its client
//! (`submit`, `wait`, `jobs`, `logs`, … in `remote.rs`).

/// `println!` for a command's output: a reader that went away (`batchgate jobs | head`)
/// ends the command quietly, as it would a C program, instead of a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout(), $($arg)*) {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write the output: {error}");
            std::process::exit(1);
        }
    }};
}

mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use batchgate_server::{Application, Config, ConfigSource, Overrides, Workers};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "batchgate",
    version,
    about = "Legacy command-line batch programs behind an asynchronous HTTP API",
    after_help = "Client commands read the server's URL and key from --url/--key, \
BATCHGATE_URL/BATCHGATE_KEY, or `url`/`key` in ~/.config/batchgate/client.toml.\n\
Exit codes: 0 done, 1 job failed, 3 job canceled, 64 usage error, 65 refused by the server, \
69 server unreachable or unavailable, 130 interrupted (the job keeps running)."
)]
struct Cli {
    /// Log format on stderr: `text` or `json` (one JSON object per line).
    #[arg(
        long,
        global = true,
        env = "BATCHGATE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(flatten)]
    remote: remote::Remote,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where the store is: the same flags as `serve`.
#[derive(clap::Args)]
struct StoreArgs {
    /// The server's configuration (TOML); without it, the built-in demo.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The server's data directory (default ./batchgate-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The server's job store: `sqlite` or a PostgreSQL URL (overrides the configuration).
    #[arg(long, env = "BATCHGATE_STORE")]
    store: Option<String>,
}

/// Where replicas and workers share their state.
#[derive(clap::Args)]
struct SharedArgs {
    /// Job store: `sqlite` (in the data directory) or a PostgreSQL URL shared by every
    /// replica and worker (overrides the configuration).
    #[arg(long, env = "BATCHGATE_STORE")]
    store: Option<String>,
    /// Blob storage: `local` (in the data directory) or a directory every replica and
    /// worker shares (overrides the configuration).
    #[arg(long, env = "BATCHGATE_BLOBS")]
    blobs: Option<String>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once: only its hash is kept).
    Create {
        /// Who or what the key is for (shown in lists).
        #[arg(long)]
        name: String,
        /// The key's tier (one of the configuration's `[tiers.…]`).
        #[arg(long)]
        tier: String,
        /// The key sees and manages every caller's jobs, and reads /metrics.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys (ids, names, tiers; never the keys themselves).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by its id; it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Start signing result URLs with a new secret; URLs signed with the previous one
    /// keep working until they expire, older ones stop.
    RotateUrlSecret {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API with an embedded worker pool.
    Serve {
        /// Tool declarations and settings (TOML); without it, the built-in demo.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where jobs, inputs and outputs are kept (default ./batchgate-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Jobs run at once (default: the number of cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Serve the API only; jobs are run by `batchgate worker` processes elsewhere.
        #[arg(long)]
        no_worker: bool,
        #[command(flatten)]
        shared: SharedArgs,
        /// Serve without API keys on a non-loopback address (anyone who can reach it may
        /// submit jobs).
        #[arg(long)]
        insecure_open: bool,
    },
    /// Run jobs from the shared store without serving the API (scale-out: any number of
    /// these, on any number of hosts, beside `serve --no-worker` replicas).
    Worker {
        /// Tool declarations and settings (TOML); without it, the built-in demo.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where work directories are kept (default ./batchgate-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Jobs run at once (default: the number of cores).
        #[arg(long)]
        workers: Option<usize>,
        #[command(flatten)]
        shared: SharedArgs,
    },
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a configuration file and list its tools.
    CheckConfig { file: PathBuf },
    /// Print the built-in demo configuration (a starting point for your own).
    DemoConfig,
    /// Write the demo's compiled program (the analyzer) to FILE, e.g. to put it in an
    /// image (a serving worker installs it under its data directory by itself).
    DemoProgram { file: PathBuf },
    #[command(flatten)]
    Remote(remote::RemoteCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(remote::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logs(cli.log_format);
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            workers,
            no_worker,
            shared,
            insecure_open,
        } => {
            let source = config.map_or(ConfigSource::Demo, ConfigSource::File);
            let overrides = Overrides {
                listen,
                data_dir,
                workers,
                store: shared.store,
                blobs: shared.blobs,
                insecure_open: insecure_open.then_some(true),
            };
            match Config::load(&source, &overrides) {
                Ok(config) => {
                    let workers = if no_worker {
                        Workers::Elsewhere
                    } else {
                        Workers::Embedded
                    };
                    multi_threaded().block_on(serve(config, workers))
                }
                Err(error) => config_error(error),
            }
        }
        Command::Worker {
            config,
            data_dir,
            workers,
            shared,
        } => {
            let source = config.map_or(ConfigSource::Demo, ConfigSource::File);
            let overrides = Overrides {
                data_dir,
                workers,
                store: shared.store,
                blobs: shared.blobs,
                ..Overrides::default()
            };
            match Config::load(&source, &overrides) {
                Ok(config) => multi_threaded().block_on(worker(config)),
                Err(error) => config_error(error),
            }
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Keys(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(keys(command))
        }
        Command::DemoProgram { file } => match batchgate_server::demo::write_program(&file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: cannot write {}: {error}", file.display());
                ExitCode::FAILURE
            }
        },
        Command::DemoConfig => {
            say!("{}", batchgate_server::demo::CONFIG.trim_end());
            ExitCode::SUCCESS
        }
        Command::Remote(command) => remote::run(command, &cli.remote),
    }
}

/// Logs to stderr, as text or JSON. Both formats escape what they print: a value with a
/// line break or an escape sequence cannot start a forged log line.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATCHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn,sqlx=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(false).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// `batchgate check-config FILE`: the tools it declares and their warnings, or the error
/// (exit status 78, EX_CONFIG).
fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(&ConfigSource::File(file.to_owned()), &Overrides::default()) {
        Ok(config) => {
            let data_dir = std::path::absolute(&config.settings.data_dir)
                .unwrap_or_else(|_| config.settings.data_dir.clone());
            if let Err(message) = batchgate_server::config::check_programs(&config.tools, &data_dir)
            {
                eprintln!("error: {}: {message}", file.display());
                return ExitCode::from(78);
            }
            say!("{}: ok", file.display());
            for tool in config.tools.all() {
                say!("  {} — {}", tool.id(), tool.title);
                for warning in &tool.warnings {
                    say!("    warning: {warning}");
                }
            }
            if let Some(warning) = config.settings.containment_warning() {
                say!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(78)
        }
    }
}

fn multi_threaded() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A configuration that cannot be loaded: said once, exit code 78 (`EX_CONFIG`).
fn config_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(78)
}

/// Cancelled on SIGTERM or Ctrl-C.
fn stop_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        signal.cancel();
    });
    shutdown
}

async fn worker(config: Config) -> ExitCode {
    let shutdown = stop_on_signal();
    match batchgate_server::app::run_worker(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, workers: Workers) -> ExitCode {
    let application = match Application::build(config, workers).await {
        Ok(application) => application,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let address = application.local_addr();
    // Scripts and tests read this line to find the port (with --listen 127.0.0.1:0).
    say!("batchgate listening on http://{address}");
    tracing::info!(%address, "batchgate serving");
    let shutdown = stop_on_signal();
    match application.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn load_for_store(store: &StoreArgs) -> Result<Config, ExitCode> {
    let source = store
        .config
        .clone()
        .map_or(ConfigSource::Demo, ConfigSource::File);
    let overrides = Overrides {
        data_dir: store.data_dir.clone(),
        store: store.store.clone(),
        ..Overrides::default()
    };
    Config::load(&source, &overrides).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(78)
    })
}

async fn keys(command: KeysCommand) -> ExitCode {
    let store_args = match &command {
        KeysCommand::Create { store, .. }
        | KeysCommand::List { store }
        | KeysCommand::Revoke { store, .. }
        | KeysCommand::RotateUrlSecret { store } => store,
    };
    let config = match load_for_store(store_args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let config_name = match &store_args.config {
        Some(file) => format!("{}", file.display()),
        None => "the built-in demo configuration (pass --config FILE for your own)".to_owned(),
    };
    let store = match batchgate_server::app::open_store(&config.settings).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let now = chrono::Utc::now();
    let outcome: Result<ExitCode, String> = async {
        match command {
            KeysCommand::Create {
                name, tier, admin, ..
            } => {
                if config.tiers.get(&tier).is_none() {
                    let known: Vec<&str> = config.tiers.names().collect();
                    eprintln!(
                        "error: no tier `{tier}` in {config_name}; its tiers: {}",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    );
                    return Ok(ExitCode::from(64));
                }
                let key = batchgate_server::auth::keys::generate(&name, &tier, admin, now);
                store.create_key(&key.record).await.map_err(|e| e.to_string())?;
                eprintln!(
                    "created key {} ({name}, tier {tier}{}); it is shown once, keep it safe:",
                    key.record.id,
                    if admin { ", admin" } else { "" }
                );
                say!("{}", key.secret);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::List { .. } => {
                let keys = store.list_keys().await.map_err(|e| e.to_string())?;
                say!("{:<14} {:<12} {:<6} {:<20} {:<20} NAME", "ID", "TIER", "ADMIN", "CREATED", "REVOKED");
                for key in keys {
                    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
                    say!(
                        "{:<14} {:<12} {:<6} {:<20} {:<20} {}",
                        key.id,
                        key.tier,
                        if key.admin { "yes" } else { "no" },
                        time(key.created_at),
                        key.revoked_at.map(time).unwrap_or_else(|| "-".into()),
                        key.name
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Revoke { id, .. } => {
                if store.revoke_key(&id, now).await.map_err(|e| e.to_string())? {
                    eprintln!("revoked key {id}");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("error: no active key `{id}` (see `batchgate keys list`)");
                    Ok(ExitCode::from(66))
                }
            }
            KeysCommand::RotateUrlSecret { .. } => {
                let signer = batchgate_server::auth::signing::Signer::load(store.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let generation = signer.rotate().await.map_err(|e| e.to_string())?;
                eprintln!("result URLs are now signed with secret generation {generation}; the previous one is still accepted");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
    .await;
    outcome.unwrap_or_else(|error| {
        eprintln!("error: {error}");
        ExitCode::FAILURE
    })
}
