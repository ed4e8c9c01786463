//! What a [`ChangeSet`] changes, computed in memory from the rows it touches: the flag writes,
//! the rows to expunge, the thread count deltas and the Message-IDs left with no copy in any
//! mailbox.
//!
//! Thread counts count each Message-ID once (a second placement is not counted, see
//! [`super::threads`]): a Message-ID counts as long as a row with it is present, and its unread
//! state is that of its lowest-id present row, the one that was counted when it arrived. Rows
//! without a Message-ID count on their own.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::changes::{ChangeSet, ExpungeMode};

/// A stored row a set touches, or a present row sharing a Message-ID with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RowState {
    /// `messages.thread_id`.
    pub(super) thread_id: Option<i64>,
    /// `messages.message_id`.
    pub(super) message_id: Option<String>,
    /// `messages.flags`.
    pub(super) flags: String,
    /// `messages.modseq`.
    pub(super) modseq: Option<i64>,
    /// `expunged_at IS NULL`.
    pub(super) present: bool,
}

/// The rows loaded for a set: by `messages.id`, and the target mailbox's UIDs among them.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub(super) rows: HashMap<i64, RowState>,
    /// UID in the target mailbox and UIDVALIDITY → `messages.id`.
    pub(super) by_uid: HashMap<u32, i64>,
}

/// The writes and announcements of one set.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// `(messages.id, flags, modseq)` to write (flags text or modseq differ).
    pub(super) flag_writes: Vec<(i64, String, Option<i64>)>,
    /// `(uid, flags)` whose flag set changed, ascending.
    pub(super) changed: Vec<(u32, String)>,
    /// `messages.id` to mark (keep) or remove (delete).
    pub(super) expunge_ids: Vec<i64>,
    /// UIDs of present rows expunged, ascending.
    pub(super) expunged: Vec<u32>,
    /// `thread id → (message_count delta, unread_count delta)`, none zero.
    pub(super) thread_deltas: BTreeMap<i64, (i64, i64)>,
    /// Message-IDs no present row has any more (`thread_refs.present` goes false).
    pub(super) refs_cleared: Vec<String>,
}

/// Whether `flags` holds `\Seen` (flags compare case-insensitively).
pub(super) fn seen(flags: &str) -> bool {
    flags
        .split_ascii_whitespace()
        .any(|f| f.eq_ignore_ascii_case("\\Seen"))
}

/// `flags` as a set, for comparing two reports.
fn flag_set(flags: &str) -> BTreeSet<String> {
    flags
        .split_ascii_whitespace()
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Which rows count as one message in the thread counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    MessageId(&'a str),
    Row(i64),
}

/// Per key, the contributing row: the lowest-id present row → `(thread, unread)`.
fn contributions(rows: &HashMap<i64, RowState>) -> BTreeMap<Key<'_>, (i64, Option<i64>, bool)> {
    let mut out: BTreeMap<Key<'_>, (i64, Option<i64>, bool)> = BTreeMap::new();
    for (&id, r) in rows {
        if !r.present {
            continue;
        }
        let key = r.message_id.as_deref().map_or(Key::Row(id), Key::MessageId);
        let entry = (id, r.thread_id, !seen(&r.flags));
        out.entry(key)
            .and_modify(|e| {
                if id < e.0 {
                    *e = entry;
                }
            })
            .or_insert(entry);
    }
    out
}

/// Applies `set` to the loaded rows (in memory) and returns what to write.
pub(super) fn plan(loaded: &Loaded, set: &ChangeSet, mode: ExpungeMode) -> Plan {
    let mut out = Plan::default();
    let mut after = loaded.rows.clone();
    for u in &set.flags {
        let Some(id) = loaded.by_uid.get(&u.uid) else {
            continue;
        };
        let Some(row) = after.get_mut(id).filter(|r| r.present) else {
            continue;
        };
        let modseq = u.modseq.map(super::state::modseq_to_db);
        // An older report never overwrites a newer fetch.
        if let (Some(have), Some(new)) = (row.modseq, modseq) {
            if have > new {
                continue;
            }
        }
        let modseq_moves = modseq.is_some() && modseq != row.modseq;
        if row.flags == u.flags && !modseq_moves {
            continue;
        }
        if flag_set(&row.flags) != flag_set(&u.flags) {
            out.changed.push((u.uid, u.flags.clone()));
        }
        out.flag_writes.push((*id, u.flags.clone(), modseq));
        row.flags.clone_from(&u.flags);
        row.modseq = modseq.or(row.modseq);
    }
    for uid in &set.expunged {
        let Some(&id) = loaded.by_uid.get(uid) else {
            continue;
        };
        let Some(row) = after.get_mut(&id) else {
            continue;
        };
        if row.present {
            row.present = false;
            out.expunged.push(*uid);
            out.expunge_ids.push(id);
        } else if mode == ExpungeMode::Delete {
            // Marked under `keep` before the setting changed: removed now, announced then.
            out.expunge_ids.push(id);
        }
    }
    out.changed.sort_unstable_by_key(|c| c.0);
    out.expunged.sort_unstable();
    let before = contributions(&loaded.rows);
    let now = contributions(&after);
    let mut add = |thread: Option<i64>, count: i64, unread: bool| {
        if let Some(t) = thread {
            let d = out.thread_deltas.entry(t).or_insert((0, 0));
            d.0 += count;
            d.1 += if unread { count } else { 0 };
        }
    };
    for (key, &(_, thread, unread)) in &before {
        add(thread, -1, unread);
        if !now.contains_key(key) {
            if let Key::MessageId(m) = key {
                out.refs_cleared.push((*m).to_string());
            }
        }
    }
    for &(_, thread, unread) in now.values() {
        add(thread, 1, unread);
    }
    out.thread_deltas.retain(|_, d| *d != (0, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::FlagUpdate;

    fn row(thread: i64, mid: Option<&str>, flags: &str, modseq: Option<i64>) -> RowState {
        RowState {
            thread_id: Some(thread),
            message_id: mid.map(str::to_string),
            flags: flags.into(),
            modseq,
            present: true,
        }
    }

    fn upd(uid: u32, flags: &str, modseq: Option<u64>) -> FlagUpdate {
        FlagUpdate {
            uid,
            flags: flags.into(),
            modseq,
        }
    }

    #[test]
    fn seen_changes_move_unread_and_stale_reports_lose() {
        let mut l = Loaded::default();
        l.rows.insert(10, row(1, Some("a"), "", Some(5)));
        l.rows.insert(11, row(1, Some("b"), "\\Seen", Some(9)));
        l.by_uid.extend([(1, 10), (2, 11)]);
        let set = ChangeSet {
            flags: vec![
                upd(1, "\\SEEN", Some(6)),
                upd(2, "", Some(8)),
                upd(3, "x", None),
            ],
            ..ChangeSet::default()
        };
        let p = plan(&l, &set, ExpungeMode::Keep);
        assert_eq!(p.changed, vec![(1, "\\SEEN".to_string())]);
        assert_eq!(p.flag_writes, vec![(10, "\\SEEN".to_string(), Some(6))]);
        assert_eq!(p.thread_deltas, BTreeMap::from([(1, (0, -1))]));
    }

    #[test]
    fn same_flags_in_another_order_write_but_announce_nothing() {
        let mut l = Loaded::default();
        l.rows.insert(10, row(1, None, "\\Seen \\Flagged", None));
        l.by_uid.insert(1, 10);
        let set = ChangeSet {
            flags: vec![upd(1, "\\Flagged \\Seen", None)],
            ..ChangeSet::default()
        };
        let p = plan(&l, &set, ExpungeMode::Keep);
        assert!(p.changed.is_empty() && p.thread_deltas.is_empty());
        assert_eq!(p.flag_writes.len(), 1);
        let again = ChangeSet {
            flags: vec![upd(1, "\\Seen \\Flagged", None)],
            ..ChangeSet::default()
        };
        assert_eq!(plan(&l, &again, ExpungeMode::Keep), Plan::default());
    }

    #[test]
    fn expunging_one_copy_keeps_the_count_and_takes_the_next_copys_unread() {
        let mut l = Loaded::default();
        // id 10 counted (read); id 20 a second placement, unread, in another mailbox.
        l.rows.insert(10, row(1, Some("m"), "\\Seen", None));
        l.rows.insert(20, row(1, Some("m"), "", None));
        l.rows.insert(30, row(2, None, "", None));
        l.by_uid.extend([(1, 10), (3, 30)]);
        let set = ChangeSet {
            expunged: vec![1, 3, 4],
            ..ChangeSet::default()
        };
        let p = plan(&l, &set, ExpungeMode::Keep);
        assert_eq!(p.expunged, vec![1, 3]);
        assert_eq!(p.expunge_ids, vec![10, 30]);
        assert_eq!(
            p.thread_deltas,
            BTreeMap::from([(1, (0, 1)), (2, (-1, -1))])
        );
        assert!(p.refs_cleared.is_empty());
        let mut gone = Loaded::default();
        gone.rows.insert(10, row(1, Some("m"), "", None));
        gone.by_uid.insert(1, 10);
        let p = plan(&gone, &set, ExpungeMode::Delete);
        assert_eq!(p.refs_cleared, vec!["m".to_string()]);
        assert_eq!(p.thread_deltas, BTreeMap::from([(1, (-1, -1))]));
    }

    #[test]
    fn rows_already_expunged_are_only_removed_under_delete() {
        let mut l = Loaded::default();
        let mut r = row(1, None, "", None);
        r.present = false;
        l.rows.insert(10, r);
        l.by_uid.insert(1, 10);
        let set = ChangeSet {
            flags: vec![],
            expunged: vec![1],
            highest_modseq: None,
        };
        assert_eq!(plan(&l, &set, ExpungeMode::Keep), Plan::default());
        let p = plan(&l, &set, ExpungeMode::Delete);
        assert_eq!((p.expunge_ids, p.expunged), (vec![10], vec![]));
        let flags = ChangeSet {
            flags: vec![upd(1, "\\Seen", None)],
            ..ChangeSet::default()
        };
        assert_eq!(plan(&l, &flags, ExpungeMode::Keep), Plan::default());
    }
}
