//! #22 defect 2: a replica cut off from PostgreSQL alone (the others still reach it) must stop
//! its mailboxes before its leases expire, so that no mailbox is ever IDLEd by two replicas
//! while the survivors take over. The cut is a silent network (a [`Proxy`] in black-hole mode
//! that only `r2` goes through): its store calls hang rather than fail, the worst case.
//! Also #22 defect 9's `idlesync_leases_free`.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::cluster::Rig;
use common::proxy::{Mode, Proxy};

/// Start-up: two replicas race for 30 leases, connect and IDLE.
const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_postgres_alone_never_leaves_a_mailbox_idled_twice() -> Result<()> {
    let mut rig = Rig::start(1, false).await?;
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse()?;
    let proxy = Proxy::start(pg).await?;
    let via = rig
        .db_url
        .replacen("127.0.0.1:5432", &proxy.addr().to_string(), 1);
    ensure!(via != rig.db_url, "unexpected storage URL {}", rig.db_url);
    rig.add_replica_with_db(&via)?;
    rig.wait_settled(&[0, 1], true, SETTLE).await?;
    rig.proxy.reset_max();
    // #22 defect 9: the leases nobody holds, cluster-wide: none once settled.
    for r in &rig.replicas {
        let text = r.get("/metrics").await?;
        ensure!(
            text.contains("idlesync_leases_free"),
            "{}: no idlesync_leases_free on /metrics",
            r.node
        );
        // Set each round from the membership query, before that round's takes: the next
        // round's figure.
        common::wait_until(Duration::from_secs(10), || async {
            Ok(r.metric("idlesync_leases_free", "").await? == 0.0)
        })
        .await?;
    }

    // r2 goes silent towards PostgreSQL: r1 takes its mailboxes once its leases expire.
    proxy.set_mode(Mode::Blackhole);
    rig.wait_settled(&[0], true, SETTLE)
        .await
        .context("r1 did not take every mailbox")?;
    let double = rig.double_idle();
    ensure!(
        double.is_empty(),
        "two sessions IDLE at once on one mailbox while r2 was cut off: {double:?}; overlaps {:?}\n{}",
        rig.proxy.overlaps(),
        rig.logs()
    );

    // Back: r2 rejoins and takes its share again, still one session per mailbox.
    proxy.set_mode(Mode::Forward);
    rig.wait_settled(&[0, 1], true, SETTLE).await?;
    let double = rig.double_idle();
    ensure!(
        double.is_empty(),
        "two sessions IDLE at once on one mailbox after r2 came back: {double:?}\n{}",
        rig.logs()
    );
    Ok(())
}
