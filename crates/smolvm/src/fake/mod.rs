//! fake-smolvm: a test double of the smolvm 1.9.3 CLI, without a VM.
//!
//! It models what the wrapper and the backend rely on, as documented: the
//! flags of the subcommands they use (clap, so an unknown flag or a
//! positional name exits 2 as smolvm's does), smolvm's own failures (`Error:
//! …` on stderr, exit 1), the JSON of `ls --json` and `status --json`, and the
//! SQLite state DB (`vms(name, data)` with the `VmRecord` JSON, WAL) at the
//! path smolvm uses.
//!
//! Its boundary: there is no VM. Each machine has a *guest directory*,
//! `<data>/smolvm/fake-guests/<name>/`, standing for its filesystem: `cp`
//! copies into and out of it, and `exec` runs the command under bubblewrap
//! with that directory as its root (`/`), the host's system directories
//! (`/usr`, `/etc`, `/bin`, `/lib*`) bound read-only over it, the machine's
//! `-v` volumes bound in, each `--mount-socket` host socket bound at its
//! guest path, and the host's network shared when the machine has one
//! (`--net`, a policy, a port, `--dns`). A machine with none has no network
//! device, as in smolvm: `start` makes it a network namespace of its own
//! (`unshare --net`, held by a process until `stop`), where only `lo` exists
//! and is down, and every exec joins it (`nsenter`); `exec -d` processes
//! live there until `stop` or `delete` ends them. Then in `-w` (when it
//! exists in the guest) or `/`, with the environment cleared but for `PATH`,
//! the machine's `-e` env, exec's `-e` env and `FAKE_SMOLVM_GUEST=/`. `<data>` is smolvm's
//! data-local dir: `$SMOLVM_DATA_DIR/.local/share`, else `$XDG_DATA_HOME`,
//! else `$HOME/.local/share` (Linux).
//!
//! Knobs, all environment variables:
//! - `FAKE_SMOLVM_VERSION` (default `1.9.3`): what `--version` prints; below
//!   1.8.0, `create --from` drops the egress flags as smolvm did up to 1.7.7.
//!   `--mount-socket` is an unknown flag before 1.6.4 and exec's `-u/--user`
//!   before 1.14.0, as in those releases; `-u UID[:GID]` runs the command
//!   through `setpriv`.
//! - `FAKE_SMOLVM_EXEC_137_ONCE=1`: the first exec (per data dir) exits 137
//!   without running anything; later ones run.
//! - `FAKE_SMOLVM_UNKNOWN_FLAGS=--allow-host,--stream`: flags this smolvm
//!   does not know, as an older release would not; using one is a usage
//!   error (clap's message, exit 2).
//!
//! Every invocation's arguments are appended as a JSON array (one line) to
//! `<data>/smolvm/fake-calls.jsonl`, so tests can check what ran, in order.
//!
//! Not modelled: DNS resolution of `--allow-host` (only `localhost` and IP
//! literals are turned into CIDRs; names are kept in `dns_filter_hosts`),
//! images (never pulled), and flags the wrapper never passes. `cp --uid`/
//! `--gid` give the uploaded file those ids (the fake must run as root).

mod cli;
mod guest;
mod state;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::paths::{self, Os};
use crate::version::{ALLOW_CIDR_WITH_FROM, EXEC_USER, MOUNT_SOCKET, Version};

/// The `main` of the `fake-smolvm` binary. Public so that another crate's
/// tests can build the same fake as their own `[[bin]]`.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(data) = paths::data_local_dir(Os::HOST, |k| std::env::var_os(k)) else {
        return fail("database unavailable: could not determine local data directory");
    };
    let fake = Fake::new(data);
    fake.log_call(&args[1.min(args.len())..]);
    let version = std::env::var("FAKE_SMOLVM_VERSION").unwrap_or_else(|_| "1.9.3".to_owned());
    // A process that ends in a moment: leaking the string is clap's way to a
    // version known only at run time (without its `string` feature).
    let parsed = Version::parse(&version).unwrap_or(Version::new(1, 9, 3));
    if let Some(code) = unknown_flag(&args, parsed) {
        return code;
    }
    let cmd = cli::Cli::command().version(&*String::leak(version.clone()));
    let cli = match cmd.try_get_matches_from(&args).and_then(|m| cli::Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => {
            if e.print().is_err() {
                // Stderr is gone; the exit code still says it.
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let fake = Fake { version: parsed, ..fake };
    match fake.run(cli.cmd) {
        Ok(code) => code,
        Err(msg) => fail(&msg),
    }
}

/// A flag this version does not have (`--mount-socket` before 1.6.4, exec
/// `-u/--user` before 1.14) or one named in `FAKE_SMOLVM_UNKNOWN_FLAGS`,
/// before any `--`: clap's error for it.
fn unknown_flag(args: &[OsString], version: Version) -> Option<ExitCode> {
    let listed = std::env::var("FAKE_SMOLVM_UNKNOWN_FLAGS").unwrap_or_default();
    let mut unknown: Vec<&str> = listed.split(',').map(str::trim).filter(|f| !f.is_empty()).collect();
    if version < MOUNT_SOCKET {
        unknown.push("--mount-socket");
    }
    if version < EXEC_USER && args.get(2).is_some_and(|a| a == "exec") {
        unknown.extend(["-u", "--user"]);
    }
    let found = args.iter().skip(1).map(|a| a.to_string_lossy()).take_while(|a| a != "--").find(|a| {
        let flag = a.split_once('=').map_or(a.as_ref(), |(f, _)| f);
        unknown.contains(&flag)
    })?;
    err_line(&format!(
        "error: unexpected argument '{found}' found\n\nUsage: smolvm [OPTIONS] <COMMAND>\n\nFor more information, try '--help'."
    ));
    Some(ExitCode::from(2))
}

/// smolvm's own failure: `Error: <msg>` on stderr, exit 1.
fn fail(msg: &str) -> ExitCode {
    err_line(&format!("Error: {msg}"));
    ExitCode::FAILURE
}

/// A failure message; [`fail`] prints it.
type R<T> = Result<T, String>;

struct Fake {
    /// smolvm's data-local dir (`dirs::data_local_dir()`).
    data: PathBuf,
    version: Version,
}

impl Fake {
    fn new(data: PathBuf) -> Self {
        Fake { data, version: Version::new(1, 9, 3) }
    }

    fn smolvm_dir(&self) -> PathBuf {
        self.data.join("smolvm")
    }

    fn guest_dir(&self, name: &str) -> PathBuf {
        self.smolvm_dir().join("fake-guests").join(name)
    }

    /// Whether `create --from` keeps the egress flags.
    fn keeps_egress_with_from(&self) -> bool {
        self.version >= ALLOW_CIDR_WITH_FROM
    }

    fn log_call(&self, args: &[OsString]) {
        let words: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let dir = self.smolvm_dir();
        // Tests read this log to see what was called: a call left out of
        // it is said on stderr, where a failing test shows it.
        let logged = std::fs::create_dir_all(&dir)
            .and_then(|()| serde_json::to_string(&words).map_err(std::io::Error::from))
            .and_then(|line| {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("fake-calls.jsonl"))?;
                writeln!(f, "{line}")
            });
        if let Err(e) = logged {
            err_line(&format!("fake-smolvm: logging the call: {e}"));
        }
    }

    fn run(&self, cmd: cli::Top) -> R<ExitCode> {
        use cli::{MachineCmd, PackCmd, Top};
        match cmd {
            Top::Machine { cmd } => match cmd {
                MachineCmd::Create(a) => self.create(*a),
                MachineCmd::Start(a) => self.start(&a.name),
                MachineCmd::Stop(a) => self.stop(&a.name),
                MachineCmd::Delete(a) => self.delete(&a),
                MachineCmd::Status(a) => self.status(&a),
                MachineCmd::Ls(a) => self.ls(&a),
                MachineCmd::Exec(a) => self.exec(a),
                MachineCmd::Cp(a) => self.cp(&a),
            },
            Top::Pack { cmd: PackCmd::Create(a) } => self.pack_create(&a),
        }
    }
}

fn out(text: &str) -> R<()> {
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| format!("write stdout: {e}"))
}

/// A line on stderr; when stderr is gone there is nowhere to say it, and
/// the exit code still carries the outcome.
fn err_line(text: &str) {
    if writeln!(std::io::stderr(), "{text}").is_err() {
        // See above.
    }
}

/// `KEY=VALUE`, or `KEY` for the host's value; other specs are dropped
/// silently, as smolvm's `parse_env_spec` does.
fn env_specs(specs: &[String]) -> Vec<(String, String)> {
    specs
        .iter()
        .filter_map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Some((k.to_owned(), v.to_owned())),
            Some(_) => None,
            None if s.is_empty() => None,
            None => std::env::var(s).ok().map(|v| (s.clone(), v)),
        })
        .collect()
}

/// A guest path inside the guest dir; `..` may not climb out.
fn in_guest(guest_dir: &Path, p: &str) -> R<PathBuf> {
    if !p.starts_with('/') {
        return Err(format!("guest path must be absolute: {p}"));
    }
    let mut out = guest_dir.to_path_buf();
    for c in Path::new(p).components() {
        match c {
            std::path::Component::Normal(c) => out.push(c),
            std::path::Component::ParentDir => return Err(format!("guest path must not contain '..': {p}")),
            _ => {}
        }
    }
    Ok(out)
}
