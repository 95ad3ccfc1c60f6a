//! What the project is and what of it enters a bottle, through the real
//! binary: refused projects, a repository full of credentials and ignored
//! secrets, `--workspace`, a linked worktree, a failed copy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::cases::tree;
use super::native::{available, panic_or_skip};

const TOKEN: &str = "ghp_Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5eG2uT";
const HEADER: &str = "dGhlLWV4dHJhLWhlYWRlci1zZWNyZXQ";

/// A user's machine in a temp dir: `home/`, `config/` (with the global
/// manifest in `config/bot-bottle/`), `state/`, and `work/` for projects.
struct Machine {
    tmp: tempfile::TempDir,
}

impl Machine {
    fn new(agent_command: &str) -> Machine {
        let tmp = tempfile::tempdir().expect("tempdir");
        for d in ["home", "config", "state", "work"] {
            std::fs::create_dir_all(tmp.path().join(d)).expect("mkdir");
        }
        let m = Machine { tmp };
        m.manifest(&m.path("config/bot-bottle"), agent_command, "");
        m
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// An agent `a` running `sh -c COMMAND` in bottle `b`.
    fn manifest(&self, dir: &Path, command: &str, bottle_extra: &str) {
        std::fs::create_dir_all(dir.join("agents")).expect("mkdir");
        std::fs::create_dir_all(dir.join("bottles")).expect("mkdir");
        std::fs::write(dir.join("bottles/b.yaml"), format!("backend: native\n{bottle_extra}")).expect("write");
        std::fs::write(
            dir.join("agents/a.md"),
            format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {command:?}]\nbottle: b\n---\n"),
        )
        .expect("write");
    }

    fn command(&self, cwd: &Path, args: &[&str], env: &[(&str, PathBuf)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bot-bottle"));
        c.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_STATE_HOME", self.path("state"))
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, cwd: &Path, args: &[&str], env: &[(&str, PathBuf)]) -> Output {
        self.command(cwd, args, env).output().expect("bot-bottle")
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn each_refused_project_exits_2_and_creates_nothing() {
    let m = Machine::new("echo ran");
    let work = m.path("work");
    std::fs::create_dir_all(m.path("home/.ssh/keys")).expect("mkdir");
    std::fs::create_dir_all(m.path("home/.config")).expect("mkdir");
    let proj = m.path("work/proj");
    std::fs::create_dir_all(proj.join("src")).expect("mkdir");
    git(&proj, &["init", "-q"]);
    // A dotfiles repository at home: a directory below it that is not a
    // repository of its own has home as its git top.
    let dotfiles = m.path("dotfiles-home");
    std::fs::create_dir_all(dotfiles.join("notes")).expect("mkdir");
    git(&dotfiles, &["init", "-q"]);
    let state_in_proj = proj.join(".state");
    let config_in_proj = proj.join(".config");
    m.manifest(&config_in_proj.join("bot-bottle"), "echo ran", "");
    let mount = m.path("mount-manifest");
    m.manifest(&mount, "echo ran", "workspace: mount\n");
    // A git gate's deploy key kept in the project (and ignored by git, so a
    // copy would leave it out; a mount would not).
    write(&proj.join("keys/deploy"), "-----BEGIN OPENSSH PRIVATE KEY-----\n");
    let keyed = m.path("keyed-manifest");
    let key = format!(
        "git-gate:\n  repos:\n    app:\n      url: git@github.com:org/app.git\n      key: {{ provider: static, path: {} }}\n      host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\n",
        proj.join("keys/deploy").display()
    );
    m.manifest(&keyed, "echo ran", &key);
    // (what, where start runs, extra flags, environment, what the error says)
    type Case<'a> = (&'a str, PathBuf, Vec<&'a str>, Vec<(&'a str, PathBuf)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("home", m.path("home"), vec![], vec![], "your home directory"),
        ("a credential directory in home", m.path("home/.ssh/keys"), vec![], vec![], "where credentials are kept"),
        ("~/.config", m.path("home/.config"), vec![], vec![], "where credentials are kept"),
        ("root via --workspace", work.clone(), vec!["--workspace", "/"], vec![], "would be /"),
        ("a system directory", work.clone(), vec!["--workspace", "/etc"], vec![], "a system directory"),
        ("above home", m.path(""), vec![], vec![], "holds your home directory"),
        (
            "a dotfiles repository at home",
            dotfiles.join("notes"),
            vec![],
            vec![("HOME", dotfiles.clone())],
            "your home directory",
        ),
        ("the state dir inside", proj.clone(), vec![], vec![("XDG_STATE_HOME", state_in_proj)], "state directory"),
        ("the config dir inside", proj.clone(), vec![], vec![("XDG_CONFIG_HOME", config_in_proj)], "config directory"),
        (
            "mount from home",
            m.path("home"),
            vec![],
            vec![("BOT_BOTTLE_MANIFEST", mount.clone())],
            "your home directory",
        ),
        (
            "a deploy key inside",
            proj.clone(),
            vec![],
            vec![("BOT_BOTTLE_MANIFEST", keyed.clone())],
            "deploy key of git-gate repo `app`",
        ),
        ("a missing --workspace", work.clone(), vec!["--workspace", "nope"], vec![], "name an existing directory"),
        ("a file as --workspace", work.clone(), vec!["--workspace", "/etc/hostname"], vec![], "not a directory"),
    ];
    for (name, cwd, extra, env, expect) in cases {
        let before = tree(m.tmp.path());
        for dry in [false, true] {
            let mut args = vec!["start", "a"];
            args.extend(&extra);
            if dry {
                args.push("--dry-run");
            }
            let out = m.run(&cwd, &args, &env);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} (dry run: {dry}): {err}");
            assert!(err.contains("cannot start `a`") && err.contains(expect), "{name}: {err}");
            assert!(
                err.contains("--workspace DIR")
                    || err.contains("existing directory")
                    || err.contains("project's directory"),
                "{name}: the error says what to do: {err}"
            );
            assert_eq!(tree(m.tmp.path()), before, "{name} (dry run: {dry}) created something");
        }
    }
    // A project that is fine, for contrast: the dry run resolves it.
    let out = m.run(&proj.join("src"), &["start", "a", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = proj.canonicalize().expect("canonical");
    assert!(
        text(&out.stdout).contains(&format!("project    {} (the agent starts in /workspace/src)", shown.display()))
    );
}

/// A repository as a user leaves it: credentials in its config (in URLs,
/// headers, helpers, includes), in FETCH_HEAD and a reflog; ignored
/// secrets and build output; a symlink to a host secret.
fn messy_repo(m: &Machine, host_secret: &Path) -> PathBuf {
    let p = m.path("work/app");
    std::fs::create_dir_all(&p).expect("mkdir");
    git(&p, &["init", "-q"]);
    write(&p.join(".gitignore"), ".env\ntarget/\n");
    write(&p.join("src/lib.rs"), "// lib\n");
    write(&p.join("sub/dir/notes.txt"), "notes\n");
    git(&p, &["add", "."]);
    git(&p, &["commit", "-qm", "first"]);
    write(&p.join(".env"), &format!("GITHUB_TOKEN={TOKEN}\n"));
    write(&p.join("target/debug/app"), "build output\n");
    std::os::unix::fs::symlink(host_secret, p.join("secret-link")).expect("symlink");
    git(&p, &["remote", "add", "origin", &format!("https://x-access-token:{TOKEN}@github.com/org/app.git")]);
    git(&p, &["config", "http.https://github.com/.extraheader", &format!("AUTHORIZATION: basic {HEADER}")]);
    git(&p, &["config", "credential.helper", &format!("store --file={}", m.path("home/.git-credentials").display())]);
    git(&p, &["config", "include.path", &m.path("home/.gitconfig-tokens").display().to_string()]);
    write(&p.join(".git/FETCH_HEAD"), &format!("0000\t\tbranch 'main' of https://{TOKEN}@github.com/org/app\n"));
    p
}

#[test]
fn a_copied_repository_brings_in_no_credentials_and_no_ignored_files() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let m = Machine::new(
        "pwd; cd /workspace; ls -A; grep -rl -e ghp_ -e dGhlLWV4dHJh -e credential -e gitconfig-tokens . ; \
         echo grep-done; find / -xdev -name .env 2>/dev/null; readlink secret-link; cat secret-link 2>&1 | head -c 200; \
         echo; git status --porcelain; git remote get-url origin; git log --format=%s",
    );
    let host = m.path("host-secret");
    write(&host, "the host's secret\n");
    let repo = messy_repo(&m, &host);
    let out = m.run(&repo.join("sub/dir"), &["start", "a"], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "/workspace/sub/dir", "the agent starts where start ran:\n{stdout}");
    assert_eq!(&lines[1..7], [".git", ".gitignore", "secret-link", "src", "sub", "grep-done"], "{stdout}\n{stderr}");
    assert_eq!(lines[7], host.display().to_string(), "the symlink is kept as a symlink");
    assert!(lines[8].contains("No such file"), "the symlink resolves inside the bottle, not on the host: {stdout}");
    assert!(!stdout.contains("the host's secret") && !stdout.contains(TOKEN) && !stdout.contains(HEADER), "{stdout}");
    // origin now leads to the git gate's `local` (the project's repository).
    assert_eq!(&lines[10..], ["?? secret-link", "http://127.0.0.1:9420/local.git", "first"], "{stdout}");
    // `start` says what it removed, by name only.
    for said in [
        "removed from the copy's .git/config: remote.origin.url (credentials in its URL), http.https://github.com/.extraheader, credential.helper, include.path",
        "removed from the copy's .git/FETCH_HEAD: credentials in URLs",
        "left out what git ignores:",
    ] {
        assert!(stderr.contains(said), "`{said}` not said:\n{stderr}");
    }
    assert!(!stderr.contains(TOKEN) && !stderr.contains(HEADER), "{stderr}");
}

#[test]
fn the_workspace_flag_names_the_project_and_resume_keeps_it() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let m = Machine::new("pwd; ls /workspace; echo run >> /workspace/runs");
    let proj = m.path("work/other");
    write(&proj.join("README"), "hello\n");
    let out = m.run(&m.path("work"), &["start", "a", "--quiet", "--workspace", "other"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/workspace\nREADME\n");
    // Resumed from anywhere, the bottle keeps its project and its copy.
    let list = m.run(&m.path("home"), &["list", "-a", "--format", "json"], &[]);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let slug = rows[0]["slug"].as_str().expect("slug").to_owned();
    let out = m.run(Path::new("/"), &["resume", &slug, "--quiet"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/workspace\nREADME\nruns\n");
    assert!(!proj.join("runs").exists(), "the user's project is untouched");
}

#[test]
fn a_linked_worktree_works_inside() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let m = Machine::new("cd /workspace && git status --porcelain && git branch --show-current && git log --format=%s");
    let repo = messy_repo(&m, Path::new("/nonexistent"));
    let wt = m.path("work/feature");
    git(&repo, &["worktree", "add", "-q", "-b", "feature", wt.to_str().expect("utf8")]);
    write(&wt.join("src/feature.rs"), "// feature\n");
    git(&wt, &["add", "."]);
    git(&wt, &["commit", "-qm", "feature"]);
    let out = m.run(&wt, &["start", "a"], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "feature\nfeature\nfirst\n");
    assert!(stderr.contains("the git dir is outside the project"), "{stderr}");
}

#[test]
fn a_failed_copy_leaves_nothing_behind() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let m = Machine::new("echo ran");
    let proj = m.path("work/proj");
    for i in 0..50 {
        write(&proj.join(format!("f{i}")), "x");
    }
    let root = nix::unistd::geteuid().is_root();
    let out = if root {
        // Root reads everything; bot-bottle's state mounted inside the
        // project (which the path check cannot see) stops the copy.
        std::fs::create_dir_all(proj.join("zz")).expect("mkdir");
        std::fs::create_dir_all(m.path("state/bot-bottle")).expect("mkdir");
        let script = format!(
            "mount --bind {} {} && exec \"$@\"",
            m.path("state/bot-bottle").display(),
            proj.join("zz").display()
        );
        let c = m.command(&proj, &[], &[]);
        let bb = env!("CARGO_BIN_EXE_bot-bottle");
        let mut u = Command::new("unshare");
        u.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh", bb, "start", "a"])
            .current_dir(&proj)
            .env_clear()
            .envs(c.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
            .stdin(Stdio::null());
        u.output().expect("unshare")
    } else {
        std::fs::write(proj.join("f7"), "unreadable").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(proj.join("f7"), std::fs::Permissions::from_mode(0o000)).expect("chmod");
        m.run(&proj, &["start", "a"], &[])
    };
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("copying") && !text(&out.stdout).contains("ran"), "{err}");
    let bottles = m.path("state/bot-bottle/bottles");
    let slug = std::fs::read_dir(&bottles).expect("bottles").flatten().next().expect("a bottle").path();
    let left: Vec<String> = tree(&slug).into_iter().filter(|p| p.contains("workspace")).collect();
    assert!(left.is_empty(), "a partial copy is left: {left:?}");
}
