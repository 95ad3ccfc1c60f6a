//! What a bottle's state dir says about it, checked rather than guessed:
//! whether its launcher still runs (pid plus start time, the workspace's one
//! liveness check), the exclusive lock its launcher holds, and slugs that
//! are unique because their directory is created, never merely chosen.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::launch::Meta;
use crate::{Failure, failure};

/// Whether the launcher recorded in `m` is still that process. A record
/// without a start time (written before it was kept) never counts as
/// running: its launcher cannot be told from a process that reused its pid.
pub(crate) fn alive(m: &Meta) -> bool {
    m.pid_start.as_ref().is_some_and(|t| bot_bottle_backend::start_token(m.pid).as_ref() == Some(t))
}

/// An exclusive lock on one bottle's state dir. Its launcher holds it for
/// as long as it runs; `resume`, `stop`, `rm` and `cleanup` take it before
/// they touch the bottle, so none of them acts on a bottle another is
/// using. Dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct Lock(#[expect(dead_code, reason = "held for its drop")] Flock<File>);

fn lock_file(state: &Path) -> Result<File, Failure> {
    let path = state.join("lock");
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| failure(format!("error: opening {}: {e}", path.display())))
}

/// The lock, or `None` when another process holds it.
pub(crate) fn try_lock(state: &Path) -> Result<Option<Lock>, Failure> {
    match Flock::lock(lock_file(state)?, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(Lock(l))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(failure(format!("error: locking {}: {e}", state.display()))),
    }
}

/// The lock, waiting up to `timeout` for its holder to let go.
pub(crate) fn lock_within(state: &Path, timeout: Duration) -> Result<Option<Lock>, Failure> {
    let start = Instant::now();
    loop {
        if let Some(l) = try_lock(state)? {
            return Ok(Some(l));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new bottle's slug and its state dir, created here: `create_dir` fails
/// on a name that exists, so two launches never share one. A random
/// source that cannot be read is an error, never a fixed suffix.
pub(crate) fn claim_slug(agent: &str, bottles: &Path) -> Result<(String, PathBuf), Failure> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(bottles)
        .map_err(|e| failure(format!("error: creating {}: {e}", bottles.display())))?;
    for _ in 0..16 {
        let mut b = [0u8; 4];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| failure(format!("error: reading /dev/urandom for the bottle's name: {e}")))?;
        let slug = format!("{agent}-{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3]);
        let dir = bottles.join(&slug);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok((slug, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failure(format!("error: creating {}: {e}", dir.display()))),
        }
    }
    Err(failure(format!("error: no free bottle name for `{agent}` in {}", bottles.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slug_is_never_handed_out_twice() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let (slug, dir) = claim_slug("a", d.path()).expect("claim");
            assert!(dir.is_dir() && seen.insert(slug));
        }
    }

    #[test]
    fn the_lock_is_exclusive_until_dropped() {
        let d = tempfile::tempdir().expect("tempdir");
        let held = try_lock(d.path()).expect("lock").expect("free");
        assert!(try_lock(d.path()).expect("lock").is_none());
        assert!(lock_within(d.path(), Duration::from_millis(120)).expect("lock").is_none());
        drop(held);
        assert!(try_lock(d.path()).expect("lock").is_some());
    }
}
