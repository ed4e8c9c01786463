//! #22 defect 3: the lease loop's minimum tick holds whatever the `NOTIFY` hints say. Every
//! replica ticked on every hint, and a round that releases a lease sends one: with a mailbox
//! that cannot start (taken, refused, released, NOTIFY) the replicas rewrote every held lease
//! in a tight loop. Here the test itself floods the channel and counts the renewals (updates
//! of the replica's `cluster_nodes` row, from PostgreSQL's table statistics).

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::cluster::Rig;
use sqlx::AnyPool;

const SETTLE: Duration = Duration::from_secs(60);
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(3);

/// Updates of `cluster_nodes` so far (each renewal is one), as the statistics say. Each
/// backend flushes its counts at most once a second, so read well after the fact.
async fn node_updates(pool: &AnyPool) -> Result<i64> {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .ok();
    Ok(sqlx::query_scalar(
        "SELECT (n_tup_upd)::bigint FROM pg_stat_user_tables WHERE relname = 'cluster_nodes'",
    )
    .fetch_one(pool)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_notify_hints_does_not_speed_up_the_lease_loop() -> Result<()> {
    let rig = Rig::start(1, false).await?;
    rig.wait_settled(&[0], true, SETTLE).await?;
    let pool = rig.pool().await?;
    let before = node_updates(&pool).await?;
    let start = tokio::time::Instant::now();
    let mut sent = 0;
    while start.elapsed() < FLOOD {
        sqlx::query("NOTIFY idlesync_cluster")
            .execute(&pool)
            .await?;
        sent += 1;
    }
    // Every backend (the replica's too) flushes its statistics within a second or so of
    // going idle; renewals go on at 1 s meanwhile, counted in the bound below.
    let wait = Duration::from_secs(2);
    tokio::time::sleep(wait).await;
    let renewals = node_updates(&pool).await? - before;
    // renew_every 1 s, a minimum tick of 100 ms: at most one round per 100 ms.
    let bound = ((FLOOD + wait).as_millis() / 100 + 5) as i64;
    ensure!(
        renewals <= bound,
        "{renewals} renewals during a {FLOOD:?} flood of {sent} NOTIFYs (+{wait:?}), over {bound}\n{}",
        rig.logs()
    );
    println!("{sent} NOTIFYs in {FLOOD:?}: {renewals} renewals");
    Ok(())
}
