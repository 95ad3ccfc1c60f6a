//! The end of a session: what the agent left uncommitted in its workspace
//! copy, landed as `bot-bottle/<slug>/uncommitted`.
//!
//! bot-bottle never runs git inside the workspace copy: its `.git` is the
//! agent's (config, hooks, fsmonitor, filters, includes...). The snapshot is
//! made by the gate's own git with a fresh git dir and index elsewhere and
//! the copy as a plain work tree (`GIT_WORK_TREE`): the copy's `.git` is
//! skipped by git, nested repositories are left out, and nothing of theirs
//! is read as configuration. The copy's `HEAD` is read as data, only to pick
//! the parent commit, and used only when the gate already has that commit.
//! The commit is then checked, scanned and landed exactly like a push.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::argv::{self, GitCmd, Oid, RefName};
use super::check::RefUpdate;
use super::{GateError, Inner, Landing, mkdir};

/// Reads a small regular file without following a symlink at its last step.
fn read_small(p: &Path, max: u64) -> Option<String> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(p).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(max).read_to_string(&mut s).ok()?;
    Some(s)
}

/// Whether `rel` under `root` has no symlink on the way.
fn no_symlinks(root: &Path, rel: &str) -> bool {
    let mut p = root.to_path_buf();
    rel.split('/').all(|c| {
        p.push(c);
        std::fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink())
    })
}

/// The commit the workspace copy's `HEAD` names, read as data. `None` for
/// anything unexpected: a `.git` that is a file or a link, a symlinked ref,
/// a malformed value.
pub(crate) fn workspace_head(work: &Path) -> Option<Oid> {
    let gitdir = work.join(".git");
    if !std::fs::symlink_metadata(&gitdir).ok()?.is_dir() {
        return None;
    }
    let head = read_small(&gitdir.join("HEAD"), 4096)?;
    let head = head.trim();
    let Some(r) = head.strip_prefix("ref:") else { return Oid::parse(head).ok() };
    let r = RefName::parse(r.trim()).ok()?;
    if no_symlinks(&gitdir, r.as_str())
        && let Some(v) = read_small(&gitdir.join(r.as_str()), 4096)
    {
        return Oid::parse(v.trim()).ok();
    }
    let packed = read_small(&gitdir.join("packed-refs"), 64 << 20)?;
    packed.lines().find_map(|l| {
        let (oid, name) = l.split_once(' ')?;
        (name == r.as_str()).then(|| Oid::parse(oid).ok()).flatten()
    })
}

/// Directories below `work` that hold a repository of their own (a `.git`
/// entry of any kind), found without following symlinks. They are left out
/// of the snapshot.
pub(crate) fn nested_repos(work: &Path) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(work.to_path_buf(), PathBuf::new())];
    while let Some((abs, rel)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&abs) else { continue };
        let mut dirs = Vec::new();
        let mut nested = false;
        for e in rd.flatten() {
            let name = e.file_name();
            if name == ".git" {
                nested = !rel.as_os_str().is_empty();
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push((e.path(), rel.join(&name)));
            }
        }
        if nested {
            out.push(rel.into_os_string());
            continue;
        }
        stack.extend(dirs);
    }
    out.sort();
    out
}

/// Removes the snapshot's scratch directory however `land` ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        // Objects already scanned or discarded; only space is at stake.
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.0.display(), error = %e, "removing a snapshot's scratch dir"),
        }
    }
}

async fn run_ok(inner: &Inner, c: &GitCmd, what: &str) -> Result<String, GateError> {
    let out = inner.git.output(c, None).await?;
    if !out.status.success() {
        return Err(GateError::Git {
            what: what.to_owned(),
            argv: c.display(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// See [`super::Gate::land_uncommitted`].
pub(crate) async fn land(inner: &Inner, work: &Path) -> Result<Option<Landing>, GateError> {
    let Some(repo) = inner.repos.get("local") else { return Ok(None) };
    argv::check_path("workspace", work)?;
    if !std::fs::symlink_metadata(work).is_ok_and(|m| m.is_dir()) {
        return Ok(None);
    }
    let _lock = repo.lock.lock().await;
    inner.refresh(repo).await?;
    let n = inner.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let scratch = Scratch(inner.run.join(format!("snapshot-{n}")));
    mkdir(&scratch.0, 0o700)?;
    let gd = scratch.0.join("git");
    run_ok(inner, &argv::init_bare(&gd)?, "making the snapshot's git dir").await?;
    let objects = repo.dir.join("objects");
    let alt = |c: GitCmd| c.env("GIT_ALTERNATE_OBJECT_DIRECTORIES", objects.as_os_str());
    let index = scratch.0.join("index");
    run_ok(inner, &alt(argv::snapshot_add(&gd, work, &index, &nested_repos(work))?), "adding the workspace").await?;
    let tree = Oid::parse(&run_ok(inner, &alt(argv::write_tree(&gd, &index)?), "writing the snapshot's tree").await?)?;
    // The parent: the copy's HEAD when the gate has it (the agent pushed
    // it, or it came from the project), else the project's HEAD at launch.
    let mut parents = Vec::new();
    for candidate in [workspace_head(work), inner.local_base.clone()].into_iter().flatten() {
        let t = format!("{candidate}^{{tree}}");
        if let Ok(pt) = run_ok(inner, &alt(argv::resolve(&gd, &t)?), "reading the parent").await {
            if pt == tree.as_str() {
                return Ok(None);
            }
            parents.push(candidate);
            break;
        }
    }
    let previous = run_ok(
        inner,
        &argv::resolve(&repo.dir, &format!("refs/namespaces/{}/refs/heads/uncommitted", argv::LANDED_NS))?,
        "",
    )
    .await
    .ok()
    .and_then(|s| Oid::parse(&s).ok());
    if let Some(p) = &previous {
        let pt =
            run_ok(inner, &alt(argv::resolve(&gd, &format!("{p}^{{tree}}"))?), "reading the last snapshot").await?;
        if pt == tree.as_str() {
            return Ok(None);
        }
        // The last session's snapshot as a second parent: the branch moves
        // forward, never by force.
        parents.push(p.clone());
    }
    let message = format!("bot-bottle: uncommitted changes left in the workspace of bottle {}", inner.bottle);
    let commit = Oid::parse(
        &run_ok(inner, &alt(argv::commit_tree(&gd, &tree, &parents, &message)?), "committing the snapshot").await?,
    )?;
    let zero = Oid::parse(&"0".repeat(commit.as_str().len()))?;
    let update = RefUpdate {
        old: previous.unwrap_or(zero),
        new: commit.clone(),
        name: RefName::parse("refs/heads/uncommitted")?,
    };
    let snapshot_objects = gd.join("objects");
    let env = move |c: GitCmd| argv::quarantine_env(c, &snapshot_objects, &objects);
    match inner.check_and_forward(repo, std::slice::from_ref(&update), &env, "land").await {
        Ok(_) => Ok(Some(Landing {
            repo: "local".into(),
            branch: format!("{}uncommitted", super::landing_prefix(&inner.bottle)),
            commit: commit.to_string(),
        })),
        Err(msg) => Err(GateError::Refused(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_head_is_read_as_data_and_links_are_not_followed() {
        let t = tempfile::tempdir().expect("tempdir");
        let w = t.path();
        assert_eq!(workspace_head(w), None);
        std::fs::create_dir_all(w.join(".git/refs/heads")).expect("mkdir");
        let a = "a".repeat(40);
        std::fs::write(w.join(".git/HEAD"), "ref: refs/heads/main\n").expect("write");
        std::fs::write(w.join(".git/refs/heads/main"), format!("{a}\n")).expect("write");
        assert_eq!(workspace_head(w).map(|o| o.to_string()), Some(a.clone()));
        // Packed refs, when the loose one is missing.
        std::fs::remove_file(w.join(".git/refs/heads/main")).expect("rm");
        let b = "b".repeat(40);
        std::fs::write(w.join(".git/packed-refs"), format!("# pack-refs\n{b} refs/heads/main\n")).expect("write");
        assert_eq!(workspace_head(w).map(|o| o.to_string()), Some(b));
        // A symlinked ref is not followed (it could name any host file).
        let outside = t.path().join("outside");
        std::fs::write(&outside, format!("{a}\n")).expect("write");
        std::fs::remove_file(w.join(".git/packed-refs")).expect("rm");
        std::os::unix::fs::symlink(&outside, w.join(".git/refs/heads/main")).expect("symlink");
        assert_eq!(workspace_head(w), None);
        // A detached HEAD; then a HEAD that is not an id.
        std::fs::write(w.join(".git/HEAD"), format!("{a}\n")).expect("write");
        assert_eq!(workspace_head(w).map(|o| o.to_string()), Some(a));
        std::fs::write(w.join(".git/HEAD"), "ref: ../../etc/passwd\n").expect("write");
        assert_eq!(workspace_head(w), None);
    }

    #[test]
    fn nested_repositories_are_found_without_following_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let w = t.path();
        for d in [".git", "a/b/.git", "c/d", "e"] {
            std::fs::create_dir_all(w.join(d)).expect("mkdir");
        }
        std::fs::write(w.join("e/.git"), "gitdir: /elsewhere\n").expect("write");
        std::fs::create_dir_all(t.path().join("a/b/.git/x")).expect("mkdir");
        std::os::unix::fs::symlink("/", w.join("c/root")).expect("symlink");
        assert_eq!(nested_repos(w), vec![OsString::from("a/b"), OsString::from("e")]);
    }
}
