//! The forwarder that makes a bottle's sidecars reachable at
//! `127.0.0.1:PORT` inside it, each relayed to its unix socket: run by the
//! native init, and in a smolmachines guest as `bot-bottle __bottle-forward`.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `127.0.0.1:port`, relayed to `socket` one connection at a time, on
/// threads of its own; returns once the port is bound.
pub(crate) fn forward(port: u16, socket: PathBuf) -> io::Result<()> {
    let l = TcpListener::bind(("127.0.0.1", port))?;
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || relay(conn, &socket));
        }
    });
    Ok(())
}

fn relay(conn: TcpStream, socket: &std::path::Path) {
    // A sidecar that is gone refuses the connection: it is closed unanswered.
    let Ok(up) = UnixStream::connect(socket) else { return };
    let (Ok(mut a_r), Ok(mut b_w)) = (conn.try_clone(), up.try_clone()) else { return };
    let (mut a_w, mut b_r) = (conn, up);
    let t = std::thread::spawn(move || pipe(&mut a_r, &mut b_w, "to the sidecar"));
    pipe(&mut b_r, &mut a_w, "from the sidecar");
    if t.join().is_err() {
        tracing::warn!("forwarder: the copying thread panicked");
    }
}

/// Copies `from` into `to` until either end closes, then half-closes `to`.
/// Either failing only means that one peer has gone, which ends the
/// connection: nothing is left to check or undo.
fn pipe<W: io::Write + HalfClose>(from: &mut impl io::Read, to: &mut W, which: &str) {
    if let Err(e) = io::copy(from, to) {
        tracing::debug!(error = %e, "forwarder: copying {which} ended");
    }
    if let Err(e) = to.shutdown(Shutdown::Write) {
        tracing::debug!(error = %e, "forwarder: half-closing {which}");
    }
}

/// The stream kinds a relay half-closes.
trait HalfClose {
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl HalfClose for TcpStream {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

impl HalfClose for UnixStream {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

/// Brings `lo` up over rtnetlink (RTM_NEWLINK with IFF_UP), so that no
/// `ip` program is needed in an image we did not build.
#[cfg(target_os = "linux")]
pub(crate) fn loopback_up() -> io::Result<()> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netdevice, netlink, recv, sendto, socket};
    let probe = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    let index = netdevice::name_to_index(&probe, "lo")?;
    let nl = socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST_ACK: u16 = 0x1 | 0x4;
    const IFF_UP: u32 = 0x1;
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST_ACK.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel's
    msg.extend_from_slice(&[0, 0]); // ifi_family AF_UNSPEC, pad
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&index.to_ne_bytes()); // ifi_index
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    sendto(&nl, &msg, SendFlags::empty(), &netlink::SocketAddrNetlink::new(0, 0))?;
    let mut ack = [0u8; 256];
    let (_, n) = recv(&nl, &mut ack, RecvFlags::empty())?;
    // NLMSG_ERROR (2) carrying errno 0 is the acknowledgement.
    let kind = ack.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let errno = ack.get(16..20).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (n >= 20, kind, errno) {
        (true, Some(2), Some(0)) => Ok(()),
        (true, Some(2), Some(e)) => Err(io::Error::from_raw_os_error(-e)),
        _ => Err(io::Error::other("no acknowledgement from rtnetlink")),
    }
}

/// `bot-bottle __bottle-forward PORT=SOCKET…`: brings `lo` up if it is down,
/// binds every port, then relays until killed (the VM's stop ends it).
/// `bot-bottle __bottle-forward --ready PORT…`: waits up to 10 s until
/// each port accepts a connection; exit 0, or 1 saying which does not.
/// `bot-bottle __bottle-forward --unpack [PORT…]`: writes the files of the
/// tar archive on stdin, then waits as `--ready` does.
/// `bot-bottle __bottle-forward --exec -- ARGV…`: runs ARGV (the agent)
/// with every capability gone (bounding set too), `no_new_privs`, and the
/// native bottle's seccomp filter: in a guest where smolvm runs it as root,
/// it opens no raw or packet socket, no vsock, and regains nothing.
/// Returns the exit code.
pub fn guest_main(args: &[String]) -> i32 {
    let (code, msg) = match guest(args) {
        Ok(()) => return 0,
        Err(Failed::NotRun(e)) if e.kind() == io::ErrorKind::NotFound => (127, e.to_string()),
        Err(Failed::NotRun(e)) => (126, e.to_string()),
        Err(Failed::Said(e)) => (1, e),
    };
    crate::gone::eprintln_best_effort(format_args!("bot-bottle forwarder: {msg}"));
    code
}

/// Why the guest mode failed: a command that could not run (exit 127 or
/// 126, as a shell says), or anything else (exit 1).
enum Failed {
    #[cfg_attr(not(target_os = "linux"), expect(dead_code, reason = "only the Linux confiner runs a command"))]
    NotRun(io::Error),
    Said(String),
}

impl From<String> for Failed {
    fn from(s: String) -> Self {
        Failed::Said(s)
    }
}

fn guest(args: &[String]) -> Result<(), Failed> {
    if args.first().map(String::as_str) == Some("--exec") {
        let mut args = &args[1..];
        // `--size ROWSxCOLS`: the terminal's size, set before the agent
        // starts (docker sizes an exec's pty only after it has started).
        if args.first().map(String::as_str) == Some("--size") {
            let size = args.get(1).and_then(|s| s.split_once('x'));
            let parsed = size.and_then(|(r, c)| Some((r.parse::<u16>().ok()?, c.parse::<u16>().ok()?)));
            let Some((rows, cols)) = parsed else { return Err(String::from("expected --size ROWSxCOLS").into()) };
            let stdin = std::io::stdin();
            if rustix::termios::isatty(&stdin) {
                let ws = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                rustix::termios::tcsetwinsize(&stdin, ws).map_err(|e| format!("sizing the terminal: {e}"))?;
            }
            args = &args[2..];
        }
        let argv = match args.first().map(String::as_str) {
            Some("--") => &args[1..],
            _ => args,
        };
        return confine_and_exec(argv);
    }
    if args.first().map(String::as_str) == Some("--unpack") {
        unpack(std::io::stdin().lock())?;
        return ready(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--ready") {
        return ready(&args[1..]);
    }

    let mut pairs = Vec::new();
    for a in args {
        let Some((port, socket)) = a.split_once('=') else {
            return Err(format!("expected PORT=SOCKET, got {a}").into());
        };
        let port: u16 = port.parse().map_err(|_| format!("not a port: {port}"))?;
        pairs.push((port, PathBuf::from(socket)));
    }
    if pairs.is_empty() {
        return Err(Failed::Said("nothing to forward".into()));
    }
    // Not dumpable: an agent of the same uid (a docker bottle launched by
    // an unprivileged user) cannot open this process's descriptors (the
    // sidecar sockets) through /proc, nor ptrace it.
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("making the forwarder non-dumpable: {e}"))?;
    // smolvm's no-network guest may leave `lo` down; an `lo` already up
    // (or a bind that works) needs nothing.
    if let Err(e) = loopback_up()
        && TcpListener::bind(("127.0.0.1", 0)).is_err()
    {
        return Err(format!("bringing lo up: {e}").into());
    }
    for (port, socket) in pairs {
        forward(port, socket.clone()).map_err(|e| format!("listening on 127.0.0.1:{port}: {e}"))?;
    }
    loop {
        std::thread::park();
    }
}

/// Waits up to 10 s until each of `ports` accepts a connection.
fn ready(ports: &[String]) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in ports {
        let port: u16 = p.parse().map_err(|_| format!("not a port: {p}"))?;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("nothing listens on 127.0.0.1:{port}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// `--unpack`: the directories and files of a tar archive on stdin, made
/// in order at their absolute paths with their modes, as the user this
/// runs as (`mkdir -p` and `chmod` for a directory; the parents, the
/// content and `chmod` for a file): a docker bottle's provisioning in one
/// exec instead of one each.
fn unpack(input: impl io::Read) -> Result<(), Failed> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut a = tar::Archive::new(input);
    let entries = a.entries().map_err(|e| format!("reading the files to write: {e}"))?;
    for e in entries {
        let mut e = e.map_err(|e| format!("reading the files to write: {e}"))?;
        let rel = e.path().map_err(|e| format!("a path to write: {e}"))?.into_owned();
        // Plain names only: no `..`, no root, nothing to lead the write
        // elsewhere than the path the launcher named.
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(format!("{}: not a plain path", rel.display()).into());
        }
        let path = Path::new("/").join(&rel);
        let mode = e.header().mode().map_err(|e| format!("{}: {e}", path.display()))? & 0o7777;
        let perms = std::fs::Permissions::from_mode(mode);
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
            }
            tar::EntryType::Regular => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
                }
                // A link at the file's own name is never followed.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                io::copy(&mut e, &mut f).map_err(|e| format!("writing {}: {e}", path.display()))?;
                f.set_permissions(perms.clone()).map_err(|e| format!("chmod {}: {e}", path.display()))?;
            }
            other => return Err(format!("{}: cannot write a {other:?}", path.display()).into()),
        }
        if e.header().entry_type() == tar::EntryType::Directory {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!("{}: a link where a directory is to be", path.display()).into());
            }
            std::fs::set_permissions(&path, perms).map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Whether this process has no ambient capability: `/proc/self/status`
/// says the set is empty, or has no `CapAmb` line at all (a kernel without
/// ambient capabilities, such as gVisor's: the line came with them).
#[cfg(target_os = "linux")]
fn ambient_empty() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        match s.lines().find_map(|l| l.strip_prefix("CapAmb:")) {
            Some(v) => v.trim().chars().all(|c| c == '0'),
            None => true,
        }
    })
}

/// Off Linux no guest runs this binary (rtnetlink is Linux's).
#[cfg(not(target_os = "linux"))]
pub(crate) fn loopback_up() -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "bringing lo up needs Linux's rtnetlink"))
}

/// Off Linux there is no bottle for this binary to confine an agent in
/// (a docker bottle needs bot-bottle built for Linux bind-mounted in).
#[cfg(not(target_os = "linux"))]
fn confine_and_exec(_argv: &[String]) -> Result<(), Failed> {
    Err(Failed::Said("--exec confines with Linux's seccomp and capabilities: run a Linux build of bot-bottle".into()))
}

/// Never returns on success: the process becomes ARGV.
#[cfg(target_os = "linux")]
fn confine_and_exec(argv: &[String]) -> Result<(), Failed> {
    use std::os::unix::process::CommandExt;
    let Some((prog, rest)) = argv.split_first() else { return Err(Failed::Said("--exec needs a command".into())) };
    for cap in caps::all() {
        // Only a process with CAP_SETPCAP may shrink the bounding set; one
        // without has nothing there to lose that it could use.
        if caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    for set in [caps::CapSet::Ambient, caps::CapSet::Inheritable, caps::CapSet::Effective, caps::CapSet::Permitted] {
        if let Err(e) = caps::clear(None, set) {
            // gVisor (runsc) refuses PR_CAP_AMBIENT_CLEAR_ALL; an ambient
            // set the kernel reports empty has nothing to clear.
            if !(matches!(set, caps::CapSet::Ambient) && ambient_empty()) {
                return Err(format!("dropping {set:?} capabilities: {e}").into());
            }
        }
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    for f in crate::native::seccomp::filters().map_err(|e| format!("seccomp: {e}"))? {
        seccompiler::apply_filter(&f).map_err(|e| format!("applying seccomp: {e}"))?;
    }
    let err = std::process::Command::new(prog).args(rest).exec();
    Err(Failed::NotRun(io::Error::new(err.kind(), format!("cannot run `{prog}`: {err}"))))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn unpack_makes_directories_and_files_at_their_paths_with_their_modes() {
        let d = tempfile::tempdir().expect("tempdir");
        let at = |p: &str| d.path().join(p).display().to_string().trim_start_matches('/').to_owned();
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: String, mode: u32, content: Option<&[u8]>| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_entry_type(if content.is_some() { tar::EntryType::Regular } else { tar::EntryType::Directory });
            h.set_size(content.map_or(0, |c| c.len() as u64));
            b.append_data(&mut h, path, content.unwrap_or_default()).expect("append");
        };
        add(at("home"), 0o700, None);
        add(at("home/a/b.txt"), 0o600, Some(b"one"));
        add(at("run/ca.pem"), 0o644, Some(b"two"));
        // Written again: replaced, as `cat >` did.
        add(at("run/ca.pem"), 0o644, Some(b"three"));
        let tar = b.into_inner().expect("tar");
        assert!(unpack(&tar[..]).is_ok());
        let mode = |p: &str| std::fs::metadata(d.path().join(p)).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode("home"), 0o700);
        assert_eq!(mode("home/a/b.txt"), 0o600);
        assert_eq!(std::fs::read_to_string(d.path().join("home/a/b.txt")).expect("read"), "one");
        assert_eq!(std::fs::read_to_string(d.path().join("run/ca.pem")).expect("read"), "three");

        // A link planted at a file's name is not followed: the write fails
        // and the file it names is untouched.
        std::fs::write(d.path().join("target"), "kept").expect("write");
        std::os::unix::fs::symlink(d.path().join("target"), d.path().join("home/link")).expect("symlink");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(3);
        b.append_data(&mut h, at("home/link"), &b"new"[..]).expect("append");
        assert!(unpack(&b.into_inner().expect("tar")[..]).is_err());
        assert_eq!(std::fs::read_to_string(d.path().join("target")).expect("read"), "kept");
    }
}
