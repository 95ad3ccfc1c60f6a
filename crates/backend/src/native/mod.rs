//! The native backend: Linux namespaces, no daemon.

mod cgroup;
mod doctor;
mod init;
mod landlock;
mod seccomp;
mod spec;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::stat::Mode;
use nix::unistd::mkfifo;

pub use self::cgroup::{
    Cgroup, CgroupError, CgroupMode, Detection as CgroupDetection, Rejection as CgroupRejection,
    cleanup_stale as cgroup_cleanup_stale, detect as cgroup_detect, list as cgroup_list,
};
pub use self::landlock::{
    FsRules, LandlockError, LandlockStatus, NotEnforced as LandlockNotEnforced, probe as landlock_probe,
    restrict as landlock_restrict,
};
pub use doctor::{Check, Host, Status, checks as doctor_checks, ready as doctor_ready, this_host as doctor};
pub use init::init_main;
pub use seccomp::filters as seccomp_filters;
pub use spec::{Forward, Limits, Spec, SpecCheck, SpecDir, SpecFile};

/// First host uid/gid of a bottle's range when bot-bottle runs as root:
/// inside root maps here, so nothing in a bottle is ever host root.
pub const HOST_ID_BASE: u32 = 0x7000_0000;
/// The agent's uid inside when bot-bottle runs as root.
pub const AGENT_ID: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the bottle's init exited before setting up its namespaces (exit {0})")]
    InitDied(i32),
    #[error("writing the bottle's id maps: {0}")]
    Map(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NativeError {
    let what = what.into();
    move |source| NativeError::Io { what, source }
}

/// Test hook: when `BOT_BOTTLE_PAUSE_AT` names this launch phase, say so on
/// stderr and wait, so that a test can kill the launcher exactly there and
/// check that `cleanup` leaves nothing behind.
pub fn pause_point(phase: &str) {
    if std::env::var("BOT_BOTTLE_PAUSE_AT").is_ok_and(|p| p == phase) {
        let _ = writeln!(std::io::stderr(), "bot-bottle: paused at {phase}");
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The uid and gid the agent runs as inside, given who launches the bottle.
pub fn agent_ids() -> (u32, u32) {
    if nix::unistd::geteuid().is_root() { (AGENT_ID, AGENT_ID) } else { (0, 0) }
}

/// Runs a bottle to completion: builds it from `spec` (whose sync paths and
/// root dir must be in `state`), waits, and returns the agent's exit code.
/// The user's terminal is passed straight through. Setting `stop` ends the
/// bottle: its init is killed, and every process inside dies with it.
pub fn run(spec: &Spec, state: &Path, stop: &std::sync::atomic::AtomicBool) -> Result<i32, NativeError> {
    for p in [&spec.sync_out, &spec.sync_in] {
        let _ = fs::remove_file(p);
        mkfifo(p.as_path(), Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(|e| NativeError::Io { what: format!("mkfifo {}", p.display()), source: e.into() })?;
    }
    fs::create_dir_all(&spec.root_dir).map_err(io(format!("creating {}", spec.root_dir.display())))?;
    let spec_path = state.join("spec.json");
    let json = serde_json::to_vec(spec).map_err(|e| NativeError::Io { what: "spec".into(), source: e.into() })?;
    fs::write(&spec_path, json).map_err(io("writing the bottle spec"))?;
    // Nothing of the launcher's environment (tokens included) goes in, not
    // even to the init stages, whose /proc/*/environ an agent might read.
    let mut child = Command::new(&spec.init_exe)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .arg("__bottle-init")
        .arg("a")
        .arg(&spec_path)
        .spawn()
        .map_err(io(format!("starting {}", spec.init_exe.display())))?;
    pause_point("init-spawned");
    let result = handshake(spec, &mut child);
    pause_point("bottle-mapped");
    if let Err(e) = result {
        let _ = child.kill();
        let _ = child.wait();
        cleanup(spec, &spec_path);
        return Err(e);
    }
    let status = loop {
        if let Some(s) = child.try_wait().map_err(io("waiting for the bottle"))? {
            break s;
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            // The init stages die with their parent (PR_SET_PDEATHSIG), so
            // killing the first takes down the bottle's pid 1 and all inside.
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    cleanup(spec, &spec_path);
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn cleanup(spec: &Spec, spec_path: &PathBuf) {
    let _ = fs::remove_file(&spec.sync_out);
    let _ = fs::remove_file(&spec.sync_in);
    let _ = fs::remove_file(spec_path);
    let _ = fs::remove_dir(&spec.root_dir);
}

/// Waits for the init to unshare (without blocking forever if it dies),
/// writes its id maps from outside, and lets it go on.
fn handshake(spec: &Spec, child: &mut std::process::Child) -> Result<(), NativeError> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&spec.sync_out)
        .map_err(io("opening the sync fifo"))?;
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 64];
        match f.read(&mut buf) {
            Ok(n) if n > 0 => {
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"\n") {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(io("reading the sync fifo")(e)),
        }
        if let Some(s) = child.try_wait().map_err(io("waiting for the bottle"))? {
            return Err(NativeError::InitDied(s.code().unwrap_or(-1)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = child.id();
    let answer = match write_maps(pid) {
        Ok(()) => "mapped\n".to_owned(),
        Err(e) => format!("{e}\n"),
    };
    fs::OpenOptions::new()
        .write(true)
        .open(&spec.sync_in)
        .and_then(|mut w| w.write_all(answer.as_bytes()))
        .map_err(io("writing the sync fifo"))?;
    if answer == "mapped\n" { Ok(()) } else { Err(NativeError::Map(answer.trim().to_owned())) }
}

/// Root maps the bottle's ids onto an unprivileged host range; anyone else
/// can map only themselves (and the agent then runs as that user).
fn write_maps(pid: u32) -> Result<(), String> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let w = |name: &str, s: &str| fs::write(proc.join(name), s).map_err(|e| format!("{name}: {e}"));
    if nix::unistd::geteuid().is_root() {
        w("setgroups", "allow")?;
        w("uid_map", &format!("0 {HOST_ID_BASE} 65536\n"))?;
        w("gid_map", &format!("0 {HOST_ID_BASE} 65536\n"))?;
    } else {
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        w("setgroups", "deny")?;
        w("uid_map", &format!("0 {uid} 1\n"))?;
        w("gid_map", &format!("0 {gid} 1\n"))?;
    }
    Ok(())
}
