//! The bottle's pid 1 at work: it serves the launcher's requests over the
//! control socket (provisioning, commands, the agent) and reaps every
//! orphan. When the agent exits, so does pid 1, and with it every process
//! in the bottle's pid namespace.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::unistd::{Gid, Pid, Uid, chown};

use super::control::{self, Reply, Request, Size};
use super::init::{EXEC_VAR, R, RUN, ctx};
use super::spec::Spec;
use crate::{Exec, Owner};

/// Output kept per stream of a command; the rest is drained and dropped.
const OUTPUT_CAP: usize = 16 << 20;

pub(super) fn serve(spec: &Spec, ctl: UnixStream) -> R<i32> {
    let reaper = Arc::new(Reaper::default());
    {
        let r = reaper.clone();
        std::thread::spawn(move || r.run());
    }
    let mut w = ctx(ctl.try_clone(), || "control socket".into())?;
    let ctl_w = ctx(ctl.try_clone(), || "control socket".into())?;
    let mut r = BufReader::new(ctl);
    ctx(control::send(&mut w, &Reply::Ready), || "control socket".into())?;
    // The agent's pid once it runs: signals go to its process group.
    let mut agent: Option<i32> = None;
    loop {
        let req = match control::recv::<Request>(&mut r) {
            Ok(Some(req)) => req,
            // The launcher is gone or spoke nonsense: the bottle ends.
            Ok(None) => return Ok(125),
            Err(e) => return Err(format!("control socket: {e}")),
        };
        let reply = match req {
            Request::Mkdir { path, mode, owner } => mkdir(spec, &path, mode, owner).map(|()| Reply::Done),
            Request::Write { path, mode, owner, content } => {
                write(spec, &path, mode, owner, &content).map(|()| Reply::Done)
            }
            Request::Exec { cmd } => exec(spec, &reaper, &cmd),
            Request::Agent { cmd, terminal } if agent.is_none() => match start_agent(spec, &reaper, &cmd, terminal) {
                Ok((pid, fds)) => {
                    agent = Some(pid);
                    let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
                    // pid 1 keeps none of the launcher's ends.
                    ctx(control::send_with_fds(&ctl_w, &Reply::Started, &borrowed), || "control socket".into())?;
                    continue;
                }
                Err(e) => Err(e),
            },
            Request::Agent { .. } => Err("the agent is already running".into()),
            Request::Spawn { .. } if agent.is_none() => Err("the agent is not running yet".into()),
            Request::Spawn { cmd, terminal } => match spawn_beside(spec, &reaper, &cmd, terminal) {
                Ok(fds) => {
                    let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
                    ctx(control::send_with_fds(&ctl_w, &Reply::Started, &borrowed), || "control socket".into())?;
                    continue;
                }
                Err(e) => Err(e),
            },
            Request::Signal { signal } => match agent {
                Some(pid) => signal_group(pid, signal).map(|()| Reply::Done),
                None => Err("no agent runs yet".into()),
            },
        };
        let reply = reply.unwrap_or_else(|message| Reply::Error { message });
        ctx(control::send(&mut w, &reply), || "control socket".into())?;
    }
}

/// Sends `signal` to the process group the agent leads (it is the leader
/// of a session of its own).
fn signal_group(pid: i32, signal: i32) -> R<()> {
    let sig = ctx(nix::sys::signal::Signal::try_from(signal), || format!("signal {signal}"))?;
    match nix::sys::signal::killpg(Pid::from_raw(pid), sig) {
        // The agent is gone already; its exit ends the bottle.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!("signalling the agent: {e}")),
    }
}

fn ids(spec: &Spec, owner: Owner) -> (u32, u32) {
    match owner {
        Owner::Agent => (spec.uid, spec.gid),
        Owner::Root => (0, 0),
    }
}

fn absolute(path: &str) -> R<&Path> {
    let p = Path::new(path);
    if p.is_absolute() && !p.components().any(|c| c == std::path::Component::ParentDir) {
        Ok(p)
    } else {
        Err(format!("`{path}` is not an absolute path"))
    }
}

fn own(spec: &Spec, p: &Path, mode: u32, owner: Owner) -> R<()> {
    let (u, g) = ids(spec, owner);
    ctx(chown(p, Some(Uid::from_raw(u)), Some(Gid::from_raw(g))), || format!("chown {}", p.display()))?;
    ctx(fs::set_permissions(p, fs::Permissions::from_mode(mode)), || format!("chmod {}", p.display()))
}

fn mkdir(spec: &Spec, path: &str, mode: u32, owner: Owner) -> R<()> {
    let p = absolute(path)?;
    ctx(fs::create_dir_all(p), || format!("mkdir {path}"))?;
    own(spec, p, mode, owner)
}

fn write(spec: &Spec, path: &str, mode: u32, owner: Owner, content: &[u8]) -> R<()> {
    let p = absolute(path)?;
    if let Some(parent) = p.parent() {
        ctx(fs::create_dir_all(parent), || format!("mkdir {}", parent.display()))?;
    }
    // Never through a link the agent may have planted.
    let mut f = ctx(
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p),
        || format!("open {path}"),
    )?;
    ctx(f.write_all(content), || format!("write {path}"))?;
    own(spec, p, mode, owner)
}

/// Stage c, which confines itself and then runs `cmd`.
fn stage_c(spec: &Spec, cmd: &Exec) -> R<Command> {
    let json = ctx(serde_json::to_string(cmd), || "command".into())?;
    let (uid, gid) = ids(spec, cmd.user);
    let mut c = Command::new(format!("{RUN}/init"));
    c.arg("__bottle-init").arg("c").arg(format!("{RUN}/spec.json")).env_clear().env(EXEC_VAR, json).uid(uid).gid(gid);
    Ok(c)
}

fn exec(spec: &Spec, reaper: &Reaper, cmd: &Exec) -> R<Reply> {
    let mut c = stage_c(spec, cmd)?;
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ctx(reaper.spawn(&mut c), || format!("starting `{}`", cmd.argv.join(" ")))?;
    let out = Collect::start(child.stdout.take());
    let err = Collect::start(child.stderr.take());
    let code = reaper.wait(child.id());
    Ok(Reply::Output { code, stdout: out.finish(), stderr: err.finish() })
}

/// Seals the bottle's own files (read-only from now on) and starts the
/// agent: on a pseudo-terminal of the bottle's own when the user is on a
/// terminal (`terminal` is its size), on pipes otherwise. Returns the
/// agent's pid and the launcher's ends: the pty's master, or the writing
/// end of the agent's stdin and the reading ends of its stdout and stderr.
/// The agent's exit ends pid 1.
fn start_agent(
    spec: &Spec,
    reaper: &Arc<Reaper>,
    cmd: &Exec,
    terminal: Option<Size>,
) -> R<(i32, Vec<std::os::fd::OwnedFd>)> {
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    ctx(mount(None::<&str>, RUN, None::<&str>, ro, None::<&str>), || format!("read-only {RUN}"))?;
    let (pid, theirs) = spawn_on_streams(spec, reaper, cmd, terminal)?;
    let r = Arc::clone(reaper);
    std::thread::spawn(move || {
        let code = r.wait(pid);
        std::process::exit(code)
    });
    Ok((pid as i32, theirs))
}

/// Starts `cmd` beside the agent on a terminal or pipes of its own; returns
/// the caller's ends and, last, the reading end of a pipe that gets its
/// exit code (a decimal line) when it ends.
fn spawn_beside(spec: &Spec, reaper: &Arc<Reaper>, cmd: &Exec, terminal: Option<Size>) -> R<Vec<std::os::fd::OwnedFd>> {
    let (status_r, mut status_w) = ctx(std::io::pipe(), || "a status pipe".into())?;
    let (pid, mut theirs) = spawn_on_streams(spec, reaper, cmd, terminal)?;
    let r = Arc::clone(reaper);
    std::thread::spawn(move || {
        let code = r.wait(pid);
        // The caller may be gone; the command is over either way.
        writeln!(status_w, "{code}").ok();
    });
    theirs.push(status_r.into());
    Ok(theirs)
}

/// Stage c for `cmd` on a new pty (`terminal`: its size) or three pipes;
/// returns its pid and the other ends: the pty's master, or the writing end
/// of its stdin and the reading ends of its stdout and stderr.
fn spawn_on_streams(
    spec: &Spec,
    reaper: &Arc<Reaper>,
    cmd: &Exec,
    terminal: Option<Size>,
) -> R<(u32, Vec<std::os::fd::OwnedFd>)> {
    let mut c = stage_c(spec, cmd)?;
    let theirs = match terminal {
        Some(size) => {
            let (master, slave) = pty(spec, cmd.user, size)?;
            let dup = |f: &std::os::fd::OwnedFd| ctx(f.try_clone(), || "the agent's terminal".into());
            c.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(slave);
            vec![master]
        }
        None => {
            let pipe = || ctx(std::io::pipe(), || "the agent's pipes".into());
            let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
            c.stdin(in_r).stdout(out_w).stderr(err_w);
            vec![in_w.into(), out_r.into(), err_r.into()]
        }
    };
    let child = ctx(reaper.spawn(&mut c), || format!("starting `{}`", cmd.argv.join(" ")))?;
    // `c` holds the command's ends; pid 1 must not keep them open.
    drop(c);
    Ok((child.id(), theirs))
}

/// A new pseudo-terminal in the bottle's own devpts, its window `size` set
/// and its other side owned by whoever the agent runs as.
fn pty(spec: &Spec, user: Owner, size: Size) -> R<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master =
        ctx(openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC), || "opening /dev/ptmx".into())?;
    ctx(grantpt(&master), || "grantpt".into())?;
    ctx(unlockpt(&master), || "unlockpt".into())?;
    let name = ctx(ptsname(&master, Vec::new()), || "ptsname".into())?;
    let slave =
        ctx(rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty()), || {
            format!("opening {}", name.to_string_lossy())
        })?;
    let ws = rustix::termios::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    ctx(rustix::termios::tcsetwinsize(&slave, ws), || "the terminal's size".into())?;
    let (uid, gid) = ids(spec, user);
    ctx(
        rustix::fs::fchown(&slave, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid))),
        || "the terminal's owner".into(),
    )?;
    Ok((master, slave))
}

/// Reads a child's output stream on a thread of its own.
struct Collect {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Collect {
    fn start(stream: Option<impl Read + Send + 'static>) -> Collect {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let b = buf.clone();
        std::thread::spawn(move || {
            if let Some(mut s) = stream {
                let mut chunk = [0u8; 64 << 10];
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut b = lock(&b);
                    let room = OUTPUT_CAP.saturating_sub(b.len()).min(n);
                    b.extend_from_slice(&chunk[..room]);
                }
            }
            // The receiver is gone once `finish` has stopped waiting: the
            // output is taken without this signal then.
            if tx.send(()).is_err() {
                tracing::debug!("command output: the reader finished after its waiter gave up");
            }
        });
        Collect { buf, done }
    }

    /// What was read. A command's exit is the end of its output, give or
    /// take what is still in the pipe: a background process that keeps the
    /// pipe open does not hold the reply.
    fn finish(self) -> Vec<u8> {
        // A timeout is the background-process case above, not a failure.
        if self.done.recv_timeout(Duration::from_millis(500)).is_err() {
            tracing::debug!("command output: pipe still open 500 ms after exit; taking what was read");
        }
        std::mem::take(&mut *lock(&self.buf))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reaps every child of pid 1 and keeps the exit codes of those it was
/// asked to track. Spawning and registering happen under one lock, so an
/// exit reaped before registration still finds its waiter.
#[derive(Default)]
struct Reaper {
    state: Mutex<Reaped>,
    cv: Condvar,
}

#[derive(Default)]
struct Reaped {
    wanted: HashSet<i32>,
    done: HashMap<i32, i32>,
}

impl Reaper {
    fn run(&self) {
        use nix::sys::wait::{WaitStatus, waitpid};
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, c)) => self.record(pid.as_raw(), c),
                Ok(WaitStatus::Signaled(pid, sig, _)) => self.record(pid.as_raw(), 128 + sig as i32),
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => {}
            }
        }
    }

    fn record(&self, pid: i32, code: i32) {
        let mut s = lock(&self.state);
        if s.wanted.remove(&pid) {
            s.done.insert(pid, code);
            self.cv.notify_all();
        }
    }

    fn spawn(&self, c: &mut Command) -> std::io::Result<Child> {
        let mut s = lock(&self.state);
        let child = c.spawn()?;
        s.wanted.insert(child.id() as i32);
        Ok(child)
    }

    fn wait(&self, pid: u32) -> i32 {
        let pid = pid as i32;
        let mut s = lock(&self.state);
        loop {
            if let Some(c) = s.done.remove(&pid) {
                return c;
            }
            s = self.cv.wait(s).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}
