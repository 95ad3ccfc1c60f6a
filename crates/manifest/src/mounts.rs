//! `mounts:`: host directories a bottle sees read-only at the same path
//! (toolchains such as `~/.rustup` or `~/.cargo/bin`).
//!
//! Each path is expanded (`~`), resolved (symlinks followed, so a link
//! cannot smuggle in what its text hides) and then refused when it is, lies
//! in, or contains a place that holds credentials or a way out: the home
//! directory itself, the usual credential locations, bot-bottle's own
//! directories, and the host's live system trees (`/proc`, `/run`, `/tmp`,
//! where sockets to daemons and agents live; a read-only bind does not stop
//! a `connect()`).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A host directory bound read-only into the bottle at the same path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Absolute, symlinks resolved.
    pub path: PathBuf,
    /// What the bottle's `PATH` gains from it: the directory itself when it
    /// is a `bin`, else its `bin` subdirectory when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bin: Option<PathBuf>,
}

/// Credential locations under a home directory. A mount that is, lies in
/// or contains one of them is refused, whether or not it exists yet: a
/// mount is live, so a file created later would appear inside.
const HOME_CREDENTIALS: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    ".password-store",
    ".netrc",
    ".git-credentials",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    ".vault-token",
    ".terraform.d",
    ".config/gcloud",
    ".config/gh",
    ".config/hub",
    ".config/git/credentials",
    ".local/share/keyrings",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".codex",
    ".claude",
    ".claude.json",
    ".config/bot-bottle",
    ".local/state/bot-bottle",
];

/// Host trees that hold live sockets or kernel interfaces (docker.sock,
/// ssh-agent and tmux sockets, `/proc/*/environ`): never bound in, nor
/// anything containing them.
const HOST_LIVE: &[&str] = &["/proc", "/sys", "/dev", "/run", "/var/run", "/tmp", "/var/tmp"];

/// Paths the bottle builds itself: a mount there would be hidden or would
/// cover the bottle's own files.
const BOTTLE_OWN: &[&str] =
    &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/home/agent", "/workspace"];

/// Why a mount is refused: the message and what to do instead.
pub(crate) struct Refused {
    pub(crate) message: String,
    pub(crate) help: String,
}

fn refused(message: String, help: impl Into<String>) -> Refused {
    Refused { message, help: help.into() }
}

/// Resolves the real path of `p` when it exists (so a symlinked credential
/// directory is guarded where it really is); otherwise `p` as written.
fn real(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Where else on the host credentials are kept, beyond this user's home.
struct Elsewhere {
    /// Other users' homes (root's, every directory under `/home`).
    homes: Vec<PathBuf>,
    /// Locations the environment moves out of the home: the variable and
    /// the path.
    moved: Vec<(&'static str, PathBuf)>,
}

impl Elsewhere {
    fn of_this_host() -> Elsewhere {
        Elsewhere { homes: other_homes(), moved: moved_credentials() }
    }
}

/// Root's home and every directory under `/home`.
fn other_homes() -> Vec<PathBuf> {
    let mut v = Vec::new();
    let others = std::fs::read_dir("/home").into_iter().flatten().flatten().map(|e| e.path());
    for h in std::iter::once(PathBuf::from("/root")).chain(others) {
        if h.is_dir() {
            v.push(real(&h));
        }
    }
    v
}

/// Credential and state locations the environment puts outside the home:
/// the variable and the path.
fn moved_credentials() -> Vec<(&'static str, PathBuf)> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from).filter(|p| p.is_absolute());
    let mut v = Vec::new();
    if let Some(p) = var("CODEX_HOME") {
        v.push(("CODEX_HOME", p));
    }
    if let Some(p) = var("CLAUDE_CONFIG_DIR") {
        v.push(("CLAUDE_CONFIG_DIR", p));
    }
    if let Some(p) = var("XDG_STATE_HOME") {
        v.push(("XDG_STATE_HOME", p.join("bot-bottle")));
    }
    if let Some(p) = var("XDG_CONFIG_HOME") {
        v.push(("XDG_CONFIG_HOME", p.join("bot-bottle")));
    }
    v
}

/// Checks one `mounts:` entry. `manifest_root` is the manifest directory
/// (bot-bottle's own, refused like the rest).
pub(crate) fn check(raw: &str, home: Option<&Path>, manifest_root: Option<&Path>) -> Result<Mount, Refused> {
    check_against(raw, home, manifest_root, &Elsewhere::of_this_host())
}

fn check_against(
    raw: &str,
    home: Option<&Path>,
    manifest_root: Option<&Path>,
    elsewhere: &Elsewhere,
) -> Result<Mount, Refused> {
    let expanded = match (raw.strip_prefix('~'), home) {
        (Some(rest), Some(h)) if rest.is_empty() || rest.starts_with('/') => h.join(rest.trim_start_matches('/')),
        (Some(_), None) => {
            return Err(refused(format!("cannot expand `{raw}`: HOME is not set"), "write the absolute path"));
        }
        (Some(_), Some(_)) => {
            return Err(refused(
                format!("`{raw}`: only `~/` (this user's home) is expanded"),
                "write the absolute path of another user's directory",
            ));
        }
        (None, _) => PathBuf::from(raw),
    };
    if !expanded.is_absolute() {
        return Err(refused(
            format!("mount `{raw}` is not an absolute path"),
            "write an absolute path or one starting with `~/`, e.g. `~/.rustup`",
        ));
    }
    let path = expanded.canonicalize().map_err(|e| {
        refused(format!("mount `{raw}` cannot be resolved: {e}"), "name a directory that exists on this host")
    })?;
    if !path.is_dir() {
        return Err(refused(format!("mount `{raw}` is not a directory"), "mount the directory that holds it"));
    }
    let shown = path.display().to_string();
    if path.to_str().is_none() || shown.contains(':') || shown.contains('\n') {
        return Err(refused(
            format!("mount `{raw}` resolves to a path with `:`, a newline or invalid UTF-8"),
            "mount a directory with a plain name",
        ));
    }
    let via = if Path::new(raw) == path { String::new() } else { format!(" (resolved to {shown})") };
    // Without a home the credential locations are unknown: nothing is
    // mounted rather than something unchecked.
    let Some(h) = home.map(real) else {
        return Err(refused(
            format!("mount `{raw}` cannot be checked: HOME is not set"),
            "set HOME to your home directory, where bot-bottle looks for credentials to keep out",
        ));
    };
    if h.starts_with(&path) {
        let what = if h == path { "is" } else { "contains" };
        return Err(refused(
            format!("mount `{raw}`{via} {what} your home directory, where credentials are kept"),
            "mount only the toolchain directories the agent needs, e.g. `~/.rustup` and `~/.cargo/bin`",
        ));
    }
    // This user's credential locations, every other home's on this host
    // (a launch under sudo, a shared machine), and those the environment
    // moves elsewhere (CODEX_HOME holds a ChatGPT login's refresh token).
    let others = elsewhere.homes.iter().filter(|o| **o != h).map(|o| (o.display().to_string(), o.clone()));
    for (home_shown, home) in std::iter::once(("~".to_owned(), h.clone())).chain(others) {
        for c in HOME_CREDENTIALS {
            let guarded = real(&home.join(c));
            if path.starts_with(&guarded) || guarded.starts_with(&path) {
                let what = if path.starts_with(&guarded) { "lies in" } else { "contains" };
                let help = if *c == ".cargo/credentials.toml" || *c == ".cargo/credentials" {
                    "mount `~/.cargo/bin` instead (cargo keeps its registry token in `~/.cargo`)".to_owned()
                } else {
                    "mount only the toolchain directories the agent needs".to_owned()
                };
                return Err(refused(
                    format!(
                        "mount `{raw}`{via} {what} {home_shown}/{c}, where credentials or bot-bottle's state are kept"
                    ),
                    help,
                ));
            }
        }
    }
    for (var, guarded) in &elsewhere.moved {
        let guarded = real(guarded);
        if path.starts_with(&guarded) || guarded.starts_with(&path) {
            return Err(refused(
                format!(
                    "mount `{raw}`{via} overlaps {} (${var}), where credentials or bot-bottle's state are kept",
                    guarded.display()
                ),
                "mount only the toolchain directories the agent needs",
            ));
        }
    }
    if let Some(root) = manifest_root.map(real)
        && (path.starts_with(&root) || root.starts_with(&path))
    {
        return Err(refused(
            format!("mount `{raw}`{via} holds or lies in the manifest directory {}", root.display()),
            "the manifest is bot-bottle's, not the agent's: mount a toolchain directory",
        ));
    }
    for live in HOST_LIVE {
        let live = real(Path::new(live));
        if path.starts_with(&live) || live.starts_with(&path) {
            return Err(refused(
                format!("mount `{raw}`{via} is or holds {}, where the host keeps live sockets", live.display()),
                "a read-only mount does not stop connecting to a socket: mount a toolchain directory",
            ));
        }
    }
    for own in BOTTLE_OWN {
        let own = Path::new(own);
        if path.starts_with(own) || own.starts_with(&path) {
            return Err(refused(
                format!("mount `{raw}`{via} overlaps {}, which the bottle provides itself", own.display()),
                "the host's /usr (and /bin, /lib) are in every bottle already; mount a directory outside them",
            ));
        }
    }
    let bin = if path.file_name().is_some_and(|n| n == "bin") {
        Some(path.clone())
    } else {
        Some(path.join("bin")).filter(|b| b.is_dir())
    };
    Ok(Mount { path, bin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_expanded_resolved_and_guarded() {
        // Not under /tmp (or another live tree), which is refused itself:
        // the checkout if it is outside them, else the home directory.
        let base = [std::env::current_dir().ok(), std::env::home_dir()]
            .into_iter()
            .flatten()
            .find(|b| !HOST_LIVE.iter().any(|l| b.starts_with(l)))
            .expect("a checkout or home directory outside /tmp");
        let tmp = tempfile::tempdir_in(base).expect("tempdir");
        let home = tmp.path().join("home");
        for d in [".rustup/toolchains", ".cargo/bin", ".ssh", ".pyenv/bin", "tools"] {
            std::fs::create_dir_all(home.join(d)).expect("mkdir");
        }
        std::os::unix::fs::symlink(home.join(".ssh"), home.join("tools/keys")).expect("symlink");
        std::os::unix::fs::symlink(&home, home.join("tools/up")).expect("symlink");
        let h = Some(home.as_path());
        let home = home.canonicalize().expect("real home");
        let ok = |raw: &str| check(raw, h, None).map_err(|r| r.message);
        assert_eq!(ok("~/.rustup"), Ok(Mount { path: home.join(".rustup"), bin: None }));
        let bin = Some(home.join(".cargo/bin"));
        assert_eq!(ok("~/.cargo/bin"), Ok(Mount { path: home.join(".cargo/bin"), bin }));
        let bin = Some(home.join(".pyenv/bin"));
        assert_eq!(ok("~/.pyenv"), Ok(Mount { path: home.join(".pyenv"), bin }));
        for (raw, why) in [
            ("~", "is your home"),
            ("~/", "is your home"),
            ("~/..", "contains your home"),
            ("/", "contains your home"),
            ("~/.ssh", "lies in ~/.ssh"),
            ("~/tools/keys", "lies in ~/.ssh"),
            ("~/tools/up", "is your home"),
            ("~/.cargo", "contains ~/.cargo/credentials"),
            ("/proc", "holds /proc"),
            ("/usr/lib", "overlaps /usr"),
            ("relative/dir", "not an absolute path"),
            ("~other/x", "only `~/`"),
            ("~/missing", "cannot be resolved"),
        ] {
            let e = ok(raw).expect_err(raw);
            assert!(e.contains(why), "{raw}: {e}");
        }
        // A link inside a mount is resolved inside the bottle, where the
        // place it names is absent.
        assert!(ok("~/tools").is_ok());
        // The manifest directory is refused too.
        let e = check("~/tools", h, Some(&home.join("tools"))).map(drop).map_err(|r| r.message);
        assert!(e.is_err());
    }

    #[test]
    fn other_homes_moved_credentials_and_no_home_are_refused() {
        let tmp = tempfile::tempdir_in(std::env::home_dir().expect("home")).expect("tempdir");
        let root = tmp.path().canonicalize().expect("real");
        for d in ["me", "bob/.ssh", "bob/src", "codex", "state/bot-bottle", "tools"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let me = root.join("me");
        let elsewhere = Elsewhere {
            homes: vec![root.join("bob")],
            moved: vec![("CODEX_HOME", root.join("codex")), ("XDG_STATE_HOME", root.join("state/bot-bottle"))],
        };
        let at = |raw: &Path| {
            check_against(raw.to_str().expect("utf-8"), Some(&me), None, &elsewhere).map(drop).map_err(|r| r.message)
        };
        for (raw, why) in [
            (root.join("bob/.ssh"), "bob/.ssh"),
            (root.join("bob"), "contains"),
            (root.join("codex"), "$CODEX_HOME"),
            (root.join("state"), "$XDG_STATE_HOME"),
        ] {
            let e = at(&raw).expect_err(&raw.display().to_string());
            assert!(e.contains(why), "{}: {e}", raw.display());
        }
        assert!(at(&root.join("bob/src")).is_ok(), "another user's project directory is no credential");
        assert!(at(&root.join("tools")).is_ok());
        let e = check_against(&root.join("tools").display().to_string(), None, None, &elsewhere)
            .map(drop)
            .map_err(|r| r.message);
        assert!(e.is_err_and(|m| m.contains("HOME is not set")), "no home, nothing mounted");
    }
}
