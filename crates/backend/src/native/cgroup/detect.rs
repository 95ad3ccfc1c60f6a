//! Where a bottle's cgroup would go on this host: a pure function of what
//! the host shows (`/proc/self/mountinfo`, `/proc/self/cgroup`, the
//! controllers and what is writable), so that `doctor` and the unit tests
//! can describe other hosts.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::{CgroupMode, PARENT, needed};
use crate::native::spec::Limits;

/// What detection reads; the OS boundary.
pub(crate) trait HostView {
    fn read(&self, path: &Path) -> Option<String>;
    fn writable(&self, path: &Path) -> bool;
    fn pid(&self) -> u32;
    fn is_root(&self) -> bool;
}

pub(super) struct RealHost;

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
    /// `cpu`: the cpu controller is on offer there.
    V2 { base: PathBuf, move_launcher: bool, cpu: bool },
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
    pub(super) placement: Option<Placement>,
    pub(super) rejected: Vec<Rejection>,
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

    /// Which of `limits` a bottle's cgroup would enforce here; the rest
    /// fall back to rlimits or are not enforced at all.
    pub fn enforced(&self, limits: &Limits) -> Limits {
        let (pids, memory, cpu) = match &self.placement {
            None => (false, false, false),
            // Detection required the controllers the pids and memory limits need.
            Some(Placement::V2 { cpu, .. }) => (true, true, *cpu),
            Some(Placement::V1 { dirs }) => {
                let has = |c: &str| dirs.iter().any(|(d, _)| *d == c);
                (has("pids"), has("memory"), has("cpu"))
            }
        };
        Limits {
            pids: limits.pids.filter(|_| pids),
            memory: limits.memory.filter(|_| memory),
            cpus: limits.cpus.filter(|_| cpu),
            disk: None,
        }
    }

    /// Why each better placement was not usable, best first.
    pub fn rejected(&self) -> &[Rejection] {
        &self.rejected
    }

    /// Where bottles would go, in a few words.
    pub fn placement(&self) -> Option<String> {
        self.placement.as_ref().map(|p| match p {
            Placement::V2 { base, move_launcher: false, .. } => format!("cgroup v2: {}", base.join(PARENT).display()),
            Placement::V2 { base, move_launcher: true, .. } => {
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
    match detect_v1(h, &layout, &need, limits.cpus.is_some()) {
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
            return Ok(Placement::V2 { base: own, move_launcher: false, cpu: have.contains(&"cpu") });
        }
        if !others {
            return Ok(Placement::V2 { base: own, move_launcher: true, cpu: have.contains(&"cpu") });
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
            return Ok(Placement::V2 { base: top, move_launcher: false, cpu: have.contains(&"cpu") });
        }
    }
    Err((why_not_own, DELEGATE_FIX.into()))
}

fn detect_v1(h: &dyn HostView, layout: &Layout, need: &[&str], wants_cpu: bool) -> Result<Placement, (String, String)> {
    // The pids hierarchy always: it tracks the bottle's processes even
    // without a pids limit.
    let mut ctrls = vec!["pids"];
    if need.contains(&"memory") {
        ctrls.push("memory");
    }
    let mut dirs = Vec::new();
    // The cpu hierarchy only adds the cpus limit: where it is missing or
    // not writable the bottle still gets the others (and a warning).
    if wants_cpu
        && let Ok(dir) = layout.v1_own("cpu")
        && h.writable(&dir)
    {
        ctrls.push("cpu");
    }
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
pub(super) fn parents_by_mode(h: &dyn HostView) -> Vec<(CgroupMode, PathBuf)> {
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

pub(super) fn parents(h: &dyn HostView) -> Vec<PathBuf> {
    parents_by_mode(h).into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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

    const BOTH: Limits = Limits { pids: Some(16), memory: Some(64 << 20), cpus: None, disk: None };

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
        assert_eq!(
            d.placement,
            Some(Placement::V2 { base: "/sys/fs/cgroup/unified".into(), move_launcher: false, cpu: false })
        );
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
        assert_eq!(d.placement, Some(Placement::V2 { base: USER_SCOPE.into(), move_launcher: true, cpu: true }));
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
        assert_eq!(d.placement, Some(Placement::V2 { base: "/sys/fs/cgroup".into(), move_launcher: false, cpu: true }));
    }

    #[test]
    fn v2_not_delegated() {
        let d = v2_user("4242\n", "", &[], false);
        assert!(d.rejected[0].reason.ends_with("is not delegated to you (not writable)"), "{d:?}");
        assert!(d.rejected[1].reason.contains("no cgroup v1 pids hierarchy"), "{d:?}");
        assert!(d.to_string().starts_with("no usable cgroup: not cgroup v2: "), "{d}");
    }
}
