//! What the server holds and what the store holds, side by side, for the tests of issue #11
//! (the store mirrors the mailbox).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use futures::TryStreamExt;
use sqlx::Row;

use super::daemon::{mail, AccountSpec};
use super::db::{Kind, TestDb};
use super::dovecot::wire::Wire;
use super::dovecot::{Dovecot, DovecotOptions};
use super::proxy::{Pace, Proxy};
use super::setup::{ConfigToml, Setup};

/// UID → flags (without `\Recent`, which is per session).
pub type Flags = BTreeMap<u32, BTreeSet<String>>;

fn flag_set<'a>(flags: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    flags
        .into_iter()
        .filter(|f| !f.is_empty() && !f.eq_ignore_ascii_case("\\Recent"))
        .map(str::to_string)
        .collect()
}

/// Every message in `mailbox` and its flags, as the server says: `UID FETCH 1:* (UID FLAGS)` on a
/// session of its own (async-imap, not idlesync's code).
pub async fn server_flags(dc: &Dovecot, user: &str, mailbox: &str) -> Result<Flags> {
    let tls = dc.connect_tls().await?;
    let mut client = async_imap::Client::new(tls);
    client.read_response().await?.context("no greeting")?;
    let pass = dc.password(user).context("no such user")?;
    let mut session = client
        .login(user, pass)
        .await
        .map_err(|(e, _)| anyhow::anyhow!("login: {e}"))?;
    let mb = session.examine(mailbox).await?;
    let mut out = Flags::new();
    if mb.exists > 0 {
        let fetches: Vec<_> = session
            .uid_fetch("1:*", "(UID FLAGS)")
            .await?
            .try_collect()
            .await?;
        for f in fetches {
            let uid = f.uid.context("FETCH without UID")?;
            let flags: Vec<String> = f.flags().map(imap_flag).collect();
            out.insert(uid, flag_set(flags.iter().map(String::as_str)));
        }
    }
    let _ = session.logout().await;
    Ok(out)
}

/// async-imap's `Flag` back to IMAP's spelling.
fn imap_flag(f: async_imap::types::Flag<'_>) -> String {
    use async_imap::types::Flag;
    match f {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => "\\Recent".into(),
        Flag::MayCreate => "\\*".into(),
        Flag::Custom(c) => c.into_owned(),
    }
}

/// The rows `sql` selects with `$1` = account and `$2` = mailbox.
async fn of_mailbox(
    db: &TestDb,
    sql: &'static str,
    account: &str,
    mailbox: &str,
) -> Result<Vec<sqlx::any::AnyRow>> {
    let pool = db.pool().await?;
    let rows = sqlx::query(sql)
        .bind(account)
        .bind(mailbox)
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(rows)
}

/// The present rows of `mailbox` (`expunged_at IS NULL`) and their flags.
pub async fn stored_flags(db: &TestDb, account: &str, mailbox: &str) -> Result<Flags> {
    let sql = "SELECT uid, flags FROM messages WHERE account_id = $1 AND mailbox = $2 \
               AND expunged_at IS NULL ORDER BY uid";
    Ok(of_mailbox(db, sql, account, mailbox)
        .await?
        .iter()
        .map(|r| {
            let uid: i64 = r.get(0);
            let flags: String = r.get(1);
            (uid as u32, flag_set(flags.split(' ')))
        })
        .collect())
}

/// UIDs of `mailbox`'s rows marked expunged, ascending.
pub async fn expunged_uids(db: &TestDb, account: &str, mailbox: &str) -> Result<Vec<u32>> {
    let sql = "SELECT uid FROM messages WHERE account_id = $1 AND mailbox = $2 \
               AND expunged_at IS NOT NULL ORDER BY uid";
    Ok(of_mailbox(db, sql, account, mailbox)
        .await?
        .iter()
        .map(|r| r.get::<i64, _>(0) as u32)
        .collect())
}

/// Every row of `mailbox`, present or not: `(uid, thread_id)`.
pub async fn rows(db: &TestDb, account: &str, mailbox: &str) -> Result<Vec<(u32, i64)>> {
    let sql =
        "SELECT uid, thread_id FROM messages WHERE account_id = $1 AND mailbox = $2 ORDER BY uid";
    Ok(of_mailbox(db, sql, account, mailbox)
        .await?
        .iter()
        .map(|r| (r.get::<i64, _>(0) as u32, r.get(1)))
        .collect())
}

/// `(message_count, unread_count)` of a thread.
pub async fn thread_counts(db: &TestDb, thread_id: i64) -> Result<(i64, i64)> {
    let pool = db.pool().await?;
    let row = sqlx::query("SELECT message_count, unread_count FROM threads WHERE id = $1")
        .bind(thread_id)
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok((row.get(0), row.get(1)))
}

/// A second IMAP session with `mailbox` selected, for the changes another client makes.
pub async fn other_client(dc: &Dovecot, user: &str, mailbox: &str) -> Result<Wire> {
    let mut w = Wire::login(dc, user).await?;
    let r = w
        .command(
            &format!("SELECT {}", super::dovecot::wire::quote(mailbox)?),
            None,
        )
        .await?;
    ensure!(r.starts_with("OK"), "SELECT {mailbox}: {r}");
    Ok(w)
}

/// Runs `command` on `w`; fails unless the server answers OK.
pub async fn ok(w: &mut Wire, command: &str) -> Result<()> {
    let r = w.command(command, None).await?;
    ensure!(r.starts_with("OK"), "{command}: {r}");
    Ok(())
}

/// What Dovecot advertises after login: all of it, or its own list with QRESYNC (and then
/// CONDSTORE) removed through `imap_capability`. idlesync must pick its catch-up path from
/// this list, not from the server's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertised {
    /// Dovecot's own list (QRESYNC and CONDSTORE).
    Qresync,
    /// Without QRESYNC.
    CondstoreOnly,
    /// Without either.
    Neither,
}

fn capability_setting(path: Advertised) -> String {
    const BASE: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ UIDPLUS MOVE \
                        NAMESPACE UNSELECT CHILDREN";
    match path {
        Advertised::Qresync => String::new(),
        Advertised::CondstoreOnly => format!("imap_capability = {BASE} CONDSTORE\n"),
        Advertised::Neither => format!("imap_capability = {BASE}\n"),
    }
}

/// A [`Setup`] whose Dovecot (one user, password `secret-pw-1`) advertises `path`.
pub async fn setup(user: &str, kind: Kind, path: Advertised, test: &str) -> Result<Setup> {
    let dc = Dovecot::start_with(DovecotOptions {
        users: vec![(user.to_string(), "secret-pw-1".to_string())],
        extra_config: capability_setting(path),
        ..DovecotOptions::default()
    })?;
    Ok(Setup {
        dc,
        db: TestDb::new(kind).await?,
        channel: super::redis::unique_channel(test),
    })
}

/// UIDs as an IMAP set, comma-separated.
pub fn uid_list(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A first import that takes seconds, for races against it.
pub struct SlowImport {
    /// Between idlesync and Dovecot, passing about 1 MB/s until its pace is lifted.
    pub proxy: Proxy,
    /// The messages waiting, ascending.
    pub uids: Vec<u32>,
    /// The account through the proxy, committing 4 messages at a time, so that the import's
    /// progress shows while the fetch is still in flight.
    pub config: ConfigToml,
}

/// `n` messages of about `kib` KiB in `user`'s INBOX, and a config for account `id` that reads
/// them through a pacing proxy.
pub async fn slow_import(
    s: &Setup,
    user: &str,
    id: &str,
    n: usize,
    kib: usize,
) -> Result<SlowImport> {
    let mut w = Wire::login(&s.dc, user).await?;
    let filler = "x".repeat(kib * 1024);
    let mut uids = Vec::new();
    for i in 0..n {
        let mut raw = mail(&format!("big-{i}"));
        raw.extend_from_slice(filler.as_bytes());
        uids.push(w.append("INBOX", &raw).await?);
    }
    w.logout().await;
    let proxy = Proxy::start(s.dc.imaps_addr()).await?;
    proxy.set_server_pace(Some(Pace {
        bytes: 32 * 1024,
        every: std::time::Duration::from_millis(30),
    }));
    let acc = AccountSpec::implicit(id, user, "secret-pw-1", proxy.addr().port(), &["INBOX"]);
    let config = s
        .implicit(s.config(), &acc)
        .set("imap", "fetch_batch", 4u32);
    Ok(SlowImport {
        proxy,
        uids,
        config,
    })
}

/// Waits until the daemon's only mailbox is importing: some of it stored, the rest still to
/// come.
pub async fn import_under_way(d: &idlesync::Daemon, timeout: std::time::Duration) -> Result<()> {
    super::wait_until(timeout, || async {
        let status = d.board().snapshot();
        Ok(status[0]
            .import
            .as_ref()
            .is_some_and(|i| i.stored > 0 && i.stored < i.total))
    })
    .await
}
