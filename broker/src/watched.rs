//! Files read again when they change: TLS certificate pairs, the admin token, the
//! delivery token. One way to tell that a file changed (its modification time and
//! length, [`Seen`]) and one polling loop ([`poll`]), so every owner of such a file
//! behaves alike: cert-manager renewing a pair in place, a mounted Secret swapping
//! its `..data` symlink and kubelet rewriting a projected token are all seen within
//! [`POLL`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How often polled files are looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// A file's modification time and length; `None` when it cannot be stat'ed.
pub type Stamp = Option<(SystemTime, u64)>;

/// The stamp of `path` now.
pub fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// What a file that has disappeared means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Nothing: wait until it is back (a token file between two writes).
    Wait,
    /// A change: the owner tries to read it and reports why it cannot (a pair).
    Change,
}

/// The stamps of a set of files as last seen.
#[derive(Debug)]
pub struct Seen {
    paths: Vec<PathBuf>,
    missing: Missing,
    last: Mutex<Vec<Stamp>>,
}

impl Seen {
    /// Remembers the files' stamps now (as the owner reads them).
    pub fn new(paths: Vec<PathBuf>, missing: Missing) -> Seen {
        let last = paths.iter().map(|p| stamp(p)).collect();
        Seen {
            paths,
            missing,
            last: Mutex::new(last),
        }
    }

    /// Whether any file changed since the last call (or [`Seen::new`]); the new
    /// stamps are remembered, so each change is reported once.
    pub fn changed(&self) -> bool {
        let now: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
        if self.missing == Missing::Wait && now.iter().any(Option::is_none) {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return false;
        }
        *last = now;
        true
    }
}

/// Calls `check` every [`POLL`] until `stop` fires.
pub fn poll(stop: CancellationToken, mut check: impl FnMut() + Send + 'static) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL) => check(),
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_reported_once_and_missing_files_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "1").unwrap();
        let wait = Seen::new(vec![a.clone()], Missing::Wait);
        let change = Seen::new(vec![a.clone()], Missing::Change);
        assert!(!wait.changed() && !change.changed());
        std::fs::write(&a, "22").unwrap();
        assert!(wait.changed() && change.changed());
        assert!(!wait.changed() && !change.changed(), "reported once");
        std::fs::remove_file(&a).unwrap();
        assert!(!wait.changed(), "a missing file is waited for");
        assert!(change.changed(), "a missing file is a change");
        assert!(!change.changed());
        std::fs::write(&a, "333").unwrap();
        assert!(wait.changed() && change.changed());
    }
}
