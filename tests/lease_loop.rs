//! Cluster mode's lease loop, in-process: two daemons on one PostgreSQL database and one
//! Dovecot share six mailboxes: the first takes all, the second joins and gets half handed
//! over, mail is stored once, and a clean stop hands everything back at once. The replicas as
//! real processes, with kill -9, SIGSTOP and PostgreSQL outages, are in tests/cluster.rs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::daemon::AccountSpec;
use common::db::Kind;
use common::setup::{ConfigToml, Setup};
use idlesync::status::{MailboxState, StatusBoard};
use sqlx::Row;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const USERS: [&str; 6] = ["lu0", "lu1", "lu2", "lu3", "lu4", "lu5"];
const DEADLINE: Duration = Duration::from_secs(30);

struct Replica {
    board: Arc<StatusBoard>,
    stop: Option<oneshot::Sender<()>>,
    run: JoinHandle<()>,
}

/// A replica's config: cluster mode with short timers, one account per user (INBOX).
fn config(setup: &Setup, node: &str, users: &[&str]) -> ConfigToml {
    config_with(setup, node, users, "1s")
}

fn config_with(setup: &Setup, node: &str, users: &[&str], renew_every: &str) -> ConfigToml {
    let mut c: ConfigToml = setup
        .config()
        .set("cluster", "enabled", true)
        .set("cluster", "node_id", node)
        .set("cluster", "lease_ttl", "9s")
        .set("cluster", "renew_every", renew_every)
        .set("reload", "watch_interval", "100ms");
    for u in users {
        let a = AccountSpec::implicit(u, u, "pw", setup.dc.imaps_port(), &["INBOX"]);
        c = setup.implicit(c, &a);
    }
    c
}

impl Replica {
    async fn start(setup: &Setup, node: &str) -> Result<Replica> {
        let d = setup.start(&config(setup, node, &USERS)).await?;
        Ok(Self::run(d, None))
    }

    fn run(d: idlesync::Daemon, path: Option<std::path::PathBuf>) -> Replica {
        let board = d.board().clone();
        let (stop, rx) = oneshot::channel();
        let run = tokio::spawn(d.run(path, async move {
            let _ = rx.await;
        }));
        Replica {
            board,
            stop: Some(stop),
            run,
        }
    }

    /// Mailboxes in each of: idling here, elsewhere.
    fn split(&self) -> (usize, usize) {
        let s = self.board.snapshot();
        let idling = s.iter().filter(|m| m.state == MailboxState::Idling).count();
        let elsewhere = s
            .iter()
            .filter(|m| m.state == MailboxState::Elsewhere)
            .count();
        (idling, elsewhere)
    }

    async fn wait_split(&self, want: (usize, usize)) -> Result<()> {
        let ok = self
            .board
            .wait_for(DEADLINE, |s| {
                let idling = s.iter().filter(|m| m.state == MailboxState::Idling).count();
                let elsewhere = s
                    .iter()
                    .filter(|m| m.state == MailboxState::Elsewhere)
                    .count();
                (idling, elsewhere) == want
            })
            .await;
        anyhow::ensure!(
            ok,
            "wanted {want:?} (idling, elsewhere), have {:?}",
            self.split()
        );
        Ok(())
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(DEADLINE, self.run)
            .await
            .context("replica did not stop")??;
        Ok(())
    }
}

async fn owners(setup: &Setup) -> Result<Vec<(String, Option<String>, i64)>> {
    let pool = setup.db.pool().await?;
    let rows = sqlx::query(
        "SELECT account_id, owner, epoch FROM mailbox_leases WHERE expires_at > now() OR owner IS NULL \
         ORDER BY account_id",
    )
    .fetch_all(&pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// `idlesync_lease_takeovers_total{reason}` of this process (both replicas share it).
fn takeovers(reason: &str) -> f64 {
    let text = idlesync::metrics::install().render();
    let prefix = format!("idlesync_lease_takeovers_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_gets_half_and_a_leaving_one_hands_back_at_once() -> Result<()> {
    let users: Vec<(&str, &str)> = USERS.iter().map(|u| (*u, "pw")).collect();
    let setup = Setup::new(&users, Kind::Postgres, "lease_loop").await?;

    let r1 = Replica::start(&setup, "n1").await?;
    r1.wait_split((6, 0)).await?;

    let r2 = Replica::start(&setup, "n2").await?;
    // n1 hands over its surplus (DONE, LOGOUT, release), n2 takes it: 3 and 3.
    r2.wait_split((3, 3)).await?;
    r1.wait_split((3, 3)).await?;
    let held = owners(&setup).await?;
    assert_eq!(held.len(), 6, "{held:?}");
    for node in ["n1", "n2"] {
        let n = held
            .iter()
            .filter(|(_, o, _)| o.as_deref() == Some(node))
            .count();
        assert_eq!(n, 3, "{node} holds 3: {held:?}");
    }
    // The moved ones were taken again: their epoch grew past the first taking.
    assert!(held.iter().any(|(_, _, e)| *e >= 2), "{held:?}");

    for u in USERS {
        setup
            .dc
            .append(u, "INBOX", &common::daemon::mail(&format!("to {u}")))
            .await?;
    }
    let pool = setup.db.pool().await?;
    common::wait_until(DEADLINE, || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(&pool)
            .await?;
        Ok(n >= 6)
    })
    .await?;
    let per_account: Vec<(String, i64)> =
        sqlx::query("SELECT account_id, COUNT(*) FROM messages GROUP BY account_id")
            .fetch_all(&pool)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(per_account.len(), 6, "{per_account:?}");
    assert!(per_account.iter().all(|(_, n)| *n == 1), "{per_account:?}");

    // A clean stop releases its leases: n1 takes them back without waiting for lease_ttl
    // to run out (it would otherwise show them as held by n2 until then).
    let before = (takeovers("released"), takeovers("expired"));
    r2.stop().await?;
    r1.wait_split((6, 0)).await?;
    let after = (takeovers("released"), takeovers("expired"));
    assert!(
        after.0 >= before.0 + 3.0,
        "taken as released: {before:?} → {after:?}"
    );
    assert_eq!(
        after.1, before.1,
        "none waited for expiry: {before:?} → {after:?}"
    );
    let held = owners(&setup).await?;
    assert!(
        held.iter().all(|(_, o, _)| o.as_deref() == Some("n1")),
        "{held:?}"
    );
    r1.stop().await?;
    let left = owners(&setup).await?;
    assert!(left.iter().all(|(_, o, _)| o.is_none()), "{left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_in_cluster_mode_takes_added_mailboxes_and_forgets_removed_ones() -> Result<()> {
    let setup = Setup::new(
        &[("lr0", "pw"), ("lr1", "pw"), ("lr2", "pw")],
        Kind::Postgres,
        "lease_reload",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("idlesync.toml");
    std::fs::write(&path, config(&setup, "n1", &["lr0", "lr1"]).render())?;
    common::init_logs();
    let first = idlesync::Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = Replica::run(idlesync::Daemon::start(first).await?, Some(path.clone()));
    r.wait_split((2, 0)).await?;

    // lr0 goes, lr2 comes: the new lease is taken and its mailbox watched, the old row goes.
    std::fs::write(&path, config(&setup, "n1", &["lr1", "lr2"]).render())?;
    let ok = r
        .board
        .wait_for(DEADLINE, |s| {
            let idling: Vec<&str> = s
                .iter()
                .filter(|m| m.state == MailboxState::Idling)
                .map(|m| m.account.as_str())
                .collect();
            idling == ["lr1", "lr2"] && s.len() == 2
        })
        .await;
    anyhow::ensure!(ok, "{:?}", r.board.snapshot());
    let held = owners(&setup).await?;
    let accounts: Vec<&str> = held.iter().map(|(a, _, _)| a.as_str()).collect();
    assert_eq!(
        accounts,
        ["lr1", "lr2"],
        "lr0's lease row is gone: {held:?}"
    );
    assert!(
        held.iter().all(|(_, o, _)| o.as_deref() == Some("n1")),
        "{held:?}"
    );
    r.stop().await?;
    Ok(())
}

/// A cold start of the whole deployment: replicas that start together see each other before
/// taking anything, so no mailbox is connected to, then handed over a moment later. Every
/// lease is taken exactly once (epoch 1). Seen failing without the join window: the first
/// replica took all six and handed three over (epoch 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_take_their_shares_without_a_handover() -> Result<()> {
    let users: Vec<(&str, &str)> = USERS.iter().map(|u| (*u, "pw")).collect();
    let setup = Setup::new(&users, Kind::Postgres, "lease_cold_start").await?;
    // renew_every 3s: a join window of 2 s, plenty for the second start.
    let c1 = config_with(&setup, "n1", &USERS, "3s");
    let c2 = config_with(&setup, "n2", &USERS, "3s");
    let r1 = Replica::run(setup.start(&c1).await?, None);
    // The second starts once the first has joined: within the window, as replicas started
    // by one deploy are.
    let pool = setup.db.pool().await?;
    common::wait_until(DEADLINE, || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cluster_nodes")
            .fetch_one(&pool)
            .await?;
        Ok(n == 1)
    })
    .await?;
    let r2 = Replica::run(setup.start(&c2).await?, None);
    r1.wait_split((3, 3)).await?;
    r2.wait_split((3, 3)).await?;
    let held = owners(&setup).await?;
    assert_eq!(held.len(), 6, "{held:?}");
    assert!(
        held.iter().all(|(_, _, e)| *e == 1),
        "taken once each: {held:?}"
    );
    r1.stop().await?;
    r2.stop().await?;
    Ok(())
}
