//! The `pre-receive` hook and the gate's side of it.
//!
//! While receive-pack holds a push's objects in quarantine it runs the
//! hook, and only if the hook exits 0 does it keep them and move any ref.
//! The hook is a few lines of `sh`: it hands the ref updates and the
//! quarantine's path to the gate through a FIFO and waits on a second FIFO
//! for the verdict, which it prints (receive-pack relays that to the
//! agent's `git push`) before exiting with it. The check itself runs in the
//! gate's process, where the detector and the upstream credentials already
//! are: nothing about the check, and no secret, is ever handed to a program
//! on disk, and no program but `sh` and `cat` has to exist.
//!
//! Each receive-pack run gets a private directory (0700) with the two FIFOs,
//! named to the hook by `BOT_BOTTLE_GATE_HOOK`. The gate opens both FIFOs
//! read-write before starting receive-pack, so neither side's `open` ever
//! blocks, and the hook opens the verdict FIFO before it sends its request,
//! so a verdict is never written to a FIFO nobody holds. Anything missing or
//! broken makes the hook exit non-zero: a push is refused, never let through.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;

use super::GateError;
use super::argv::{Oid, RefName};
use super::check::RefUpdate;

/// The environment variable that names a push's session directory.
pub(crate) const HOOK_ENV: &str = "BOT_BOTTLE_GATE_HOOK";

pub(crate) const PRE_RECEIVE: &str = r#"#!/bin/sh
# bot-bottle git gate: hands this push to the gate, which checks it in its
# own process, and exits with the gate's verdict.
d=$BOT_BOTTLE_GATE_HOOK
if [ -z "$d" ] || [ ! -p "$d/request" ] || [ ! -p "$d/verdict" ]; then
  echo "bot-bottle git gate: this push cannot be checked, so it is refused" >&2
  exit 1
fi
exec 3<"$d/verdict" || exit 1
{ printf 'quarantine %s\n' "$GIT_QUARANTINE_PATH"; cat; printf '.\n'; } >"$d/request" || exit 1
IFS= read -r verdict <&3 || exit 1
cat <&3 >&2
[ "$verdict" = accept ]
"#;

/// Writes the hook into `hooks` (the gate's own directory, which receive-pack
/// is pointed at with `core.hooksPath`).
pub(crate) fn install(hooks: &Path) -> Result<(), GateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(hooks)
        .map_err(GateError::io(format!("creating {}", hooks.display())))?;
    let p = hooks.join("pre-receive");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(&p)
        .map_err(GateError::io(format!("writing {}", p.display())))?;
    std::io::Write::write_all(&mut f, PRE_RECEIVE.as_bytes())
        .map_err(GateError::io(format!("writing {}", p.display())))?;
    Ok(())
}

/// What the hook sends: the quarantine and the ref updates.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HookRequest {
    pub(crate) quarantine: PathBuf,
    pub(crate) updates: Vec<RefUpdate>,
}

/// At most this many ref updates in one push.
const MAX_UPDATES: usize = 10_000;

/// Parses the hook's request (without its final `.` line).
pub(crate) fn parse_request(lines: &[String]) -> Result<HookRequest, GateError> {
    let bad = |why: &str| GateError::Internal(format!("the pre-receive hook sent {why}"));
    let mut it = lines.iter();
    let q = it.next().and_then(|l| l.strip_prefix("quarantine ")).ok_or_else(|| bad("no quarantine"))?;
    let mut updates = Vec::new();
    for l in it {
        let mut p = l.split(' ');
        let (Some(old), Some(new), Some(name), None) = (p.next(), p.next(), p.next(), p.next()) else {
            return Err(bad("a malformed update"));
        };
        let parse = || -> Result<RefUpdate, super::argv::ArgvError> {
            Ok(RefUpdate { old: Oid::parse(old)?, new: Oid::parse(new)?, name: RefName::parse(name)? })
        };
        updates.push(parse().map_err(|e| GateError::Refused(format!("{e}")))?);
        if updates.len() > MAX_UPDATES {
            return Err(GateError::Refused(format!("more than {MAX_UPDATES} refs in one push")));
        }
    }
    Ok(HookRequest { quarantine: PathBuf::from(q), updates })
}

/// One receive-pack run's line to its hook.
#[derive(Debug)]
pub(crate) struct Session {
    dir: PathBuf,
    request: Option<BufReader<pipe::Receiver>>,
    verdict: Option<pipe::Sender>,
}

/// Opens a FIFO read-write and non-blocking: `open` returns at once, and the
/// FIFO never reports end-of-file while the gate holds it.
fn open_fifo(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open(p)
}

impl Session {
    /// Makes the session directory `dir` and its FIFOs, and opens them.
    pub(crate) fn open(dir: PathBuf) -> Result<Session, GateError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(GateError::io(format!("creating {}", dir.display())))?;
        let mut s = Session { dir, request: None, verdict: None };
        for name in ["request", "verdict"] {
            let p = s.dir.join(name);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| GateError::io(format!("creating {}", p.display()))(e.into()))?;
        }
        let rq = open_fifo(&s.dir.join("request")).map_err(GateError::io("opening the hook's request FIFO"))?;
        let vd = open_fifo(&s.dir.join("verdict")).map_err(GateError::io("opening the hook's verdict FIFO"))?;
        let rq = pipe::Receiver::from_file_unchecked(rq).map_err(GateError::io("the hook's request FIFO"))?;
        let vd = pipe::Sender::from_file_unchecked(vd).map_err(GateError::io("the hook's verdict FIFO"))?;
        s.request = Some(BufReader::new(rq));
        s.verdict = Some(vd);
        Ok(s)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the hook's request. Only returns once the hook has sent
    /// all of it (its `.` line).
    pub(crate) async fn request(&mut self) -> Result<HookRequest, GateError> {
        let r = self.request.as_mut().ok_or_else(|| GateError::Internal("the hook asked twice".into()))?;
        let mut lines = Vec::new();
        let mut total = 0usize;
        loop {
            let mut l = String::new();
            let n = r.read_line(&mut l).await.map_err(GateError::io("reading the hook's request"))?;
            total += n;
            if n == 0 || total > 2 << 20 {
                return Err(GateError::Internal("the pre-receive hook's request is cut short or too long".into()));
            }
            let l = l.trim_end_matches('\n');
            if l == "." {
                break;
            }
            lines.push(l.to_owned());
        }
        self.request = None;
        parse_request(&lines)
    }

    /// Sends the verdict and the message the agent's `git push` shows.
    pub(crate) async fn answer(&mut self, accept: bool, message: &str) -> Result<(), GateError> {
        let mut w = self.verdict.take().ok_or_else(|| GateError::Internal("answered twice".into()))?;
        let mut text = String::from(if accept { "accept\n" } else { "refuse\n" });
        text.push_str(message);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let send = async {
            w.write_all(text.as_bytes()).await?;
            w.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(60), send).await {
            Ok(r) => r.map_err(GateError::io("answering the pre-receive hook")),
            Err(_) => Err(GateError::Internal("the pre-receive hook stopped reading".into())),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.request = None;
        self.verdict = None;
        // Nothing secret is in it, and the gate's directory goes with the
        // bottle's state; a leftover only costs two inodes.
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.dir.display(), error = %e, "removing a push session's fifo dir"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_malformed_ones_do_not() {
        let a = "1".repeat(40);
        let b = "2".repeat(40);
        let lines = vec!["quarantine /g/objects/tmp_objdir-incoming-x".to_owned(), format!("{a} {b} refs/heads/bot/x")];
        let r = parse_request(&lines).expect("parse");
        assert_eq!(r.quarantine, PathBuf::from("/g/objects/tmp_objdir-incoming-x"));
        assert_eq!(r.updates[0].name.as_str(), "refs/heads/bot/x");
        for bad in [
            vec![format!("{a} {b} refs/heads/x")],
            vec!["quarantine /q".to_owned(), format!("{a} {b}")],
            vec!["quarantine /q".to_owned(), format!("{a} {b} refs/heads/x extra")],
            vec!["quarantine /q".to_owned(), format!("{a} HEAD refs/heads/x")],
            vec!["quarantine /q".to_owned(), format!("{a} {b} refs/heads/a..b")],
        ] {
            assert!(parse_request(&bad).is_err(), "{bad:?}");
        }
    }
}
