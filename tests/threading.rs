//! Conversations, through Dovecot and the real daemon, on PostgreSQL and SQLite alike: out-of-
//! order arrival, replies across two watched mailboxes, In-Reply-To without References, merges,
//! and equal subjects that must not (or, opted in, must) link.

mod common;
mod corpus;

use anyhow::{ensure, Result};
use common::db::Kind;
use corpus::harness::{env, Env};

/// A message with these threading headers. `day` orders the Date headers.
fn mail(
    mid: &str,
    subject: &str,
    from: &str,
    irt: Option<&str>,
    refs: &[&str],
    day: u32,
) -> Vec<u8> {
    let mut s = format!(
        "From: {from} <{from}@example.test>\r\nTo: me@example.test\r\nSubject: {subject}\r\n\
         Message-ID: <{mid}>\r\nDate: {day:02} Nov 2023 10:00:00 +0000\r\n"
    );
    if let Some(irt) = irt {
        s.push_str(&format!("In-Reply-To: <{irt}>\r\n"));
    }
    if !refs.is_empty() {
        let r: Vec<String> = refs.iter().map(|r| format!("<{r}>")).collect();
        s.push_str(&format!("References: {}\r\n", r.join(" ")));
    }
    s.push_str("\r\nbody\r\n");
    s.into_bytes()
}

/// Appends and waits until the daemon announced it, so arrival order is the order of calls.
async fn deliver(env: &mut Env, mailbox: &str, raw: &[u8]) -> Result<i64> {
    let uid = env.append(mailbox, raw).await?;
    env.announced(1).await?;
    let row = env.row_by_uid(mailbox, uid).await?;
    row.thread_id
        .ok_or_else(|| anyhow::anyhow!("uid {uid} has no thread"))
}

/// The reply arrives before its parent, the grandchild before both: one thread in the end,
/// titled by the root.
async fn out_of_order(kind: Kind) -> Result<()> {
    let mut env = env(kind, "thr-order", &["INBOX"], "").await?;
    let c = deliver(
        &mut env,
        "INBOX",
        &mail(
            "c@x",
            "Re: Re: Plan",
            "carol",
            Some("b@x"),
            &["a@x", "b@x"],
            3,
        ),
    )
    .await?;
    let a = deliver(
        &mut env,
        "INBOX",
        &mail("a@x", "Plan", "alice", None, &[], 1),
    )
    .await?;
    ensure!(
        a == c,
        "the root joined its late reply's thread: {a} vs {c}"
    );
    let b = deliver(
        &mut env,
        "INBOX",
        &mail("b@x", "Re: Plan", "bob", Some("a@x"), &["a@x"], 2),
    )
    .await?;
    ensure!(b == a, "the middle message joined: {b} vs {a}");
    let threads = env.threads().await?;
    ensure!(threads.len() == 1, "{threads:?}");
    let t = &threads[0];
    ensure!(t.id == a, "{t:?}");
    ensure!(
        t.subject.as_deref() == Some("Plan"),
        "subject of the earliest message: {t:?}"
    );
    ensure!(t.message_count == 3 && t.unread_count == 3, "{t:?}");
    for who in ["alice", "bob", "carol"] {
        ensure!(
            t.participants.contains(&format!("{who}@example.test")),
            "{t:?}"
        );
    }
    env.shutdown().await;
    Ok(())
}

/// C names only B (In-Reply-To, no References), so it starts apart from A. When B arrives
/// (In-Reply-To A), it links both threads: they merge into the older one.
async fn in_reply_to_only_and_merge(kind: Kind) -> Result<()> {
    let mut env = env(kind, "thr-merge", &["INBOX"], "").await?;
    let a = deliver(
        &mut env,
        "INBOX",
        &mail("a@m", "Budget", "alice", None, &[], 1),
    )
    .await?;
    let c = deliver(
        &mut env,
        "INBOX",
        &mail("c@m", "Re: Budget", "carol", Some("b@m"), &[], 3),
    )
    .await?;
    ensure!(a != c, "nothing links C to A yet");
    ensure!(env.threads().await?.len() == 2);
    let b = deliver(
        &mut env,
        "INBOX",
        &mail("b@m", "Re: Budget", "bob", Some("a@m"), &[], 2),
    )
    .await?;
    ensure!(b == a, "B joins its parent A");
    let threads = env.threads().await?;
    ensure!(
        threads.len() == 1,
        "A's and C's threads merged: {threads:?}"
    );
    ensure!(
        threads[0].id == a && threads[0].message_count == 3,
        "{threads:?}"
    );
    let c_now = env.row_by_message_id("c@m").await?.thread_id;
    ensure!(c_now == Some(a), "C moved to the merged thread: {c_now:?}");
    env.shutdown().await;
    Ok(())
}

/// A reply filed in Sent joins the thread of its parent in INBOX; a copy of the parent in Sent
/// (same Message-ID) is a second row of the same thread, counted once.
async fn across_mailboxes(kind: Kind) -> Result<()> {
    let mut env = env(kind, "thr-boxes", &["INBOX", "Sent"], "").await?;
    let parent = mail("p@boxes", "Dinner?", "dan", None, &[], 1);
    let a = deliver(&mut env, "INBOX", &parent).await?;
    let r = deliver(
        &mut env,
        "Sent",
        &mail(
            "r@boxes",
            "Re: Dinner?",
            "me",
            Some("p@boxes"),
            &["p@boxes"],
            2,
        ),
    )
    .await?;
    ensure!(r == a, "reply in Sent joins the INBOX thread");
    let copy = deliver(&mut env, "Sent", &parent).await?;
    ensure!(copy == a, "the copy joins too");
    let rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE account_id = $1 AND message_id = 'p@boxes'",
    )
    .bind(&env.account)
    .fetch_one(&env.pool)
    .await?;
    ensure!(rows == 2, "two placements, two rows: {rows}");
    let threads = env.threads().await?;
    ensure!(
        threads.len() == 1 && threads[0].message_count == 2,
        "{threads:?}"
    );
    env.shutdown().await;
    Ok(())
}

/// Equal subjects alone never link (by default).
async fn same_subject_not_merged(kind: Kind) -> Result<()> {
    let mut env = env(kind, "thr-subject", &["INBOX"], "").await?;
    let a = deliver(
        &mut env,
        "INBOX",
        &mail("h1@s", "Hello", "ann", None, &[], 1),
    )
    .await?;
    let b = deliver(
        &mut env,
        "INBOX",
        &mail("h2@s", "Hello", "ben", None, &[], 2),
    )
    .await?;
    let c = deliver(
        &mut env,
        "INBOX",
        &mail("h3@s", "Re: Hello", "cat", None, &[], 3),
    )
    .await?;
    ensure!(a != b && b != c && a != c, "{a} {b} {c}");
    ensure!(env.threads().await?.len() == 3);
    env.shutdown().await;
    Ok(())
}

/// With `thread_by_subject = true`, a reply without any Message-ID link joins by subject.
async fn subject_opt_in(kind: Kind) -> Result<()> {
    let mut env = env(kind, "thr-optin", &["INBOX"], "thread_by_subject = true").await?;
    let a = deliver(
        &mut env,
        "INBOX",
        &mail("o1@s", "Hello", "ann", None, &[], 1),
    )
    .await?;
    let b = deliver(
        &mut env,
        "INBOX",
        &mail("o2@s", "RE: [team] hello", "ben", None, &[], 2),
    )
    .await?;
    ensure!(a == b, "{a} {b}");
    let c = deliver(
        &mut env,
        "INBOX",
        &mail("o3@s", "Other", "cat", None, &[], 3),
    )
    .await?;
    ensure!(c != a);
    env.shutdown().await;
    Ok(())
}

macro_rules! both {
    ($f:ident, $sqlite:ident, $pg:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() -> Result<()> {
            $f(Kind::Sqlite).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() -> Result<()> {
            $f(Kind::Postgres).await
        }
    };
}

both!(out_of_order, out_of_order_sqlite, out_of_order_postgres);
both!(in_reply_to_only_and_merge, merge_sqlite, merge_postgres);
both!(
    across_mailboxes,
    across_mailboxes_sqlite,
    across_mailboxes_postgres
);
both!(
    same_subject_not_merged,
    same_subject_sqlite,
    same_subject_postgres
);
both!(
    subject_opt_in,
    subject_opt_in_sqlite,
    subject_opt_in_postgres
);
