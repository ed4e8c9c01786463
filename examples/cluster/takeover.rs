//! Takeover: 3 replicas share `mailboxes` on one scripted IMAP server and the bench's own
//! PostgreSQL; one at a time (round robin) is killed (`SIGKILL`) or stopped (`SIGTERM`), and
//! the harness times the signal → every one of its mailboxes idling on a survivor (polling the
//! survivors' `/status` every 50 ms), then starts it again under the same node id and waits
//! for the cluster to be balanced before the next run.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use crate::pg::BenchPg;
use crate::replicas::{self, Key, Plan, Replica, SIGKILL, SIGTERM};
use crate::scripted;
use crate::table::{median_min_max, Table};

/// Which signal ends the victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sig {
    /// `kill -9`: its leases expire after `lease_ttl`.
    Kill,
    /// `SIGTERM`: it releases its leases before it exits.
    Term,
}

/// What one run measured.
#[derive(Debug, Clone)]
struct Run {
    victim: String,
    mailboxes: usize,
    /// Signal → all its mailboxes idling on survivors.
    all_idle: Duration,
    /// Its last heartbeat (as the nodes table said just before the signal) → all idle.
    since_heartbeat: Duration,
    /// Signal → the process gone (SIGTERM only: its shutdown).
    exited: Option<Duration>,
    /// Survivors' `idlesync_lease_takeover_seconds`: observations and their mean, this run.
    takeovers: f64,
    takeover_mean_s: f64,
    /// Survivors' `idlesync_lease_takeovers_total` by reason, this run.
    expired: f64,
    released: f64,
}

/// Survivors' takeover metrics, summed.
async fn takeover_metrics(survivors: &[&Replica]) -> Result<(f64, f64, f64, f64)> {
    let (mut sum, mut count, mut expired, mut released) = (0.0, 0.0, 0.0, 0.0);
    for r in survivors {
        let m = replicas::metrics(r.admin()).await?;
        let (s, c) = replicas::histogram(&m, "idlesync_lease_takeover_seconds");
        sum += s;
        count += c;
        expired += replicas::sample(&m, "idlesync_lease_takeovers_total", "reason=\"expired\"");
        released += replicas::sample(&m, "idlesync_lease_takeovers_total", "reason=\"released\"");
    }
    Ok((sum, count, expired, released))
}

/// Runs `runs` takeovers by `sig` with `n_replicas` replicas.
#[allow(clippy::too_many_arguments)]
pub async fn takeover(
    bin: &Path,
    sig: Sig,
    runs: usize,
    mailboxes: usize,
    n_replicas: usize,
    ttl: Duration,
    renew: Duration,
    spread: bool,
) -> Result<Table> {
    ensure!(n_replicas >= 2, "a takeover needs at least 2 replicas");
    let pg = BenchPg::start()?;
    let db = format!("takeover_{}", format!("{sig:?}").to_lowercase());
    pg.create_db(&db).await?;
    let server = scripted::start_with(Vec::new(), scripted::Behaviour::default()).await?;
    let plan = Plan {
        db_url: pg.url(&db),
        imap_port: server.port,
        mailboxes,
        cluster: Some((ttl, renew)),
        rate: None,
    };
    let names: Vec<String> = (1..=n_replicas).map(|i| format!("r{i}")).collect();
    let mut reps: Vec<Replica> = names
        .iter()
        .map(|n| Replica::spawn(bin, &plan, n))
        .collect::<Result<_>>()?;
    let settle = ttl * 2 + Duration::from_secs(60);
    let first = replicas::wait_balanced(&reps.iter().collect::<Vec<_>>(), &plan, settle).await?;
    eprintln!(
        "cluster: {n_replicas} replicas balanced over {mailboxes} mailboxes in {:.1} s",
        first.as_secs_f64()
    );

    let mut done = Vec::new();
    for run in 0..runs {
        let v = run % n_replicas;
        let victim = reps[v].node.clone();
        let survivors: Vec<&Replica> = reps
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != v)
            .map(|(_, r)| r)
            .collect();
        // Balanced means every replica just ticked (a join wakes them all), so a signal sent
        // at once lands right after a renewal: a kill's worst case. `spread` offsets run i by
        // i/runs of renew_every instead, so that the runs sample the renewal phase evenly.
        if spread {
            tokio::time::sleep(renew.mul_f64(run as f64 / runs as f64)).await;
        }
        let held: BTreeSet<Key> = replicas::idling(reps[v].admin()).await?;
        ensure!(!held.is_empty(), "{victim} holds nothing");
        let before = takeover_metrics(&survivors).await?;
        let age_read = Instant::now();
        let age = replicas::heartbeat_age_ms(survivors[0].admin(), &victim).await?;
        let signo = match sig {
            Sig::Kill => SIGKILL,
            Sig::Term => SIGTERM,
        };
        replicas::signal(reps[v].proc.pid, signo);
        let t0 = Instant::now();
        let age = Duration::from_millis(age.max(0) as u64) + t0.duration_since(age_read);
        let deadline = t0 + ttl + Duration::from_secs(60);
        let mut exited = None;
        let all_idle = loop {
            if sig == Sig::Term && exited.is_none() && reps[v].exited() {
                exited = Some(t0.elapsed());
            }
            let mut elsewhere = BTreeSet::new();
            for r in &survivors {
                elsewhere.extend(replicas::idling(r.admin()).await.unwrap_or_default());
            }
            if held.is_subset(&elsewhere) {
                break t0.elapsed();
            }
            if Instant::now() > deadline {
                bail!(
                    "run {run}: {} of {victim}'s {} mailboxes idling elsewhere after {:?}",
                    held.intersection(&elsewhere).count(),
                    held.len(),
                    t0.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let after = takeover_metrics(&survivors).await?;
        let count = after.1 - before.1;
        let r = Run {
            victim: victim.clone(),
            mailboxes: held.len(),
            all_idle,
            since_heartbeat: all_idle + age,
            exited,
            takeovers: count,
            takeover_mean_s: if count > 0.0 {
                (after.0 - before.0) / count
            } else {
                f64::NAN
            },
            expired: after.2 - before.2,
            released: after.3 - before.3,
        };
        eprintln!(
            "run {run}: {victim} ({} mailboxes) → all idle elsewhere {:.3} s after the signal, \
             {:.3} s after its last heartbeat; takeover histogram: {} observations, mean {:.3} s",
            r.mailboxes,
            r.all_idle.as_secs_f64(),
            r.since_heartbeat.as_secs_f64(),
            r.takeovers,
            r.takeover_mean_s
        );
        done.push(r);
        // The victim is reaped when its DaemonProc drops (after SIGTERM: once it has exited).
        let end = Instant::now() + Duration::from_secs(30);
        while !reps[v].exited() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reps[v] = Replica::spawn(bin, &plan, &victim)?;
        replicas::wait_balanced(&reps.iter().collect::<Vec<_>>(), &plan, settle).await?;
    }
    for r in reps {
        r.proc.stop()?;
    }
    drop(server);
    Ok(table(sig, &done, mailboxes, n_replicas, ttl, renew, spread))
}

fn table(
    sig: Sig,
    runs: &[Run],
    mailboxes: usize,
    n: usize,
    ttl: Duration,
    renew: Duration,
    spread: bool,
) -> Table {
    let what = match sig {
        Sig::Kill => "kill -9",
        Sig::Term => "SIGTERM",
    };
    let mut t = Table::new(
        format!(
            "takeover after {what}: {n} replicas, {mailboxes} mailboxes (scripted IMAP server), \
             lease_ttl {} s, renew_every {} s, {} runs{}",
            ttl.as_secs_f64(),
            renew.as_secs_f64(),
            runs.len(),
            if spread {
                ", signals spread over the renewal phase"
            } else {
                ", each signal right after a renewal"
            }
        ),
        &[
            "run",
            "victim (mailboxes)",
            "signal → all idle elsewhere",
            "last heartbeat → all idle elsewhere",
            "signal → exited",
            "takeover histogram: n, mean",
            "takeovers expired / released",
        ],
    );
    for (i, r) in runs.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            format!("{} ({})", r.victim, r.mailboxes),
            format!("{:.3} s", r.all_idle.as_secs_f64()),
            format!("{:.3} s", r.since_heartbeat.as_secs_f64()),
            r.exited
                .map_or("—".into(), |d| format!("{:.3} s", d.as_secs_f64())),
            format!("{}, {:.3} s", r.takeovers, r.takeover_mean_s),
            format!("{} / {}", r.expired, r.released),
        ]);
    }
    let secs = |f: &dyn Fn(&Run) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    let all = median_min_max(&secs(&|r| r.all_idle.as_secs_f64()));
    let hb = median_min_max(&secs(&|r| r.since_heartbeat.as_secs_f64()));
    let hist = median_min_max(&secs(&|r| r.takeover_mean_s));
    let exited = median_min_max(
        &runs
            .iter()
            .filter_map(|r| r.exited.map(|d| d.as_secs_f64()))
            .collect::<Vec<_>>(),
    );
    t.row(vec![
        "median (min–max)".into(),
        String::new(),
        all,
        hb,
        exited,
        format!("mean {hist}"),
        String::new(),
    ]);
    t
}
