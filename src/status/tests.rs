//! The board's and the reporter's unit tests.

use std::sync::Arc;

use super::*;

#[test]
fn next_retry_and_last_message_time() {
    let board = Arc::new(StatusBoard::default());
    let r = Reporter::new(board.clone(), "status-unit-1", "INBOX");
    let snap = || board.snapshot().remove(0);
    r.set_last_uid(5);
    assert_eq!(
        snap().last_message_at,
        None,
        "the known last UID is no new message"
    );
    r.set_last_uid(6);
    assert!(snap().last_message_at.is_some());

    r.set_state(MailboxState::Backoff);
    r.set_next_retry(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(60)));
    assert_eq!(
        snap().next_retry_at.as_deref(),
        Some("1970-01-01T00:01:00.000Z")
    );
    assert!(snap().is_ready(), "an expected backoff is ready");
    r.set_state(MailboxState::Connecting);
    assert_eq!(snap().next_retry_at, None, "cleared when the retry starts");

    r.set_state(MailboxState::AuthFailed);
    assert!(!snap().is_ready());
}

#[test]
fn ghost_entries_late_reports_do_not_bring_a_removed_mailbox_back() {
    let board = Arc::new(StatusBoard::default());
    let r = Reporter::new(board.clone(), "status-unit-3", "INBOX");
    board.remove("status-unit-3", "INBOX");
    // What a task that has not yet seen its cancellation may still report.
    r.set_state(MailboxState::Backoff);
    r.error("io", "transient");
    r.set_last_uid(9);
    r.stored(1, None);
    r.reconnect();
    r.import_started(5);
    r.imported(1);
    r.import_done();
    r.changes_applied(1, 1);
    assert!(board.snapshot().is_empty(), "{:?}", board.snapshot());
    assert!(!board.render_metrics().contains("status-unit-3"));
    // Registering again (a reload that adds it back) starts it afresh.
    let again = Reporter::new(board.clone(), "status-unit-3", "INBOX");
    assert_eq!(board.snapshot().len(), 1);
    assert_eq!(again.state(), MailboxState::Connecting);
}

#[test]
fn first_connect_is_not_ready_a_reconnect_is() {
    let board = Arc::new(StatusBoard::default());
    let r = Reporter::new(board.clone(), "status-unit-2", "INBOX");
    assert!(!board.snapshot()[0].is_ready());
    r.reconnect();
    assert!(board.snapshot()[0].is_ready());
}

#[test]
fn import_progress_per_connection_in_status_json() {
    let board = Arc::new(StatusBoard::default());
    let r = Reporter::new(board.clone(), "status-unit-4", "INBOX");
    let json = || serde_json::to_value(board.snapshot().remove(0)).unwrap();
    assert!(json()["import"].is_null(), "{}", json());

    r.set_state(MailboxState::Syncing);
    r.import_started(10);
    r.imported(4);
    let import = &json()["import"];
    assert_eq!(
        (import["stored"].as_u64(), import["total"].as_u64()),
        (Some(4), Some(10))
    );
    assert_eq!(import["done"], false);
    assert!(
        import["rate_per_sec"].as_f64().is_some_and(|r| r >= 0.0),
        "{import}"
    );
    let started = import["started_at"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(started).is_ok(),
        "{import}"
    );

    // Abandoned (or complete): the figures stay, marked done; later reports do not move them.
    r.import_done();
    r.imported(3);
    r.set_state(MailboxState::Backoff);
    let import = &json()["import"];
    assert_eq!(
        (import["stored"].as_u64(), import["done"].as_bool()),
        (Some(4), Some(true))
    );

    // The next connection has run no import yet.
    r.set_state(MailboxState::Connecting);
    assert!(json()["import"].is_null(), "{}", json());
    r.import_started(6);
    assert_eq!(json()["import"]["total"], 6);
}

#[test]
fn change_and_import_counters_render_and_leave_with_the_mailbox() {
    let board = Arc::new(StatusBoard::default());
    let r = Reporter::new(board.clone(), "status-unit-5", "INBOX");
    r.import_started(100);
    r.imported(40);
    r.imported(2);
    r.changes_applied(2, 3);
    r.changes_applied(1, 0);
    let text = board.render_metrics();
    let l = r#"account="status-unit-5",mailbox="INBOX""#;
    for line in [
        format!("idlesync_imported_total{{{l}}} 42"),
        format!("idlesync_changes_applied_total{{{l},kind=\"flags\"}} 3"),
        format!("idlesync_changes_applied_total{{{l},kind=\"expunged\"}} 3"),
    ] {
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    board.remove("status-unit-5", "INBOX");
    r.changes_applied(5, 5);
    r.imported(1);
    assert!(!board.render_metrics().contains("status-unit-5"));
}
