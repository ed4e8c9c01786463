//! Which IMAP commands a mailbox's queued steps become (pure).
//!
//! Steps run in id order per mailbox, but many of them go out as one command per kind: every
//! step with the same flag change is one `UID STORE`, every move to the same mailbox one
//! `UID MOVE`. Steps are merged only while that cannot reorder two steps touching the same
//! message: a step sharing a UID with an earlier step of another command ends the round, and
//! runs in the next.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::store::{ActionKind, StepRow};

/// One command (or command pair) on the selected mailbox.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// `UID STORE +FLAGS` and/or `-FLAGS`; flags sorted.
    Flags {
        /// Flags added.
        add: Vec<String>,
        /// Flags removed.
        remove: Vec<String>,
    },
    /// `UID MOVE` (or COPY, `\Deleted`, `UID EXPUNGE`) to this mailbox.
    Move {
        /// The target, as configured or listed.
        to: String,
    },
    /// `\Deleted` and `UID EXPUNGE` of these UIDs only.
    Expunge,
}

impl Op {
    /// A bounded name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Flags { .. } => "flags",
            Op::Move { .. } => "move",
            Op::Expunge => "expunge",
        }
    }
}

/// An [`Op`] and the steps it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The command.
    pub op: Op,
    /// Indices into the steps given to [`plan`].
    pub steps: Vec<usize>,
    /// Every UID of those steps, ascending, once.
    pub uids: Vec<u32>,
}

/// A step that cannot run, with its error code and message.
pub type Refused = (usize, &'static str, String);

#[derive(Deserialize)]
struct FlagParams {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct MoveParams {
    to: String,
}

/// The op of a step in `mailbox`, or why it cannot run.
pub fn op_of(step: &StepRow, mailbox: &str) -> Result<Op, (&'static str, String)> {
    let bad = |e: serde_json::Error| ("refused", format!("unreadable action parameters: {e}"));
    match step.kind {
        ActionKind::Flags => {
            let p: FlagParams = serde_json::from_str(&step.params).map_err(bad)?;
            let mut add = p.add;
            let mut remove = p.remove;
            add.sort();
            add.dedup();
            remove.sort();
            remove.dedup();
            Ok(Op::Flags { add, remove })
        }
        ActionKind::Move => {
            let p: MoveParams = serde_json::from_str(&step.params).map_err(bad)?;
            Ok(Op::Move { to: p.to })
        }
        // A delete of mail already in the Trash deletes it for good, as mail clients do.
        ActionKind::Delete => {
            let p: MoveParams = serde_json::from_str(&step.params).map_err(bad)?;
            if p.to == mailbox {
                Ok(Op::Expunge)
            } else {
                Ok(Op::Move { to: p.to })
            }
        }
        ActionKind::Expunge => Ok(Op::Expunge),
    }
}

/// Groups `steps` (in id order) into commands for one round, and the steps that cannot run.
/// Returns how many steps the round covers: the rest wait for the next round.
///
/// Flag changes are deltas, so every flag step of the round is netted per message (a flag
/// added then removed is removed) and messages with the same net change share one command:
/// 1,000 requests adding 1,000 keywords to one message are one `UID STORE`. Flags run before
/// moves and expunges; a flag step on a message an earlier step of the round moves, or a move
/// of a message an earlier move of another target takes, ends the round.
pub fn plan(
    steps: &[StepRow],
    mailbox: &str,
    uidvalidity: u32,
) -> (Vec<Group>, Vec<Refused>, usize) {
    let mut moves: Vec<Group> = Vec::new();
    let mut net: BTreeMap<u32, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut flag_steps: Vec<usize> = Vec::new();
    let mut refused = Vec::new();
    let mut taken = 0;
    for (i, step) in steps.iter().enumerate() {
        if step.uidvalidity != uidvalidity {
            refused.push((
                i,
                "stale_uidvalidity",
                format!(
                    "{mailbox} was reset (UIDVALIDITY {} is now {uidvalidity}); the message \
                     has another id now",
                    step.uidvalidity
                ),
            ));
            taken = i + 1;
            continue;
        }
        let op = match op_of(step, mailbox) {
            Ok(op) => op,
            Err((code, msg)) => {
                refused.push((i, code, msg));
                taken = i + 1;
                continue;
            }
        };
        let touches = |g: &Group| step.uids.iter().any(|u| g.uids.binary_search(u).is_ok());
        match op {
            Op::Flags { add, remove } => {
                if moves.iter().any(touches) {
                    break;
                }
                for uid in &step.uids {
                    let (a, r) = net.entry(*uid).or_default();
                    for f in &add {
                        r.remove(f);
                        a.insert(f.clone());
                    }
                    for f in &remove {
                        a.remove(f);
                        r.insert(f.clone());
                    }
                }
                flag_steps.push(i);
            }
            op => {
                if moves.iter().filter(|g| g.op != op).any(touches) {
                    break;
                }
                match moves.iter_mut().find(|g| g.op == op) {
                    Some(g) => {
                        g.steps.push(i);
                        let set: BTreeSet<u32> = g.uids.iter().chain(&step.uids).copied().collect();
                        g.uids = set.into_iter().collect();
                    }
                    None => {
                        let set: BTreeSet<u32> = step.uids.iter().copied().collect();
                        moves.push(Group {
                            op,
                            steps: vec![i],
                            uids: set.into_iter().collect(),
                        });
                    }
                }
            }
        }
        taken = i + 1;
    }
    // Messages with the same net change: one command.
    let mut by_change: BTreeMap<(Vec<String>, Vec<String>), Vec<u32>> = BTreeMap::new();
    for (uid, (add, remove)) in net {
        by_change
            .entry((add.into_iter().collect(), remove.into_iter().collect()))
            .or_default()
            .push(uid);
    }
    let mut groups: Vec<Group> = by_change
        .into_iter()
        .map(|((add, remove), uids)| Group {
            steps: flag_steps
                .iter()
                .copied()
                .filter(|i| steps[*i].uids.iter().any(|u| uids.binary_search(u).is_ok()))
                .collect(),
            op: Op::Flags { add, remove },
            uids,
        })
        .collect();
    groups.extend(moves);
    (groups, refused, taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: i64, kind: ActionKind, params: &str, uids: &[u32]) -> StepRow {
        StepRow {
            id,
            action_id: id,
            kind,
            params: params.into(),
            uidvalidity: 7,
            uids: uids.to_vec(),
            was_running: false,
        }
    }

    const SEEN: &str = r#"{"add":["\\Seen"]}"#;

    #[test]
    fn different_flag_changes_of_one_message_are_netted_into_one_command() {
        let steps: Vec<StepRow> = (1..=1000)
            .map(|i| {
                step(
                    i,
                    ActionKind::Flags,
                    &format!(r#"{{"add":["$K{i}"]}}"#),
                    &[5],
                )
            })
            .chain([step(1001, ActionKind::Flags, r#"{"remove":["$K1"]}"#, &[5])])
            .collect();
        let (groups, _, taken) = plan(&steps, "INBOX", 7);
        assert_eq!((groups.len(), taken), (1, 1001));
        let Op::Flags { add, remove } = &groups[0].op else {
            panic!("flags")
        };
        assert_eq!(
            (add.len(), remove.as_slice()),
            (999, ["$K1".to_string()].as_slice())
        );
        assert_eq!(groups[0].steps.len(), 1001);
    }

    #[test]
    fn same_changes_become_one_command() {
        let steps: Vec<StepRow> = (1..=1000)
            .map(|i| step(i, ActionKind::Flags, SEEN, &[i as u32]))
            .collect();
        let (groups, refused, taken) = plan(&steps, "INBOX", 7);
        assert_eq!((groups.len(), refused.len(), taken), (1, 0, 1000));
        assert_eq!(groups[0].uids.len(), 1000);
    }

    #[test]
    fn a_step_is_never_moved_before_an_earlier_one_on_the_same_message() {
        let steps = vec![
            step(1, ActionKind::Move, r#"{"to":"Archive"}"#, &[5]),
            step(2, ActionKind::Flags, SEEN, &[6]),
            step(3, ActionKind::Flags, SEEN, &[5]),
            step(4, ActionKind::Flags, SEEN, &[7]),
        ];
        let (groups, _, taken) = plan(&steps, "INBOX", 7);
        assert_eq!(taken, 2, "step 3 waits for the next round");
        assert!(matches!(groups[0].op, Op::Flags { .. }));
        assert_eq!(
            groups[1].op,
            Op::Move {
                to: "Archive".into()
            }
        );
    }

    #[test]
    fn delete_in_the_trash_expunges_and_stale_epochs_are_refused() {
        let mut stale = step(2, ActionKind::Flags, SEEN, &[1]);
        stale.uidvalidity = 3;
        let steps = vec![
            step(1, ActionKind::Delete, r#"{"to":"Trash"}"#, &[9]),
            stale,
            step(3, ActionKind::Flags, "not json", &[2]),
        ];
        let (groups, refused, taken) = plan(&steps, "Trash", 7);
        assert_eq!(groups[0].op, Op::Expunge);
        assert_eq!(taken, 3);
        let codes: Vec<&str> = refused.iter().map(|r| r.1).collect();
        assert_eq!(codes, ["stale_uidvalidity", "refused"]);
    }
}
