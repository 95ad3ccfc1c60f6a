//! Bottles on the native backend, run for real.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bot_bottle_backend::native::{self, Cgroup, Limits, NativeBottle, Spec};
use bot_bottle_backend::{Bottle as _, Exec, Owner};

pub(crate) struct Bottle {
    pub(crate) dir: tempfile::TempDir,
}

/// A bottle's spec and the command to run as its agent.
pub(crate) struct Run {
    pub(crate) spec: Spec,
    pub(crate) cmd: Exec,
}

/// Whether this machine can build native bottles; the reason if not.
pub(crate) fn available() -> Result<(), String> {
    let ok = std::process::Command::new("unshare").args(["-U", "true"]).status().is_ok_and(|s| s.success());
    if ok { Ok(()) } else { Err("user namespaces are not available here (`unshare -U true` failed)".into()) }
}

impl Bottle {
    pub(crate) fn new() -> Bottle {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("workspace")).expect("mkdir");
        std::fs::write(dir.path().join("workspace/README"), "hello workspace\n").expect("write");
        Bottle { dir }
    }

    pub(crate) fn spec(&self, argv: &[&str]) -> Run {
        let d = self.dir.path();
        let (uid, gid) = native::agent_ids();
        let spec = Spec {
            hostname: "bottle-test".into(),
            uid,
            gid,
            user: "agent".into(),
            home: "/home/agent".into(),
            workspace: Some(d.join("workspace")),
            root_dir: d.join("root"),
            sockets_dir: None,
            forwards: vec![],
            limits: Limits { pids: Some(256), memory: Some(1 << 30), cpus: None, disk: None },
            sync_out: d.join("sync-out"),
            sync_in: d.join("sync-in"),
            control: d.join("control.sock"),
            init_exe: PathBuf::from(env!("CARGO_BIN_EXE_bot-bottle")),
            mounts: vec![],
            cgroup: None,
        };
        let cmd = Exec {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()), ("HOME".into(), "/home/agent".into())],
            workdir: Some("/workspace".into()),
            user: Owner::Agent,
        };
        Run { spec, cmd }
    }

    pub(crate) fn run(&self, r: &Run) -> i32 {
        self.run_until(r, &std::sync::atomic::AtomicBool::new(false))
    }

    /// Runs until the agent exits or `stop` is set.
    pub(crate) fn run_until(&self, r: &Run, stop: &std::sync::atomic::AtomicBool) -> i32 {
        let mut b = self.launch(r);
        b.run_agent(&r.cmd, stop).expect("bottle runs")
    }

    /// The bottle, in a cgroup of its own where the host has a usable one,
    /// as `bot-bottle start` builds it.
    pub(crate) fn launch(&self, r: &Run) -> NativeBottle {
        // The agent's workspace must be writable by its host id.
        chown_tree(&self.dir.path().join("workspace"));
        NativeBottle::launch_in(&r.spec, self.dir.path(), self.cgroup(r)).expect("bottle builds")
    }

    /// The name of this bottle's cgroup.
    pub(crate) fn cgroup_name(&self) -> String {
        let dir = self.dir.path().file_name().expect("name").to_string_lossy().into_owned();
        format!("bb-test-{}", dir.trim_start_matches('.'))
    }

    /// This bottle's cgroup, if the host has a usable one.
    pub(crate) fn cgroup(&self, r: &Run) -> Option<Arc<Cgroup>> {
        native::bottle_cgroup(&self.cgroup_name(), &r.spec.limits).expect("the bottle's cgroup")
    }

    /// Runs `script` with sh inside; returns (exit code, stdout).
    pub(crate) fn sh(&self, script: &str) -> (i32, String) {
        let out = self.dir.path().join("workspace/.out");
        let wrapped = format!("exec > /workspace/.out 2>&1\n{script}");
        let code = self.run(&self.spec(&["/bin/sh", "-c", &wrapped]));
        (code, std::fs::read_to_string(out).unwrap_or_default())
    }
}

fn chown_tree(p: &Path) {
    if !nix_is_root() {
        return;
    }
    let id = (native::HOST_ID_BASE + native::AGENT_ID).to_string();
    let _ = std::process::Command::new("chown").args(["-R", &format!("{id}:{id}")]).arg(p).status();
}

fn nix_is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n")
}

#[test]
fn a_bottle_runs_a_command_and_passes_its_exit_code() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let b = Bottle::new();
    let (code, out) = b.sh("cat /workspace/README; hostname; id -u; echo done; exit 7");
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("hello workspace") && out.contains("bottle-test") && out.contains("done"), "{out}");
}

#[expect(clippy::print_stderr, reason = "a skipped test says why")]
pub(crate) fn panic_or_skip(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI must be able to run native bottles: {why}");
    }
    eprintln!("skipping: {why}");
}

#[test]
fn the_agent_sees_the_bottle_it_was_promised() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let b = Bottle::new();
    let (code, out) = b.sh("echo uid=$(id -u) host=$(hostname) home=$HOME pwd=$(pwd); \
         grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\t' ' '; \
         touch /workspace/w /tmp/t $HOME/h && echo writable; \
         touch /x 2>/dev/null || echo root-readonly; \
         ls -A /run/bot-bottle; \
         awk '$2==\"/\" {print \"root:\" $4}' /proc/mounts | cut -d, -f1");
    assert_eq!(code, 0, "{out}");
    let uid = native::agent_ids().0;
    let expected = format!(
        "uid={uid} host=bottle-test home=/home/agent pwd=/workspace\nCapEff: 0000000000000000\nCapBnd: 0000000000000000\nNoNewPrivs: 1\nSeccomp: 2\nwritable\nroot-readonly\ninit\nspec.json\nroot:ro\n"
    );
    assert_eq!(out, expected);
    assert!(b.dir.path().join("workspace/w").exists(), "workspace writes land on the host side");
}

fn exec(argv: &[&str], user: Owner, workdir: Option<&str>) -> Exec {
    Exec {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("GREETING".into(), "hi there".into())],
        workdir: workdir.map(str::to_owned),
        user,
    }
}

#[test]
fn the_bottle_handle_runs_commands_copies_files_in_and_provisions() {
    use bot_bottle_provision::{Command as Cmd, Content, Dir, File, Provision};
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let b = Bottle::new();
    let r = b.spec(&[
        "/bin/sh",
        "-c",
        "exec > /workspace/.out 2>&1; cat /run/bot-bottle/note; \
         (echo x > /run/bot-bottle/new) 2>/dev/null && echo writable || echo sealed; exit 4",
    ]);
    chown_tree(&b.dir.path().join("workspace"));
    let mut h = NativeBottle::launch(&r.spec, b.dir.path()).expect("launch");
    let uid = native::agent_ids().0;

    // exec: as the agent or as root, with its env and workdir; output and
    // exit code come back; nothing of this process's environment goes in.
    let out =
        h.exec(&exec(&["sh", "-c", "echo $GREETING; pwd; id -u; echo oops >&2; exit 3"], Owner::Agent, Some("/tmp")));
    let out = out.expect("exec");
    assert_eq!((out.code, String::from_utf8_lossy(&out.stdout).into_owned()), (3, format!("hi there\n/tmp\n{uid}\n")));
    assert_eq!(out.stderr, b"oops\n");
    let out = h.exec(&exec(&["sh", "-c", "id -u; pwd; env | sort"], Owner::Root, None)).expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n/\nGREETING=hi there\nPATH=/usr/bin:/bin\nPWD=/\n");
    let out = h.exec(&exec(&["no-such-program"], Owner::Agent, None)).expect("exec");
    assert_eq!(out.code, 127, "{}", String::from_utf8_lossy(&out.stderr));
    let out = h.exec(&exec(&["sh", "-c", "kill -9 $$"], Owner::Agent, None)).expect("exec");
    assert_eq!(out.code, 137);

    // mkdir and copy-in, with modes and owners as asked.
    h.mkdir("/home/agent/.config/tool", 0o700, Owner::Agent).expect("mkdir");
    h.copy_in("/home/agent/.config/tool/conf", b"k = v\n", 0o640, Owner::Agent).expect("copy in");
    h.copy_in("/run/bot-bottle/note", b"from the launcher\n", 0o644, Owner::Root).expect("copy in");
    let out = h
        .exec(&exec(
            &[
                "stat",
                "-c",
                "%n %a %u",
                "/home/agent/.config/tool",
                "/home/agent/.config/tool/conf",
                "/run/bot-bottle/note",
            ],
            Owner::Agent,
            None,
        ))
        .expect("stat");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "/home/agent/.config/tool 700 {uid}\n/home/agent/.config/tool/conf 640 {uid}\n/run/bot-bottle/note 644 0\n"
        )
    );
    for bad in ["relative/path", "/home/agent/../../etc/passwd"] {
        let e = h.copy_in(bad, b"x", 0o644, Owner::Root).expect_err(bad);
        assert!(e.to_string().contains("not an absolute path"), "{e}");
    }
    // Never through a link the agent planted.
    h.exec(&exec(&["ln", "-s", "/tmp/target", "/home/agent/link"], Owner::Agent, None)).expect("ln");
    assert!(h.copy_in("/home/agent/link", b"x", 0o644, Owner::Root).is_err());

    // Provisioning as data: dirs, files, then commands; a failing command
    // stops it with its reason.
    let mut p = Provision { workdir: "/workspace".into(), ..Provision::default() };
    p.dirs.push(Dir { path: "/home/agent/skills".into(), mode: 0o755, owner: Owner::Agent });
    p.files.push(File {
        path: "/home/agent/skills/s.md".into(),
        mode: 0o644,
        owner: Owner::Agent,
        content: Content::Inline(b"skill\n".to_vec()),
    });
    p.env.insert("PATH".into(), "/usr/bin:/bin".into());
    p.commands.push(Cmd {
        argv: vec!["sh".into(), "-c".into(), "test -f skills/s.md -o -f /home/agent/skills/s.md".into()],
        user: Owner::Agent,
        why: "the skill must be there".into(),
    });
    bot_bottle_backend::provision(&mut h, &p).expect("provision");
    p.commands.push(Cmd { argv: vec!["false".into()], user: Owner::Agent, why: "this must fail".into() });
    let e = bot_bottle_backend::provision(&mut h, &p).expect_err("fails");
    assert_eq!(e.to_string(), "this must fail (`false` exited 1)");

    // The agent: its exit code; the bottle's own files sealed read-only.
    let code = h.run_agent(&r.cmd, &std::sync::atomic::AtomicBool::new(false)).expect("agent");
    assert_eq!(code, 4);
    let out = std::fs::read_to_string(b.dir.path().join("workspace/.out")).expect("out");
    assert_eq!(out, "from the launcher\nsealed\n");
    drop(h);
    for left in ["spec.json", "control.sock", "sync-in", "sync-out", "root"] {
        assert!(!b.dir.path().join(left).exists(), "{left} left behind");
    }
}

/// Landlock, checked by what it changes: each probe below is allowed by
/// the bottle's mounts and by file ownership, and refused only by the
/// landlock domain stage c puts every command and the agent in. Where the
/// kernel has no landlock the same probes must succeed (the test then
/// checks that its absence is not fatal).
#[test]
fn landlock_confines_every_command_and_the_agent() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let abi = native::landlock_probe().ok();
    let b = Bottle::new();
    // The agent: its own /proc files are its to write (no capability
    // needed), but /proc is read-only under landlock.
    let r = b.spec(&[
        "/bin/sh",
        "-c",
        "exec > /workspace/.out 2>&1; \
         (echo renamed > /proc/self/comm) 2>/dev/null && echo comm-written || echo comm-refused; \
         touch /workspace/w /tmp/t /home/agent/h /dev/shm/s && echo writable",
    ]);
    let mut h = b.launch(&r);
    let mut got = Vec::new();
    // Before the agent starts, /run/bot-bottle is a writable tmpfs owned
    // by the bottle's root: pid 1 (not landlocked) writes there...
    h.copy_in("/run/bot-bottle/by-pid1", b"x", 0o644, Owner::Root).expect("pid 1 writes /run/bot-bottle");
    // ... and a command run as that same root may not. Same uid as pid 1
    // too, so only landlock's signal scoping (ABI 6) stops it signalling.
    for probe in [
        "(echo x > /run/bot-bottle/by-command) 2>/dev/null && echo run-written || echo run-refused",
        "kill -0 1 2>/dev/null && echo kill-allowed || echo kill-refused",
    ] {
        let out = h.exec(&exec(&["sh", "-c", probe], Owner::Root, None)).expect("exec");
        got.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let code = h.run_agent(&r.cmd, &std::sync::atomic::AtomicBool::new(false)).expect("agent");
    assert_eq!(code, 0);
    let out = std::fs::read_to_string(b.dir.path().join("workspace/.out")).expect("out");
    got.extend(out.lines().map(str::to_owned));
    let (fs, scoped) = match abi {
        Some(a) => ("refused", if a >= 6 { "refused" } else { "allowed" }),
        None => ("written", "allowed"),
    };
    assert_eq!(got, [format!("run-{fs}"), format!("kill-{scoped}"), format!("comm-{fs}"), "writable".into()]);
    if abi.is_none() {
        skip("landlock is not available on this kernel: checked only that bottles run without it");
    }
}

/// Reads `key N` from a cgroup file in any of the bottle's cgroup dirs.
fn cgroup_count(cg: &Cgroup, file: &str, key: &str) -> u64 {
    cg.procs_files()
        .iter()
        .filter_map(|p| std::fs::read_to_string(p.with_file_name(file)).ok())
        .flat_map(|t| t.lines().filter_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok()).collect::<Vec<_>>())
        .sum()
}

/// A bottle in a cgroup; `None` (and a note) where there is none.
fn in_a_cgroup(limits: Limits) -> Option<(Bottle, Run, NativeBottle, Arc<Cgroup>)> {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return None;
    }
    let b = Bottle::new();
    let mut r = b.spec(&["true"]);
    r.spec.limits = limits;
    let Some(cg) = b.cgroup(&r) else {
        // Root can always use one on the hosts this suite runs on; others
        // only where cgroup v2 is delegated to them.
        let why = format!("no usable cgroup: {}", native::cgroup_detect(&limits));
        if nix_is_root() {
            panic_or_skip(&why)
        } else {
            skip(&why)
        }
        return None;
    };
    chown_tree(&b.dir.path().join("workspace"));
    let h = NativeBottle::launch_in(&r.spec, b.dir.path(), Some(cg.clone())).expect("launch");
    assert!(h.cgroup().is_some());
    Some((b, r, h, cg))
}

#[expect(clippy::print_stderr, reason = "a skipped test says why")]
fn skip(why: &str) {
    eprintln!("skipping: {why}");
}

/// After the bottle: its cgroup dirs are gone, and no process of it is left.
fn nothing_left(b: &Bottle, leaves: &[PathBuf]) {
    for l in leaves {
        assert!(!l.exists(), "{} left behind", l.display());
    }
    assert!(native::cgroup_list(&b.cgroup_name()).is_empty());
    let needle = b.dir.path().display().to_string();
    let left = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(&needle))
        })
        .count();
    assert_eq!(left, 0, "bottle processes left");
}

#[test]
fn a_fork_bomb_is_held_at_the_cgroup_pids_limit_and_killed_with_the_bottle() {
    let Some((b, _r, mut h, cg)) =
        in_a_cgroup(Limits { pids: Some(64), memory: Some(512 << 20), cpus: None, disk: None })
    else {
        return;
    };
    let leaves: Vec<PathBuf> = cg.procs_files().iter().filter_map(|p| p.parent().map(Path::to_owned)).collect();
    // The cgroup holds the limit, so there is no per-uid RLIMIT_NPROC.
    let out = h.exec(&exec(&["sh", "-c", "ulimit -u"], Owner::Agent, None)).expect("ulimit");
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "64", "RLIMIT_NPROC is set despite the cgroup");
    // The classic: it never ends by itself.
    let out = h.exec(&exec(&["bash", "-c", "b() { b | b & }; b"], Owner::Agent, None)).expect("fork bomb");
    assert_eq!(out.code, 0);
    let started = std::time::Instant::now();
    while cgroup_count(&cg, "pids.events", "max ") == 0 && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(cgroup_count(&cg, "pids.events", "max ") > 0, "the bomb never reached pids.max");
    assert!(cg.pids().len() <= 64, "{} processes in a cgroup of 64", cg.pids().len());
    // The host is fine: this process still starts programs.
    assert!(std::process::Command::new("true").status().is_ok_and(|s| s.success()));
    let started = std::time::Instant::now();
    drop(h);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "teardown took {:?}", started.elapsed());
    nothing_left(&b, &leaves);
}

#[test]
fn a_memory_hog_is_killed_at_the_cgroup_memory_limit_and_the_bottle_goes_on() {
    let Some((b, _r, mut h, cg)) =
        in_a_cgroup(Limits { pids: Some(64), memory: Some(128 << 20), cpus: None, disk: None })
    else {
        return;
    };
    let leaves: Vec<PathBuf> = cg.procs_files().iter().filter_map(|p| p.parent().map(Path::to_owned)).collect();
    // The cgroup holds the limit, so there is no RLIMIT_DATA to break
    // runtimes that reserve large address spaces.
    let out = h.exec(&exec(&["sh", "-c", "ulimit -d"], Owner::Agent, None)).expect("ulimit");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unlimited");
    // `tail` keeps the whole line, and /dev/zero has no newline.
    let out = h.exec(&exec(&["sh", "-c", "head -c 1G /dev/zero | tail > /dev/null"], Owner::Agent, None)).expect("hog");
    assert_eq!(out.code, 137, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cg.oom_kills() > 0, "no OOM kill recorded");
    // Only the hog died: the bottle still runs commands.
    let out = h.exec(&exec(&["echo", "alive"], Owner::Agent, None)).expect("exec after the OOM kill");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
    drop(h);
    nothing_left(&b, &leaves);
}
