//! Escape sequences that reach past the screen — the clipboard (OSC 52),
//! answerbacks carrying the agent's text (the title report, DECRQSS), and
//! programmable keys or passthrough (DCS) — never reach the user's
//! terminal from an agent: attached on a pty, on pipes whose stdout is the
//! terminal, or read back later with `logs --agent`. What an agent's
//! interface needs (colours, the title) still does.

use super::start_native::{cli, leftovers, project};
use super::terminal::{BOT_BOTTLE, on_a_terminal, skip_without_bottles, wait_for};

/// The agent prints each sequence between two letters, then `done`.
const PRINTS: &str = concat!(
    r"printf 'A\033]52;c;ZWNobyBJTkpFQ1RFRAo=\007B\033]52;c;?\033\\C\033[21tD\033P$qm\033\\E",
    r"\033Ptmux;\033\033]52;c;eA==\007\033\\F\302\23552;c;eA==\007G\033]0;agent-title\007",
    r"\033[1;31mred\033[0m\n'; echo done"
);

fn assert_filtered(out: &str) {
    assert!(out.contains("ABCDEFG"), "the text around the sequences arrives: {out:?}");
    assert!(out.contains("\x1b]0;agent-title\x07") && out.contains("\x1b[1;31mred\x1b[0m"), "{out:?}");
    for bad in ["]52;", "[21t", "\x1bP", "\u{9d}"] {
        assert!(!out.contains(bad), "{bad:?} reached the user's terminal: {out:?}");
    }
}

#[test]
fn sequences_that_reach_past_the_screen_never_reach_the_users_terminal() {
    if skip_without_bottles() {
        return;
    }
    let p = project(1, PRINTS);
    // Attached: the agent on its own pty, relayed.
    let (code, out) = on_a_terminal(&p, &serde_json::json!([["wait", "done"]]), &[BOT_BOTTLE, "start", "a", "--quiet"]);
    assert_eq!(code, 0, "{out}");
    assert_filtered(&out);
    // On pipes, with stdout the user's terminal (a task piped in).
    let piped = format!("{BOT_BOTTLE} start a --quiet < /dev/null");
    let (code, out) = on_a_terminal(&p, &serde_json::json!([["wait", "done"]]), &["sh", "-c", &piped]);
    assert_eq!(code, 0, "{out}");
    assert_filtered(&out);
    // Detached, then read back with `logs --agent` on a terminal, where no
    // bot-bottle reads what the terminal answers: the shell would.
    let (code, slug) = cli(&p, &["start", "a", "--detach", "--quiet"]);
    assert_eq!(code, 0, "{slug}");
    let slug = slug.trim().to_owned();
    let log = p.state.path().join(format!("bot-bottle/bottles/{slug}/agent.log"));
    wait_for(|| std::fs::read_to_string(&log).is_ok_and(|l| l.contains("done")), "the detached agent's output");
    let stored = std::fs::read_to_string(&log).expect("agent.log");
    assert!(stored.contains("]52;"), "the log keeps what the agent wrote: {stored:?}");
    let (code, out) =
        on_a_terminal(&p, &serde_json::json!([["wait", "done"]]), &[BOT_BOTTLE, "logs", &slug, "--agent"]);
    assert_eq!(code, 0, "{out}");
    assert_filtered(&out);
    wait_for(|| leftovers(&p) == 0, "the detached bottle to end");
}
