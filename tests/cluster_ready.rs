//! #22 defect 7: a joining replica is ready only once it holds its share. A pod that was ready
//! before holding anything let a rolling update (maxSurge 1, maxUnavailable 1) retire the old
//! pods before the new ones had taken over, so mailboxes moved twice.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::cluster::{Rig, USERS};

/// Start-up, and the join's handover.
const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_is_ready_only_once_it_holds_its_share() -> Result<()> {
    let mut rig = Rig::start(1, false).await?;
    rig.wait_settled(&[0], true, SETTLE).await?;
    let i = rig.add_replica()?;
    let r2 = &rig.replicas[i];
    // The first moment /readyz says 200, r2 must already hold its share (15 of 30).
    let end = tokio::time::Instant::now() + SETTLE;
    loop {
        if r2.get("/readyz").await.is_ok() {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < end,
            "r2 not ready within {SETTLE:?}\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = r2.held().await?;
    ensure!(
        held >= USERS / 2,
        "r2 was ready holding {held} of its {} mailboxes\n{}",
        USERS / 2,
        rig.logs()
    );
    rig.wait_settled(&[0, 1], true, SETTLE).await?;
    Ok(())
}
