//! The project's task runner: `cargo xtask <task>`. Plain Rust, so a fresh
//! machine with only the toolchain can run it.

use std::process::{Command, ExitCode};

const TASKS: &str = "tasks:
  ci     fmt check, clippy, tests, and the README's main command (what .ci/run runs)
  test   cargo test --workspace
  lint   cargo fmt --check and clippy with warnings as errors
  demo   the README's main command: start the hello example in a native bottle";

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let steps: &[(&str, &[&str], Option<&str>)] = match task.as_str() {
        "ci" => &[FMT, CLIPPY, TEST, DEMO],
        "test" => &[TEST],
        "lint" => &[FMT, CLIPPY],
        "demo" => &[DEMO],
        _ => {
            eprintln!("usage: cargo xtask <task>\n{TASKS}");
            return ExitCode::from(2);
        }
    };
    for (what, argv, dir) in steps {
        eprintln!("==> {what}: cargo {}", argv.join(" "));
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(*argv);
        if let Some(d) = dir {
            cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..").to_owned() + "/" + d);
        } else {
            cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        }
        match cmd.status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("==> {what} failed ({s})");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("==> {what}: cannot run cargo: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

const FMT: (&str, &[&str], Option<&str>) = ("format", &["fmt", "--all", "--", "--check"], None);
const CLIPPY: (&str, &[&str], Option<&str>) =
    ("clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], None);
const TEST: (&str, &[&str], Option<&str>) = ("tests", &["test", "--workspace"], None);
const DEMO: (&str, &[&str], Option<&str>) = (
    "main command",
    &["run", "-q", "-p", "bot-bottle", "--", "start", "hello", "--dry-run", "--format", "json"],
    Some("examples"),
);
