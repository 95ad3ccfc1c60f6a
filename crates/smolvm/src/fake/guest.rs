//! The "guest": exec runs on the host in the machine's guest directory; cp
//! copies into and out of it.

use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cli::{CpArgs, ExecArgs};
use super::state::{Db, not_running, set_mode, state};
use super::{Fake, R, env_specs, err_line, in_guest, out};

/// smolvm's cap on buffered (non-`--stream`) output, per stream
/// (`MAX_EXEC_OUTPUT`, agent `process.rs:88`): the rest is dropped silently.
const MAX_EXEC_OUTPUT: usize = 11 * 1024 * 1024;

/// What exec reports when `--timeout` fires (`TIMEOUT_EXIT_CODE`).
const TIMEOUT_STATUS: u8 = 124;

impl Fake {
    /// The guest dir of a machine that must exist and be running.
    fn running_guest(&self, name: &str) -> R<(PathBuf, super::state::Record)> {
        let rec = Db::open(self)?.must_get(name)?;
        if state(&rec) != "running" {
            return Err(not_running(name));
        }
        let guest = self.guest_dir(name);
        std::fs::create_dir_all(&guest).map_err(|e| format!("create {}: {e}", guest.display()))?;
        Ok((guest, rec))
    }

    pub(super) fn exec(&self, a: ExecArgs) -> R<ExitCode> {
        let (guest, rec) = self.running_guest(&a.name)?;
        if std::env::var("FAKE_SMOLVM_EXEC_137_ONCE").as_deref() == Ok("1") {
            let marker = self.smolvm_dir().join("fake-exec-137-done");
            if !marker.exists() {
                std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
                return Ok(ExitCode::from(137));
            }
        }
        let workdir = a.workdir.clone().or_else(|| rec.get("workdir").and_then(Value::as_str).map(str::to_owned));
        let machine_env = rec.get("env").and_then(Value::as_array).into_iter().flatten().filter_map(|kv| {
            let kv = kv.as_array()?;
            Some((kv.first()?.as_str()?.to_owned(), kv.get(1)?.as_str()?.to_owned()))
        });
        let netns = if rec.get("network").and_then(Value::as_bool).unwrap_or(false) {
            None
        } else {
            // Never the host's network: no holder, no exec.
            let Some(pid) = self.runtime(&a.name).netns else {
                return Err(format!("agent operation failed: machine '{}' has lost its network namespace", a.name));
            };
            Some(pid)
        };
        let how = Rooted { netns, user: a.user.as_deref(), detach: a.detach };
        let mut cmd = rooted(&guest, &rec, workdir.as_deref(), &a.command, &how)?;
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.envs(machine_env).envs(env_specs(&a.env)).env("FAKE_SMOLVM_GUEST", "/");
        cmd.stdin(if a.interactive { Stdio::inherit() } else { Stdio::null() });
        if a.detach {
            // Outlives this exec, as a guest process does; `stop` ends it.
            let child = match cmd.stdout(Stdio::null()).stderr(Stdio::null()).process_group(0).spawn() {
                Ok(c) => c,
                Err(e) => return Ok(not_spawned(&a.command[0], &e)),
            };
            let mut rt = self.runtime(&a.name);
            rt.detached.push(child.id());
            self.save_runtime(&a.name, &rt)?;
            out(&format!("{}\n", child.id()))?;
            return Ok(ExitCode::SUCCESS);
        }
        if a.timeout.is_some() && !a.interactive {
            // Its own process group, so a timeout kills the whole command.
            cmd.process_group(0);
        }
        let live = a.stream || a.interactive || a.tty;
        if !live {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Ok(not_spawned(&a.command[0], &e)),
        };
        if live {
            return Ok(code(wait(&mut child, a.timeout).map_err(|e| e.to_string())?));
        }
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (status, out_buf, err_buf) = thread::scope(|s| {
            let o = s.spawn(|| read_all(stdout));
            let e = s.spawn(|| read_all(stderr));
            let status = wait(&mut child, a.timeout);
            (status, o.join().unwrap_or_default(), e.join().unwrap_or_default())
        });
        let status = status.map_err(|e| e.to_string())?;
        // Buffered in the guest, then written, stdout first.
        io::stdout()
            .write_all(&out_buf[..out_buf.len().min(MAX_EXEC_OUTPUT)])
            .map_err(|e| format!("write stdout: {e}"))?;
        io::stderr()
            .write_all(&err_buf[..err_buf.len().min(MAX_EXEC_OUTPUT)])
            .map_err(|e| format!("write stderr: {e}"))?;
        Ok(code(status))
    }

    pub(super) fn cp(&self, a: &CpArgs) -> R<ExitCode> {
        let remote = |s: &str| {
            s.split_once(':')
                .filter(|(n, _)| crate::argv::check_name(n).is_ok())
                .map(|(n, p)| (n.to_owned(), p.to_owned()))
        };
        match (remote(&a.src), remote(&a.dst)) {
            (None, Some((name, path))) => {
                let (guest, _) = self.running_guest(&name)?;
                let src = Path::new(&a.src);
                let meta = std::fs::metadata(src).map_err(|e| format!("failed to open {}: {e}", a.src))?;
                if meta.is_dir() {
                    return Err(format!("{} is a directory: machine cp copies single files", a.src));
                }
                let target = in_guest(&guest, &path)?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("create {path}: {e}"))?;
                }
                let n = std::fs::copy(src, &target).map_err(|e| format!("write {name}:{path}: {e}"))?;
                if let Some(mode) = a.mode {
                    set_mode(&target, mode)?;
                }
                if a.uid.is_some() || a.gid.is_some() {
                    std::os::unix::fs::chown(&target, a.uid, a.gid).map_err(|e| format!("chown {name}:{path}: {e}"))?;
                }
                err_line(&format!("Copied {n} bytes to {name}:{path}"));
            }
            (Some((name, path)), None) => {
                if a.mode.is_some() || a.uid.is_some() || a.gid.is_some() {
                    return Err("--mode, --uid and --gid apply to uploads only".into());
                }
                let (guest, _) = self.running_guest(&name)?;
                let source = in_guest(&guest, &path)?;
                if source.is_dir() {
                    return Err(format!("{name}:{path} is a directory: machine cp copies single files"));
                }
                let n = std::fs::copy(&source, &a.dst).map_err(|e| format!("copy {name}:{path} to {}: {e}", a.dst))?;
                err_line(&format!("Copied {n} bytes from {name}:{path}"));
            }
            _ => return Err("exactly one of SRC and DST must be a machine path (NAME:PATH)".into()),
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn read_all(pipe: Option<impl Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        // What was read before an error is kept, as smolvm relays it.
        if let Err(e) = p.read_to_end(&mut buf) {
            super::err_line(&format!("fake-smolvm: reading guest output: {e}"));
        }
    }
    buf
}

/// Waits for the command; after `timeout`, kills its process group and
/// reports `None`.
fn wait(child: &mut Child, timeout: Option<Duration>) -> io::Result<Option<ExitStatus>> {
    let Some(timeout) = timeout else { return child.wait().map(Some) };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            match nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The guest's status as smolvm reports it: its code, 128+signal when it was
/// killed, 124 when the timeout fired.
fn code(status: Option<ExitStatus>) -> ExitCode {
    let Some(status) = status else { return ExitCode::from(TIMEOUT_STATUS) };
    let n = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
    ExitCode::from(u8::try_from(n).unwrap_or(1))
}

/// A command the guest cannot run: 127 (not found) or 126, as a shell would.
fn not_spawned(cmd: &str, e: &io::Error) -> ExitCode {
    err_line(&format!("fake-smolvm: {cmd}: {e}"));
    ExitCode::from(if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 })
}

/// How an exec runs besides its command.
struct Rooted<'a> {
    /// The machine's network namespace (held by this pid) when it has no
    /// network device; `None` shares the host's network.
    netns: Option<u32>,
    /// `-u`: `UID[:GID]` or a name, switched to with `setpriv`.
    user: Option<&'a str>,
    /// `-d`: not tied to this exec's life.
    detach: bool,
}

/// The guest command, run under bubblewrap with the guest directory as its
/// root: what a command writes lands in the guest, never on the host. The
/// host's system directories are bound read-only so programs run; the
/// machine's volumes are bound where `-v` put them, and each published
/// socket (`--mount-socket`) at its guest path. A machine with a network
/// shares the host's (the fake does not model smolvm's gateway or its egress
/// policy); one without runs in the machine's own network namespace, entered
/// with `nsenter`, where only `lo` exists.
fn rooted(
    guest: &Path,
    rec: &serde_json::Map<String, Value>,
    workdir: Option<&str>,
    argv: &[String],
    how: &Rooted<'_>,
) -> R<Command> {
    let bwrap = which::which("bwrap")
        .map_err(|_| "fake-smolvm runs guest commands under bwrap: apt-get install bubblewrap".to_owned())?;
    for d in ["tmp", "run"] {
        let p = guest.join(d);
        std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
    }
    set_mode(&guest.join("tmp"), 0o1777).map_err(|e| format!("chmod {}/tmp: {e}", guest.display()))?;
    let mut c = match how.netns {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/proc/{pid}/ns/net")).arg("--").arg(bwrap);
            c
        }
        None => Command::new(bwrap),
    };
    c.arg("--bind").arg(guest).arg("/");
    for d in ["usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(d);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                // Part of the guest's own filesystem, made once.
                let at = guest.join(d);
                if std::fs::symlink_metadata(&at).is_err() {
                    let target = std::fs::read_link(&host).map_err(|e| e.to_string())?;
                    std::os::unix::fs::symlink(target, &at).map_err(|e| format!("symlink {}: {e}", at.display()))?;
                }
            }
            Ok(m) if m.is_dir() => {
                c.arg("--ro-bind").arg(&host).arg(&host);
            }
            _ => {}
        }
    }
    c.args(["--proc", "/proc", "--dev", "/dev"]);
    if !how.detach {
        c.arg("--die-with-parent");
    }
    let mut targets = Vec::new();
    for m in rec.get("mounts").and_then(Value::as_array).into_iter().flatten() {
        let (Some(host), Some(target)) = (m.get(0).and_then(Value::as_str), m.get(1).and_then(Value::as_str)) else {
            continue;
        };
        let ro = m.get(2).and_then(Value::as_bool).unwrap_or(false);
        c.arg(if ro { "--ro-bind" } else { "--bind" }).arg(host).arg(target);
        targets.push(target.to_owned());
    }
    for s in rec.get("published_sockets").and_then(Value::as_array).into_iter().flatten() {
        let (Some(host), Some(at)) =
            (s.get("host_path").and_then(Value::as_str), s.get("guest_path").and_then(Value::as_str))
        else {
            continue;
        };
        // Nothing listens on the host yet: the guest's path refuses, as
        // smolvm's bridge does.
        if Path::new(host).exists() {
            c.arg("--bind").arg(host).arg(at);
        }
    }
    let cwd = workdir
        .filter(|w| targets.iter().any(|t| t == w) || in_guest(guest, w).is_ok_and(|p| p.is_dir()))
        .unwrap_or("/");
    // Through sh, so a missing program exits 127 as in a real guest.
    c.args(["--chdir", cwd, "--"]);
    if let Some(user) = how.user {
        let (u, g) = user.split_once(':').unwrap_or((user, user));
        c.args(["setpriv", "--reuid", u, "--regid", g, "--clear-groups", "--"]);
    }
    c.args(["/bin/sh", "-c", "exec \"$@\"", "sh"]).args(argv);
    Ok(c)
}
