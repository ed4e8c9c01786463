//! The load harness of issue #5: idlesync (the release binary, as a child process) against a
//! throwaway Dovecot with N users over implicit TLS, the machine's PostgreSQL (a database of
//! its own) and Redis (a channel of its own). Prints a Markdown table per scenario.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example load -- latency --deliveries 200
//! cargo run --release --example load -- scale --mailboxes 10000
//! cargo run --release --example load -- burst --messages 10000 --mailboxes 100
//! cargo run --release --example load -- catchup --messages 20000
//! cargo run --release --example load -- changes --messages 10000
//! cargo run --release --example load -- smoke
//! ```
//!
//! Needs root (Dovecot's master), `dovecot-imapd`, `python3` for the bare client, and raised
//! inotify limits (`scripts/prepare`).

mod changes;
#[path = "../../tests/common/db.rs"]
#[allow(dead_code)]
mod db;
#[path = "../../tests/common/dovecot/mod.rs"]
#[allow(dead_code)]
mod dovecot;
#[allow(dead_code)]
mod rig;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "idlesync load harness (issue #5)")]
struct Cli {
    /// The idlesync binary; default: `idlesync` next to this example's directory
    /// (target/release/idlesync under `cargo run --release`).
    #[arg(long, global = true)]
    bin: Option<PathBuf>,
    /// New connections per second: idlesync's `imap.connects_per_second`, and the bare
    /// client's spacing. Without it, idlesync runs with its default (no rate, only
    /// `imap.max_connecting`) and the bare client at 1000/s.
    #[arg(long, global = true)]
    rate: Option<u32>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// (a) APPEND → Redis latency, idlesync's share, Dovecot's floor.
    Latency {
        #[arg(long, default_value_t = 200)]
        deliveries: usize,
    },
    /// (b) N idle mailboxes: time online, RSS per mailbox, idle CPU, fds; bare client.
    Scale {
        #[arg(long, default_value_t = 1000)]
        mailboxes: usize,
        #[arg(long, default_value_t = 120)]
        idle_secs: u64,
        /// Skip the bare asyncio client.
        #[arg(long)]
        no_bare: bool,
    },
    /// (c) Messages written straight into the Maildirs of watched mailboxes.
    Burst {
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        mailboxes: usize,
        #[arg(long, default_value_t = 10_000)]
        size: usize,
    },
    /// (d) Messages waiting in one mailbox at start.
    Catchup {
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        #[arg(long, default_value_t = 10_000)]
        size: usize,
    },
    /// (e) A flag storm: `STORE 1:N +FLAGS (\\Seen)` on a watched N-message mailbox.
    Changes {
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        #[arg(long, default_value_t = 10_000)]
        size: usize,
    },
    /// Every scenario, small (what tests/load_smoke.rs runs).
    Smoke,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match cli.bin {
        Some(b) => b,
        None => rig::release_binary()?,
    };
    let s = scenarios::Settings {
        bin,
        rate: cli.rate,
    };
    eprintln!("load harness: {} ({})", s.bin.display(), s.pacing());
    let tables = match cli.mode {
        Mode::Latency { deliveries } => vec![scenarios::latency(&s, deliveries).await?],
        Mode::Scale {
            mailboxes,
            idle_secs,
            no_bare,
        } => vec![scenarios::scale(&s, mailboxes, Duration::from_secs(idle_secs), !no_bare).await?],
        Mode::Burst {
            messages,
            mailboxes,
            size,
        } => vec![scenarios::burst(&s, messages, mailboxes, size).await?],
        Mode::Catchup { messages, size } => vec![scenarios::catchup(&s, messages, size).await?],
        Mode::Changes { messages, size } => vec![changes::changes(&s, messages, size).await?],
        Mode::Smoke => scenarios::smoke(&s).await?,
    };
    for t in tables {
        println!("{}", t.render());
    }
    Ok(())
}
