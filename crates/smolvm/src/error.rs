//! Errors, and the command line as errors show it.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::version::{Version, VersionRange};

/// A smolvm command line as errors show it: the program's file name, then its
/// arguments, with every `-e KEY=VALUE` value replaced by `KEY=…`. Environment
/// values may be secrets; nothing in this crate puts one in an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argv(Vec<String>);

impl Argv {
    pub(crate) fn new(program: &Path, args: &[OsString]) -> Self {
        let name = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned();
        let mut out = vec![name];
        out.extend(redact(args));
        Argv(out)
    }

    /// The words, program first, env values redacted.
    pub fn words(&self) -> &[String] {
        &self.0
    }
}

/// The arguments with env values redacted. Stops at `--`: what follows is the
/// guest's command line, which this crate does not interpret.
fn redact(args: &[OsString]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut after_env_flag = false;
    let mut done = false;
    for arg in args {
        let arg = arg.to_string_lossy();
        let word = if done {
            arg.into_owned()
        } else if after_env_flag {
            key_only(&arg)
        } else if let Some(kv) = arg.strip_prefix("--env=") {
            format!("--env={}", key_only(kv))
        } else {
            arg.into_owned()
        };
        after_env_flag = !done && !after_env_flag && (word == "-e" || word == "--env");
        done = done || word == "--";
        out.push(word);
    }
    out
}

fn key_only(kv: &str) -> String {
    match kv.split_once('=') {
        Some((k, _)) => format!("{k}=…"),
        None => kv.to_owned(),
    }
}

impl fmt::Display for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !w.is_empty() && w.chars().all(|c| !c.is_whitespace() && !matches!(c, '\'' | '"' | '\\'));
            if plain { f.write_str(w)? } else { write!(f, "{w:?}")? }
        }
        Ok(())
    }
}

/// Everything that can go wrong driving smolvm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmolvmError {
    #[error(
        "smolvm is not installed (not on PATH); install it from https://github.com/smol-machines/smolvm/releases \
         (a release in {range})",
        range = crate::version::SUPPORTED
    )]
    NotInstalled,
    #[error("could not run `{argv}`")]
    Spawn {
        argv: Argv,
        #[source]
        source: io::Error,
    },
    /// smolvm itself failed: it exits 1 and prints `Error: …` (or exits with
    /// another status that is not the guest's).
    #[error("`{argv}` failed with exit status {status}: {stderr}")]
    Failed { argv: Argv, status: i32, stderr: String },
    /// smolvm was killed by a signal (not the guest: smolvm reports a guest's
    /// signal as 128+signal).
    #[error("`{argv}` was killed by signal {signal}")]
    Signalled { argv: Argv, signal: i32 },
    /// smolvm refused the command line (clap exits 2): a flag this version
    /// does not know, most likely.
    #[error("`{argv}` was refused as a usage error: {stderr}")]
    Usage { argv: Argv, stderr: String },
    #[error("unrecognised version output from `{argv}`: {output:?}")]
    BadVersion { argv: Argv, output: String },
    #[error(
        "smolvm {found} is not supported: need {range}; install a smolvm release in that range \
         or put one first on PATH"
    )]
    Unsupported { found: Version, range: VersionRange },
    #[error("bad machine name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    /// An input refused before spawning anything. `value` never holds an env
    /// value: for those it is the key.
    #[error("bad {what} {value:?}: {why}")]
    BadInput { what: &'static str, value: String, why: &'static str },
    #[error("unparsable JSON from `{argv}`")]
    BadJson {
        argv: Argv,
        #[source]
        source: serde_json::Error,
    },
    #[error("machine {name:?} is not running (state {state})")]
    NotRunning { name: String, state: String },
    #[error("could not pass on the output of `{argv}`")]
    Output {
        argv: Argv,
        #[source]
        source: io::Error,
    },
    #[error("could not determine smolvm's data directory (HOME is not set)")]
    NoDataDir,
    #[error("could not read smolvm's state database {}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("unparsable record of machine {name:?} in {}", path.display())]
    BadRecord {
        path: PathBuf,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = SmolvmError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Argv {
        Argv::new(Path::new("/usr/local/bin/smolvm"), &words.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn env_values_are_redacted_up_to_the_guest_command() {
        let a = argv(&[
            "machine",
            "exec",
            "--name",
            "m",
            "-e",
            "TOKEN=s3cret",
            "--env",
            "A=b=c",
            "--env=X=y",
            "-e",
            "KEYONLY",
        ]);
        assert_eq!(
            a.words(),
            ["smolvm", "machine", "exec", "--name", "m", "-e", "TOKEN=…", "--env", "A=…", "--env=X=…", "-e", "KEYONLY"]
        );
        let a = argv(&["machine", "exec", "--name", "m", "--", "env", "-e", "A=b"]);
        assert_eq!(a.to_string(), "smolvm machine exec --name m -- env -e A=b");
    }

    #[test]
    fn display_quotes_words_that_need_it() {
        assert_eq!(argv(&["a b", "", "c"]).to_string(), r#"smolvm "a b" "" c"#);
    }

    #[test]
    fn messages() {
        let e = SmolvmError::Failed {
            argv: argv(&["machine", "start", "--name", "m"]),
            status: 1,
            stderr: "Error: vm not found: m".into(),
        };
        assert_eq!(e.to_string(), "`smolvm machine start --name m` failed with exit status 1: Error: vm not found: m");
        let e = SmolvmError::Unsupported { found: Version::new(2, 1, 0), range: crate::SUPPORTED };
        assert_eq!(
            e.to_string(),
            "smolvm 2.1.0 is not supported: need >=1.0.2, <2.0.0; install a smolvm release in that range or put one first on PATH"
        );
    }
}
