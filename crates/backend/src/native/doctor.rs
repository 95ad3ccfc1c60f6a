//! Preflight: can this host run native bottles, and which hardening layers
//! are active. Every problem comes with the command that fixes it.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with a layer missing or a caveat.
    Warn,
    /// Native bottles cannot run until this is fixed.
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

/// What the checks read; injectable so tests can describe other hosts.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    pub read: &'a dyn Fn(&str) -> Option<String>,
    pub exists: &'a dyn Fn(&str) -> bool,
    pub is_root: bool,
}

impl std::fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("is_root", &self.is_root).finish_non_exhaustive()
    }
}

/// The real host.
pub fn this_host() -> Vec<Check> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let exists = |p: &str| std::path::Path::new(p).exists();
    checks(&Host { read: &read, exists: &exists, is_root: nix::unistd::geteuid().is_root() })
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

    // landlock: a second layer, not applied yet.
    let lsm = (h.read)("/sys/kernel/security/lsm").unwrap_or_default();
    if lsm.split(',').any(|l| l.trim() == "landlock") {
        push("landlock", Status::Warn, "available in the kernel; bot-bottle does not apply it yet".into(), None);
    } else {
        push(
            "landlock",
            Status::Warn,
            "not available (no landlock in the active LSMs); the bottle's mount namespace is the filesystem boundary"
                .into(),
            Some("boot with lsm=...,landlock to have it when bot-bottle applies it".into()),
        );
    }

    // Resource limits: cgroups when delegated, else rlimits.
    let v2 = (h.exists)("/sys/fs/cgroup/cgroup.controllers");
    push(
        "resource limits",
        Status::Warn,
        if v2 {
            "rlimits (process count, data size); cgroup v2 is present but bot-bottle does not use it yet".into()
        } else {
            "rlimits (process count, data size); no cgroup v2 hierarchy to delegate".into()
        },
        None,
    );

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
        let files: Vec<(String, String)> = files.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
        let f2 = files.clone();
        let read = move |p: &str| files.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone());
        let exists = move |p: &str| f2.iter().any(|(k, _)| k == p);
        checks(&Host { read: &read, exists: &exists, is_root })
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
}
