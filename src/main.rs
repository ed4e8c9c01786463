//! The `idlesync` binary: arguments, logging, config, signals. Everything else is the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use idlesync::publish::PublishError;
use idlesync::{Config, Daemon, DaemonError};

#[derive(Parser)]
#[command(
    version,
    about = "Watches IMAP mailboxes with IDLE; stores new mail and announces it on Redis"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGINT or SIGTERM. Exit 2 on a config error (everything `check`
    /// refuses), 1 if it cannot start otherwise (database, listener).
    Run {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config file without connecting anywhere: syntax, types, values, URLs, CA
    /// files and secret sources (env vars and files are read; commands' programs looked up, not
    /// run). Exit 0 if valid (warnings on stderr), 2 if not.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply the database migrations and exit (2 on a config error).
    Migrate {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => with_runtime(run(config)),
        Command::Migrate { config } => with_runtime(migrate(config)),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Exit status for a config error, from `check`, `run` and `migrate` alike: process managers
/// do not restart on it (systemd `RestartPreventExitStatus=2`, PM2 `stop_exit_codes: [2]`).
const EXIT_CONFIG: u8 = 2;

/// Why a command stopped: a config error (exit 2) or anything else (exit 1).
enum Failure {
    /// Already printed, located by file, line and key.
    Config,
    /// Anything else: the database unreachable, the listener's address taken, ….
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// The config as `migrate` needs it: the file itself valid (secrets are not read).
fn load(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        Failure::Config
    })
}

/// `idlesync check`: every error on stderr as `file:line: key `…`: why`, exit 2; else the
/// warnings, a one-line summary on stdout, exit 0.
fn check(path: &Path) -> ExitCode {
    let (config, warnings) = match Config::check_file(path) {
        Ok(checked) => checked,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let mailboxes: usize = config.accounts.iter().map(|a| a.mailboxes.len()).sum();
    // The default node_id carries the pid of `run`, not of this `check`.
    let cluster = match (&config.cluster.node_id, config.cluster.enabled) {
        (_, false) => String::new(),
        (Some(id), true) => {
            format!("; cluster mode: this replica watches the ones it leases, as {id:?}")
        }
        (None, true) => "; cluster mode: this replica watches the ones it leases, as its \
                         host name and pid"
            .to_string(),
    };
    println!(
        "{}: ok ({} accounts, {} mailboxes{cluster})",
        path.display(),
        config.accounts.len(),
        mailboxes
    );
    ExitCode::SUCCESS
}

fn with_runtime(fut: impl std::future::Future<Output = Result<(), Failure>>) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config) => ExitCode::from(EXIT_CONFIG),
        Err(Failure::Other(e)) => {
            eprintln!("idlesync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `idlesync run`: refuses (exit 2) everything `check` refuses, since PM2 has no check step.
async fn run(path: PathBuf) -> Result<(), Failure> {
    let (config, warnings) = Config::check_file(&path).map_err(|errors| {
        eprintln!("{errors}");
        Failure::Config
    })?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let daemon = Daemon::start(config).await.map_err(|e| match e {
        // Only reachable if validation missed something, but a config error all the same.
        DaemonError::Account { .. } | DaemonError::Publish(PublishError::Config(_)) => {
            eprintln!("idlesync: {e}");
            Failure::Config
        }
        other => Failure::Other(other.into()),
    })?;
    daemon.run(Some(path), shutdown_signal()).await;
    Ok(())
}

async fn migrate(path: PathBuf) -> Result<(), Failure> {
    let config = load(&path)?;
    let store = idlesync::store::Store::connect(&config.storage)
        .await
        .map_err(anyhow::Error::from)?;
    store.migrate().await.map_err(anyhow::Error::from)?;
    println!(
        "migrations applied to {}",
        idlesync::config::redact_url(&config.storage.url)
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}
