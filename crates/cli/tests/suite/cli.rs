//! Running the real binary with a controlled environment.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// A sandboxed environment for one invocation: HOME and the XDG folders
/// point into a temp dir so the test can prove nothing was written there.
pub(crate) struct Env {
    pub(crate) tmp: tempfile::TempDir,
}

impl Env {
    pub(crate) fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        for d in ["home", "config", "state", "data", "cache", "runtime"] {
            std::fs::create_dir_all(tmp.path().join(d)).expect("mkdir");
        }
        Env { tmp }
    }

    pub(crate) fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub(crate) fn run(&self, cwd: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> Run {
        let t = self.tmp.path();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bot-bottle"));
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", t.join("home"))
            .env("XDG_CONFIG_HOME", t.join("config"))
            .env("XDG_STATE_HOME", t.join("state"))
            .env("XDG_DATA_HOME", t.join("data"))
            .env("XDG_CACHE_HOME", t.join("cache"))
            .env("XDG_RUNTIME_DIR", t.join("runtime"))
            .env("TMPDIR", t.join("runtime"));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run bot-bottle");
        Run {
            code: out.status.code().expect("exit code"),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    }

    /// What exists under the sandboxed HOME and XDG folders.
    pub(crate) fn written(&self) -> Vec<String> {
        let mut out = super::cases::tree(self.tmp.path());
        out.retain(|p| !["home", "config", "state", "data", "cache", "runtime"].contains(&p.as_str()));
        out
    }
}

pub(crate) fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").canonicalize().expect("examples/")
}
