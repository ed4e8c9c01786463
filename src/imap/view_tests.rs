//! Unit tests of [`super::View`] and its run-length [`super::SeqMap`].

use super::*;

fn parse(line: &[u8]) -> Response<'_> {
    Response::parse(line).expect("parses").1
}

/// A map of `uids`, placed at sequence numbers 1, 2, ….
fn map_of(uids: &[u32]) -> SeqMap {
    let mut m = SeqMap::default();
    for (i, uid) in uids.iter().enumerate() {
        assert!(m.place(i as u32 + 1, *uid), "place {uid}");
    }
    m
}

/// Every UID of the map, by sequence number.
fn all(m: &mut SeqMap) -> Vec<u32> {
    (1..=m.len()).map(|s| m.uid(s).expect("mapped")).collect()
}

#[test]
fn contiguous_uids_are_one_run() {
    let mut m = SeqMap::default();
    for seq in 1..=10_000 {
        assert!(m.place(seq, seq + 100));
    }
    assert_eq!((m.len(), m.runs()), (10_000, 1));
    assert_eq!(m.uid(1), Some(101));
    assert_eq!(m.uid(10_000), Some(10_100));
    assert_eq!(m.uid(10_001), None);
    assert_eq!(m.uid(0), None);
}

#[test]
fn gaps_in_uids_start_new_runs() {
    let mut m = map_of(&[1, 2, 3, 7, 8, 20]);
    assert_eq!(m.runs(), 3);
    assert_eq!(all(&mut m), vec![1, 2, 3, 7, 8, 20]);
    // Looked up out of order, the hint must not mislead.
    assert_eq!(m.uid(6), Some(20));
    assert_eq!(m.uid(1), Some(1));
    assert_eq!(m.uid(4), Some(7));
}

#[test]
fn expunge_at_start_middle_and_end_of_a_run() {
    let mut m = map_of(&[1, 2, 3, 4, 5, 10, 11, 12]);
    assert_eq!(m.runs(), 2);
    // Start of the first run.
    assert_eq!(m.expunge(1), Some(1));
    assert_eq!(all(&mut m), vec![2, 3, 4, 5, 10, 11, 12]);
    assert_eq!(m.runs(), 2);
    // End of the first run.
    assert_eq!(m.expunge(4), Some(5));
    assert_eq!(all(&mut m), vec![2, 3, 4, 10, 11, 12]);
    assert_eq!(m.runs(), 2);
    // Middle of the second run: it splits.
    assert_eq!(m.expunge(5), Some(11));
    assert_eq!(all(&mut m), vec![2, 3, 4, 10, 12]);
    assert_eq!(m.runs(), 3);
    // A run of one disappears.
    assert_eq!(m.expunge(4), Some(10));
    assert_eq!(all(&mut m), vec![2, 3, 4, 12]);
    assert_eq!(m.runs(), 2);
    // The very last message.
    assert_eq!(m.expunge(4), Some(12));
    assert_eq!(all(&mut m), vec![2, 3, 4]);
    assert_eq!((m.len(), m.runs()), (3, 1));
    // Beyond the map: nothing known.
    assert_eq!(m.expunge(4), None);
    assert_eq!(m.expunge(0), None);
    assert_eq!(m.len(), 3);
}

#[test]
fn expunge_everything_in_either_order() {
    let mut m = map_of(&[1, 2, 3, 5, 6, 9]);
    // Dovecot expunges a range as `* 2 EXPUNGE` repeated.
    for uid in [2, 3, 5, 6, 9] {
        assert_eq!(m.expunge(2), Some(uid));
    }
    assert_eq!(all(&mut m), vec![1]);
    let mut m = map_of(&[1, 2, 3, 5, 6, 9]);
    for (seq, uid) in (1..=6).rev().zip([9, 6, 5, 3, 2, 1]) {
        assert_eq!(m.expunge(seq), Some(uid));
    }
    assert_eq!((m.len(), m.runs()), (0, 0));
    // Empty, it still takes new messages.
    assert!(m.place(1, 50));
    assert_eq!(all(&mut m), vec![50]);
}

#[test]
fn place_after_expunge_extends_the_map() {
    let mut m = map_of(&[1, 2, 3]);
    assert_eq!(m.expunge(3), Some(3));
    // UID 3 is gone; the next message is placed at seq 3 with a higher UID.
    assert!(m.place(3, 4));
    assert_eq!(all(&mut m), vec![1, 2, 4]);
    assert_eq!(m.runs(), 2);
    assert!(m.place(4, 5));
    assert_eq!(m.runs(), 2, "5 continues the run of 4");
    // Re-placing what is known agrees.
    assert!(m.place(3, 4));
    assert!(m.place(1, 1));
}

#[test]
fn contradictions_are_refused() {
    let mut m = map_of(&[1, 2, 5]);
    assert!(!m.place(2, 3), "seq 2 holds 2");
    assert!(!m.place(5, 9), "a gap: seq 4 unknown");
    assert!(!m.place(4, 5), "UIDs ascend");
    assert!(!m.place(4, 4), "UIDs ascend");
    assert!(!m.place(0, 1));
    assert_eq!(all(&mut m), vec![1, 2, 5]);
}

#[test]
fn remove_by_uid_shifts_later_messages() {
    let mut m = map_of(&[1, 2, 3, 8, 9]);
    assert!(m.remove_uid(2));
    assert!(!m.remove_uid(2));
    assert!(!m.remove_uid(5));
    assert!(!m.remove_uid(100));
    assert!(m.remove_uid(9));
    assert_eq!(all(&mut m), vec![1, 3, 8]);
}

#[test]
fn ascending_storm_uses_the_hint() {
    // Every other UID: 5,000 runs. An ascending lookup of all of them stays linear.
    let uids: Vec<u32> = (1..=5_000).map(|i| i * 2).collect();
    let mut m = map_of(&uids);
    assert_eq!(m.runs(), 5_000);
    assert_eq!(all(&mut m), uids);
}

#[test]
fn view_resolves_flag_changes_by_sequence_number() {
    let mut v = View::new(false);
    assert!(v.tracks_seqs());
    assert_eq!(v.absorb(&parse(b"* 3 EXISTS\r\n")), Absorbed::Exists(3));
    assert!(v.take_new_mail().is_some());
    assert!(v.take_new_mail().is_none());
    for (seq, uid) in [(1, 10), (2, 11), (3, 12)] {
        v.place(seq, uid);
    }
    let r = parse(b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (77))\r\n");
    assert_eq!(v.absorb(&r), Absorbed::Change);
    assert_eq!(v.absorb(&parse(b"* 1 EXPUNGE\r\n")), Absorbed::Change);
    // After the expunge, seq 2 is UID 12.
    v.absorb(&parse(b"* 2 FETCH (FLAGS ())\r\n"));
    assert_eq!(v.exists(), 2);
    assert!(!v.lost());
    let set = v.pending.take_batch(100);
    assert_eq!(set.expunged, vec![10]);
    let flags: Vec<_> = set
        .flags
        .iter()
        .map(|f| (f.uid, f.flags.as_str()))
        .collect();
    assert_eq!(flags, vec![(11, "\\Seen"), (12, "")]);
    assert_eq!(set.highest_modseq, Some(77));
}

#[test]
fn exists_below_the_map_is_lost() {
    let mut v = View::new(false);
    v.absorb(&parse(b"* 3 EXISTS\r\n"));
    for seq in 1..=3 {
        v.place(seq, seq);
    }
    v.absorb(&parse(b"* 3 EXISTS\r\n"));
    assert!(!v.lost());
    v.absorb(&parse(b"* 2 EXISTS\r\n"));
    assert!(v.lost(), "a message vanished without EXPUNGE");
}

#[test]
fn impossible_expunges_are_lost() {
    let mut v = View::new(false);
    v.absorb(&parse(b"* 2 EXISTS\r\n"));
    v.absorb(&parse(b"* 2 EXPUNGE\r\n"));
    assert!(!v.lost(), "a message never mapped: nothing stored");
    v.absorb(&parse(b"* 5 EXPUNGE\r\n"));
    assert!(v.lost(), "only one message is left");
    let mut v = View::new(true);
    v.absorb(&parse(b"* 2 EXISTS\r\n"));
    v.absorb(&parse(b"* 1 EXPUNGE\r\n"));
    assert!(
        v.lost(),
        "sequence numbers under QRESYNC cannot be resolved"
    );
}

#[test]
fn flag_change_with_uid_past_the_map_is_not_a_contradiction() {
    let mut v = View::new(false);
    v.absorb(&parse(b"* 9 EXISTS\r\n"));
    v.place(1, 1);
    v.absorb(&parse(b"* 7 FETCH (UID 40 FLAGS (\\Seen))\r\n"));
    assert!(!v.lost());
    v.absorb(&parse(b"* 1 FETCH (UID 2 FLAGS (\\Seen))\r\n"));
    assert!(v.lost(), "seq 1 holds UID 1");
}

#[test]
fn qresync_changes_carry_uids() {
    let mut v = View::new(true);
    assert!(!v.tracks_seqs());
    v.absorb(&parse(b"* 5 EXISTS\r\n"));
    v.absorb(&parse(b"* VANISHED 3:4\r\n"));
    v.absorb(&parse(b"* VANISHED (EARLIER) 1\r\n"));
    v.absorb(&parse(
        b"* 2 FETCH (UID 9 FLAGS (\\Flagged) MODSEQ (5))\r\n",
    ));
    v.absorb(&parse(b"* OK [HIGHESTMODSEQ 90] done\r\n"));
    assert_eq!(v.exists(), 3, "EARLIER does not count");
    assert!(!v.lost());
    let set = v.pending.take_batch(100);
    assert_eq!(set.expunged, vec![1, 3, 4]);
    assert_eq!(set.flags.len(), 1);
    assert_eq!(set.highest_modseq, Some(90));
    // A FETCH without UID under QRESYNC cannot be placed.
    v.absorb(&parse(b"* 2 FETCH (FLAGS (\\Seen))\r\n"));
    assert!(v.lost());
}

#[test]
fn vanished_without_qresync_shifts_the_map() {
    let mut v = View::new(false);
    v.absorb(&parse(b"* 3 EXISTS\r\n"));
    for seq in 1..=3 {
        v.place(seq, seq * 10);
    }
    v.absorb(&parse(b"* VANISHED 10\r\n"));
    v.absorb(&parse(b"* 1 FETCH (FLAGS (\\Seen))\r\n"));
    let set = v.pending.take_batch(10);
    assert_eq!(set.flags.first().map(|f| f.uid), Some(20));
}

#[test]
fn quiet_responses_are_nothing() {
    let mut v = View::new(false);
    for line in [
        &b"* OK Still here\r\n"[..],
        b"* 4 RECENT\r\n",
        b"+ idling\r\n",
        b"A1 OK done\r\n",
        b"* 1 FETCH (UID 5)\r\n",
    ] {
        assert_eq!(v.absorb(&parse(line)), Absorbed::Nothing, "{line:?}");
    }
    assert!(v.pending.is_empty());
}

#[test]
fn a_huge_vanished_is_lost_not_expanded() {
    let mut v = View::new(true);
    v.absorb(&parse(b"* VANISHED (EARLIER) 1:4294967295\r\n"));
    assert!(v.lost());
    assert!(v.pending.is_empty());
    let mut v = View::new(true);
    v.absorb(&parse(b"* VANISHED (EARLIER) 1:1000,5000:5999\r\n"));
    assert!(!v.lost());
    assert_eq!(v.pending.len(), 2_000);
}

#[test]
fn endless_flag_changes_are_capped_and_lose_the_view() {
    let mut v = View::new(true);
    for uid in 1..=(MAX_HELD as u32 + 10) {
        let line = format!("* 1 FETCH (UID {uid} FLAGS (\\Seen))\r\n");
        v.absorb(&parse(line.as_bytes()));
    }
    assert!(v.lost(), "past the cap the connection must be rebuilt");
    assert_eq!(v.pending.len(), MAX_HELD, "nothing held past the cap");
    v.absorb(&parse(b"* VANISHED 7\r\n"));
    assert_eq!(v.pending.len(), MAX_HELD);
}
