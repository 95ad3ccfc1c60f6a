//! Bottles on the native backend, run for real.

use std::path::{Path, PathBuf};

use bot_bottle_backend::native::{self, Limits, NativeBottle, Spec};
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
            limits: Limits { pids: Some(256), memory: Some(1 << 30) },
            sync_out: d.join("sync-out"),
            sync_in: d.join("sync-in"),
            control: d.join("control.sock"),
            init_exe: PathBuf::from(env!("CARGO_BIN_EXE_bot-bottle")),
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
        // The agent's workspace must be writable by its host id.
        chown_tree(&self.dir.path().join("workspace"));
        let mut b = NativeBottle::launch(&r.spec, self.dir.path()).expect("bottle builds");
        b.run_agent(&r.cmd, stop).expect("bottle runs")
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
