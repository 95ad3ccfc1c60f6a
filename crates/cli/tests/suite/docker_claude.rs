//! The real Claude Code in a docker bottle, against the scripted Messages
//! API (`tests/support/fake_anthropic.py`) as in the native providers test:
//! its image is built from a `dockerfile:` (`FROM` the test image, plus
//! this host's `claude`, `git` and `bash` with their libraries), so no
//! registry is needed. Under runc and, when registered, runsc.

use std::path::Path;
use std::process::Command;

use bot_bottle_provision::PLACEHOLDER_KEY;

use super::claude::claude_installed;
use super::docker::{image, runtimes};
use super::native::panic_or_skip;
use super::providers::{REAL_KEY, fixture_with, workspace};

/// What the fake API's tool call runs before its task: the agent's
/// environment and home, copied into the workspace for the test to read.
const BEFORE: &str =
    "env > agent-env.txt; cp -r \"$HOME\" agent-home 2>/dev/null; printf '/agent-*\\n' >> .git/info/exclude";

/// `path`, and every library it loads, at the same path under `root`.
fn add(root: &Path, path: &Path, to: Option<&str>) {
    let out = Command::new("ldd").arg(path).output().expect("ldd");
    let libs = String::from_utf8_lossy(&out.stdout).into_owned();
    let libs = libs.split_whitespace().filter(|w| w.starts_with('/')).map(str::to_owned);
    let target = to.map_or_else(|| path.display().to_string(), str::to_owned);
    for (from, to) in std::iter::once((path.display().to_string(), target)).chain(libs.map(|l| (l.clone(), l))) {
        let dest = root.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        let from = std::fs::canonicalize(&from).expect("canonicalize");
        // Claude Code is a 240 MB binary: a hard link when the file system allows.
        if !dest.exists() && std::fs::hard_link(&from, &dest).is_err() {
            std::fs::copy(&from, &dest).expect("copy");
        }
    }
}

#[test]
fn claude_code_does_its_task_in_a_docker_bottle_with_only_the_placeholder_inside() {
    let base = match image().and_then(|i| claude_installed().map(|()| i)) {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    let which = Command::new("sh").args(["-c", "command -v claude"]).output().expect("which");
    let claude = std::fs::canonicalize(String::from_utf8_lossy(&which.stdout).trim()).expect("claude");
    let fx = fixture_with("claude", "fake_anthropic.py", Some(BEFORE), |port| {
        format!(
            "backend: docker\ndockerfile: ../images/Dockerfile\nenv: {{ ANTHROPIC_BASE_URL: \"https://127.0.0.2:{port}\" }}\n"
        )
    });
    // The image's context, left out of the workspace copy by .gitignore.
    let images = fx.project().join(".bot-bottle/images");
    let root = images.join("root");
    add(&root, &claude, Some("/usr/bin/claude"));
    add(&root, Path::new("/usr/bin/git"), None);
    add(&root, Path::new("/bin/bash"), None);
    std::fs::write(images.join("Dockerfile"), format!("FROM {base}\nCOPY root/ /\n")).expect("write");
    std::fs::write(fx.project().join(".gitignore"), "/.bot-bottle/images/\n").expect("write");

    let mut states = Vec::new();
    for runtime in runtimes() {
        let state = tempfile::tempdir().expect("state");
        let out = fx.start_with(
            state.path(),
            "c",
            &["create hello.txt and commit it"],
            &[("BOT_BOTTLE_DOCKER_RUNTIME", runtime)],
        );
        let how = format!("docker, {runtime}");
        fx.assert_done(state.path(), &out, &how);
        let ws = workspace(state.path()).expect("workspace");
        assert!(!ws.join(".bot-bottle/images").exists(), "{how}: the image context stays out of the copy");
        let env = std::fs::read_to_string(ws.join("agent-env.txt")).expect("the agent's environment");
        assert!(env.lines().any(|l| l == format!("ANTHROPIC_API_KEY={PLACEHOLDER_KEY}")), "{how}: {env}");
        assert!(!env.contains(REAL_KEY), "{how}: the real key is not in the agent's environment");
        let home = ws.join("agent-home");
        assert!(home.join(".claude.json").is_file(), "{how}: the home was copied");
        for f in walk(&home) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(REAL_KEY),
                "{how}: the real key is in the agent's home: {}",
                f.display()
            );
        }
        std::fs::write(fx.dir.path().join("requests.jsonl"), "").expect("truncate");
        states.push(state);
    }
    // The 340 MB image goes with the bottles.
    for state in &states {
        let out = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
            .args(["cleanup", "--purge", "--yes"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", state.path())
            .env("XDG_STATE_HOME", state.path())
            .output()
            .expect("cleanup");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().expect("type");
        if t.is_dir() {
            out.extend(walk(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}
