//! Undo steps whose target may already be gone. Teardown and `cleanup`
//! never discard what such a step returns: "already gone" (ENOENT, ESRCH)
//! is success, and anything else is logged here and returned, so that the
//! caller can say it (a `cleanup` that reports "removed" for what is still
//! there would leave it running unseen).

use std::io::{self, ErrorKind};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// `result` of removing `path`, with a missing path as success; a failure
/// is logged with `what` and the path.
fn checked(what: &str, path: &Path, result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "removing {what}");
            Err(e)
        }
        Ok(()) => Ok(()),
    }
}

/// Removes the file (or socket, fifo, symlink) `path`.
pub(crate) fn remove_file(what: &str, path: &Path) -> io::Result<()> {
    checked(what, path, std::fs::remove_file(path))
}

/// Removes the empty directory `path`.
pub(crate) fn remove_dir(what: &str, path: &Path) -> io::Result<()> {
    checked(what, path, std::fs::remove_dir(path))
}

/// Removes the directory `path` and everything under it.
pub(crate) fn remove_dir_all(what: &str, path: &Path) -> io::Result<()> {
    checked(what, path, std::fs::remove_dir_all(path))
}

/// Removes `path`, a directory tree or anything else.
pub(crate) fn remove_any(what: &str, path: &Path) -> io::Result<()> {
    if path.is_dir() { remove_dir_all(what, path) } else { remove_file(what, path) }
}

/// SIGKILLs the process `pid`; one that has already exited is success.
pub(crate) fn kill(what: &str, pid: i32) -> Result<(), Errno> {
    match signal::kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => {
            tracing::warn!(pid, error = %e, "killing {what}");
            Err(e)
        }
    }
}

/// Writes `msg` and a newline to stderr. For the messages of processes
/// (the init stages, the guest forwarder) whose stderr is the only channel
/// they have: when it is closed there is nobody left to tell, and the exit
/// code still says that something failed. One write, so that a reader
/// never sees half the line.
pub(crate) fn eprintln_best_effort(msg: impl std::fmt::Display) {
    use std::io::Write as _;
    if io::stderr().write_all(format!("{msg}\n").as_bytes()).is_err() {
        // Nowhere left to say it; see above.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn already_gone_is_success_and_anything_else_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        assert!(remove_file("a file", &missing).is_ok());
        assert!(remove_dir_all("a dir", &missing).is_ok());
        assert!(remove_dir("a dir", &missing).is_ok());
        // A directory with something in it is not "gone" for rmdir.
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        assert!(remove_dir("a dir", dir.path()).is_err());
        // Neither is a directory given to remove_file.
        assert!(remove_file("a file", dir.path()).is_err());
        assert!(remove_any("a dir", dir.path()).is_ok());
        assert!(!dir.path().exists());
        // No process has pid i32::MAX (pid_max is at most 2^22).
        assert!(kill("nothing", i32::MAX).is_ok());
    }
}
