//! The rig's end-of-test invariants: every appended message stored exactly once and
//! announced, no replica panicked.

use super::*;

impl Rig {
    /// Rows of `(account, uid)` stored for these appended messages' accounts.
    async fn rows(pool: &AnyPool) -> Result<Vec<(String, i64, i64, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT account_id, uidvalidity, uid, subject FROM messages WHERE mailbox = 'INBOX'",
        )
        .fetch_all(pool)
        .await?)
    }

    /// The end-of-test invariants, once everything appended so far is in: every appended
    /// message has exactly one row (no loss, no double, nothing else), every stored UID was
    /// announced on Redis at least once, and no replica's log shows a panic. Waits (bounded)
    /// for stragglers.
    pub async fn check_store(&mut self, deadline: Duration) -> Result<Summary> {
        let appended = self.appended();
        let want: BTreeSet<(String, i64)> = appended
            .iter()
            .map(|a| (a.account.clone(), a.uid))
            .collect();
        ensure!(want.len() == appended.len(), "APPENDUID repeated a UID");
        let pool = self.pool().await?;
        let end = tokio::time::Instant::now() + deadline;
        let (rows, have) = loop {
            let rows = Self::rows(&pool).await?;
            let have: BTreeSet<(String, i64)> = rows.iter().map(|r| (r.0.clone(), r.2)).collect();
            if want.is_subset(&have) {
                break (rows, have);
            }
            if tokio::time::Instant::now() >= end {
                let missing: Vec<_> = want.difference(&have).collect();
                bail!(
                    "{} of {} appended messages not stored after {deadline:?}: {missing:?}\n{}",
                    missing.len(),
                    want.len(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        pool.close().await;
        let extra: Vec<_> = have.difference(&want).collect();
        ensure!(extra.is_empty(), "rows nobody appended: {extra:?}");
        ensure!(
            rows.len() == want.len(),
            "{} rows for {} messages: a message stored twice",
            rows.len(),
            want.len()
        );
        let subjects: BTreeSet<&str> = rows.iter().filter_map(|r| r.3.as_deref()).collect();
        ensure!(subjects.len() == rows.len(), "a subject stored twice");
        let by_subject: BTreeMap<&str, (&str, i64)> = appended
            .iter()
            .map(|a| (a.subject.as_str(), (a.account.as_str(), a.uid)))
            .collect();
        for r in &rows {
            let s = r.3.as_deref().unwrap_or_default();
            ensure!(
                by_subject.get(s) == Some(&(r.0.as_str(), r.2)),
                "row {r:?} does not match what was appended"
            );
        }

        // Every stored UID announced: read the subscribers until they cover it.
        let stored: BTreeSet<(String, i64, i64)> =
            rows.iter().map(|r| (r.0.clone(), r.1, r.2)).collect();
        let end = tokio::time::Instant::now() + deadline;
        while !stored.is_subset(&self.announced) {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let rec = tokio::select! {
                r = self.sub.next(left) => r,
                r = self.changes.next(left) => r,
            };
            match rec {
                Ok(rec) => self.note(&rec),
                Err(e) => {
                    let never: Vec<_> = stored.difference(&self.announced).collect();
                    bail!(
                        "{} stored UIDs never announced ({e:#}): {never:?}\n{}",
                        never.len(),
                        self.logs()
                    );
                }
            }
        }
        let panics: Vec<String> = self
            .complaints()
            .into_iter()
            .filter(|l| l.contains("panicked"))
            .collect();
        ensure!(
            panics.is_empty(),
            "a replica panicked:\n{}",
            panics.join("\n")
        );
        Ok(Summary {
            appended: want.len(),
            stored: rows.len(),
            announced: stored.len(),
        })
    }

    fn note(&mut self, rec: &Value) {
        let kind = rec["kind"].as_str().unwrap_or_default();
        if kind == "imported" {
            self.imported_records += 1;
        }
        if kind != "newMail" && kind != "imported" {
            return;
        }
        let acc = rec["accountId"].as_str().unwrap_or_default().to_string();
        let uv = rec["uidValidity"].as_i64().unwrap_or_default();
        for u in rec["uids"].as_array().into_iter().flatten() {
            if let Some(u) = u.as_i64() {
                self.announced.insert((acc.clone(), uv, u));
            }
        }
    }
}

/// What [`Rig::check_store`] found, for the test's output.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub appended: usize,
    pub stored: usize,
    pub announced: usize,
}
