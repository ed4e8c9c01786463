//! How an action's outcome is written (#19): each step's status, error and detail, in the
//! change transaction that carries its effect, and the action's status rolled up from its
//! steps.

use super::actions::StepOutcome;
use super::stmt::Stmt;

/// Brings an action's status in line with its steps: `failed` (with the first failed step's
/// error) as soon as one step failed, `done` when every step is, `running` while one runs.
pub(super) fn rollup(action_id: i64, now: i64) -> Stmt<'static> {
    Stmt::new(
        "UPDATE actions SET \
         status = CASE \
           WHEN EXISTS (SELECT 1 FROM action_steps s WHERE s.action_id = actions.id \
                        AND s.status = 'failed') THEN 'failed' \
           WHEN NOT EXISTS (SELECT 1 FROM action_steps s WHERE s.action_id = actions.id \
                            AND s.status <> 'done') THEN 'done' \
           WHEN EXISTS (SELECT 1 FROM action_steps s WHERE s.action_id = actions.id \
                        AND s.status = 'running') THEN 'running' \
           ELSE 'queued' END, \
         error_code = (SELECT s.error_code FROM action_steps s WHERE s.action_id = actions.id \
                       AND s.status = 'failed' ORDER BY s.id LIMIT 1), \
         error_message = (SELECT s.error_message FROM action_steps s \
                          WHERE s.action_id = actions.id AND s.status = 'failed' \
                          ORDER BY s.id LIMIT 1), \
         updated_at = $2 \
         WHERE id = $1 AND status NOT IN ('done', 'failed')",
    )
    .bind(action_id)
    .bind(now)
}

/// The statements that store step outcomes, for the change transaction that carries their
/// effect, and (second) the roll-ups of their actions. Run the roll-ups after the rest: on
/// PostgreSQL grouped statements share one snapshot, so a roll-up in the same group would not
/// see the steps' new states.
pub(super) fn outcome_stmts(
    outcomes: &[StepOutcome],
    now: i64,
) -> (Vec<Stmt<'_>>, Vec<Stmt<'static>>) {
    let mut stmts = Vec::new();
    for o in outcomes {
        let (status, code, message) = match &o.error {
            None => ("done", None, None),
            Some((code, message)) => ("failed", Some(*code), Some(message.as_str())),
        };
        stmts.push(
            Stmt::new(
                "UPDATE action_steps SET status = $2, error_code = $3, error_message = $4, \
                 result = $5 WHERE id = $1",
            )
            .bind(o.step_id)
            .bind(status)
            .bind(code)
            .bind(message)
            .bind(o.result.as_deref()),
        );
        if o.error.is_some() {
            // A failed move brings nothing: its expected arrivals go.
            stmts.push(
                Stmt::new("DELETE FROM expected_arrivals WHERE action_id = $1").bind(o.action_id),
            );
        }
    }
    (stmts, rollups(outcomes.iter().map(|o| o.action_id), now))
}

/// One [`rollup`] per distinct action.
pub(super) fn rollups(actions: impl Iterator<Item = i64>, now: i64) -> Vec<Stmt<'static>> {
    let mut actions: Vec<i64> = actions.collect();
    actions.sort_unstable();
    actions.dedup();
    actions.into_iter().map(|a| rollup(a, now)).collect()
}
