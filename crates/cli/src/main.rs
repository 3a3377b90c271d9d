//! The `batchgate` binary: `serve`, `check-config`, `--version`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use batchgate_server::{Application, Config, ConfigSource, Overrides};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "batchgate",
    version,
    about = "Legacy command-line batch programs behind an asynchronous HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Check a configuration file and list its tools.
    CheckConfig { file: PathBuf },
    /// Print the built-in demo configuration (a starting point for your own).
    DemoConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATCHGATE_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,tower_http=warn,sqlx=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            workers,
            no_worker,
        } => {
            let source = config.map_or(ConfigSource::Demo, ConfigSource::File);
            let overrides = Overrides {
                listen,
                data_dir,
                workers,
            };
            let config = match Config::load(&source, &overrides) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(78);
                }
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(serve(config, !no_worker))
        }
        Command::CheckConfig { file } => {
            match Config::load(&ConfigSource::File(file.clone()), &Overrides::default()) {
                Ok(config) => {
                    println!("{}: ok", file.display());
                    for tool in config.tools.all() {
                        println!("  {} — {}", tool.id(), tool.title);
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(78)
                }
            }
        }
        Command::DemoConfig => {
            print!("{}", batchgate_server::demo::CONFIG);
            ExitCode::SUCCESS
        }
    }
}

async fn serve(config: Config, with_worker: bool) -> ExitCode {
    let application = match Application::build(config, with_worker).await {
        Ok(application) => application,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let address = application.local_addr();
    // Scripts and tests read this line to find the port (with --listen 127.0.0.1:0).
    println!("batchgate listening on http://{address}");
    tracing::info!(%address, "batchgate serving");
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
    match application.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
