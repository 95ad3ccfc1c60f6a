//! Landlock: a second filesystem boundary under the agent, where the kernel
//! has it.
//!
//! The bottle's mount namespace is the first boundary: the agent sees only
//! what stage b mounted. Landlock restricts what the agent may do with what
//! it sees (no writing /run, no ioctl on anything but terminals) and scopes
//! signals and abstract unix sockets to the agent's own processes, so a
//! mistake in the mount setup is not by itself an escape.
//!
//! Applied in stage c, in the bottle's final root, after `no_new_privs` and
//! before seccomp and exec (the seccomp filter does not refuse the landlock
//! syscalls, but the rules must be in place before any agent code runs).
//! Best effort: a kernel with an older ABI gets what it supports, and
//! [`LandlockStatus`] says honestly what that was.
//!
//! Network rules are deliberately not used. Landlock filters TCP by port
//! only, and the bottle has its own network namespace with nothing but
//! loopback: every port the agent can reach is inside the bottle (the
//! forwarded sidecar ports, or servers it started itself, which test suites
//! and dev servers legitimately connect to). Restricting connect would break
//! those and protect nothing the namespace does not already protect.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, RestrictSelf, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, make_bitflags,
};

/// The newest ABI whose rights are requested (and tested): 6, signal and
/// abstract-socket scoping. ABI 7 adds only audit-log flags; the rights of
/// later ABIs (UDP, connecting to unix sockets by path) are not requested
/// until they can be tested.
const TARGET: ABI = ABI::V6;

/// What each ABI short of [`TARGET`] lacks, by the ABI that added it.
const FEATURES: &[(u32, &str)] = &[
    (2, "cross-directory rename and link (always refused without it)"),
    (3, "truncate"),
    (5, "device ioctl"),
    (6, "signal and abstract unix socket scoping"),
];

/// Paths the agent may use, by kind of use; everything else is denied.
/// Paths that do not exist are skipped. The agent's inherited standard
/// streams are always allowed too, in the direction they were opened, so
/// that `echo > /dev/stderr` works whatever they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsRules {
    /// Listing directory entries only (the root, so that `ls /` works).
    pub list: Vec<PathBuf>,
    /// Reading and executing: the system directories.
    pub read_exec: Vec<PathBuf>,
    /// Reading only.
    pub read: Vec<PathBuf>,
    /// Everything but making device nodes: reading, writing, executing,
    /// creating, removing, renaming, truncating.
    pub read_write: Vec<PathBuf>,
    /// Device nodes (or a directory of them): reading, writing, ioctl.
    pub devices: Vec<PathBuf>,
}

impl FsRules {
    /// The rules for the bottle's layout (see `init::stage_b`).
    pub fn bottle(home: &Path, workspace: Option<&Path>) -> Self {
        let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        let mut read_write = paths(&["/tmp", "/dev/shm"]);
        read_write.push(home.to_owned());
        read_write.extend(workspace.map(Path::to_owned));
        FsRules {
            list: paths(&["/"]),
            read_exec: paths(&["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"]),
            read: paths(&["/proc", "/run/bot-bottle"]),
            read_write,
            devices: paths(&[
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
                "/dev/tty",
                "/dev/ptmx",
                "/dev/pts",
            ]),
        }
    }
}

/// What [`restrict`] enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LandlockStatus {
    /// Every rule and scope.
    Full { abi: u32 },
    /// What this kernel's ABI supports; `missing` names the rest.
    Partial { abi: u32, missing: Vec<&'static str> },
    /// Nothing: the mount namespace is the only filesystem boundary.
    NotEnforced(NotEnforced),
}

/// Why landlock is not enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotEnforced {
    /// The kernel is older than 5.13 or built without landlock (`ENOSYS`).
    NotInKernel,
    /// Built in but not enabled at boot (`EOPNOTSUPP`): not in `lsm=`.
    NotEnabled,
    /// Supported, yet the kernel took none of the rules.
    Refused,
}

impl fmt::Display for NotEnforced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotEnforced::NotInKernel => "the kernel has no landlock (Linux 5.13+ with CONFIG_SECURITY_LANDLOCK)",
            NotEnforced::NotEnabled => "landlock is built in but not enabled at boot (not in lsm=)",
            NotEnforced::Refused => "the kernel enforced none of the rules",
        })
    }
}

impl fmt::Display for LandlockStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LandlockStatus::Full { abi } => write!(f, "enforced (ABI {abi})"),
            LandlockStatus::Partial { abi, missing } if missing.is_empty() => {
                write!(f, "partially enforced (ABI {abi})")
            }
            LandlockStatus::Partial { abi, missing } => {
                write!(f, "partially enforced (ABI {abi}, without {})", missing.join(", "))
            }
            LandlockStatus::NotEnforced(why) => write!(f, "not enforced: {why}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("opening {path} for a landlock rule")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("inspecting standard stream {fd} for a landlock rule")]
    Stream {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("applying landlock")]
    Ruleset(#[source] landlock::RulesetError),
}

/// The running kernel's landlock ABI, without restricting anything.
pub fn probe() -> Result<u32, NotEnforced> {
    match RestrictSelf::default().no_new_privs(false).apply() {
        Ok(s) => match s.landlock {
            landlock::LandlockStatus::Available { effective_abi, kernel_abi } => {
                Ok(kernel_abi.map_or(effective_abi as u32, |k| k.unsigned_abs()))
            }
            landlock::LandlockStatus::NotEnabled => Err(NotEnforced::NotEnabled),
            landlock::LandlockStatus::NotImplemented => Err(NotEnforced::NotInKernel),
        },
        Err(_) => Err(NotEnforced::NotInKernel),
    }
}

/// What a kernel with landlock ABI `abi` lacks of what bot-bottle asks for.
pub(crate) fn missing_features(abi: u32) -> Vec<&'static str> {
    FEATURES.iter().filter(|(since, _)| *since > abi).map(|(_, what)| *what).collect()
}

const LIST: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadDir});
const READ: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadFile | ReadDir});
const READ_EXEC: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadFile | ReadDir | Execute});
const DEVICE: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadFile | WriteFile | IoctlDev | ReadDir});

/// Restricts the calling thread, and every process it starts from now on,
/// to `rules` (and sets `no_new_privs`, which landlock requires).
pub fn restrict(rules: &FsRules) -> Result<LandlockStatus, LandlockError> {
    let all = AccessFs::from_all(TARGET);
    let read_write = all & !make_bitflags!(AccessFs::{MakeChar | MakeBlock});
    let mut grants: Vec<PathBeneath<OwnedFd>> = Vec::new();
    for (paths, access) in [
        (&rules.list, LIST),
        (&rules.read_exec, READ_EXEC),
        (&rules.read, READ),
        (&rules.read_write, read_write),
        (&rules.devices, DEVICE),
    ] {
        for path in paths {
            if let Some(g) = grant(path, access)? {
                grants.push(g);
            }
        }
    }
    for (fd, stream) in [
        (0, std::io::stdin().as_fd().try_clone_to_owned()),
        (1, std::io::stdout().as_fd().try_clone_to_owned()),
        (2, std::io::stderr().as_fd().try_clone_to_owned()),
    ] {
        // A closed standard stream has nothing to grant.
        let Ok(stream) = stream else { continue };
        if let Some(access) = stream_access(stream.as_fd()).map_err(|source| LandlockError::Stream { fd, source })? {
            grants.push(PathBeneath::new(stream, access));
        }
    }
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.scope(Scope::from_all(TARGET)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(grants.into_iter().map(Ok::<_, landlock::RulesetError>)))
        .and_then(|r| r.restrict_self())
        .map_err(LandlockError::Ruleset)?;
    Ok(status_of(&status.ruleset, status.landlock))
}

/// A rule for `path`, or none if it does not exist. Rights that only make
/// sense on directories are dropped for files.
fn grant(path: &Path, access: BitFlags<AccessFs>) -> Result<Option<PathBeneath<OwnedFd>>, LandlockError> {
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(LandlockError::Open { path: path.to_owned(), source: e.into() }),
    };
    let is_dir = nix::sys::stat::fstat(&fd)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(|e| LandlockError::Open { path: path.to_owned(), source: e.into() })?;
    let access = if is_dir { access } else { access & AccessFs::from_file(TARGET) };
    Ok(Some(PathBeneath::new(fd, access)))
}

/// The rights a standard stream gets: those of its open mode, on terminals
/// and regular files only (pipes and sockets need no path rules).
fn stream_access(fd: BorrowedFd<'_>) -> std::io::Result<Option<BitFlags<AccessFs>>> {
    let st = nix::sys::stat::fstat(fd)?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFCHR && kind != libc::S_IFREG {
        return Ok(None);
    }
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let mut access = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => make_bitflags!(AccessFs::{ReadFile}),
        libc::O_WRONLY => make_bitflags!(AccessFs::{WriteFile | Truncate}),
        _ => make_bitflags!(AccessFs::{ReadFile | WriteFile | Truncate}),
    };
    if kind == libc::S_IFCHR {
        access |= AccessFs::IoctlDev;
    }
    Ok(Some(access))
}

/// Maps the crate's report to ours.
fn status_of(ruleset: &RulesetStatus, kernel: landlock::LandlockStatus) -> LandlockStatus {
    let abi = match kernel {
        landlock::LandlockStatus::NotImplemented => return LandlockStatus::NotEnforced(NotEnforced::NotInKernel),
        landlock::LandlockStatus::NotEnabled => return LandlockStatus::NotEnforced(NotEnforced::NotEnabled),
        landlock::LandlockStatus::Available { effective_abi, .. } => effective_abi as u32,
    };
    match ruleset {
        RulesetStatus::FullyEnforced => LandlockStatus::Full { abi },
        RulesetStatus::PartiallyEnforced => LandlockStatus::Partial { abi, missing: missing_features(abi) },
        RulesetStatus::NotEnforced => LandlockStatus::NotEnforced(NotEnforced::Refused),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
    use std::process::{Command, Stdio};

    use landlock::{ABI, LandlockStatus as Kernel, RulesetStatus};

    use super::*;

    const MODE: &str = "BOT_BOTTLE_TEST_LANDLOCK";

    #[test]
    fn status_mapping_is_honest() {
        let available = |abi| Kernel::Available { effective_abi: abi, kernel_abi: None };
        assert_eq!(
            status_of(&RulesetStatus::NotEnforced, Kernel::NotImplemented),
            LandlockStatus::NotEnforced(NotEnforced::NotInKernel)
        );
        assert_eq!(
            status_of(&RulesetStatus::NotEnforced, Kernel::NotEnabled),
            LandlockStatus::NotEnforced(NotEnforced::NotEnabled)
        );
        assert_eq!(status_of(&RulesetStatus::FullyEnforced, available(ABI::V7)), LandlockStatus::Full { abi: 7 });
        assert_eq!(
            status_of(&RulesetStatus::PartiallyEnforced, available(ABI::V4)),
            LandlockStatus::Partial {
                abi: 4,
                missing: vec!["device ioctl", "signal and abstract unix socket scoping"]
            }
        );
        assert_eq!(
            status_of(&RulesetStatus::NotEnforced, available(ABI::V3)),
            LandlockStatus::NotEnforced(NotEnforced::Refused)
        );
        assert_eq!(missing_features(1).len(), 4);
        assert!(missing_features(6).is_empty());
        assert_eq!(
            LandlockStatus::Partial { abi: 5, missing: missing_features(5) }.to_string(),
            "partially enforced (ABI 5, without signal and abstract unix socket scoping)"
        );
    }

    #[test]
    fn the_bottle_rules_cover_its_layout() {
        let r = FsRules::bottle(Path::new("/home/agent"), Some(Path::new("/workspace")));
        assert_eq!(r.read_write, ["/tmp", "/dev/shm", "/home/agent", "/workspace"].map(PathBuf::from));
        assert!(
            r.read.contains(&PathBuf::from("/run/bot-bottle")) && !r.read_write.iter().any(|p| p.starts_with("/run"))
        );
        assert!(r.devices.contains(&PathBuf::from("/dev/pts")));
        assert_eq!(FsRules::bottle(Path::new("/h"), None).read_write.len(), 3);
    }

    /// Runs [`reexec_helper`] in a fresh process of this test binary.
    fn reexec(mode: &str, home: &Path, outside: &Path, stderr: Stdio) -> Vec<String> {
        let exe = std::env::current_exe().expect("test binary");
        let out = Command::new(exe)
            .args(["--exact", "native::landlock::tests::reexec_helper", "--nocapture", "--test-threads=1"])
            .env(MODE, format!("{mode}\n{}\n{}", home.display(), outside.display()))
            .stdin(Stdio::null())
            .stderr(stderr)
            .output()
            .expect("re-exec");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "helper failed: {text}");
        text.lines().filter_map(|l| l.strip_prefix("check ")).map(str::to_owned).collect()
    }

    fn result<T>(r: std::io::Result<T>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(e) => match e.raw_os_error() {
                Some(libc::EACCES) => "EACCES".into(),
                Some(libc::EPERM) => "EPERM".into(),
                _ => format!("{e}"),
            },
        }
    }

    /// Not a test on its own: the confined side of the tests below, when
    /// re-executed with `MODE` set. Applies the rules in this thread (the
    /// one that runs the test) and reports each check on stdout.
    #[test]
    fn reexec_helper() {
        let Ok(args) = std::env::var(MODE) else { return };
        let mut args = args.lines();
        let (mode, home, outside) = (args.next().unwrap_or(""), args.next().unwrap_or(""), args.next().unwrap_or(""));
        let (home, outside) = (PathBuf::from(home), PathBuf::from(outside));
        let mut report = Vec::new();
        let mut check = |name: &str, r: String| report.push(format!("check {name}={r}"));
        if mode == "nosys" {
            // A kernel without landlock, as the filter makes it look.
            let mut rules = std::collections::BTreeMap::new();
            rules.insert(libc::SYS_landlock_create_ruleset, vec![]);
            let filter = seccompiler::SeccompFilter::new(
                rules,
                seccompiler::SeccompAction::Allow,
                seccompiler::SeccompAction::Errno(libc::ENOSYS as u32),
                std::env::consts::ARCH.try_into().expect("arch"),
            )
            .expect("filter");
            let prog: seccompiler::BpfProgram = filter.try_into().expect("bpf");
            nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
            seccompiler::apply_filter(&prog).expect("seccomp");
        }
        let mut rules = FsRules::bottle(&home, None);
        // The test's temporary directories are under /tmp: leave it out so
        // that `outside` really is outside.
        rules.read_write.retain(|p| p != Path::new("/tmp"));
        match restrict(&rules) {
            Ok(s) => check("status", format!("{s}")),
            Err(e) => check("status", format!("error: {e}")),
        }
        check("read /etc/passwd", result(std::fs::read("/etc/passwd")));
        check("list /", result(std::fs::read_dir("/")));
        check("read outside", result(std::fs::read(outside.join("secret"))));
        check("write outside", result(std::fs::write(outside.join("new"), "x")));
        check("write /dev/null", result(std::fs::write("/dev/null", "x")));
        let in_home = (|| {
            std::fs::create_dir(home.join("d"))?;
            std::fs::write(home.join("d/f"), "x")?;
            std::fs::rename(home.join("d/f"), home.join("g"))?;
            std::os::unix::fs::symlink("g", home.join("l"))?;
            std::fs::OpenOptions::new().write(true).truncate(true).open(home.join("g"))?;
            std::fs::remove_file(home.join("l"))?;
            std::fs::remove_dir(home.join("d"))
        })();
        check("create, rename, remove in home", result(in_home));
        // A shell: exec from /usr, re-opening the inherited stderr (a file
        // outside every rule) through /dev/stderr.
        let sh = Command::new("sh").args(["-c", "echo via-sh >/dev/stderr && cat /etc/passwd >/dev/null"]).status();
        check(
            "sh reopening /dev/stderr",
            result(sh.and_then(|s| s.success().then_some(()).ok_or(std::io::Error::other(s.to_string())))),
        );
        // A terminal program: a new pty, and `stty` asking its size.
        let ws = nix::pty::Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
        let tty = nix::pty::openpty(Some(&ws), None).map_err(std::io::Error::from).and_then(|pty| {
            let out = Command::new("stty").arg("size").stdin(Stdio::from(pty.slave)).output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        });
        check("stty size on a new pty", tty.unwrap_or_else(|e| e.to_string()));
        // Scoping: the parent test process is outside this domain.
        let parent = nix::unistd::getppid();
        check("signal the parent", result(nix::sys::signal::kill(parent, None).map_err(std::io::Error::from)));
        let name = format!("bot-bottle-test-{}", parent.as_raw());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        check("connect to the parent's abstract socket", result(UnixStream::connect_addr(&addr)));
        // After libtest's own `test … ` on the same line.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out);
        for line in report {
            let _ = writeln!(out, "{line}");
        }
    }

    fn available() -> Option<u32> {
        match probe() {
            Ok(abi) => Some(abi),
            Err(why) => {
                let _ = writeln!(std::io::stderr(), "skipping: landlock is unavailable here: {why}");
                None
            }
        }
    }

    #[test]
    fn restrict_confines_a_process_to_its_rules() {
        let Some(abi) = available() else { return };
        let home = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), "s").expect("write");
        let stderr = std::fs::File::create(outside.path().join("stderr")).expect("stderr file");
        let name = format!("bot-bottle-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let _listener = UnixListener::bind_addr(&addr).expect("abstract socket");
        let got = reexec("restrict", home.path(), outside.path(), stderr.into());
        let scoped = if abi >= 6 { "EPERM" } else { "ok" };
        let status = if abi >= 6 { format!("enforced (ABI {abi})") } else { format!("{}", restricted(abi)) };
        let want = [
            format!("status={status}"),
            "read /etc/passwd=ok".into(),
            "list /=ok".into(),
            "read outside=EACCES".into(),
            "write outside=EACCES".into(),
            "write /dev/null=ok".into(),
            "create, rename, remove in home=ok".into(),
            "sh reopening /dev/stderr=ok".into(),
            "stty size on a new pty=24 80".into(),
            format!("signal the parent={scoped}"),
            format!("connect to the parent's abstract socket={scoped}"),
        ];
        assert_eq!(got, want);
        let written = std::fs::read_to_string(outside.path().join("stderr")).expect("stderr");
        assert!(written.contains("via-sh"), "{written}");
        assert!(!outside.path().join("new").exists());
    }

    fn restricted(abi: u32) -> LandlockStatus {
        LandlockStatus::Partial { abi, missing: missing_features(abi) }
    }

    #[test]
    fn without_kernel_support_nothing_is_enforced_and_says_so() {
        // The filter needs no root, but the helper must be able to run.
        let home = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), "s").expect("write");
        let got = reexec("nosys", home.path(), outside.path(), Stdio::null());
        assert_eq!(got[0], format!("status={}", LandlockStatus::NotEnforced(NotEnforced::NotInKernel)));
        assert_eq!(got[3..5], ["read outside=ok", "write outside=ok"]);
    }
}
