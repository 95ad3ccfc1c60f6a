//! Running git: the program found once, a cleared environment, the gate's
//! own directory as the working directory, and a time limit.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use super::GateError;
use super::argv::{GitCmd, base_env};

/// How the gate runs git. Never inside a directory the agent wrote: its
/// working directory is the gate's own, and every repository is named
/// explicitly.
#[derive(Clone, Debug)]
pub(crate) struct Git {
    program: PathBuf,
    base: Vec<(&'static str, OsString)>,
    cwd: PathBuf,
    /// The longest any one git run may take (upstream transfers included).
    pub(crate) timeout: Duration,
}

/// Finds `name` on the launcher's `PATH`.
pub(crate) fn find_program(name: &'static str) -> Result<PathBuf, GateError> {
    which::which(name).map_err(|_| GateError::Missing(name))
}

impl Git {
    /// git from the launcher's `PATH`; `home` is an empty directory of the
    /// gate's, `cwd` the gate's own directory.
    pub(crate) fn new(program: PathBuf, home: &Path, cwd: &Path, timeout: Duration) -> Git {
        // git's own directory first, then the usual system ones: what the
        // hook (`sh`, `cat`) and ssh need, nothing from the launcher's PATH.
        let mut path = OsString::new();
        if let Some(d) = program.parent() {
            path.push(d);
            path.push(":");
        }
        path.push("/usr/local/bin:/usr/bin:/bin");
        Git { base: base_env(home, &path), program, cwd: cwd.to_path_buf(), timeout }
    }

    pub(crate) fn command(&self, c: &GitCmd) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.env_clear()
            .envs(self.base.iter().map(|(k, v)| (k, v)))
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .args(&c.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Starts `c` with piped stdout (and stdin when asked); stderr is
    /// discarded.
    pub(crate) fn spawn(&self, c: &GitCmd, stdin: bool) -> Result<tokio::process::Child, GateError> {
        let mut cmd = self.command(c);
        cmd.stderr(Stdio::null());
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        cmd.spawn().map_err(|source| GateError::Io { what: format!("running `{}`", c.display()), source })
    }

    /// Runs `c` to completion with `stdin`, within the time limit.
    pub(crate) async fn output(&self, c: &GitCmd, stdin: Option<Vec<u8>>) -> Result<Output, GateError> {
        let mut cmd = self.command(c);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let run = async {
            let mut child =
                cmd.spawn().map_err(|source| GateError::Io { what: format!("running `{}`", c.display()), source })?;
            let feed = child.stdin.take().zip(stdin).map(|(mut w, data)| {
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    // A command may exit before reading all of it; its
                    // status says whether that was a failure.
                    if let Err(e) = w.write_all(&data).await {
                        tracing::debug!(error = %e, "the command stopped reading its stdin");
                    }
                })
            });
            let out = child
                .wait_with_output()
                .await
                .map_err(|source| GateError::Io { what: format!("running `{}`", c.display()), source })?;
            // The feeder only writes; its end (or a panic) changes nothing
            // that the exit status does not already say.
            if let Some(f) = feed
                && let Err(e) = f.await
            {
                tracing::warn!(error = %e, "the stdin feeder of `{}` failed", c.display());
            }
            Ok(out)
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(GateError::Timeout { what: c.display(), after: self.timeout }),
        }
    }
}
