//! A bottle's cgroup, managed from the host side: pids and memory limits,
//! and a sure way to kill everything inside. Without a usable cgroup the
//! caller falls back to rlimits.
//!
//! Where a bottle's cgroup goes, in order of preference:
//!
//! 1. **cgroup v2, nested in the launcher's own cgroup** (the `0::` line of
//!    `/proc/self/cgroup`) when that cgroup is writable (delegated: a
//!    `user@.service` subtree, or `systemd-run --user --scope -p
//!    Delegate=yes`) and offers the controllers the limits need. Nesting
//!    keeps every bottle inside whatever limits the launcher already has.
//!    cgroup v2 allows no processes in a cgroup that hands controllers to
//!    children, so the launcher first moves itself into a leaf of its own,
//!    `bot-bottle/.launcher-<pid>`; that needs it to be alone in its cgroup
//!    (which a `systemd-run --scope` gives), else this placement is refused
//!    rather than moving processes that are not ours (the user's shell).
//! 2. **cgroup v2 at the top of the hierarchy**, as root, when the launcher's
//!    own cgroup is not usable (a systemd unit that is not delegated): like
//!    Docker's cgroupfs driver, outside any unit.
//! 3. **cgroup v1**: the pids hierarchy (and the memory hierarchy when a
//!    memory limit is asked for), nested in the launcher's own cgroup of
//!    each, when writable (as root).
//!
//! Either way the layout is `<base>/bot-bottle/<name>`, so that
//! [`cleanup_stale`] and [`list`] find what a crashed run left.

mod detect;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use self::detect::{Detection, Rejection};
pub(crate) use self::detect::{HostView, Placement, detect_on};
use self::detect::{RealHost, parents, parents_by_mode};
use super::spec::Limits;

/// The directory every bottle's cgroup is created under.
pub(super) const PARENT: &str = "bot-bottle";
/// The CFS period a cpus limit is a share of, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// How long killing and removing may take before giving up.
const PATIENCE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    V2,
    V1,
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupMode::V2 => "cgroup v2",
            CgroupMode::V1 => "cgroup v1",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup name `{0}`: letters, digits, `.`, `_`, `-`, not starting with `.` or `cgroup.`")]
    Name(String),
    #[error("{0} already exists (left by a crashed run? `bot-bottle cleanup` removes it)")]
    Exists(PathBuf),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("processes still in {0} after SIGKILL")]
    Busy(PathBuf),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { op, path, source }
}

/// A bottle's cgroup: one directory on v2, one per hierarchy on v1.
#[derive(Debug)]
pub struct Cgroup {
    mode: CgroupMode,
    leaves: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates the cgroup `name` with `limits`, where the host allows one.
    /// `None`: no usable cgroup here (use rlimits); [`detect`] says why.
    pub fn create(name: &str, limits: &Limits) -> Result<Option<Cgroup>, CgroupError> {
        validate(name)?;
        let host = RealHost;
        match detect_on(&host, limits).placement {
            Some(p) => create_at(&p, name, limits, host.pid()).map(Some),
            None => Ok(None),
        }
    }

    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// The `cgroup.procs` files a process writes `0` to in order to join.
    /// The bottle's first init stage does so before it unshares, so that
    /// the bottle's cgroup namespace is rooted here.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.leaves.iter().map(|l| l.join("cgroup.procs")).collect()
    }

    /// Which of `limits` this cgroup enforces: those whose controller files
    /// its leaves have (where [`Cgroup::create`] wrote the limits).
    pub fn enforced(&self, limits: &Limits) -> Limits {
        let has = |f: &str| self.leaves.iter().any(|l| l.join(f).exists());
        Limits {
            pids: limits.pids.filter(|_| has("pids.max")),
            memory: limits.memory.filter(|_| has("memory.max") || has("memory.limit_in_bytes")),
            cpus: limits.cpus.filter(|_| has("cpu.max") || has("cpu.cfs_quota_us")),
            // Not a cgroup's to enforce.
            disk: None,
        }
    }

    /// Moves process `pid` (all its threads) in.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for f in self.procs_files() {
            fs::write(&f, pid.to_string()).map_err(io("joining", &f))?;
        }
        Ok(())
    }

    /// Processes now inside.
    pub fn pids(&self) -> Vec<i32> {
        let mut all = BTreeSet::new();
        for f in self.procs_files() {
            all.extend(fs::read_to_string(f).unwrap_or_default().lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        all.into_iter().collect()
    }

    /// How many times the kernel killed a process inside for memory.
    pub fn oom_kills(&self) -> u64 {
        let count = |text: String| {
            text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())).unwrap_or(0)
        };
        self.leaves
            .iter()
            .flat_map(|l| [l.join("memory.events"), l.join("memory.oom_control")])
            .filter_map(|f| fs::read_to_string(f).ok())
            .map(count)
            .sum()
    }

    /// Kills every process inside and waits until none is left: with
    /// `cgroup.kill` where the kernel has it (v2, Linux 5.14+), else by
    /// SIGKILLing every listed process until the list stays empty (the pids
    /// limit bounds how fast a fork loop can refill it).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if self.mode == CgroupMode::V2 {
            for leaf in &self.leaves {
                let kill = leaf.join("cgroup.kill");
                match fs::write(&kill, "1") {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io("writing", &kill)(e)),
                }
            }
        }
        let start = Instant::now();
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() > PATIENCE {
                return Err(CgroupError::Busy(self.leaves.first().cloned().unwrap_or_default()));
            }
            // A pid that cannot be killed stays listed: the loop tries it
            // again, and past PATIENCE says the cgroup is busy.
            for pid in pids {
                crate::gone::kill("a process in the bottle's cgroup", pid).ok();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills everything inside and removes the cgroup. Idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        for leaf in &self.leaves {
            rmdir_patiently(leaf)?;
        }
        Ok(())
    }
}

/// Removes what a crashed run left of the cgroup `name`, wherever it is;
/// says whether there was anything. Also removes the empty leaves that
/// launchers moved themselves into.
pub fn cleanup_stale(name: &str) -> Result<bool, CgroupError> {
    validate(name)?;
    let host = RealHost;
    for parent in parents(&host) {
        for launcher in children(&parent).into_iter().filter(|n| n.starts_with(".launcher-")) {
            // A leaf whose launcher still runs is busy: rmdir refuses it,
            // and that is expected, so it is not a failure of cleanup.
            let leaf = parent.join(launcher);
            match fs::remove_dir(&leaf) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %leaf.display(), error = %e, "removing a launcher's empty cgroup"),
            }
        }
    }
    let found: Vec<(CgroupMode, PathBuf)> =
        parents_by_mode(&host).into_iter().map(|(m, p)| (m, p.join(name))).filter(|(_, p)| p.is_dir()).collect();
    if found.is_empty() {
        return Ok(false);
    }
    let mode = if found.iter().any(|(m, _)| *m == CgroupMode::V2) { CgroupMode::V2 } else { CgroupMode::V1 };
    Cgroup { mode, leaves: found.into_iter().map(|(_, p)| p).collect() }.remove()?;
    Ok(true)
}

/// Names of the bottle cgroups that exist, starting with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let mut names = BTreeSet::new();
    for parent in parents(&RealHost) {
        names.extend(children(&parent).into_iter().filter(|n| !n.starts_with('.') && n.starts_with(prefix)));
    }
    names.into_iter().collect()
}

/// Where this host would put a bottle's cgroup for `limits`, and why not
/// in each better place.
pub fn detect(limits: &Limits) -> Detection {
    detect_on(&RealHost, limits)
}

fn validate(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && !name.starts_with("cgroup.")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok { Ok(()) } else { Err(CgroupError::Name(name.to_owned())) }
}

fn children(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

fn rmdir_patiently(dir: &Path) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            // Killed processes leave the cgroup a moment after SIGKILL.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < PATIENCE => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io("removing", dir)(e)),
        }
    }
}

fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io("creating", dir)(e)),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io("writing", path))
}

/// The controllers a placement must offer for `limits`.
pub(super) fn needed(limits: &Limits) -> Vec<&'static str> {
    let mut n = Vec::new();
    if limits.pids.is_some() {
        n.push("pids");
    }
    if limits.memory.is_some() {
        n.push("memory");
    }
    n
}

fn create_at(p: &Placement, name: &str, limits: &Limits, pid: u32) -> Result<Cgroup, CgroupError> {
    let (mode, bases) = match p {
        Placement::V2 { base, move_launcher, cpu } => {
            let parent = base.join(PARENT);
            mkdir(&parent)?;
            if *move_launcher {
                let leaf = parent.join(format!(".launcher-{pid}"));
                mkdir(&leaf)?;
                write(&leaf.join("cgroup.procs"), &pid.to_string())?;
            }
            let mut enable: Vec<String> = needed(limits).iter().map(|c| format!("+{c}")).collect();
            // cpu where the hierarchy offers it; the cpus limit is then
            // enforced, else the launch warns that it is not.
            if limits.cpus.is_some() && *cpu {
                enable.push("+cpu".into());
            }
            if !enable.is_empty() {
                for dir in [base.as_path(), parent.as_path()] {
                    write(&dir.join("cgroup.subtree_control"), &enable.join(" "))?;
                }
            }
            (CgroupMode::V2, vec![base.clone()])
        }
        Placement::V1 { dirs } => (CgroupMode::V1, dirs.iter().map(|(_, d)| d.clone()).collect()),
    };
    let mut cg = Cgroup { mode, leaves: Vec::new() };
    for base in bases {
        let parent = base.join(PARENT);
        mkdir(&parent)?;
        let leaf = parent.join(name);
        if !mkdir(&leaf)? {
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "removing a half-made cgroup; `bot-bottle cleanup` retries");
            }
            return Err(CgroupError::Exists(leaf));
        }
        cg.leaves.push(leaf);
    }
    if let Err(e) = set_limits(&cg, limits) {
        if let Err(r) = cg.remove() {
            tracing::warn!(error = %r, "removing a cgroup whose limits could not be set; `bot-bottle cleanup` retries");
        }
        return Err(e);
    }
    Ok(cg)
}

/// Writes each limit into the leaf whose controller offers it.
fn set_limits(cg: &Cgroup, limits: &Limits) -> Result<(), CgroupError> {
    for leaf in &cg.leaves {
        let has = |f: &str| leaf.join(f).exists();
        if let Some(millis) = limits.cpus {
            // That share of each period, every period (100 ms).
            let quota = (millis * CPU_PERIOD_US / 1000).max(1000);
            if has("cpu.max") {
                write(&leaf.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            if has("cpu.cfs_quota_us") {
                write(&leaf.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&leaf.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        if let Some(n) = limits.pids
            && has("pids.max")
        {
            write(&leaf.join("pids.max"), &n.to_string())?;
        }
        if let Some(m) = limits.memory {
            if has("memory.max") {
                write(&leaf.join("memory.max"), &m.to_string())?;
                // Without it the limit only moves the excess to swap.
                if has("memory.swap.max") {
                    write(&leaf.join("memory.swap.max"), "0")?;
                }
            }
            if has("memory.limit_in_bytes") {
                write(&leaf.join("memory.limit_in_bytes"), &m.to_string())?;
                // Memory plus swap: the same bound, so no swap at all.
                if has("memory.memsw.limit_in_bytes") {
                    write(&leaf.join("memory.memsw.limit_in_bytes"), &m.to_string())?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn names_are_validated() {
        for bad in ["", ".", "..", ".hidden", "a/b", "cgroup.procs", "x y", &"n".repeat(101)] {
            assert!(matches!(validate(bad), Err(CgroupError::Name(_))), "{bad:?}");
        }
        for good in ["claude-1a2b3c", "a.b_c-d", "X9"] {
            assert!(validate(good).is_ok(), "{good}");
        }
    }

    // --- Real cgroups: root only. ---

    fn usable(limits: &Limits) -> bool {
        if !nix::unistd::geteuid().is_root() {
            let _ = writeln!(std::io::stderr(), "skipping: creating cgroups for this test needs root");
            return false;
        }
        let d = detect(limits);
        if d.mode().is_none() {
            let _ = writeln!(std::io::stderr(), "skipping: {d}");
            return false;
        }
        true
    }

    fn unique(what: &str) -> String {
        format!("test-{}-{what}", std::process::id())
    }

    /// A shell that waits for a line on stdin before running `script`, so
    /// that it can be moved into the cgroup before it forks.
    fn gated_shell(script: &str) -> std::process::Child {
        Command::new("sh")
            .args(["-c", &format!("read x; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh")
    }

    fn open_gate(child: &mut std::process::Child) {
        child.stdin.take().expect("stdin").write_all(b"go\n").expect("gate");
    }

    #[test]
    fn pids_limit_caps_a_fork_loop() {
        let limits = Limits { pids: Some(16), memory: None, cpus: None, disk: None };
        if !usable(&limits) {
            return;
        }
        let cg = Cgroup::create(&unique("pids"), &limits).expect("create").expect("a cgroup");
        assert_eq!(cg.enforced(&limits), limits);
        let mut sh = gated_shell("for i in $(seq 100); do sleep 5 & done; wait");
        cg.add(sh.id()).expect("add");
        open_gate(&mut sh);
        let mut most = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            most = most.max(cg.pids().len());
            std::thread::sleep(Duration::from_millis(20));
        }
        cg.remove().expect("remove");
        let out = sh.wait_with_output().expect("sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let _ = writeln!(
            std::io::stderr(),
            "{:?}: at most {most} processes; sh said: {}",
            cg.mode(),
            stderr.lines().next().unwrap_or("")
        );
        assert!((10..=16).contains(&most), "at most {most} processes");
        assert!(stderr.contains("fork") || stderr.contains("Resource temporarily unavailable"), "{stderr}");
        assert!(!cg.leaves.iter().any(|l| l.exists()));
    }

    #[test]
    fn memory_limit_kills_a_hog() {
        let limits = Limits { pids: Some(64), memory: Some(64 << 20), cpus: None, disk: None };
        if !usable(&limits) {
            return;
        }
        let cg = Cgroup::create(&unique("memory"), &limits).expect("create").expect("a cgroup");
        assert_eq!(cg.enforced(&limits), limits);
        // `tail` keeps the whole line, and /dev/zero has no newline.
        let mut sh = gated_shell("head -c 512M /dev/zero | tail >/dev/null");
        cg.add(sh.id()).expect("add");
        open_gate(&mut sh);
        let out = sh.wait_with_output().expect("sh");
        let kills = cg.oom_kills();
        cg.remove().expect("remove");
        let _ = writeln!(std::io::stderr(), "{:?}: sh exited {:?}, oom kills {kills}", cg.mode(), out.status.code());
        assert!(kills > 0, "no OOM kill; sh exited {:?}", out.status);
        assert_eq!(out.status.code(), Some(137));
    }

    #[test]
    fn remove_kills_everything_and_cleanup_finds_leftovers() {
        if !usable(&Limits::default()) {
            return;
        }
        let name = unique("cleanup");
        let cg = Cgroup::create(&name, &Limits::default()).expect("create").expect("a cgroup");
        assert!(matches!(Cgroup::create(&name, &Limits::default()), Err(CgroupError::Exists(_))));
        let mut sh = gated_shell("sleep 60 & sleep 60 & wait");
        cg.add(sh.id()).expect("add");
        open_gate(&mut sh);
        let start = Instant::now();
        while cg.pids().len() < 3 && start.elapsed() < PATIENCE {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(cg.pids().len(), 3);
        // Abandoned, as by a crashed launcher: found, killed and removed.
        assert!(list("test-").contains(&name));
        assert!(cleanup_stale(&name).expect("cleanup"));
        assert!(cg.pids().is_empty());
        assert!(!list("test-").contains(&name));
        assert!(!cleanup_stale(&name).expect("cleanup again"));
        cg.remove().expect("remove is idempotent");
        let status = sh.wait().expect("sh");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        let _ = writeln!(std::io::stderr(), "{:?}: 3 processes killed, cgroup removed", cg.mode());
    }
}
