//! The `idlesync` binary: arguments, logging, config, signals. Everything else is the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use idlesync::{Config, Daemon};

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
    /// Run the daemon until SIGINT or SIGTERM.
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
    /// Apply the database migrations and exit.
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

fn load(path: &Path) -> Result<Config, ExitCode> {
    match Config::load(path) {
        Ok(c) => Ok(c),
        Err(errors) => {
            eprintln!("{errors}");
            Err(ExitCode::from(2))
        }
    }
}

/// `idlesync check`: every error on stderr as `file:line: key `…`: why`, exit 2; else the
/// warnings, a one-line summary on stdout, exit 0.
fn check(path: &Path) -> ExitCode {
    let (config, warnings) = match Config::check_file(path) {
        Ok(checked) => checked,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let mailboxes: usize = config.accounts.iter().map(|a| a.mailboxes.len()).sum();
    println!(
        "{}: ok ({} accounts, {} mailboxes)",
        path.display(),
        config.accounts.len(),
        mailboxes
    );
    ExitCode::SUCCESS
}

fn with_runtime(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idlesync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = load(&path).map_err(|_| anyhow::anyhow!("invalid config"))?;
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let daemon = Daemon::start(config).await?;
    daemon.run(Some(path), shutdown_signal()).await;
    Ok(())
}

async fn migrate(path: PathBuf) -> anyhow::Result<()> {
    let config = load(&path).map_err(|_| anyhow::anyhow!("invalid config"))?;
    let store = idlesync::store::Store::connect(&config.storage).await?;
    store.migrate().await?;
    println!("migrations applied to {}", redact_url(&config.storage.url));
    Ok(())
}

/// Hides a password in a database URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
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
