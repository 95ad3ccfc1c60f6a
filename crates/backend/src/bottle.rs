//! The handle on a running bottle, and provisioning through it.

use std::sync::atomic::AtomicBool;

pub use bot_bottle_provision::Owner;
use bot_bottle_provision::{Content, Provision};

use crate::{BackendError, io};

/// A command to run inside a bottle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exec {
    pub argv: Vec<String>,
    /// The whole environment: nothing else is inherited.
    pub env: Vec<(String, String)>,
    /// Working directory inside; the user's home when `None`.
    pub workdir: Option<String>,
    pub user: Owner,
}

/// What a command inside printed, and how it ended (`128 + n` for signal n).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A running bottle. Dropping the handle tears the bottle down.
pub trait Bottle {
    /// Runs `cmd` inside, under the same confinement as the agent, with no
    /// stdin; waits for it and returns its output.
    fn exec(&mut self, cmd: &Exec) -> Result<Output, BackendError>;

    /// Creates `path` (and missing parents) inside with `mode`, owned by `owner`.
    fn mkdir(&mut self, path: &str, mode: u32, owner: Owner) -> Result<(), BackendError>;

    /// Writes a file inside: `content`, `mode`, owned by `owner`.
    fn copy_in(&mut self, path: &str, content: &[u8], mode: u32, owner: Owner) -> Result<(), BackendError>;

    /// Runs the agent attached to this process's stdin, stdout and stderr
    /// (the user's terminal, with its window size and signals) and returns
    /// its exit code. Setting `stop` ends the bottle. Provisioning is over
    /// once the agent starts: the bottle's own files turn read-only.
    fn run_agent(&mut self, cmd: &Exec, stop: &AtomicBool) -> Result<i32, BackendError>;
}

/// Applies a provider's provisioning to a running bottle: directories, then
/// files, then its commands, each of which must succeed.
pub fn provision(bottle: &mut dyn Bottle, p: &Provision) -> Result<(), BackendError> {
    for d in &p.dirs {
        bottle.mkdir(&d.path, d.mode, d.owner)?;
    }
    for f in &p.files {
        match &f.content {
            Content::Inline(b) => bottle.copy_in(&f.path, b, f.mode, f.owner)?,
            Content::Host(src) => {
                let b = std::fs::read(src).map_err(io(format!("reading {}", src.display())))?;
                bottle.copy_in(&f.path, &b, f.mode, f.owner)?;
            }
        }
    }
    let env: Vec<(String, String)> = p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for c in &p.commands {
        let out = bottle.exec(&Exec {
            argv: c.argv.clone(),
            env: env.clone(),
            workdir: Some(p.workdir.clone()),
            user: c.user,
        })?;
        if out.code != 0 {
            return Err(BackendError::Provision {
                command: shell_words(&c.argv),
                why: c.why.clone(),
                code: out.code,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    Ok(())
}

/// `argv` as a shell would need it typed, for messages.
fn shell_words(argv: &[String]) -> String {
    let quote = |a: &String| {
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn commands_are_shown_as_typed() {
        let argv: Vec<String> = ["sh", "-c", "command -v -- \"$1\"", "it's"].map(String::from).into();
        assert_eq!(super::shell_words(&argv), r#"sh -c 'command -v -- "$1"' 'it'\''s'"#);
    }
}
