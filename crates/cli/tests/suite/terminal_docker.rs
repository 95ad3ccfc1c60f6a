//! A docker bottle's agent on the user's terminal (driven through a real
//! pseudo-terminal, as `suite::terminal` drives native bottles): its pty is
//! the container's own, the user's window size follows it, and nothing it
//! pushes reaches the user's shell. Under every runtime the daemon has of
//! runc and runsc.

use super::docker::{containers, image, project, runtimes};
use super::native::panic_or_skip;
use super::start_native::slugs;
use super::terminal::{BOT_BOTTLE, injected_from_a_shell, injector, on_a_terminal};

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
        injected_from_a_shell(&p, tmp.path(), &format!("start a --quiet --runtime {runtime}"), runtime);
        assert!(containers(&slugs(&p)).is_empty(), "{runtime}: a container is left");
    }
}
