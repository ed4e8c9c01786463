//! The cluster chaos run (#13): one rig of 3 real replicas, 30 mailboxes, mail flowing to every
//! mailbox throughout, through the (b), (c) and (d) in a row: kill -9 of one replica
//! (then started again), SIGSTOP of another past `lease_ttl` (then SIGCONT), and a rolling
//! restart of all three while at least 300 messages arrive (a restart after each 75). At the
//! end: every appended message stored exactly once, every stored UID announced, one session per
//! mailbox, no panic, and never two sessions IDLE on one mailbox outside the paused replica's
//! stale ones.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::cluster::{account_index, user, Rig, USERS};

const SETTLE: Duration = Duration::from_secs(60);
const TAKEOVER: Duration = Duration::from_secs(30);
const DRAIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_chaos_loses_and_doubles_nothing() -> Result<()> {
    let mut rig = Rig::start(3, false).await?;
    rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    let flow = rig.flow((0..USERS).collect(), Duration::from_millis(50));
    rig.wait_appended(30, Duration::from_secs(30)).await?;

    // (b) kill -9 r2 mid-flow; r1 and r3 take its mailboxes once its leases expire.
    rig.replicas[1].kill9().await?;
    rig.wait_settled(&[0, 2], true, TAKEOVER).await?;
    rig.replicas[1].spawn()?;
    rig.replicas[1].wait_ready(TAKEOVER).await?;
    rig.wait_settled(&[0, 1, 2], true, TAKEOVER).await?;
    let double = rig.double_idle();
    ensure!(double.is_empty(), "double IDLE in (b): {double:?}");

    // (c) SIGSTOP r3 past lease_ttl; the others take over; SIGCONT: its stale commits are
    // rejected and it drops those mailboxes.
    let lost: BTreeSet<String> = rig
        .wait_settled(&[0, 1, 2], true, TAKEOVER)
        .await?
        .of("r3")
        .iter()
        .filter_map(|a| account_index(a).map(user))
        .collect();
    rig.proxy.reset_max();
    rig.replicas[2].signal("STOP")?;
    rig.wait_settled(&[0, 1], false, TAKEOVER).await?;
    let n = rig.appended().len();
    rig.wait_appended(n + 2 * USERS, Duration::from_secs(30))
        .await?;
    rig.replicas[2].signal("CONT")?;
    rig.replicas[2].wait_fenced(Duration::from_secs(20)).await?;
    rig.wait_settled(&[0, 1, 2], true, TAKEOVER).await?;
    let double: BTreeSet<String> = rig.double_idle().into_iter().map(|(u, _)| u).collect();
    // The proxy saw r3's frozen sessions still in IDLE beside their new owners', and nowhere
    // else: the measurement works, and the single-IDLE checks around it are not vacuous. A
    // subset, not all of them: with mail flowing, some of r3's sessions were out of IDLE
    // (fetching) at the moment it was stopped, and froze there.
    ensure!(
        !double.is_empty() && double.is_subset(&lost),
        "double IDLE in (c) on {double:?}, r3 held {lost:?}"
    );

    // (d) Rolling restart while at least 300 more messages arrive.
    rig.proxy.reset_max();
    let start = rig.appended().len();
    for i in 0..3 {
        // Mail before, between and after the restarts.
        rig.wait_appended(start + 75 * (i + 1), Duration::from_secs(30))
            .await?;
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        rig.replicas[i].term(Duration::from_secs(20)).await?;
        rig.wait_settled(&others, true, TAKEOVER).await?;
        rig.replicas[i].spawn()?;
        rig.replicas[i].wait_ready(TAKEOVER).await?;
        rig.wait_settled(&[0, 1, 2], true, TAKEOVER).await?;
    }
    rig.wait_appended(start + 300, Duration::from_secs(60))
        .await?;
    flow.stop().await?;
    let double = rig.double_idle();
    ensure!(double.is_empty(), "double IDLE in (d): {double:?}");

    rig.wait_one_session_each(Duration::from_secs(20)).await?;
    let s = rig.check_store(DRAIN).await?;
    ensure!(s.appended >= start + 300, "{s:?}");
    let complaints = rig.complaints();
    println!(
        "cluster chaos: {s:?}, {} imported records; {} WARN/ERROR log lines:\n{}",
        rig.imported_records,
        complaints.len(),
        complaints.join("\n")
    );
    Ok(())
}
