//! The agent's terminal, driven through real pseudo-terminals
//! (`tests/support/pty_run.py`): the agent gets a terminal of its own, so
//! nothing it does (pushing keystrokes with TIOCSTI, changing modes or the
//! window size) reaches the user's terminal or the shell behind it, attached
//! or detached; window size changes and Ctrl-C still reach it; and the
//! user's terminal modes come back on every way out.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::native::{available, panic_or_skip};
use super::start_native::{Project, cli, command, leftovers, project};

/// Runs `argv` on a fresh pseudo-terminal as its controlling terminal,
/// driven by `steps` (see tests/support/pty_run.py), in the project with
/// its state under the test's dir; returns the exit code and what the
/// terminal showed.
pub(crate) fn on_a_terminal(p: &Project, steps: &serde_json::Value, argv: &[&str]) -> (i32, String) {
    let out = pty_run(p, steps, argv).output().expect("python3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pty_run: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (v["code"].as_i64().unwrap_or(-1) as i32, v["output"].as_str().unwrap_or_default().to_owned())
}

fn pty_run(p: &Project, steps: &serde_json::Value, argv: &[&str]) -> Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pty_run.py");
    let mut c = Command::new("python3");
    c.arg(script)
        .arg(steps.to_string())
        .arg("--")
        .args(argv)
        .current_dir(p.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", p.state.path())
        .env("XDG_STATE_HOME", p.state.path())
        .env("TERM", "xterm")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub(crate) const BOT_BOTTLE: &str = env!("CARGO_BIN_EXE_bot-bottle");

/// An interactive shell with no startup files, as a user's terminal runs one.
pub(crate) const SHELL: &[&str] = &["bash", "--norc", "--noprofile", "-i"];

/// Python, run inside the bottle, that tries every way of pushing `touch
/// MARK` into a terminal's input queue, and of changing the terminal: its
/// own streams, /dev/tty, every pty it can open.
pub(crate) fn injector(mark: &Path) -> String {
    format!(
        r#"python3 - <<'PY'
import fcntl, glob, os, termios
text = b"touch {mark}\n"
fds = [0, 1, 2]
for path in ["/dev/tty"] + glob.glob("/dev/pts/[0-9]*"):
    try:
        fds.append(os.open(path, os.O_RDWR | os.O_NOCTTY))
    except OSError:
        pass
pushed = 0
for fd in fds:
    for c in text:
        try:
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
            pushed += 1
        except OSError:
            pass
print("pushed", pushed)
PY
for t in /dev/stdin /dev/tty; do stty rows 5 cols 7 -echo -icanon < $t 2>/dev/null; done; echo injector-done"#,
        mark = mark.display()
    )
}

/// `bot-bottle ARGS` as typed into the shell, with the test's state dirs.
pub(crate) fn typed(p: &Project, args: &str) -> String {
    format!("HOME={s} XDG_STATE_HOME={s} {BOT_BOTTLE} {args}", s = p.state.path().display())
}

/// Waits until `path` exists.
pub(crate) fn wait_for(path: impl Fn() -> bool, what: &str) {
    let t = Instant::now();
    while !path() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file the agent made in its workspace copy, in any of the project's bottles.
fn in_workspace(p: &Project, name: &str) -> Option<std::path::PathBuf> {
    let bottles = p.state.path().join("bot-bottle/bottles");
    std::fs::read_dir(bottles).ok()?.flatten().map(|b| b.path().join("workspace").join(name)).find(|f| f.exists())
}

pub(crate) fn skip_without_bottles() -> bool {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return true;
    }
    false
}

#[test]
fn on_a_terminal_the_agent_sees_resizes_and_handles_ctrl_c_itself() {
    if skip_without_bottles() {
        return;
    }
    // The agent reports its window size when it changes and decides for
    // itself what Ctrl-C means: here, finish and exit 5.
    let p = project(
        1,
        "trap 'echo size=$(stty size)' WINCH; trap 'echo got-int; exit 5' INT; \
         [ -t 0 ] && [ -t 1 ] && echo tty-ok; echo size=$(stty size); echo ready; \
         while :; do sleep 0.05; done",
    );
    let steps = serde_json::json!([
        ["wait", "ready"],
        ["resize", 40, 132],
        ["wait", "size=40 132"],
        ["type", "\u{3}"],
        ["wait", "got-int"]
    ]);
    let (code, out) = on_a_terminal(&p, &steps, &[BOT_BOTTLE, "start", "a", "--quiet"]);
    assert!(out.contains("tty-ok") && out.contains("size=24 80"), "{out}");
    assert!(out.contains("size=40 132"), "the resize reached the agent: {out}");
    assert!(out.contains("got-int"), "{out}");
    assert_eq!(code, 5, "the agent's own exit code after Ctrl-C: {out}");
    assert_eq!(leftovers(&p), 0);
}

#[test]
fn an_attached_agent_types_nothing_into_the_users_shell_and_leaves_its_terminal_as_it_was() {
    if skip_without_bottles() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mark = tmp.path().join("INJECTED");
    let p = project(1, &injector(&mark));
    let size = injected_from_a_shell(&p, tmp.path(), "start a --quiet", "native");
    assert_eq!(size.trim(), "24 80");
    assert_eq!(leftovers(&p), 0);
}

/// Runs `bot-bottle START` from a real shell on a terminal, its agent
/// being [`injector`] with its mark at `dir/INJECTED`, and asserts that
/// nothing the agent pushed ran in the shell and that the user's terminal
/// modes and size came back as they were. The size it had.
pub(crate) fn injected_from_a_shell(p: &Project, dir: &Path, start: &str, how: &str) -> String {
    let t = dir.display();
    let line = format!(
        "stty -g > {t}/before; stty size > {t}/size-before; {}; stty -g > {t}/after; stty size > {t}/size-after; \
         echo SHELL-$((1+1))BACK\n",
        typed(p, start)
    );
    let steps = serde_json::json!([
        ["wait", "bash-"],
        ["type", line],
        ["wait", "SHELL-2BACK"],
        // Anything pushed into the shell's input queue runs before this.
        ["type", "echo E$((2+3))ND\n"],
        ["wait", "E5ND"],
        ["type", "exit\n"]
    ]);
    let (_, out) = on_a_terminal(p, &steps, SHELL);
    assert!(out.contains("injector-done") && out.contains("E5ND"), "{how}: {out}");
    assert!(!dir.join("INJECTED").exists(), "{how}: the agent's keystrokes ran in the user's shell: {out}");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{how}: {f}: {e}: {out}"));
    assert_eq!(read("size-after"), read("size-before"), "{how}: the agent resized the user's terminal");
    assert_eq!(read("after"), read("before"), "{how}: the user's terminal modes changed");
    read("size-before")
}

#[test]
fn a_detached_agent_types_nothing_into_the_shell_it_was_started_from() {
    if skip_without_bottles() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mark = tmp.path().join("INJECTED");
    // The agent waits until `start --detach` has returned and the shell is
    // back at its prompt, then tries.
    let p = project(1, &format!("sleep 1; {}; touch /workspace/tried; sleep 30", injector(&mark)));
    let tried = p.state.path().join("bot-bottle/bottles/*/workspace/tried");
    let line = format!("{}; echo SHELL-$((1+1))BACK\n", typed(&p, "start a --detach --quiet"));
    let steps = serde_json::json!([
        ["wait", "bash-"],
        ["type", line],
        ["wait", "SHELL-2BACK"],
        ["waitfile", tried.display().to_string()],
        ["sleep", 0.5],
        ["type", "echo E$((2+3))ND\n"],
        ["wait", "E5ND"],
        ["type", "exit\n"]
    ]);
    let (_, out) = on_a_terminal(&p, &steps, SHELL);
    assert!(in_workspace(&p, "tried").is_some(), "the detached agent ran: {out}");
    assert!(!mark.exists(), "the detached agent's keystrokes ran in the user's shell: {out}");
    assert!(out.contains("E5ND"), "{out}");
    let (code, stopped) = cli(&p, &["stop", "--all"]);
    assert_eq!(code, 0, "{stopped}");
    wait_for(|| leftovers(&p) == 0, "the detached bottle to stop");
    // What the agent printed went to its log, not to the terminal.
    let log = std::fs::read_dir(p.state.path().join("bot-bottle/bottles"))
        .expect("bottles")
        .flatten()
        .map(|b| std::fs::read_to_string(b.path().join("agent.log")).unwrap_or_default())
        .collect::<String>();
    assert!(log.contains("injector-done") && log.contains("pushed 0"), "{log}");
    assert!(!out.contains("injector-done"), "{out}");
}

/// How the launcher is ended while the agent runs on the user's terminal.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// `kill -TERM` on the launcher.
    Sigterm,
    /// The launcher panics (a test hook).
    Panic,
    /// The bottle's pid 1 is killed from outside.
    BottleDies,
}

#[test]
fn the_users_terminal_modes_come_back_after_sigterm_a_crash_and_the_bottle_dying() {
    if skip_without_bottles() {
        return;
    }
    for ending in [Ending::Sigterm, Ending::Panic, Ending::BottleDies] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = project(1, "touch /workspace/up; sleep 30");
        let t = tmp.path().display();
        let hook = if matches!(ending, Ending::Panic) { "BOT_BOTTLE_PANIC_AT=agent " } else { "" };
        let line = format!(
            "stty -g > {t}/before; {hook}{}; echo exit=$? > {t}/code; stty -g > {t}/after; echo SHELL-$((1+1))BACK\n",
            typed(&p, "start a --quiet")
        );
        let steps = serde_json::json!([["wait", "bash-"], ["type", line], ["wait", "SHELL-2BACK"], ["type", "exit\n"]]);
        let child = pty_run(&p, &steps, SHELL).spawn().expect("pty_run");
        if !matches!(ending, Ending::Panic) {
            wait_for(|| in_workspace(&p, "up").is_some(), "the agent to start");
            let state = in_workspace(&p, "up").and_then(|f| f.parent()?.parent().map(Path::to_path_buf));
            let state = state.expect("state dir");
            match ending {
                Ending::Sigterm => {
                    let meta: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(state.join("launch.json")).expect("launch.json"))
                            .expect("json");
                    let pid = meta["pid"].as_u64().expect("pid").to_string();
                    Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
                }
                _ => {
                    let pid1 = init_pid(&state, "b").expect("the bottle's pid 1");
                    Command::new("kill").args(["-KILL", &pid1.to_string()]).status().expect("kill");
                }
            }
        }
        let out = child.wait_with_output().expect("pty_run");
        let shown = String::from_utf8_lossy(&out.stdout);
        let read =
            |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}: {shown}"));
        assert_eq!(read("after"), read("before"), "{ending:?}: the terminal's modes were not restored: {shown}");
        assert_ne!(read("code").trim(), "exit=0", "{ending:?}: {shown}");
        if matches!(ending, Ending::Panic) {
            assert!(shown.contains("test hook: panic at agent"), "{shown}");
        }
        wait_for(|| leftovers(&p) == 0, "the bottle to be gone");
        let (code, _) = cli(&p, &["cleanup"]);
        assert_eq!(code, 0);
    }
}

/// The pid of the init stage `stage` of the bottle whose state dir is `state`.
fn init_pid(state: &Path, stage: &str) -> Option<u32> {
    let needle = state.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is = args.get(1).is_some_and(|a| a == "__bottle-init")
            && args.get(2).is_some_and(|a| a == stage)
            && (args.get(3).is_some_and(|a| a.contains(&needle)) || stage == "b");
        // Stage b names its spec inside the bottle; its parent is stage a.
        if !is {
            return None;
        }
        if stage == "b" {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let ppid: u32 = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse().ok()?;
            let parent = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
            String::from_utf8_lossy(&parent).contains(&needle).then_some(pid)
        } else {
            Some(pid)
        }
    })
}

#[test]
fn off_a_terminal_the_agent_gets_pipes_and_sigint_is_passed_on() {
    if skip_without_bottles() {
        return;
    }
    let p = project(
        1,
        "trap 'echo got-int; exit 6' INT; [ -t 0 ] || [ -t 1 ] || echo no-tty; read line; echo \"read=$line\"; \
         echo to-stderr >&2; touch /workspace/up; while :; do sleep 0.05; done",
    );
    let mut child = command(&p, &["start", "a", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(b"hello from stdin\n").expect("write");
    wait_for(|| in_workspace(&p, "up").is_some(), "the agent to read its stdin");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    let out = child.wait_with_output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "no-tty\nread=hello from stdin\ngot-int\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    assert_eq!(out.status.code(), Some(6), "SIGINT reached the agent, whose exit code is bot-bottle's");
    assert_eq!(leftovers(&p), 0);
}

#[test]
fn exec_runs_a_command_in_a_running_bottle_as_its_agent_on_pipes_or_a_terminal() {
    if skip_without_bottles() {
        return;
    }
    let p = project(1, "echo from-the-agent > /workspace/marker; sleep 30");
    let (code, slug) = cli(&p, &["start", "a", "--detach", "--quiet"]);
    assert_eq!(code, 0, "{slug}");
    let slug = slug.trim().to_owned();
    wait_for(|| in_workspace(&p, "marker").is_some(), "the agent to start");
    // Off a terminal: pipes; the agent's user, environment and directory.
    let out = command(
        &p,
        &[
            "exec",
            &slug,
            "--",
            "sh",
            "-c",
            "[ -t 0 ] || echo no-tty; id -u; echo \"$HTTPS_PROXY\"; pwd; cat marker; \
           ls /run/bot-bottle; read x; echo \"read=$x\"; exit 7",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().expect("stdin").write_all(b"typed\n")?;
        c.wait_with_output()
    })
    .expect("exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let agent_uid = bot_bottle_backend::native::agent_ids().0.to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..5], ["no-tty", &agent_uid, "http://127.0.0.1:3128", "/workspace", "from-the-agent"], "{stdout}");
    assert!(
        !stdout.contains("exec.sock") && !stdout.contains("control"),
        "the bottle sees its launcher's sockets: {stdout}"
    );
    assert!(stdout.contains("read=typed"), "{stdout}");
    assert_eq!(out.status.code(), Some(7), "the command's exit code: {stdout}");
    // On a terminal: a pty of its own, with the user's window size.
    let steps = serde_json::json!([["wait", "size="]]);
    let (code, shown) = on_a_terminal(
        &p,
        &steps,
        &[BOT_BOTTLE, "exec", &slug, "--", "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty-ok; echo size=$(stty size)"],
    );
    assert!(shown.contains("tty-ok") && shown.contains("size=24 80"), "{shown}");
    assert_eq!(code, 0, "{shown}");
    // Not running: a usage error.
    assert_eq!(cli(&p, &["stop", &slug]).0, 0);
    assert_eq!(cli(&p, &["exec", &slug, "--", "true"]).0, 2);
    wait_for(|| leftovers(&p) == 0, "the bottle to stop");
}
