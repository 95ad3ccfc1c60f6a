//! `bot-bottle supervise`, the TUI, driven under tmux (send-keys,
//! capture-pane) while an agent in a native bottle asks three times: the
//! operator approves the first, modifies the second in a scripted
//! `$EDITOR` (whose first edit is refused and reopened), and rejects the
//! third with a comment; the agent sees each outcome.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::native::{available, panic_or_skip};
use super::start_native::{command, upstream};
use super::supervise::{MCP_SH, project};

fn tmux(sock: &Path, args: &[&str]) -> String {
    let out = Command::new("tmux").arg("-S").arg(sock).args(args).output().expect("tmux");
    assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the pane shows `what`; its text.
fn wait_for(sock: &Path, what: &str) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let pane = tmux(sock, &["capture-pane", "-p", "-t", "s"]);
        if pane.contains(what) {
            return pane;
        }
        assert!(Instant::now() < end, "the pane never showed {what:?}:\n{pane}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_operator_approves_modifies_and_rejects_in_the_tui() {
    let tmux_ok = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    for probe in [available(), if tmux_ok { Ok(()) } else { Err("tmux is not installed".into()) }] {
        if let Err(why) = probe {
            panic_or_skip(&why);
            return;
        }
    }
    let (port, seen) = upstream();
    let ask =
        |host: &str, why: &str| format!("tool request_egress '{{\"host\":\"{host}\",\"justification\":\"{why}\"}}'");
    let script = format!(
        "{MCP_SH}\n\
         echo \"one: $({})\"; \
         echo \"two: $({})\"; \
         echo \"three: $({})\"; \
         echo \"then: $(curl -s --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{port}/data)\"",
        ask(&format!("127.0.0.1:{port}"), "fetch the data"),
        ask("b.example.test", "read the b docs"),
        ask("c.example.test", "just because"),
    );
    let p = project(&script);
    let tmp = tempfile::tempdir().expect("tempdir");
    // The scripted editor: its first edit asks for TLS passthrough, which a
    // request may not; the second narrows the route.
    let editor = tmp.path().join("editor");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\nn=$(cat {d}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/count\n\
             if [ $n = 1 ]; then printf 'host: b.example.test\\ntls: passthrough\\n' > \"$1\"; \
             else printf 'host: b.example.test\\npaths: [\"/docs\"]\\nmethods: [GET]\\n' > \"$1\"; fi\n",
            d = tmp.path().display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");

    let agent = command(&p, &["start", "a", "--quiet"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let agent = agent.expect("start");
    let sock = tmp.path().join("tmux.sock");
    let tui = format!(
        "env -i PATH=\"$PATH\" TERM=xterm HOME={s} XDG_STATE_HOME={s} EDITOR={e} {bin} supervise; sleep 30",
        s = p.state.path().display(),
        e = editor.display(),
        bin = env!("CARGO_BIN_EXE_bot-bottle"),
    );
    tmux(&sock, &["new-session", "-d", "-x", "160", "-y", "40", "-s", "s", &tui]);
    let kill = KillServer(sock.clone());

    wait_for(&sock, &format!("127.0.0.1:{port}"));
    wait_for(&sock, "why: fetch the data");
    tmux(&sock, &["send-keys", "-t", "s", "a"]);
    // The detail view of the second request, then modify it.
    wait_for(&sock, "b.example.test");
    tmux(&sock, &["send-keys", "-t", "s", "Enter"]);
    let detail = wait_for(&sock, "justification:");
    assert!(detail.contains("read the b docs") && detail.contains("methods:   any"), "{detail}");
    tmux(&sock, &["send-keys", "-t", "s", "Escape"]);
    tmux(&sock, &["send-keys", "-t", "s", "m"]);
    let invalid = wait_for(&sock, "invalid route");
    assert!(invalid.contains("tls"), "the refusal says why: {invalid}");
    tmux(&sock, &["send-keys", "-t", "s", "e"]);
    wait_for(&sock, "c.example.test");
    tmux(&sock, &["send-keys", "-t", "s", "r"]);
    tmux(&sock, &["send-keys", "-t", "s", "-l", "not today"]);
    wait_for(&sock, "reject");
    tmux(&sock, &["send-keys", "-t", "s", "Enter"]);
    wait_for(&sock, "rejected");

    let out = agent.wait_with_output().expect("agent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    tmux(&sock, &["send-keys", "-t", "s", "q"]);
    drop(kill);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |p: &str| stdout.lines().find(|l| l.starts_with(p)).unwrap_or_default().to_owned();
    assert!(line("one: ").contains(r#"\"status\":\"approved\""#), "{stdout}");
    let two = line("two: ");
    assert!(
        two.contains(r#"\"status\":\"modified\""#)
            && two.contains(r#"\"paths\":[\"/docs\"]"#)
            && two.contains(r#"\"methods\":[\"GET\"]"#),
        "{stdout}"
    );
    let three = line("three: ");
    assert!(three.contains(r#"\"status\":\"rejected\""#) && three.contains("not today"), "{stdout}");
    assert!(stdout.contains("then: upstream-ok"), "{stdout}");
    assert_eq!(*seen.lock().expect("lock"), vec!["GET /data HTTP/1.1".to_owned()]);
}

/// Ends the test's tmux server, whatever happened.
struct KillServer(std::path::PathBuf);

impl Drop for KillServer {
    fn drop(&mut self) {
        let killed = Command::new("tmux").arg("-S").arg(&self.0).arg("kill-server").output();
        if !std::thread::panicking() {
            assert!(killed.is_ok_and(|o| o.status.success()), "tmux kill-server");
        }
    }
}
