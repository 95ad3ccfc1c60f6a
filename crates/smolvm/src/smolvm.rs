//! Running smolvm: one method per subcommand.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::Duration;

use rusqlite::{OpenFlags, OptionalExtension};

use crate::argv;
use crate::error::{Argv, Result, SmolvmError};
use crate::opts::{CpOpts, CreateOpts, ExecOpts, PackOpts};
use crate::output::{ExecOutput, MachineState, MachineStatus, PackOutput, StoredRecord};
use crate::paths::{self, Os};
use crate::version::{SUPPORTED, Version};

/// The status smolvm reports for a guest command killed by SIGKILL (128+9):
/// most often the guest's OOM killer, sometimes a transient agent failure.
pub const SIGKILL_STATUS: i32 = 137;

/// How much of smolvm's stderr an error keeps (the end, where smolvm puts
/// its `Error:` line).
const STDERR_KEEP: usize = 8 * 1024;

/// A smolvm program to run, and the environment to give it.
#[derive(Clone, Debug)]
pub struct Smolvm {
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
    retry_delay: Duration,
}

impl Smolvm {
    /// `smolvm` from `PATH`.
    pub fn find() -> Result<Self> {
        which::which("smolvm").map(Smolvm::at).map_err(|_| SmolvmError::NotInstalled)
    }

    /// The smolvm program at `program` (a real one, or `fake-smolvm`).
    pub fn at(program: impl Into<PathBuf>) -> Self {
        Smolvm { program: program.into(), env: Vec::new(), retry_delay: Duration::from_secs(1) }
    }

    /// Sets `key=value` in every smolvm process this starts (e.g.
    /// `SMOLVM_DATA_DIR`), on top of this process's environment.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The pause before exec's one retry after a 137 (1 s, as the seeds did).
    #[must_use]
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// `smolvm --version`, parsed.
    pub fn version(&self) -> Result<Version> {
        let args = argv::version();
        let out = self.run(&args)?;
        let text = String::from_utf8_lossy(&out.stdout);
        Version::from_output(&text)
            .ok_or_else(|| SmolvmError::BadVersion { argv: self.argv(&args), output: tail(text.trim()) })
    }

    /// The version, if it is in [`SUPPORTED`]; otherwise
    /// [`SmolvmError::Unsupported`] naming both.
    pub fn check_version(&self) -> Result<Version> {
        let found = self.version()?;
        if SUPPORTED.contains(found) { Ok(found) } else { Err(SmolvmError::Unsupported { found, range: SUPPORTED }) }
    }

    /// Whether this program runs and is a supported smolvm.
    pub fn is_available(&self) -> bool {
        self.check_version().is_ok()
    }

    /// `pack create`: an image packed into a stub and its `.smolmachine`.
    pub fn pack_create(&self, opts: &PackOpts) -> Result<PackOutput> {
        self.run(&argv::pack_create(opts)?)?;
        let mut sidecar = opts.output.clone().into_os_string();
        sidecar.push(".smolmachine");
        Ok(PackOutput { stub: opts.output.clone(), sidecar: sidecar.into() })
    }

    /// `machine create`. The machine is left `created` (not started).
    pub fn machine_create(&self, opts: &CreateOpts) -> Result<()> {
        self.run(&argv::machine_create(opts)?).map(drop)
    }

    /// `machine start`: returns once the guest agent is ready.
    pub fn machine_start(&self, name: &str) -> Result<()> {
        self.run(&argv::machine_start(name)?).map(drop)
    }

    pub fn machine_stop(&self, name: &str) -> Result<()> {
        self.run(&argv::machine_stop(name)?).map(drop)
    }

    /// `machine delete -f`: stops the machine first and removes its data.
    pub fn machine_delete(&self, name: &str) -> Result<()> {
        self.run(&argv::machine_delete(name)?).map(drop)
    }

    /// `machine ls --json`.
    pub fn machine_ls(&self) -> Result<Vec<MachineStatus>> {
        let args = argv::machine_ls();
        let out = self.run(&args)?;
        serde_json::from_slice(&out.stdout).map_err(|source| SmolvmError::BadJson { argv: self.argv(&args), source })
    }

    /// `machine status --json`; `None` when there is no such machine.
    pub fn machine_status(&self, name: &str) -> Result<Option<MachineStatus>> {
        let args = argv::machine_status(name)?;
        match self.run(&args) {
            Ok(out) => serde_json::from_slice(&out.stdout)
                .map(Some)
                .map_err(|source| SmolvmError::BadJson { argv: self.argv(&args), source }),
            Err(SmolvmError::Failed { stderr, .. }) if is_not_found(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `machine exec`, output captured. The guest's status is returned, not
    /// raised; smolvm's own failure (exit 1 with `Error: …` while the machine
    /// is not running) is [`SmolvmError::Failed`].
    ///
    /// A 137 is retried once, after [`Smolvm::retry_delay`], as the seeds did:
    /// smolvm's agent sometimes loses the first command after a start. A
    /// second 137 is returned. An interactive exec is not retried, since its
    /// stdin has been read.
    ///
    /// Without `opts.stream` smolvm cuts each stream at 11 MiB; with it the
    /// output is whole (and held in memory here). For large output use
    /// [`Smolvm::machine_exec_streaming`].
    pub fn machine_exec(&self, opts: &ExecOpts) -> Result<ExecOutput> {
        let args = argv::machine_exec(opts)?;
        let first = self.exec_captured(opts, &args)?;
        if first.status != SIGKILL_STATUS || opts.interactive {
            return Ok(first);
        }
        thread::sleep(self.retry_delay);
        self.exec_captured(opts, &args)
    }

    /// `machine exec --stream`, the output written to `stdout` and `stderr`
    /// as it comes; returns the guest's status. Errors as
    /// [`Smolvm::machine_exec`]. A 137 is retried once only when the first
    /// attempt wrote nothing, so no output is ever repeated.
    pub fn machine_exec_streaming(
        &self,
        opts: &ExecOpts,
        stdout: &mut (dyn Write + Send),
        stderr: &mut (dyn Write + Send),
    ) -> Result<i32> {
        let opts = ExecOpts { stream: true, ..opts.clone() };
        let args = argv::machine_exec(&opts)?;
        let first = self.exec_streamed(&opts, &args, stdout, stderr)?;
        if first.status != SIGKILL_STATUS || first.bytes > 0 || opts.interactive {
            return Ok(first.status);
        }
        thread::sleep(self.retry_delay);
        Ok(self.exec_streamed(&opts, &args, stdout, stderr)?.status)
    }

    /// `machine exec` with this process's stdin, stdout and stderr (for an
    /// attached agent: pass `interactive` and `tty`); returns the guest's
    /// status. Without `-i`/`-t` it adds `--stream` so output is live.
    ///
    /// The terminal gets smolvm's stderr, so this cannot read an `Error:`
    /// line: it checks that the machine is running first, and then takes
    /// every status as the guest's. No retry.
    pub fn machine_exec_attached(&self, opts: &ExecOpts) -> Result<i32> {
        let stream = opts.stream || !(opts.interactive || opts.tty);
        let opts = ExecOpts { stream, ..opts.clone() };
        let args = argv::machine_exec(&opts)?;
        match self.machine_status(&opts.name)? {
            Some(s) if s.state == MachineState::Running => {}
            Some(s) => return Err(SmolvmError::NotRunning { name: opts.name.clone(), state: s.state.to_string() }),
            None => return Err(SmolvmError::NotRunning { name: opts.name.clone(), state: "absent".into() }),
        }
        let status = self.command(&args).stdin(Stdio::inherit()).status().map_err(|e| self.spawn_error(&args, e))?;
        self.code(&args, status)
    }

    /// `machine exec` attached to `terminal` (a pty's other side, which the
    /// caller relays), not to this process's own: smolvm runs in a session
    /// of its own (`setsid --ctty`) whose controlling terminal is that pty,
    /// so neither smolvm nor anything it passes on can reach the caller's
    /// terminal. Returns the guest's status, as
    /// [`machine_exec_attached`](Self::machine_exec_attached) does.
    pub fn machine_exec_on(&self, opts: &ExecOpts, terminal: &std::os::fd::OwnedFd) -> Result<i32> {
        let args = argv::machine_exec(opts)?;
        match self.machine_status(&opts.name)? {
            Some(s) if s.state == MachineState::Running => {}
            Some(s) => return Err(SmolvmError::NotRunning { name: opts.name.clone(), state: s.state.to_string() }),
            None => return Err(SmolvmError::NotRunning { name: opts.name.clone(), state: "absent".into() }),
        }
        let setsid = which::which("setsid").map_err(|e| {
            self.spawn_error(
                &args,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("setsid (util-linux): {e}")),
            )
        })?;
        let io = |f: &std::os::fd::OwnedFd| f.try_clone().map(Stdio::from);
        let (i, o, e) = match (io(terminal), io(terminal), io(terminal)) {
            (Ok(i), Ok(o), Ok(e)) => (i, o, e),
            (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => return Err(self.spawn_error(&args, err)),
        };
        let status = Command::new(setsid)
            .args(["--ctty", "--wait"])
            .arg(&self.program)
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(i)
            .stdout(o)
            .stderr(e)
            .status()
            .map_err(|e| self.spawn_error(&args, e))?;
        self.code(&args, status)
    }

    /// `machine cp HOST NAME:GUEST`: one file into a running machine
    /// (directories are not supported by smolvm).
    pub fn machine_cp_in(&self, name: &str, host: &Path, guest: &str, opts: &CpOpts) -> Result<()> {
        self.run(&argv::machine_cp_in(name, host, guest, opts)?).map(drop)
    }

    /// `machine cp NAME:GUEST HOST`: one file out of a running machine.
    pub fn machine_cp_out(&self, name: &str, guest: &str, host: &Path) -> Result<()> {
        self.run(&argv::machine_cp_out(name, guest, host)?).map(drop)
    }

    /// Where this smolvm keeps its state DB, from the environment it will
    /// get (`SMOLVM_DATA_DIR`, `XDG_DATA_HOME`, `HOME`).
    pub fn state_db_path(&self) -> Result<PathBuf> {
        paths::state_db(Os::HOST, |k| self.env_var(k)).ok_or(SmolvmError::NoDataDir)
    }

    /// The machine's record in smolvm's state DB (read-only), or `None` when
    /// there is no such machine (or no DB yet). This is where the egress
    /// policy smolvm will enforce can be read back.
    pub fn stored_record(&self, name: &str) -> Result<Option<StoredRecord>> {
        argv::check_name(name)?;
        let path = self.state_db_path()?;
        if !path.exists() {
            return Ok(None);
        }
        let db_err = |source| SmolvmError::Db { path: path.clone(), source };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&path, flags).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(15)).map_err(db_err)?;
        let data: Option<rusqlite::types::Value> = conn
            .query_row("SELECT data FROM vms WHERE name = ?1", [name], |row| row.get(0))
            .optional()
            .map_err(db_err)?;
        let bytes = match data {
            None => return Ok(None),
            Some(rusqlite::types::Value::Blob(b)) => b,
            Some(rusqlite::types::Value::Text(t)) => t.into_bytes(),
            Some(_) => Vec::new(),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| SmolvmError::BadRecord {
            path: path.clone(),
            name: name.to_owned(),
            source,
        })
    }

    fn env_var(&self, key: &str) -> Option<OsString> {
        match self.env.iter().rev().find(|(k, _)| k == key) {
            Some((_, v)) => Some(v.clone()),
            None => std::env::var_os(key),
        }
    }

    fn argv(&self, args: &[OsString]) -> Argv {
        Argv::new(&self.program, args)
    }

    fn spawn_error(&self, args: &[OsString], source: io::Error) -> SmolvmError {
        SmolvmError::Spawn { argv: self.argv(args), source }
    }

    /// The command, stdin closed: smolvm must never wait on a prompt.
    fn command(&self, args: &[OsString]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        cmd
    }

    /// Runs a subcommand that is smolvm's alone (not exec): any non-zero
    /// status is a failure.
    fn run(&self, args: &[OsString]) -> Result<Output> {
        let out = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| self.spawn_error(args, e))?;
        match self.code(args, out.status)? {
            0 => Ok(out),
            2 => Err(SmolvmError::Usage { argv: self.argv(args), stderr: text(&out.stderr) }),
            status => Err(SmolvmError::Failed { argv: self.argv(args), status, stderr: text(&out.stderr) }),
        }
    }

    /// smolvm's exit code; a signal that killed smolvm itself is an error.
    fn code(&self, args: &[OsString], status: ExitStatus) -> Result<i32> {
        match status.code() {
            Some(c) => Ok(c),
            None => Err(SmolvmError::Signalled { argv: self.argv(args), signal: status.signal().unwrap_or(0) }),
        }
    }

    fn exec_captured(&self, opts: &ExecOpts, args: &[OsString]) -> Result<ExecOutput> {
        let mut cmd = self.command(args);
        if opts.interactive {
            cmd.stdin(Stdio::inherit());
        }
        let out = cmd.output().map_err(|e| self.spawn_error(args, e))?;
        let status = self.code(args, out.status)?;
        self.settle(&opts.name, args, classify(status, out.stdout.is_empty(), &out.stderr), status, &out.stderr)?;
        Ok(ExecOutput { status, stdout: out.stdout, stderr: out.stderr })
    }

    fn exec_streamed(
        &self,
        opts: &ExecOpts,
        args: &[OsString],
        stdout: &mut (dyn Write + Send),
        stderr: &mut (dyn Write + Send),
    ) -> Result<Streamed> {
        let mut cmd = self.command(args);
        if opts.interactive {
            cmd.stdin(Stdio::inherit());
        }
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| self.spawn_error(args, e))?;
        let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
        let (out, err) = thread::scope(|s| {
            let err = s.spawn(move || pump(err_pipe, stderr));
            let out = pump(out_pipe, stdout);
            (out, err.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        });
        let status = child.wait().map_err(|e| self.spawn_error(args, e))?;
        let output_error = |source| SmolvmError::Output { argv: self.argv(args), source };
        let (out, err) = (out.map_err(output_error)?, err.map_err(output_error)?);
        let status = self.code(args, status)?;
        self.settle(&opts.name, args, classify(status, out.bytes == 0, &err.tail), status, &err.tail)?;
        Ok(Streamed { status, bytes: out.bytes + err.bytes })
    }

    /// Turns a verdict into a result, asking smolvm about the machine when
    /// the status alone cannot say whose failure it was.
    fn settle(&self, name: &str, args: &[OsString], verdict: Verdict, status: i32, stderr: &[u8]) -> Result<()> {
        match verdict {
            Verdict::Guest => Ok(()),
            Verdict::Usage => Err(SmolvmError::Usage { argv: self.argv(args), stderr: text(stderr) }),
            Verdict::SmolvmUnlessRunning => match self.machine_status(name) {
                // The machine is up, so the guest's command itself printed
                // `Error: …` and exited 1.
                Ok(Some(s)) if s.state == MachineState::Running => Ok(()),
                _ => Err(SmolvmError::Failed { argv: self.argv(args), status, stderr: text(stderr) }),
            },
        }
    }
}

/// `smolvm` from `PATH`, runnable and in the supported range.
pub fn is_available() -> bool {
    Smolvm::find().is_ok_and(|s| s.is_available())
}

/// Whose status an exec's status is, from what smolvm printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Guest,
    /// clap refused the command line: exit 2, `error: …` and a usage line,
    /// nothing on stdout.
    Usage,
    /// Exit 1, nothing on stdout, and `Error: …` as the last line of stderr:
    /// how smolvm reports its own failures, but a guest could print the
    /// same. smolvm fails this way only when it could not reach a running
    /// machine, so the machine's state decides.
    SmolvmUnlessRunning,
}

pub(crate) fn classify(status: i32, stdout_empty: bool, stderr: &[u8]) -> Verdict {
    if !stdout_empty {
        return Verdict::Guest;
    }
    let err = String::from_utf8_lossy(stderr);
    if status == 2 && err.starts_with("error: ") && err.contains("\nUsage: ") {
        return Verdict::Usage;
    }
    let last_line = err.trim_end().lines().next_back().unwrap_or("");
    if status == 1 && last_line.starts_with("Error: ") {
        return Verdict::SmolvmUnlessRunning;
    }
    Verdict::Guest
}

/// smolvm's answer for a name it does not know: `Error: vm not found: NAME`.
fn is_not_found(stderr: &str) -> bool {
    stderr.lines().any(|l| l.starts_with("Error: ") && l.contains("not found"))
}

/// Text for an error: lossy, trimmed, its end when long.
fn text(bytes: &[u8]) -> String {
    tail(String::from_utf8_lossy(bytes).trim())
}

fn tail(s: &str) -> String {
    if s.len() <= STDERR_KEEP {
        return s.to_owned();
    }
    let mut start = s.len() - STDERR_KEEP;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

struct Streamed {
    status: i32,
    bytes: u64,
}

struct Pumped {
    bytes: u64,
    /// The last bytes, for telling smolvm's `Error:` line from the guest's.
    tail: Vec<u8>,
}

/// Copies a pipe to a writer until the pipe closes. A failing writer does not
/// stop the copy (the child would block on a full pipe); the first write
/// error is returned at the end.
fn pump(pipe: Option<impl Read>, w: &mut (dyn Write + Send)) -> io::Result<Pumped> {
    const TAIL: usize = 64 * 1024;
    let mut p = Pumped { bytes: 0, tail: Vec::new() };
    let Some(mut pipe) = pipe else { return Ok(p) };
    let mut buf = vec![0; 64 * 1024];
    let mut write_error = None;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        p.bytes += n as u64;
        p.tail.extend_from_slice(&buf[..n]);
        if p.tail.len() > 2 * TAIL {
            p.tail.drain(..p.tail.len() - TAIL);
        }
        if write_error.is_none()
            && let Err(e) = w.write_all(&buf[..n])
        {
            write_error = Some(e);
        }
    }
    if write_error.is_none()
        && let Err(e) = w.flush()
    {
        write_error = Some(e);
    }
    write_error.map_or(Ok(p), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let usage = b"error: unexpected argument '--user' found\n\nUsage: smolvm machine exec [OPTIONS]\n";
        assert_eq!(classify(2, true, usage), Verdict::Usage);
        assert_eq!(classify(2, false, usage), Verdict::Guest);
        assert_eq!(classify(2, true, b"grep: bad pattern\n"), Verdict::Guest);
        let not_running = b"Error: agent operation failed: connect: machine 'm' is not running.\n";
        assert_eq!(classify(1, true, not_running), Verdict::SmolvmUnlessRunning);
        assert_eq!(classify(1, true, b"WARN something\nError: vm not found: m\n"), Verdict::SmolvmUnlessRunning);
        assert_eq!(classify(1, false, not_running), Verdict::Guest);
        assert_eq!(classify(1, true, b"Error: x\nand then the guest went on\n"), Verdict::Guest);
        assert_eq!(classify(1, true, b""), Verdict::Guest);
        assert_eq!(classify(3, true, not_running), Verdict::Guest);
        assert_eq!(classify(137, true, b""), Verdict::Guest);
    }

    #[test]
    fn smolvm_killed_by_a_signal_is_an_error() {
        let s = Smolvm::at("/usr/bin/smolvm");
        assert_eq!(s.code(&[], ExitStatus::from_raw(3 << 8)).ok(), Some(3));
        match s.code(&argv::machine_ls(), ExitStatus::from_raw(9)) {
            Err(e @ SmolvmError::Signalled { signal: 9, .. }) => {
                assert_eq!(e.to_string(), "`smolvm machine ls --json` was killed by signal 9")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_found() {
        assert!(is_not_found("Error: vm not found: nosuch"));
        assert!(!is_not_found("Error: agent operation failed: connect"));
    }

    #[test]
    fn long_text_keeps_its_end() {
        let s = format!("{}Error: the end", "é".repeat(STDERR_KEEP));
        let t = tail(&s);
        assert!(t.starts_with('…') && t.ends_with("Error: the end") && t.len() <= STDERR_KEEP + 4);
    }
}
