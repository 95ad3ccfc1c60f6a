//! The workspace a bottle works on: a copy of the project (default), the
//! project itself (`mount`), or nothing; and what the project is.
//!
//! A copy carries what git would: tracked files, untracked files that are
//! not ignored, and the repository (`.git`) with its credentials taken out
//! of its config, URLs and stores. Ignored files stay out unless the
//! manifest's `workspace.include-ignored` names them. Nothing is read
//! through a symlink; symlinks are copied as symlinks. The copy is built
//! beside its destination and renamed into place, so a failed copy leaves
//! nothing behind.

mod gitconfig;
mod gitdir;
mod index;
mod project;
mod rules;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bot_bottle_manifest::WorkspaceMode;
use rustix::fs::{Mode, OFlags};

use crate::BackendError;
use walk::{Dest, DirTask, How, Source, Walk};

pub use project::{Guarded, Project, ProjectError, ProjectQuery, ProjectSource, check_project, find_project, guarded};

/// Why a copy failed. The partial copy is gone when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{what} {}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{} changed while it was copied; start again", .path.display())]
    Changed { path: PathBuf },
    /// The walk met a directory no copy may hold (its own destination, or
    /// bot-bottle's state or config directory, reached through a mount).
    #[error("{} is {what}; the copy would hold it (and copy itself): start from another directory", .path.display())]
    Recursion { path: PathBuf, what: String },
    #[error("{} cannot be read as git config (line {line}: {what}); fix it, or the bottle's git would fail on it too", .path.display())]
    GitConfig { path: PathBuf, line: usize, what: &'static str },
    #[error("{} points at {}, which is not copied: {why}; start from the repository itself", .path.display(), .git.display())]
    GitDir { path: PathBuf, git: PathBuf, why: String },
    #[error("{} exists already", .0.display())]
    Exists(PathBuf),
    #[error("{} is over {max} bytes, too large to take credentials out of; shrink it (`git reflog expire`, `git gc`)", .path.display())]
    TooLarge { path: PathBuf, max: u64 },
}

/// How far a copy has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub files: u64,
    pub bytes: u64,
    /// The last call: the copy is over.
    pub done: bool,
}

/// How to copy.
#[derive(Clone, Copy)]
pub struct CopyOptions<'a> {
    /// The host uid (and gid) that owns the copy, when set.
    pub owner: Option<u32>,
    /// `workspace.include-ignored` from the plan.
    pub include_ignored: &'a [String],
    /// Directories the copy must never hold (bot-bottle's state and
    /// config); meeting one fails the copy.
    pub guarded: &'a [PathBuf],
    /// Called a few times a second once the copy has taken
    /// `progress_after`, and once more at the end if it was called at all.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    pub progress_after: Duration,
}

impl Default for CopyOptions<'_> {
    fn default() -> Self {
        CopyOptions {
            owner: None,
            include_ignored: &[],
            guarded: &[],
            progress: None,
            progress_after: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for CopyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOptions")
            .field("owner", &self.owner)
            .field("include_ignored", &self.include_ignored)
            .field("guarded", &self.guarded)
            .field("progress_after", &self.progress_after)
            .finish_non_exhaustive()
    }
}

/// What a copy did, for `start` to say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub files: u64,
    pub bytes: u64,
    /// Files cloned (sharing extents) rather than copied.
    pub reflinked: u64,
    pub elapsed: Duration,
    /// What was taken out of the repository's files, by name, never by
    /// value: `(file relative to the project, what)`.
    pub removed: Vec<(PathBuf, String)>,
    /// Ignored paths left out (the first hundred, where the walk stopped
    /// descending), and how many there were.
    pub left_out: Vec<PathBuf>,
    pub left_out_count: u64,
    /// Anything else worth saying (a git dir from outside the project, an
    /// index that could not be read).
    pub notes: Vec<String>,
}

/// The host directory to give the bottle as its workspace, made ready.
/// For `copy` it is `state/workspace`: the copy `start` made before the
/// launch (see [`copy_project`]), or, resuming, the one kept; when there is
/// none, the project is copied now, owned by `owner` when given. The
/// user's checkout is never touched in `copy` mode.
pub fn prepare_workspace(
    mode: WorkspaceMode,
    project: &Path,
    state: &Path,
    _resume: bool,
    owner: Option<u32>,
) -> Result<Option<PathBuf>, BackendError> {
    Ok(match mode {
        WorkspaceMode::None => None,
        WorkspaceMode::Mount => Some(project.to_path_buf()),
        WorkspaceMode::Copy => {
            let dst = state.join("workspace");
            if std::fs::symlink_metadata(&dst).is_err() {
                copy_project(project, &dst, &CopyOptions { owner, ..CopyOptions::default() })?;
            }
            Some(dst)
        }
    })
}

/// The host uid that owns a workspace copy on backend `backend`: the
/// agent's host id for a native bottle launched as root (see
/// `native::NativeBottle`) or the agent's uid in a docker bottle launched
/// as root, the launcher's own otherwise.
pub fn copy_owner(backend: &str) -> Option<u32> {
    let root = nix::unistd::geteuid().is_root();
    match backend {
        #[cfg(target_os = "linux")]
        "native" if root => Some(crate::native::HOST_ID_BASE + crate::AGENT_ID),
        // A container shares the host's uids: the agent's own.
        "docker" if root => Some(crate::docker::agent_ids().0),
        _ => None,
    }
}

/// Where a copy being made for `dst` is built: beside it, so that the
/// rename into place is atomic; `cleanup` removes one a killed launcher left.
pub fn partial_path(dst: &Path) -> PathBuf {
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dst.with_file_name(format!(".{name}.partial"))
}

/// Copies `project` (absolute) to `dst`, which must not exist: what git
/// would carry, credentials out of the repository, ignored files out unless
/// included. Built at [`partial_path`] and renamed into place; on any
/// error nothing is left at either path.
pub fn copy_project(project: &Path, dst: &Path, opts: &CopyOptions<'_>) -> Result<CopyReport, WorkspaceError> {
    let started = Instant::now();
    if std::fs::symlink_metadata(dst).is_ok() {
        return Err(WorkspaceError::Exists(dst.to_path_buf()));
    }
    let partial = partial_path(dst);
    remove(&partial).map_err(io(&partial, "removing an unfinished copy at"))?;
    let result = copy_into(project, &partial, opts, started);
    let result = result.and_then(|report| {
        std::fs::rename(&partial, dst).map_err(io(dst, "moving the copy into place at"))?;
        Ok(report)
    });
    if result.is_err() {
        // The error is what matters; a copy that cannot be removed either
        // is found again by `cleanup`.
        if let Err(e) = remove(&partial) {
            tracing::warn!(path = %partial.display(), error = %e, "removing a failed copy");
        }
    }
    result
}

fn remove(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> WorkspaceError {
    let path = path.to_path_buf();
    move |source| WorkspaceError::Io { path, what, source }
}

fn copy_into(
    project: &Path,
    partial: &Path,
    opts: &CopyOptions<'_>,
    started: Instant,
) -> Result<CopyReport, WorkspaceError> {
    use std::os::unix::fs::MetadataExt;
    let project = project.canonicalize().map_err(io(project, "reading"))?;
    let meta = std::fs::metadata(&project).map_err(io(&project, "reading"))?;
    std::fs::create_dir(partial).map_err(io(partial, "creating"))?;
    let errno = |what: &'static str| {
        move |e: rustix::io::Errno| WorkspaceError::Io { path: partial.to_path_buf(), what, source: e.into() }
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dst = rustix::fs::openat(rustix::fs::CWD, partial, flags, Mode::empty()).map_err(errno("opening"))?;
    rustix::fs::fchmod(&dst, Mode::from_raw_mode((meta.mode() & 0o777) | 0o700))
        .map_err(errno("setting the mode of"))?;
    if let Some(id) = opts.owner {
        rustix::fs::fchown(&dst, Some(rustix::fs::Uid::from_raw(id)), Some(rustix::fs::Gid::from_raw(id)))
            .map_err(errno("giving the copy to the agent"))?;
    }
    let src = rustix::fs::openat(
        rustix::fs::CWD,
        &project,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| WorkspaceError::Io { path: project.clone(), what: "opening", source: e.into() })?;

    let mut walk = Walk::new(&project, rules::Include::new(opts.include_ignored), opts.owner, meta.uid());
    let (global, _) = ignore::gitignore::Gitignore::global();
    walk.global = (!global.is_empty()).then_some(global);
    let dst_meta = std::fs::metadata(partial).map_err(io(partial, "reading"))?;
    walk.guards.push((dst_meta.dev(), dst_meta.ino(), "the workspace copy being made".into()));
    for g in opts.guarded {
        if let Ok(m) = std::fs::metadata(g) {
            walk.guards.push((m.dev(), m.ino(), format!("{}, which no bottle may see", g.display())));
        }
    }
    // The repository the project is in: its own, or one around it when the
    // project is a directory inside a working tree.
    let how = match gitdir::toplevel(&project) {
        Some(top) => {
            let base = project.strip_prefix(&top).map(Path::to_path_buf).unwrap_or_default();
            let stack = gitdir::ancestors_stack(&top, &project);
            let repo = gitdir::load_repo(&walk, &top, PathBuf::new(), base);
            How::Normal { repo: Arc::new(repo), stack }
        }
        None => How::Normal { repo: Arc::default(), stack: Arc::default() },
    };
    let root = DirTask { src: Source::Open(src), dst: Dest::Open(dst), rel: PathBuf::new(), how };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8) * 2;
    // The reporter sleeps on `done` so that the end of the copy wakes it at once.
    let done = (std::sync::Mutex::new(false), std::sync::Condvar::new());
    let report = std::thread::scope(|s| {
        let ticker = opts.progress.map(|f| {
            let (walk, done) = (&walk, &done);
            s.spawn(move || {
                let now = || Progress {
                    files: walk.files.load(Ordering::Relaxed),
                    bytes: walk.bytes.load(Ordering::Relaxed),
                    done: false,
                };
                let mut shown = false;
                let mut over = done.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while !*over {
                    let wait = match opts.progress_after.checked_sub(started.elapsed()) {
                        Some(left) if !left.is_zero() => left,
                        _ => {
                            shown = true;
                            f(now());
                            Duration::from_millis(200)
                        }
                    };
                    over = done.1.wait_timeout(over, wait).unwrap_or_else(std::sync::PoisonError::into_inner).0;
                }
                if shown {
                    f(Progress { done: true, ..now() });
                }
            })
        });
        let report = walk.run(root, threads);
        *done.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        done.1.notify_all();
        if let Some(t) = ticker
            && t.join().is_err()
        {
            tracing::warn!("the progress reporter panicked");
        }
        report
    })?;
    Ok(CopyReport {
        files: walk.files.load(Ordering::Relaxed),
        bytes: walk.bytes.load(Ordering::Relaxed),
        reflinked: walk.reflinked.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        ..report
    })
}

/// Where the agent starts: `subdir` of the workspace `root` (a copy, or
/// the project itself), or its deepest part that is a real directory there
/// (an ignored directory is not in a copy). Never follows a symlink.
pub fn workdir_in(root: &Path, subdir: &Path) -> PathBuf {
    let mut at = PathBuf::new();
    for c in subdir.components() {
        let next = at.join(c);
        match std::fs::symlink_metadata(root.join(&next)) {
            Ok(m) if m.is_dir() && matches!(c, std::path::Component::Normal(_)) => at = next,
            _ => break,
        }
    }
    at
}

#[cfg(test)]
mod tests;
