//! (e) The flag storm of issue #11: `STORE 1:N +FLAGS (\Seen)` on an N-message mailbox that
//! idlesync watches. How fast the rows follow, how many records it takes, and idlesync's CPU
//! per change.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::dovecot::Wire;
use crate::rig::{config_toml, user, DaemonProc, Sinks, Subscriber};
use crate::scenarios::{await_all, waiting_mail, Settings, Table};

/// Runs the storm on `messages` messages (imported first, as history).
pub async fn changes(s: &Settings, messages: usize, size: usize) -> Result<Table> {
    let (dc, _) = waiting_mail(messages, size)?;
    let sinks = Sinks::new().await?;
    let mut sub = Subscriber::new(&sinks).await?;
    let pool = sinks.db.pool().await?;
    let watched = vec![user(0)];
    let mut d = DaemonProc::spawn(&s.bin, |admin| {
        config_toml(&dc, &sinks, admin, &watched, s.rate)
    })?;
    await_all(&mut sub, &sinks, &pool, messages, d.started).await?;
    d.wait_idling(1, Duration::from_millis(50), Duration::from_secs(60))
        .await?;

    let before = d.stats()?;
    let mut w = Wire::login(&dc, &user(0)).await?;
    let r = w.command("SELECT INBOX", None).await?;
    ensure!(r.starts_with("OK"), "SELECT: {r}");
    let t0 = Instant::now();
    let r = w.command("STORE 1:* +FLAGS.SILENT (\\Seen)", None).await?;
    ensure!(r.starts_with("OK"), "STORE: {r}");
    let store_ok = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60 + messages as u64 / 100);
    let (mut changed, mut records, mut first) = (0usize, 0usize, None);
    let mut first_count = 0;
    while changed < messages {
        let left = deadline.saturating_duration_since(Instant::now());
        let rec = sub
            .next(left)
            .await
            .with_context(|| format!("{changed} of {messages} flag changes announced"))?;
        if rec.record["kind"] == "flagsChanged" {
            let n = rec.record["count"].as_u64().unwrap_or(0) as usize;
            if first.is_none() {
                first = Some(t0.elapsed());
                first_count = n;
            }
            changed += n;
            records += 1;
        }
    }
    let all = t0.elapsed();
    let after = d.stats()?;
    let (seen,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM messages WHERE flags LIKE '%\\Seen%'")
            .fetch_one(&pool)
            .await?;
    w.logout().await;
    d.stop()?;
    pool.close().await;
    ensure!(seen as usize == messages, "{seen} of {messages} rows seen");

    let first = first.unwrap_or(all);
    let span = all.saturating_sub(first).as_secs_f64();
    let cpu = after.cpu_s - before.cpu_s;
    let mut t = Table::new(format!(
        "(e) changes: STORE 1:{messages} +FLAGS (\\Seen) on a watched mailbox of {} KB messages, PostgreSQL",
        size / 1000
    ));
    t.row(
        "records published",
        format!("{records} (for {changed} changes)"),
        "a handful",
    );
    t.row(
        "STORE answered / first record / all announced",
        format!(
            "{:.2} s / {:.2} s / {:.2} s",
            store_ok.as_secs_f64(),
            first.as_secs_f64(),
            all.as_secs_f64()
        ),
        "—",
    );
    t.row(
        "changes per second, first record → last (idlesync applying)",
        if records > 1 && span > 0.0 {
            format!("{:.0}", (changed - first_count) as f64 / span)
        } else {
            "one record: no span to measure".to_string()
        },
        "≥ 20,000",
    );
    t.row(
        "changes per second, STORE sent → all announced (Dovecot included)",
        format!("{:.0}", changed as f64 / all.as_secs_f64()),
        "—",
    );
    t.row(
        "idlesync CPU per change",
        format!("{:.1} µs", 1e6 * cpu / changed as f64),
        "—",
    );
    Ok(t)
}
