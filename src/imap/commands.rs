//! The commands of actions (#19), driven by hand like IDLE: `UID STORE`, `UID MOVE`,
//! `UID COPY`, `UID EXPUNGE` on the selected mailbox, and `LIST` before a mailbox is selected.
//!
//! Every untagged response read while a command runs goes through the connection's
//! [`View`], exactly as in IDLE, so the changes an action causes (the FETCH of new flags, the
//! EXPUNGE or VANISHED of a move) reach the store through the mirror's own path. What the
//! action needs besides is collected in an [`Answer`]: the UIDs the server answered a FETCH
//! for, and the COPYUID of a move or copy.

use std::time::Duration;

use async_imap::imap_proto::rfc4315::UidSetMember;
use async_imap::imap_proto::{
    AttributeValue, MailboxDatum, NameAttribute, Response, ResponseCode, Status,
};

use super::view::View;
use super::{bounded, bye, deadline, received, ImapError, Session};

/// The most UID pairs read from one COPYUID: a hostile server cannot make us expand a range
/// of four billion.
const MAX_COPYUID: u64 = 100_000;

/// How a command ended, and what it told besides the mirror's changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Tagged OK.
    pub ok: bool,
    /// The tagged reply's text (bounded), for a refusal.
    pub text: String,
    /// `[TRYCREATE]`: the target mailbox does not exist.
    pub trycreate: bool,
    /// UIDs of the untagged FETCH responses, in the order they came.
    pub fetched: Vec<u32>,
    /// COPYUID (RFC 4315): `(source UID, destination UID)` pairs.
    pub copied: Vec<(u32, u32)>,
}

/// Runs one command on the selected mailbox, every untagged response into `view`, bounded
/// by `t`.
pub async fn run(
    session: &mut Session,
    view: &mut View,
    command: &str,
    t: Duration,
) -> Result<Answer, ImapError> {
    deadline(t, "action command", run_unbounded(session, view, command)).await
}

async fn run_unbounded(
    session: &mut Session,
    view: &mut View,
    command: &str,
) -> Result<Answer, ImapError> {
    let tag = session.run_command(command).await?;
    let mut answer = Answer::default();
    // Bounded by the caller's deadline.
    loop {
        let resp = received(session.read_response().await, "action command")?;
        match resp.parsed() {
            Response::Done {
                tag: t,
                status,
                outcome,
            } if *t == tag => {
                answer.ok = matches!(status, Status::Ok);
                answer.text = bounded(outcome.information.as_deref().unwrap_or("")).to_string();
                read_code(outcome.code.as_ref(), &mut answer);
                return Ok(answer);
            }
            Response::Data {
                status: Status::Bye,
                outcome,
            } => return Err(bye(outcome)),
            Response::Data {
                status: Status::Ok,
                outcome,
            } => {
                read_code(outcome.code.as_ref(), &mut answer);
                view.absorb(resp.parsed());
            }
            other => {
                if let Response::Fetch(_, attrs) = other {
                    if let Some(uid) = attrs.iter().find_map(|a| match a {
                        AttributeValue::Uid(u) => Some(*u),
                        _ => None,
                    }) {
                        answer.fetched.push(uid);
                    }
                }
                view.absorb(other);
            }
        }
    }
}

fn read_code(code: Option<&ResponseCode<'_>>, answer: &mut Answer) {
    match code {
        Some(ResponseCode::TryCreate) => answer.trycreate = true,
        Some(ResponseCode::CopyUid(_, from, to)) => {
            answer.copied = pairs(from, to);
        }
        _ => {}
    }
}

/// The UIDs of a uid-set, in order, at most [`MAX_COPYUID`].
fn expand(set: &[UidSetMember]) -> Vec<u32> {
    let mut out = Vec::new();
    for m in set {
        match m {
            UidSetMember::Uid(u) => out.push(*u),
            UidSetMember::UidRange(r) => {
                let (lo, hi) = ((*r.start()).min(*r.end()), (*r.start()).max(*r.end()));
                let room = MAX_COPYUID.saturating_sub(out.len() as u64);
                let n = (u64::from(hi - lo) + 1).min(room);
                out.extend((0..n).map(|i| lo + i as u32));
            }
        }
        if out.len() as u64 >= MAX_COPYUID {
            break;
        }
    }
    out
}

/// COPYUID's two sets, paired in order (RFC 4315 §3).
fn pairs(from: &[UidSetMember], to: &[UidSetMember]) -> Vec<(u32, u32)> {
    expand(from).into_iter().zip(expand(to)).collect()
}

/// One mailbox of a `LIST` answer: its name as the server spells it, and its SPECIAL-USE
/// attribute (`\Trash`, `\Sent`, …) if any.
pub type Listed = (String, Option<String>);

/// `LIST "" "*"` before a mailbox is selected: every mailbox of the account, with its
/// SPECIAL-USE attribute. Bounded by `t` and by `max` names.
pub async fn list(
    session: &mut Session,
    t: Duration,
    max: usize,
) -> Result<Vec<Listed>, ImapError> {
    let work = async {
        let tag = session.run_command("LIST \"\" \"*\"").await?;
        let mut out = Vec::new();
        loop {
            let resp = received(session.read_response().await, "LIST")?;
            match resp.parsed() {
                Response::Done {
                    tag: t,
                    status,
                    outcome,
                } if *t == tag => {
                    if !matches!(status, Status::Ok) {
                        return Err(ImapError::Select(format!(
                            "LIST refused: {}",
                            bounded(outcome.information.as_deref().unwrap_or(""))
                        )));
                    }
                    return Ok(out);
                }
                Response::MailboxData(MailboxDatum::List(data)) if out.len() < max => {
                    let noselect = data
                        .name_attributes
                        .iter()
                        .any(|f| matches!(f, NameAttribute::NoSelect));
                    if noselect {
                        continue;
                    }
                    let special = data.name_attributes.iter().find_map(special_use);
                    out.push((data.name.to_string(), special.map(str::to_string)));
                }
                _ => {}
            }
        }
    };
    deadline(t, "LIST", work).await
}

fn special_use(a: &NameAttribute<'_>) -> Option<&'static str> {
    Some(match a {
        NameAttribute::All => "\\All",
        NameAttribute::Archive => "\\Archive",
        NameAttribute::Drafts => "\\Drafts",
        NameAttribute::Flagged => "\\Flagged",
        NameAttribute::Junk => "\\Junk",
        NameAttribute::Sent => "\\Sent",
        NameAttribute::Trash => "\\Trash",
        _ => return None,
    })
}

/// A UID set for a command: `1:3,7,9:10` from ascending UIDs.
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_fold_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn copyuid_pairs_in_order_and_bounded() {
        let from = [UidSetMember::UidRange(304..=305), UidSetMember::Uid(319)];
        let to = [UidSetMember::UidRange(3956..=3958)];
        assert_eq!(pairs(&from, &to), [(304, 3956), (305, 3957), (319, 3958)]);
        let huge = [UidSetMember::UidRange(1..=u32::MAX)];
        assert_eq!(expand(&huge).len() as u64, MAX_COPYUID);
    }
}
