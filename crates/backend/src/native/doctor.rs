//! Preflight: can this host run native bottles, and which hardening layers
//! are active. Every problem comes with the command that fixes it.

use std::path::Path;

use super::cgroup::{self, CgroupMode, HostView};
use super::landlock::{self, NotEnforced};
use super::spec::Limits;

pub use crate::check::{Check, Status};

/// What the checks read; injectable so tests can describe other hosts.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    pub read: &'a dyn Fn(&str) -> Option<String>,
    pub exists: &'a dyn Fn(&str) -> bool,
    pub writable: &'a dyn Fn(&str) -> bool,
    pub is_root: bool,
    pub pid: u32,
    /// The kernel's landlock ABI, by the syscall (`/sys/kernel/security`
    /// is often not mounted, in containers especially).
    pub landlock: Result<u32, NotEnforced>,
}

impl std::fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("is_root", &self.is_root).field("landlock", &self.landlock).finish_non_exhaustive()
    }
}

impl HostView for Host<'_> {
    fn read(&self, path: &Path) -> Option<String> {
        path.to_str().and_then(|p| (self.read)(p))
    }
    fn writable(&self, path: &Path) -> bool {
        path.to_str().is_some_and(|p| (self.writable)(p))
    }
    fn pid(&self) -> u32 {
        self.pid
    }
    fn is_root(&self) -> bool {
        self.is_root
    }
}

/// The real host.
pub fn this_host() -> Vec<Check> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let exists = |p: &str| std::path::Path::new(p).exists();
    let writable = |p: &str| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    checks(&Host {
        read: &read,
        exists: &exists,
        writable: &writable,
        is_root: nix::unistd::geteuid().is_root(),
        pid: std::process::id(),
        landlock: landlock::probe(),
    })
}

fn num(h: &Host<'_>, p: &str) -> Option<i64> {
    (h.read)(p).and_then(|s| s.trim().parse().ok())
}

pub fn checks(h: &Host<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |name, status, detail: String, fix: Option<String>| out.push(Check { name, status, detail, fix });

    // User namespaces: everything else stands on them.
    let max = num(h, "/proc/sys/user/max_user_namespaces");
    let debian = num(h, "/proc/sys/kernel/unprivileged_userns_clone");
    let apparmor = num(h, "/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    if max == Some(0) {
        push(
            "user namespaces",
            Status::Fail,
            "disabled (user.max_user_namespaces = 0)".into(),
            Some("sudo sysctl -w user.max_user_namespaces=15000 (and set it in /etc/sysctl.d/ to keep it)".into()),
        );
    } else if !h.is_root && debian == Some(0) {
        push(
            "user namespaces",
            Status::Fail,
            "unprivileged user namespaces are off (kernel.unprivileged_userns_clone = 0)".into(),
            Some("sudo sysctl -w kernel.unprivileged_userns_clone=1 (and in /etc/sysctl.d/)".into()),
        );
    } else if !h.is_root && apparmor == Some(1) {
        push(
            "user namespaces",
            Status::Fail,
            "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+, kernel.apparmor_restrict_unprivileged_userns = 1)".into(),
            Some(
                "allow bot-bottle with an AppArmor profile (`userns,` for its path in /etc/apparmor.d/bot-bottle), \
                 or sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
                    .into(),
            ),
        );
    } else {
        let who = if h.is_root {
            "as root: bottles map to host ids 0x70000000+"
        } else {
            "unprivileged: bottles map to your own uid"
        };
        push("user namespaces", Status::Ok, format!("available ({who})"), None);
    }

    // seccomp: the filter every agent runs under.
    match (h.read)("/proc/self/status") {
        Some(s) if s.lines().any(|l| l.starts_with("Seccomp:")) => push(
            "seccomp",
            Status::Ok,
            "active: ptrace, mount, new namespaces, bpf, io_uring, keyrings, modules ... refused".into(),
            None,
        ),
        _ => push(
            "seccomp",
            Status::Fail,
            "the kernel has no seccomp filter support".into(),
            Some("use a kernel built with CONFIG_SECCOMP_FILTER".into()),
        ),
    }

    // landlock: a second layer under the mount namespace.
    match h.landlock {
        Ok(abi) => {
            let missing = landlock::missing_features(abi);
            if missing.is_empty() {
                push(
                    "landlock",
                    Status::Ok,
                    format!(
                        "enforced on the agent and every command in a bottle (ABI {abi}): filesystem rules, device ioctl, signal and abstract socket scoping"
                    ),
                    None,
                );
            } else {
                push(
                    "landlock",
                    Status::Warn,
                    format!("partially enforced (ABI {abi}): without {}", missing.join(", ")),
                    Some("Linux 6.12 or later (landlock ABI 6) enforces all of it".into()),
                );
            }
        }
        Err(why) => {
            let fix = match why {
                NotEnforced::NotEnabled => match (h.read)("/sys/kernel/security/lsm") {
                    Some(lsm) if !lsm.trim().is_empty() => {
                        format!("boot with lsm={},landlock (the kernel command line)", lsm.trim())
                    }
                    _ => "add landlock to the lsm= boot parameter (e.g. lsm=landlock,lockdown,yama,integrity,apparmor)"
                        .into(),
                },
                _ => "use Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK=y (6.12+ for all of it)".into(),
            };
            push(
                "landlock",
                Status::Warn,
                format!("not enforced: {why}; the bottle's mount namespace is the only filesystem boundary"),
                Some(fix),
            );
        }
    }

    // Resource limits: cgroups where this user may create them, else rlimits.
    let d = cgroup::detect_on(h, &Limits { pids: Some(1), memory: Some(1), cpus: Some(1000), disk: None });
    let why_not = d.rejected().iter().map(|r| format!("not {}: {}", r.mode, r.reason)).collect::<Vec<_>>();
    match (d.mode(), d.placement()) {
        (Some(mode), Some(place)) => {
            let mut detail =
                format!("{place}: pids and memory limits per bottle, everything inside killed when it ends");
            if !why_not.is_empty() {
                detail.push_str(&format!(" ({})", why_not.join("; ")));
            }
            let better =
                d.rejected().first().filter(|_| mode == CgroupMode::V1).map(|r| format!("for cgroup v2: {}", r.fix));
            push("resource limits", Status::Ok, detail, better);
        }
        _ => push(
            "resource limits",
            Status::Warn,
            format!(
                "rlimits only (the process limit counts every process of the agent's host uid, across all your bottles; the memory limit caps each process's data size, which runtimes that reserve large address spaces exceed): {}",
                why_not.join("; ")
            ),
            Some(d.rejected().iter().map(|r| r.fix.as_str()).collect::<Vec<_>>().join("; or ")),
        ),
    }

    // Loopback inside a fresh network namespace is brought up with `ip`.
    if ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].iter().any(|p| (h.exists)(p)) {
        push("iproute2", Status::Ok, "`ip` is present (brings loopback up inside)".into(), None);
    } else {
        push("iproute2", Status::Fail, "no `ip` program".into(), Some("sudo apt-get install iproute2".into()));
    }
    out
}

/// Whether native bottles can run.
pub fn ready(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)], is_root: bool) -> Vec<Check> {
        host_with(files, &[], is_root, Ok(7))
    }

    /// `writable`: path prefixes this user may write.
    fn host_with(
        files: &[(&str, &str)],
        writable: &[&str],
        is_root: bool,
        landlock: Result<u32, NotEnforced>,
    ) -> Vec<Check> {
        let files: Vec<(String, String)> = files.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
        let f2 = files.clone();
        let read = move |p: &str| files.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone());
        let exists = move |p: &str| f2.iter().any(|(k, _)| k == p);
        let writable = |p: &str| writable.iter().any(|w| Path::new(p).starts_with(w));
        checks(&Host { read: &read, exists: &exists, writable: &writable, is_root, pid: 4242, landlock })
    }

    fn find<'a>(c: &'a [Check], name: &str) -> &'a Check {
        c.iter().find(|c| c.name == name).expect("check present")
    }

    const OK: &[(&str, &str)] = &[
        ("/proc/sys/user/max_user_namespaces", "63000"),
        ("/proc/self/status", "Name: x\nSeccomp:\t0\n"),
        ("/usr/sbin/ip", ""),
    ];

    #[test]
    fn a_good_host_is_ready() {
        let c = host(OK, false);
        assert!(ready(&c), "{c:?}");
        assert_eq!(c[0].status, Status::Ok);
    }

    #[test]
    fn ubuntu_apparmor_restriction_says_how_to_fix_it() {
        let mut f = OK.to_vec();
        f.push(("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"));
        let c = host(&f, false);
        assert!(!ready(&c));
        assert!(
            c[0].detail.contains("AppArmor")
                && c[0].fix.as_deref().is_some_and(|x| x.contains("apparmor_restrict_unprivileged_userns=0")),
            "{c:?}"
        );
        // Root is not affected by the restriction.
        assert!(ready(&host(&f, true)));
    }

    #[test]
    fn disabled_user_namespaces_and_missing_tools_fail() {
        let mut f = OK.to_vec();
        f[0] = ("/proc/sys/user/max_user_namespaces", "0");
        assert!(!ready(&host(&f, true)));
        let mut f = OK.to_vec();
        f.push(("/proc/sys/kernel/unprivileged_userns_clone", "0"));
        assert!(!ready(&host(&f, false)));
        let f: Vec<_> = OK.iter().copied().filter(|(p, _)| !p.ends_with("/ip")).collect();
        let c = host(&f, true);
        assert!(c.iter().any(|x| x.name == "iproute2" && x.status == Status::Fail));
    }

    #[test]
    fn landlock_is_reported_by_its_abi() {
        let c = host_with(OK, &[], false, Ok(7));
        assert_eq!(find(&c, "landlock").status, Status::Ok);
        assert!(find(&c, "landlock").detail.starts_with("enforced on the agent and every command in a bottle (ABI 7)"));
        let c = host_with(OK, &[], false, Ok(4));
        let l = find(&c, "landlock");
        assert_eq!(
            (l.status, l.detail.as_str()),
            (Status::Warn, "partially enforced (ABI 4): without device ioctl, signal and abstract unix socket scoping")
        );
        // Built in, not enabled: the fix keeps the host's other LSMs.
        let mut f = OK.to_vec();
        f.push(("/sys/kernel/security/lsm", "lockdown,capability,yama,apparmor\n"));
        let c = host_with(&f, &[], false, Err(NotEnforced::NotEnabled));
        let l = find(&c, "landlock");
        assert_eq!(l.status, Status::Warn);
        assert_eq!(
            l.fix.as_deref(),
            Some("boot with lsm=lockdown,capability,yama,apparmor,landlock (the kernel command line)")
        );
        let c = host_with(OK, &[], false, Err(NotEnforced::NotInKernel));
        assert!(find(&c, "landlock").fix.as_deref().is_some_and(|f| f.contains("CONFIG_SECURITY_LANDLOCK")));
        assert!(ready(&c), "landlock is a second layer: its absence does not stop bottles");
    }

    const HYBRID: &[(&str, &str)] = &[
        (
            "/proc/self/mountinfo",
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        ),
        ("/proc/self/cgroup", "8:pids:/\n4:memory:/process_api/087e\n0::/\n"),
        ("/sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n"),
    ];

    #[test]
    fn hybrid_cgroups_as_root_use_v1_and_say_why_not_v2() {
        let c = host_with(&[OK, HYBRID].concat(), &["/sys/fs/cgroup"], true, Ok(7));
        let r = find(&c, "resource limits");
        assert_eq!(r.status, Status::Ok);
        assert_eq!(
            r.detail,
            "cgroup v1: pids /sys/fs/cgroup/pids/bot-bottle, memory /sys/fs/cgroup/memory/process_api/087e/bot-bottle: \
             pids and memory limits per bottle, everything inside killed when it ends (not cgroup v2: /sys/fs/cgroup/unified offers no \
             pids, memory controller (available: hugetlb): they are bound to cgroup v1 hierarchies (hybrid mode))"
        );
        assert_eq!(
            r.fix.as_deref(),
            Some("for cgroup v2: boot with systemd.unified_cgroup_hierarchy=1 to have them in cgroup v2")
        );
        // The same host, not root: rlimits only, and why.
        let r = host_with(&[OK, HYBRID].concat(), &[], false, Ok(7));
        let r = find(&r, "resource limits");
        assert_eq!(r.status, Status::Warn);
        assert!(
            r.detail.contains("not cgroup v1: the cgroup v1 pids hierarchy (/sys/fs/cgroup/pids) is not writable"),
            "{r:?}"
        );
        assert!(r.fix.as_deref().is_some_and(|f| f.contains("run as root")), "{r:?}");
    }

    const V2_SESSION: &[(&str, &str)] = &[
        ("/proc/self/mountinfo", "29 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"),
        ("/proc/self/cgroup", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/vte.scope\n"),
        (
            "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/vte.scope/cgroup.controllers",
            "memory pids\n",
        ),
        (
            "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/vte.scope/cgroup.procs",
            "1777\n4242\n",
        ),
    ];

    #[test]
    fn v2_in_a_shared_terminal_scope_says_to_use_systemd_run() {
        let c = host_with(
            &[OK, V2_SESSION].concat(),
            &["/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service"],
            false,
            Ok(7),
        );
        let r = find(&c, "resource limits");
        assert_eq!(r.status, Status::Warn);
        assert!(r.detail.starts_with("rlimits only") && r.detail.contains("other processes share"), "{r:?}");
        assert!(
            r.fix.as_deref().is_some_and(|f| f.starts_with(
                "run bot-bottle in a delegated scope of its own: systemd-run --user --scope -p Delegate=yes"
            )),
            "{r:?}"
        );
        // Alone in a delegated scope (as `systemd-run --scope` makes it): v2.
        let mut f = [OK, V2_SESSION].concat();
        f.retain(|(p, _)| !p.ends_with("cgroup.procs"));
        f.push((
            "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/vte.scope/cgroup.procs",
            "4242\n",
        ));
        let c = host_with(&f, &["/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service"], false, Ok(7));
        let r = find(&c, "resource limits");
        assert_eq!((r.status, r.fix.as_deref()), (Status::Ok, None));
        assert!(r.detail.starts_with("cgroup v2: /sys/fs/cgroup/user.slice/"), "{r:?}");
    }
}
