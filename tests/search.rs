//! Issue #21: search over the store, against real Dovecot, on both databases.
//! - (a) A corpus of 2,000 messages the test builds (German with umlauts, Russian, Japanese,
//!   emoji, HTML-only mail, attachments with names, flags, dates, sizes, two mailboxes): every
//!   operator, negation, OR and phrases return exactly the ids a straightforward filter over the
//!   same rows computes; a flag change and an expunge show in the next query.
//! - (b) Injection attempts and oversized queries: a 400 or a correct result, never a database
//!   error, never a row of another account.
//! - The account is in the index condition of the query plan.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::api::{token_file, Client};
use common::daemon::{wait_idling, AccountSpec};
use common::db::{Kind, TestDb};
use common::dovecot::wire::Wire;
use common::mirror::{ok, other_client};
use common::setup::Setup;
use idlesync::search::text::{doc, words, Doc};
use idlesync::search::{parse, Field, Is, Query, Term};
use sqlx::Row;

const N: usize = 2000;
const WAIT: Duration = Duration::from_secs(120);

const SENDERS: [&str; 5] = [
    "Jürgen Groß <juergen@example.de>",
    "Иван Петров <ivan@example.ru>",
    "田中太郎 <tanaka@example.jp>",
    "Ann Lee <ann@example.com>",
    "Bob <bob@example.org>",
];

fn subject(i: usize) -> String {
    match i % 5 {
        0 => format!("Rechnung {i} – Grüße aus Köln"),
        1 => format!("Счёт на оплату {i}"),
        2 => format!("請求書のお知らせ {i}"),
        3 => format!("Party 🎉 invitation {i}"),
        _ => format!("Quarterly report {i}"),
    }
}

fn body(i: usize) -> String {
    let line = match i % 5 {
        0 => "Sehr geehrte Damen und Herren, anbei die Übersicht. Mit freundlichen Grüßen",
        1 => "Здравствуйте! Оплатите, пожалуйста, счёт до пятницы.",
        2 => "いつもお世話になっております。東京都の請求書をお送りします。",
        3 => "Bring snacks 🍕 and friends, the party starts at eight.",
        _ => "Revenue grew; the quarterly report is attached for review.",
    };
    let pad = if i.is_multiple_of(10) {
        "x".repeat(30_000)
    } else {
        String::new()
    };
    format!("{line} ref{i}\r\n{pad}")
}

/// Message `i` of the corpus, and the IMAP flags and INTERNALDATE it is appended with.
fn message(i: usize) -> (Vec<u8>, String, String) {
    let from = SENDERS[i % SENDERS.len()];
    let to = if i.is_multiple_of(2) {
        "Bob <bob@example.org>"
    } else {
        "Dana <dana@example.net>"
    };
    let cc = if i % 3 == 1 {
        "Cc: Carol <carol@example.com>\r\n"
    } else {
        ""
    };
    let subj = mail_parser_encode(&subject(i));
    let head = format!(
        "From: {}\r\nTo: {to}\r\n{cc}Subject: {subj}\r\nMessage-ID: <s{i}@example.test>\r\n\
         Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMIME-Version: 1.0\r\n",
        mail_parser_encode(from)
    );
    let text = body(i);
    let raw = if i.is_multiple_of(6) {
        let name = match (i / 6) % 3 {
            0 => format!("invoice-{i}.pdf"),
            1 => format!("Übersicht {i}.xlsx"),
            _ => format!("写真{i}.jpg"),
        };
        format!(
            "{head}Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n\
             --b{i}\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename*=utf-8''{}\r\n\
             Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b{i}--\r\n",
            pct(&name)
        )
    } else if i.is_multiple_of(7) {
        format!(
            "{head}Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             <html><body><p>Hallo <b>Welt</b> html{i}</p><p>{text}</p></body></html>\r\n"
        )
    } else {
        format!("{head}Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n")
    };
    let mut flags = Vec::new();
    if i.is_multiple_of(3) {
        flags.push("\\Seen");
    }
    if i.is_multiple_of(11) {
        flags.push("\\Flagged");
    }
    let day = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).expect("date")
        + chrono::Days::new((i % 360) as u64);
    let date = format!("{} 12:00:00 +0000", day.format("%d-%b-%Y"));
    (raw.into_bytes(), flags.join(" "), date)
}

/// RFC 2047 for a header with non-ASCII.
fn mail_parser_encode(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    // Encode the display name part only when there is an address.
    match s.rsplit_once(" <") {
        Some((name, addr)) => format!("=?utf-8?b?{}?= <{addr}", b64(name.as_bytes())),
        None => format!("=?utf-8?b?{}?=", b64(s.as_bytes())),
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One stored row, as the reference filter sees it.
struct Row_ {
    id: i64,
    mailbox: String,
    doc: Doc,
    flags: BTreeSet<String>,
    has_attachments: bool,
    size: i64,
    received_at: i64,
}

async fn rows(db: &TestDb, account: &str) -> Result<Vec<Row_>> {
    let pool = db.pool().await?;
    let rows = sqlx::query(
        "SELECT id, mailbox, subject, from_addr, to_addrs, cc_addrs, text_body, flags, \
         CASE WHEN has_attachments THEN 1 ELSE 0 END, size, received_at FROM messages \
         WHERE account_id = $1 AND expunged_at IS NULL",
    )
    .bind(account)
    .fetch_all(&pool)
    .await?;
    let files = sqlx::query(
        "SELECT a.message_row_id, a.filename FROM attachments a JOIN messages m \
         ON m.id = a.message_row_id WHERE m.account_id = $1 AND a.filename IS NOT NULL",
    )
    .bind(account)
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let names: Vec<String> = files
                .iter()
                .filter(|f| f.get::<i64, _>(0) == id)
                .map(|f| f.get(1))
                .collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let flags: String = r.get(7);
            Row_ {
                id,
                mailbox: r.get(1),
                doc: doc(
                    r.get::<Option<String>, _>(2).as_deref(),
                    &r.get::<String, _>(3),
                    &r.get::<String, _>(4),
                    &r.get::<String, _>(5),
                    r.get::<Option<String>, _>(6).as_deref(),
                    &names,
                ),
                flags: flags.split_whitespace().map(str::to_string).collect(),
                has_attachments: r.get::<i64, _>(8) != 0,
                size: r.get(9),
                received_at: r.get::<Option<i64>, _>(10).unwrap_or(0),
            }
        })
        .collect())
}

/// The straightforward filter: the query evaluated over one row in memory.
fn matches(q: &Query, r: &Row_) -> bool {
    match q {
        Query::And(v) => v.iter().all(|q| matches(q, r)),
        Query::Or(v) => v.iter().any(|q| matches(q, r)),
        Query::Not(q) => !matches(q, r),
        Query::Term(t) => match t {
            Term::Text { field, words: want } => {
                let text = match field {
                    Field::All => &r.doc.all,
                    Field::Subject => &r.doc.subject,
                    Field::From => &r.doc.from,
                    Field::To => &r.doc.to,
                    Field::Cc => &r.doc.cc,
                    Field::Filename => &r.doc.files,
                };
                let have = words(text);
                have.windows(want.len())
                    .any(|w| w.iter().zip(want).all(|(a, b)| *a == b.as_str()))
            }
            Term::HasAttachment => r.has_attachments,
            Term::Is(Is::Unread) => !r.flags.contains("\\Seen"),
            Term::Is(Is::Read) => r.flags.contains("\\Seen"),
            Term::Is(Is::Starred) => r.flags.contains("\\Flagged"),
            Term::Is(Is::Unstarred) => !r.flags.contains("\\Flagged"),
            Term::In(m) => r.mailbox == *m,
            Term::After(ms) => r.received_at >= *ms,
            Term::Before(ms) => r.received_at < *ms,
            Term::Larger(n) => r.size > *n,
            Term::Smaller(n) => r.size < *n,
        },
    }
}

/// Every page of `q`'s results, in order.
async fn all_pages(api: &Client, account: &str, q: &str) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/v1/accounts/{account}/search?limit=100&q={}", enc(q));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        let a = api.get(&path).await?;
        ensure!(a.status == 200, "{q}: {} {}", a.status, a.body);
        for m in a.body["messages"].as_array().expect("messages") {
            ids.push(m["id"].as_i64().expect("id"));
        }
        match a.body["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(ids),
        }
    }
    anyhow::bail!("{q}: more than 100 pages")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The ids the reference filter expects for `q`, newest first as the API orders them.
fn expected(q: &str, rows: &[Row_]) -> Vec<i64> {
    let parsed = parse(q).expect("a valid query");
    let mut hits: Vec<&Row_> = rows.iter().filter(|r| matches(&parsed, r)).collect();
    hits.sort_by(|a, b| b.received_at.cmp(&a.received_at).then(b.id.cmp(&a.id)));
    hits.iter().map(|r| r.id).collect()
}

const QUERIES: &[&str] = &[
    "rechnung",
    "grüße",
    "GRÜSSE",
    "köln",
    "счёт",
    "Оплату",
    "請求書",
    "東京都",
    "お知らせ",
    "invitation",
    "\"quarterly report\"",
    "\"report quarterly\"",
    "welt",
    "html7",
    "ref1234",
    "from:ann",
    "from:juergen@example.de",
    "from:example.ru",
    "from:Иван",
    "from:田中",
    "to:bob",
    "to:dana@example.net",
    "cc:carol",
    "subject:report",
    "subject:\"grüße aus\"",
    "has:attachment",
    "filename:pdf",
    "filename:invoice",
    "filename:übersicht",
    "filename:写真",
    "is:unread",
    "is:read",
    "is:starred",
    "is:unstarred",
    "in:Archive",
    "in:INBOX",
    "after:2025/06/01",
    "before:2025/03/01",
    "after:2025/03/01 before:2025/03/10",
    "larger:20K",
    "smaller:2K",
    "rechnung -in:Archive",
    "invitation OR report",
    "(from:ann OR from:bob) has:attachment",
    "-is:starred invoice",
    "party -in:Archive is:starred",
    "счёт OR 請求書 OR grüße",
    "report -(is:read OR is:starred)",
];

async fn corpus(kind: Kind) -> Result<()> {
    let s = Setup::new(
        &[("sam", "secret-pw-1"), ("eve", "secret-pw-1")],
        kind,
        "search",
    )
    .await?;
    s.dc.create_mailbox("sam", "Archive").await?;
    let mut w = Wire::login(&s.dc, "sam").await?;
    for i in 0..N {
        let (raw, flags, date) = message(i);
        let mb = if i % 4 == 3 { "Archive" } else { "INBOX" };
        let r = w
            .command(&format!("APPEND {mb} ({flags}) \"{date}\""), Some(&raw))
            .await?;
        ensure!(r.starts_with("OK"), "APPEND {i}: {r}");
    }
    w.logout().await;
    // Another account holds the same words: never part of sam's results.
    let mut w = Wire::login(&s.dc, "eve").await?;
    for i in 0..20 {
        let (raw, _, date) = message(i);
        w.command(&format!("APPEND INBOX () \"{date}\""), Some(&raw))
            .await?;
    }
    w.logout().await;
    let dir = tempfile::tempdir()?;
    let sam = AccountSpec::implicit(
        "sam",
        "sam",
        "secret-pw-1",
        s.dc.imaps_port(),
        &["INBOX", "Archive"],
    );
    let eve = AccountSpec::implicit("eve", "eve", "secret-pw-1", s.dc.imaps_port(), &["INBOX"]);
    let config = s
        .implicit(s.implicit(s.config(), &sam), &eve)
        .api(&token_file(dir.path()));
    let d = s.start(&config).await?;
    common::wait_until(WAIT, || async {
        Ok(
            s.db.messages("sam").await.map(|m| m.len()).unwrap_or(0) == N
                && s.db.messages("eve").await.map(|m| m.len()).unwrap_or(0) == 20,
        )
    })
    .await?;
    wait_idling(&d, 3, WAIT).await?;
    let api = Client::new(d.api_addr().expect("api"));
    let stored = rows(&s.db, "sam").await?;
    let eve_ids: BTreeSet<i64> = rows(&s.db, "eve").await?.iter().map(|r| r.id).collect();
    for q in QUERIES {
        let want = expected(q, &stored);
        let got = all_pages(&api, "sam", q).await?;
        ensure!(
            got == want,
            "{kind:?} {q:?}: got {} ids, want {}; first got {:?}, first want {:?}",
            got.len(),
            want.len(),
            &got[..got.len().min(5)],
            &want[..want.len().min(5)]
        );
        ensure!(
            got.iter().all(|id| !eve_ids.contains(id)),
            "{q}: another account's mail"
        );
        ensure!(
            !want.is_empty() || q.contains("report quarterly"),
            "{q}: the corpus should match something"
        );
    }

    // The next query sees a flag change and an expunge.
    let probe = stored
        .iter()
        .find(|r| r.mailbox == "INBOX" && !r.flags.contains("\\Seen"))
        .expect("an unread message");
    let uid: i64 = {
        let pool = s.db.pool().await?;
        let u = sqlx::query("SELECT uid FROM messages WHERE id = $1")
            .bind(probe.id)
            .fetch_one(&pool)
            .await?
            .get(0);
        pool.close().await;
        u
    };
    let mut other = other_client(&s.dc, "sam", "INBOX").await?;
    ok(&mut other, &format!("UID STORE {uid} +FLAGS (\\Seen)")).await?;
    common::wait_until(Duration::from_secs(15), || async {
        Ok(!all_pages(&api, "sam", "is:unread")
            .await?
            .contains(&probe.id))
    })
    .await?;
    ok(&mut other, &format!("UID STORE {uid} +FLAGS (\\Deleted)")).await?;
    ok(&mut other, &format!("UID EXPUNGE {uid}")).await?;
    let word = format!("ref{}", {
        let pool = s.db.pool().await?;
        let subj: Option<String> = sqlx::query("SELECT text_body FROM messages WHERE id = $1")
            .bind(probe.id)
            .fetch_one(&pool)
            .await?
            .get(0);
        pool.close().await;
        subj.unwrap_or_default()
            .split("ref")
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    });
    common::wait_until(Duration::from_secs(15), || async {
        Ok(!all_pages(&api, "sam", &word).await?.contains(&probe.id))
    })
    .await?;

    // (b) Hostile input: a 400 or a correct result; never a database error or another account.
    let hostile: Vec<String> = vec![
        "'".into(),
        ";".into(),
        "%".into(),
        "\\".into(),
        "\"unbalanced".into(),
        "rechnung'; DROP TABLE messages; --".into(),
        "a' OR '1'='1".into(),
        "%' OR 1=1 --".into(),
        "from:\"x\" OR \"\" OR".into(),
        "subject:'\"".into(),
        "in:INBOX' OR 'a'='a".into(),
        "\"grüße\\\" OR *".into(),
        "x".repeat(10 * 1024),
        (0..1000)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" "),
        "(((((((((a)))))))))".into(),
        "NEAR(a b)".into(),
        "doc:grüße".into(),
        "account_id:eve".into(),
    ];
    for q in &hostile {
        let path = format!("/v1/accounts/sam/search?q={}", enc(q));
        let a = api.get(&path).await?;
        match a.status {
            400 => ensure!(a.code() == "bad_request", "{q:?}: {}", a.body),
            200 => {
                let got = all_pages(&api, "sam", q).await?;
                ensure!(
                    got == expected(q, &rows(&s.db, "sam").await?),
                    "{q:?}: wrong result"
                );
                ensure!(
                    got.iter().all(|id| !eve_ids.contains(id)),
                    "{q:?}: another account"
                );
            }
            other => anyhow::bail!("{q:?}: status {other}: {}", a.body),
        }
    }
    for (path, code) in [
        ("/v1/accounts/sam/search?q=label:work", 400),
        ("/v1/accounts/sam/search?q=in:Spam", 400),
        ("/v1/accounts/sam/search?q=a&limit=0", 400),
        ("/v1/accounts/sam/search?q=a&limit=101", 400),
        ("/v1/accounts/sam/search?q=a&cursor=nope", 400),
        ("/v1/accounts/sam/search?q=a&group=people", 400),
        ("/v1/accounts/sam/search", 400),
        ("/v1/accounts/nobody/search?q=a", 404),
    ] {
        ensure!(api.get(path).await?.status == code, "{path}");
    }
    // Conversations: one entry per thread, newest first.
    let a = api
        .get("/v1/accounts/sam/search?q=gr%C3%BC%C3%9Fen&group=threads&limit=5")
        .await?;
    ensure!(
        a.status == 200 && a.body["threads"].as_array().map(Vec::len) == Some(5),
        "{}",
        a.body
    );
    ensure!(
        a.body["threads"][0]["snippet"]
            .as_str()
            .unwrap_or("")
            .contains("<mark>"),
        "{}",
        a.body
    );
    // The account is in the index condition.
    let store = idlesync::store::Store::connect(&idlesync::config::StorageConfig {
        url: s.db.url.clone(),
        ..Default::default()
    })
    .await?;
    let plan = store.explain_text_term("sam", "rechnung").await?;
    match kind {
        Kind::Postgres => ensure!(
            plan.contains("Index Cond")
                && plan.contains("account_id")
                && plan.contains("search_docs_index"),
            "{plan}"
        ),
        Kind::Sqlite => ensure!(plan.contains("search_fts VIRTUAL TABLE INDEX"), "{plan}"),
    }
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_postgres() -> Result<()> {
    corpus(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_sqlite() -> Result<()> {
    corpus(Kind::Sqlite).await
}

/// Mail stored before the index existed is indexed in the background after an upgrade: the
/// index rows are removed and the backfill reset (what the migration leaves behind), and a
/// restarted daemon finds the mail again.
async fn backfill(kind: Kind) -> Result<()> {
    let s = Setup::new(&[("old", "secret-pw-1")], kind, "search-backfill").await?;
    let mut w = Wire::login(&s.dc, "old").await?;
    for i in 0..30 {
        let (raw, _, date) = message(i);
        w.command(&format!("APPEND INBOX () \"{date}\""), Some(&raw))
            .await?;
    }
    w.logout().await;
    let dir = tempfile::tempdir()?;
    let acc = AccountSpec::implicit("old", "old", "secret-pw-1", s.dc.imaps_port(), &["INBOX"]);
    let config = s.implicit(s.config(), &acc).api(&token_file(dir.path()));
    let d = s.start(&config).await?;
    common::wait_until(WAIT, || async {
        Ok(s.db.messages("old").await.map(|m| m.len()).unwrap_or(0) == 30)
    })
    .await?;
    let api = Client::new(d.api_addr().expect("api"));
    let want = expected("rechnung", &rows(&s.db, "old").await?);
    ensure!(want.len() == 6, "{want:?}");
    ensure!(all_pages(&api, "old", "rechnung").await? == want);
    d.shutdown().await;
    let pool = s.db.pool().await?;
    let clear = match kind {
        Kind::Postgres => "DELETE FROM search_docs",
        Kind::Sqlite => "DELETE FROM search_fts",
    };
    sqlx::query(clear).execute(&pool).await?;
    sqlx::query("UPDATE search_backfill SET next_id = 0, end_id = (SELECT MAX(id) FROM messages)")
        .execute(&pool)
        .await?;
    pool.close().await;
    let d = s.start(&config).await?;
    let api = Client::new(d.api_addr().expect("api"));
    common::wait_until(WAIT, || async {
        Ok(all_pages(&api, "old", "rechnung").await? == want)
    })
    .await?;
    let pool = s.db.pool().await?;
    let (next, end): (i64, i64) = {
        let r = sqlx::query("SELECT next_id, end_id FROM search_backfill")
            .fetch_one(&pool)
            .await?;
        (r.get(0), r.get(1))
    };
    pool.close().await;
    ensure!(next >= end, "the backfill finished: {next} of {end}");
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn backfill_postgres() -> Result<()> {
    backfill(Kind::Postgres).await
}

#[tokio::test]
async fn backfill_sqlite() -> Result<()> {
    backfill(Kind::Sqlite).await
}
