//! Unit tests of `UID FETCH`: the items asked for, the facts parsed, and responses
//! interleaved with the bodies.

use super::*;
use crate::imap::idle::test_server::session;

fn parse(line: &[u8]) -> Response<'_> {
    Response::parse(line).expect("parses").1
}

/// The facts of a one-line FETCH response with a body.
fn meta_of(line: &[u8]) -> ImapMeta {
    let r = parse(line);
    let Response::Fetch(_, attrs) = &r else {
        panic!("{r:?}")
    };
    new_message(attrs, 0).expect("a message").0
}

#[test]
fn new_messages_only_with_their_facts() {
    let r = parse(b"* 3 FETCH (UID 42 FLAGS (\\Seen $Work) INTERNALDATE \"14-Nov-2023 22:13:20 +0000\" RFC822.SIZE 5 BODY[]<0> {5}\r\nhello)\r\n");
    let Response::Fetch(_, attrs) = &r else {
        panic!("{r:?}")
    };
    let (meta, body) = new_message(attrs, 41).expect("new");
    assert_eq!((meta.uid, meta.size, body), (42, Some(5), &b"hello"[..]));
    assert_eq!(meta.flags, "\\Seen $Work");
    assert_eq!(meta.internal_date_ms, Some(1_700_000_000_000));
    assert_eq!(
        (meta.modseq, meta.email_id, meta.server_thread_id),
        (None, None, None)
    );
    // The last message answered for an empty `43:*` range is not new.
    assert!(new_message(attrs, 42).is_none());
    // A flag update carries no body.
    let r = parse(b"* 3 FETCH (UID 50 FLAGS (\\Seen))\r\n");
    let Response::Fetch(_, attrs) = &r else {
        panic!("{r:?}")
    };
    assert!(new_message(attrs, 41).is_none());
}

#[test]
fn items_follow_the_extras() {
    assert_eq!(
        fetch_items(100, Extras::default()),
        "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]<0.100>)"
    );
    let all = Extras {
        modseq: true,
        objectid: true,
        gmail: true,
    };
    assert_eq!(
        fetch_items(7, all),
        "(UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ EMAILID THREADID X-GM-MSGID X-GM-THRID \
         BODY.PEEK[]<0.7>)"
    );
}

#[test]
fn modseq_and_object_ids_are_parsed() {
    let m = meta_of(
        b"* 1 FETCH (UID 9 MODSEQ (12345678901) EMAILID (M6d95) THREADID (T64b4) BODY[]<0> {2}\r\nhi)\r\n",
    );
    assert_eq!(m.modseq, Some(12_345_678_901));
    assert_eq!(m.email_id.as_deref(), Some("M6d95"));
    assert_eq!(m.server_thread_id.as_deref(), Some("T64b4"));
    // RFC 8474: a message with no thread.
    let m = meta_of(b"* 1 FETCH (UID 9 EMAILID (Mx) THREADID NIL BODY[]<0> {2}\r\nhi)\r\n");
    assert_eq!(m.server_thread_id, None);
}

#[test]
fn gmail_ids_are_decimal_text() {
    let m = meta_of(
        b"* 1 FETCH (X-GM-THRID 1278455344230334865 X-GM-MSGID 1278455344230334866 UID 9 MODSEQ (4) BODY[]<0> {2}\r\nhi)\r\n",
    );
    assert_eq!(m.email_id.as_deref(), Some("1278455344230334866"));
    assert_eq!(m.server_thread_id.as_deref(), Some("1278455344230334865"));
    assert_eq!(m.modseq, Some(4));
    // Where both are sent, RFC 8474's identifiers win.
    let m = meta_of(
        b"* 1 FETCH (UID 9 X-GM-MSGID 5 X-GM-THRID 6 EMAILID (Ma) THREADID (Tb) BODY[]<0> {2}\r\nhi)\r\n",
    );
    assert_eq!(m.email_id.as_deref(), Some("Ma"));
    assert_eq!(m.server_thread_id.as_deref(), Some("Tb"));
}

/// A body FETCH response for `uid` at `seq`.
fn message(seq: u32, uid: u32) -> String {
    format!("* {seq} FETCH (UID {uid} FLAGS (\\Seen) MODSEQ ({uid}) BODY[]<0> {{2}}\r\nhi)\r\n")
}

#[tokio::test]
async fn expunge_between_bodies_keeps_sequence_numbers_right() {
    let (mut s, mut server) = session().await;
    let mut view = View::new(false);
    view.absorb(&parse(b"* 3 EXISTS\r\n"));
    for (seq, uid) in [(1, 10), (2, 11), (3, 12)] {
        view.place(seq, uid);
    }
    // A flag report for a message not fetched yet; its fetch brings newer flags.
    view.absorb(&parse(b"* 4 FETCH (UID 13 FLAGS ())\r\n"));
    let cancel = CancellationToken::new();
    let t = Duration::from_secs(10);
    let serve = async {
        let tag = server.command("UID FETCH 13:* (UID FLAGS").await;
        let mut reply = message(4, 13);
        reply.push_str("* 2 EXPUNGE\r\n");
        // After the expunge, UID 14 sits at seq 4.
        reply.push_str(&message(4, 14));
        reply.push_str("* 1 FETCH (FLAGS (\\Seen))\r\n* 5 EXISTS\r\n");
        reply.push_str(&format!("{tag} OK fetched\r\n"));
        server.send(&reply).await;
    };
    let extras = Extras {
        modseq: true,
        ..Extras::default()
    };
    let fetch = async {
        let mut run = start(&mut s, &mut view, "13:*", 12, 1000, extras, t).await?;
        let mut got = Vec::new();
        while let Some(m) = run
            .next_until(&cancel, |body, meta| (meta, body.to_vec()))
            .await?
        {
            got.push(m);
        }
        Ok::<_, ImapError>((got, run.saw_exists))
    };
    let (fetched, ()) = tokio::join!(fetch, serve);
    let (got, saw_exists) = fetched.expect("fetch");
    let uids: Vec<_> = got.iter().map(|(m, _)| (m.uid, m.modseq)).collect();
    assert_eq!(uids, vec![(13, Some(13)), (14, Some(14))]);
    assert!(saw_exists);
    assert!(view.take_new_mail().is_none(), "taken by saw_exists");
    assert_eq!(view.exists(), 5);
    assert!(!view.lost());
    // Seq 4 is UID 14.
    view.absorb(&parse(b"* 4 FETCH (FLAGS (\\Flagged))\r\n"));
    let set = view.pending.take_batch(100);
    assert_eq!(set.expunged, vec![11]);
    let flags: Vec<_> = set
        .flags
        .iter()
        .map(|f| (f.uid, f.flags.as_str()))
        .collect();
    assert_eq!(flags, vec![(10, "\\Seen"), (14, "\\Flagged")]);
}

#[tokio::test]
async fn a_bad_uid_set_is_refused_before_sending() {
    let (mut s, _server) = session().await;
    let mut view = View::new(true);
    let t = Duration::from_secs(1);
    let r = start(&mut s, &mut view, "1:* BODY[]", 0, 10, Extras::default(), t).await;
    assert!(
        matches!(
            r,
            Err(ImapError::Protocol(async_imap::error::Error::Validate(_)))
        ),
        "{:?}",
        r.err()
    );
}

#[test]
fn recent_is_a_session_flag_and_is_not_kept() {
    let m = meta_of(b"* 1 FETCH (UID 9 FLAGS (\\Seen \\Recent $Work) BODY[]<0> {1}\r\nx)\r\n");
    assert_eq!(m.flags, "\\Seen $Work");
    let mut v = View::new(true);
    v.absorb(&parse(b"* 1 FETCH (UID 9 FLAGS (\\Recent))\r\n"));
    let set = v.pending.take_batch(10);
    assert_eq!(set.flags[0].flags, "", "{set:?}");
}
