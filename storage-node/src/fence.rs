//! Fencing: the highest term of the master group's leader this node has
//! seen, kept in `DIR/master.term`. Orders (replica deletions, copies)
//! from a master of a lower term come from a leader that was deposed
//! without knowing it yet, and are refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// File of the highest term seen, in the node's data directory.
pub const FENCE_FILE: &str = "master.term";

/// The highest term seen.
pub struct Fence {
    path: PathBuf,
    highest: AtomicU64,
}

impl Fence {
    /// The fence of the node whose data directory is `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Fence> {
        let path = dir.join(FENCE_FILE);
        let highest = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        Ok(Fence { path, highest: AtomicU64::new(highest) })
    }

    /// The highest term seen.
    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::SeqCst)
    }

    /// Whether orders of `term` are to be obeyed; a higher term than any
    /// seen is recorded (on disk, before the orders are obeyed).
    pub fn admits(&self, term: u64) -> bool {
        let highest = self.highest();
        if term < highest {
            return false;
        }
        if term > highest {
            let tmp = self.path.with_extension("tmp");
            let saved = std::fs::write(&tmp, format!("{term}\n")).and_then(|()| std::fs::rename(&tmp, &self.path));
            if let Err(e) = saved {
                // Still obeyed: the leader's term is the newest known; only
                // a restart would forget it.
                tracing::error!("cannot record master term {term} in {}: {e}", self.path.display());
            }
            self.highest.fetch_max(term, Ordering::SeqCst);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_terms_are_refused_and_the_highest_survives_a_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = Fence::open(tmp.path()).expect("open");
        assert!(f.admits(0) && f.admits(3) && f.admits(3));
        assert!(!f.admits(2), "a lower term");
        let f = Fence::open(tmp.path()).expect("reopen");
        assert_eq!(f.highest(), 3);
        assert!(!f.admits(1));
        assert!(f.admits(4));
        std::fs::write(tmp.path().join(FENCE_FILE), "garbage").expect("write");
        assert!(Fence::open(tmp.path()).is_err(), "a damaged file is an error, not term 0");
    }
}
