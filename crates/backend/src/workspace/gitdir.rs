//! Repositories as the copy meets them: where a repository's top and git
//! dir are, what it tracks and excludes, and `.git` files (worktrees and
//! submodules) whose git dir may sit outside the project.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use super::WorkspaceError;
use super::gitconfig::{self, Layout};
use super::index::Tracked;
use super::rules::{self, Repo};
use super::walk::{Dest, DirTask, GitHow, How, Part, Source, Walk};

/// The path a `.git` file names (`gitdir: PATH`), as written.
pub(crate) fn gitfile_target(text: &[u8]) -> Option<PathBuf> {
    let line = text.split(|&c| c == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let path = line.strip_prefix(b"gitdir:")?.trim_ascii();
    (!path.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(path)))
}

/// Whether `dir` is the top of a working tree: it holds a `.git` directory
/// with a `HEAD`, or a `.git` file naming a git dir.
pub(crate) fn is_top(dir: &Path) -> bool {
    let dotgit = dir.join(".git");
    if dotgit.join("HEAD").is_file() {
        return true;
    }
    dotgit.is_file() && std::fs::read(&dotgit).is_ok_and(|t| gitfile_target(&t).is_some())
}

/// The top of the working tree around `dir` (itself included), as git
/// finds it: the nearest directory holding `.git`, not crossing into
/// another filesystem.
pub(crate) fn toplevel(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    for a in dir.ancestors() {
        if std::fs::metadata(a).map(|m| m.dev()).ok()? != dev {
            return None;
        }
        if is_top(a) {
            return Some(a.to_path_buf());
        }
    }
    None
}

/// A working tree's git dir and common dir (the same but for a linked
/// worktree, whose git dir points at its main repository's with
/// `commondir`).
fn git_dirs(top: &Path) -> Option<(PathBuf, PathBuf)> {
    let dotgit = top.join(".git");
    let meta = std::fs::symlink_metadata(&dotgit).ok()?;
    let git = if meta.is_dir() {
        dotgit
    } else if meta.is_file() {
        top.join(gitfile_target(&std::fs::read(&dotgit).ok()?)?).canonicalize().ok()?
    } else {
        return None;
    };
    let common = match std::fs::read(git.join("commondir")) {
        Ok(t) => git.join(OsStr::from_bytes(t.trim_ascii())).canonicalize().ok()?,
        Err(_) => git.clone(),
    };
    Some((git, common))
}

/// The repository whose working tree's top is `top` (absolute): its
/// tracked paths and excludes. What cannot be read is said, and leaves
/// out more rather than less.
pub(crate) fn load_repo(walk: &Walk<'_>, top: &Path, root: PathBuf, base: PathBuf) -> Repo {
    let mut repo = Repo { root, base, ..Repo::default() };
    let Some((git, common)) = git_dirs(top) else { return repo };
    let config = std::fs::read(common.join("config")).ok().and_then(|c| gitconfig::parse(&c).ok()).unwrap_or_default();
    let hash = if gitconfig::get(&config, "extensions", "objectformat") == Some(b"sha256") { 32 } else { 20 };
    let shown = if repo.root.as_os_str().is_empty() { Path::new(".") } else { repo.root.as_path() };
    match std::fs::read(git.join("index")) {
        Ok(data) => match Tracked::parse(&data, hash) {
            Ok(t) => repo.tracked = t,
            Err(e) => walk.note(format!(
                "{}: the git index was not read ({e}); tracked files that .gitignore matches stay out",
                shown.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => walk.note(format!("{}: the git index was not read ({e})", shown.display())),
    }
    if let Some(m) = std::fs::read(common.join("info/exclude")).ok().and_then(|t| rules::matcher(&t)) {
        repo.excludes.push(m);
    }
    if let Some(path) = gitconfig::get(&config, "core", "excludesfile") {
        let path = Path::new(OsStr::from_bytes(path));
        let path = match (path.strip_prefix("~"), std::env::var_os("HOME")) {
            (Ok(rest), Some(home)) => Some(PathBuf::from(home).join(rest)),
            (Ok(_), None) => None,
            (Err(_), _) => path.is_absolute().then(|| path.to_path_buf()),
        };
        if let Some(m) = path.and_then(|p| std::fs::read(p).ok()).and_then(|t| rules::matcher(&t)) {
            repo.excludes.push(m);
        }
    }
    repo
}

/// The ignore files of the directories from a repository's `top` down to
/// `dir` (exclusive), for a project that is a directory inside a
/// repository.
pub(crate) fn ancestors_stack(top: &Path, dir: &Path) -> Arc<rules::Stack> {
    let mut stack = Arc::new(rules::Stack::default());
    let Ok(below) = dir.strip_prefix(top) else { return stack };
    let mut at = top.to_path_buf();
    let mut rel = PathBuf::new();
    for c in below.components() {
        let read = |f: &str| std::fs::read(at.join(f)).ok().and_then(|t| rules::matcher(&t));
        stack = rules::Stack::push(&stack, rel.clone(), read(".ignore"), read(".gitignore"));
        at.push(c);
        rel.push(c);
    }
    stack
}

/// `to` relative to `from`, both absolute and free of `..`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component<'_>> = from.components().collect();
    let t: Vec<Component<'_>> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

fn write_file(walk: &Walk<'_>, dst: &OwnedFd, name: &str, data: &[u8], path: &Path) -> Result<(), WorkspaceError> {
    let io = |what| {
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| WorkspaceError::Io { path, what, source: e.into() }
    };
    let fd = rustix::fs::openat(
        dst,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(io("creating the copy of"))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644)).map_err(io("setting the mode of"))?;
    if let Some(id) = walk.owner {
        rustix::fs::fchown(&fd, Some(rustix::fs::Uid::from_raw(id)), Some(rustix::fs::Gid::from_raw(id)))
            .map_err(io("giving the copy to the agent"))?;
    }
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, data).map_err(|source| WorkspaceError::Io {
        path: path.to_path_buf(),
        what: "writing the copy of",
        source,
    })
}

/// A `.git` file in the directory `rel`, reading `text`. A git dir inside
/// the project stays where it is and the copy's `.git` file points at its
/// copy. A git dir outside the project (a linked worktree's, or a
/// submodule's when the project is the submodule) is copied in as the
/// copy's own `.git`, but only when it points back at this directory and
/// belongs to the project's owner: a `.git` file alone never brings an
/// unrelated repository of the host's into the bottle. Returns the walks
/// that copy it.
pub(crate) fn gitfile(
    walk: &Walk<'_>,
    text: &[u8],
    rel: &Path,
    dst: &Arc<OwnedFd>,
) -> Result<Vec<DirTask>, WorkspaceError> {
    let here = walk.project.join(rel);
    let path = rel.join(".git");
    let Some(target) = gitfile_target(text) else {
        // Not a gitdir file: an ordinary file named `.git`.
        write_file(walk, dst, ".git", text, &path)?;
        return Ok(Vec::new());
    };
    let Ok(git) = here.join(&target).canonicalize() else {
        walk.note(format!("{}: points at a git dir that does not exist; copied as it is", path.display()));
        write_file(walk, dst, ".git", text, &path)?;
        return Ok(Vec::new());
    };
    if let Ok(inside) = git.strip_prefix(walk.project) {
        let to = relative(&walk.project.join(rel), &walk.project.join(inside));
        let mut line = b"gitdir: ".to_vec();
        line.extend_from_slice(to.as_os_str().as_bytes());
        line.push(b'\n');
        write_file(walk, dst, ".git", &line, &path)?;
        return Ok(Vec::new());
    }
    let refuse = |why: &str| WorkspaceError::GitDir { path: path.clone(), git: git.clone(), why: why.to_owned() };
    let common = match std::fs::read(git.join("commondir")) {
        Ok(t) => git
            .join(OsStr::from_bytes(t.trim_ascii()))
            .canonicalize()
            .map_err(|_| refuse("its commondir is missing"))?,
        Err(_) => git.clone(),
    };
    if !git.join("HEAD").is_file() || !common.join("objects").is_dir() {
        return Err(refuse("it is not a git dir"));
    }
    if !points_back(&git, &here) {
        return Err(refuse("it does not point back at this directory (not a worktree or submodule of it)"));
    }
    let me = nix::unistd::geteuid().as_raw();
    for d in [&git, &common] {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata(d).map(|m| m.uid()).map_err(|_| refuse("it cannot be read"))?;
        if uid != walk.project_uid && uid != me {
            return Err(refuse("it belongs to another user"));
        }
    }
    walk.note(format!(
        "{}: the git dir is outside the project ({}); its objects and refs were copied in as the copy's own `.git`",
        path.display(),
        git.display()
    ));
    let io = |what| {
        let path = path.clone();
        move |e: rustix::io::Errno| WorkspaceError::Io { path, what, source: e.into() }
    };
    rustix::fs::mkdirat(&**dst, ".git", Mode::from_raw_mode(0o755)).map_err(io("creating"))?;
    let open_dst = || -> Result<OwnedFd, WorkspaceError> {
        let fd = rustix::fs::openat(
            &**dst,
            ".git",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io("opening"))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(io("setting the mode of"))?;
        if let Some(id) = walk.owner {
            rustix::fs::fchown(&fd, Some(rustix::fs::Uid::from_raw(id)), Some(rustix::fs::Gid::from_raw(id)))
                .map_err(io("giving the copy to the agent"))?;
        }
        Ok(fd)
    };
    let open_src = |d: &Path| {
        rustix::fs::openat(rustix::fs::CWD, d, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| WorkspaceError::Io { path: d.to_path_buf(), what: "opening", source: e.into() })
    };
    let task = |src: &Path, part: Part| -> Result<DirTask, WorkspaceError> {
        Ok(DirTask {
            src: Source::Open(open_src(src)?),
            dst: Dest::Open(open_dst()?),
            rel: path.clone(),
            how: How::Git(GitHow::new(Layout::Inlined, part)),
        })
    };
    if common == git {
        return Ok(vec![task(&git, Part::Whole)?]);
    }
    // A linked worktree: the shared dir, minus what the worktree's own dir
    // provides, then the worktree's dir over it.
    let theirs: std::collections::HashSet<PathBuf> = files_below(&git);
    Ok(vec![task(&common, Part::Common(Arc::new(theirs)))?, task(&git, Part::Worktree)?])
}

/// Whether the git dir `git` names `here` as its working tree: a linked
/// worktree's `gitdir` file names the `.git` file pointing to it; a
/// submodule's (or a separate git dir's) `core.worktree` names the tree.
fn points_back(git: &Path, here: &Path) -> bool {
    let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
    if let Ok(back) = std::fs::read(git.join("gitdir"))
        && same(Path::new(OsStr::from_bytes(back.trim_ascii())), &here.join(".git"))
    {
        return true;
    }
    let config = std::fs::read(git.join("config")).ok().and_then(|c| gitconfig::parse(&c).ok()).unwrap_or_default();
    gitconfig::get(&config, "core", "worktree").is_some_and(|wt| same(&git.join(OsStr::from_bytes(wt)), here))
}

/// Every path below `dir` (relative to it); a worktree's own git dir is small.
fn files_below(dir: &Path) -> std::collections::HashSet<PathBuf> {
    let mut out = std::collections::HashSet::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(dir.join(&rel)) else { continue };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(r);
            } else {
                out.insert(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitfile_lines() {
        assert_eq!(gitfile_target(b"gitdir: ../.git/modules/a\n"), Some(PathBuf::from("../.git/modules/a")));
        assert_eq!(gitfile_target(b"gitdir:/abs/wt\r\n"), Some(PathBuf::from("/abs/wt")));
        assert_eq!(gitfile_target(b"gitdir: \n"), None);
        assert_eq!(gitfile_target(b"ref: refs/heads/main\n"), None);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("/p/a/b"), Path::new("/p/.git/modules/x")),
            PathBuf::from("../../.git/modules/x")
        );
        assert_eq!(relative(Path::new("/p"), Path::new("/p/.git")), PathBuf::from(".git"));
    }
}
