//! The catch-up commands against real Dovecot: capability negotiation (QRESYNC, CONDSTORE
//! only, neither), a QRESYNC SELECT that reports exactly the expunges and flag changes since a
//! known state, CHANGEDSINCE, the UID/FLAGS enumeration and `UID SEARCH SINCE`.
//!
//! Changes are made by a second session ([`Wire`]) while idlesync's session is logged out, so
//! that what idlesync reads comes from the catch-up and not from pushes.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::daemon::AccountSpec;
use common::dovecot::wire::Wire;
use common::dovecot::{Dovecot, DovecotOptions};
use common::setup::ConfigToml;
use idlesync::changes::ChangeSet;
use idlesync::imap::caps::{self, Caps};
use idlesync::imap::connect::{self, Endpoint, Known, Selected};
use idlesync::imap::view::View;
use idlesync::imap::{sync, Session};
use idlesync::Config;

const T: Duration = Duration::from_secs(10);
const USER: &str = "sync";
const PASSWORD: &str = "imap-sync-password-3";

/// What Dovecot 2.3.19 advertises after login (checked by [`the_lists_are_dovecots_own`]),
/// without QRESYNC: the Gmail shape.
const CONDSTORE_ONLY: &str = "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE \
    SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL \
    CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE ESEARCH \
    ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY \
    PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY\n";

/// The same without CONDSTORE either (the Microsoft 365 shape).
const NEITHER: &str = "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE \
    SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL \
    CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 ESEARCH \
    ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY \
    PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY\n";

fn dovecot(extra_config: &str) -> Result<Dovecot> {
    Dovecot::start_with(DovecotOptions {
        users: vec![(USER.into(), PASSWORD.into())],
        extra_config: extra_config.into(),
        ..DovecotOptions::default()
    })
}

/// A logged-in idlesync session on Dovecot's plain port (loopback).
async fn session(dc: &Dovecot) -> Result<Session> {
    let account = AccountSpec {
        tls: "none",
        ..AccountSpec::implicit("acc-sync", USER, PASSWORD, dc.imap_port(), &["INBOX"])
    };
    let toml = ConfigToml::new("sqlite://unused.db")
        .account(&account, None)
        .render();
    let config = Config::parse(Path::new("sync.toml"), toml.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ep = Endpoint::from_account(&config.accounts[0])?;
    let client = connect::open(&ep, T).await?;
    Ok(connect::login(client, &ep, T).await?)
}

fn mail(n: u32) -> Vec<u8> {
    format!("From: a@example.test\r\nTo: b@example.test\r\nSubject: m{n}\r\n\r\nbody {n}\r\n")
        .into_bytes()
}

/// A second session that makes changes: appends `n` messages to INBOX, returns their UIDs.
async fn fill(dc: &Dovecot, n: u32) -> Result<Vec<u32>> {
    let mut wire = Wire::login(dc, USER).await?;
    let mut uids = Vec::new();
    for i in 0..n {
        uids.push(wire.append("INBOX", &mail(i)).await?);
    }
    wire.logout().await;
    Ok(uids)
}

/// Runs `commands` (tagged, each must answer OK) in a second session with INBOX selected.
async fn change(dc: &Dovecot, commands: &[&str]) -> Result<()> {
    let mut wire = Wire::login(dc, USER).await?;
    let r = wire.command("SELECT INBOX", None).await?;
    ensure!(r.starts_with("OK"), "SELECT: {r}");
    for c in commands {
        let r = wire.command(c, None).await?;
        ensure!(r.starts_with("OK"), "{c}: {r}");
    }
    wire.logout().await;
    Ok(())
}

/// Negotiates and selects INBOX with what is `known`; the session stays open.
async fn select(dc: &Dovecot, known: Option<Known>) -> Result<(Session, Caps, View, Selected)> {
    let mut s = session(dc).await?;
    let caps = caps::negotiate(&mut s, false, T).await?;
    let mut view = View::new(caps.qresync);
    let sel = connect::select(&mut s, "INBOX", caps, known, &mut view, T).await?;
    Ok((s, caps, view, sel))
}

/// The capabilities in an `imap_capability = …` line.
fn listed(config_line: &str) -> Vec<String> {
    let mut v: Vec<String> = config_line
        .trim_start_matches("imap_capability = ")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The lists above are Dovecot's own after login, less QRESYNC (less CONDSTORE too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lists_are_dovecots_own() -> Result<()> {
    let dc = dovecot("")?;
    let mut s = session(&dc).await?;
    let mut offered: Vec<String> = s
        .capabilities()
        .await?
        .iter()
        .map(|c| match c {
            async_imap::types::Capability::Imap4rev1 => "IMAP4rev1".to_string(),
            async_imap::types::Capability::Auth(a) => format!("AUTH={a}"),
            async_imap::types::Capability::Atom(a) => a.clone(),
        })
        .collect();
    offered.sort();
    let mut want = listed(CONDSTORE_ONLY);
    want.push("QRESYNC".into());
    want.sort();
    assert_eq!(offered, want);
    let mut neither = listed(NEITHER);
    neither.push("CONDSTORE".into());
    neither.sort();
    assert_eq!(neither, listed(CONDSTORE_ONLY));
    connect::logout(s, T).await;
    Ok(())
}

/// What every test Dovecot offers besides: MOVE and UIDPLUS (the actions of #19 use them).
const MOVE_UIDPLUS: Caps = Caps {
    qresync: false,
    condstore: false,
    utf8_accept: false,
    objectid: false,
    gmail: false,
    moves: true,
    uidplus: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_follows_what_is_advertised() -> Result<()> {
    for (extra, want) in [
        (
            "",
            Caps {
                qresync: true,
                condstore: true,
                ..MOVE_UIDPLUS
            },
        ),
        (
            CONDSTORE_ONLY,
            Caps {
                condstore: true,
                ..MOVE_UIDPLUS
            },
        ),
        (NEITHER, MOVE_UIDPLUS),
    ] {
        let dc = dovecot(extra)?;
        let mut s = session(&dc).await?;
        let caps = caps::negotiate(&mut s, true, T).await?;
        assert_eq!(caps, want, "with {extra:?}");
        let mut view = View::new(caps.qresync);
        let sel = connect::select(&mut s, "INBOX", caps, None, &mut view, T).await?;
        assert_eq!(sel.highest_modseq.is_some(), caps.condstore, "{sel:?}");
        assert_eq!(view.tracks_seqs(), !caps.qresync);
        connect::logout(s, T).await;
    }
    Ok(())
}

/// A QRESYNC SELECT from a known state reports exactly the expunges and the flag changes made
/// since, and nothing when the UIDVALIDITY given is not the mailbox's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qresync_select_reports_exactly_what_changed() -> Result<()> {
    let dc = dovecot("")?;
    let uids = fill(&dc, 6).await?;
    let (s, caps, view, sel) = select(&dc, None).await?;
    assert!(caps.qresync);
    assert!(view.pending.is_empty(), "nothing known, nothing reported");
    connect::logout(s, T).await;
    let known = Known {
        uidvalidity: sel.uid_validity,
        highest_modseq: sel.highest_modseq.context("HIGHESTMODSEQ")?,
        last_uid: uids[5],
    };

    change(
        &dc,
        &[
            &format!("UID STORE {} +FLAGS (\\Seen)", uids[1]),
            &format!("UID STORE {} +FLAGS (\\Flagged $Work)", uids[4]),
            &format!("UID STORE {},{} +FLAGS (\\Deleted)", uids[2], uids[3]),
            "EXPUNGE",
        ],
    )
    .await?;

    let (s, _, mut view, sel) = select(&dc, Some(known)).await?;
    assert_eq!(sel.exists, 4);
    let got = view.pending.take_batch(usize::MAX);
    let flags: Vec<(u32, &str)> = got
        .flags
        .iter()
        .map(|f| (f.uid, f.flags.as_str()))
        .collect();
    assert_eq!(
        flags,
        vec![(uids[1], "\\Seen"), (uids[4], "\\Flagged $Work")]
    );
    assert!(got.flags.iter().all(|f| f.modseq.is_some()), "{got:?}");
    assert_eq!(got.expunged, vec![uids[2], uids[3]]);
    connect::logout(s, T).await;

    let stale = Known {
        uidvalidity: known.uidvalidity.wrapping_add(1),
        ..known
    };
    let (s, _, mut view, sel) = select(&dc, Some(stale)).await?;
    assert_ne!(sel.uid_validity, stale.uidvalidity);
    assert_eq!(view.pending.take_batch(usize::MAX), ChangeSet::default());
    connect::logout(s, T).await;
    Ok(())
}

/// CONDSTORE only: CHANGEDSINCE gives the changed flags, the enumeration every present message
/// with its flags (its sequence numbers placed in the view), in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_since_and_enumerate_without_qresync() -> Result<()> {
    let dc = dovecot(CONDSTORE_ONLY)?;
    let uids = fill(&dc, 7).await?;
    let (s, caps, _, sel) = select(&dc, None).await?;
    assert_eq!((caps.qresync, caps.condstore), (false, true));
    let modseq = sel.highest_modseq.context("HIGHESTMODSEQ")?;
    connect::logout(s, T).await;

    change(
        &dc,
        &[
            &format!("UID STORE {} +FLAGS (\\Answered)", uids[0]),
            &format!("UID STORE {} +FLAGS (\\Seen)", uids[6]),
            &format!("UID STORE {} +FLAGS (\\Deleted)", uids[3]),
            "EXPUNGE",
        ],
    )
    .await?;

    let (mut s, _, mut view, _) = select(&dc, None).await?;
    sync::changed_since(&mut s, &mut view, uids[6], modseq, T).await?;
    let got = view.pending.take_batch(usize::MAX);
    let flags: Vec<(u32, &str)> = got
        .flags
        .iter()
        .map(|f| (f.uid, f.flags.as_str()))
        .collect();
    // The expunged message changed too, but is gone: only the present ones answer.
    assert_eq!(flags, vec![(uids[0], "\\Answered"), (uids[6], "\\Seen")]);

    let mut all = Vec::new();
    {
        let mut e = sync::enumerate(&mut s, &mut view, uids[6], T).await?;
        for _ in 0..10 {
            let batch = e.next_batch(4).await?;
            ensure!(batch.len() <= 4, "{batch:?}");
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
    }
    let want: Vec<(u32, String)> = [0, 1, 2, 4, 5, 6]
        .iter()
        .map(|&i| {
            let f = match i {
                0 => "\\Answered",
                6 => "\\Seen",
                _ => "",
            };
            (uids[i], f.to_string())
        })
        .collect();
    assert_eq!(all, want);
    assert!(view.pending.is_empty());
    assert!(!view.lost());
    // The enumeration placed every sequence number: a sequence-numbered EXPUNGE (made by the
    // second session and pushed at the next command) resolves to its UID.
    change(
        &dc,
        &[
            &format!("UID STORE {} +FLAGS (\\Deleted)", uids[5]),
            "EXPUNGE",
        ],
    )
    .await?;
    sync::changed_since(&mut s, &mut view, uids[6], 1 << 62, T).await?;
    assert_eq!(view.pending.take_batch(usize::MAX).expunged, vec![uids[5]]);
    assert!(!view.lost());
    connect::logout(s, T).await;
    Ok(())
}

/// Neither CONDSTORE nor QRESYNC: plain SELECT, and the enumeration is the whole picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enumerate_without_condstore() -> Result<()> {
    let dc = dovecot(NEITHER)?;
    let uids = fill(&dc, 3).await?;
    change(&dc, &[&format!("UID STORE {} +FLAGS (\\Seen)", uids[1])]).await?;
    let (mut s, caps, mut view, sel) = select(&dc, None).await?;
    assert_eq!(caps, MOVE_UIDPLUS);
    assert_eq!(sel.highest_modseq, None);
    let mut e = sync::enumerate(&mut s, &mut view, sel.uid_next.unwrap_or(1) - 1, T).await?;
    let all = e.next_batch(100).await?;
    assert!(e.next_batch(100).await?.is_empty());
    drop(e);
    assert_eq!(
        all,
        vec![
            (uids[0], String::new()),
            (uids[1], "\\Seen".to_string()),
            (uids[2], String::new())
        ]
    );
    // Nothing is sent for an empty range.
    let mut e = sync::enumerate(&mut s, &mut view, 0, T).await?;
    assert!(e.next_batch(100).await?.is_empty());
    drop(e);
    connect::logout(s, T).await;
    Ok(())
}

/// `UID SEARCH SINCE` gives the UIDs of messages whose INTERNALDATE is on or after the date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_since_finds_the_recent_messages() -> Result<()> {
    let dc = dovecot("")?;
    let mut wire = Wire::login(&dc, USER).await?;
    let mut uids = Vec::new();
    for (i, date) in [
        "01-Jan-2020 10:00:00 +0000",
        "31-Aug-2026 12:00:00 +0000",
        "01-Sep-2026 12:00:00 +0000",
        "15-Oct-2026 08:30:00 +0000",
    ]
    .iter()
    .enumerate()
    {
        let raw = mail(i as u32);
        let r = wire
            .command(&format!("APPEND INBOX () \"{date}\""), Some(&raw))
            .await?;
        uids.push(common::dovecot::wire::appenduid(&r).with_context(|| r.clone())?);
    }
    wire.logout().await;

    let (mut s, _, mut view, _) = select(&dc, None).await?;
    let since = chrono::NaiveDate::from_ymd_opt(2026, 9, 1).context("date")?;
    assert_eq!(sync::imap_date(since), "1-Sep-2026");
    let got = sync::search_since(&mut s, &mut view, since, (1, 1000), T).await?;
    assert_eq!(got, vec![uids[2], uids[3]]);
    let never = chrono::NaiveDate::from_ymd_opt(2030, 1, 1).context("date")?;
    assert!(sync::search_since(&mut s, &mut view, never, (1, 1000), T)
        .await?
        .is_empty());
    connect::logout(s, T).await;
    Ok(())
}

/// The scripted server (tests/common/scripted.rs) answers the catch-up as Dovecot does, so the
/// scripted daemon tests keep working once connections catch up: CONDSTORE where offered, the
/// enumeration, CHANGEDSINCE, SEARCH; a plain server gets no ENABLE and a plain SELECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_server_answers_the_catch_up() -> Result<()> {
    use common::scripted::{self, Behaviour};
    for offered in [None, Some("ENABLE CONDSTORE")] {
        let server = scripted::start_with(
            (0..3).map(mail).collect(),
            Behaviour {
                capabilities: offered.map(str::to_string),
                refuse_first_fetch: true,
                ..Behaviour::default()
            },
        )
        .await?;
        let account = AccountSpec {
            tls: "none",
            ..AccountSpec::implicit("acc-scripted", "user", "pw", server.port, &["INBOX"])
        };
        let toml = ConfigToml::new("sqlite://unused.db")
            .account(&account, None)
            .render();
        let config = Config::parse(Path::new("s.toml"), toml.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ep = Endpoint::from_account(&config.accounts[0])?;
        let mut s = connect::login(connect::open(&ep, T).await?, &ep, T).await?;
        let caps = caps::negotiate(&mut s, true, T).await?;
        assert_eq!(caps.condstore, offered.is_some());
        let mut view = View::new(caps.qresync);
        let sel = connect::select(&mut s, "INBOX", caps, None, &mut view, T).await?;
        assert_eq!(sel.highest_modseq, offered.map(|_| 1));
        let mut e = sync::enumerate(&mut s, &mut view, 2, T).await?;
        let all = e.next_batch(10).await?;
        assert!(e.next_batch(10).await?.is_empty());
        drop(e);
        assert_eq!(all, vec![(1, String::new()), (2, String::new())]);
        sync::changed_since(&mut s, &mut view, 3, 1, T).await?;
        assert!(view.pending.is_empty());
        let old = chrono::NaiveDate::from_ymd_opt(2023, 11, 1).context("date")?;
        let new = chrono::NaiveDate::from_ymd_opt(2023, 12, 1).context("date")?;
        assert_eq!(
            sync::search_since(&mut s, &mut view, old, (1, 1000), T).await?,
            vec![1, 2, 3]
        );
        assert!(sync::search_since(&mut s, &mut view, new, (1, 1000), T)
            .await?
            .is_empty());
        // The body fetch is still the one refused on the first connection.
        let mut run = idlesync::imap::fetch::start(
            &mut s,
            &mut view,
            "1:*",
            0,
            1 << 20,
            Default::default(),
            T,
        )
        .await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        assert!(run.next_until(&cancel, |_, m| m.uid).await?.is_some());
        let err = run
            .next_until(&cancel, |_, m| m.uid)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), "fetch_refused", "{err:?}");
        drop(run);
        let lines: Vec<String> = server.lines().into_iter().map(|(_, l)| l).collect();
        let enabled = lines.iter().any(|l| l.contains(" ENABLE "));
        assert_eq!(enabled, offered.is_some(), "{lines:?}");
        let select = lines
            .iter()
            .find(|l| l.contains(" SELECT "))
            .context("SELECT")?;
        assert_eq!(
            select.ends_with("(CONDSTORE)"),
            offered.is_some(),
            "{select}"
        );
        connect::logout(s, T).await;
    }
    Ok(())
}
