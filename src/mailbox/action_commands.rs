//! The IMAP commands of one group of action steps (#19): `UID STORE ±FLAGS`, `UID MOVE` or
//! its fallback, `\Deleted` + `UID EXPUNGE` of chosen UIDs, and how their answers become step
//! results (which UIDs were gone, where moved mail went, a refusal).

use std::collections::{HashMap, HashSet};

use super::{Conn, MailboxCtx, MailboxError};
use crate::actions::plan::{Group, Op};
use crate::imap::commands::{self, uid_set, Answer};
use crate::imap::mailbox_name;

/// What one group's commands did for each UID.
#[derive(Debug, Default)]
pub(super) struct Done {
    /// UIDs the server no longer had.
    pub(super) gone: HashSet<u32>,
    /// COPYUID pairs of a move.
    pub(super) moved: HashMap<u32, u32>,
    /// A refusal of the whole group: code and message.
    pub(super) failed: Option<(&'static str, String)>,
}

/// Why a group's commands ended early.
enum Stop {
    /// The server refused a command (tagged NO or BAD): the steps fail with this.
    Refused((&'static str, String)),
    /// The connection or the store failed: the connection ends.
    Error(MailboxError),
}

impl From<MailboxError> for Stop {
    fn from(e: MailboxError) -> Self {
        Stop::Error(e)
    }
}

impl From<crate::imap::ImapError> for Stop {
    fn from(e: crate::imap::ImapError) -> Self {
        Stop::Error(e.into())
    }
}

/// Sends one group's commands. A refusal fails the group's steps, with what was learnt
/// before it kept; any other error ends the connection.
pub(super) async fn execute(
    ctx: &MailboxCtx,
    conn: &mut Conn,
    g: &Group,
) -> Result<Done, MailboxError> {
    let mut done = Done::default();
    match Box::pin(commands_of(ctx, conn, g, &mut done)).await {
        Ok(()) => Ok(done),
        Err(Stop::Refused(f)) => {
            done.failed = Some(f);
            Ok(done)
        }
        Err(Stop::Error(e)) => Err(e),
    }
}

/// One command on the selected mailbox; a refusal is [`Stop::Refused`], named `what`.
async fn send(
    conn: &mut Conn,
    command: &str,
    what: &str,
    t: std::time::Duration,
) -> Result<Answer, Stop> {
    let a = commands::run(&mut conn.session, &mut conn.view, command, t).await?;
    match refusal(&a, what) {
        Some(f) => Err(Stop::Refused(f)),
        None => Ok(a),
    }
}

async fn commands_of(
    ctx: &MailboxCtx,
    conn: &mut Conn,
    g: &Group,
    done: &mut Done,
) -> Result<(), Stop> {
    let t = ctx
        .timers
        .connect_timeout
        .max(std::time::Duration::from_secs(30));
    let set = uid_set(&g.uids);
    match &g.op {
        Op::Flags { add, remove } => {
            let mut seen: HashSet<u32> = HashSet::new();
            for (sign, flags) in [('+', add), ('-', remove)] {
                if flags.is_empty() {
                    continue;
                }
                let cmd = format!("UID STORE {set} {sign}FLAGS ({})", flags.join(" "));
                seen.extend(send(conn, &cmd, "UID STORE", t).await?.fetched);
            }
            done.gone = confirm_gone(conn, &g.uids, &seen, t).await?;
        }
        Op::Move { to } => {
            let target = mailbox_name::argument(to, conn.caps.utf8_accept);
            let (moves, uidplus) = (conn.caps.moves, conn.caps.uidplus);
            if !moves && !uidplus {
                return Err(Stop::Refused((
                    "refused",
                    "the server offers neither MOVE nor UIDPLUS: a move would need a bare \
                     EXPUNGE, which also removes other clients' \\Deleted mail"
                        .into(),
                )));
            }
            // Without MOVE, RFC 6851's fallback, expunging only what was copied: another
            // client's \Deleted mail stays.
            let verb = if moves { "UID MOVE" } else { "UID COPY" };
            let a = send(conn, &format!("{verb} {set} {target}"), verb, t).await?;
            done.moved = a.copied.iter().copied().collect();
            // Which UIDs were gone is known from COPYUID, which UIDPLUS brings.
            if uidplus {
                done.gone = g
                    .uids
                    .iter()
                    .filter(|u| !done.moved.contains_key(u))
                    .copied()
                    .collect();
            }
            if !moves {
                let mut copied: Vec<u32> = done.moved.keys().copied().collect();
                copied.sort_unstable();
                if !copied.is_empty() {
                    expunge_uids(conn, &copied, t).await?;
                }
            }
        }
        Op::Expunge => {
            if !conn.caps.uidplus {
                return Err(Stop::Refused((
                    "refused",
                    "the server lacks UIDPLUS: UID EXPUNGE is needed to delete only this mail"
                        .into(),
                )));
            }
            let cmd = format!("UID STORE {set} +FLAGS (\\Deleted)");
            let a = send(conn, &cmd, "UID STORE", t).await?;
            let seen: HashSet<u32> = a.fetched.iter().copied().collect();
            done.gone = confirm_gone(conn, &g.uids, &seen, t).await?;
            let mut present: Vec<u32> = g
                .uids
                .iter()
                .filter(|u| !done.gone.contains(u))
                .copied()
                .collect();
            present.sort_unstable();
            if !present.is_empty() {
                expunge_uids(conn, &present, t).await?;
            }
        }
    }
    Ok(())
}

/// `\Deleted` on `uids` and `UID EXPUNGE` of exactly them.
async fn expunge_uids(conn: &mut Conn, uids: &[u32], t: std::time::Duration) -> Result<(), Stop> {
    let set = uid_set(uids);
    for cmd in [
        format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
        format!("UID EXPUNGE {set}"),
    ] {
        send(conn, &cmd, "UID EXPUNGE", t).await?;
    }
    Ok(())
}

/// Of `uids`, those the server has no message for: the ones without a FETCH answer are asked
/// once more with `UID FETCH (FLAGS)` (a server may skip the FETCH of an unchanged message).
async fn confirm_gone(
    conn: &mut Conn,
    uids: &[u32],
    seen: &HashSet<u32>,
    t: std::time::Duration,
) -> Result<HashSet<u32>, MailboxError> {
    let missing: Vec<u32> = uids.iter().filter(|u| !seen.contains(u)).copied().collect();
    if missing.is_empty() {
        return Ok(HashSet::new());
    }
    let a = commands::run(
        &mut conn.session,
        &mut conn.view,
        &format!("UID FETCH {} (UID FLAGS)", uid_set(&missing)),
        t,
    )
    .await?;
    let found: HashSet<u32> = a.fetched.into_iter().collect();
    Ok(missing.into_iter().filter(|u| !found.contains(u)).collect())
}

/// A tagged NO or BAD as a step error: `no_such_mailbox` for `[TRYCREATE]`, else `refused`
/// with the server's text.
fn refusal(a: &Answer, command: &str) -> Option<(&'static str, String)> {
    if a.ok {
        return None;
    }
    if a.trycreate {
        return Some((
            "no_such_mailbox",
            format!("the server has no such mailbox: {}", a.text),
        ));
    }
    Some(("refused", format!("{command} refused: {}", a.text)))
}
