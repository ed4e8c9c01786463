//! Cluster mode's store side (#13), against a real PostgreSQL (a database per test): lease
//! acquisition, renewal, release and membership; concurrent acquirers; and fencing, where a
//! write through a store whose lease another replica took is rolled back whole.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::db::TestDb;
use idlesync::changes::{ChangeSet, FlagUpdate, Topic};
use idlesync::config::StorageConfig;
use idlesync::message::{extract, ExtractOptions, ImapMeta, MessageRecord};
use idlesync::store::{
    BatchTarget, BatchTx, Fence, Lease, Store, StoreError, TakeoverReason, CLUSTER_CHANNEL,
};
use sqlx::Row;

const ACCOUNT: &str = "acct";
const INBOX: BatchTarget<'static> = BatchTarget {
    account_id: ACCOUNT,
    mailbox: "INBOX",
    uidvalidity: 7,
};
const TTL: Duration = Duration::from_secs(30);
/// A lease taken with this ttl is expired for every later statement (`expires_at = now()`).
const EXPIRED: Duration = Duration::ZERO;
const WAIT: Duration = Duration::from_secs(10);

async fn store(db: &TestDb) -> Result<Store> {
    let cfg = StorageConfig {
        url: db.url.clone(),
        max_connections: 8,
        ..StorageConfig::default()
    };
    let store = Store::connect(&cfg).await?;
    store.migrate().await?;
    Ok(store)
}

fn key(account: &str, mailbox: &str) -> (String, String) {
    (account.to_string(), mailbox.to_string())
}

fn keys(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| key(ACCOUNT, &format!("box{i:03}")))
        .collect()
}

fn fence(node: &str, epoch: i64) -> Fence {
    Fence {
        node: node.into(),
        epoch,
    }
}

fn mail(uid: u32) -> MessageRecord {
    let raw = format!(
        "From: A <a@x.test>\r\nSubject: s{uid}\r\nMessage-ID: <m{uid}@x>\r\n\r\nhello {uid}\r\n"
    );
    let meta = ImapMeta {
        uid,
        flags: String::new(),
        ..ImapMeta::default()
    };
    extract(raw.as_bytes(), &meta, &ExtractOptions::default())
}

async fn commit(store: &Store, target: BatchTarget<'_>, uids: &[u32]) -> Result<(), StoreError> {
    let recs: Vec<_> = uids.iter().map(|u| mail(*u)).collect();
    let last = uids.iter().copied().max().unwrap_or(0);
    store
        .commit_batch(None, target, &recs, last, None, |u| {
            vec![(Topic::Sync, format!("{u:?}"))]
        })
        .await
        .map(|_| ())
}

/// What a mailbox's writes leave behind: `(message rows, last_uid, outbox rows, flags of
/// every row by uid)`.
async fn written(store: &Store, mailbox: &str) -> Result<(i64, Option<i64>, i64, String)> {
    let p = store.pool();
    let messages: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE account_id = $1 AND mailbox = $2")
            .bind(ACCOUNT)
            .bind(mailbox)
            .fetch_one(p)
            .await?;
    let last_uid: Option<i64> = sqlx::query_scalar(
        "SELECT last_uid FROM mailbox_state WHERE account_id = $1 AND mailbox = $2",
    )
    .bind(ACCOUNT)
    .bind(mailbox)
    .fetch_optional(p)
    .await?;
    let outbox: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE account_id = $1 AND mailbox = $2")
            .bind(ACCOUNT)
            .bind(mailbox)
            .fetch_one(p)
            .await?;
    let flags: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(uid::text || ':' || flags, ',' ORDER BY uid) FROM messages \
         WHERE account_id = $1 AND mailbox = $2",
    )
    .bind(ACCOUNT)
    .bind(mailbox)
    .fetch_one(p)
    .await?;
    Ok((messages, last_uid, outbox, flags.unwrap_or_default()))
}

/// `(owner, epoch)` of a lease row.
async fn lease_row(store: &Store, k: &(String, String)) -> Result<(Option<String>, i64)> {
    let r = sqlx::query(
        "SELECT owner, epoch FROM mailbox_leases WHERE account_id = $1 AND mailbox = $2",
    )
    .bind(&k.0)
    .bind(&k.1)
    .fetch_one(store.pool())
    .await?;
    Ok((r.get(0), r.get(1)))
}

fn seen(uid: u32) -> ChangeSet {
    ChangeSet {
        flags: vec![FlagUpdate {
            uid,
            flags: "\\Seen".into(),
            modseq: None,
        }],
        expunged: vec![],
        highest_modseq: None,
    }
}

#[tokio::test]
async fn leases_are_taken_renewed_released_and_left() -> Result<()> {
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    let ks = keys(3);
    store.ensure_leases(&ks).await?;
    let m = store.membership("a", 0).await?;
    ensure!(
        m.live.is_empty() && m.free == 3 && m.next_expiry_ms.is_none(),
        "{m:?}"
    );

    ensure!(store.renew("a", TTL).await?.is_empty());
    let got = store.acquire("a", &ks, 2, 0, TTL).await?;
    let taken: Vec<&Lease> = got.iter().map(|a| &a.lease).collect();
    ensure!(
        taken.iter().map(|l| l.mailbox.as_str()).collect::<Vec<_>>() == ["box000", "box001"],
        "in key order: {taken:?}"
    );
    ensure!(
        got.iter()
            .all(|a| a.lease.epoch == 1 && a.takeover.is_none()),
        "{got:?}"
    );

    ensure!(store.renew("b", TTL).await?.is_empty());
    let b = store.acquire("b", &ks, 5, 0, TTL).await?;
    ensure!(
        b.len() == 1 && b[0].lease.mailbox == "box002",
        "only the free one: {b:?}"
    );
    ensure!(
        store.acquire("b", &ks, 5, 0, TTL).await?.is_empty(),
        "held leases are not taken"
    );

    // Renewal returns what is held; ensure_leases again resets nothing.
    store.ensure_leases(&ks).await?;
    let a_held = store.renew("a", TTL).await?;
    ensure!(
        a_held == taken.iter().map(|l| (*l).clone()).collect::<Vec<_>>(),
        "{a_held:?}"
    );
    let m = store.membership("a", 0).await?;
    ensure!(
        m.live == ["a", "b"] && m.free == 0 && m.stale_free == 0,
        "{m:?}"
    );
    let next = m.next_expiry_ms.context("b's heartbeat expires")?;
    ensure!(next > 0 && next <= 30_000, "{next}");
    let owners = store.lease_owners().await?;
    ensure!(
        owners
            == [
                (ACCOUNT.into(), "box000".into(), "a".into()),
                (ACCOUNT.into(), "box001".into(), "a".into()),
                (ACCOUNT.into(), "box002".into(), "b".into()),
            ],
        "{owners:?}"
    );
    let nodes = store.cluster_nodes().await?;
    ensure!(
        nodes
            .iter()
            .map(|n| (n.node_id.as_str(), n.live, n.leases))
            .collect::<Vec<_>>()
            == [("a", true, 2), ("b", true, 1)],
        "{nodes:?}"
    );
    ensure!(nodes.iter().all(|n| n.heartbeat_age_ms >= 0));

    // Release: only at the epoch held, only by its owner.
    let first = a_held[0].clone();
    let stale = Lease {
        epoch: 0,
        ..first.clone()
    };
    ensure!(store.release("a", &[stale]).await? == 0, "wrong epoch");
    ensure!(
        store.release("b", std::slice::from_ref(&first)).await? == 0,
        "not b's"
    );
    ensure!(store.release("a", std::slice::from_ref(&first)).await? == 1);
    ensure!(store.membership("a", 0).await?.free == 1);
    // Free for a moment only: not stale for a minute.
    ensure!(store.membership("a", 60_000).await?.stale_free == 0);
    ensure!(
        store.acquire("b", &ks, 5, 60_000, TTL).await?.is_empty(),
        "not free long enough"
    );
    let again = store.acquire("b", &ks, 5, 0, TTL).await?;
    ensure!(again.len() == 1 && again[0].lease.epoch == 2, "{again:?}");
    let t = again[0].takeover.context("held before")?;
    ensure!(
        t.reason == TakeoverReason::Released && !t.from_other && t.unowned_ms >= 0,
        "{t:?}"
    );

    // Leave: every lease of a freed, its row gone.
    ensure!(store.leave("a").await? == 1);
    let nodes = store.cluster_nodes().await?;
    ensure!(
        nodes.len() == 1 && nodes[0].node_id == "b" && nodes[0].leases == 2,
        "{nodes:?}"
    );
    let m = store.membership("b", 0).await?;
    ensure!(
        m.live == ["b"] && m.free == 1 && m.next_expiry_ms.is_none(),
        "{m:?}"
    );
    ensure!(store.lease_owners().await?.len() == 2);

    // Forget: free rows go, a live replica's stay (unless it is the caller's).
    store.forget_leases("c", &ks).await?;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailbox_leases")
        .fetch_one(store.pool())
        .await?;
    ensure!(left == 2, "b's two leases stay: {left}");
    store.forget_leases("b", &ks[..2]).await?;
    let left: Vec<String> = sqlx::query_scalar("SELECT mailbox FROM mailbox_leases")
        .fetch_all(store.pool())
        .await?;
    ensure!(left == ["box002"], "{left:?}");
    store.pool().close().await;
    Ok(())
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_its_old_owner_no_longer_renews_it() -> Result<()> {
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    let ks = keys(2);
    store.ensure_leases(&ks).await?;
    store.renew("a", TTL).await?;
    let a = store.acquire("a", &ks[..1], 1, 0, EXPIRED).await?;
    ensure!(a.len() == 1 && a[0].lease.epoch == 1);
    let m = store.membership("b", 0).await?;
    ensure!(m.free == 2, "an expired lease counts as free: {m:?}");

    let b = store.acquire("b", &ks[..1], 1, 0, TTL).await?;
    ensure!(b.len() == 1 && b[0].lease.epoch == 2, "{b:?}");
    let t = b[0].takeover.context("a takeover")?;
    ensure!(
        t.reason == TakeoverReason::Expired && t.from_other && t.unowned_ms >= 0,
        "{t:?}"
    );
    ensure!(store.renew("a", TTL).await?.is_empty(), "a lost it");
    ensure!(lease_row(&store, &ks[0]).await? == (Some("b".into()), 2));

    // An expired lease its owner renews before anyone took it stays its own, same epoch.
    let own = store.acquire("a", &ks[1..], 1, 0, EXPIRED).await?;
    ensure!(own.len() == 1 && own[0].lease.epoch == 1);
    let renewed = store.renew("a", TTL).await?;
    ensure!(renewed == [own[0].lease.clone()], "{renewed:?}");
    ensure!(
        store.acquire("b", &ks, 2, 0, TTL).await?.is_empty(),
        "renewed again"
    );
    store.pool().close().await;
    Ok(())
}

#[tokio::test]
async fn joining_releasing_and_leaving_notify_and_renewing_does_not() -> Result<()> {
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    let ks = keys(1);
    store.ensure_leases(&ks).await?;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await?;
    listener.listen(CLUSTER_CHANNEL).await?;
    let mut next = async || -> Result<String> {
        let n = tokio::time::timeout(WAIT, listener.recv()).await??;
        Ok(n.payload().to_string())
    };

    store.renew("a", TTL).await?;
    ensure!(next().await? == "a", "a joined");
    // Notifications arrive in commit order: had a's second renewal notified, "a" would come
    // before "b".
    store.renew("a", TTL).await?;
    store.renew("b", TTL).await?;
    ensure!(next().await? == "b", "only b's join");
    let taken = store.acquire("b", &ks, 1, 0, TTL).await?;
    ensure!(store.release("b", &[taken[0].lease.clone()]).await? == 1);
    ensure!(next().await? == "b", "b released");
    // Releasing nothing says nothing: the next one is a's leaving.
    ensure!(store.release("b", &[taken[0].lease.clone()]).await? == 0);
    store.leave("a").await?;
    ensure!(next().await? == "a", "a left");
    // A replica whose heartbeat lapsed joins again.
    store.renew("c", EXPIRED).await?;
    ensure!(next().await? == "c");
    store.renew("c", TTL).await?;
    ensure!(next().await? == "c", "c's heartbeat had lapsed");
    store.pool().close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_acquiring_at_once_never_take_the_same_lease_and_epochs_only_grow() -> Result<()> {
    const NODES: [&str; 4] = ["n0", "n1", "n2", "n3"];
    const LEASES: usize = 200;
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    let ks = keys(LEASES);
    store.ensure_leases(&ks).await?;

    // Every acquisition of every round, by (key, epoch) -> node.
    let mut taken: BTreeMap<((String, String), i64), &str> = BTreeMap::new();
    for round in 0..6 {
        // First round long-lived: every lease is taken exactly once. Later rounds take
        // instantly expired leases, so one may change hands several times within a round.
        let ttl = if round == 0 { TTL } else { EXPIRED };
        let tasks: Vec<_> = NODES
            .iter()
            .map(|node| {
                let (store, ks) = (store.clone(), ks.clone());
                tokio::spawn(async move { store.acquire(node, &ks, LEASES, 0, ttl).await })
            })
            .collect();
        let mut this_round = BTreeSet::new();
        for (node, t) in NODES.iter().zip(tasks) {
            for a in t.await?? {
                let k = (a.lease.account_id, a.lease.mailbox);
                this_round.insert(k.clone());
                let prev = taken.insert((k.clone(), a.lease.epoch), node);
                ensure!(
                    prev.is_none(),
                    "{k:?} epoch {} taken by {prev:?} and {node}",
                    a.lease.epoch
                );
            }
        }
        if round == 0 {
            ensure!(
                this_round.len() == LEASES,
                "all taken once: {}",
                this_round.len()
            );
            let per_node = taken.values().fold(BTreeMap::new(), |mut m, n| {
                *m.entry(*n).or_insert(0) += 1;
                m
            });
            ensure!(
                per_node.values().sum::<i32>() == LEASES as i32,
                "{per_node:?}"
            );
            // Expire them all for the next rounds.
            sqlx::query("UPDATE mailbox_leases SET expires_at = now()")
                .execute(store.pool())
                .await?;
        }
    }
    // Each lease's epochs were handed out one by one, none skipped, none twice: the row's
    // epoch is the number of times it was taken.
    for k in &ks {
        let (owner, epoch) = lease_row(&store, k).await?;
        let epochs: Vec<i64> = taken
            .range((k.clone(), 0)..=(k.clone(), i64::MAX))
            .map(|e| e.0 .1)
            .collect();
        ensure!(
            epochs == (1..=epoch).collect::<Vec<_>>(),
            "{k:?}: {epochs:?}, row at {epoch}"
        );
        ensure!(
            owner.as_deref() == taken.get(&(k.clone(), epoch)).copied(),
            "{k:?} owner"
        );
    }
    store.pool().close().await;
    Ok(())
}

/// A mailbox with state (uidvalidity 7, uids 1–2 stored, one outbox row each commit) whose
/// lease `a` took at epoch 1 and, once that expired, `b` at epoch 2.
async fn taken_over(store: &Store) -> Result<()> {
    store
        .start_epoch(ACCOUNT, "INBOX", 7, Some(1), None, None)
        .await?;
    commit(store, INBOX, &[1, 2]).await?;
    let k = [key(ACCOUNT, "INBOX")];
    store.ensure_leases(&k).await?;
    let a = store.acquire("a", &k, 1, 0, EXPIRED).await?;
    ensure!(a.len() == 1 && a[0].lease.epoch == 1);
    let b = store.acquire("b", &k, 1, 0, TTL).await?;
    ensure!(b.len() == 1 && b[0].lease.epoch == 2);
    Ok(())
}

/// A transaction opened early ([`Store::begin_early`]). It only takes a connection idle in the
/// pool, and a connection just used goes back to the pool on a task of its own, which nothing
/// lets us await: tried again for a bounded while.
async fn early(store: &Store) -> Result<BatchTx> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(tx) = store.begin_early().await {
            return Ok(tx);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no idle pooled connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_fenced(r: Result<impl std::fmt::Debug, StoreError>, epoch: i64) -> Result<()> {
    match r {
        Err(StoreError::Fenced {
            account,
            mailbox,
            epoch: e,
        }) if account == ACCOUNT && mailbox == "INBOX" && e == epoch => Ok(()),
        other => anyhow::bail!("expected Fenced at epoch {epoch}, got {other:?}"),
    }
}

#[tokio::test]
async fn writes_through_a_lost_lease_are_rejected_and_write_nothing() -> Result<()> {
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    taken_over(&store).await?;
    let before = written(&store, "INBOX").await?;
    ensure!(before == (2, Some(2), 1, "1:,2:".into()), "{before:?}");

    // a's lease expired and b took it; b at an older epoch (an earlier task of b) is no
    // better.
    for (node, epoch) in [("a", 1), ("b", 1), ("c", 2)] {
        let stale = store.fenced(fence(node, epoch));
        is_fenced(commit(&stale, INBOX, &[3, 4]).await, epoch)?;
        let early = early(&stale).await?;
        let recs = [mail(3)];
        let r = stale
            .commit_batch(Some(early), INBOX, &recs, 3, None, |_| {
                vec![(Topic::Sync, "x".into())]
            })
            .await;
        is_fenced(r, epoch)?;
        is_fenced(
            stale
                .apply_changes(INBOX, &seen(1), |_| vec!["x".into()])
                .await,
            epoch,
        )?;
        is_fenced(
            stale
                .start_epoch(ACCOUNT, "INBOX", 8, Some(1), None, None)
                .await,
            epoch,
        )?;
        is_fenced(
            stale
                .start_epoch(ACCOUNT, "INBOX", 8, Some(1), None, Some("reset"))
                .await,
            epoch,
        )?;
        let after = written(&store, "INBOX").await?;
        ensure!(after == before, "{node}@{epoch} wrote: {after:?}");
        let state = store.sync_state(ACCOUNT, "INBOX").await?.context("state")?;
        ensure!(state.uidvalidity == 7 && state.last_uid == 2, "{state:?}");
    }

    // b at its epoch writes as usual, and so does an unfenced store (single-node mode).
    let owner = store.fenced(fence("b", 2));
    commit(&owner, INBOX, &[3]).await?;
    let early = early(&owner).await?;
    let recs = [mail(4)];
    owner
        .commit_batch(Some(early), INBOX, &recs, 4, None, |u| {
            vec![(Topic::Sync, format!("{u:?}"))]
        })
        .await?;
    let applied = owner
        .apply_changes(INBOX, &seen(1), |_| vec!["x".into()])
        .await?;
    ensure!(applied.flags == [(1, "\\Seen".into())] && applied.outbox.len() == 1);
    ensure!(written(&store, "INBOX").await? == (4, Some(4), 4, "1:\\Seen,2:,3:,4:".into()));
    owner
        .start_epoch(ACCOUNT, "INBOX", 8, Some(1), None, None)
        .await?;
    let reset = owner
        .start_epoch(ACCOUNT, "INBOX", 9, Some(1), None, Some("reset"))
        .await?;
    ensure!(reset.is_some_and(|r| r.id > 0));
    let state = store.sync_state(ACCOUNT, "INBOX").await?.context("state")?;
    ensure!(state.uidvalidity == 9 && state.last_uid == 0, "{state:?}");
    store.pool().close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_commit_in_flight() -> Result<()> {
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    store
        .start_epoch(ACCOUNT, "INBOX", 7, Some(1), None, None)
        .await?;
    let k = [key(ACCOUNT, "INBOX")];
    store.ensure_leases(&k).await?;
    // Long enough for the commit below to pass its check, short enough to wait out.
    let a = store.acquire("a", &k, 1, 0, Duration::from_secs(3)).await?;
    ensure!(a.len() == 1);
    let fenced = store.fenced(fence("a", a[0].lease.epoch));

    // Hold the account's lock, so a's commit stops right after its lease check (which comes
    // first and holds the lease row FOR KEY SHARE).
    let test = db.pool().await?;
    sqlx::query("INSERT INTO account_locks (account_id, batches) VALUES ($1, 0)")
        .bind(ACCOUNT)
        .execute(&test)
        .await?;
    let mut lock = test.begin().await?;
    sqlx::query("SELECT 1 FROM account_locks WHERE account_id = $1 FOR UPDATE")
        .bind(ACCOUNT)
        .fetch_one(&mut *lock)
        .await?;
    let commit_task = tokio::spawn(async move { commit(&fenced, INBOX, &[1]).await });
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
        )
        .fetch_one(&test)
        .await?;
        if waiting > 0 {
            break;
        }
        ensure!(
            !commit_task.is_finished(),
            "the commit did not wait: {:?}",
            commit_task.await?
        );
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the commit never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its lease expires while the commit is in flight …
    common::wait_until(WAIT, || async {
        let expired: bool = sqlx::query_scalar(
            "SELECT expires_at <= now() FROM mailbox_leases WHERE mailbox = 'INBOX'",
        )
        .fetch_one(&test)
        .await?;
        Ok(expired)
    })
    .await?;
    // … yet nobody can take it: acquire skips the row, and locking it as acquire does waits.
    ensure!(
        store.acquire("b", &k, 1, 0, TTL).await?.is_empty(),
        "taken mid-commit"
    );
    let mut probe = test.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '100ms'")
        .execute(&mut *probe)
        .await?;
    let blocked = sqlx::query("SELECT 1 FROM mailbox_leases WHERE mailbox = 'INBOX' FOR UPDATE")
        .execute(&mut *probe)
        .await;
    ensure!(
        matches!(&blocked, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03")),
        "taking the lease row did not wait: {blocked:?}"
    );
    probe.rollback().await?;
    ensure!(!commit_task.is_finished());

    // The commit ends (it checked while the lease was a's) and only then changes hands.
    lock.commit().await?;
    tokio::time::timeout(WAIT, commit_task).await???;
    ensure!(written(&store, "INBOX").await?.0 == 1);
    let b = store.acquire("b", &k, 1, 0, TTL).await?;
    ensure!(b.len() == 1 && b[0].lease.epoch == 2, "{b:?}");
    let late = store.fenced(fence("a", 1));
    is_fenced(commit(&late, INBOX, &[2]).await, 1)?;
    test.close().await;
    store.pool().close().await;
    Ok(())
}

#[tokio::test]
async fn each_replica_drains_the_outbox_of_the_mailboxes_it_holds() -> Result<()> {
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    let other = BatchTarget {
        mailbox: "Other",
        ..INBOX
    };
    let ks = [key(ACCOUNT, "INBOX"), key(ACCOUNT, "Other")];
    store.ensure_leases(&ks).await?;
    // "old" commits to INBOX and leaves without publishing; b takes INBOX, c takes Other.
    let old = store.acquire("old", &ks[..1], 1, 0, TTL).await?;
    let old_store = store.fenced(fence("old", old[0].lease.epoch));
    commit(&old_store, INBOX, &[1]).await?;
    store.leave("old").await?;
    let b = store.acquire("b", &ks[..1], 1, 0, TTL).await?;
    let c = store.acquire("c", &ks[1..], 1, 0, TTL).await?;
    let (b_store, c_store) = (
        store.fenced(fence("b", b[0].lease.epoch)),
        store.fenced(fence("c", c[0].lease.epoch)),
    );
    commit(&c_store, other, &[1]).await?;
    commit(&b_store, INBOX, &[2]).await?;
    commit(&c_store, other, &[2]).await?;

    let ids = |rows: Vec<idlesync::store::OutboxRow>| -> Vec<(String, String, i64)> {
        rows.into_iter()
            .map(|r| (r.mailbox, r.payload, r.id))
            .collect()
    };
    let all = ids(store.outbox_pending(100).await?);
    ensure!(all.len() == 4, "{all:?}");
    let of = |mailbox: &str| -> Vec<(String, String, i64)> {
        all.iter().filter(|r| r.0 == mailbox).cloned().collect()
    };
    ensure!(
        ids(store.outbox_pending_owned("b", 100).await?) == of("INBOX"),
        "b: INBOX, old's first"
    );
    ensure!(of("INBOX")[0].1 == "[1]", "{:?}", of("INBOX"));
    ensure!(ids(store.outbox_pending_owned("c", 100).await?) == of("Other"));
    ensure!(ids(store.outbox_pending_owned("c", 1).await?) == of("Other")[..1]);
    ensure!(store.outbox_pending_owned("old", 100).await?.is_empty());
    // A lease that expired is nobody's to drain.
    sqlx::query("UPDATE mailbox_leases SET expires_at = now() WHERE owner = 'c'")
        .execute(store.pool())
        .await?;
    ensure!(store.outbox_pending_owned("c", 100).await?.is_empty());
    store.pool().close().await;
    Ok(())
}

/// #22 defect 4: a removed mailbox's lease row is gone, so its unpublished records match no
/// owner; one replica (the live one with the lowest node id) drains them instead of leaving
/// them to the retention.
#[tokio::test]
async fn records_of_a_removed_mailbox_are_drained_by_one_replica() -> Result<()> {
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    let ks = [key(ACCOUNT, "INBOX")];
    store.ensure_leases(&ks).await?;
    let a = store.acquire("a", &ks, 1, 0, TTL).await?;
    commit(&store.fenced(fence("a", a[0].lease.epoch)), INBOX, &[1]).await?;
    store.forget_leases("a", &ks).await?;
    store.leave("a").await?;
    store.renew("b", TTL).await?;
    store.renew("c", TTL).await?;
    let orphans = store.outbox_pending(100).await?;
    ensure!(orphans.len() == 1, "{orphans:?}");
    let got = store.outbox_pending_owned("b", 100).await?;
    ensure!(
        got.iter().map(|r| r.id).eq(orphans.iter().map(|r| r.id)),
        "b drains the orphan: {got:?}"
    );
    ensure!(
        store.outbox_pending_owned("c", 100).await?.is_empty(),
        "only b"
    );
    store.pool().close().await;
    Ok(())
}

#[tokio::test]
async fn renewing_forgets_replicas_dead_for_over_an_hour_and_keeps_the_recent_dead() -> Result<()> {
    let db = TestDb::postgres().await?;
    let store = store(&db).await?;
    let pool = db.pool().await?;
    for (node, age) in [("long-dead", "2 hours"), ("just-dead", "5 minutes")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cluster_nodes (node_id, expires_at) VALUES ('{node}', now() - interval '{age}')"
        )))
        .execute(&pool)
        .await?;
    }
    store.renew("a", TTL).await?;
    let nodes: Vec<(String, bool)> = store
        .cluster_nodes()
        .await?
        .into_iter()
        .map(|n| (n.node_id, n.live))
        .collect();
    ensure!(
        nodes == [("a".to_string(), true), ("just-dead".to_string(), false)],
        "{nodes:?}"
    );
    store.pool().close().await;
    Ok(())
}
