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

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::spec::Limits;

/// The directory every bottle's cgroup is created under.
const PARENT: &str = "bot-bottle";
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
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
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
            // A leaf whose launcher still runs is busy: rmdir refuses it.
            let _ = fs::remove_dir(parent.join(launcher));
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
fn needed(limits: &Limits) -> Vec<&'static str> {
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
        Placement::V2 { base, move_launcher, .. } => {
            let parent = base.join(PARENT);
            mkdir(&parent)?;
            if *move_launcher {
                let leaf = parent.join(format!(".launcher-{pid}"));
                mkdir(&leaf)?;
                write(&leaf.join("cgroup.procs"), &pid.to_string())?;
            }
            let enable: Vec<String> = needed(limits).iter().map(|c| format!("+{c}")).collect();
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
            let _ = cg.remove();
            return Err(CgroupError::Exists(leaf));
        }
        cg.leaves.push(leaf);
    }
    if let Err(e) = set_limits(&cg, limits) {
        let _ = cg.remove();
        return Err(e);
    }
    Ok(cg)
}

/// Writes each limit into the leaf whose controller offers it.
fn set_limits(cg: &Cgroup, limits: &Limits) -> Result<(), CgroupError> {
    for leaf in &cg.leaves {
        let has = |f: &str| leaf.join(f).exists();
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

// ---------------------------------------------------------------------------
// Detection: a pure function of what the host shows, so that doctor and the
// unit tests can describe other hosts.

/// What detection reads; the OS boundary.
pub(crate) trait HostView {
    fn read(&self, path: &Path) -> Option<String>;
    fn writable(&self, path: &Path) -> bool;
    fn pid(&self) -> u32;
    fn is_root(&self) -> bool;
}

struct RealHost;

impl HostView for RealHost {
    fn read(&self, path: &Path) -> Option<String> {
        fs::read_to_string(path).ok()
    }
    fn writable(&self, path: &Path) -> bool {
        nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }
}

/// Where a bottle's cgroup would go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Under `base`/bot-bottle; the launcher first moves itself into a
    /// leaf there if `move_launcher`.
    V2 { base: PathBuf, move_launcher: bool },
    /// Under each `dir`/bot-bottle, by controller.
    V1 { dirs: Vec<(&'static str, PathBuf)> },
}

/// A placement that was not usable, and how to make it so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub mode: CgroupMode,
    pub reason: String,
    pub fix: String,
}

/// The outcome of [`detect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    placement: Option<Placement>,
    rejected: Vec<Rejection>,
}

impl Detection {
    /// The mode a bottle would get, if any.
    pub fn mode(&self) -> Option<CgroupMode> {
        match self.placement {
            Some(Placement::V2 { .. }) => Some(CgroupMode::V2),
            Some(Placement::V1 { .. }) => Some(CgroupMode::V1),
            None => None,
        }
    }

    /// Why each better placement was not usable, best first.
    pub fn rejected(&self) -> &[Rejection] {
        &self.rejected
    }

    /// Where bottles would go, in a few words.
    pub fn placement(&self) -> Option<String> {
        self.placement.as_ref().map(|p| match p {
            Placement::V2 { base, move_launcher: false } => format!("cgroup v2: {}", base.join(PARENT).display()),
            Placement::V2 { base, move_launcher: true } => {
                format!("cgroup v2: {} (the launcher moves into a leaf there)", base.join(PARENT).display())
            }
            Placement::V1 { dirs } => format!(
                "cgroup v1: {}",
                dirs.iter().map(|(c, d)| format!("{c} {}", d.join(PARENT).display())).collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = self.rejected.iter().map(|r| format!("not {}: {}", r.mode, r.reason)).collect::<Vec<_>>();
        match self.placement() {
            Some(p) if why.is_empty() => f.write_str(&p),
            Some(p) => write!(f, "{p} ({})", why.join("; ")),
            None => write!(f, "no usable cgroup: {}", why.join("; ")),
        }
    }
}

/// One line of `/proc/self/mountinfo`, the parts that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    options: String,
}

fn unescape(s: &str) -> String {
    // Spaces, tabs, newlines and backslashes appear as octal escapes.
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8))
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let (fstype, _source, options) = (right.next()?, right.next()?, right.next().unwrap_or(""));
            Some(Mount {
                root: unescape(left.get(3)?),
                point: PathBuf::from(unescape(left.get(4)?)),
                fstype: fstype.to_owned(),
                options: options.to_owned(),
            })
        })
        .collect()
}

/// `/proc/self/cgroup`: (controllers, path) per hierarchy; v2 has none.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ctrls = ctrls.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
            Some((ctrls, path.to_owned()))
        })
        .collect()
}

/// The directory of cgroup `path` in the hierarchy mounted at `m`.
fn dir_in(m: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" { path } else { path.strip_prefix(m.root.as_str())? };
    // `/a/bc` is not inside `/a/b`.
    if !rel.is_empty() && !rel.starts_with('/') {
        return None;
    }
    let rel = rel.trim_start_matches('/');
    Some(if rel.is_empty() { m.point.clone() } else { m.point.join(rel) })
}

/// A launcher that moved itself into `bot-bottle/.launcher-<pid>` still
/// counts its former cgroup as its own.
fn own_base(dir: PathBuf) -> PathBuf {
    let is_launcher_leaf = dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".launcher-"))
        && dir.parent().and_then(Path::file_name).is_some_and(|n| n == PARENT);
    match dir.parent().and_then(Path::parent) {
        Some(base) if is_launcher_leaf => base.to_owned(),
        _ => dir,
    }
}

struct Layout {
    mounts: Vec<Mount>,
    member: Vec<(Vec<String>, String)>,
}

impl Layout {
    fn read(h: &dyn HostView) -> Layout {
        Layout {
            mounts: parse_mountinfo(&h.read(Path::new("/proc/self/mountinfo")).unwrap_or_default()),
            member: parse_proc_cgroup(&h.read(Path::new("/proc/self/cgroup")).unwrap_or_default()),
        }
    }

    fn v2_mount(&self) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.fstype == "cgroup2")
    }

    /// The launcher's own cgroup v2 directory, or why there is none.
    fn v2_own(&self) -> Result<PathBuf, String> {
        let m = self.v2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
        let (_, path) =
            self.member.iter().find(|(c, _)| c.is_empty()).ok_or("this process has no cgroup v2 membership")?;
        let dir = dir_in(m, path)
            .ok_or_else(|| format!("its cgroup {path} is outside the hierarchy mounted at {}", m.point.display()))?;
        Ok(own_base(dir))
    }

    fn v1_mount(&self, ctrl: &str) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == ctrl))
    }

    fn v1_own(&self, ctrl: &str) -> Result<PathBuf, String> {
        let m = self.v1_mount(ctrl).ok_or_else(|| format!("no cgroup v1 {ctrl} hierarchy is mounted"))?;
        let (_, path) = self
            .member
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == ctrl))
            .ok_or_else(|| format!("this process is in no cgroup v1 {ctrl} group"))?;
        dir_in(m, path)
            .map(own_base)
            .ok_or_else(|| format!("its {ctrl} cgroup {path} is outside the hierarchy at {}", m.point.display()))
    }
}

const DELEGATE_FIX: &str =
    "run bot-bottle in a delegated scope of its own: systemd-run --user --scope -p Delegate=yes bot-bottle …";

fn words(list: &[&str]) -> String {
    if list.is_empty() { "none".into() } else { list.join(", ") }
}

pub(crate) fn detect_on(h: &dyn HostView, limits: &Limits) -> Detection {
    let layout = Layout::read(h);
    let need = needed(limits);
    let mut rejected = Vec::new();
    match detect_v2(h, &layout, &need) {
        Ok(p) => return Detection { placement: Some(p), rejected },
        Err((reason, fix)) => rejected.push(Rejection { mode: CgroupMode::V2, reason, fix }),
    }
    match detect_v1(h, &layout, &need) {
        Ok(p) => Detection { placement: Some(p), rejected },
        Err((reason, fix)) => {
            rejected.push(Rejection { mode: CgroupMode::V1, reason, fix });
            Detection { placement: None, rejected }
        }
    }
}

fn missing<'a>(need: &[&'a str], have: &[&str]) -> Vec<&'a str> {
    need.iter().copied().filter(|c| !have.contains(c)).collect()
}

fn detect_v2(h: &dyn HostView, layout: &Layout, need: &[&str]) -> Result<Placement, (String, String)> {
    let no_v2 = |reason: String| (reason, "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2)".to_owned());
    let own = layout.v2_own().map_err(no_v2)?;
    let read = |dir: &Path, f: &str| h.read(&dir.join(f)).unwrap_or_default();
    let controllers = read(&own, "cgroup.controllers");
    let have: Vec<&str> = controllers.split_whitespace().collect();
    let lacking = missing(need, &have);
    // The launcher's own cgroup first: it keeps the bottle within the
    // launcher's limits.
    let why_not_own = if !lacking.is_empty() {
        let bound_to_v1 = lacking.iter().all(|c| layout.v1_mount(c).is_some());
        let reason =
            format!("{} offers no {} controller (available: {})", own.display(), lacking.join(", "), words(&have));
        if bound_to_v1 {
            return Err((
                format!("{reason}: they are bound to cgroup v1 hierarchies (hybrid mode)"),
                "boot with systemd.unified_cgroup_hierarchy=1 to have them in cgroup v2".into(),
            ));
        }
        reason
    } else if !h.writable(&own) || !h.writable(&own.join("cgroup.subtree_control")) {
        format!("{} is not delegated to you (not writable)", own.display())
    } else {
        let enabled = read(&own, "cgroup.subtree_control");
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        let is_top = layout.v2_mount().is_some_and(|m| m.point == own);
        let procs = read(&own, "cgroup.procs");
        let others = procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()).any(|p| p != h.pid());
        if is_top || missing(need, &enabled).is_empty() {
            return Ok(Placement::V2 { base: own, move_launcher: false });
        }
        if !others {
            return Ok(Placement::V2 { base: own, move_launcher: true });
        }
        format!(
            "other processes share {}, so it cannot hand controllers to a child (cgroup v2 allows no processes in such a cgroup)",
            own.display()
        )
    };
    // As root, the top of the hierarchy, outside any unit.
    if h.is_root()
        && let Some(m) = layout.v2_mount()
    {
        let top = m.point.clone();
        let controllers = read(&top, "cgroup.controllers");
        let have: Vec<&str> = controllers.split_whitespace().collect();
        if missing(need, &have).is_empty() && h.writable(&top.join("cgroup.subtree_control")) {
            return Ok(Placement::V2 { base: top, move_launcher: false });
        }
    }
    Err((why_not_own, DELEGATE_FIX.into()))
}

fn detect_v1(h: &dyn HostView, layout: &Layout, need: &[&str]) -> Result<Placement, (String, String)> {
    // The pids hierarchy always: it tracks the bottle's processes even
    // without a pids limit.
    let mut ctrls = vec!["pids"];
    if need.contains(&"memory") {
        ctrls.push("memory");
    }
    let mut dirs = Vec::new();
    for ctrl in ctrls {
        let dir = layout.v1_own(ctrl).map_err(|r| (r, DELEGATE_FIX.to_owned()))?;
        if !h.writable(&dir) {
            return Err((
                format!("the cgroup v1 {ctrl} hierarchy ({}) is not writable", dir.display()),
                "run as root (cgroup v1 cannot be delegated safely), or use cgroup v2 with delegation".into(),
            ));
        }
        if !dirs.iter().any(|(_, d)| *d == dir) {
            dirs.push((ctrl, dir));
        }
    }
    Ok(Placement::V1 { dirs })
}

/// Every `bot-bottle` parent this process could have created, with its mode.
fn parents_by_mode(h: &dyn HostView) -> Vec<(CgroupMode, PathBuf)> {
    let layout = Layout::read(h);
    let mut out = Vec::new();
    if let Ok(own) = layout.v2_own() {
        out.push((CgroupMode::V2, own.join(PARENT)));
    }
    if let Some(m) = layout.v2_mount() {
        out.push((CgroupMode::V2, m.point.join(PARENT)));
    }
    for ctrl in ["pids", "memory"] {
        if let Ok(d) = layout.v1_own(ctrl) {
            out.push((CgroupMode::V1, d.join(PARENT)));
        }
    }
    let mut seen = BTreeSet::new();
    out.retain(|(_, p)| seen.insert(p.clone()) && p.is_dir());
    out
}

fn parents(h: &dyn HostView) -> Vec<PathBuf> {
    parents_by_mode(h).into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    struct Fake {
        files: BTreeMap<PathBuf, String>,
        writable: Vec<PathBuf>,
        pid: u32,
        root: bool,
    }

    impl HostView for Fake {
        fn read(&self, path: &Path) -> Option<String> {
            self.files.get(path).cloned()
        }
        fn writable(&self, path: &Path) -> bool {
            self.writable.iter().any(|w| path.starts_with(w))
        }
        fn pid(&self) -> u32 {
            self.pid
        }
        fn is_root(&self) -> bool {
            self.root
        }
    }

    fn fake(files: &[(&str, &str)], writable: &[&str], root: bool) -> Fake {
        Fake {
            files: files.iter().map(|(p, t)| (PathBuf::from(p), (*t).to_owned())).collect(),
            writable: writable.iter().map(PathBuf::from).collect(),
            pid: 4242,
            root,
        }
    }

    const BOTH: Limits = Limits { pids: Some(16), memory: Some(64 << 20) };

    /// This very machine: hybrid, an empty unified hierarchy, v1 memory
    /// nested in a cgroup of the container runtime.
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/087e
2:cpu,cpuacct:/
0::/
";

    const V2_MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
29 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const USER_SCOPE: &str = "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope";

    #[test]
    fn parsing_proc_files() {
        let m = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[2],
            Mount {
                root: "/".into(),
                point: "/sys/fs/cgroup/cpu,cpuacct".into(),
                fstype: "cgroup".into(),
                options: "rw,cpu,cpuacct".into()
            }
        );
        let escaped = parse_mountinfo("1 2 0:1 /a\\040b /mnt/x\\040y rw shared:1 master:2 - cgroup2 none rw\n");
        assert_eq!((escaped[0].root.as_str(), escaped[0].point.as_path()), ("/a b", Path::new("/mnt/x y")));
        assert_eq!(
            parse_proc_cgroup(HYBRID_CGROUP),
            vec![
                (vec!["name=systemd".into()], "/".into()),
                (vec!["pids".into()], "/".into()),
                (vec!["memory".into()], "/process_api/087e".into()),
                (vec!["cpu".into(), "cpuacct".into()], "/".into()),
                (vec![], "/".into()),
            ]
        );
        // A cgroup namespace or a bind mount: paths are relative to the mount's root.
        let m = Mount { root: "/a/b".into(), point: "/cg".into(), fstype: "cgroup2".into(), options: String::new() };
        assert_eq!(dir_in(&m, "/a/b/c"), Some(PathBuf::from("/cg/c")));
        assert_eq!(dir_in(&m, "/a/b"), Some(PathBuf::from("/cg")));
        assert_eq!(dir_in(&m, "/elsewhere"), None);
        assert_eq!(dir_in(&m, "/a/bc"), None);
        assert_eq!(own_base(PathBuf::from("/cg/x/bot-bottle/.launcher-7")), PathBuf::from("/cg/x"));
        assert_eq!(own_base(PathBuf::from("/cg/x/bot-bottle/job")), PathBuf::from("/cg/x/bot-bottle/job"));
    }

    #[test]
    fn this_hybrid_host_uses_v1_nested_in_its_own_cgroups() {
        let files = [
            ("/proc/self/mountinfo", HYBRID_MOUNTINFO),
            ("/proc/self/cgroup", HYBRID_CGROUP),
            ("/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n"),
        ];
        let d = detect_on(&fake(&files, &["/sys/fs/cgroup"], true), &BOTH);
        assert_eq!(
            d.placement,
            Some(Placement::V1 {
                dirs: vec![
                    ("pids", "/sys/fs/cgroup/pids".into()),
                    ("memory", "/sys/fs/cgroup/memory/process_api/087e".into())
                ]
            })
        );
        assert_eq!(d.rejected.len(), 1);
        assert!(d.rejected[0].reason.contains("no pids, memory controller") && d.rejected[0].reason.contains("hybrid"));
        assert!(d.to_string().starts_with("cgroup v1: pids /sys/fs/cgroup/pids/bot-bottle, memory "), "{d}");
        // Without limits the unified hierarchy is enough to track and kill.
        let d = detect_on(&fake(&files, &["/sys/fs/cgroup"], true), &Limits::default());
        assert_eq!(d.placement, Some(Placement::V2 { base: "/sys/fs/cgroup/unified".into(), move_launcher: false }));
        // Not root: nothing is writable, nothing is usable.
        let d = detect_on(&fake(&files, &[], false), &BOTH);
        assert_eq!(d.mode(), None);
        assert!(d.rejected[1].reason.contains("not writable") && d.rejected[1].fix.contains("root"), "{d:?}");
    }

    fn v2_user(procs: &str, subtree: &str, writable: &[&str], root: bool) -> Detection {
        let cgroup = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope\n";
        let controllers = format!("{USER_SCOPE}/cgroup.controllers");
        let subtree_control = format!("{USER_SCOPE}/cgroup.subtree_control");
        let cgroup_procs = format!("{USER_SCOPE}/cgroup.procs");
        let files = [
            ("/proc/self/mountinfo", V2_MOUNTINFO),
            ("/proc/self/cgroup", cgroup),
            (controllers.as_str(), "cpu memory pids\n"),
            (subtree_control.as_str(), subtree),
            (cgroup_procs.as_str(), procs),
            ("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n"),
        ];
        detect_on(&fake(&files, writable, root), &BOTH)
    }

    #[test]
    fn v2_delegation_nests_and_moves_a_lone_launcher() {
        let d = v2_user("4242\n", "", &[USER_SCOPE], false);
        assert_eq!(d.placement, Some(Placement::V2 { base: USER_SCOPE.into(), move_launcher: true }));
        assert!(d.rejected.is_empty());
    }

    #[test]
    fn v2_refuses_to_move_other_processes_and_says_how_to_fix_it() {
        let d = v2_user("4242\n1777\n", "", &[USER_SCOPE], false);
        assert_eq!(d.mode(), None);
        assert!(d.rejected[0].reason.starts_with("other processes share"), "{d:?}");
        assert!(d.rejected[0].fix.contains("systemd-run --user --scope -p Delegate=yes"));
        // Root falls back to the top of the hierarchy.
        let d = v2_user("4242\n1777\n", "", &["/sys/fs/cgroup"], true);
        assert_eq!(d.placement, Some(Placement::V2 { base: "/sys/fs/cgroup".into(), move_launcher: false }));
    }

    #[test]
    fn v2_not_delegated() {
        let d = v2_user("4242\n", "", &[], false);
        assert!(d.rejected[0].reason.ends_with("is not delegated to you (not writable)"), "{d:?}");
        assert!(d.rejected[1].reason.contains("no cgroup v1 pids hierarchy"), "{d:?}");
        assert!(d.to_string().starts_with("no usable cgroup: not cgroup v2: "), "{d}");
    }

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
        let limits = Limits { pids: Some(16), memory: None };
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
        let limits = Limits { pids: Some(64), memory: Some(64 << 20) };
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
