//! Issue #14's run: the idlesync binary (a child process) with six accounts, five on scripted
//! hostile servers (endless line at 1 MB/s, malformed FETCH, `{500000000}` literal, 4 KiB of
//! garbage, a 20 MB NUL-ended line, each repeated on every reconnect) and one control mailbox
//! on a well-behaved scripted server that gets a message every second. Prints the daemon's
//! peak RSS, its average CPU, each control message's delay from delivery to stored, the
//! longest log line, and how long SIGTERM takes; fails if a bound of the issue is broken.
//!
//! ```sh
//! cargo build --release --bin idlesync
//! cargo run --release --example hostile [-- --seconds 60 --bin target/release/idlesync]
//! ```

#[path = "../tests/common/command.rs"]
mod command;
#[path = "../tests/common/hostile.rs"]
#[allow(dead_code)]
mod hostile;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hostile::Attack;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(60);
    let bin = match arg("--bin") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("no target dir")?
            .join("idlesync"),
    };
    ensure!(
        bin.exists(),
        "{} not found: cargo build --release --bin idlesync",
        bin.display()
    );

    let attacks = [
        (
            "endless-line",
            Attack::EndlessLine {
                total: u64::MAX,
                rate: Some(1_000_000),
            },
        ),
        ("malformed-fetch", Attack::MalformedFetch),
        ("huge-literal", Attack::HugeLiteral { total: 600_000_000 }),
        ("garbage", Attack::Garbage),
        ("nul-line", Attack::NulLine),
        ("control", Attack::Control),
    ];
    let mut servers = Vec::new();
    for (id, a) in attacks {
        servers.push((id, hostile::start(a).await?));
    }
    let dir = tempfile::tempdir()?;
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let mut toml = format!(
        "[storage]\nurl = \"sqlite://{db}\"\n\n[metrics]\nlisten = \"{admin}\"\n\n\
         [backoff]\ninitial = \"100ms\"\nmax = \"2s\"\n\n",
        db = dir.path().join("h.db").display()
    );
    for (id, s) in &servers {
        toml.push_str(&format!(
            "[[accounts]]\nid = \"{id}\"\nemail = \"{id}@example.test\"\nhost = \"127.0.0.1\"\n\
             port = {}\ntls = \"none\"\nusername = \"{id}\"\npassword = \"pw-hostile-1\"\n\
             mailboxes = [\"INBOX\"]\n\n",
            s.port
        ));
    }
    let config = dir.path().join("h.toml");
    std::fs::write(&config, toml)?;

    let mut child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "idlesync=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let pid = child.id();
    // The longest log line and the line count, from a thread that drains stderr.
    let (longest, lines) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stderr = child.stderr.take().context("stderr")?;
    // The first lines, shown if the daemon never gets going.
    let head = Arc::new(std::sync::Mutex::new(String::new()));
    let (l2, n2, h2) = (longest.clone(), lines.clone(), head.clone());
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            l2.fetch_max(line.len(), Ordering::Relaxed);
            if n2.fetch_add(1, Ordering::Relaxed) < 20 {
                let mut h = h2.lock().unwrap_or_else(|p| p.into_inner());
                h.push_str(&String::from_utf8_lossy(&line[..line.len().min(300)]));
            }
            line.clear();
        }
    });

    let control = &servers.last().context("control")?.1;
    let status = |admin| async move { control_uid(admin).await };
    wait_for(Duration::from_secs(30), || async {
        Ok(status(admin).await?.1 == "idling")
    })
    .await
    .with_context(|| {
        let h = head.lock().unwrap_or_else(|p| p.into_inner());
        format!("control mailbox never idling; the daemon said:\n{h}")
    })?;

    let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
    let mut peak_rss = 0;
    let mut delays = Vec::new();
    for i in 0..seconds {
        let at = Instant::now();
        let uid = control.deliver(message(i));
        loop {
            peak_rss = peak_rss.max(rss_kib(pid)?);
            if status(admin).await?.0 >= uid {
                break;
            }
            ensure!(
                at.elapsed() < Duration::from_secs(30),
                "control message {uid} not stored"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        delays.push(at.elapsed());
        while at.elapsed() < Duration::from_secs(1) {
            peak_rss = peak_rss.max(rss_kib(pid)?);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cpu = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64();

    let term = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let mut exited = None;
    while term.elapsed() < Duration::from_secs(30) {
        if let Some(s) = child.try_wait()? {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sigterm = term.elapsed();
    if exited.is_none() {
        let _ = child.kill();
    }

    delays.sort();
    let max_delay = delays.last().copied().unwrap_or_default();
    let p50 = delays.get(delays.len() / 2).copied().unwrap_or_default();
    let connections: Vec<String> = servers
        .iter()
        .map(|(id, s)| format!("{id} {}", s.connections.load(Ordering::SeqCst)))
        .collect();
    println!("| figure | value | bound |");
    println!("|---|---|---|");
    println!("| run | {seconds} s, 5 attacks + 1 control | |");
    println!(
        "| peak RSS | {:.1} MB | < 300 MB |",
        peak_rss as f64 / 1024.0
    );
    println!("| CPU average | {:.1} % of a core | < 50 % |", cpu * 100.0);
    println!(
        "| control: stored after delivery | p50 {:.0} ms, max {:.0} ms ({} messages) | < 3 s |",
        p50.as_secs_f64() * 1e3,
        max_delay.as_secs_f64() * 1e3,
        delays.len()
    );
    println!(
        "| longest log line | {} bytes of {} lines | ~1 KiB of server text |",
        longest.load(Ordering::Relaxed),
        lines.load(Ordering::Relaxed)
    );
    println!(
        "| SIGTERM to exit | {:.2} s ({}) | < 10 s |",
        sigterm.as_secs_f64(),
        exited.map_or("killed".to_string(), |s| s.to_string())
    );
    println!("| connections per server | {} | |", connections.join(", "));
    ensure!(peak_rss < 300 * 1024, "RSS bound broken");
    ensure!(cpu < 0.5, "CPU bound broken");
    ensure!(
        max_delay < Duration::from_secs(3),
        "control latency bound broken"
    );
    ensure!(
        exited.is_some() && sigterm < Duration::from_secs(10),
        "SIGTERM bound broken"
    );
    Ok(())
}

fn message(i: u64) -> Vec<u8> {
    format!(
        "From: a@example.test\r\nTo: b@example.test\r\nSubject: control {i}\r\n\
         Message-ID: <control-{i}@example.test>\r\n\r\nControl message {i}.\r\n"
    )
    .into_bytes()
}

/// The control mailbox's last UID and state, from `/status`.
async fn control_uid(admin: std::net::SocketAddr) -> Result<(u32, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf)).await??;
    // The JSON array, whatever the framing (hyper may answer chunked).
    let body = match (buf.find('['), buf.rfind(']')) {
        (Some(a), Some(b)) if a < b => &buf[a..=b],
        _ => anyhow::bail!("no JSON in {buf}"),
    };
    let all: Vec<serde_json::Value> = serde_json::from_str(body)?;
    let c = all
        .iter()
        .find(|m| m["account"] == "control")
        .context("no control mailbox in /status")?;
    Ok((
        c["last_uid"].as_u64().unwrap_or(0) as u32,
        c["state"].as_str().unwrap_or("").to_string(),
    ))
}

async fn wait_for<F, Fut>(timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f().await.unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("not within {timeout:?}")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0))
}

/// utime + stime, assuming the usual 100 ticks per second.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: utime and stime are 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(ticks as f64 / 100.0)
}
