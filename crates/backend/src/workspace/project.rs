//! What the project is: the directory whose copy (or mount) becomes the
//! bottle's `/workspace`, and the directories it must never be.

use std::path::{Path, PathBuf};

use bot_bottle_manifest::{KeySource, Plan};

use super::gitdir;

/// A path no project may hold: bot-bottle's state directory (other
/// bottles' workspaces and their proxies' keys; a copy would copy itself
/// into it), its config directory, or a secret the manifest names (a git
/// gate's deploy key).
#[derive(Clone, Debug)]
pub struct Guarded {
    /// What it is, for the error: `bot-bottle's state directory`.
    pub what: String,
    pub path: PathBuf,
    /// How to move it out: `set XDG_STATE_HOME`.
    pub fix: &'static str,
    /// A project inside it is refused too (a credential directory's
    /// subdirectories hold credentials as well).
    pub within: bool,
}

/// Where credentials live in a home directory, by convention: a project
/// that is or holds one of these (`start` run in `~/.config`) would hand
/// them to the agent as surely as home itself.
const HOME_SECRETS: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    ".password-store",
    ".config/gcloud",
    ".config/gh",
    ".local/share/keyrings",
];

fn home_secrets(home: &Path) -> Vec<Guarded> {
    HOME_SECRETS
        .iter()
        .map(|d| home.join(d))
        .map(|dir| Guarded {
            what: format!("{}, where credentials are kept", dir.display()),
            path: dir,
            fix: "start from a project's own directory",
            within: true,
        })
        .collect()
}

/// What no project of `plan`'s may hold: bot-bottle's state directory
/// (`STATE_HOME/bot-bottle`) and config directory (`CONFIG_HOME/bot-bottle`),
/// the places a home directory keeps credentials in, and the deploy keys
/// the git gate holds for the agent, which must never be the agent's to
/// read.
pub fn guarded(
    state_home: Option<&Path>,
    config_home: Option<&Path>,
    home: Option<&Path>,
    plan: &Plan,
) -> Vec<Guarded> {
    let mut g = home.map(home_secrets).unwrap_or_default();
    if let Some(s) = state_home {
        g.push(Guarded {
            what: "bot-bottle's state directory".into(),
            path: s.join("bot-bottle"),
            fix: "set XDG_STATE_HOME to a directory outside it",
            within: false,
        });
    }
    if let Some(c) = config_home {
        g.push(Guarded {
            what: "bot-bottle's config directory".into(),
            path: c.join("bot-bottle"),
            fix: "set XDG_CONFIG_HOME to a directory outside it",
            within: false,
        });
    }
    for (name, repo) in &plan.git_gate.repos {
        if let KeySource::Static { path } = &repo.key {
            g.push(Guarded {
                what: format!("the deploy key of git-gate repo `{name}`"),
                path: path.clone(),
                fix: "keep the key outside the project",
                within: false,
            });
        }
    }
    g
}

/// How `start` asked for the project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectSource {
    /// `--workspace DIR`.
    Flag,
    /// The git working tree around the current directory.
    Git,
    /// The current directory, outside any repository.
    Cwd,
    /// The project a bottle was started on (`resume`).
    Stored,
}

/// The project of a `start`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Project {
    /// Absolute, with symlinks resolved.
    pub root: PathBuf,
    /// Where the agent starts, relative to `root`: the current directory's
    /// place in the project (empty when it is outside, with `--workspace`).
    pub subdir: PathBuf,
    pub source: ProjectSource,
}

/// What the project is looked up from; the CLI fills it from its flags and
/// environment, so that this does no environment reading of its own.
#[derive(Clone, Debug)]
pub struct ProjectQuery<'a> {
    pub cwd: &'a Path,
    /// `--workspace DIR` (relative to `cwd`).
    pub workspace: Option<&'a Path>,
    pub home: Option<&'a Path>,
    pub guarded: &'a [Guarded],
}

/// Why a directory cannot be a project. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("--workspace {}: {source}; name an existing directory", .path.display())]
    Missing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--workspace {}: not a directory; name the project's directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("cannot read the current directory: {0}")]
    Cwd(#[source] std::io::Error),
    #[error(
        "the project would be / (the whole machine){}; start from a project's directory, or name one with --workspace DIR",
        how(*.from)
    )]
    Root { from: ProjectSource },
    #[error(
        "the project would be {} ({}), a system directory{}; start from a project's directory, or name one with --workspace DIR",
        .path.display(), .what, how(*.from)
    )]
    System { path: PathBuf, what: &'static str, from: ProjectSource },
    #[error(
        "the project would be your home directory {}{}, and the agent would read everything in it (~/.ssh, ~/.aws, ...); start from a project's directory, or name one with --workspace DIR",
        .home.display(), how(*.from)
    )]
    Home { home: PathBuf, from: ProjectSource },
    #[error(
        "the project {}{} holds your home directory {}; start from a project's directory, or name one with --workspace DIR",
        .path.display(), how(*.from), .home.display()
    )]
    HoldsHome { path: PathBuf, home: PathBuf, from: ProjectSource },
    #[error(
        "the project {}{} holds {} ({}), which no bottle may see; {}, start from another directory, or name one with --workspace DIR",
        .path.display(), how(*.from), .what, .dir.display(), .fix
    )]
    Holds { path: PathBuf, what: String, dir: PathBuf, fix: &'static str, from: ProjectSource },
}

fn how(source: ProjectSource) -> &'static str {
    match source {
        ProjectSource::Flag => " (from --workspace)",
        ProjectSource::Git => " (the git repository around the current directory)",
        ProjectSource::Cwd => " (the current directory)",
        ProjectSource::Stored => " (the bottle's project)",
    }
}

/// Top-level system directories: their contents are the host's, not a
/// project's.
const SYSTEM: &[(&str, &str)] = &[
    ("/bin", "programs"),
    ("/boot", "the kernel"),
    ("/dev", "devices"),
    ("/etc", "the host's configuration"),
    ("/home", "every user's home"),
    ("/lib", "libraries"),
    ("/lib32", "libraries"),
    ("/lib64", "libraries"),
    ("/proc", "processes"),
    ("/root", "root's home"),
    ("/run", "runtime state"),
    ("/sbin", "programs"),
    ("/sys", "the kernel"),
    ("/tmp", "everyone's temporary files"),
    ("/usr", "programs"),
    ("/var", "the host's data"),
];

/// The project: `--workspace DIR` if given, else the git working tree
/// around the current directory, else the current directory; refused if it
/// is or holds a directory no bottle may see.
pub fn find_project(q: &ProjectQuery<'_>) -> Result<Project, ProjectError> {
    let cwd = q.cwd.canonicalize().map_err(ProjectError::Cwd)?;
    let (root, source) = match q.workspace {
        Some(dir) => {
            let path = q.cwd.join(dir);
            let root =
                path.canonicalize().map_err(|source| ProjectError::Missing { path: dir.to_path_buf(), source })?;
            if !root.is_dir() {
                return Err(ProjectError::NotADirectory(dir.to_path_buf()));
            }
            (root, ProjectSource::Flag)
        }
        None => match gitdir::toplevel(&cwd) {
            Some(top) => (top, ProjectSource::Git),
            None => (cwd.clone(), ProjectSource::Cwd),
        },
    };
    check_project(&root, source, q.home, q.guarded)?;
    let subdir = cwd.strip_prefix(&root).map(Path::to_path_buf).unwrap_or_default();
    Ok(Project { root, subdir, source })
}

/// Refuses a project (absolute, symlinks resolved) that is `/`, a system
/// directory, the home directory or above it, or one holding a guarded
/// directory (which need not exist yet: it would be created inside).
pub fn check_project(
    root: &Path,
    source: ProjectSource,
    home: Option<&Path>,
    guarded: &[Guarded],
) -> Result<(), ProjectError> {
    if root == Path::new("/") {
        return Err(ProjectError::Root { from: source });
    }
    if let Some((_, what)) = SYSTEM.iter().find(|(d, _)| Path::new(d) == root) {
        return Err(ProjectError::System { path: root.to_path_buf(), what, from: source });
    }
    if let Some(home) = home.map(resolve) {
        if root == home {
            return Err(ProjectError::Home { home, from: source });
        }
        if home.starts_with(root) {
            return Err(ProjectError::HoldsHome { path: root.to_path_buf(), home, from: source });
        }
    }
    for g in guarded {
        let dir = resolve(&g.path);
        if dir.starts_with(root) || (g.within && root.starts_with(&dir)) {
            return Err(ProjectError::Holds {
                path: root.to_path_buf(),
                what: g.what.clone(),
                dir,
                fix: g.fix,
                from: source,
            });
        }
    }
    Ok(())
}

/// `path` with symlinks resolved as far as it exists; the rest appended.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(p) = existing.canonicalize() {
            let mut out = p;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals() {
        let t = tempfile::tempdir().expect("tempdir");
        let t = t.path().canonicalize().expect("canonical");
        let home = t.join("home");
        std::fs::create_dir_all(home.join("proj")).expect("mkdir");
        let guarded = [Guarded {
            what: "bot-bottle's state directory".into(),
            path: t.join("st/not/yet/bot-bottle"),
            fix: "set XDG_STATE_HOME elsewhere",
            within: false,
        }];
        let check = |root: &Path| check_project(root, ProjectSource::Cwd, Some(&home), &guarded);
        assert!(matches!(check(Path::new("/")), Err(ProjectError::Root { .. })));
        assert!(matches!(check(Path::new("/etc")), Err(ProjectError::System { .. })));
        assert!(matches!(check(&home), Err(ProjectError::Home { .. })));
        assert!(matches!(check(&t), Err(ProjectError::HoldsHome { .. })));
        std::fs::create_dir_all(t.join("st")).expect("mkdir");
        assert!(matches!(check(&t.join("st")), Err(ProjectError::Holds { .. })), "a guarded dir not created yet");
        assert!(check(&home.join("proj")).is_ok());
        // The places home keeps credentials in, and anything inside them.
        let plan_free = [&guarded[..], &home_secrets(&home)].concat();
        let check = |root: &Path| check_project(root, ProjectSource::Cwd, Some(&home), &plan_free);
        for secret in [".ssh", ".ssh/keys", ".config", ".config/gcloud/legacy", ".aws"] {
            std::fs::create_dir_all(home.join(secret)).expect("mkdir");
            assert!(matches!(check(&home.join(secret)), Err(ProjectError::Holds { .. })), "{secret}");
        }
        assert!(check(&home.join("proj")).is_ok());
    }

    #[test]
    fn the_project_is_the_git_top_or_the_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let t = t.path().canonicalize().expect("canonical");
        let repo = t.join("repo");
        std::fs::create_dir_all(repo.join(".git")).expect("mkdir");
        std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/main\n").expect("write");
        std::fs::create_dir_all(repo.join("a/b")).expect("mkdir");
        std::fs::create_dir_all(t.join("plain/x")).expect("mkdir");
        let find = |cwd: &Path, ws: Option<&Path>| {
            find_project(&ProjectQuery { cwd, workspace: ws, home: None, guarded: &[] }).expect("project")
        };
        assert_eq!(
            find(&repo.join("a/b"), None),
            Project { root: repo.clone(), subdir: "a/b".into(), source: ProjectSource::Git }
        );
        assert_eq!(
            find(&t.join("plain/x"), None),
            Project { root: t.join("plain/x"), subdir: "".into(), source: ProjectSource::Cwd }
        );
        assert_eq!(
            find(&repo.join("a"), Some(Path::new("b"))),
            Project { root: repo.join("a/b"), subdir: "".into(), source: ProjectSource::Flag }
        );
        assert_eq!(
            find(&repo.join("a/b"), Some(Path::new("../.."))),
            Project { root: repo.clone(), subdir: "a/b".into(), source: ProjectSource::Flag }
        );
        let missing =
            find_project(&ProjectQuery { cwd: &t, workspace: Some(Path::new("nope")), home: None, guarded: &[] });
        assert!(matches!(missing, Err(ProjectError::Missing { .. })));
    }
}
