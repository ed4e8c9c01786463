//! The guard's write side and its progress deadline: one write per command, a stall while a
//! command is in flight, silence in IDLE and between commands.

use super::*;

#[tokio::test(start_paused = true)]
async fn each_command_is_one_write() {
    let replies = b"A0001 OK noop done\r\nA0002 OK [READ-WRITE] selected\r\n".to_vec();
    let mut client = async_imap::Client::new(guard(Script::new([replies.clone()])));
    client
        .run_command_and_check_ok("NOOP", None)
        .await
        .expect("noop");
    client
        .run_command_and_check_ok("SELECT INBOX", None)
        .await
        .expect("select");
    let inner = client.into_inner().into_inner();
    assert_eq!(inner.writes, 2, "{}", inner.written.escape_ascii());
    assert_eq!(inner.written, b"A0001 NOOP\r\nA0002 SELECT INBOX\r\n");

    // Without the guard: four writes per command (tag, space, command, CRLF).
    let mut client = async_imap::Client::new(Script::new([replies]));
    client
        .run_command_and_check_ok("NOOP", None)
        .await
        .expect("noop");
    assert_eq!(client.into_inner().writes, 4);
}

#[tokio::test(start_paused = true)]
async fn a_command_without_answer_stalls_after_the_progress_deadline() {
    let mut g = guard(Script::new([]));
    g.write_all(b"A1 SELECT INBOX\r\n").await.expect("writes");
    g.flush().await.expect("flushes");
    let started = Instant::now();
    let mut buf = [0; 64];
    let err = g.read(&mut buf).await.expect_err("stalls");
    assert!(matches!(guard_error(&err), GuardError::Stalled(_)), "{err}");
    // Virtual time: exact.
    assert_eq!(started.elapsed(), T);
}

#[tokio::test(start_paused = true)]
async fn silence_during_idle_and_between_commands_is_not_a_stall() {
    // Between commands: nothing in flight.
    let mut g = guard(Script::new([]));
    let mut buf = [0; 64];
    assert!(tokio::time::timeout(T * 10, g.read(&mut buf))
        .await
        .is_err());

    // IDLE accepted: silence is normal.
    let mut g = guard(Script::new([b"+ idling\r\n".to_vec()]));
    g.write_all(b"A2 IDLE\r\n").await.expect("writes");
    g.flush().await.expect("flushes");
    let n = g.read(&mut buf).await.expect("continuation");
    assert_eq!(&buf[..n], b"+ idling\r\n");
    assert!(tokio::time::timeout(T * 10, g.read(&mut buf))
        .await
        .is_err());

    // DONE puts IDLE's tagged answer in flight again.
    g.write_all(b"DONE\r\n").await.expect("writes");
    g.flush().await.expect("flushes");
    let err = g.read(&mut buf).await.expect_err("stalls");
    assert!(matches!(guard_error(&err), GuardError::Stalled(_)), "{err}");
}
