//! What starts a reload: SIGHUP, or the config file changing on disk.
//!
//! [`Triggers`] only says *that* the file should be read again; the daemon reads it and the
//! supervisor applies the new account list. Nothing here touches tasks.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a reload is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Hangup,
    /// The file's metadata changed and then stayed the same for one interval.
    FileChanged,
}

/// SIGHUP and the file watch, together.
pub struct Triggers {
    watch: Option<FileWatch>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Triggers {
    /// Watches `path` every `interval` (none when `interval` is zero or there is no file), and
    /// listens for SIGHUP.
    pub fn new(path: Option<&Path>, interval: Duration) -> Self {
        let watch = path
            .filter(|_| !interval.is_zero())
            .map(|p| FileWatch::new(p, interval));
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        Self { watch, hup }
    }

    /// The next reason to reload. Pending for ever when there is nothing to watch.
    pub async fn next(&mut self) -> Trigger {
        let hup = async {
            match &mut self.hup {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let file = async {
            match &mut self.watch {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = hup => Trigger::Hangup,
            () = file => Trigger::FileChanged,
        }
    }
}

/// Watches a path by its metadata (mtime, size, inode), so a save by rename is seen. A change
/// is reported once it has been stable for one interval, so a half-written file is not read.
struct FileWatch {
    path: PathBuf,
    tick: tokio::time::Interval,
    seen: Option<Fingerprint>,
    pending: Option<Fingerprint>,
}

type Fingerprint = (Option<std::time::SystemTime>, u64, u64);

impl FileWatch {
    fn new(path: &Path, every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            path: path.to_path_buf(),
            tick,
            seen: fingerprint(path),
            pending: None,
        }
    }

    async fn changed(&mut self) {
        loop {
            self.tick.tick().await;
            let now = fingerprint(&self.path);
            if now == self.seen {
                self.pending = None;
            } else if self.pending.is_some() && now == self.pending {
                self.seen = now;
                self.pending = None;
                return;
            } else {
                self.pending = now;
            }
        }
    }
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len(), m.ino()))
}
