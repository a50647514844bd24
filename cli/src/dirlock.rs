//! One process at a time per node directory.
//!
//! The store's own journal lock only keeps a second process from folding
//! the journal: a second `swoosh serve` on the same directory opened the
//! store without its journal, saw none of the first node's newest commits,
//! and accepted records at indexes the first node had already acknowledged;
//! the store then refused to open at all. A node, a follower and every
//! command that changes a store offline take this lock first; commands that
//! only read do not, so they still run beside a live node.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The lock file, inside the node's `data/` beside the store it protects.
pub const LOCK_FILE: &str = "swoosh.lock";

/// Locks this process holds, by canonical path. A process keeps a lock
/// until it exits (the kernel releases it then, also on SIGKILL), so a
/// node restarted in-process (the demo, tests) re-enters its own lock.
static HELD: Mutex<Vec<(PathBuf, File)>> = Mutex::new(vec![]);

/// Take `dir`'s lock for the rest of this process, or say which process
/// holds it.
pub fn lock_node_dir(dir: &Path) -> Result<()> {
    let data = dir.join("data");
    // Synced into the node directory: the store inside it follows.
    swoosh_storage::create_dir_durably(&data)
        .with_context(|| format!("cannot create {}", data.display()))?;
    lock_file(
        dir,
        &data.join(LOCK_FILE),
        "Two processes on one store would both accept records at the same indexes; read-only commands (wal verify, wal inspect, replay, snapshot list) may run beside it",
    )
}

/// Take a council agent directory's lock: two agents with one key would
/// sign conflicting votes for one election (each remembers only its own),
/// and each is counted as the other. The lock is on the key file itself,
/// opened read-only: an agent writes nothing, and its unit gives it a
/// read-only file system (`ProtectSystem=strict`).
pub fn lock_agent_dir(dir: &Path) -> Result<()> {
    let path = dir.join("agent.key");
    let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    if hold(&path, f, |_| {})?.is_err() {
        bail!(
            "another swoosh agent runs with {} (it holds a lock on the key file): stop it first. Two agents with one council key would sign conflicting votes in one election",
            path.display()
        );
    }
    Ok(())
}

/// Take `f`'s flock (the file at `path`) for the rest of this process;
/// re-entrant, as a node restarted in-process takes its own lock again.
/// `on_taken` runs once the lock is this process's. `Ok(Err(f))`: another
/// process holds it (the file is handed back, to read who).
fn hold(
    path: &Path,
    mut f: File,
    on_taken: impl FnOnce(&mut File),
) -> Result<std::result::Result<(), File>> {
    let key = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    if held.iter().any(|(p, _)| *p == key) {
        return Ok(Ok(()));
    }
    match f.try_lock() {
        Ok(()) => {
            on_taken(&mut f);
            held.push((key, f));
            Ok(Ok(()))
        }
        Err(TryLockError::WouldBlock) => Ok(Err(f)),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

fn lock_file(dir: &Path, path: &Path, why: &str) -> Result<()> {
    let path = path.to_path_buf();
    // A lock file another user created (root running a repair, say) is
    // still lockable read-only: flock needs no write access. The pid is
    // then not recorded.
    let (f, writable) = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        Ok(f) => (f, true),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && path.exists() => (
            File::open(&path)
                .with_context(|| format!("cannot open the lock file {}", path.display()))?,
            false,
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot open the lock file {}", path.display()))
        }
    };
    // The pid is for the message another process prints; the lock itself
    // is the flock, which no stale file can fake.
    let taken = hold(&path, f, |f| {
        if writable {
            let _ = f.set_len(0);
            let _ = write!(f, "{}", std::process::id());
        }
    })?;
    match taken {
        Ok(()) => Ok(()),
        Err(mut f) => {
            let mut pid = String::new();
            let _ = f.rewind().and_then(|_| f.read_to_string(&mut pid));
            let pid = pid.trim();
            let who = if pid.is_empty() {
                "another swoosh process".to_string()
            } else {
                format!("another swoosh process (pid {pid})")
            };
            bail!(
                "{who} is using the directory {} (it holds {}): stop it first. {why}",
                dir.display(),
                path.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let t = tempfile::tempdir().unwrap();
        lock_node_dir(t.path()).unwrap();
        // Re-entrant in this process.
        lock_node_dir(t.path()).unwrap();
        // Another open file description, as another process would have.
        let other = File::open(t.path().join("data").join(LOCK_FILE)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        let pid = std::fs::read_to_string(t.path().join("data").join(LOCK_FILE)).unwrap();
        assert_eq!(pid, std::process::id().to_string());
        // An agent's lock is on its key file, read-only.
        std::fs::write(t.path().join("agent.key"), "k").unwrap();
        lock_agent_dir(t.path()).unwrap();
        let other = File::open(t.path().join("agent.key")).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
    }
}
