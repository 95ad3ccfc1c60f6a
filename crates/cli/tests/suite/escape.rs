//! The escape suite (`tests/escape/*.sh`) on the native backend: each case
//! runs in a fresh bottle and must report `contained`; nothing may reach the
//! host listeners set up around it.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::native::{Bottle, available, panic_or_skip};

pub(crate) fn host_addr() -> String {
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(3).and_then(|a| a.split('/').next()).map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".into())
}

pub(crate) fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/escape");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/escape")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    v.sort();
    v
}

#[test]
fn nothing_escapes_a_native_bottle() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    // Things outside the bottle that a case tries to reach.
    let hits = Arc::new(AtomicUsize::new(0));
    let tcp = TcpListener::bind("0.0.0.0:0").expect("tcp");
    let udp = UdpSocket::bind("0.0.0.0:0").expect("udp");
    let name = format!("bb-escape-{}", std::process::id());
    let abs =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("name")).expect("abstract");
    {
        let h = hits.clone();
        let l = tcp.try_clone().expect("clone");
        std::thread::spawn(move || {
            for _ in l.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    {
        let h = hits.clone();
        let u = udp.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while u.recv(&mut b).is_ok() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    {
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut c in abs.incoming().flatten() {
                let _ = c.read(&mut [0u8; 1]);
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    // A neighbour bottle listening on its own loopback for the whole suite.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let neighbour = Bottle::new();
    let ready = neighbour.dir.path().join("workspace/ready");
    let neighbour_stop = stop.clone();
    let neighbour_thread = std::thread::spawn(move || {
        let spec = neighbour.spec(&[
            "/usr/bin/python3",
            "-c",
            "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 8765))\ns.listen()\nopen('/workspace/ready', 'w').close()\ntime.sleep(300)",
        ]);
        neighbour.run_until(&spec, &neighbour_stop)
    });
    let waited = std::time::Instant::now();
    while !ready.exists() && waited.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ready.exists(), "the neighbour bottle is listening");
    // Descriptors left open without close-on-exec, as a careless parent
    // process would: a host file and a connection to a host listener. None
    // may reach a bottle (case 56; a connection's use would also count as a
    // hit on the listener).
    let leaked_file = std::fs::File::open("/etc/hostname").expect("a host file");
    let leaked_conn = std::net::TcpStream::connect(tcp.local_addr().expect("addr")).expect("connect");
    for fd in [std::os::fd::AsFd::as_fd(&leaked_file), std::os::fd::AsFd::as_fd(&leaked_conn)] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("clear FD_CLOEXEC");
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let hits_before = hits.load(Ordering::SeqCst);
    let hostname_before = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let env = [
        ("HOST_ADDR", host_addr()),
        ("HOST_PORT", tcp.local_addr().expect("addr").port().to_string()),
        ("HOST_UDP_PORT", udp.local_addr().expect("addr").port().to_string()),
        ("HOST_ABSTRACT", name),
        ("HOST_PID", std::process::id().to_string()),
        ("NEIGHBOR_PORT", "8765".to_owned()),
    ];
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in &cases {
        let b = Bottle::new();
        std::fs::copy(case, b.dir.path().join("workspace/case.sh")).expect("copy");
        let mut spec = b.spec(&["/bin/sh", "-c", "exec > /workspace/.out 2>&1; /bin/sh /workspace/case.sh"]);
        spec.cmd.env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let code = b.run(&spec);
        let out = std::fs::read_to_string(b.dir.path().join("workspace/.out")).unwrap_or_default();
        let name = case.file_stem().expect("stem").to_string_lossy().into_owned();
        report.push(format!("{name}: {}", out.trim()));
        if code != 0 || !out.trim_start().starts_with("contained") {
            failures.push(format!("{name} (exit {code}): {}", out.trim()));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = neighbour_thread.join();
    assert!(failures.is_empty(), "escapes or broken cases:\n{}\n\nall:\n{}", failures.join("\n"), report.join("\n"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(hits.load(Ordering::SeqCst), hits_before, "something reached a host listener");
    drop((leaked_file, leaked_conn));
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"), hostname_before);
}
