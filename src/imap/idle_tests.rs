//! Unit tests of hand-driven IDLE over a scripted in-memory server.

use std::time::Duration;

use super::test_server::{session, Server};
use super::*;

/// No action is ever queued in these tests.
static NO_ACTIONS: tokio::sync::Notify = tokio::sync::Notify::const_new();

const TIMERS: IdleTimers = IdleTimers {
    renew: Duration::from_secs(29 * 60),
    dead_after: Duration::from_secs(300),
    done_timeout: Duration::from_secs(15),
};

/// Enters IDLE, the server answering with `before` and then `+ idling`. The IDLE tag.
async fn entered(
    session: Session,
    server: &mut Server,
    view: &mut View,
    before: &str,
) -> (Idling, String) {
    let mut script = String::new();
    let idling = {
        let enter = enter(session, view, TIMERS, || {});
        let serve = async {
            let tag = server.command("IDLE").await;
            server.send(before).await;
            server.send("+ idling\r\n").await;
            script = tag;
        };
        let (idling, ()) = tokio::join!(enter, serve);
        idling.expect("enter")
    };
    (idling, script)
}

/// Leaves IDLE, the server answering with `before` and then the tagged OK.
async fn left(
    idling: Idling,
    server: &mut Server,
    view: &mut View,
    tag: &str,
    before: &str,
) -> Result<Session, ImapError> {
    let serve = async {
        assert_eq!(server.line().await, "DONE");
        server.send(before).await;
        server.send(&format!("{tag} OK idle done\r\n")).await;
    };
    let (done, ()) = tokio::join!(idling.done(view, TIMERS), serve);
    done
}

#[tokio::test]
async fn exists_before_idling_is_new_mail_at_once() {
    let (s, mut server) = session().await;
    let mut view = View::new(true);
    let (mut idling, tag) = entered(s, &mut server, &mut view, "* 4 EXISTS\r\n").await;
    let cancel = CancellationToken::new();
    let mut live = Liveness::default();
    let ev = idling
        .wait(&mut view, TIMERS, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert!(matches!(ev, Ok(IdleEvent::NewMail { .. })), "{ev:?}");
    assert_eq!(view.exists(), 4);
    left(idling, &mut server, &mut view, &tag, "")
        .await
        .expect("done");
}

#[tokio::test]
async fn storm_loses_nothing_and_comes_in_batches() {
    let (s, mut server) = session().await;
    let mut view = View::new(true);
    let (mut idling, tag) = entered(s, &mut server, &mut view, "").await;
    // Far more than async-imap's 100-entry unsolicited channel.
    let mut storm = String::new();
    for uid in 1..=3_000 {
        storm.push_str(&format!(
            "* {uid} FETCH (UID {uid} FLAGS (\\Seen) MODSEQ ({uid}))\r\n"
        ));
    }
    storm.push_str("* 2999 EXPUNGE\r\n* VANISHED 3000\r\n");
    server.send(&storm).await;
    let cancel = CancellationToken::new();
    let mut live = Liveness::default();
    let ev = idling
        .wait(&mut view, TIMERS, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert_eq!(ev.expect("wait"), IdleEvent::Changed);
    assert_eq!(view.pending.len(), MAX_PENDING, "one batch at the cap");
    let first = view.pending.take_batch(usize::MAX);
    // Still in IDLE: the rest is read by the next wait, nothing was sent.
    let ev = idling
        .wait(&mut view, TIMERS, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert_eq!(ev.expect("wait"), IdleEvent::Changed);
    let second = view.pending.take_batch(usize::MAX);
    assert_eq!(first.flags.len() + second.flags.len(), 2_999);
    assert_eq!(second.expunged, vec![3_000]);
    assert_eq!(second.highest_modseq, Some(3_000));
    // The sequence-numbered EXPUNGE under QRESYNC is a contradiction, noticed.
    assert!(view.lost());
    left(idling, &mut server, &mut view, &tag, "")
        .await
        .expect("done");
}

#[tokio::test]
async fn responses_during_done_reach_the_view() {
    let (s, mut server) = session().await;
    let mut view = View::new(true);
    let (mut idling, tag) = entered(s, &mut server, &mut view, "").await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut live = Liveness::default();
    let ev = idling
        .wait(&mut view, TIMERS, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert_eq!(ev.expect("wait"), IdleEvent::Shutdown);
    let during = "* VANISHED 7\r\n* 9 EXISTS\r\n* 3 FETCH (UID 5 FLAGS ())\r\n";
    let session = left(idling, &mut server, &mut view, &tag, during).await;
    let session = session.expect("done");
    assert_eq!(view.pending.len(), 2);
    // The EXISTS waits in the view: the next round reports it at once.
    let (mut idling, tag) = entered(session, &mut server, &mut view, "").await;
    let ev = idling
        .wait(&mut view, TIMERS, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert_eq!(
        ev.expect("cancelled"),
        IdleEvent::Shutdown,
        "shutdown first"
    );
    let cancel = CancellationToken::new();
    let ev = idling
        .wait(&mut view, TIMERS, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert!(matches!(ev, Ok(IdleEvent::NewMail { .. })), "{ev:?}");
    // Changes left from before are reported at once, without reading.
    let ev = idling
        .wait(&mut view, TIMERS, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert_eq!(ev.expect("pending"), IdleEvent::Changed);
    assert_eq!(view.pending.len(), 2);
    left(idling, &mut server, &mut view, &tag, "")
        .await
        .expect("done");
}

#[tokio::test]
async fn bye_and_tagged_refusals_are_errors() {
    let (s, mut server) = session().await;
    let mut view = View::new(true);
    let (mut idling, _tag) = entered(s, &mut server, &mut view, "").await;
    server.send("* BYE shutting down\r\n").await;
    let mut live = Liveness::default();
    let ev = idling
        .wait(
            &mut view,
            TIMERS,
            &mut live,
            &CancellationToken::new(),
            &NO_ACTIONS,
        )
        .await;
    assert!(
        matches!(ev, Err(ImapError::Closed(ref m)) if m == "shutting down"),
        "{ev:?}"
    );

    let (s, mut server) = session().await;
    let serve = async {
        let tag = server.command("IDLE").await;
        server.send(&format!("{tag} BAD no IDLE here\r\n")).await;
    };
    let (r, ()) = tokio::join!(enter(s, &mut view, TIMERS, || {}), serve);
    assert!(
        matches!(r, Err(ImapError::Protocol(ProtoError::Bad(ref m))) if m == "no IDLE here"),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn renew_then_probe_then_dead() {
    let (s, mut server) = session().await;
    let timers = IdleTimers {
        renew: Duration::from_secs(100),
        dead_after: Duration::from_secs(60),
        done_timeout: Duration::from_secs(5),
    };
    let mut view = View::new(true);
    let (mut idling, tag) = entered(s, &mut server, &mut view, "").await;
    let cancel = CancellationToken::new();
    let mut live = Liveness::default();
    // A keepalive at 50 s: silence from 50 s, renew at 100 s comes first.
    let wait = idling.wait(&mut view, timers, &mut live, &cancel, &NO_ACTIONS);
    let serve = async {
        tokio::time::sleep(Duration::from_secs(50)).await;
        server.send("* OK Still here\r\n").await;
    };
    let (ev, ()) = tokio::join!(wait, serve);
    assert_eq!(ev.expect("renew"), IdleEvent::Renew);
    let s = left(idling, &mut server, &mut view, &tag, "")
        .await
        .expect("renew DONE");

    // A server not known to send keepalives is probed after dead_after.
    let mut live = Liveness::default();
    let (mut idling, _tag) = entered(s, &mut server, &mut view, "").await;
    let ev = idling
        .wait(&mut view, timers, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert_eq!(ev.expect("probe"), IdleEvent::Renew);
    // Its DONE goes unanswered: dead.
    let done = idling.done(&mut view, timers);
    let (r, line) = tokio::join!(done, server.line());
    assert_eq!(line, "DONE");
    assert!(matches!(r, Err(ImapError::Dead)), "{r:?}");

    // Where keepalives were seen, silence itself is death.
    let (s, mut server) = session().await;
    let (mut idling, _tag) = entered(s, &mut server, &mut view, "* OK hi\r\n").await;
    let mut live = Liveness::default();
    server.send("* OK Still here\r\n").await;
    let ev = idling
        .wait(&mut view, timers, &mut live, &cancel, &NO_ACTIONS)
        .await;
    assert!(matches!(ev, Err(ImapError::Dead)), "{ev:?}");
}

#[tokio::test]
async fn unanswered_done_after_news_is_a_timeout() {
    let (s, mut server) = session().await;
    let timers = IdleTimers {
        done_timeout: Duration::from_millis(50),
        ..TIMERS
    };
    let mut view = View::new(true);
    let (idling, _tag) = entered(s, &mut server, &mut view, "").await;
    let (r, line) = tokio::join!(idling.done(&mut view, timers), server.line());
    assert_eq!(line, "DONE");
    assert!(matches!(r, Err(ImapError::Timeout("DONE"))), "{r:?}");
}

/// What an idle mailbox holds while it waits: the session in IDLE, its view and the wait.
/// The round this replaces (async-imap's `Handle` and its wait) was 944 bytes; #11 allows
/// idle memory to grow by at most 2 KiB per mailbox.
#[tokio::test]
async fn an_idle_mailbox_stays_small() {
    let (s, mut server) = session().await;
    let mut view = View::new(false);
    let (mut idling, _tag) = entered(s, &mut server, &mut view, "").await;
    let cancel = CancellationToken::new();
    let mut live = Liveness::default();
    let wait = idling.wait(&mut view, TIMERS, &mut live, &cancel, &NO_ACTIONS);
    let waiting = std::mem::size_of_val(&wait);
    let held = std::mem::size_of::<Idling>() + std::mem::size_of::<View>();
    assert!(
        waiting + held <= 1024,
        "wait {waiting} + Idling and View {held} bytes"
    );
}
