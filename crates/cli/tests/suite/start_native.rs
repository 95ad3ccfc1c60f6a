//! `bot-bottle start` on the native backend, through the real binary: the
//! agent's traffic goes through the bottle's forwarder and egress proxy.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bot_bottle_backend::native;

use super::native::{available, panic_or_skip};

const GHP: &str = "ghp_Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5eG2uT";

/// A plain-HTTP upstream on the host's loopback, recording request lines.
pub(crate) fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
            s.lock().expect("lock").push(head);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nupstream-ok");
        }
    });
    (port, seen)
}

pub(crate) struct Project {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) state: tempfile::TempDir,
}

pub(crate) fn project(port: u16, command: &str) -> Project {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(
        m.join("bottles/b.yaml"),
        format!("backend: native\nresources: {{ pids: 512 }}\negress:\n  routes:\n    - host: \"127.0.0.1:{port}\"\n      methods: [GET]\n"),
    )
    .expect("write");
    std::fs::write(
        m.join("agents/a.md"),
        format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {command:?}]\nbottle: b\n---\n"),
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "the user's file\n").expect("write");
    Project { dir, state: tempfile::tempdir().expect("tempdir") }
}

fn start(p: &Project) -> Command {
    command(p, &["start", "a", "--quiet"])
}

/// bottle init processes still alive for this state dir.
pub(crate) fn leftovers(p: &Project) -> usize {
    let needle = p.state.path().display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains("__bottle-init") && c.contains(&needle))
        })
        .count()
}

#[test]
fn the_agent_reaches_only_what_its_routes_allow() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, seen) = upstream();
    let script = format!(
        "for u in http://127.0.0.1:{port}/ok http://denied.example/ 'http://127.0.0.1:{port}/leak?t={GHP}'; do \
           curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" \"$u\"; done; \
         curl -s --max-time 3 -o /dev/null --noproxy '*' http://127.0.0.1:{port}/direct || echo direct-refused; \
         echo changed >> /workspace/notes.txt; exit 3"
    );
    let p = project(port, &script);
    let out = start(&p).output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code passes through: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "200\n403\n403\ndirect-refused\n");
    assert_eq!(*seen.lock().expect("lock"), vec!["GET /ok HTTP/1.1".to_owned()], "only the allowed request arrived");
    // The user's checkout is untouched; the agent's copy kept its change.
    assert_eq!(std::fs::read_to_string(p.dir.path().join("notes.txt")).expect("read"), "the user's file\n");
    let bottles = p.state.path().join("bot-bottle/bottles");
    let slug = std::fs::read_dir(&bottles).expect("bottles").flatten().next().expect("one bottle").path();
    assert_eq!(std::fs::read_to_string(slug.join("workspace/notes.txt")).expect("read"), "the user's file\nchanged\n");
    let audit = std::fs::read_to_string(slug.join("audit.jsonl")).expect("audit");
    assert!(
        audit.contains("\"decision\":\"allow\"")
            && audit.contains("\"rule\":\"host\"")
            && audit.contains("\"rule\":\"dlp\""),
        "{audit}"
    );
    assert!(!audit.contains(GHP), "the audit log holds no secret");
    assert!(!slug.join("root").exists() && !slug.join("sockets").exists(), "runtime dirs removed");
    let name = slug.file_name().expect("slug").to_string_lossy().into_owned();
    assert!(native::cgroup_list(&name).is_empty(), "the bottle's cgroup is left");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&slug).expect("state").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "a bottle's state (and its proxy socket) is private to the launcher");
    assert_eq!(leftovers(&p), 0);
}

#[test]
fn sigterm_and_sigkill_leave_nothing_running() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    for signal in ["-TERM", "-KILL"] {
        let (port, _) = upstream();
        let p = project(port, "echo up; sleep 60");
        let mut child = start(&p).stdout(Stdio::piped()).spawn().expect("start");
        let mut first = [0u8; 3];
        child.stdout.take().expect("stdout").read_exact(&mut first).expect("agent started");
        assert_eq!(&first, b"up\n");
        assert!(leftovers(&p) > 0, "the bottle is running");
        let bottles = p.state.path().join("bot-bottle/bottles");
        let b = std::fs::read_dir(&bottles).expect("bottles").flatten().next().expect("bottle").path();
        use std::os::unix::fs::PermissionsExt;
        let sock = std::fs::metadata(b.join("sockets/proxy.sock")).expect("socket").permissions().mode() & 0o777;
        assert_eq!(sock, 0o600, "only the bottle's own root may use its proxy");
        Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill");
        let started = Instant::now();
        let _ = child.wait();
        while leftovers(&p) > 0 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(leftovers(&p), 0, "{signal}: bottle processes left behind");
        assert!(started.elapsed() < Duration::from_secs(5), "{signal}: teardown took {:?}", started.elapsed());
        // A killed launcher leaves the (empty) cgroup to `cleanup`.
        if signal == "-KILL" {
            assert_eq!(cli(&p, &["cleanup"]).0, 0);
        }
        for s in slugs(&p) {
            assert!(native::cgroup_list(&s).is_empty(), "{signal}: the cgroup of {s} is left");
        }
    }
}

/// The slugs of the project's bottles.
pub(crate) fn slugs(p: &Project) -> Vec<String> {
    let bottles = p.state.path().join("bot-bottle/bottles");
    std::fs::read_dir(bottles)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Whether bottles launched by this process get a cgroup.
fn cgroups_here() -> bool {
    native::cgroup_detect(&native::Limits { pids: Some(512), memory: None, cpus: None, disk: None }).mode().is_some()
}

/// `bot-bottle ARGS` in the project, with its state under the test's dir.
pub(crate) fn command(p: &Project, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bot-bottle"));
    c.args(args)
        .current_dir(p.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", p.state.path())
        .env("XDG_STATE_HOME", p.state.path())
        .stdin(Stdio::null());
    c
}

pub(crate) fn cli(p: &Project, args: &[&str]) -> (i32, String) {
    let o = command(p, args).output().expect("bot-bottle");
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn list_stop_resume_and_cleanup() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, _) = upstream();
    // Each run appends to a file in the workspace copy and prints the count.
    let p = project(port, "echo run >> /workspace/runs; wc -l < /workspace/runs; sleep ${SLEEP_FOR:-0}");
    let (code, out) = cli(&p, &["start", "a", "--quiet"]);
    assert_eq!((code, out.trim()), (0, "1"));
    let rows: serde_json::Value = serde_json::from_str(&cli(&p, &["list", "-a", "--format", "json"]).1).expect("json");
    let slug = rows[0]["slug"].as_str().expect("slug").to_owned();
    assert_eq!(rows[0]["state"], "exited (0)");
    // A cgroup left under the bottle's name (as by a launcher killed
    // before `cleanup`) does not stop its resume, and does not outlive it.
    if cgroups_here() {
        let limits = native::Limits { pids: Some(512), memory: None, cpus: None, disk: None };
        let left = native::bottle_cgroup(&slug, &limits).expect("cgroup").expect("a cgroup");
        assert_eq!(native::cgroup_list(&slug), std::slice::from_ref(&slug));
        drop(left);
    }
    // resume: same request, same workspace copy.
    let (code, out) = cli(&p, &["resume", &slug, "--quiet"]);
    assert_eq!((code, out.trim()), (0, "2"), "resume reuses the workspace copy");
    assert!(native::cgroup_list(&slug).is_empty());
    // A crashed launcher (SIGKILL) shows as crashed; cleanup removes what it left.
    let m = p.dir.path().join(".bot-bottle/agents/slow.md");
    std::fs::write(&m, "---\nprovider: command\ncommand: [\"sh\", \"-c\", \"echo up; sleep 30\"]\nbottle: b\n---\n")
        .expect("write");
    let mut slow = command(&p, &["start", "slow", "--quiet"]).stdout(Stdio::piped()).spawn().expect("start slow");
    // Kill it once the agent is really running inside.
    let mut up = [0u8; 3];
    slow.stdout.take().expect("stdout").read_exact(&mut up).expect("agent up");
    Command::new("kill").args(["-KILL", &slow.id().to_string()]).status().expect("kill");
    let _ = slow.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert!(cli(&p, &["list", "-a"]).1.contains("crashed"), "{}", cli(&p, &["list", "-a"]).1);
    assert!(!cli(&p, &["list"]).1.contains("crashed"), "list shows running bottles only");
    let (code, out) = cli(&p, &["cleanup"]);
    assert_eq!(code, 0);
    assert!(out.contains("removed root") && out.contains("kept"), "{out}");
    assert_eq!(leftovers(&p), 0);
    // Nothing left behind, but what the exited bottles hold is said.
    let again = cli(&p, &["cleanup"]).1;
    assert!(again.starts_with("nothing left behind to remove\nkept"), "{again}");
    assert!(
        again.contains(&format!("  {slug}: exited (0), holds ")) && again.contains("bot-bottle rm SLUG"),
        "{again}"
    );
    // stop: a running bottle is torn down and recorded as exited.
    let mut running = command(&p, &["start", "slow", "--quiet"]).spawn().expect("start slow");
    let started = Instant::now();
    while !cli(&p, &["list"]).1.contains("running") && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out) = cli(&p, &["stop", "--all"]);
    assert_eq!(code, 0);
    assert!(out.contains("stopped"), "{out}");
    let _ = running.wait();
    assert!(!cli(&p, &["list"]).1.contains("running"));
    assert_eq!(leftovers(&p), 0);
    assert_eq!(cli(&p, &["stop", "nope"]).0, 2);
}

#[test]
fn cleanup_after_sigkill_at_each_launch_phase_leaves_nothing() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, _) = upstream();
    for phase in ["state", "workspace", "sidecars", "init-spawned", "bottle-mapped", "running"] {
        let p = project(port, "echo up; sleep 60");
        // The launcher exactly at the phase (or the agent running).
        let mut child = start_paused_at(&p, phase);
        let slugs = slugs(&p);
        // Where bottles get cgroups, the bottle has one by now.
        if ["init-spawned", "bottle-mapped", "running"].contains(&phase) && cgroups_here() {
            assert!(slugs.iter().all(|s| native::cgroup_list(s).contains(s)), "{phase}: no cgroup for {slugs:?}");
        }
        Command::new("kill").args(["-KILL", &child.id().to_string()]).status().expect("kill");
        let _ = child.wait();
        let (code, out) = cli(&p, &["cleanup"]);
        assert_eq!(code, 0, "{phase}: {out}");
        if ["init-spawned", "bottle-mapped", "running"].contains(&phase) && cgroups_here() {
            assert!(out.contains("removed its cgroup"), "{phase}: {out}");
        }
        for s in &slugs {
            assert!(native::cgroup_list(s).is_empty(), "{phase}: the cgroup of {s} is left");
        }
        let started = Instant::now();
        while leftovers(&p) > 0 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(leftovers(&p), 0, "{phase}: processes left");
        let bottles = p.state.path().join("bot-bottle/bottles");
        for b in std::fs::read_dir(&bottles).expect("bottles").flatten() {
            for runtime in ["root", "sockets", "sync-in", "sync-out", "spec.json"] {
                assert!(!b.path().join(runtime).exists(), "{phase}: {runtime} left in {}", b.path().display());
            }
        }
        assert!(!cli(&p, &["list"]).1.contains("running"), "{phase}");
        // Nothing of the bottle is mounted on the host either.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&p.state.path().display().to_string()), "{phase}: a mount leaked to the host");
    }
}

#[test]
fn the_injected_token_is_nowhere_inside() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, _) = upstream();
    let p = project(
        port,
        "env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n'; \
         for d in /run /home /tmp /workspace /etc /dev/shm; do find \"$d\" -type f -size -4M 2>/dev/null | while read -r f; do cat \"$f\" 2>/dev/null; done; done; echo dump-done",
    );
    // Give the bottle a route that injects a token from the launcher's env.
    let b = p.dir.path().join(".bot-bottle/bottles/b.yaml");
    std::fs::write(&b, format!("backend: native\negress:\n  routes:\n    - host: \"127.0.0.1:{port}\"\n      inject: {{ header: authorization, env: BB_TEST_TOKEN, format: \"Bearer {{}}\" }}\n")).expect("write");
    let token = "tok-0123456789-the-real-injected-token";
    let out = command(&p, &["start", "a", "--quiet"]).env("BB_TEST_TOKEN", token).output().expect("start");
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("dump-done") && dump.len() > 10_000,
        "the dump ran: {} bytes\n{}",
        dump.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dump.contains(token), "the injected token is visible inside the bottle");
    // Its name appears only in the project's own manifest (part of the
    // workspace copy); no process inside has it in its environment.
    assert!(!dump.lines().any(|l| l.starts_with("BB_TEST_TOKEN=")), "the token's variable is in an environment inside");
}

#[test]
fn detach_runs_in_the_background_until_stopped() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, _) = upstream();
    let p = project(port, "echo detached-and-running; sleep 60");
    let started = Instant::now();
    let (code, out) = cli(&p, &["start", "a", "--detach"]);
    assert_eq!(code, 0);
    assert!(started.elapsed() < Duration::from_secs(5), "--detach returns at once");
    let slug = out.trim().to_owned();
    let log = p.state.path().join("bot-bottle/bottles").join(&slug).join("agent.log");
    let waited = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("detached-and-running")
        && waited.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read_to_string(&log).expect("log").contains("detached-and-running"));
    assert!(cli(&p, &["list"]).1.contains("running"));
    let (code, out) = cli(&p, &["stop", &slug]);
    assert_eq!((code, out.trim()), (0, format!("{slug}: stopped").as_str()));
    assert_eq!(leftovers(&p), 0);
}

#[test]
fn a_missing_agent_program_is_reported_before_the_agent_starts() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, _) = upstream();
    let p = project(port, "unused");
    let a = p.dir.path().join(".bot-bottle/agents/a.md");
    std::fs::write(&a, "---\nprovider: command\ncommand: [\"no-such-program\", \"--flag\"]\nbottle: b\n---\n")
        .expect("write");
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    assert_eq!(out.status.code(), Some(127), "a missing agent program is 127, as in a shell");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the agent's program `no-such-program` must exist in the bottle"), "{err}");
    assert_eq!(leftovers(&p), 0);
}

/// `bot-bottle start a` in `p`, paused at launch `phase` (or, for
/// `running`, once the agent printed `up`): the launcher, exactly there.
#[expect(clippy::zombie_processes, reason = "returned to the caller, who kills and waits for it")]
pub(crate) fn start_paused_at(p: &Project, phase: &str) -> Child {
    let mut c = command(p, &["start", "a"]);
    if phase != "running" {
        c.env("BOT_BOTTLE_PAUSE_AT", phase);
    }
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start");
    let wanted = if phase == "running" { "up".to_owned() } else { format!("paused at {phase}") };
    let reader: Box<dyn Read + Send> = if phase == "running" {
        Box::new(child.stdout.take().expect("stdout"))
    } else {
        Box::new(child.stderr.take().expect("stderr"))
    };
    let mut lines = std::io::BufReader::new(reader);
    let mut seen = String::new();
    loop {
        let mut l = String::new();
        if std::io::BufRead::read_line(&mut lines, &mut l).expect("read") == 0 {
            let status = child.wait().expect("wait");
            panic!("{phase}: the launcher ended ({status}) before the phase: {seen}");
        }
        seen.push_str(&l);
        if l.contains(&wanted) {
            return child;
        }
    }
}
