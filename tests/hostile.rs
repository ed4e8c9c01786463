//! A broken or hostile IMAP server cannot hurt the daemon (issue #14). One scripted attack per
//! test, answering the `UID FETCH` that follows an EXISTS in IDLE, on every connection. Each
//! test asserts the bound (bytes the server got rid of), the class (`protocol` in `/status`),
//! that the mailbox leaves `fetching` for `backoff` and keeps retrying, and that the error text
//! (what the supervisor logs, `{err:#}`) quotes at most about 1 KiB of the server.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use common::db::TestDb;
use common::hostile::{self, Attack, Hostile};
use idlesync::imap::connect::{self, Endpoint};
use idlesync::imap::{fetch, ImapError, Session};
use idlesync::status::MailboxState;
use idlesync::{Config, Daemon};
use tokio_util::sync::CancellationToken;

/// Generous: on the old code each of these waited out `dead_after` (5 min) or never ended.
const WAIT: Duration = Duration::from_secs(30);
/// What one error line may carry, server text and our own words together.
const MAX_ERROR_TEXT: usize = 1024 + 200;

fn toml(db: &str, id: &str, port: u16) -> String {
    format!(
        "[storage]\nurl = \"{db}\"\nmax_message_size = 1048576\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [imap]\ndead_after = \"5m\"\nconnect_timeout = \"10s\"\n\n\
         [backoff]\ninitial = \"100ms\"\nmax = \"2s\"\n\n\
         [[accounts]]\nid = \"{id}\"\nemail = \"h@example.test\"\nhost = \"127.0.0.1\"\n\
         port = {port}\ntls = \"none\"\nusername = \"h\"\npassword = \"pw-hostile-1\"\n\
         mailboxes = [\"INBOX\"]\n"
    )
}

/// Runs the daemon against `attack` until the mailbox has failed twice with `protocol`
/// (it left `fetching`, backed off and came back for more).
async fn daemon_against(id: &str, attack: Attack) -> Result<(Hostile, Daemon, TestDb)> {
    let server = hostile::start(attack).await?;
    let db = TestDb::sqlite()?;
    let d = common::daemon::start(&toml(&db.url, id, server.port)).await?;
    let ok = d
        .board()
        .wait_for(WAIT, |s| {
            s[0].last_error == Some("protocol")
                && s[0].reconnects >= 2
                && matches!(s[0].state, MailboxState::Backoff | MailboxState::Connecting)
        })
        .await;
    assert!(ok, "{:?}", d.board().snapshot());
    Ok((server, d, db))
}

/// Logged in and `INBOX` selected on `server`, through the library.
async fn selected(server: &Hostile, db: &TestDb) -> Result<Session> {
    let config = Config::parse(
        Path::new("h.toml"),
        toml(&db.url, "lib", server.port).as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ep = Endpoint::from_account(&config.accounts[0])?;
    let t = Duration::from_secs(10);
    let client = connect::open(&ep, t).await?;
    let mut session = connect::login(client, &ep, t).await?;
    connect::select(
        &mut session,
        "INBOX",
        Default::default(),
        None,
        &mut idlesync::imap::view::View::new(false),
        t,
    )
    .await?;
    Ok(session)
}

/// `UID FETCH 1:*` of every message, bodies up to 1 MiB.
async fn fetch_all<'a>(
    session: &'a mut Session,
    view: &'a mut idlesync::imap::view::View,
) -> Result<fetch::FetchRun<'a>> {
    Ok(fetch::start(
        session,
        view,
        "1:*",
        0,
        1024 * 1024,
        Default::default(),
        Duration::from_secs(10),
    )
    .await?)
}

/// The same attack through the library, for the error itself.
async fn fetch_error(attack: Attack) -> Result<ImapError> {
    let server = hostile::start(attack).await?;
    let db = TestDb::sqlite()?;
    let mut session = selected(&server, &db).await?;
    let mut view = idlesync::imap::view::View::new(false);
    let mut run = fetch_all(&mut session, &mut view).await?;
    let r = tokio::time::timeout(
        WAIT,
        run.next_until(&CancellationToken::new(), |b, _| b.len()),
    )
    .await
    .context("the fetch neither ended nor failed")?;
    match r {
        Err(e) => Ok(e),
        Ok(got) => anyhow::bail!("the attack was accepted: {got:?}"),
    }
}

/// The whole check of one attack: through the daemon (state, class, and, for the floods, the
/// bytes each connection took), then through the library (class and error text).
async fn attack_is_bounded(id: &str, attack: Attack) -> Result<()> {
    let (server, d, _db) = daemon_against(id, attack.clone()).await?;
    // Each connection read at most the guard's limits plus what the two sockets buffer.
    let per = server.sent.load(Ordering::SeqCst) / server.connections.load(Ordering::SeqCst).max(1);
    assert!(per < 16 * 1024 * 1024, "{per} bytes per connection");
    d.shutdown().await;
    let e = fetch_error(attack).await?;
    let text = format!("{e:#}");
    assert!(
        text.len() <= MAX_ERROR_TEXT,
        "{} bytes of error text",
        text.len()
    );
    assert!(!text.contains('\r') && !text.contains('\n') && !text.contains('\0'));
    assert_eq!(e.kind(), "protocol", "{text}");
    Ok(())
}

/// Issue #14, 1: an endless response line took 33 MB and a core for 66 s, then sat in
/// `fetching`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_line_is_a_protocol_error_after_a_bounded_read() -> Result<()> {
    let attack = Attack::EndlessLine {
        total: 256 * 1024 * 1024,
        rate: None,
    };
    attack_is_bounded("acc-endless", attack).await
}

/// Issue #14, 2: a malformed FETCH was "incomplete" for ever and the tagged OK swallowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_fetch_is_a_protocol_error_at_once() -> Result<()> {
    attack_is_bounded("acc-malformed", Attack::MalformedFetch).await
}

/// Issue #14, 3: `{500000000}` made async-imap take 490 MB at once although idlesync asked
/// for `BODY.PEEK[]<0.N>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_above_what_was_asked_is_refused_before_its_bytes() -> Result<()> {
    let attack = Attack::HugeLiteral {
        total: 256 * 1024 * 1024,
    };
    attack_is_bounded("acc-literal", attack).await
}

/// Issue #14, 4: 4 KiB of garbage gave a 28.6 KB log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gives_a_bounded_protocol_error() -> Result<()> {
    attack_is_bounded("acc-garbage", Attack::Garbage).await
}

/// Issue #14, 4: a 20 MB line ended by a NUL gave a 117 MB log line and 311 MB of RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_ended_20_mb_line_gives_a_bounded_protocol_error() -> Result<()> {
    attack_is_bounded("acc-nul", Attack::NulLine).await
}

/// Issue #14, 6: a fetch in progress notices shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_in_progress_ends_on_cancellation() -> Result<()> {
    // A trickle the guard has no reason to refuse yet: under the line limit for minutes.
    let server = hostile::start(Attack::EndlessLine {
        total: u64::MAX,
        rate: Some(100),
    })
    .await?;
    let db = TestDb::sqlite()?;
    let mut session = selected(&server, &db).await?;
    let mut view = idlesync::imap::view::View::new(false);
    let mut run = fetch_all(&mut session, &mut view).await?;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move { trigger.cancel() });
    let r = tokio::time::timeout(WAIT, run.next_until(&cancel, |b, _| b.len()))
        .await
        .context("cancellation not noticed")?;
    assert!(matches!(r, Err(ImapError::Cancelled)), "{r:?}");
    Ok(())
}
