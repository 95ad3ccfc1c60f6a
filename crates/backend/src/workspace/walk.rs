//! The copy itself: a parallel walk over directory descriptors.
//!
//! Every directory is opened relative to its parent's descriptor with
//! `O_NOFOLLOW`, and every file relative to its directory's, so nothing the
//! walk opens is ever reached through a symlink, even one swapped in while
//! the copy runs. Symlinks are copied as symlinks. Files are cloned
//! (`FICLONE`) where the filesystem shares extents, and copied in the kernel
//! (`copy_file_range`) otherwise, on several threads.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use ignore::gitignore::Gitignore;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::gitconfig::{self, Layout};
use super::gitdir;
use super::rules::{self, Include, Repo, Stack, Verdict};
use super::{CopyReport, WorkspaceError};

/// How many entries of what was left out the report names.
const LEFT_OUT_NAMED: usize = 100;
/// The largest git file the copy rewrites (a config, a reflog).
const TRANSFORM_MAX: u64 = 1 << 30;
/// Files are handed to workers in batches of this many.
const BATCH: usize = 32;

/// What the walk does in a directory.
#[derive(Clone, Debug)]
pub(crate) enum How {
    /// Ignore rules apply; tracked and included files come in anyway.
    Normal { repo: Arc<Repo>, stack: Arc<Stack> },
    /// Inside an ignored directory: only what is tracked or included.
    Search { repo: Arc<Repo> },
    /// Inside a directory `include-ignored` names: everything.
    All,
    /// Inside a git dir.
    Git(GitHow),
}

#[derive(Clone, Debug)]
pub(crate) struct GitHow {
    /// The path below the nearest git dir (a directory holding `HEAD`).
    sub: PathBuf,
    /// The path below the git dir this copy started from.
    top: PathBuf,
    /// Credentials are stripped from URLs in every file below (`logs/`).
    strip: bool,
    layout: Layout,
    part: Part,
}

impl GitHow {
    pub(crate) fn new(layout: Layout, part: Part) -> GitHow {
        GitHow { sub: PathBuf::new(), top: PathBuf::new(), strip: false, layout, part }
    }
}

/// Which part of a linked worktree's git dir is copied: the shared
/// ("common") dir, minus what each worktree keeps for itself, and the
/// worktree's own dir over it.
#[derive(Clone, Debug)]
pub(crate) enum Part {
    Whole,
    Common(Arc<HashSet<PathBuf>>),
    Worktree,
}

/// What a worktree keeps for itself in its own git dir, at the top.
const PER_WORKTREE: &[&str] = &[
    "HEAD",
    "index",
    "ORIG_HEAD",
    "FETCH_HEAD",
    "MERGE_HEAD",
    "MERGE_MSG",
    "MERGE_MODE",
    "MERGE_AUTOSTASH",
    "AUTO_MERGE",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "REBASE_HEAD",
    "BISECT_LOG",
    "BISECT_START",
    "BISECT_EXPECTED_REV",
    "BISECT_TERMS",
    "BISECT_NAMES",
    "BISECT_ANCESTORS_OK",
    "rebase-merge",
    "rebase-apply",
    "sequencer",
    "logs/HEAD",
    "refs/bisect",
    "refs/worktree",
    "refs/rewritten",
    "info/sparse-checkout",
];

pub(crate) enum Source {
    /// `name` in the directory `parent`.
    At(Arc<OwnedFd>, OsString),
    Open(OwnedFd),
}

pub(crate) enum Dest {
    /// Create `name` in `parent`. `merge`: it may exist already (two parts
    /// of a git dir copied into one).
    Create {
        parent: Arc<OwnedFd>,
        name: OsString,
        merge: bool,
    },
    Open(OwnedFd),
}

pub(crate) struct DirTask {
    pub(crate) src: Source,
    pub(crate) dst: Dest,
    /// The directory relative to the project (inside a git dir copied from
    /// outside the project: relative to where it lands).
    pub(crate) rel: PathBuf,
    pub(crate) how: How,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transform {
    None,
    Config(Layout),
    StripUrls,
}

struct FileItem {
    name: OsString,
    kind: FileType,
    transform: Transform,
}

struct FilesTask {
    src: Arc<OwnedFd>,
    dst: Arc<OwnedFd>,
    rel: PathBuf,
    items: Vec<FileItem>,
}

enum Task {
    Dir(DirTask),
    Files(FilesTask),
}

#[derive(Default)]
struct Queue {
    tasks: Vec<Task>,
    active: usize,
}

/// The walk's shared state.
pub(crate) struct Walk<'a> {
    pub(crate) project: &'a Path,
    pub(crate) include: Include,
    pub(crate) global: Option<Gitignore>,
    pub(crate) owner: Option<u32>,
    /// `(dev, ino, what)` of directories the walk must never enter.
    pub(crate) guards: Vec<(u64, u64, String)>,
    /// The owner of the project's top directory: a git dir borrowed from
    /// outside the project must belong to the same user.
    pub(crate) project_uid: u32,
    pub(crate) files: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) reflinked: AtomicU64,
    reflink: AtomicBool,
    queue: Mutex<Queue>,
    ready: Condvar,
    abort: AtomicBool,
    failed: Mutex<Option<WorkspaceError>>,
    report: Mutex<CopyReport>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno(path: &Path, what: &'static str) -> impl FnOnce(Errno) -> WorkspaceError {
    let path = path.to_path_buf();
    move |e| WorkspaceError::Io { path, what, source: e.into() }
}

fn ioerr(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> WorkspaceError {
    let path = path.to_path_buf();
    move |source| WorkspaceError::Io { path, what, source }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl<'a> Walk<'a> {
    pub(crate) fn new(project: &'a Path, include: Include, owner: Option<u32>, project_uid: u32) -> Walk<'a> {
        Walk {
            project,
            include,
            global: None,
            owner,
            guards: Vec::new(),
            project_uid,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            reflinked: AtomicU64::new(0),
            reflink: AtomicBool::new(true),
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            abort: AtomicBool::new(false),
            failed: Mutex::new(None),
            report: Mutex::new(CopyReport::default()),
        }
    }

    /// Runs the walk from `root` on `threads` threads; returns what it
    /// found to report, or the first error.
    pub(crate) fn run(&self, root: DirTask, threads: usize) -> Result<CopyReport, WorkspaceError> {
        self.push(Task::Dir(root));
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| self.worker());
            }
        });
        if let Some(e) = lock(&self.failed).take() {
            return Err(e);
        }
        Ok(std::mem::take(&mut *lock(&self.report)))
    }

    fn push(&self, t: Task) {
        lock(&self.queue).tasks.push(t);
        self.ready.notify_one();
    }

    fn worker(&self) {
        loop {
            let task = {
                let mut q = lock(&self.queue);
                loop {
                    if self.abort.load(Ordering::SeqCst) {
                        return;
                    }
                    // Last in, first out: the walk goes deep before wide, so
                    // the directories held open stay few.
                    if let Some(t) = q.tasks.pop() {
                        q.active += 1;
                        break t;
                    }
                    if q.active == 0 {
                        self.ready.notify_all();
                        return;
                    }
                    q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let r = match task {
                Task::Dir(d) => self.dir(d),
                Task::Files(f) => self.files(f),
            };
            if let Err(e) = r {
                let mut failed = lock(&self.failed);
                if failed.is_none() {
                    *failed = Some(e);
                }
                self.abort.store(true, Ordering::SeqCst);
            }
            let mut q = lock(&self.queue);
            q.active -= 1;
            if q.active == 0 || self.abort.load(Ordering::SeqCst) {
                self.ready.notify_all();
            }
        }
    }

    fn left_out(&self, rel: &Path) {
        let mut r = lock(&self.report);
        r.left_out_count += 1;
        if r.left_out.len() < LEFT_OUT_NAMED {
            r.left_out.push(rel.to_path_buf());
        }
    }

    fn removed(&self, file: &Path, what: String) {
        lock(&self.report).removed.push((file.to_path_buf(), what));
    }

    pub(crate) fn note(&self, what: String) {
        let mut r = lock(&self.report);
        if !r.notes.contains(&what) {
            r.notes.push(what);
        }
    }

    fn chown(&self, fd: &OwnedFd, path: &Path) -> Result<(), WorkspaceError> {
        if let Some(id) = self.owner {
            rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(id)), Some(rustix::fs::Gid::from_raw(id)))
                .map_err(errno(path, "giving the copy to the agent"))?;
        }
        Ok(())
    }

    fn dir(&self, t: DirTask) -> Result<(), WorkspaceError> {
        let rel = t.rel;
        let src = match t.src {
            Source::Open(fd) => fd,
            Source::At(parent, name) => rustix::fs::openat(&*parent, name.as_os_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| match e {
                    Errno::LOOP | Errno::NOTDIR => WorkspaceError::Changed { path: rel.clone() },
                    e => errno(&rel, "opening")(e),
                })?,
        };
        let st = rustix::fs::fstat(&src).map_err(errno(&rel, "reading"))?;
        if let Some((_, _, what)) = self.guards.iter().find(|(dev, ino, _)| *dev == st.st_dev && *ino == st.st_ino) {
            return Err(WorkspaceError::Recursion { path: rel, what: what.clone() });
        }
        let dst = match t.dst {
            Dest::Open(fd) => fd,
            Dest::Create { parent, name, merge } => {
                match rustix::fs::mkdirat(&*parent, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) if merge => {}
                    Err(e) => return Err(errno(&rel, "creating the copy of")(e)),
                }
                let fd = rustix::fs::openat(&*parent, name.as_os_str(), DIR_FLAGS, Mode::empty())
                    .map_err(errno(&rel, "opening the copy of"))?;
                // The owner keeps write access so the copy can fill it.
                let mode = (st.st_mode & 0o777) | 0o700;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(errno(&rel, "setting the mode of"))?;
                self.chown(&fd, &rel)?;
                fd
            }
        };
        let entries = read_dir(&src, &rel)?;
        let src = Arc::new(src);
        let dst = Arc::new(dst);
        let mut files: Vec<FileItem> = Vec::new();
        let flush = |files: &mut Vec<FileItem>| {
            if !files.is_empty() {
                let items = std::mem::take(files);
                self.push(Task::Files(FilesTask { src: src.clone(), dst: dst.clone(), rel: rel.clone(), items }));
            }
        };
        let subdir = |name: &OsStr, how: How, merge: bool| {
            Task::Dir(DirTask {
                src: Source::At(src.clone(), name.to_owned()),
                dst: Dest::Create { parent: dst.clone(), name: name.to_owned(), merge },
                rel: rel.join(name),
                how,
            })
        };
        match t.how {
            How::Git(g) => {
                let is_root = entries.iter().any(|(n, _)| n == "HEAD");
                let merge = !matches!(g.part, Part::Whole);
                for (name, kind) in &entries {
                    let kind = *kind;
                    match self.classify_git(&g, is_root, name, kind, &rel) {
                        GitEntry::Skip => {}
                        GitEntry::Dir(h) => self.push(subdir(name, How::Git(h), merge)),
                        GitEntry::File(transform) => {
                            files.push(FileItem { name: name.clone(), kind, transform });
                        }
                    }
                    if files.len() >= BATCH {
                        flush(&mut files);
                    }
                }
            }
            How::All => {
                for (name, kind) in &entries {
                    let kind = *kind;
                    let child = rel.join(name);
                    if name == ".git" {
                        self.git_entry(&src, &dst, &rel, kind, &mut files)?;
                    } else if self.include.verdict(&child, kind == FileType::Directory) == Verdict::Out {
                        self.left_out(&child);
                    } else if kind == FileType::Directory {
                        self.push(subdir(name, How::All, false));
                    } else {
                        files.push(FileItem { name: name.clone(), kind, transform: Transform::None });
                    }
                    if files.len() >= BATCH {
                        flush(&mut files);
                    }
                }
            }
            How::Search { repo } => {
                for (name, kind) in &entries {
                    if name == ".git" {
                        continue;
                    }
                    let kind = *kind;
                    let child = rel.join(name);
                    let rpath = repo.path(&child);
                    let tracked = repo.tracked.is_tracked(rpath.as_os_str().as_bytes());
                    let inc = self.include.verdict(&child, kind == FileType::Directory);
                    if kind == FileType::Directory {
                        if inc == Verdict::In {
                            self.push(subdir(name, How::All, false));
                        } else if tracked {
                            // A submodule: its own repository decides inside.
                            let how = How::Normal { repo: repo.clone(), stack: Arc::new(Stack::default()) };
                            self.push(subdir(name, how, false));
                        } else if repo.tracked.holds(rpath.as_os_str().as_bytes()) || self.include.reaches(&child) {
                            self.push(subdir(name, How::Search { repo: repo.clone() }, false));
                        }
                    } else if tracked || inc == Verdict::In {
                        files.push(FileItem { name: name.clone(), kind, transform: Transform::None });
                    }
                    if files.len() >= BATCH {
                        flush(&mut files);
                    }
                }
            }
            How::Normal { repo, stack } => {
                let has_git = entries.iter().any(|(n, _)| n == ".git");
                // A repository inside the project has its own rules: the
                // outer repository's ignore files stop at its top.
                let (repo, stack) = if has_git && rel != repo.root && !rel.as_os_str().is_empty() {
                    let abs = self.project.join(&rel);
                    (Arc::new(gitdir::load_repo(self, &abs, rel.clone(), PathBuf::new())), Arc::new(Stack::default()))
                } else {
                    (repo, stack)
                };
                let own = |file: &str| -> Result<Option<Gitignore>, WorkspaceError> {
                    let regular = entries.iter().any(|(n, kind)| n == file && *kind == FileType::RegularFile);
                    if !regular {
                        return Ok(None);
                    }
                    let text = read_at(&src, OsStr::new(file), &rel.join(file), 1 << 20)?;
                    Ok(rules::matcher(&text))
                };
                let stack = Stack::push(&stack, repo.path(&rel), own(".ignore")?, own(".gitignore")?);
                for (name, kind) in &entries {
                    let kind = *kind;
                    let is_dir = kind == FileType::Directory;
                    let child = rel.join(name);
                    if name == ".git" {
                        self.git_entry(&src, &dst, &rel, kind, &mut files)?;
                        continue;
                    }
                    let rpath = repo.path(&child);
                    if !rules::ignored(&stack, &repo, self.global.as_ref(), &rpath, is_dir) {
                        if is_dir {
                            self.push(subdir(name, How::Normal { repo: repo.clone(), stack: stack.clone() }, false));
                        } else {
                            files.push(FileItem { name: name.clone(), kind, transform: Transform::None });
                        }
                    } else {
                        let tracked = repo.tracked.is_tracked(rpath.as_os_str().as_bytes());
                        let inc = self.include.verdict(&child, is_dir);
                        if is_dir {
                            if inc == Verdict::In {
                                self.push(subdir(name, How::All, false));
                            } else if tracked {
                                let how = How::Normal { repo: repo.clone(), stack: Arc::new(Stack::default()) };
                                self.push(subdir(name, how, false));
                            } else if repo.tracked.holds(rpath.as_os_str().as_bytes()) || self.include.reaches(&child) {
                                self.push(subdir(name, How::Search { repo: repo.clone() }, false));
                            } else {
                                self.left_out(&child);
                            }
                        } else if tracked || inc == Verdict::In {
                            files.push(FileItem { name: name.clone(), kind, transform: Transform::None });
                        } else {
                            self.left_out(&child);
                        }
                    }
                    if files.len() >= BATCH {
                        flush(&mut files);
                    }
                }
            }
        }
        flush(&mut files);
        Ok(())
    }

    /// A `.git` in the directory `rel`: a git dir is copied as one; a
    /// `gitdir:` file is kept pointing inside the copy, or its git dir from
    /// outside the project becomes the copy's own; a symlink stays one.
    fn git_entry(
        &self,
        src: &Arc<OwnedFd>,
        dst: &Arc<OwnedFd>,
        rel: &Path,
        kind: FileType,
        files: &mut Vec<FileItem>,
    ) -> Result<(), WorkspaceError> {
        match kind {
            FileType::Directory => {
                self.push(Task::Dir(DirTask {
                    src: Source::At(src.clone(), ".git".into()),
                    dst: Dest::Create { parent: dst.clone(), name: ".git".into(), merge: false },
                    rel: rel.join(".git"),
                    how: How::Git(GitHow::new(Layout::InPlace, Part::Whole)),
                }));
            }
            FileType::RegularFile => {
                let text = read_at(src, OsStr::new(".git"), &rel.join(".git"), 64 << 10)?;
                for t in gitdir::gitfile(self, &text, rel, dst)? {
                    self.push(Task::Dir(t));
                }
            }
            FileType::Symlink => {
                files.push(FileItem { name: ".git".into(), kind, transform: Transform::None });
            }
            _ => {}
        }
        Ok(())
    }

    fn classify_git(&self, g: &GitHow, is_root: bool, name: &OsStr, kind: FileType, rel: &Path) -> GitEntry {
        let n = name.to_string_lossy();
        let top = g.top.join(name);
        // Lock files belong to a git process on the host; a copy of one
        // would block git in the bottle. Refs never end in `.lock`.
        if n.ends_with(".lock") {
            return GitEntry::Skip;
        }
        match &g.part {
            Part::Common(theirs) if theirs.contains(&top) => return GitEntry::Skip,
            Part::Common(_) if PER_WORKTREE.iter().any(|p| Path::new(p) == top) => return GitEntry::Skip,
            Part::Worktree if g.top.as_os_str().is_empty() && ["commondir", "gitdir", "locked"].contains(&&*n) => {
                return GitEntry::Skip;
            }
            _ => {}
        }
        let dir = kind == FileType::Directory;
        let child = |strip: bool| {
            let sub = if is_root { PathBuf::from(name) } else { g.sub.join(name) };
            GitHow { sub, top: top.clone(), strip, layout: g.layout, part: g.part.clone() }
        };
        if is_root {
            match (&*n, dir) {
                // Linked worktrees of the host's: their paths are the host's.
                ("worktrees", true) => return GitEntry::Skip,
                ("config" | "config.worktree", false) => {
                    // Only the copied git dir's own config forgets the host's
                    // layout; a submodule's inside it keeps its relative one.
                    let layout = if g.top.as_os_str().is_empty() { g.layout } else { Layout::InPlace };
                    return GitEntry::File(Transform::Config(layout));
                }
                ("FETCH_HEAD", false) => return GitEntry::File(Transform::StripUrls),
                ("logs" | "remotes" | "branches", true) => return GitEntry::Dir(child(true)),
                ("credentials" | ".git-credentials", _) => {
                    self.removed(&rel.join(name), "a credential store".into());
                    return GitEntry::Skip;
                }
                _ => {}
            }
        }
        if g.sub == Path::new("objects/info") && n == "alternates" {
            self.note(format!(
                "{} borrows objects from another repository on the host (objects/info/alternates), which the bottle cannot read: run `git repack -a -d` and remove that file to make the repository whole",
                rel.display()
            ));
            return GitEntry::Skip;
        }
        if n == "creds" && g.sub.file_name().is_some_and(|f| f == "annex") {
            self.removed(&rel.join(name), "git-annex's stored credentials".into());
            return GitEntry::Skip;
        }
        if dir {
            GitEntry::Dir(child(g.strip))
        } else if g.strip && kind == FileType::RegularFile {
            GitEntry::File(Transform::StripUrls)
        } else {
            GitEntry::File(Transform::None)
        }
    }

    fn files(&self, t: FilesTask) -> Result<(), WorkspaceError> {
        for item in t.items {
            if self.abort.load(Ordering::SeqCst) {
                return Ok(());
            }
            let path = t.rel.join(&item.name);
            match item.kind {
                FileType::RegularFile => self.file(&t.src, &t.dst, &item, &path)?,
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&*t.src, item.name.as_os_str(), Vec::new())
                        .map_err(errno(&path, "reading the symlink"))?;
                    rustix::fs::symlinkat(target.as_c_str(), &*t.dst, item.name.as_os_str())
                        .map_err(errno(&path, "copying the symlink"))?;
                    if let Some(id) = self.owner {
                        let (u, g) = (rustix::fs::Uid::from_raw(id), rustix::fs::Gid::from_raw(id));
                        rustix::fs::chownat(
                            &*t.dst,
                            item.name.as_os_str(),
                            Some(u),
                            Some(g),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(errno(&path, "giving the copy to the agent"))?;
                    }
                    self.files.fetch_add(1, Ordering::Relaxed);
                }
                // Sockets, fifos and devices are not part of a project.
                _ => {}
            }
        }
        Ok(())
    }

    fn file(&self, src: &OwnedFd, dst: &OwnedFd, item: &FileItem, path: &Path) -> Result<(), WorkspaceError> {
        // O_NONBLOCK: a fifo swapped in for the file never blocks the copy;
        // it is refused below.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let from = rustix::fs::openat(src, item.name.as_os_str(), flags, Mode::empty()).map_err(|e| match e {
            Errno::LOOP => WorkspaceError::Changed { path: path.to_path_buf() },
            e => errno(path, "reading")(e),
        })?;
        let st = rustix::fs::fstat(&from).map_err(errno(path, "reading"))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(WorkspaceError::Changed { path: path.to_path_buf() });
        }
        // Set-id bits do not survive (the bottle mounts nosuid anyway).
        let mode = Mode::from_raw_mode(st.st_mode & 0o777);
        let to = rustix::fs::openat(
            dst,
            item.name.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno(path, "creating the copy of"))?;
        let from = File::from(from);
        let mut to = File::from(to);
        let size = match item.transform {
            Transform::None => self.clone_or_copy(&from, &to, st.st_size as u64, path)?,
            t => {
                // Rewritten whole, so read whole; a file this size in `.git`
                // (a config, a reflog) is not one git wrote.
                let mut data = Vec::new();
                (&from).take(TRANSFORM_MAX + 1).read_to_end(&mut data).map_err(ioerr(path, "reading"))?;
                if data.len() as u64 > TRANSFORM_MAX {
                    return Err(WorkspaceError::TooLarge { path: path.to_path_buf(), max: TRANSFORM_MAX });
                }
                let out = self.transform(t, &data, path)?;
                to.write_all(&out).map_err(ioerr(path, "writing the copy of"))?;
                out.len() as u64
            }
        };
        let time = |s: i64, ns: u64| Timespec { tv_sec: s, tv_nsec: ns as _ };
        let times = Timestamps {
            last_access: time(st.st_atime as i64, st.st_atime_nsec as u64),
            last_modification: time(st.st_mtime as i64, st.st_mtime_nsec as u64),
        };
        rustix::fs::futimens(&to, &times).map_err(errno(path, "setting the times of"))?;
        rustix::fs::fchmod(&to, mode).map_err(errno(path, "setting the mode of"))?;
        self.chown(&OwnedFd::from(to), path)?;
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Clones the file's extents where the filesystem can; copies in the
    /// kernel otherwise. Returns the bytes copied.
    fn clone_or_copy(&self, from: &File, to: &File, size: u64, path: &Path) -> Result<u64, WorkspaceError> {
        if self.reflink.load(Ordering::Relaxed) {
            match rustix::fs::ioctl_ficlone(to, from) {
                Ok(()) => {
                    self.reflinked.fetch_add(1, Ordering::Relaxed);
                    return Ok(size);
                }
                // Not here (another filesystem, or one without shared
                // extents): stop trying.
                Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS | Errno::PERM) => {
                    self.reflink.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(errno(path, "cloning")(e)),
            }
        }
        // In the kernel, the size `fstat` gave (one call for most files);
        // where copy_file_range cannot, std's copy (which falls back to
        // read and write).
        let mut done = 0u64;
        while done < size {
            let want = usize::try_from(size - done).unwrap_or(usize::MAX).min(1 << 30);
            match rustix::fs::copy_file_range(from, None, to, None, want) {
                Ok(0) => return Ok(done),
                Ok(n) => done += n as u64,
                Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) if done == 0 => {
                    return std::io::copy(&mut &*from, &mut &*to).map_err(ioerr(path, "copying"));
                }
                Err(e) => return Err(errno(path, "copying")(e)),
            }
        }
        Ok(done)
    }

    fn transform(&self, t: Transform, data: &[u8], path: &Path) -> Result<Vec<u8>, WorkspaceError> {
        match t {
            Transform::None => Ok(data.to_vec()),
            Transform::Config(layout) => {
                let entries = gitconfig::parse(data).map_err(|e| WorkspaceError::GitConfig {
                    path: path.to_path_buf(),
                    line: e.line,
                    what: e.what,
                })?;
                let (kept, removed) = gitconfig::sanitize(entries, layout);
                for what in removed {
                    self.removed(path, what);
                }
                Ok(gitconfig::render(&kept))
            }
            Transform::StripUrls => {
                let (out, changed) = gitconfig::strip_userinfo(data);
                if changed {
                    self.removed(path, "credentials in URLs".into());
                }
                Ok(out)
            }
        }
    }
}

enum GitEntry {
    Skip,
    Dir(GitHow),
    File(Transform),
}

/// A directory's entries, each with its type (from the directory itself;
/// `lstat` only where the filesystem does not say), in no particular order.
/// Whatever is opened later is checked again on its descriptor.
fn read_dir(dir: &OwnedFd, rel: &Path) -> Result<Vec<(OsString, FileType)>, WorkspaceError> {
    let mut d = rustix::fs::Dir::read_from(dir).map_err(errno(rel, "listing"))?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e.map_err(errno(rel, "listing"))?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_owned();
        let kind = match e.file_type() {
            FileType::Unknown => {
                let st = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(errno(&rel.join(&name), "reading"))?;
                FileType::from_raw_mode(st.st_mode)
            }
            t => t,
        };
        out.push((name, kind));
    }
    Ok(out)
}

/// Reads the regular file `name` in `dir` (at most `cap` bytes), never
/// through a symlink.
pub(crate) fn read_at(dir: &impl AsFd, name: &OsStr, path: &Path, cap: u64) -> Result<Vec<u8>, WorkspaceError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(errno(path, "reading"))?;
    let mut data = Vec::new();
    File::from(fd).take(cap).read_to_end(&mut data).map_err(ioerr(path, "reading"))?;
    Ok(data)
}
