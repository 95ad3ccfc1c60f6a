//! The lifecycle commands (`list`, `logs`, `stop`, `resume --detach`, `rm`,
//! `cleanup`) and bot-bottle's exit codes, through the real binary.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::native::{available, panic_or_skip};
use super::start_native::{Project, cli, command, leftovers, project, upstream};

fn bottles(p: &Project) -> PathBuf {
    p.state.path().join("bot-bottle/bottles")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(p: &Project, args: &[&str]) -> (i32, String, String) {
    let o = command(p, args).output().expect("bot-bottle");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_detached_bottle_through_a_symlink_is_listed_logged_stopped_resumed_and_removed() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, _) = upstream();
    let p = project(port, "echo hello-from-the-agent; sleep 60");
    // Launched through a symlink whose name is not `bot-bottle`.
    let link = p.state.path().join("bb");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_bot-bottle"), &link).expect("symlink");
    let c = command(&p, &["start", "a", "--detach"]);
    let mut via = Command::new(&link);
    via.args(c.get_args()).current_dir(p.dir.path()).env_clear().stdin(Stdio::null());
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            via.env(k, v);
        }
    }
    let out = via.output().expect("start via symlink");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let slug = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_for("running", || cli(&p, &["list", "-q"]).1 == format!("{slug}\n"));
    let rows: serde_json::Value = serde_json::from_str(&cli(&p, &["list", "--format", "json"]).1).expect("json");
    assert_eq!(rows[0]["state"], "running");
    wait_for("the agent's output", || cli(&p, &["logs", "--agent", &slug]).1.contains("hello-from-the-agent"));

    // A running bottle is not removed without -f, and cleanup leaves it alone.
    let (code, _, err) = run(&p, &["rm", &slug]);
    assert_eq!(code, 2);
    assert!(err.contains("is running") && err.contains("rm -f"), "{err}");
    let (code, out, _) = run(&p, &["cleanup", "--purge", "--yes"]);
    assert_eq!(code, 0);
    assert!(!out.contains(&slug), "cleanup touched a running bottle: {out}");
    assert!(bottles(&p).join(&slug).join("launch.json").is_file());
    assert_eq!(cli(&p, &["list", "-q"]).1, format!("{slug}\n"));
    assert!(leftovers(&p) > 0);

    // logs -f follows until the bottle stops; stop says so only once it has.
    let mut follow = command(&p, &["logs", "--agent", "-f", &slug]).stdout(Stdio::piped()).spawn().expect("logs -f");
    let (code, out, err) = run(&p, &["stop", "-t", "5", &slug]);
    assert_eq!((code, out.as_str()), (0, format!("{slug}: stopped\n").as_str()), "{err}");
    assert_eq!(leftovers(&p), 0);
    let mut followed = String::new();
    follow.stdout.take().expect("stdout").read_to_string(&mut followed).expect("read");
    assert!(follow.wait().expect("wait").success());
    assert!(followed.contains("hello-from-the-agent"), "{followed}");
    assert_eq!(cli(&p, &["list", "-q"]).1, "", "nothing runs");

    // resume --detach returns at once; its output joins the log.
    let (code, out, err) = run(&p, &["resume", "--detach", &slug]);
    assert_eq!((code, out.trim()), (0, slug.as_str()), "{err}");
    wait_for("the resumed agent", || {
        cli(&p, &["logs", "--agent", &slug]).1.matches("hello-from-the-agent").count() == 2
    });
    assert_eq!(cli(&p, &["list", "-q"]).1, format!("{slug}\n"));

    // rm -f stops it first, then deletes its state and workspace.
    let (code, out, err) = run(&p, &["rm", "-f", &slug]);
    assert_eq!((code, out.as_str()), (0, format!("{slug}: removed\n").as_str()), "{err}");
    assert!(!bottles(&p).join(&slug).exists());
    assert_eq!(leftovers(&p), 0);
    assert_eq!(cli(&p, &["list", "-a", "-q"]).1, "");
    assert_eq!(run(&p, &["rm", &slug]).0, 2, "an unknown slug is a usage error");
}

#[test]
fn stop_kills_a_launcher_that_ignores_sigterm() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, _) = upstream();
    let p = project(port, "echo up; sleep 60");
    let mut child = command(&p, &["start", "a", "--quiet"]).stdout(Stdio::piped()).spawn().expect("start");
    let mut up = [0u8; 3];
    child.stdout.take().expect("stdout").read_exact(&mut up).expect("agent up");
    let slug = cli(&p, &["list", "-q"]).1.trim().to_owned();
    // A stopped launcher cannot act on SIGTERM: only SIGKILL ends it.
    Command::new("kill").args(["-STOP", &child.id().to_string()]).status().expect("kill");
    let started = Instant::now();
    let (code, out, err) = run(&p, &["stop", "-t", "1", &slug]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{slug}: stopped (killed after 1 s")), "{out}");
    assert!(started.elapsed() >= Duration::from_secs(1), "the grace period was honoured");
    let _ = child.wait();
    wait_for("no bottle processes", || leftovers(&p) == 0);
    let rows: serde_json::Value = serde_json::from_str(&cli(&p, &["list", "-a", "--format", "json"]).1).expect("json");
    assert_eq!(rows[0]["state"], "exited (137)");
}

#[test]
fn exit_codes_tell_bot_bottle_from_the_agent() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (port, _) = upstream();
    // 126: the program is there but cannot be executed.
    let p = project(port, "unused");
    let a = p.dir.path().join(".bot-bottle/agents/a.md");
    std::fs::write(&a, "---\nprovider: command\ncommand: [\"/etc/hostname\"]\nbottle: b\n---\n").expect("write");
    let (code, _, err) = run(&p, &["start", "a", "--quiet"]);
    assert_eq!(code, 126, "{err}");
    // The agent's own codes pass through, 1 included.
    std::fs::write(&a, "---\nprovider: command\ncommand: [\"sh\", \"-c\", \"exit 1\"]\nbottle: b\n---\n")
        .expect("write");
    assert_eq!(run(&p, &["start", "a", "--quiet"]).0, 1);
}

/// A bottle record as a launcher writes it, for `pid` (with its start
/// token when `live`).
fn record(state: &Path, slug: &str, pid: u32, live: bool, exit: Option<i32>) -> PathBuf {
    let dir = state.join("bot-bottle/bottles").join(slug);
    std::fs::create_dir_all(dir.join("workspace")).expect("mkdir");
    std::fs::write(dir.join("workspace/file"), vec![b'x'; 4096]).expect("write");
    let token = if live { bot_bottle_backend::start_token(pid) } else { Some("an-earlier-process".into()) };
    let meta = serde_json::json!({
        "slug": slug, "backend": "native", "pid": pid, "pid_start": token, "started": 1, "exit": exit,
        "request": { "agent": "a", "bottles": [], "backend": null, "args": [], "manifest": "/nonexistent",
                     "project": "/nonexistent" },
    });
    std::fs::write(dir.join("launch.json"), meta.to_string()).expect("write");
    dir
}

#[test]
fn cleanup_and_purge_leave_a_running_bottle_alone_and_ask_first() {
    let env = super::cli::Env::new();
    let state = env.path().join("state");
    // A running launcher: a live process holding the bottle's lock.
    let running = record(&state, "a-running", 0, false, None);
    let mut holder = Command::new("flock")
        .args(["-x", &running.join("lock").display().to_string(), "sleep", "30"])
        .spawn()
        .expect("flock");
    let running = record(&state, "a-running", holder.id(), true, None);
    wait_for("the lock", || {
        Command::new("flock")
            .args(["-n", &running.join("lock").display().to_string(), "true"])
            .status()
            .is_ok_and(|s| !s.success())
    });
    // A crashed one (its pid reused by this test process) and an exited one.
    let crashed = record(&state, "a-crashed", std::process::id(), false, None);
    let exited = record(&state, "a-exited", 1, false, Some(0));

    let list = env.run(env.path(), &["list", "-a"], &[]);
    assert!(list.stdout.lines().any(|l| l.starts_with("a-running") && l.contains(" running ")), "{}", list.stdout);
    assert!(list.stdout.lines().any(|l| l.starts_with("a-crashed") && l.contains("crashed")), "{}", list.stdout);
    assert_eq!(env.run(env.path(), &["list", "-q"], &[]).stdout, "a-running\n");

    // Without a terminal, --purge needs --yes and deletes nothing.
    let r = env.run(env.path(), &["cleanup", "--purge"], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--yes") && r.stderr.contains("2 stopped bottle(s)"), "{}", r.stderr);
    assert!(crashed.is_dir() && exited.is_dir() && running.is_dir());

    // Plain cleanup says what the stopped bottles still hold.
    let r = env.run(env.path(), &["cleanup"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("a-crashed: marked crashed"), "{}", r.stdout);
    assert!(r.stdout.contains("  a-exited: exited (0), holds "), "{}", r.stdout);
    assert!(!r.stdout.contains("a-running"), "{}", r.stdout);

    let r = env.run(env.path(), &["cleanup", "--purge", "--yes"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("a-crashed: purged") && r.stdout.contains("a-exited: purged"), "{}", r.stdout);
    assert!(!crashed.exists() && !exited.exists(), "purged means gone");
    assert!(
        running.join("launch.json").is_file() && running.join("workspace/file").is_file(),
        "the running bottle is untouched"
    );
    assert_eq!(env.run(env.path(), &["rm", "a-running"], &[]).code, 2, "rm refuses a running bottle");
    let _ = holder.kill();
    let _ = holder.wait();
}

/// Makes `dir` impossible to remove until dropped: as root a tmpfs
/// mounted on it (rmdir says EBUSY), as a user no write permission on its
/// parent.
struct Stuck {
    dir: PathBuf,
    mounted: bool,
}

impl Stuck {
    fn new(dir: PathBuf) -> Stuck {
        std::fs::create_dir_all(&dir).expect("mkdir");
        if nix::unistd::geteuid().is_root() {
            let ok = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&dir).status().expect("mount");
            assert!(ok.success(), "mounting a tmpfs on {}", dir.display());
            return Stuck { dir, mounted: true };
        }
        let parent = dir.parent().expect("parent");
        std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o500)).expect("chmod");
        Stuck { dir, mounted: false }
    }

    fn release(&mut self) {
        if self.mounted {
            let ok = Command::new("umount").arg(&self.dir).status().expect("umount");
            assert!(ok.success(), "unmounting {}", self.dir.display());
            self.mounted = false;
        } else if let Some(parent) = self.dir.parent()
            && let Err(e) = std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        {
            panic!("chmod {}: {e}", parent.display());
        }
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        if self.mounted {
            self.release();
        }
    }
}

/// What cleanup could not remove is never reported as removed: `cleanup`,
/// `cleanup --purge` and `rm` say what is left, exit non-zero, and keep
/// the state dir, so that a later `cleanup` finds it and finishes.
#[test]
fn cleanup_and_rm_fail_on_what_they_could_not_remove() {
    let env = super::cli::Env::new();
    let state = env.path().join("state");
    let dir = record(&state, "a-stuck", std::process::id(), false, None);
    let mut stuck = Stuck::new(dir.join("root/mnt"));

    let r = env.run(env.path(), &["cleanup"], &[]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("a-stuck: could not remove") && r.stderr.contains("/root"), "{}", r.stderr);
    assert!(!r.stdout.contains("removed root"), "{}", r.stdout);
    let r = env.run(env.path(), &["cleanup", "--purge", "--yes"], &[]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("a-stuck: purged"), "{}", r.stdout);
    assert!(dir.join("launch.json").is_file(), "a bottle with leftovers is kept");
    let r = env.run(env.path(), &["rm", "a-stuck"], &[]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("a-stuck: not removed: could not remove"), "{}", r.stderr);
    assert!(!r.stdout.contains("removed"), "{}", r.stdout);
    assert!(dir.join("launch.json").is_file(), "rm keeps what cleanup must find again");

    stuck.release();
    let r = env.run(env.path(), &["cleanup"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("a-stuck: removed root"), "{}", r.stdout);
    let r = env.run(env.path(), &["rm", "a-stuck"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!dir.exists());
}

#[test]
fn bot_bottles_own_failure_is_125() {
    let env = super::cli::Env::new();
    // The state home is a file: no bottle can be recorded.
    let file = env.path().join("not-a-dir");
    std::fs::write(&file, "").expect("write");
    let r = env.run(
        &super::cli::examples(),
        &["start", "hello", "--backend", "native"],
        &[("XDG_STATE_HOME", &file.display().to_string())],
    );
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
}
