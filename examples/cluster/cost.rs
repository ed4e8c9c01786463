//! Cluster cost while idle: `mailboxes` on one scripted IMAP server, shared by `replicas`
//! replicas, then held by one single-node process (the baseline), each on a fresh database of
//! the bench's own PostgreSQL. Over `idle` of pure idling (after everything idles, balanced,
//! and `settle` more), the server's own counters give the statements and commits per second
//! and the tuples updated; `/proc` gives each process's CPU (utime + stime) and PostgreSQL's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::pg::{BenchPg, DbCounters, Delta};
use crate::replicas::{self, Plan, Replica};
use crate::scripted;
use crate::table::Table;

/// One phase's figures.
struct Phase {
    label: String,
    processes: usize,
    online: Duration,
    delta: Delta,
    /// CPU seconds of each process over the window.
    cpu: Vec<(String, f64)>,
    pg_cpu: f64,
    still_balanced: bool,
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    bin: &Path,
    pg: &BenchPg,
    imap_port: u16,
    mailboxes: usize,
    n_replicas: Option<usize>,
    rate: Option<u32>,
    idle: Duration,
    settle: Duration,
) -> Result<Phase> {
    let (db, names): (String, Vec<String>) = match n_replicas {
        Some(n) => (
            "cost_cluster".into(),
            (1..=n).map(|i| format!("r{i}")).collect(),
        ),
        None => ("cost_single".into(), vec!["single".into()]),
    };
    pg.create_db(&db).await?;
    let plan = Plan {
        db_url: pg.url(&db),
        imap_port,
        mailboxes,
        // The defaults: what the headline figures are about.
        cluster: n_replicas.map(|_| (Duration::from_secs(30), Duration::from_secs(10))),
        rate,
    };
    let t0 = Instant::now();
    let reps: Vec<Replica> = names
        .iter()
        .map(|n| Replica::spawn(bin, &plan, n))
        .collect::<Result<_>>()?;
    let all: Vec<&Replica> = reps.iter().collect();
    let limit = Duration::from_secs(180 + mailboxes as u64 / 20);
    replicas::wait_balanced(&all, &plan, limit).await?;
    let online = t0.elapsed();
    eprintln!(
        "{db}: {} process(es) idle on {mailboxes} mailboxes after {:.1} s; settling {} s, \
         then measuring {} s",
        reps.len(),
        online.as_secs_f64(),
        settle.as_secs(),
        idle.as_secs()
    );
    tokio::time::sleep(settle).await;

    let admin = pg.pool("postgres").await?;
    let own = pg.pool(&db).await?;
    let c0 = DbCounters::read(&admin, &own, &db).await?;
    let cpu0: Vec<f64> = reps
        .iter()
        .map(|r| r.proc.stats().map(|s| s.cpu_s))
        .collect::<Result<_>>()?;
    let pg0 = pg.cpu_s()?;
    tokio::time::sleep(idle).await;
    let c1 = DbCounters::read(&admin, &own, &db).await?;
    let cpu1: Vec<f64> = reps
        .iter()
        .map(|r| r.proc.stats().map(|s| s.cpu_s))
        .collect::<Result<_>>()?;
    let pg1 = pg.cpu_s()?;
    let still_balanced = replicas::wait_balanced(&all, &plan, Duration::from_secs(5))
        .await
        .is_ok();
    admin.close().await;
    own.close().await;
    let cpu = reps
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|(r, (a, b))| (r.node.clone(), b - a))
        .collect();
    for r in reps {
        r.proc.stop()?;
    }
    Ok(Phase {
        label: match n_replicas {
            Some(n) => format!("{n} replicas"),
            None => "single node".into(),
        },
        processes: names.len(),
        online,
        delta: c0.delta(&c1),
        cpu,
        pg_cpu: pg1 - pg0,
        still_balanced,
    })
}

/// Both phases; the tables.
pub async fn cost(
    bin: &Path,
    mailboxes: usize,
    n_replicas: usize,
    rate: Option<u32>,
    idle: Duration,
    settle: Duration,
) -> Result<Vec<Table>> {
    let pg = BenchPg::start()?;
    let server = scripted::start_with(Vec::new(), scripted::Behaviour::default()).await?;
    let mut phases = Vec::new();
    // `--replicas 0`: the single-node baseline alone.
    if n_replicas > 0 {
        phases.push(
            phase(
                bin,
                &pg,
                server.port,
                mailboxes,
                Some(n_replicas),
                rate,
                idle,
                settle,
            )
            .await?,
        );
    }
    phases.push(phase(bin, &pg, server.port, mailboxes, None, rate, idle, settle).await?);
    drop(server);
    Ok(tables(&phases, mailboxes, idle))
}

fn tables(phases: &[Phase], mailboxes: usize, idle: Duration) -> Vec<Table> {
    let secs = idle.as_secs_f64();
    let per_s = |n: i64| format!("{:.2}/s ({n})", n as f64 / secs);
    let mut header = vec!["figure".to_string()];
    header.extend(phases.iter().map(|p| p.label.clone()));
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(
        format!(
            "cluster cost while idle: {mailboxes} mailboxes (scripted IMAP server, plain), \
             lease_ttl 30 s, renew_every 10 s, over {} s of idling",
            idle.as_secs()
        ),
        &header_refs,
    );
    let mut row = |figure: &str, f: &dyn Fn(&Phase) -> String| {
        let mut cells = vec![figure.to_string()];
        cells.extend(phases.iter().map(f));
        t.row(cells);
    };
    row("processes; start → all idling, balanced", &|p| {
        format!("{}; {:.1} s", p.processes, p.online.as_secs_f64())
    });
    row("statements to PostgreSQL (pg_stat_statements, all)", &|p| {
        per_s(p.delta.calls())
    });
    row(
        "… renewal + heartbeat (`WITH … INSERT INTO cluster_nodes … ON CONFLICT`: one per tick)",
        &|p| {
            per_s(
                p.delta
                    .calls_where(&|q| q.contains("INSERT INTO cluster_nodes")),
            )
        },
    );
    row(
        "… membership (`SELECT … FROM cluster_nodes …`: one per tick)",
        &|p| {
            per_s(
                p.delta
                    .calls_where(&|q| q.starts_with("SELECT") && q.contains("FROM cluster_nodes")),
            )
        },
    );
    row("commits (pg_stat_database.xact_commit; lags by the stats flush, counts the harness's 1–2 reads)", &|p| {
        per_s(p.delta.xact_commit)
    });
    for table in ["mailbox_leases", "cluster_nodes"] {
        row(&format!("{table}: tuples updated (of which HOT)"), &|p| {
            let (u, h) = p.delta.updates(table);
            format!("{:.1}/s ({u}; HOT {h})", u as f64 / secs)
        });
    }
    row("idle CPU per process (utime+stime, % of one core)", &|p| {
        p.cpu
            .iter()
            .map(|(n, c)| format!("{n} {:.3} %", 100.0 * c / secs))
            .collect::<Vec<_>>()
            .join(", ")
    });
    row("idle CPU, all processes together", &|p| {
        let sum: f64 = p.cpu.iter().map(|c| c.1).sum();
        format!("{sum:.2} s = {:.3} % of one core", 100.0 * sum / secs)
    });
    row("PostgreSQL CPU (own instance, all its processes)", &|p| {
        format!(
            "{:.2} s = {:.3} % of one core",
            p.pg_cpu,
            100.0 * p.pg_cpu / secs
        )
    });
    row("still all idling and balanced after the window", &|p| {
        p.still_balanced.to_string()
    });
    let mut out = vec![t];
    if let [c, s] = phases {
        let sum = |p: &Phase| p.cpu.iter().map(|c| c.1).sum::<f64>();
        let mut r = Table::new("cluster / single node", &["figure", "ratio"]);
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                format!("{a:.2} s vs {b:.2} s (baseline 0)")
            }
        };
        r.row(vec![
            "idle CPU, all replicas together / the single node".into(),
            ratio(sum(c), sum(s)),
        ]);
        r.row(vec![
            "idle CPU, mean replica / the single node".into(),
            ratio(sum(c) / c.processes as f64, sum(s)),
        ]);
        r.row(vec![
            "PostgreSQL CPU, cluster / single node".into(),
            ratio(c.pg_cpu, s.pg_cpu),
        ]);
        out.push(r);
    }
    for p in phases {
        let mut st = Table::new(
            format!(
                "statements over the window, {} (most called first)",
                p.label
            ),
            &["statement", "calls/s", "rows/s"],
        );
        for (q, calls, rows) in p.delta.statements.iter().take(12) {
            let q: String = q.chars().take(140).collect();
            st.row(vec![
                format!("`{}`", q.replace('|', "\\|")),
                format!("{:.2}", *calls as f64 / secs),
                format!("{:.1}", *rows as f64 / secs),
            ]);
        }
        out.push(st);
    }
    out
}
