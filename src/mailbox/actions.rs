//! Running the mailbox's queued actions (#19) on its own connection, out of IDLE.
//!
//! A round: read the queued steps, group them into commands ([`crate::actions::plan`]), mark
//! them running (and, for moves, write the expected arrivals of the destination, so that the
//! moved mail is not announced there as new), send the commands, and store what the server
//! answered with the steps' outcomes in one change transaction, with the records of each
//! action carrying its `actionId`.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{changes, Conn, MailboxCtx, MailboxError};
use crate::actions::plan::{plan, Group, Op};
use crate::event::{self, Origin};
use crate::imap::commands::{self, uid_set, Answer};
use crate::imap::mailbox_name;
use crate::store::{StepOutcome, StepRow};

/// A move's record: the action, the target, `(old, new)` UIDs.
type Moved = (i64, String, Vec<(u32, u32)>);

/// Steps read per round.
const STEPS_PER_ROUND: i64 = 1000;
/// Rounds per call: the rest waits for the next wake-up or IDLE round.
const MAX_ROUNDS: usize = 20;

/// What one group's commands did for each UID.
#[derive(Debug, Default)]
struct Done {
    /// UIDs the server no longer had.
    gone: HashSet<u32>,
    /// COPYUID pairs of a move.
    moved: HashMap<u32, u32>,
    /// A refusal of the whole group: code and message.
    failed: Option<(&'static str, String)>,
}

/// Runs every queued step of the mailbox, round by round. Errors end the connection like
/// any other; steps left `running` are run again by the next connection.
pub(super) async fn run(ctx: &MailboxCtx, conn: &mut Conn) -> Result<(), MailboxError> {
    for _ in 0..MAX_ROUNDS {
        let steps = ctx
            .store
            .pending_steps(&ctx.account_id, &ctx.mailbox, STEPS_PER_ROUND)
            .await?;
        tracing::debug!(steps = steps.len(), "action round");
        if steps.is_empty() {
            return Ok(());
        }
        // Changes the server sent before: applied first, so records keep their order.
        changes::apply(ctx, &mut conn.view, &mut conn.state).await?;
        let (groups, refused, taken) = plan(&steps, &ctx.mailbox, conn.state.uidvalidity);
        let runnable: Vec<&StepRow> = groups
            .iter()
            .flat_map(|g| g.steps.iter().map(|i| &steps[*i]))
            .collect();
        // Moves and expunges are marked running (with a move's expected arrivals) before any
        // command is sent. Flag changes are deltas that may run twice: they skip that
        // transaction, one commit less between a request and its effect.
        if groups.iter().any(|g| !matches!(g.op, Op::Flags { .. })) {
            let arrivals = expected_arrivals(ctx, conn.state.uidvalidity, &groups, &steps).await?;
            ctx.store
                .start_steps(&ctx.account_id, &ctx.mailbox, &runnable, &arrivals)
                .await?;
        }
        // A step may be served by several commands (a thread's messages with different net
        // flag changes): its result is theirs merged.
        let mut results: BTreeMap<usize, Done> = BTreeMap::new();
        for g in &groups {
            let done = Box::pin(execute(ctx, conn, g)).await?;
            tracing::info!(
                op = g.op.name(),
                messages = g.uids.len(),
                steps = g.steps.len(),
                failed = done.failed.as_ref().map(|f| f.0),
                "ran actions"
            );
            for i in &g.steps {
                let part = clone_for(&done, &steps[*i]);
                let r = results.entry(*i).or_default();
                r.gone.extend(part.gone);
                r.moved.extend(part.moved);
                if r.failed.is_none() {
                    r.failed = part.failed;
                }
            }
        }
        let mut outcomes: Vec<StepOutcome> = refused
            .iter()
            .map(|(i, code, msg)| StepOutcome {
                step_id: steps[*i].id,
                action_id: steps[*i].action_id,
                error: Some((*code, msg.clone())),
                result: None,
            })
            .collect();
        outcomes.extend(
            results
                .iter()
                .map(|(i, d)| outcome(&steps[*i], d, &ctx.mailbox)),
        );
        let moved: Vec<Moved> = results
            .iter()
            .filter_map(|(i, d)| {
                let to = groups
                    .iter()
                    .find(|g| g.steps.contains(i))
                    .and_then(|g| match &g.op {
                        Op::Move { to } => Some(to.clone()),
                        _ => None,
                    })?;
                let mut pairs: Vec<(u32, u32)> = steps[*i]
                    .uids
                    .iter()
                    .filter_map(|u| Some((*u, *d.moved.get(u)?)))
                    .collect();
                pairs.sort_unstable();
                (!pairs.is_empty()).then_some((steps[*i].action_id, to, pairs))
            })
            .collect();
        let attributed: Vec<(i64, &[u32])> = results
            .keys()
            .map(|i| (steps[*i].action_id, steps[*i].uids.as_slice()))
            .collect();
        store_outcomes(ctx, conn, &outcomes, &attributed, &moved).await?;
        for o in &outcomes {
            let outcome = o.error.as_ref().map_or("done", |e| e.0);
            metrics::counter!(crate::metrics::ACTIONS_FINISHED, "outcome" => outcome).increment(1);
        }
        let mut finished: Vec<i64> = outcomes.iter().map(|o| o.action_id).collect();
        finished.sort_unstable();
        finished.dedup();
        ctx.signals.finished(&finished).await;
        if taken == 0 {
            // Nothing could be planned: never spin.
            return Ok(());
        }
    }
    // More may be queued: come back after one IDLE round-trip (what the server said
    // meanwhile is applied first), instead of waiting for the next request's wake-up.
    ctx.signals
        .waker(&ctx.account_id, &ctx.mailbox)
        .notify_one();
    Ok(())
}

/// The part of a group's result that concerns one step.
fn clone_for(d: &Done, step: &StepRow) -> Done {
    Done {
        gone: step
            .uids
            .iter()
            .filter(|u| d.gone.contains(u))
            .copied()
            .collect(),
        moved: step
            .uids
            .iter()
            .filter_map(|u| Some((*u, *d.moved.get(u)?)))
            .collect(),
        failed: d.failed.clone(),
    }
}

/// A step's outcome: failed with the group's refusal, or `gone` when none of its messages
/// was there any more; else done, naming the ones that were gone.
fn outcome(step: &StepRow, d: &Done, mailbox: &str) -> StepOutcome {
    let mut gone: Vec<u32> = d.gone.iter().copied().collect();
    gone.sort_unstable();
    let error = match &d.failed {
        Some(f) => Some(f.clone()),
        None if !step.uids.is_empty() && gone.len() == step.uids.len() => Some((
            "gone",
            format!("the message is no longer in {mailbox} (another client moved or deleted it)"),
        )),
        None => None,
    };
    let mut result = serde_json::Map::new();
    if !gone.is_empty() {
        result.insert("gone".into(), serde_json::json!(gone));
    }
    if !d.moved.is_empty() {
        let mut pairs: Vec<[u32; 2]> = d.moved.iter().map(|(a, b)| [*a, *b]).collect();
        pairs.sort_unstable();
        result.insert("moved".into(), serde_json::json!(pairs));
    }
    StepOutcome {
        step_id: step.id,
        action_id: step.action_id,
        error,
        result: (!result.is_empty()).then(|| serde_json::Value::Object(result).to_string()),
    }
}

/// The Message-IDs moves will bring into their destinations: `(mailbox, message_id, action)`.
async fn expected_arrivals(
    ctx: &MailboxCtx,
    uidvalidity: u32,
    groups: &[Group],
    steps: &[StepRow],
) -> Result<Vec<(String, String, i64)>, MailboxError> {
    let mut out = Vec::new();
    for g in groups {
        let Op::Move { to } = &g.op else { continue };
        let ids: BTreeMap<u32, String> = ctx
            .store
            .message_ids(&ctx.account_id, &ctx.mailbox, uidvalidity, &g.uids)
            .await?
            .into_iter()
            .collect();
        for i in &g.steps {
            for u in &steps[*i].uids {
                if let Some(id) = ids.get(u) {
                    out.push((to.clone(), id.clone(), steps[*i].action_id));
                }
            }
        }
    }
    Ok(out)
}

/// Sends one group's commands.
async fn execute(ctx: &MailboxCtx, conn: &mut Conn, g: &Group) -> Result<Done, MailboxError> {
    let t = ctx
        .timers
        .connect_timeout
        .max(std::time::Duration::from_secs(30));
    let set = uid_set(&g.uids);
    let mut done = Done::default();
    let utf8 = conn.caps.utf8_accept;
    match &g.op {
        Op::Flags { add, remove } => {
            let mut seen: HashSet<u32> = HashSet::new();
            for (sign, flags) in [('+', add), ('-', remove)] {
                if flags.is_empty() {
                    continue;
                }
                let cmd = format!("UID STORE {set} {sign}FLAGS ({})", flags.join(" "));
                let a = commands::run(&mut conn.session, &mut conn.view, &cmd, t).await?;
                if let Some(f) = refusal(&a, "UID STORE") {
                    done.failed = Some(f);
                    return Ok(done);
                }
                seen.extend(&a.fetched);
            }
            done.gone = confirm_gone(conn, &g.uids, &seen, t).await?;
        }
        Op::Move { to } => {
            let target = mailbox_name::argument(to, utf8);
            if conn.caps.moves {
                let a = commands::run(
                    &mut conn.session,
                    &mut conn.view,
                    &format!("UID MOVE {set} {target}"),
                    t,
                )
                .await?;
                if let Some(f) = refusal(&a, "UID MOVE") {
                    done.failed = Some(f);
                    return Ok(done);
                }
                done.moved = a.copied.iter().copied().collect();
                if conn.caps.uidplus {
                    done.gone = g
                        .uids
                        .iter()
                        .filter(|u| !done.moved.contains_key(u))
                        .copied()
                        .collect();
                }
            } else if conn.caps.uidplus {
                // RFC 6851's fallback, expunging only what was copied: another client's
                // \Deleted mail stays.
                let a = commands::run(
                    &mut conn.session,
                    &mut conn.view,
                    &format!("UID COPY {set} {target}"),
                    t,
                )
                .await?;
                if let Some(f) = refusal(&a, "UID COPY") {
                    done.failed = Some(f);
                    return Ok(done);
                }
                done.moved = a.copied.iter().copied().collect();
                let mut copied: Vec<u32> = done.moved.keys().copied().collect();
                copied.sort_unstable();
                done.gone = g
                    .uids
                    .iter()
                    .filter(|u| !done.moved.contains_key(u))
                    .copied()
                    .collect();
                if !copied.is_empty() {
                    done.failed = expunge_uids(conn, &copied, t).await?;
                }
            } else {
                done.failed = Some((
                    "refused",
                    "the server offers neither MOVE nor UIDPLUS: a move would need a bare \
                     EXPUNGE, which also removes other clients' \\Deleted mail"
                        .into(),
                ));
            }
        }
        Op::Expunge => {
            if !conn.caps.uidplus {
                done.failed = Some((
                    "refused",
                    "the server lacks UIDPLUS: UID EXPUNGE is needed to delete only this mail"
                        .into(),
                ));
                return Ok(done);
            }
            let a = commands::run(
                &mut conn.session,
                &mut conn.view,
                &format!("UID STORE {set} +FLAGS (\\Deleted)"),
                t,
            )
            .await?;
            if let Some(f) = refusal(&a, "UID STORE") {
                done.failed = Some(f);
                return Ok(done);
            }
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
                done.failed = expunge_uids(conn, &present, t).await?;
            }
        }
    }
    Ok(done)
}

/// `\Deleted` on `uids` and `UID EXPUNGE` of exactly them.
async fn expunge_uids(
    conn: &mut Conn,
    uids: &[u32],
    t: std::time::Duration,
) -> Result<Option<(&'static str, String)>, MailboxError> {
    let set = uid_set(uids);
    for cmd in [
        format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
        format!("UID EXPUNGE {set}"),
    ] {
        let a = commands::run(&mut conn.session, &mut conn.view, &cmd, t).await?;
        if let Some(f) = refusal(&a, "UID EXPUNGE") {
            return Ok(Some(f));
        }
    }
    Ok(None)
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

/// Applies what the commands changed with the outcomes, in one transaction per batch (the
/// outcomes with the last), each action's share of the records carrying its id.
async fn store_outcomes(
    ctx: &MailboxCtx,
    conn: &mut Conn,
    outcomes: &[StepOutcome],
    attributed: &[(i64, &[u32])],
    moved: &[Moved],
) -> Result<(), MailboxError> {
    let origin = Origin {
        account_id: &ctx.account_id,
        email_address: &ctx.email,
        mailbox: &ctx.mailbox,
        uid_validity: conn.state.uidvalidity,
    };
    // Each round takes at least one change out: bounded.
    let rounds = conn.view.pending.len() / changes::CHANGE_BATCH + 2;
    for _ in 0..rounds {
        let set = conn.view.pending.take_batch(changes::CHANGE_BATCH);
        let last = conn.view.pending.is_empty();
        let mine = if last { outcomes } else { &[] };
        let applied = ctx
            .store
            .apply_changes_with_outcomes(ctx.target(conn.state.uidvalidity), &set, mine, |a| {
                let mut records = attribute(&origin, a, attributed);
                if last {
                    records.extend(
                        moved
                            .iter()
                            .map(|(id, to, pairs)| event::messages_moved(&origin, to, pairs, *id)),
                    );
                }
                records
            })
            .await?;
        if let Some(m) = set.highest_modseq {
            conn.state.highest_modseq = Some(conn.state.highest_modseq.map_or(m, |h| h.max(m)));
        }
        let (flags, expunged) = (applied.flags.len(), applied.expunged.len());
        if flags + expunged > 0 {
            ctx.reporter.changes_applied(flags as u64, expunged as u64);
        }
        for row in applied.outbox {
            ctx.handoff.committed(row);
        }
        if last {
            return Ok(());
        }
    }
    Ok(())
}

/// The records of one applied batch: each action's flag changes and expunges with its id
/// (a message two actions touched goes to the later one), then what no action caused.
fn attribute(
    origin: &Origin<'_>,
    a: &crate::store::Applied,
    attributed: &[(i64, &[u32])],
) -> Vec<String> {
    let owner = |uid: u32| {
        attributed
            .iter()
            .rev()
            .find(|(_, uids)| uids.contains(&uid))
            .map(|(id, _)| *id)
    };
    let mut flags: BTreeMap<Option<i64>, Vec<(u32, String)>> = BTreeMap::new();
    for (uid, f) in &a.flags {
        flags
            .entry(owner(*uid))
            .or_default()
            .push((*uid, f.clone()));
    }
    let mut gone: BTreeMap<Option<i64>, Vec<u32>> = BTreeMap::new();
    for uid in &a.expunged {
        gone.entry(owner(*uid)).or_default().push(*uid);
    }
    let mut out = Vec::new();
    for (id, changes) in &flags {
        out.push(match id {
            Some(id) => event::flags_changed_by(origin, changes, *id),
            None => event::flags_changed(origin, changes),
        });
    }
    for (id, uids) in &gone {
        out.push(match id {
            Some(id) => event::messages_expunged_by(origin, uids, *id),
            None => event::messages_expunged(origin, uids),
        });
    }
    out
}
