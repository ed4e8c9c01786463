//! One daemon on one Dovecot, database and Redis channel, plus readers of the stored rows.

use std::os::unix::fs::chown;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use idlesync::Daemon;
use sqlx::{AnyPool, Row};

use crate::common::daemon::{config_toml, start, wait_idling, AccountSpec};
use crate::common::db::{Kind, TestDb};
use crate::common::dovecot::Dovecot;
use crate::common::redis::{self, Subscriber};

/// Generous: Dovecot itself takes ~0.5 s to announce a delivery.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running daemon watching `mailboxes` of one account.
pub struct Env {
    pub dc: Dovecot,
    pub db: TestDb,
    pub sub: Subscriber,
    pub daemon: Daemon,
    pub pool: AnyPool,
    pub account: String,
    pub user: &'static str,
}

/// Starts Dovecot (with `mailboxes` created), the database and the daemon, and waits until
/// every mailbox idles. `storage` is extra `[storage]` keys.
pub async fn env(kind: Kind, account: &str, mailboxes: &[&str], storage: &str) -> Result<Env> {
    let user = "corpus";
    let dc = Dovecot::start(&[(user, "secret-pw-1")])?;
    for m in mailboxes {
        if *m != "INBOX" {
            dc.create_mailbox(user, m).await?;
        }
    }
    let db = TestDb::new(kind).await?;
    let channel = redis::unique_channel(account);
    let sub = redis::subscribe(&redis::url(), &channel).await?;
    let account = format!("{account}-{kind:?}");
    let toml = config_toml(
        &db.url,
        Some((&redis::url(), &channel)),
        dc.ca_file(),
        &[AccountSpec {
            id: &account,
            user,
            password: "secret-pw-1",
            tls: "implicit",
            port: dc.imaps_port(),
            mailboxes,
        }],
    )
    .replacen(
        "max_connections = 4\n",
        &format!("max_connections = 4\n{storage}\n"),
        1,
    );
    let daemon = start(&toml).await?;
    wait_idling(&daemon, mailboxes.len(), WAIT).await?;
    let pool = db.pool().await?;
    Ok(Env {
        dc,
        db,
        sub,
        daemon,
        pool,
        account,
        user,
    })
}

impl Env {
    /// APPENDs `raw` to `mailbox`; the new UID.
    pub async fn append(&self, mailbox: &str, raw: &[u8]) -> Result<u32> {
        self.dc.append(self.user, mailbox, raw).await
    }

    /// Writes `raw` straight into the INBOX Maildir's `new/`, as an MDA would (owned by
    /// Debian's `mail`, uid 8). For bytes APPEND refuses, such as NUL.
    pub fn drop_into_maildir(&self, raw: &[u8]) -> Result<()> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = self.dc.maildir(self.user).join("new");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!(
            "1700000000.M{}P{}.idlesync-corpus",
            N.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        ));
        std::fs::write(&file, raw)?;
        chown(&file, Some(8), Some(8))?;
        Ok(())
    }

    /// Waits until `n` more messages were announced on Redis.
    pub async fn announced(&mut self, n: usize) -> Result<()> {
        self.sub.collect_messages(n, WAIT).await.map(|_| ())
    }

    /// The stored row of `uid` in `mailbox`.
    pub async fn row_by_uid(&self, mailbox: &str, uid: u32) -> Result<Stored> {
        self.row_where("mailbox = $2 AND uid = $3", mailbox, i64::from(uid))
            .await
            .with_context(|| format!("row {mailbox}/{uid}"))
    }

    /// The stored row with this Message-ID (the first, by id).
    pub async fn row_by_message_id(&self, message_id: &str) -> Result<Stored> {
        let sql = format!("{SELECT} WHERE account_id = $1 AND message_id = $2 ORDER BY id LIMIT 1");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.account)
            .bind(message_id)
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("row with Message-ID {message_id}"))?;
        self.stored(&r).await
    }

    async fn row_where(&self, cond: &str, mailbox: &str, uid: i64) -> Result<Stored> {
        let sql = format!("{SELECT} WHERE account_id = $1 AND {cond}");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.account)
            .bind(mailbox)
            .bind(uid)
            .fetch_one(&self.pool)
            .await?;
        self.stored(&r).await
    }

    async fn stored(&self, r: &sqlx::any::AnyRow) -> Result<Stored> {
        let id: i64 = r.get(0);
        let raw = sqlx::query("SELECT raw FROM message_raw WHERE message_row_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get::<Vec<u8>, _>(0));
        let attachments = sqlx::query(
            "SELECT filename, content_type, size, content_id, \
             CASE WHEN is_inline THEN 1 ELSE 0 END, CASE WHEN content_stored THEN 1 ELSE 0 END, \
             content FROM attachments WHERE message_row_id = $1 ORDER BY part_index",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|a| StoredAttachment {
            filename: a.get(0),
            content_type: a.get(1),
            size: a.get(2),
            content_id: a.get(3),
            inline: a.get::<i64, _>(4) != 0,
            stored: a.get::<i64, _>(5) != 0,
            content: a.get(6),
        })
        .collect();
        Ok(Stored {
            id,
            mailbox: r.get(1),
            uid: r.get(2),
            message_id: r.get(3),
            subject: r.get(4),
            from: r.get(5),
            sender: r.get(6),
            reply_to: r.get(7),
            to: r.get(8),
            cc: r.get(9),
            bcc: r.get(10),
            in_reply_to: r.get(11),
            references: r.get(12),
            sent_at: r.get(13),
            received_at: r.get(14),
            text_body: r.get(15),
            html_body: r.get(16),
            snippet: r.get(17),
            size: r.get(18),
            flags: r.get(19),
            has_attachments: r.get::<i64, _>(20) != 0,
            truncated: r.get::<i64, _>(21) != 0,
            parse_error: r.get::<i64, _>(22) != 0,
            thread_id: r.get(23),
            raw,
            attachments,
        })
    }

    /// Threads of the account, newest first: the README's inbox query.
    pub async fn threads(&self) -> Result<Vec<ThreadRow>> {
        let rows = sqlx::query(
            "SELECT id, subject, last_message_at, message_count, unread_count, participants \
             FROM threads WHERE account_id = $1 ORDER BY last_message_at DESC, id DESC LIMIT 50",
        )
        .bind(&self.account)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ThreadRow {
                id: r.get(0),
                subject: r.get(1),
                last_message_at: r.get(2),
                message_count: r.get(3),
                unread_count: r.get(4),
                participants: r.get(5),
            })
            .collect())
    }

    pub async fn shutdown(self) {
        self.pool.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.daemon.shutdown()).await;
    }
}

const SELECT: &str = "SELECT id, mailbox, uid, message_id, subject, from_addr, sender_addr, \
    reply_to_addrs, to_addrs, cc_addrs, bcc_addrs, in_reply_to, references_ids, sent_at, \
    received_at, text_body, html_body, snippet, size, flags, \
    CASE WHEN has_attachments THEN 1 ELSE 0 END, CASE WHEN truncated THEN 1 ELSE 0 END, \
    CASE WHEN parse_error THEN 1 ELSE 0 END, thread_id FROM messages";

/// A `messages` row with its raw bytes and attachments.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: i64,
    pub mailbox: String,
    pub uid: i64,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub from: String,
    pub sender: String,
    pub reply_to: String,
    pub to: String,
    pub cc: String,
    pub bcc: String,
    pub in_reply_to: Option<String>,
    pub references: String,
    pub sent_at: Option<i64>,
    pub received_at: Option<i64>,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub snippet: String,
    pub size: i64,
    pub flags: String,
    pub has_attachments: bool,
    pub truncated: bool,
    pub parse_error: bool,
    pub thread_id: Option<i64>,
    pub raw: Option<Vec<u8>>,
    pub attachments: Vec<StoredAttachment>,
}

#[derive(Debug, Clone)]
pub struct StoredAttachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub size: i64,
    pub content_id: Option<String>,
    pub inline: bool,
    pub stored: bool,
    pub content: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct ThreadRow {
    pub id: i64,
    pub subject: Option<String>,
    pub last_message_at: i64,
    pub message_count: i64,
    pub unread_count: i64,
    pub participants: String,
}
