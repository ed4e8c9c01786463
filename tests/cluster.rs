//! Cluster mode (#13) with real processes: 3 replicas (`idlesync run`), one PostgreSQL, one
//! Dovecot, 30 mailboxes. The "What it must show", (a) to (f), one test each; the rig
//! is tests/common/cluster.rs.
//!
//! Each test runs three or four daemons with 30 IMAP sessions between them, so the tests of this
//! file run one at a time (a static lock), not side by side on a small machine.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::cluster::{account_index, idle_count::IdleCount, Rig, LEASE_TTL, USERS};

/// Start-up: three replicas race for 30 leases, connect and IDLE.
const SETTLE: Duration = Duration::from_secs(60);
/// A takeover: `lease_ttl` plus a connect, with room for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(30);
/// Stragglers stored and announced at the end.
const DRAIN: Duration = Duration::from_secs(60);
/// Between two messages of a background flow.
const PACE: Duration = Duration::from_millis(40);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn all_users() -> Vec<usize> {
    (0..USERS).collect()
}

/// The user indexes of these accounts.
fn users_of(accounts: &BTreeSet<String>) -> Vec<usize> {
    accounts.iter().filter_map(|a| account_index(a)).collect()
}

/// Fails when a user ever had two sessions in IDLE at once (since the last reset).
fn ensure_single_idle(rig: &Rig) -> Result<()> {
    let double = rig.double_idle();
    ensure!(
        double.is_empty(),
        "two sessions IDLE at once on one mailbox: {double:?}; overlaps {:?}\n{}",
        rig.proxy.overlaps(),
        rig.logs()
    );
    Ok(())
}

/// The proxy itself, against a silent upstream: LOGIN, IDLE and DONE split across reads, two
/// sessions of one user, and closes.
#[tokio::test]
async fn idle_count_proxy_follows_sessions() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = upstream.local_addr()?;
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = upstream.accept().await {
            held.push(s);
        }
    });
    let proxy = IdleCount::start(target).await?;
    let d = Duration::from_secs(10);
    let mut a = tokio::net::TcpStream::connect(proxy.addr()).await?;
    let mut b = tokio::net::TcpStream::connect(proxy.addr()).await?;
    for chunk in [
        &b"a1 LOGIN \"u\\\"7\" \"pw\"\r\na2 SEL"[..],
        b"ECT INBOX\r\na3 ID",
        b"LE\r\n",
    ] {
        a.write_all(chunk).await?;
        a.flush().await?;
    }
    proxy
        .wait_for(d, |c| c.get("u\"7").is_some_and(|c| c.idle == 1))
        .await?;
    // A literal that looks like IDLE is not one.
    b.write_all(b"b1 LOGIN u\"7 pw\r\nb2 APPEND INBOX {6}\r\nIDLE\r\n\r\nb3 IDLE\r\n")
        .await?;
    proxy
        .wait_for(d, |c| {
            c.get("u\"7").is_some_and(|c| c.idle == 2 && c.open == 2)
        })
        .await?;
    ensure!(proxy.count("u\"7").max_idle == 2 && proxy.overlaps().len() == 1);
    a.write_all(b"DONE\r\n").await?;
    proxy
        .wait_for(d, |c| c.get("u\"7").is_some_and(|c| c.idle == 1))
        .await?;
    drop(b);
    proxy
        .wait_for(d, |c| {
            c.get("u\"7")
                .is_some_and(|c| c.idle == 0 && c.open == 1 && c.max_idle == 2)
        })
        .await?;
    proxy.reset_max();
    ensure!(proxy.count("u\"7").max_idle == 0 && proxy.overlaps().is_empty());
    hold.abort();
    Ok(())
}

/// (a) One owner: every mailbox is IDLEd by exactly one replica, 10 each; all replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_per_mailbox() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(3, false).await?;
    let own = rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    let held = own.held();
    ensure!(
        held.len() == 3 && held.values().all(|&n| n == 10),
        "held {held:?}"
    );
    rig.wait_one_session_each(Duration::from_secs(20)).await?;
    // The gauges agree (they are set by each replica's loop, hence a bounded wait).
    for r in &rig.replicas {
        let gauges = common::wait_until(Duration::from_secs(10), || async {
            Ok(r.metric("idlesync_leases_held", "").await? == 10.0
                && r.metric("idlesync_cluster_nodes", "").await? == 3.0)
        })
        .await;
        ensure!(
            gauges.is_ok(),
            "{}: idlesync_leases_held {}, idlesync_cluster_nodes {}",
            r.node,
            r.metric("idlesync_leases_held", "").await?,
            r.metric("idlesync_cluster_nodes", "").await?
        );
    }

    // Each owner stores and announces its mailboxes' mail.
    rig.append(&all_users(), 1).await?;
    let s = rig.check_store(DRAIN).await?;
    ensure!(s.stored == USERS, "{s:?}");
    rig.wait_one_session_each(Duration::from_secs(20)).await?;
    ensure_single_idle(&rig)?;
    println!("one owner: held {held:?}, {s:?}");
    Ok(())
}

/// (b) kill -9 while mail flows: the dead replica's mailboxes are owned again after its leases
/// expire; nothing lost or doubled, every stored UID announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_moves_mailboxes_and_loses_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(3, false).await?;
    let before = rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    let orphans = before.of("r2");
    let flow = rig.flow(all_users(), PACE);
    rig.wait_appended(30, Duration::from_secs(30)).await?;

    rig.replicas[1].kill9().await?;
    let killed = tokio::time::Instant::now();
    let after = rig.wait_settled(&[0, 2], true, TAKEOVER).await?;
    let took = killed.elapsed();
    for a in &orphans {
        ensure!(after.owner[a] != "r2", "{a} still owned by r2");
    }
    // Mail keeps arriving after the takeover too.
    let n = rig.appended().len();
    rig.wait_appended(n + 30, Duration::from_secs(30)).await?;
    flow.stop().await?;

    rig.wait_one_session_each(Duration::from_secs(20)).await?;
    ensure_single_idle(&rig)?;
    let mut expired = 0.0;
    for i in [0, 2] {
        let r = &rig.replicas[i];
        expired += r
            .metric("idlesync_lease_takeovers_total", "reason=\"expired\"")
            .await?;
    }
    ensure!(
        expired >= orphans.len() as f64,
        "{expired} expired takeovers for {} orphaned mailboxes",
        orphans.len()
    );
    let mut timed = 0.0;
    for i in [0, 2] {
        timed += rig.replicas[i]
            .metric("idlesync_lease_takeover_seconds_count", "")
            .await?;
    }
    ensure!(
        timed >= orphans.len() as f64,
        "{timed} takeovers in idlesync_lease_takeover_seconds"
    );
    let s = rig.check_store(DRAIN).await?;
    println!(
        "kill -9: {} mailboxes owned again {took:?} after the kill (lease_ttl {LEASE_TTL:?}), {s:?}",
        orphans.len()
    );
    Ok(())
}

/// (c) Fencing: a replica paused past `lease_ttl` loses its mailboxes; when it resumes, its
/// commits for them are rejected and counted, and it drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replica_is_fenced_and_drops_its_mailboxes() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(3, false).await?;
    let before = rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    let lost = before.of("r3");
    let lost_users = users_of(&lost);

    rig.replicas[2].signal("STOP")?;
    // Its sessions stay open (and in IDLE) while it is stopped: no single-session check here.
    let after = rig.wait_settled(&[0, 1], false, TAKEOVER).await?;
    for a in &lost {
        ensure!(after.owner[a] != "r3", "{a} still owned by r3");
    }
    // Mail for the lost mailboxes, stored by their new owners while r3 sleeps; r3's stale
    // sessions get the same EXISTS.
    rig.append(&lost_users, 2).await?;
    rig.check_store(DRAIN).await?;

    rig.replicas[2].signal("CONT")?;
    rig.replicas[2].wait_fenced(Duration::from_secs(20)).await?;
    rig.wait_settled(&[0, 1, 2], true, TAKEOVER).await?;
    rig.wait_one_session_each(Duration::from_secs(20)).await?;
    // Two sessions in IDLE on exactly the mailboxes r3 held while it was stopped: its frozen
    // sessions beside their new owners'. So the proxy does see an overlap when there is one.
    let double: BTreeSet<String> = rig.double_idle().into_iter().map(|(u, _)| u).collect();
    let lost_user_names: BTreeSet<String> = lost_users
        .iter()
        .map(|&i| common::cluster::user(i))
        .collect();
    ensure!(
        double == lost_user_names,
        "double IDLE on {double:?}, r3 held {lost_user_names:?}"
    );
    let s = rig.check_store(DRAIN).await?;
    println!(
        "fencing: {} mailboxes moved, {} rejections, {s:?}",
        lost.len(),
        rig.replicas[2]
            .metric("idlesync_fencing_rejections_total", "")
            .await?
    );
    Ok(())
}

/// (d) Rolling restart: SIGTERM each replica in turn (the others take its mailboxes at once,
/// released rather than expired) and start it again, while 300 messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_and_doubles_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(3, false).await?;
    rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    let flow = rig.flow(all_users(), PACE);
    rolling_restart(&mut rig, 0).await?;
    let during = rig.appended().len();
    rig.wait_appended(300, Duration::from_secs(60)).await?;
    flow.stop().await?;
    rig.wait_one_session_each(Duration::from_secs(20)).await?;
    ensure_single_idle(&rig)?;
    let s = rig.check_store(DRAIN).await?;
    ensure!(s.appended >= 300, "{s:?}");
    println!("rolling restart: {during} messages appended during the restarts, {s:?}");
    Ok(())
}

/// Restarts r1, r2, r3 in turn (see [`rolling_restart_loses_and_doubles_nothing`]), each
/// once another 75 messages (counted from `from`) have been appended, so that mail arrives
/// before, between and after the restarts.
async fn rolling_restart(rig: &mut Rig, from: usize) -> Result<()> {
    for i in 0..3 {
        rig.wait_appended(from + 75 * (i + 1), Duration::from_secs(30))
            .await?;
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        let node = rig.replicas[i].node.clone();
        let mine = rig.replicas[i].held().await?;
        let released_before = released(rig, &others).await?;
        rig.replicas[i].term(Duration::from_secs(20)).await?;
        let own = rig.wait_settled(&others, true, TAKEOVER).await?;
        ensure!(own.of(&node).is_empty());
        let taken = released(rig, &others).await? - released_before;
        ensure!(
            taken >= mine as f64,
            "{node} held {mine}; the others took {taken} released leases"
        );
        rig.replicas[i].spawn()?;
        rig.replicas[i].wait_ready(TAKEOVER).await?;
        rig.wait_settled(&[0, 1, 2], true, TAKEOVER).await?;
    }
    Ok(())
}

/// Leases the replicas `of` took after their owner released them, in all.
async fn released(rig: &Rig, of: &[usize]) -> Result<f64> {
    let mut n = 0.0;
    for &j in of {
        n += rig.replicas[j]
            .metric("idlesync_lease_takeovers_total", "reason=\"released\"")
            .await?;
    }
    Ok(n)
}

/// (e) Join: a fourth replica joins; the others hand over their surplus, 7 or 8 each, and at
/// no moment do two sessions IDLE on one mailbox (measured from the start, start-up included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_gets_its_share_without_double_idle() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(3, false).await?;
    rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    let flow = rig.flow(all_users(), PACE);
    rig.wait_appended(30, Duration::from_secs(30)).await?;
    rig.add_replica()?;
    let own = rig.wait_settled(&[0, 1, 2, 3], true, TAKEOVER).await?;
    let held = own.held();
    ensure!(
        held.len() == 4 && held.values().all(|&n| n == 7 || n == 8),
        "held {held:?}"
    );
    ensure!(held.values().sum::<usize>() == USERS);
    let n = rig.appended().len();
    rig.wait_appended(n + 30, Duration::from_secs(30)).await?;
    flow.stop().await?;
    rig.wait_one_session_each(Duration::from_secs(20)).await?;
    ensure_single_idle(&rig)?;
    let s = rig.check_store(DRAIN).await?;
    println!("join: held {held:?}, {s:?}");
    Ok(())
}

/// (f) PostgreSQL down for 20 s while mail arrives: no replica exits, the mail is stored once
/// after it returns, and ownership settles again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_20s() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::start(3, true).await?;
    rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    let flow = rig.flow(all_users(), Duration::from_millis(100));
    rig.wait_appended(30, Duration::from_secs(30)).await?;

    rig.own_pg()?.stop()?;
    let down = tokio::time::Instant::now();
    let during = rig.appended().len();
    // Unable to renew for lease_ttl, every replica leaves IDLE and logs out (another one that
    // can reach the database might take the mailboxes), and none is ready.
    rig.proxy
        .wait_for(Duration::from_secs(15), |c| {
            c.values().all(|c| c.open == 0 && c.idle == 0)
        })
        .await?;
    for r in &rig.replicas {
        common::wait_until(Duration::from_secs(15), || async {
            Ok(r.get("/readyz").await.is_err())
        })
        .await?;
    }
    // The rest of the 20 s outage (the fault itself), mail arriving meanwhile.
    tokio::time::sleep_until(down + Duration::from_secs(20)).await;
    let during = rig.appended().len() - during;
    for r in &mut rig.replicas {
        ensure!(
            r.exited()?.is_none(),
            "{} exited while PostgreSQL was down\n{}",
            r.node,
            r.log_tail(40)
        );
    }
    rig.own_pg()?.resume()?;

    rig.wait_settled(&[0, 1, 2], true, SETTLE).await?;
    flow.stop().await?;
    rig.wait_one_session_each(Duration::from_secs(20)).await?;
    let s = rig.check_store(DRAIN).await?;
    for r in &mut rig.replicas {
        ensure!(r.exited()?.is_none(), "{} exited", r.node);
    }
    ensure_single_idle(&rig)?;
    ensure!(during > 0, "no mail arrived during the outage");
    println!("postgres down: {during} messages appended during the outage, {s:?}");
    Ok(())
}
