//! Copies of real repositories made by real git: what enters, what stays
//! out, and that git still works on the copy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const TOKEN: &str = "ghp_Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5eG2uT";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(["-c", "protocol.file.allow=always"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test that needs what this host lacks says so, and fails on CI.
#[expect(clippy::print_stderr, reason = "a skipped test says why")]
pub(super) fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "CI must be able to run this test: {why}");
    eprintln!("skipping: {why}");
}

pub(super) fn has_git() -> bool {
    let ok = Command::new("git").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        skip("git is not installed");
    }
    ok
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// Every path below `dir` (directories with a trailing `/`), `.git`
/// internals left out.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).expect("read_dir").flatten() {
            let r = rel.join(e.file_name());
            let t = e.file_type().expect("type");
            if t.is_dir() {
                out.insert(format!("{}/", r.display()));
                if e.file_name() != ".git" {
                    todo.push(r);
                }
            } else {
                out.insert(r.display().to_string());
            }
        }
    }
    out
}

/// Every byte of every file below `dir`, `.git` included.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().expect("type");
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.extend(std::fs::read(e.path()).expect("read"));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn copy(project: &Path, opts: &CopyOptions<'_>) -> (tempfile::TempDir, PathBuf, CopyReport) {
    let state = tempfile::tempdir().expect("tempdir");
    let dst = state.path().join("workspace");
    let report = copy_project(project, &dst, opts).expect("copy");
    (state, dst, report)
}

/// A repository as an agent's user leaves it: credentials in its config,
/// in FETCH_HEAD and a reflog, a credential store, a stale lock; ignored
/// secrets and build output; a file tracked despite .gitignore; a symlink
/// to a host file.
fn messy_repo(outside: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    git(p, &["init", "-q"]);
    write(&p.join(".gitignore"), ".env\ntarget/\n*.log\n");
    write(&p.join("src/main.rs"), "fn main() {}\n");
    write(&p.join("fixtures/keep.log"), "tracked despite *.log\n");
    write(&p.join("sub/dir/file.txt"), "deep\n");
    git(p, &["add", ".gitignore", "src", "sub"]);
    git(p, &["add", "-f", "fixtures/keep.log"]);
    git(p, &["commit", "-qm", "one"]);
    write(&p.join("untracked.txt"), "not ignored, not tracked\n");
    write(&p.join(".env"), &format!("GITHUB_TOKEN={TOKEN}\n"));
    write(&p.join("target/debug/app"), "binary\n");
    write(&p.join("build.log"), "noise\n");
    write(&p.join("sub/x.log"), "noise\n");
    std::os::unix::fs::symlink(outside, p.join("link-out")).expect("symlink");
    git(p, &["remote", "add", "origin", &format!("https://x-access-token:{TOKEN}@github.com/org/app.git")]);
    git(p, &["config", "http.https://github.com/.extraheader", &format!("AUTHORIZATION: basic {TOKEN}")]);
    git(p, &["config", "credential.helper", "store --file=/home/u/.git-credentials"]);
    git(p, &["config", "include.path", "/home/u/.gitconfig-secrets"]);
    git(p, &["config", "url.https://oauth2:glpat-0123456789abcdefghij@gitlab.com/.insteadOf", "https://gitlab.com/"]);
    git(p, &["config", "core.sshCommand", "ssh -i /home/u/.ssh/deploy"]);
    // A commented-out token in the config file itself.
    let cfg = p.join(".git/config");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!("# old: {TOKEN}\n"));
    std::fs::write(&cfg, text).expect("config");
    write(&p.join(".git/FETCH_HEAD"), &format!("abc\t\tbranch 'main' of https://{TOKEN}@github.com/org/app\n"));
    let log = p.join(".git/logs/HEAD");
    let mut text = std::fs::read_to_string(&log).expect("reflog");
    text.push_str(&format!("0 1 t <t@t> 0 +0000\tpull: from https://u:{TOKEN}@github.com/org/app\n"));
    std::fs::write(&log, text).expect("reflog");
    write(&p.join(".git/credentials"), &format!("https://u:{TOKEN}@github.com\n"));
    write(&p.join(".git/index.lock"), "");
    d
}

#[test]
fn a_copy_carries_what_git_would_and_no_credentials() {
    if !has_git() {
        return;
    }
    let host = tempfile::tempdir().expect("tempdir");
    let secret = host.path().join("host-secret");
    write(&secret, "host secret\n");
    let repo = messy_repo(&secret);
    let (_state, dst, report) = copy(repo.path(), &CopyOptions::default());
    let got: Vec<String> = tree(&dst).into_iter().collect();
    assert_eq!(
        got,
        [
            ".git/",
            ".gitignore",
            "fixtures/",
            "fixtures/keep.log",
            "link-out",
            "src/",
            "src/main.rs",
            "sub/",
            "sub/dir/",
            "sub/dir/file.txt",
            "untracked.txt"
        ]
    );
    assert!(!contains(&all_bytes(&dst), TOKEN), "the token is in the copy");
    assert!(!contains(&all_bytes(&dst), "glpat-"), "the token is in the copy");
    assert!(!dst.join(".git/credentials").exists() && !dst.join(".git/index.lock").exists());
    // The symlink is a symlink, still naming its target (which the bottle
    // resolves inside); it was not followed.
    assert_eq!(std::fs::read_link(dst.join("link-out")).expect("link"), secret);
    // git works on the copy, sees no change, and keeps the remote.
    assert_eq!(git(&dst, &["status", "--porcelain"]), "?? link-out\n?? untracked.txt\n");
    assert_eq!(git(&dst, &["log", "--format=%s"]), "one\n");
    assert_eq!(git(&dst, &["remote", "get-url", "origin"]), "https://github.com/org/app.git\n");
    // What was removed is said, by name only.
    let removed: Vec<String> = report.removed.iter().map(|(f, w)| format!("{}: {w}", f.display())).collect();
    assert_eq!(removed.iter().filter(|r| r.starts_with(".git/config")).count(), 6, "{removed:#?}");
    for want in [
        ".git/config: remote.origin.url (credentials in its URL)",
        ".git/config: http.https://github.com/.extraheader",
        ".git/config: credential.helper",
        ".git/config: include.path",
        ".git/config: core.sshCommand",
        ".git/FETCH_HEAD: credentials in URLs",
        ".git/logs/HEAD: credentials in URLs",
        ".git/credentials: a credential store",
    ] {
        assert!(removed.iter().any(|r| r == want), "{want} not reported: {removed:#?}");
    }
    assert!(removed.iter().all(|r| !r.contains(TOKEN) && !r.contains("glpat")));
    let mut left: Vec<String> = report.left_out.iter().map(|p| p.display().to_string()).collect();
    left.sort();
    assert_eq!(left, [".env", "build.log", "sub/x.log", "target"]);
    // The user's checkout is untouched.
    assert!(contains(&std::fs::read(repo.path().join(".git/config")).expect("config"), TOKEN));
}

#[test]
fn included_ignored_files_come_in_and_a_later_negation_takes_one_back() {
    if !has_git() {
        return;
    }
    let repo = messy_repo(Path::new("/nonexistent"));
    write(&repo.path().join(".env.example"), "X=\n");
    write(&repo.path().join("target/release/app"), "release\n");
    write(&repo.path().join("target/release/big"), "big\n");
    std::fs::write(repo.path().join(".gitignore"), ".env*\ntarget/\n*.log\n").expect("write");
    let include: Vec<String> =
        [".env.example", "target/release/app", "*.log", "!sub/x.log"].map(str::to_owned).to_vec();
    let (_s, dst, _) = copy(repo.path(), &CopyOptions { include_ignored: &include, ..CopyOptions::default() });
    let got = tree(&dst);
    for want in [".env.example", "target/release/app", "build.log", "fixtures/keep.log"] {
        assert!(got.contains(want), "{want} missing: {got:?}");
    }
    for not in [".env", "target/release/big", "target/debug/", "sub/x.log"] {
        assert!(!got.contains(not), "{not} copied: {got:?}");
    }
}

#[test]
fn outside_git_gitignore_and_ignore_files_are_honoured() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    write(&p.join(".gitignore"), "node_modules/\n.env\n");
    write(&p.join("web/.ignore"), "dist/\n");
    write(&p.join("web/dist/bundle.js"), "x");
    write(&p.join("web/src/app.js"), "x");
    write(&p.join("node_modules/a/index.js"), "x");
    write(&p.join(".env"), TOKEN);
    write(&p.join("README"), "x");
    let (_s, dst, _) = copy(p, &CopyOptions::default());
    let got: Vec<String> = tree(&dst).into_iter().collect();
    assert_eq!(got, [".gitignore", "README", "web/", "web/.ignore", "web/src/", "web/src/app.js"]);
}

#[test]
fn a_linked_worktree_becomes_a_whole_repository() {
    if !has_git() {
        return;
    }
    let main = messy_repo(Path::new("/nonexistent"));
    let wts = tempfile::tempdir().expect("tempdir");
    let wt = wts.path().join("wt");
    git(main.path(), &["worktree", "add", "-q", "-b", "feature", wt.to_str().expect("utf8")]);
    write(&wt.join("src/feature.rs"), "// new\n");
    git(&wt, &["add", "src/feature.rs"]);
    git(&wt, &["commit", "-qm", "feature"]);
    let (_s, dst, report) = copy(&wt, &CopyOptions::default());
    assert!(dst.join(".git").is_dir(), "the copy's .git is a directory of its own");
    assert_eq!(git(&dst, &["status", "--porcelain"]), "");
    assert_eq!(git(&dst, &["log", "--format=%s"]), "feature\none\n");
    assert_eq!(git(&dst, &["branch", "--show-current"]), "feature\n");
    assert_eq!(git(&dst, &["worktree", "list", "--porcelain"]).matches("worktree ").count(), 1);
    assert!(!contains(&all_bytes(&dst), TOKEN));
    assert!(report.notes.iter().any(|n| n.contains("outside the project")), "{:?}", report.notes);
}

#[test]
fn a_submodule_as_the_project_brings_its_git_dir_and_one_inside_stays_relative() {
    if !has_git() {
        return;
    }
    let lib = tempfile::tempdir().expect("tempdir");
    git(lib.path(), &["init", "-q"]);
    write(&lib.path().join("lib.rs"), "// lib\n");
    git(lib.path(), &["add", "."]);
    git(lib.path(), &["commit", "-qm", "lib"]);
    let sup = tempfile::tempdir().expect("tempdir");
    git(sup.path(), &["init", "-q"]);
    git(sup.path(), &["submodule", "add", "-q", lib.path().to_str().expect("utf8"), "vendor/lib"]);
    git(sup.path(), &["commit", "-qm", "super"]);
    // A credential in the submodule's own config, which lives in the
    // superproject's `.git/modules`.
    git(
        &sup.path().join("vendor/lib"),
        &["remote", "set-url", "origin", &format!("https://u:{TOKEN}@example.com/lib.git")],
    );
    // The superproject: the submodule's .git file keeps pointing inside.
    let (_s, dst, report) = copy(sup.path(), &CopyOptions::default());
    assert!(!contains(&all_bytes(&dst), TOKEN), "the submodule's credential is in the copy");
    assert!(
        report
            .removed
            .iter()
            .any(|(f, w)| f == Path::new(".git/modules/vendor/lib/config") && w.contains("remote.origin.url")),
        "{:?}",
        report.removed
    );
    assert_eq!(
        std::fs::read_to_string(dst.join("vendor/lib/.git")).expect("gitfile"),
        "gitdir: ../../.git/modules/vendor/lib\n"
    );
    assert_eq!(git(&dst, &["submodule", "status"]).split_whitespace().nth(1), Some("vendor/lib"));
    assert_eq!(git(&dst.join("vendor/lib"), &["log", "--format=%s"]), "lib\n");
    // The submodule alone: its git dir is the superproject's, outside.
    let (_s2, dst2, _) = copy(&sup.path().join("vendor/lib"), &CopyOptions::default());
    assert!(dst2.join(".git").is_dir());
    assert!(!contains(&all_bytes(&dst2), TOKEN));
    assert_eq!(git(&dst2, &["status", "--porcelain"]), "");
    assert_eq!(git(&dst2, &["log", "--format=%s"]), "lib\n");
}

#[test]
fn a_gitdir_file_naming_an_unrelated_repository_is_refused() {
    if !has_git() {
        return;
    }
    let other = messy_repo(Path::new("/nonexistent"));
    let d = tempfile::tempdir().expect("tempdir");
    write(&d.path().join("a.txt"), "x");
    write(&d.path().join(".git"), &format!("gitdir: {}\n", other.path().join(".git").display()));
    let state = tempfile::tempdir().expect("tempdir");
    let dst = state.path().join("workspace");
    let e = copy_project(d.path(), &dst, &CopyOptions::default()).expect_err("refused");
    assert!(matches!(e, WorkspaceError::GitDir { .. }), "{e}");
    assert!(e.to_string().contains("does not point back"), "{e}");
    assert_eq!(std::fs::read_dir(state.path()).expect("state").count(), 0, "nothing is left behind");
}

#[test]
fn a_failed_copy_leaves_nothing_and_never_holds_itself() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    for i in 0..200 {
        write(&p.join(format!("a/{i}.txt")), "x");
    }
    write(&p.join("state/bot-bottle/x"), "other bottles");
    // A guarded directory inside the project: the copy fails there.
    let guarded = [p.join("state/bot-bottle")];
    let out = tempfile::tempdir().expect("tempdir");
    let dst = out.path().join("workspace");
    let e = copy_project(p, &dst, &CopyOptions { guarded: &guarded, ..CopyOptions::default() }).expect_err("refused");
    assert!(matches!(e, WorkspaceError::Recursion { .. }), "{e}");
    assert_eq!(std::fs::read_dir(out.path()).expect("out").count(), 0, "nothing is left behind");
    // The destination inside the project: the copy meets itself and stops.
    let dst = p.join("ws/workspace");
    std::fs::create_dir_all(p.join("ws")).expect("mkdir");
    let e = copy_project(p, &dst, &CopyOptions::default()).expect_err("refused");
    assert!(matches!(e, WorkspaceError::Recursion { .. }), "{e}");
    assert_eq!(std::fs::read_dir(p.join("ws")).expect("ws").count(), 0, "nothing is left behind");
}

#[test]
fn progress_is_reported_once_it_takes_long_enough() {
    let d = tempfile::tempdir().expect("tempdir");
    for i in 0..2000 {
        write(&d.path().join(format!("{}/{i}", i % 20)), &"x".repeat(4096));
    }
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |p: Progress| seen.lock().expect("lock").push(p);
    let opts = CopyOptions { progress: Some(&progress), progress_after: Duration::ZERO, ..CopyOptions::default() };
    let (_s, _dst, report) = copy(d.path(), &opts);
    let seen = seen.into_inner().expect("lock");
    let last = seen.last().expect("progress was reported");
    assert_eq!((last.files, last.bytes, last.done), (2000, 2000 * 4096, true));
    assert_eq!(seen.iter().filter(|p| p.done).count(), 1);
    assert_eq!((report.files, report.bytes), (2000, 2000 * 4096));
    // A copy quicker than the threshold says nothing.
    let seen = std::sync::Mutex::new(0);
    let progress = |_: Progress| *seen.lock().expect("lock") += 1;
    let opts =
        CopyOptions { progress: Some(&progress), progress_after: Duration::from_secs(3600), ..CopyOptions::default() };
    let _ = copy(d.path(), &opts);
    assert_eq!(*seen.lock().expect("lock"), 0);
}

#[test]
fn the_copy_belongs_to_the_owner_given() {
    if !nix::unistd::geteuid().is_root() {
        // Unprivileged runs give nothing away: the launcher owns the copy.
        #[expect(clippy::print_stderr, reason = "a skipped test says why")]
        {
            eprintln!("skipping: giving files away needs root");
        }
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    write(&d.path().join("a/b.txt"), "x");
    std::os::unix::fs::symlink("/etc/hostname", d.path().join("a/link")).expect("symlink");
    let owner = 0x7000_0000 + 1000;
    let (_s, dst, _) = copy(d.path(), &CopyOptions { owner: Some(owner), ..CopyOptions::default() });
    use std::os::unix::fs::MetadataExt;
    for p in ["", "a", "a/b.txt", "a/link"] {
        let m = std::fs::symlink_metadata(dst.join(p)).expect("meta");
        assert_eq!((m.uid(), m.gid()), (owner, owner), "{p}");
    }
}

#[test]
fn modes_and_times_are_kept_and_set_id_bits_dropped() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = tempfile::tempdir().expect("tempdir");
    write(&d.path().join("run.sh"), "#!/bin/sh\n");
    std::fs::set_permissions(d.path().join("run.sh"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    write(&d.path().join("ro"), "x");
    std::fs::set_permissions(d.path().join("ro"), std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let (_s, dst, _) = copy(d.path(), &CopyOptions::default());
    let mode = |p: &str| std::fs::metadata(dst.join(p)).expect("meta").permissions().mode() & 0o7777;
    assert_eq!((mode("run.sh"), mode("ro")), (0o755, 0o444));
    let mtime = |p: &Path| std::fs::metadata(p).expect("meta").mtime_nsec();
    assert_eq!(mtime(&dst.join("run.sh")), mtime(&d.path().join("run.sh")));
}

#[test]
fn nothing_in_the_repository_runs_on_the_host() {
    if !has_git() {
        return;
    }
    let host = tempfile::tempdir().expect("tempdir");
    let marker = host.path().join("ran");
    let repo = messy_repo(Path::new("/nonexistent"));
    let run = format!("touch {}", marker.display());
    // Every way a repository's own files make git run a program.
    for (key, value) in [
        ("core.fsmonitor", run.as_str()),
        ("core.pager", run.as_str()),
        ("core.hooksPath", ".githooks"),
        ("diff.external", run.as_str()),
        ("filter.x.clean", run.as_str()),
        ("filter.x.smudge", run.as_str()),
        ("filter.x.process", run.as_str()),
    ] {
        git(repo.path(), &["config", key, value]);
    }
    write(&repo.path().join(".gitattributes"), "* filter=x diff=x\n");
    for hook in ["post-checkout", "pre-commit", "fsmonitor-watchman", "post-index-change"] {
        let p = repo.path().join(".githooks").join(hook);
        write(&p, &format!("#!/bin/sh\n{run}\n"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let (_s, dst, _) = copy(repo.path(), &CopyOptions::default());
    assert!(!marker.exists(), "the copy ran a program of the repository's");
    // The project's own behaviour is kept for git inside the bottle.
    let cfg = std::fs::read_to_string(dst.join(".git/config")).expect("config");
    assert!(cfg.contains("fsmonitor") && cfg.contains("[filter \"x\"]"), "{cfg}");
}

/// A loop-mounted XFS with reflinks, unmounted when dropped.
struct Xfs {
    dir: tempfile::TempDir,
}

impl Xfs {
    fn new() -> Option<Xfs> {
        if !nix::unistd::geteuid().is_root() {
            // Unprivileged runs cannot mount; the root run covers this.
            return None;
        }
        if Command::new("mkfs.xfs").arg("-V").output().is_err() {
            skip("mkfs.xfs is not installed (xfsprogs)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("img");
        std::fs::File::create(&img).and_then(|f| f.set_len(400 << 20)).expect("image");
        let mkfs = Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&img).status().expect("mkfs");
        assert!(mkfs.success());
        std::fs::create_dir(dir.path().join("mnt")).expect("mkdir");
        let mount = Command::new("mount").args(["-o", "loop"]).arg(&img).arg(dir.path().join("mnt")).status();
        assert!(mount.expect("mount").success(), "mounting a loop XFS");
        Some(Xfs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        // Lazily, so a failing test still leaves no mount behind.
        let ok = Command::new("umount").arg("-l").arg(self.path()).status().is_ok_and(|s| s.success());
        assert!(ok || std::thread::panicking(), "unmounting {}", self.path().display());
    }
}

#[test]
fn files_are_cloned_where_the_filesystem_shares_extents() {
    let Some(xfs) = Xfs::new() else { return };
    let project = xfs.path().join("project");
    for i in 0..20 {
        write(&project.join(format!("src/{i}.bin")), &format!("{i}").repeat(100_000));
    }
    let dst = xfs.path().join("state/workspace");
    std::fs::create_dir_all(xfs.path().join("state")).expect("mkdir");
    let report = copy_project(&project, &dst, &CopyOptions::default()).expect("copy");
    assert_eq!((report.files, report.reflinked), (20, 20), "every file cloned");
    for i in 0..20 {
        let p = format!("src/{i}.bin");
        assert_eq!(std::fs::read(dst.join(&p)).expect("copy"), std::fs::read(project.join(&p)).expect("orig"));
    }
    // The clone is a copy: writing it leaves the project as it was.
    std::fs::write(dst.join("src/0.bin"), "changed").expect("write");
    assert_eq!(std::fs::read_to_string(project.join("src/0.bin")).expect("orig"), "0".repeat(100_000));
    // Across filesystems there is nothing to share: copied, not cloned.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let report = copy_project(&project, &elsewhere.path().join("w"), &CopyOptions::default()).expect("copy");
    assert_eq!((report.files, report.reflinked), (20, 0));
}

#[test]
fn a_sparse_checkout_copies_what_is_checked_out_and_git_agrees() {
    if !has_git() {
        return;
    }
    let repo = messy_repo(Path::new("/nonexistent"));
    std::fs::remove_file(repo.path().join(".git/index.lock")).expect("unlock");
    git(repo.path(), &["sparse-checkout", "set", "--cone", "src"]);
    assert!(!repo.path().join("sub").exists(), "git left sub/ out of the worktree");
    let (_s, dst, _) = copy(repo.path(), &CopyOptions::default());
    assert!(dst.join("src/main.rs").is_file() && !dst.join("sub").exists());
    assert_eq!(git(&dst, &["sparse-checkout", "list"]), "src\n");
    assert_eq!(git(&dst, &["status", "--porcelain", "--untracked-files=no"]), "");
    assert_eq!(git(&dst, &["ls-files"]).lines().count(), git(repo.path(), &["ls-files"]).lines().count());
}

#[test]
fn a_nested_repository_keeps_its_own_rules_and_loses_its_credentials() {
    if !has_git() {
        return;
    }
    let outer = tempfile::tempdir().expect("tempdir");
    let p = outer.path();
    write(&p.join(".gitignore"), "*.tmp\n");
    write(&p.join("a.txt"), "a");
    git(p, &["init", "-q"]);
    // A clone inside the project that is not a submodule: its .gitignore
    // decides inside it, the outer one does not reach in.
    let inner = p.join("tools/inner");
    std::fs::create_dir_all(&inner).expect("mkdir");
    git(&inner, &["init", "-q"]);
    write(&inner.join(".gitignore"), "secret.txt\n");
    write(&inner.join("secret.txt"), TOKEN);
    write(&inner.join("keep.tmp"), "the outer *.tmp does not apply here");
    write(&inner.join("code.rs"), "x");
    git(&inner, &["remote", "add", "origin", &format!("https://{TOKEN}@example.com/inner.git")]);
    let (_s, dst, _) = copy(p, &CopyOptions::default());
    let got = tree(&dst);
    assert!(got.contains("tools/inner/keep.tmp") && got.contains("tools/inner/code.rs"), "{got:?}");
    assert!(!got.contains("tools/inner/secret.txt"), "{got:?}");
    assert!(!contains(&all_bytes(&dst), TOKEN));
    assert_eq!(git(&dst.join("tools/inner"), &["remote", "get-url", "origin"]), "https://example.com/inner.git\n");
}
