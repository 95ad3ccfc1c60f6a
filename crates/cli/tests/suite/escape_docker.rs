//! The escape suite (`tests/escape/*.sh`) in docker bottles, under every
//! runtime the daemon has of runc and runsc (CI registers both).
//!
//! Each runtime gets one bottle, launched by `bot-bottle start` as a user
//! would, whose agent runs every case as a separate process one after the
//! other: the cases only read, or try a change that is itself the case's
//! escape, so one case cannot make another pass. A fresh container per case
//! would cost a daemon round trip and a sandbox boot each (58 × 2). The fork
//! bomb (48) and the memory hog (49) are the exceptions: each runs in a
//! bottle of its own, because under runsc the memory limit applies to the
//! whole sandbox: a hog that reaches it ends the bottle, which would hide
//! every case after it. The memory hog under runsc cannot report from inside
//! for that reason; it counts as contained only when bot-bottle itself
//! reports the bottle killed at its memory limit, and says so.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::docker::{containers, image, runtimes};
use super::escape::{cases, host_addr};
use super::native::panic_or_skip;
use super::start_native::{Project, cli, command, slugs};

/// The cases that run in a bottle of their own, with these resources (the
/// fork bomb's 256 processes fit in 2 GiB under gVisor; the hog's 3 GiB not).
const ALONE: &[&str] = &["48-fork-bomb", "49-memory-hog"];
const ALONE_RESOURCES: &str = "{ pids: 256, memory: 2GiB }";
/// The shared bottle's.
const RESOURCES: &str = "{ pids: 512, memory: 1GiB }";
/// What `start` says when the bottle ended at its memory limit (the daemon
/// sees the OOM kill, or only the sandbox's SIGKILL).
const OOM: &str = "at its memory limit";
/// A launch that takes longer has hung.
const DEADLINE: Duration = Duration::from_secs(240);

/// A docker bottle project with `resources` whose agent runs `script` with
/// `cases` in its workspace.
fn project(image: &str, resources: &str, script: &str, cases: &[PathBuf]) -> Project {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(
        m.join("bottles/b.yaml"),
        format!("backend: docker\nimage: {image}\nresources: {resources}\negress:\n  routes: []\n"),
    )
    .expect("write");
    std::fs::write(
        m.join("agents/a.md"),
        format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {script:?}]\nbottle: b\n---\n"),
    )
    .expect("write");
    std::fs::create_dir_all(dir.path().join("cases")).expect("mkdir");
    for c in cases {
        std::fs::copy(c, dir.path().join("cases").join(c.file_name().expect("name"))).expect("copy");
    }
    Project { dir, state: tempfile::tempdir().expect("tempdir") }
}

/// The bottle's workspace copy (one bottle per project here).
fn workspace(p: &Project) -> Option<PathBuf> {
    let s = slugs(p).into_iter().next()?;
    Some(p.state.path().join("bot-bottle/bottles").join(s).join("workspace"))
}

/// `bot-bottle start a` in `p` under `runtime`, the launcher's environment carrying
/// canaries that must never reach the bottle (case 46).
fn start(p: &Project, runtime: &str) -> Child {
    command(p, &["start", "a", "--quiet", "--runtime", runtime])
        .env("BB_HOST_CANARY", "launcher-only")
        .env("CARGO_HOME", "/launcher-only")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start")
}

/// Waits for `child` up to [`DEADLINE`]; kills it past that. Its exit code
/// (None: killed) and its stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let started = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if started.elapsed() > DEADLINE {
            child.kill().expect("kill");
            child.wait().expect("wait");
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).ok();
    }
    (code, err)
}

/// Listeners outside every bottle; any connection or datagram is a hit.
struct Outside {
    hits: Arc<AtomicUsize>,
    tcp: TcpListener,
    udp: UdpSocket,
    abstract_name: String,
}

impl Outside {
    fn new() -> Outside {
        let hits = Arc::new(AtomicUsize::new(0));
        let tcp = TcpListener::bind("0.0.0.0:0").expect("tcp");
        let udp = UdpSocket::bind("0.0.0.0:0").expect("udp");
        let abstract_name = format!("bb-escape-docker-{}", std::process::id());
        let abs = UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("name"))
            .expect("abstract");
        let (h, l) = (hits.clone(), tcp.try_clone().expect("clone"));
        std::thread::spawn(move || l.incoming().flatten().for_each(|_| _ = h.fetch_add(1, Ordering::SeqCst)));
        let (h, u) = (hits.clone(), udp.try_clone().expect("clone"));
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while u.recv(&mut b).is_ok() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut c in abs.incoming().flatten() {
                c.read_exact(&mut [0u8; 1]).ok();
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        Outside { hits, tcp, udp, abstract_name }
    }

    /// The case environment, as `export` lines for the agent's shell.
    fn exports(&self) -> String {
        format!(
            "export HOST_ADDR={} HOST_PORT={} HOST_UDP_PORT={} HOST_ABSTRACT={} HOST_PID={} NEIGHBOR_PORT=8765",
            host_addr(),
            self.tcp.local_addr().expect("addr").port(),
            self.udp.local_addr().expect("addr").port(),
            self.abstract_name,
            std::process::id()
        )
    }
}

#[test]
fn nothing_escapes_a_docker_bottle_under_runc_or_runsc() {
    let image = match image() {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    let runtimes = runtimes();
    let all = cases();
    assert!(all.len() >= 58, "{} cases", all.len());
    let outside = Outside::new();
    // Descriptors a careless parent leaves open without close-on-exec: the
    // launcher inherits them; no bottle may (case 56).
    let leaked_file = std::fs::File::open("/etc/hostname").expect("a host file");
    let leaked_conn = std::net::TcpStream::connect(outside.tcp.local_addr().expect("addr")).expect("connect");
    for fd in [std::os::fd::AsFd::as_fd(&leaked_file), std::os::fd::AsFd::as_fd(&leaked_conn)] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("clear FD_CLOEXEC");
    }
    std::thread::sleep(Duration::from_millis(100));
    let hits_before = outside.hits.load(Ordering::SeqCst);
    let hostname_before = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for runtime in &runtimes {
        let (f, r) = suite(&image, runtime, &all, &outside);
        failures.extend(f);
        report.extend(r);
    }
    // Every case and why it held, under each runtime (`--nocapture`).
    std::io::Write::write_all(&mut std::io::stderr(), format!("{}\n", report.join("\n")).as_bytes()).ok();
    assert!(failures.is_empty(), "escapes or broken cases:\n{}\n\nall:\n{}", failures.join("\n"), report.join("\n"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(outside.hits.load(Ordering::SeqCst), hits_before, "something reached a host listener");
    drop((leaked_file, leaked_conn));
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"), hostname_before);
}

/// Every case under `runtime`: the failures and the full report.
fn suite(image: &str, runtime: &str, all: &[PathBuf], outside: &Outside) -> (Vec<String>, Vec<String>) {
    // A neighbour bottle listening on its own loopback (case 51).
    let neighbour = project(
        image,
        RESOURCES,
        "python3 -c \"import socket, os, time\ns = socket.socket()\ns.bind(('127.0.0.1', 8765))\ns.listen()\n\
         open('/workspace/ready', 'w').close()\nwhile not os.path.exists('/workspace/stop'): time.sleep(0.1)\"",
        &[],
    );
    let neighbour_child = start(&neighbour, runtime);
    let waited = Instant::now();
    while !workspace(&neighbour).is_some_and(|w| w.join("ready").exists()) && waited.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ws = workspace(&neighbour).expect("the neighbour's workspace");
    assert!(ws.join("ready").exists(), "{runtime}: the neighbour bottle is listening");

    // Each case's output, and a line of its own when it exits non-zero.
    let run = |resources: &str, cases: &[PathBuf]| {
        let script = format!(
            "{}; mkdir -p /workspace/.out; for c in /workspace/cases/*.sh; do n=${{c##*/}}; \
             sh \"$c\" </dev/null >\"/workspace/.out/${{n%.sh}}\" 2>&1 || echo \"case exited $?\" >>\"/workspace/.out/${{n%.sh}}\"; done",
            outside.exports()
        );
        let p = project(image, resources, &script, cases);
        let (code, err) = finish(start(&p, runtime));
        (p, code, err)
    };
    let is_alone = |c: &PathBuf| c.file_stem().is_some_and(|s| ALONE.iter().any(|a| s == *a));
    let mut runs = vec![run(RESOURCES, &all.iter().filter(|c| !is_alone(c)).cloned().collect::<Vec<_>>())];
    runs.extend(all.iter().filter(|c| is_alone(c)).map(|c| run(ALONE_RESOURCES, std::slice::from_ref(c))));
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (p, code, err) in runs {
        let out = workspace(&p).map(|w| w.join(".out")).unwrap_or_default();
        for case in std::fs::read_dir(p.dir.path().join("cases")).expect("cases").flatten() {
            let name = case.path().file_stem().expect("stem").to_string_lossy().into_owned();
            let got = std::fs::read_to_string(out.join(&name)).unwrap_or_default();
            let mut got = got.trim().to_owned();
            // gVisor: the sandbox, not the hog, is killed at the limit.
            if got.is_empty() && runtime == "runsc" && name == "49-memory-hog" && err.contains(OOM) {
                got = "contained: the whole sandbox was killed at the bottle's memory limit (under gVisor the \
                       limit applies to the sandbox, so the case could not report from inside; bot-bottle said so)"
                    .into();
            }
            let line = format!("{runtime} {name}: {got}");
            if !got.starts_with("contained") || got.contains("case exited") {
                failures.push(format!("{line} (bottle exit {code:?}): {err}"));
            }
            report.push(line);
        }
        leftovers(&p, runtime);
    }
    std::fs::write(ws.join("stop"), "").expect("stop the neighbour");
    let (code, err) = finish(neighbour_child);
    assert!(code.is_some(), "{runtime}: the neighbour bottle ended: {err}");
    leftovers(&neighbour, runtime);
    report.sort();
    (failures, report)
}

/// A finished bottle leaves no container; `cleanup` then finds nothing.
fn leftovers(p: &Project, runtime: &str) {
    let slugs = slugs(p);
    let (code, out) = cli(p, &["cleanup"]);
    assert_eq!(code, 0, "{runtime}: {out}");
    assert!(containers(&slugs).is_empty(), "{runtime}: a container is left: {out}");
}
