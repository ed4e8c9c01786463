//! The load harness's scenarios (issue #5): latency, scale, burst, catch-up (and, in
//! [`crate::changes`], the flag storm of #11), and the small smoke run that `tests/load_smoke.rs` keeps in the default test suite.
//!
//! Each scenario starts its own Dovecot, database and Redis channel, runs the idlesync binary
//! as a child process (so RSS and CPU are idlesync's alone) and returns a [`Table`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::dovecot::Wire;
use crate::rig::{
    self, config_toml, message, start_dovecot, unix_us, user, DaemonProc, MachineCpu,
    MaildirWriter, Sinks, Subscriber,
};

/// Settings shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The idlesync binary to run (release build for figures).
    pub bin: PathBuf,
    /// `--rate`: `imap.connects_per_second` for idlesync and the same spacing for the bare
    /// client. `None`: idlesync's default (no rate, only `max_connecting`), and the bare client
    /// at [`rig::BARE_DEFAULT_RATE`].
    pub rate: Option<u32>,
}

impl Settings {
    /// The bare client's new connections per second.
    pub fn bare_rate(&self) -> u32 {
        self.rate.unwrap_or(rig::BARE_DEFAULT_RATE)
    }

    /// How connections are paced, for table titles and the banner.
    pub fn pacing(&self) -> String {
        match self.rate {
            Some(r) => format!("{r} new connections/s"),
            None => format!(
                "idlesync's default pacing (max_connecting only), bare client {} new connections/s",
                self.bare_rate()
            ),
        }
    }
}

/// One line of a result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured.
    pub figure: String,
    /// The measured value, formatted.
    pub measured: String,
    /// The target, or `—`.
    pub target: String,
}

/// A scenario's results.
#[derive(Debug, Clone)]
pub struct Table {
    /// Scenario and its parameters.
    pub title: String,
    /// Figures.
    pub rows: Vec<Row>,
}

impl Table {
    pub(crate) fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(
        &mut self,
        figure: impl Into<String>,
        measured: impl Into<String>,
        target: &str,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            measured: measured.into(),
            target: target.into(),
        });
    }

    /// Markdown, ready for BENCHMARKS.md.
    pub fn render(&self) -> String {
        let mut s = format!(
            "### {}\n\n| figure | measured | target |\n|---|---|---|\n",
            self.title
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                r.figure, r.measured, r.target
            ));
        }
        s
    }
}

/// p50 / p99 / max of samples in µs, as milliseconds.
fn quantiles(samples: &mut [i64]) -> (f64, f64, f64) {
    samples.sort_unstable();
    let q = |p: f64| -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        // Nearest rank.
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1] as f64 / 1000.0
    };
    (q(0.50), q(0.99), q(1.0))
}

fn fmt_q((p50, p99, max): (f64, f64, f64)) -> String {
    format!("{p50:.2} / {p99:.2} / {max:.2} ms")
}

/// (a) Sequential deliveries over IMAP APPEND to one watched mailbox, and to a probe mailbox
/// (another user, its own imap process) for Dovecot's own APPEND → EXISTS.
pub async fn latency(s: &Settings, deliveries: usize) -> Result<Table> {
    // client_limit 1: every session has its own imap process, so no watch is shared.
    let dc = start_dovecot(1, &["probe"], 1)?;
    let sinks = Sinks::new().await?;
    let mut sub = Subscriber::new(&sinks).await?;
    let watched = vec![user(0)];
    let mut d = DaemonProc::spawn(&s.bin, |admin| {
        config_toml(&dc, &sinks, admin, &watched, s.rate)
    })?;
    d.wait_idling(1, Duration::from_millis(50), Duration::from_secs(60))
        .await?;
    let mut appender = Wire::login(&dc, &user(0)).await?;
    let mut probe_appender = Wire::login(&dc, "probe").await?;
    let mut probe = Wire::login(&dc, "probe").await?;
    probe.idle("INBOX").await?;

    const WARMUP: usize = 2;
    let mut e2e = Vec::new(); // APPEND OK → subscriber
    let mut after_exists = Vec::new(); // idlesync's EXISTS read → subscriber
    let mut own = Vec::new(); // EXISTS read → PUBLISH acked (daemon's log)
    let mut dovecot = Vec::new(); // APPEND OK → idlesync's EXISTS read
    let mut floor = Vec::new(); // probe: APPEND OK → EXISTS
    for i in 0..deliveries + WARMUP {
        // The probe, every other round: its own user, mailbox and imap process.
        if i % 2 == 0 {
            probe_appender
                .append("INBOX", &message(i, "probe", 2048))
                .await
                .context("probe APPEND")?;
            let ok = Instant::now();
            let at = probe.next_exists(Duration::from_secs(10)).await?;
            if i >= WARMUP {
                floor.push(at.duration_since(ok).as_micros() as i64);
            }
        }
        appender
            .append("INBOX", &message(i, &user(0), 2048))
            .await?;
        let ok_us = unix_us();
        let rec = loop {
            let r = sub
                .next(Duration::from_secs(10))
                .await
                .with_context(|| format!("delivery {i}: no record within 10 s\n{}", d.tail()))?;
            if r.record["kind"] == "newMail" {
                break r;
            }
        };
        let p = tokio::time::timeout(Duration::from_secs(5), d.published.recv())
            .await
            .ok()
            .flatten()
            .context("no idlesync::latency log line (is src/publish.rs logging it?)")?;
        if i >= WARMUP {
            e2e.push(rec.at_us - ok_us);
            after_exists.push(rec.at_us - p.exists_at_us);
            own.push(p.exists_to_publish_us);
            dovecot.push(p.exists_at_us - ok_us);
        }
        // Let the daemon re-enter IDLE before the next delivery.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hist = histogram_quantiles(&d)
        .await
        .unwrap_or_else(|e| format!("({e:#})"));
    let tail = d.tail();
    d.stop()?;

    let mut t = Table::new(format!(
        "(a) latency: {deliveries} sequential APPENDs to one watched INBOX, PostgreSQL, Redis"
    ));
    t.row(
        "APPEND OK → Redis subscriber, p50 / p99 / max",
        fmt_q(quantiles(&mut e2e)),
        "— (floor ≈ 500 ms + our share)",
    );
    t.row(
        "Dovecot: APPEND OK → EXISTS read by idlesync, p50 / p99 / max",
        fmt_q(quantiles(&mut dovecot)),
        "— (Dovecot's fixed delay)",
    );
    t.row(
        format!(
            "Dovecot floor: APPEND OK → EXISTS on a probe IDLE session, p50 / p99 / max ({} samples)",
            floor.len()
        ),
        fmt_q(quantiles(&mut floor)),
        "—",
    );
    t.row(
        "end to end minus Dovecot: EXISTS read → Redis subscriber, p50 / p99 / max",
        fmt_q(quantiles(&mut after_exists)),
        "p50 ≤ 4 ms, p99 ≤ 12 ms",
    );
    t.row(
        "idlesync's share: EXISTS read → PUBLISH acked (exact, debug log), p50 / p99 / max",
        fmt_q(quantiles(&mut own)),
        "p50 ≤ 3 ms, p99 ≤ 10 ms",
    );
    t.row(
        "idlesync's share from `idlesync_exists_to_publish_seconds` (bucket upper bounds), p50 / p99",
        hist,
        "p50 ≤ 3 ms, p99 ≤ 10 ms",
    );
    if !tail.is_empty() {
        eprintln!("idlesync warnings during the latency run:\n{tail}");
    }
    Ok(t)
}

/// p50 and p99 of the daemon's histogram, as the upper bounds of the buckets they fall in.
async fn histogram_quantiles(d: &DaemonProc) -> Result<String> {
    let body = rig::http_get(d.admin, "/metrics").await?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("idlesync_exists_to_publish_seconds_bucket{") else {
            continue;
        };
        let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        let n: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += n,
            None => buckets.push((le, n)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    ensure!(total > 0.0, "empty histogram");
    let q = |p: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= p * total)
            .map_or(f64::INFINITY, |b| b.0 * 1000.0)
    };
    Ok(format!("≤ {} / ≤ {} ms", q(0.5), q(0.99)))
}

/// (b) `n` idle TLS mailboxes (one user each): time until all idle, RSS above an empty daemon,
/// CPU over `idle` of pure idling, descriptors; then the bare asyncio client on the same
/// (restarted) Dovecot.
pub async fn scale(s: &Settings, n: usize, idle: Duration, bare: bool) -> Result<Table> {
    let mut dc = start_dovecot(n, &[], 100)?;
    let sinks = Sinks::new().await?;
    // A user's first login and SELECT make Dovecot create its index files (with fsyncs): that
    // is Dovecot's one-off cost, and whoever came first paid it (idlesync: 74 s against the
    // bare client's 43 s on a warm server in one run). Both timed runs below meet a server
    // whose users have all logged in once, each on a freshly restarted Dovecot.
    let cold = bare
        .then(|| rig::bare_client(&dc, n, s.bare_rate()))
        .transpose()?;
    if bare {
        dc.restart()?;
    }
    let poll = if n >= 1000 {
        Duration::from_millis(250)
    } else {
        Duration::from_millis(50)
    };

    // The empty daemon: same config, no accounts.
    let mut empty =
        DaemonProc::spawn(&s.bin, |admin| config_toml(&dc, &sinks, admin, &[], s.rate))?;
    empty.wait_idling(0, poll, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = empty.stats()?;
    empty.stop()?;

    let watched: Vec<String> = (0..n).map(user).collect();
    let mut d = DaemonProc::spawn(&s.bin, |admin| {
        config_toml(&dc, &sinks, admin, &watched, s.rate)
    })?;
    let limit = Duration::from_secs(120 + (n as u64) / 20);
    let online = d.wait_idling(n, poll, limit).await?;
    let startup_cpu = d.stats()?.cpu_s;
    // Let allocations from start-up settle before measuring.
    tokio::time::sleep(Duration::from_secs(if n >= 1000 { 10 } else { 1 })).await;
    let s0 = d.stats()?;
    tokio::time::sleep(idle).await;
    let s1 = d.stats()?;
    let still = d.wait_idling(n, poll, Duration::from_secs(5)).await.is_ok();
    let tail = d.tail();
    d.stop()?;
    let inotify_fallback = dc.log().contains("inotify");

    let per_mb_kib = (s1.rss_kib.saturating_sub(base.rss_kib)) as f64 / n as f64;
    let cpu = s1.cpu_s - s0.cpu_s;
    let mut t = Table::new(format!(
        "(b) scale: {n} idle mailboxes over implicit TLS, client_limit 100, {}",
        s.pacing()
    ));
    t.row(
        "idlesync: start → all idling (polling /status)",
        format!("{:.1} s", online.as_secs_f64()),
        "≤ 1.2× bare client",
    );
    if let Some(cold) = cold {
        t.row(
            "bare client on a cold server (first logins: Dovecot creates the index files; not compared)",
            format!("{:.1} s ({} failed)", cold.all_idling_s, cold.failed),
            "—",
        );
        // A fresh server for the yardstick: no warm imap processes left by idlesync.
        dc.restart()?;
        let b = rig::bare_client(&dc, n, s.bare_rate())?;
        t.row(
            "bare asyncio client (LOGIN, SELECT, IDLE): start → all idling",
            format!("{:.1} s ({} failed)", b.all_idling_s, b.failed),
            "—",
        );
        t.row(
            "ratio idlesync / bare",
            format!("{:.2}×", online.as_secs_f64() / b.all_idling_s),
            "≤ 1.2×",
        );
    }
    t.row(
        "idlesync CPU from start until all idling",
        format!(
            "{startup_cpu:.2} s ({:.0} µs per mailbox)",
            1e6 * startup_cpu / n as f64
        ),
        "—",
    );
    t.row(
        "RSS: empty daemon / with all idling (after the idle window)",
        format!("{} KiB / {} KiB", base.rss_kib, s1.rss_kib),
        "—",
    );
    t.row(
        "memory per idle mailbox above the empty daemon",
        format!("{per_mb_kib:.1} KiB"),
        "≤ 25 KiB",
    );
    t.row(
        format!("CPU over {} s of pure idling (utime+stime)", idle.as_secs()),
        format!(
            "{:.2} s = {:.3} % of one core",
            cpu,
            100.0 * cpu / idle.as_secs_f64()
        ),
        "≤ 0.3 % of one core",
    );
    t.row(
        "file descriptors / threads",
        format!("{} / {}", s1.fds, s1.threads),
        "—",
    );
    t.row(
        "all still idling after the window; Dovecot inotify fallback logged",
        format!("{still}; {inotify_fallback}"),
        "true; false",
    );
    if !tail.is_empty() {
        eprintln!("idlesync warnings during the scale run:\n{tail}");
    }
    Ok(t)
}

/// (c) `messages` of ~`size` bytes written straight into the Maildirs of `mailboxes` watched
/// mailboxes, round robin, as fast as the file system takes them.
pub async fn burst(s: &Settings, messages: usize, mailboxes: usize, size: usize) -> Result<Table> {
    let dc = start_dovecot(mailboxes, &[], 100)?;
    let sinks = Sinks::new().await?;
    let mut writer = MaildirWriter::new(&dc, &user(0))?;
    let dirs = (0..mailboxes)
        .map(|i| writer.prepare(&dc, &user(i)))
        .collect::<Result<Vec<_>>>()?;
    let mut sub = Subscriber::new(&sinks).await?;
    let watched: Vec<String> = (0..mailboxes).map(user).collect();
    let mut d = DaemonProc::spawn(&s.bin, |admin| {
        config_toml(&dc, &sinks, admin, &watched, s.rate)
    })?;
    d.wait_idling(
        mailboxes,
        Duration::from_millis(50),
        Duration::from_secs(120),
    )
    .await?;
    let pool = sinks.db.pool().await?;

    // Written to tmp/ beforehand; the burst itself is the renames into new/, round robin.
    let staged = (0..messages)
        .map(|i| {
            let m = i % dirs.len();
            writer.stage(&dirs[m], &message(i, &user(m), size))
        })
        .collect::<Result<Vec<_>>>()?;
    let s0 = d.stats()?;
    let m0 = MachineCpu::now()?;
    let t0 = Instant::now();
    let write = tokio::task::spawn_blocking(move || -> Result<Duration> {
        for (tmp, new) in staged {
            std::fs::rename(tmp, new)?;
        }
        Ok(t0.elapsed())
    });
    let (stored_at, announced_at, records) =
        await_all(&mut sub, &sinks, &pool, messages, t0).await?;
    let written = write.await??;
    let s1 = d.stats()?;
    let m1 = MachineCpu::now()?;
    d.stop()?;
    pool.close().await;

    let cpu = s1.cpu_s - s0.cpu_s;
    let mut t = Table::new(format!(
        "(c) burst: {messages} messages of {} KB into {mailboxes} Maildirs, PostgreSQL",
        size / 1000
    ));
    t.row(
        "delivery: all renamed from Maildir/tmp into new/",
        format!("{:.2} s", written.as_secs_f64()),
        "—",
    );
    t.row(
        "first rename → all stored / all announced (includes Dovecot's ~0.5 s EXISTS delay)",
        format!(
            "{:.2} s / {:.2} s ({records} records)",
            stored_at.as_secs_f64(),
            announced_at.as_secs_f64()
        ),
        "—",
    );
    t.row(
        "messages per second (to announced)",
        format!("{:.0}", messages as f64 / announced_at.as_secs_f64()),
        "≥ 4,000",
    );
    t.row(
        "idlesync CPU per message",
        format!(
            "{:.3} ms ({:.0} % of one core over the burst)",
            1000.0 * cpu / messages as f64,
            100.0 * cpu / announced_at.as_secs_f64()
        ),
        "≤ 0.25 ms",
    );
    t.row(
        "CPU per message by process, first rename → all announced",
        m0.per_message(&m1, cpu, messages, announced_at.as_secs_f64()),
        "—",
    );
    Ok(t)
}

/// A Dovecot whose one user has `messages` of `size` bytes waiting in INBOX, written into the
/// Maildir and indexed by Dovecot (its own first scan is not idlesync's time); and how long
/// the indexing took.
pub(crate) fn waiting_mail(
    messages: usize,
    size: usize,
) -> Result<(crate::dovecot::Dovecot, Duration)> {
    let dc = start_dovecot(1, &[], 1)?;
    let mut writer = MaildirWriter::new(&dc, &user(0))?;
    let dir = writer.prepare(&dc, &user(0))?;
    for i in 0..messages {
        writer.deliver(&dir, &message(i, &user(0), size))?;
    }
    let indexed = Instant::now();
    let status = dc.doveadm(&["mailbox", "status", "-u", &user(0), "messages", "INBOX"])?;
    let indexed = indexed.elapsed();
    ensure!(
        status.trim().ends_with(&format!("messages={messages}")),
        "doveadm says {status:?}"
    );
    Ok((dc, indexed))
}

/// (d) `messages` waiting in one mailbox (already indexed by Dovecot) when idlesync starts.
pub async fn catchup(s: &Settings, messages: usize, size: usize) -> Result<Table> {
    let (dc, indexed) = waiting_mail(messages, size)?;
    let sinks = Sinks::new().await?;
    let mut sub = Subscriber::new(&sinks).await?;
    let pool = sinks.db.pool().await?;
    let watched = vec![user(0)];
    let m0 = MachineCpu::now()?;
    let d = DaemonProc::spawn(&s.bin, |admin| {
        config_toml(&dc, &sinks, admin, &watched, s.rate)
    })?;
    let t0 = d.started;
    let (stored_at, announced_at, records) =
        await_all(&mut sub, &sinks, &pool, messages, t0).await?;
    let s1 = d.stats()?;
    let m1 = MachineCpu::now()?;
    d.stop()?;
    pool.close().await;

    let mut t = Table::new(format!(
        "(d) catch-up: {messages} messages of {} KB waiting in one mailbox, PostgreSQL",
        size / 1000
    ));
    t.row(
        "Dovecot indexing the Maildir beforehand (not counted)",
        format!("{:.2} s", indexed.as_secs_f64()),
        "—",
    );
    t.row(
        "process start → all stored / all announced",
        format!(
            "{:.2} s / {:.2} s ({records} records)",
            stored_at.as_secs_f64(),
            announced_at.as_secs_f64()
        ),
        "—",
    );
    t.row(
        "messages per second to stored",
        format!("{:.0}", messages as f64 / stored_at.as_secs_f64()),
        "≥ 4,000",
    );
    t.row(
        "idlesync CPU per message (whole process life, start-up included)",
        format!("{:.3} ms", 1000.0 * s1.cpu_s / messages as f64),
        "≤ 0.25 ms",
    );
    t.row(
        "CPU per message by process, process start → all stored",
        m0.per_message(&m1, s1.cpu_s, messages, stored_at.as_secs_f64()),
        "—",
    );
    Ok(t)
}

/// Waits until `n` messages are stored and announced; returns both times since `t0` and the
/// number of records.
pub(crate) async fn await_all(
    sub: &mut Subscriber,
    sinks: &Sinks,
    pool: &sqlx::AnyPool,
    n: usize,
    t0: Instant,
) -> Result<(Duration, Duration, usize)> {
    let deadline = t0 + Duration::from_secs(60 + n as u64 / 20);
    let (mut announced, mut records) = (0usize, 0usize);
    let mut stored_at = None;
    let mut last_count = Instant::now() - Duration::from_secs(1);
    let mut last_progress = Instant::now();
    loop {
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "  {:>5.1} s: {announced} of {n} announced",
                t0.elapsed().as_secs_f64()
            );
        }
        if stored_at.is_none() && last_count.elapsed() >= Duration::from_millis(100) {
            last_count = Instant::now();
            // Before the daemon's migrations, the table is missing: nothing stored yet.
            if sinks.stored(pool).await.unwrap_or(0) as usize >= n {
                stored_at = Some(t0.elapsed());
            }
        }
        if let Some(r) = sub.next(Duration::from_millis(20)).await {
            // Mail waiting at the first start is history: `imported`, on the changes channel.
            if r.record["kind"] == "newMail" || r.record["kind"] == "imported" {
                announced += r.record["count"].as_u64().unwrap_or(0) as usize;
                records += 1;
            }
        }
        if announced >= n {
            let at = t0.elapsed();
            // Announced implies committed, so stored is known by now.
            return Ok((stored_at.unwrap_or(at), at, records));
        }
        ensure!(
            Instant::now() < deadline,
            "{announced} of {n} announced, stored: {}",
            sinks.stored(pool).await.unwrap_or(0)
        );
    }
}

/// Small versions of every scenario, for the test suite: 50 mailboxes, 20 messages.
pub async fn smoke(s: &Settings) -> Result<Vec<Table>> {
    let bare = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    Ok(vec![
        latency(s, 3).await.context("latency")?,
        scale(s, 50, Duration::from_secs(2), bare)
            .await
            .context("scale")?,
        burst(s, 20, 10, 10_000).await.context("burst")?,
        catchup(s, 20, 10_000).await.context("catchup")?,
        crate::changes::changes(s, 200, 10_000)
            .await
            .context("changes")?,
    ])
}
