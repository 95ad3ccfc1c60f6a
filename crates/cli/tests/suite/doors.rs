//! What crosses into a bottle besides its workspace, and the limits around
//! it, through the real binary: descriptors the launcher inherited stay
//! out; cpu and disk budgets hold, or `start` says they do not.

use std::process::{Command, Stdio};

use super::start_native::{Project, command, leftovers, project};
use super::terminal::skip_without_bottles;

/// The project's bottle with `resources` (a YAML flow mapping).
fn with_resources(p: &Project, resources: &str) {
    std::fs::write(
        p.dir.path().join(".bot-bottle/bottles/b.yaml"),
        format!("backend: native\nresources: {resources}\n"),
    )
    .expect("write");
}

#[test]
fn a_launcher_started_with_open_files_and_sockets_passes_none_of_them_in() {
    if skip_without_bottles() {
        return;
    }
    let p = project(
        1,
        "ls -l /proc/self/fd/ | tail -n +2; for fd in 3 4 5 6 7 8 9; do echo x >&$fd && echo wrote-$fd; done 2>/dev/null; true",
    );
    // A parent that leaks: a host file, a listening socket and a connected
    // one, all without close-on-exec, as fds 3 to 6 and 9 of bot-bottle.
    let leak = r#"
import os, socket, subprocess, sys
f = os.open("/etc/hostname", os.O_RDONLY)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname())
a, _ = l.accept()
w = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)
fds = [f, l.fileno(), c.fileno(), a.fileno(), w]
for fd in fds:
    os.set_inheritable(fd, True)
r = subprocess.run(sys.argv[2:], pass_fds=fds, capture_output=True, text=True)
print("fds", fds, file=sys.stderr)
sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)
a.settimeout(0.5)
try:
    got = a.recv(64)
except OSError:
    got = b""
print("socket got", repr(got))
sys.exit(r.returncode)
"#;
    let sink = p.state.path().join("leaked-file");
    let bin = env!("CARGO_BIN_EXE_bot-bottle");
    let out = Command::new("python3")
        .args(["-c", leak])
        .arg(&sink)
        .args([bin, "start", "a", "--quiet"])
        .current_dir(p.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", p.state.path())
        .env("XDG_STATE_HOME", p.state.path())
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let fds: Vec<&str> = stdout.lines().filter(|l| l.contains("->")).collect();
    // 0, 1, 2 and the listing's own descriptor.
    assert!(fds.len() <= 4, "descriptors reached the agent: {fds:#?}");
    assert!(fds.iter().all(|l| !l.contains("socket:") && !l.contains("hostname")), "{fds:#?}");
    assert!(!stdout.contains("wrote-"), "the agent wrote to a leaked descriptor: {stdout}");
    assert!(stdout.contains("socket got b''"), "{stdout}");
    assert_eq!(std::fs::read(&sink).expect("sink"), b"", "the agent wrote to a leaked file");
    assert_eq!(leftovers(&p), 0);
}

/// Whether bottles launched by this process get a cgroup that can limit cpu.
fn cpu_cgroup_here() -> bool {
    use bot_bottle_backend::native;
    let limits = native::Limits { pids: Some(512), memory: None, cpus: Some(500), disk: None };
    native::cgroup_detect(&limits).enforced(&limits).cpus.is_some()
}

#[test]
fn a_cpu_limit_holds_or_start_says_it_does_not() {
    if skip_without_bottles() {
        return;
    }
    // Two busy processes for 1.5 s of wall time: without a limit they take
    // up to 3 cpu-seconds; at half a cpu, 0.75.
    let burn = "import os, time\nos.fork()\nt, c = time.time(), time.process_time()\nwhile time.time() - t < 1.5: pass\nprint('cpu', time.process_time() - c, flush=True)";
    let p = project(1, &format!("python3 -c \"{burn}\""));
    with_resources(&p, "{ cpus: 0.5 }");
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let used: f64 = stdout.lines().filter_map(|l| l.strip_prefix("cpu ")?.parse::<f64>().ok()).sum();
    if cpu_cgroup_here() {
        assert!(used < 1.1, "two busy processes used {used:.2} cpu-seconds in 1.5 s at cpus 0.5");
        assert!(!stderr.contains("warning: cpus"), "{stderr}");
    } else {
        assert!(stderr.contains("warning: cpus: not enforced"), "no warning, and {used:.2} cpu-seconds: {stderr}");
    }
    // The plan says the same as `start`.
    let plan = command(&p, &["start", "a", "--dry-run", "--format", "json"]).output().expect("dry run");
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("json");
    let warned = plan["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .any(|w| w.as_str().is_some_and(|w| w.starts_with("cpus: ")));
    assert_eq!(warned, !cpu_cgroup_here(), "{:#}", plan["warnings"]);
    assert_eq!(plan["launch"]["enforcement"]["cpus"] != "not enforced", cpu_cgroup_here(), "{:#}", plan["launch"]);
}

#[test]
fn a_memory_limit_without_a_cgroup_is_announced() {
    if skip_without_bottles() {
        return;
    }
    use bot_bottle_backend::native;
    let p = project(1, "true");
    with_resources(&p, "{ memory: 256MiB }");
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let limits = native::Limits { pids: Some(4096), memory: Some(256 << 20), cpus: None, disk: None };
    let by_cgroup = native::cgroup_detect(&limits).enforced(&limits).memory.is_some();
    assert_eq!(
        stderr.contains("warning: memory: no usable cgroup here, so the limit holds for each process"),
        !by_cgroup,
        "{stderr}"
    );
}

#[test]
fn the_disk_budget_stops_a_bottle_that_fills_its_workspace() {
    if skip_without_bottles() {
        return;
    }
    // One file may not outgrow the budget at all; many small ones are
    // caught by the launcher's watch.
    let p = project(
        1,
        "head -c 80M /dev/zero > /workspace/one 2>/tmp/err; echo one=$? $(cat /tmp/err | head -c 60); rm -f /workspace/one; \
         i=0; while [ $i -lt 40 ]; do head -c 8M /dev/urandom > /workspace/fill-$i; i=$((i+1)); sleep 0.1; done; echo filled",
    );
    with_resources(&p, "{ disk: 64MiB }");
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("one=1") || stdout.contains("one=153"), "a file past the budget: {stdout}");
    assert!(stdout.contains("File too large") || stdout.contains("one=153"), "{stdout}");
    assert!(!stdout.contains("filled"), "the bottle wrote 320 MiB under a 64 MiB budget: {stdout}\n{stderr}");
    assert!(stderr.contains("over the bottle's disk budget of 64 MiB"), "{stderr}");
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(leftovers(&p), 0);
}
