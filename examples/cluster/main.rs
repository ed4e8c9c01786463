//! Issue #13's figures for BENCHMARKS.md: takeover time after `kill -9` and after `SIGTERM`
//! (3 replicas, 30 mailboxes), and what cluster mode costs while idle at 10,000 mailboxes
//! across 3 replicas against one single-node process. The replicas are the release binary as
//! child processes; the IMAP server is the tests' scripted one (plain, in this process, so its
//! CPU is nobody's figure); PostgreSQL is an instance of the harness's own with
//! `pg_stat_statements`, so statements are counted by the server. Prints Markdown tables.
//!
//! ```sh
//! cargo build --release --bin idlesync
//! cargo run --release --example cluster -- takeover --signal kill --runs 5
//! cargo run --release --example cluster -- takeover --signal term --runs 5
//! cargo run --release --example cluster -- cost --mailboxes 10000
//! cargo run --release --example cluster -- all
//! ```
//!
//! Needs root (the own PostgreSQL runs as `postgres` through `runuser`) and PostgreSQL's
//! server binaries (`/usr/lib/postgresql/*/bin`).

#[path = "../../tests/common/command.rs"]
mod command;
mod cost;
#[path = "../../tests/common/db.rs"]
#[allow(dead_code)]
mod db;
#[path = "../../tests/common/dovecot/mod.rs"]
#[allow(dead_code)]
mod dovecot;
mod pg;
mod replicas;
#[path = "../load/rig.rs"]
#[allow(dead_code)]
mod rig;
#[path = "../../tests/common/scripted.rs"]
#[allow(dead_code)]
mod scripted;
#[path = "../../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;
mod table;
mod takeover;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use takeover::Sig;

#[derive(Parser)]
#[command(about = "idlesync cluster figures (issue #13)")]
struct Cli {
    /// The idlesync binary; default: `idlesync` in this example's target directory.
    #[arg(long, global = true)]
    bin: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Signal one replica at a time; time until its mailboxes idle elsewhere.
    Takeover {
        #[arg(long, value_enum, default_value_t = Sig::Kill)]
        signal: Sig,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 30)]
        mailboxes: usize,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// `lease_ttl`, ms.
        #[arg(long, default_value_t = 30_000)]
        lease_ttl_ms: u64,
        /// `renew_every`, ms.
        #[arg(long, default_value_t = 10_000)]
        renew_every_ms: u64,
        /// Offset run i by i/runs of renew_every after the cluster is balanced, so the signals
        /// sample the renewal phase evenly (without it each lands right after a renewal).
        #[arg(long)]
        spread: bool,
    },
    /// Statements per second and idle CPU: replicas against one single-node process.
    Cost {
        #[arg(long, default_value_t = 10_000)]
        mailboxes: usize,
        /// Replicas of the cluster phase; 0 runs the single-node baseline alone.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// `imap.connects_per_second` (default: idlesync's, no rate).
        #[arg(long)]
        rate: Option<u32>,
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
        /// Wait after everything idles, before the window.
        #[arg(long, default_value_t = 15)]
        settle_secs: u64,
    },
    /// The three measurements at their defaults, in sequence.
    All,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match cli.bin {
        Some(b) => b,
        None => rig::release_binary()?,
    };
    eprintln!("cluster harness: {}", bin.display());
    let ms = Duration::from_millis;
    let tables = match cli.mode {
        Mode::Takeover {
            signal,
            runs,
            mailboxes,
            replicas,
            lease_ttl_ms,
            renew_every_ms,
            spread,
        } => vec![
            takeover::takeover(
                &bin,
                signal,
                runs,
                mailboxes,
                replicas,
                ms(lease_ttl_ms),
                ms(renew_every_ms),
                spread,
            )
            .await?,
        ],
        Mode::Cost {
            mailboxes,
            replicas,
            rate,
            idle_secs,
            settle_secs,
        } => {
            cost::cost(
                &bin,
                mailboxes,
                replicas,
                rate,
                Duration::from_secs(idle_secs),
                Duration::from_secs(settle_secs),
            )
            .await?
        }
        Mode::All => {
            let mut t = Vec::new();
            for sig in [Sig::Kill, Sig::Term] {
                let table =
                    takeover::takeover(&bin, sig, 5, 30, 3, ms(30_000), ms(10_000), true).await?;
                // Printed as soon as known: a later failure keeps them.
                println!("{}", table.render());
            }
            t.extend(
                cost::cost(
                    &bin,
                    10_000,
                    3,
                    None,
                    Duration::from_secs(60),
                    Duration::from_secs(15),
                )
                .await?,
            );
            t
        }
    };
    for t in tables {
        println!("{}", t.render());
    }
    Ok(())
}
