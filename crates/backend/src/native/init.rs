//! The init stages, run as `bot-bottle __bottle-init STAGE SPEC`.
//!
//! - **a**: join the bottle's cgroup (if it has one), unshare every
//!   namespace; the host-side launcher then writes the uid/gid maps (only a
//!   process outside can map an unprivileged host range); then start stage
//!   b, which is pid 1 of the new pid namespace.
//! - **b**: build the bottle's root (fresh tmpfs, system dirs read-only,
//!   fresh /proc, /dev, /tmp, home), pivot into it, bring loopback up, start
//!   the forwarders to the sidecar sockets, drop the capability bounding
//!   set, start stage c as the agent user, reap children, pass its status on.
//! - **c**: as the agent: no capabilities, `no_new_privs`, the rlimits the
//!   bottle's cgroup does not enforce, landlock, the seccomp filter, then
//!   exec the agent (or a command).
//!
//! Each stage is a fresh single-threaded exec, so seccomp and credential
//! changes never race with other threads.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Pid, Uid, pivot_root, sethostname};

use std::os::unix::net::UnixStream;

use super::control::{self, Reply};
use super::pid1::serve;
use super::spec::Spec;
use crate::{Exec, Owner};

/// Where stage b puts things inside the bottle.
pub(super) const RUN: &str = "/run/bot-bottle";
/// The control socket's transient name under [`RUN`].
const CONTROL: &str = ".control";

pub(super) type R<T> = Result<T, String>;

pub(super) fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> R<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Entry point of the hidden `__bottle-init` mode; returns the exit code.
pub fn init_main(args: &[String]) -> i32 {
    let (Some(stage), Some(spec)) = (args.first(), args.get(1)) else {
        crate::gone::eprintln_best_effort("bot-bottle: __bottle-init STAGE SPEC");
        return 125;
    };
    let run = || -> R<i32> {
        close_inherited()?;
        let text = ctx(fs::read_to_string(spec), || format!("reading {spec}"))?;
        let spec: Spec = ctx(serde_json::from_str(&text), || "parsing the bottle spec".into())?;
        match stage.as_str() {
            "a" => stage_a(&spec),
            "b" => stage_b(&spec),
            "c" => stage_c(&spec),
            other => Err(format!("unknown init stage {other}")),
        }
    };
    match run() {
        Ok(code) => code,
        Err(e) => {
            crate::gone::eprintln_best_effort(format_args!("bot-bottle: bottle init failed: {e}"));
            125
        }
    }
}

/// Dies with its parent, so a killed launcher never leaves a bottle behind.
fn die_with_parent() -> R<()> {
    ctx(nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL), || "parent-death signal".into())?;
    // The parent may already be gone.
    if nix::unistd::getppid() == Pid::from_raw(1) {
        return Err("the launcher is gone".into());
    }
    Ok(())
}

/// Leaves the launcher's session: no process of the bottle has the user's
/// terminal as its controlling terminal (so `/dev/tty` inside opens
/// nothing of the user's), and the terminal's signals never reach the
/// bottle; the launcher relays what the agent should get.
fn leave_session() -> R<()> {
    ctx(rustix::process::setsid(), || "setsid".into()).map(drop)
}

/// Closes every descriptor but the standard streams: whatever the
/// launcher's parent left open without close-on-exec stays outside.
fn close_inherited() -> R<()> {
    ctx(crate::fds::close_inherited(), || "closing inherited descriptors".into()).map(drop)
}

/// Moves this process into the bottle's cgroup (before it unshares, so
/// that the bottle's cgroup namespace is rooted there); everything it
/// starts is born inside.
fn join_cgroup(spec: &Spec) -> R<()> {
    for f in spec.cgroup.iter().flat_map(|c| &c.procs) {
        ctx(fs::OpenOptions::new().write(true).open(f).and_then(|mut w| w.write_all(b"0")), || {
            format!("joining the bottle's cgroup ({})", f.display())
        })?;
    }
    Ok(())
}

fn stage_a(spec: &Spec) -> R<i32> {
    die_with_parent()?;
    leave_session()?;
    join_cgroup(spec)?;
    ctx(
        unshare(
            CloneFlags::CLONE_NEWUSER
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWCGROUP,
        ),
        || "unshare (are user namespaces enabled? run `bot-bottle doctor`)".into(),
    )?;
    // Handshake: tell the launcher, wait for the maps.
    ctx(fs::OpenOptions::new().write(true).open(&spec.sync_out).and_then(|mut f| f.write_all(b"unshared\n")), || {
        "sync".into()
    })?;
    let mut answer = String::new();
    ctx(fs::File::open(&spec.sync_in).and_then(|mut f| f.read_to_string(&mut answer)), || "sync".into())?;
    if answer.trim() != "mapped" {
        return Err(format!("the launcher could not map ids: {}", answer.trim()));
    }
    // While this process still has the launcher's file access (the state
    // dir may sit under a home no other id can traverse), mount the bottle's
    // root, step into it and open every host path the bottle needs. Then
    // take the mapped ids (files can only be created under those) and bind
    // the opened paths in through /proc/self/fd, which needs no traversal.
    let held = stage_root_open(spec)?;
    ctx(nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)), || "setresgid".into())?;
    ctx(nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)), || "setresuid".into())?;
    // Changing credentials clears the parent-death signal: set it again.
    die_with_parent()?;
    stage_root_fill(spec, &held)?;
    drop(held);
    let status = ctx(
        Command::new("/proc/self/exe").arg("__bottle-init").arg("b").arg(format!(".{RUN}/spec.json")).status(),
        || "starting the bottle's pid 1".into(),
    )?;
    Ok(super::exit_code(status))
}

/// Host paths held open across the id switch.
struct Held {
    control: fs::File,
    workspace: Option<fs::File>,
    sockets: Option<fs::File>,
    init: fs::File,
    /// `mounts:`, each with its path inside (the same as outside).
    mounts: Vec<(PathBuf, fs::File)>,
    /// The bottle root's real path, as mountinfo shows it (resolved while
    /// the launcher's access can still traverse the state dir).
    root_real: PathBuf,
}

fn fd_path(f: &fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

fn stage_root_open(spec: &Spec) -> R<Held> {
    let root = spec.root_dir.as_path();
    // Nothing done here may propagate back to the host.
    ctx(mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>), || {
        "make mounts private".into()
    })?;
    tmpfs(root, "mode=0755,uid=0,gid=0,size=64m", MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    ctx(std::env::set_current_dir(root), || "chdir to the bottle root".into())?;
    let open = |p: &Path| ctx(fs::File::open(p), || format!("open {}", p.display()));
    // The control socket is opened as a path (O_PATH): it is bound into the
    // bottle just long enough for pid 1 to connect.
    let control = ctx(fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(&spec.control), || {
        format!("open {}", spec.control.display())
    })?;
    Ok(Held {
        control,
        workspace: spec.workspace.as_deref().map(open).transpose()?,
        sockets: spec.sockets_dir.as_deref().map(open).transpose()?,
        init: open(&spec.init_exe)?,
        mounts: spec.mounts.iter().map(|p| Ok((p.clone(), open(p)?))).collect::<R<_>>()?,
        root_real: ctx(fs::canonicalize(root), || format!("resolving {}", root.display()))?,
    })
}

/// With the mapped ids, inside the bottle's root (the working directory).
fn stage_root_fill(spec: &Spec, held: &Held) -> R<()> {
    let run = Path::new(".").join(RUN.trim_start_matches('/'));
    mkdirs(&run)?;
    // The bottle's own files: writable by pid 1 while it provisions, sealed
    // read-only before the agent starts.
    tmpfs(&run, "mode=0755,uid=0,gid=0,size=16m", MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    touch(&run.join(CONTROL))?;
    bind(&fd_path(&held.control), &run.join(CONTROL), false)?;
    if let Some(ws) = &held.workspace {
        mkdirs(Path::new("workspace"))?;
        bind(&fd_path(ws), Path::new("workspace"), false)?;
    }
    if let Some(sock) = &held.sockets {
        mkdirs(&run.join("sockets"))?;
        bind(&fd_path(sock), &run.join("sockets"), false)?;
    }
    touch(&run.join("init"))?;
    bind(&fd_path(&held.init), &run.join("init"), true)?;
    // Host toolchains, read-only at their own paths. None lies under a
    // place stage b mounts over (the manifest refuses those), so they can
    // go in now, while the opened host paths are at hand.
    for (path, dir) in &held.mounts {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let dst = Path::new(".").join(rel);
        mkdirs(&dst)?;
        bind(&fd_path(dir), &dst, false)?;
        readonly_tree(&held.root_real, rel)?;
    }
    let json = ctx(serde_json::to_vec(spec), || "spec".into())?;
    ctx(fs::write(run.join("spec.json"), json), || "write spec".into())
}

fn bind(src: &Path, dst: &Path, readonly: bool) -> R<()> {
    ctx(mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>), || {
        format!("bind {} -> {}", src.display(), dst.display())
    })?;
    if readonly {
        let flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        ctx(mount(None::<&str>, dst, None::<&str>, flags, None::<&str>), || format!("read-only {}", dst.display()))?;
    }
    Ok(())
}

/// Makes the mount at `rel` under the bottle root (the working directory,
/// whose real path mountinfo shows as `root_real`) and every mount below it
/// read-only (a recursive bind brings submounts whose own
/// flags a single remount would leave writable). Each remount keeps the
/// flags the kernel locks in a user namespace (nosuid, nodev, noexec,
/// atime), as it must.
fn readonly_tree(root_real: &Path, rel: &Path) -> R<()> {
    let top = root_real.join(rel);
    let info = ctx(fs::read_to_string("/proc/self/mountinfo"), || "reading mountinfo".into())?;
    let mut done = 0;
    for (point, opts) in info.lines().filter_map(mountinfo_point) {
        // Reached from the working directory: the mapped ids may not
        // traverse the state dir's absolute path.
        let Ok(inside) = point.strip_prefix(root_real) else { continue };
        if !point.starts_with(&top) {
            continue;
        }
        let point = Path::new(".").join(inside);
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
        for o in opts.split(',') {
            flags |= match o {
                "nodev" => MsFlags::MS_NODEV,
                "noexec" => MsFlags::MS_NOEXEC,
                "noatime" => MsFlags::MS_NOATIME,
                "nodiratime" => MsFlags::MS_NODIRATIME,
                "relatime" => MsFlags::MS_RELATIME,
                "strictatime" => MsFlags::MS_STRICTATIME,
                _ => MsFlags::empty(),
            };
        }
        ctx(mount(None::<&str>, &point, None::<&str>, flags, None::<&str>), || {
            format!("read-only {}", point.display())
        })?;
        done += 1;
    }
    // The bind itself must have been found: nothing may stay writable.
    if done == 0 {
        return Err(format!("read-only {}: not found in mountinfo", top.display()));
    }
    Ok(())
}

/// A mountinfo line's mount point (octal escapes decoded) and its
/// per-mount options.
fn mountinfo_point(line: &str) -> Option<(PathBuf, &str)> {
    let mut f = line.split(' ');
    let point = f.nth(4)?;
    let opts = f.next()?;
    let mut out = Vec::with_capacity(point.len());
    let b = point.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let esc = b.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (b[i], esc) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some((PathBuf::from(std::ffi::OsString::from_vec(out)), opts))
}

fn tmpfs(dst: &Path, opts: &str, flags: MsFlags) -> R<()> {
    ctx(mount(Some("tmpfs"), dst, Some("tmpfs"), flags, Some(opts)), || format!("tmpfs at {}", dst.display()))
}

fn mkdirs(p: &Path) -> R<()> {
    ctx(fs::create_dir_all(p), || format!("mkdir {}", p.display()))
}

fn touch(p: &Path) -> R<()> {
    if let Some(d) = p.parent() {
        mkdirs(d)?;
    }
    ctx(fs::write(p, b""), || format!("create {}", p.display()))
}

/// Host /etc entries the bottle sees, read-only. Everything else in /etc
/// (shadow, ssh host keys, sudoers, `ssl/private`, ...) is absent: nothing
/// here is readable only to a group, so supplementary groups that an
/// unprivileged launch cannot drop open nothing inside.
const ETC: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "environment",
    "gai.conf",
    "host.conf",
    "inputrc",
    "issue",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "login.defs",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "profile",
    "profile.d",
    "protocols",
    "services",
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
    "npmrc",
    "gitconfig",
    "java-17-openjdk",
    "python3",
    "python3.11",
    "perl",
];

fn stage_b(spec: &Spec) -> R<i32> {
    // pid 1 of the bottle: its parent (stage a) is in the outer pid
    // namespace; the death signal still applies.
    ctx(nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL), || "parent-death signal".into())?;
    // Stage a left us in the bottle's root (see `stage_root`).
    let root = Path::new(".");
    let in_root = |p: &str| root.join(p.trim_start_matches('/'));
    // The launcher's control socket, then its path gone from the bottle.
    let control = in_root(RUN).join(CONTROL);
    let ctl = ctx(UnixStream::connect(&control), || "connecting to the launcher".into())?;
    ctx(umount2(&control, MntFlags::MNT_DETACH), || "unmount the control socket".into())?;
    ctx(fs::remove_file(&control), || "remove the control socket".into())?;
    match build_root(spec, root) {
        Ok(()) => serve(spec, ctl),
        Err(e) => {
            let mut w = &ctl;
            // The launcher learns of the failure either way: from this
            // reply, or else from the control socket closing with no
            // `Ready` (it then reports that init died). Stderr says both.
            if let Err(s) = control::send(&mut w, &Reply::Error { message: e.clone() }) {
                crate::gone::eprintln_best_effort(format_args!("bot-bottle: telling the launcher: {s}"));
            }
            Err(e)
        }
    }
}

/// Builds the bottle's root in the working directory and pivots into it.
fn build_root(spec: &Spec, root: &Path) -> R<()> {
    let in_root = |p: &str| root.join(p.trim_start_matches('/'));

    // System directories, read-only; merged-usr symlinks recreated as such.
    mkdirs(&in_root("usr"))?;
    bind(Path::new("/usr"), &in_root("usr"), true)?;
    for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(d);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = ctx(fs::read_link(&host), || format!("readlink {}", host.display()))?;
                ctx(symlink(&target, in_root(d)), || format!("symlink {d}"))?;
            }
            Ok(m) if m.is_dir() => {
                mkdirs(&in_root(d))?;
                bind(&host, &in_root(d), true)?;
            }
            _ => {}
        }
    }
    // /etc: a whitelist of host entries, plus files of the bottle's own.
    let etc = in_root("etc");
    mkdirs(&etc)?;
    for name in ETC {
        let host = Path::new("/etc").join(name);
        let Ok(m) = fs::symlink_metadata(&host) else { continue };
        let dst = etc.join(name);
        if let Some(parent) = dst.parent() {
            mkdirs(parent)?;
        }
        if m.file_type().is_symlink() {
            let target = ctx(fs::read_link(&host), || format!("readlink {}", host.display()))?;
            ctx(symlink(&target, &dst), || format!("symlink {}", dst.display()))?;
        } else if m.is_dir() {
            mkdirs(&dst)?;
            bind(&host, &dst, true)?;
        } else {
            touch(&dst)?;
            bind(&host, &dst, true)?;
        }
    }
    let write = |p: &Path, s: &str| ctx(fs::write(p, s), || format!("write {}", p.display()));
    write(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\n{u}:x:{uid}:{gid}:bottle agent:{home}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            u = spec.user,
            uid = spec.uid,
            gid = spec.gid,
            home = spec.home
        ),
    )?;
    write(&etc.join("group"), &format!("root:x:0:\n{u}:x:{gid}:\nnogroup:x:65534:\n", u = spec.user, gid = spec.gid))?;
    write(&etc.join("hosts"), &format!("127.0.0.1\tlocalhost {h}\n::1\tlocalhost\n", h = spec.hostname))?;
    write(&etc.join("hostname"), &format!("{}\n", spec.hostname))?;
    // No resolver: every name goes through the proxy, so DNS carries nothing out.
    write(&etc.join("resolv.conf"), "# no DNS inside a bottle: names resolve at the egress proxy\n")?;

    // /proc, with the host-wide knobs read-only and the dangerous files masked.
    let proc_dir = in_root("proc");
    mkdirs(&proc_dir)?;
    ctx(
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ),
        || "mount /proc".into(),
    )?;
    bind(&proc_dir.join("sys"), &proc_dir.join("sys"), true)?;
    for masked in ["sysrq-trigger", "kcore", "keys", "timer_list", "kallsyms"] {
        let p = proc_dir.join(masked);
        if p.exists() {
            bind(Path::new("/dev/null"), &p, true)?;
        }
    }

    // /dev: only the harmless nodes, a private devpts and shm.
    let dev = in_root("dev");
    mkdirs(&dev)?;
    tmpfs(&dev, "mode=0755,size=1m", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(node);
        if host.exists() {
            touch(&dev.join(node))?;
            bind(&host, &dev.join(node), false)?;
        }
    }
    mkdirs(&dev.join("pts"))?;
    ctx(
        mount(
            Some("devpts"),
            &dev.join("pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        || "mount devpts".into(),
    )?;
    ctx(symlink("pts/ptmx", dev.join("ptmx")), || "ptmx".into())?;
    mkdirs(&dev.join("shm"))?;
    tmpfs(&dev.join("shm"), "mode=1777,size=64m", MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    for (l, t) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(symlink(t, dev.join(l)), || format!("/dev/{l}"))?;
    }

    // Writable places: /tmp, the agent's home, /run, the workspace.
    // /run is part of the root tmpfs (stage a put /run/bot-bottle there);
    // it turns read-only with the root below.
    mkdirs(&in_root("tmp"))?;
    tmpfs(&in_root("tmp"), "mode=1777,size=512m", MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    let home = in_root(&spec.home);
    mkdirs(&home)?;
    tmpfs(
        &home,
        &format!("mode=0700,uid={},gid={},size=512m", spec.uid, spec.gid),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    // /dev is the operator's: when the agent is uid 0 inside (an
    // unprivileged launch), ownership alone would let it change it, so its
    // mount becomes read-only (/dev/pts and /dev/shm are mounts of their
    // own).
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    ctx(mount(None::<&str>, dev.as_path(), None::<&str>, ro, None::<&str>), || "read-only /dev".into())?;

    // Into the new root (already the working directory); the host's is
    // detached and gone.
    mkdirs(Path::new(".old"))?;
    ctx(pivot_root(".", ".old"), || "pivot_root".into())?;
    ctx(std::env::set_current_dir("/"), || "chdir /".into())?;
    ctx(umount2("/.old", MntFlags::MNT_DETACH), || "detach old root".into())?;
    ctx(fs::remove_dir("/.old"), || "remove /.old".into())?;
    // The root itself becomes read-only: only the mounts above are writable.
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        ),
        || "read-only root".into(),
    )?;
    ctx(sethostname(&spec.hostname), || "sethostname".into())?;
    loopback_up()?;
    for f in &spec.forwards {
        forward(f.port, PathBuf::from(RUN).join("sockets").join(&f.socket))?;
    }
    // The agent can never regain a capability, even through exec.
    for cap in caps::runtime::thread_all_supported() {
        ctx(caps::drop(None, caps::CapSet::Bounding, cap), || format!("dropping {cap} from the bounding set"))?;
    }
    let left = ctx(caps::read(None, caps::CapSet::Bounding), || "reading the bounding set".into())?;
    if !left.is_empty() {
        return Err(format!("capabilities left in the bounding set: {left:?}"));
    }
    drop_groups()
}

/// Drops every supplementary group (each may open host files or devices a
/// group is let into), wherever the id mapping allows it: always when
/// launched by root, and for a user when `newgidmap` mapped the bottle's
/// gids. Otherwise the kernel refuses any change of groups to everyone in
/// the bottle, the launcher has said the groups are kept, and the bottle
/// holds nothing that is readable only to a group (see [`ETC`]).
fn drop_groups() -> R<()> {
    let setgroups = ctx(fs::read_to_string("/proc/self/setgroups"), || "reading /proc/self/setgroups".into())?;
    if setgroups.trim() == "deny" {
        return Ok(());
    }
    ctx(nix::unistd::setgroups(&[]), || "dropping supplementary groups".into())
}

/// A fresh network namespace has loopback down; bring it up with `ip`
/// from the bottle's own (read-only) /usr.
fn loopback_up() -> R<()> {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].into_iter().find(|p| Path::new(p).exists());
    let Some(ip) = ip else { return Err("no `ip` program to bring loopback up (install iproute2)".into()) };
    let s = ctx(Command::new(ip).args(["link", "set", "lo", "up"]).status(), || "ip link set lo up".into())?;
    if s.success() { Ok(()) } else { Err("ip link set lo up failed".into()) }
}

/// `127.0.0.1:port` inside, relayed to a sidecar's unix socket.
fn forward(port: u16, socket: PathBuf) -> R<()> {
    ctx(crate::forward::forward(port, socket), || format!("listen on 127.0.0.1:{port}"))
}

/// The environment variable that carries stage c's command from pid 1.
pub(super) const EXEC_VAR: &str = "BOT_BOTTLE_EXEC";

/// Confines this process and all it starts to the bottle's paths. A kernel
/// without landlock leaves the mount namespace as the only filesystem
/// boundary (`bot-bottle doctor` says so); a kernel with landlock that
/// fails to apply the rules stops the command: the bottle fails closed.
fn landlock(spec: &Spec) -> R<()> {
    use super::landlock::{FsRules, LandlockStatus, NotEnforced, restrict};
    let workspace = spec.workspace.as_ref().map(|_| Path::new("/workspace"));
    let mut rules = FsRules::bottle(Path::new(&spec.home), workspace);
    // `mounts:` hold toolchains: their programs must run.
    rules.read_exec.extend(spec.mounts.iter().cloned());
    match restrict(&rules) {
        Ok(LandlockStatus::NotEnforced(why @ NotEnforced::Refused)) => Err(format!("landlock: {why}")),
        Ok(_) => Ok(()),
        Err(e) => Err(super::error_chain(&e)),
    }
}

fn stage_c(spec: &Spec) -> R<i32> {
    let cmd = ctx(std::env::var(EXEC_VAR), || format!("reading {EXEC_VAR}"))?;
    let cmd: Exec = ctx(serde_json::from_str(&cmd), || format!("parsing {EXEC_VAR}"))?;
    // A session of its own, led by the agent: on a terminal, the bottle's
    // pty becomes its controlling terminal; on pipes it has none.
    leave_session()?;
    let stdin = rustix::stdio::stdin();
    if rustix::termios::isatty(stdin) {
        ctx(rustix::process::ioctl_tiocsctty(stdin), || "taking the bottle's terminal".into())?;
    }
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable, caps::CapSet::Ambient] {
        ctx(caps::clear(None, set), || format!("dropping {set:?} capabilities"))?;
    }
    ctx(nix::sys::prctl::set_no_new_privs(), || "no_new_privs".into())?;
    use nix::sys::resource::{Resource, setrlimit};
    // Only the limits the bottle's cgroup does not enforce.
    let rlimits = spec.rlimits();
    if let Some(n) = rlimits.pids {
        ctx(setrlimit(Resource::RLIMIT_NPROC, n, n), || "pids limit".into())?;
    }
    if let Some(m) = rlimits.memory {
        ctx(setrlimit(Resource::RLIMIT_DATA, m, m), || "memory limit".into())?;
    }
    if let Some(d) = rlimits.disk {
        ctx(setrlimit(Resource::RLIMIT_FSIZE, d, d), || "file size limit".into())?;
    }
    ctx(setrlimit(Resource::RLIMIT_CORE, 0, 0), || "core limit".into())?;
    landlock(spec)?;
    for f in ctx(super::seccomp::filters(), || "seccomp".into())? {
        ctx(seccompiler::apply_filter(&f), || "applying seccomp".into())?;
    }
    let Some((prog, args)) = cmd.argv.split_first() else { return Err("empty argv".into()) };
    let home = if cmd.user == Owner::Agent { spec.home.as_str() } else { "/" };
    let err = Command::new(prog)
        .args(args)
        .env_clear()
        .envs(cmd.env.iter().cloned())
        .current_dir(cmd.workdir.as_deref().unwrap_or(home))
        .exec();
    crate::gone::eprintln_best_effort(format_args!("bot-bottle: cannot run `{prog}`: {err}"));
    Ok(if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
}
