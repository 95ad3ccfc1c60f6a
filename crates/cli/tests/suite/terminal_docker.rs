//! A docker bottle's agent on the user's terminal (driven through a real
//! pseudo-terminal, as `suite::terminal` drives native bottles): its pty is
//! the container's own, the user's window size follows it, and nothing it
//! pushes reaches the user's shell. Under every runtime the daemon has of
//! runc and runsc.

use super::docker::{containers, image, project, runtimes};
use super::native::panic_or_skip;
use super::start_native::slugs;
use super::terminal::{BOT_BOTTLE, SHELL, injector, on_a_terminal, typed};

#[test]
fn a_docker_agent_follows_the_users_window_size() {
    let image = match image() {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    for runtime in runtimes() {
        let p = project(
            &image,
            1,
            "trap 'echo size=$(stty size); [ \"$(stty size)\" = \"40 132\" ] && exit 0' WINCH; \
             [ -t 0 ] && [ -t 1 ] && echo tty-ok; echo size=$(stty size); \
             echo ready; i=0; while [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done",
        );
        let steps = serde_json::json!([["wait", "ready"], ["resize", 40, 132], ["wait", "size=40 132"]]);
        let (_, out) = on_a_terminal(&p, &steps, &[BOT_BOTTLE, "start", "a", "--quiet", "--runtime", runtime]);
        assert!(out.contains("tty-ok") && out.contains("size=24 80"), "{runtime}: {out}");
        assert!(out.contains("size=40 132"), "{runtime}: the resize reached the agent: {out}");
        assert!(containers(&slugs(&p)).is_empty(), "{runtime}: a container is left");
    }
}

#[test]
fn a_docker_agent_types_nothing_into_the_users_shell() {
    let image = match image() {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    for runtime in runtimes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mark = tmp.path().join("INJECTED");
        let p = project(&image, 1, &injector(&mark));
        let t = tmp.path().display();
        let line = format!(
            "stty -g > {t}/before; stty size > {t}/size-before; {}; stty -g > {t}/after; stty size > {t}/size-after; \
             echo SHELL-$((1+1))BACK\n",
            typed(&p, &format!("start a --quiet --runtime {runtime}"))
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
        let (_, out) = on_a_terminal(&p, &steps, SHELL);
        assert!(out.contains("injector-done") && out.contains("E5ND"), "{runtime}: {out}");
        assert!(!mark.exists(), "{runtime}: the agent's keystrokes ran in the user's shell: {out}");
        let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}: {out}"));
        assert_eq!(read("size-after"), read("size-before"), "{runtime}: the agent resized the user's terminal");
        assert_eq!(read("after"), read("before"), "{runtime}: the user's terminal modes changed");
        assert!(containers(&slugs(&p)).is_empty(), "{runtime}: a container is left");
    }
}
