//! The git gate end to end: an agent in a native bottle commits and
//! pushes to `origin` (the gate's `local`), and the user's repository gains
//! exactly `bot-bottle/<slug>/<branch>`, nothing else; what the agent left
//! uncommitted lands as `bot-bottle/<slug>/uncommitted`; and nothing the
//! agent wrote into its copy's `.git` runs on the host at any step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::native::{available, panic_or_skip};

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "User")
        .env("GIT_AUTHOR_EMAIL", "user@example.com")
        .env("GIT_COMMITTER_NAME", "User")
        .env("GIT_COMMITTER_EMAIL", "user@example.com")
        // The project may belong to another uid than the test's (root).
        .args(["-c", "safe.directory=*"])
        .arg("-C")
        .arg(dir)
        .stdin(Stdio::null());
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().expect("git");
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn nix_is_root() -> bool {
    ok(Command::new("id").arg("-u")) == "0"
}

struct Project {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Project {
    fn repo(&self) -> &Path {
        self.dir.path()
    }

    /// The one bottle's slug.
    fn slug(&self) -> String {
        let bottles = self.state.path().join("bot-bottle/bottles");
        let mut s: Vec<String> = std::fs::read_dir(bottles)
            .expect("bottles")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(s.len(), 1, "{s:?}");
        s.remove(0)
    }

    fn start(&self) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
            .args(["start", "a", "--quiet"])
            .current_dir(self.repo())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.state.path())
            .env("XDG_STATE_HOME", self.state.path())
            .stdin(Stdio::null())
            .output()
            .expect("start")
    }
}

/// A project that is a git repository (`main` checked out, a branch
/// `feature`, a change staged), with a native bottle running `script` as
/// the agent.
fn project(script: &str) -> Project {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(m.join("bottles/b.yaml"), "backend: native\nresources: { pids: 512 }\n").expect("write");
    std::fs::write(
        m.join("agents/a.md"),
        format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {script:?}]\nbottle: b\n---\n"),
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "the user's notes\n").expect("write");
    ok(git(dir.path()).args(["init", "-q", "-b", "main"]));
    ok(git(dir.path()).args(["add", "-A"]));
    ok(git(dir.path()).args(["commit", "-qm", "the user's work"]));
    ok(git(dir.path()).args(["branch", "feature"]));
    // Something uncommitted of the user's own, which must stay as it is.
    std::fs::write(dir.path().join("draft.txt"), "the user's draft\n").expect("write");
    ok(git(dir.path()).args(["add", "draft.txt"]));
    Project { dir, state: tempfile::tempdir().expect("tempdir") }
}

/// Everything about the repository a landing must not change: every ref
/// but the bottle's own, HEAD, the index, the config, the working tree.
fn fingerprint(repo: &Path, slug: &str) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let refs = ok(git(repo).args(["for-each-ref", "--format=%(refname) %(objectname)"]));
    let others: Vec<&str> = refs.lines().filter(|l| !l.contains(&format!("refs/heads/bot-bottle/{slug}/"))).collect();
    f.insert("refs".into(), others.join("\n"));
    for file in ["HEAD", "config", "index"] {
        let bytes = std::fs::read(repo.join(".git").join(file)).unwrap_or_default();
        f.insert(file.into(), format!("{:x?}", bytes));
    }
    let mut tree = Vec::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p == repo.join(".git") {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            } else {
                tree.push(format!("{} {:x?}", p.display(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    tree.sort();
    f.insert("worktree".into(), tree.join("\n"));
    let hooks: Vec<String> = std::fs::read_dir(repo.join(".git/hooks"))
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    f.insert("hooks".into(), format!("{hooks:?}"));
    f
}

#[test]
fn a_push_to_local_lands_only_the_bottles_branch_and_uncommitted_work_lands_at_exit() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let p = project(
        "set -e; cd /workspace; \
         [ \"$(git remote get-url origin)\" = http://127.0.0.1:9420/local.git ]; \
         git fetch -q origin; git log -1 --format=%s origin/main; \
         echo 'the agent was here' >> notes.txt; git commit -qam 'agent: notes'; \
         git push -q origin main; echo pushed=$(git rev-parse HEAD); \
         git checkout -qb topic; echo t > topic.txt; git add topic.txt; git commit -qm 'agent: topic'; \
         git push -q origin topic; echo topic=$(git rev-parse HEAD); \
         for r in HEAD:refs/tags/v1 HEAD:refs/notes/x HEAD:refs/heads/bot-bottle/other/main; do \
           git push -q origin $r 2>/dev/null && echo \"accepted $r\" || echo \"refused $r\"; done; \
         git commit -q --amend -m rewritten; git push -q -f origin topic 2>/dev/null && echo forced || echo force-refused; \
         echo 'left over' > uncommitted.txt; echo 'more' >> notes.txt",
    );
    // As root, the project belongs to someone else: what lands in it must
    // still be theirs.
    let root = nix_is_root();
    if root {
        ok(Command::new("chown").args(["-R", "4242:4242"]).arg(p.repo()));
    }
    let before = fingerprint(p.repo(), "none");
    let out = p.start();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let slug = p.slug();
    let got = |k: &str| stdout.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or_default().to_owned();
    let (pushed, topic) = (got("pushed"), got("topic"));
    assert!(stdout.starts_with("the user's work\n"), "the agent fetched the user's branch: {stdout}");
    for r in ["HEAD:refs/tags/v1", "HEAD:refs/notes/x", "HEAD:refs/heads/bot-bottle/other/main"] {
        assert!(stdout.contains(&format!("refused {r}")), "{r}: {stdout}");
    }
    assert!(stdout.contains("force-refused"), "{stdout}");
    // Exactly the bottle's branches, with the agent's commit ids.
    let ours = ok(git(p.repo()).args([
        "for-each-ref",
        "--format=%(refname) %(objectname)",
        &format!("refs/heads/bot-bottle/{slug}/"),
    ]));
    let lines: Vec<&str> = ours.lines().collect();
    assert_eq!(lines.len(), 3, "{ours}");
    assert_eq!(lines[0], format!("refs/heads/bot-bottle/{slug}/main {pushed}"));
    assert_eq!(lines[1], format!("refs/heads/bot-bottle/{slug}/topic {topic}"));
    assert!(lines[2].starts_with(&format!("refs/heads/bot-bottle/{slug}/uncommitted ")), "{ours}");
    // Nothing else in the repository changed.
    assert_eq!(fingerprint(p.repo(), &slug), before);
    if root {
        let mut stack = vec![p.repo().join(".git")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
                use std::os::unix::fs::MetadataExt;
                let m = e.metadata().expect("meta");
                assert_eq!((m.uid(), m.gid()), (4242, 4242), "{} is not the owner's", e.path().display());
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    // The uncommitted work: on top of what the agent had checked out
    // (topic, amended: unknown to the gate, so the user's HEAD instead),
    // with every file of the workspace as it was left.
    let unc = format!("bot-bottle/{slug}/uncommitted");
    assert_eq!(ok(git(p.repo()).args(["show", &format!("{unc}:uncommitted.txt")])), "left over");
    assert_eq!(
        ok(git(p.repo()).args(["show", &format!("{unc}:notes.txt")])),
        "the user's notes\nthe agent was here\nmore"
    );
    assert_eq!(ok(git(p.repo()).args(["show", &format!("{unc}:topic.txt")])), "t");
    assert_eq!(ok(git(p.repo()).args(["log", "-1", "--format=%an", &unc])), "bot-bottle");
    // The summary says where the work is and how to look at it there.
    assert!(stderr.contains(&format!("bot-bottle/{slug}/main at {}", &pushed[..10])), "{stderr}");
    assert!(stderr.contains(&format!("git -C {} log bot-bottle/{slug}/main", p.repo().display())), "{stderr}");
    assert!(stderr.contains("(what the workspace held uncommitted)"), "{stderr}");
    assert!(stderr.contains("refused a push to local"), "{stderr}");
    let ws = p.state.path().join("bot-bottle/bottles").join(&slug).join("workspace");
    assert!(!stderr.contains(&format!("cd {}", ws.display())) && !stderr.contains(&format!("-C {}", ws.display())));
    let audit = std::fs::read_to_string(p.state.path().join("bot-bottle/bottles").join(&slug).join("audit.jsonl"))
        .expect("audit");
    assert!(audit.contains("\"service\":\"git-gate\"") && audit.contains("\"op\":\"land\""), "{audit}");
}

/// Marker commands: each, if run on the host, creates a file in `m`.
fn evil_config(m: &Path) -> String {
    let t = |what: &str| format!("touch {}/{what}", m.display());
    format!(
        "[core]\n\tfsmonitor = \"{fsmonitor}\"\n\tpager = \"{pager}\"\n\thooksPath = /workspace/.git/evil-hooks\n\
         \tsshCommand = \"{ssh}\"\n\teditor = \"{editor}\"\n\taskPass = \"{askpass}\"\n\tattributesFile = /workspace/.git/evil-attributes\n\
         [filter \"evil\"]\n\tclean = \"{clean}\"\n\tsmudge = \"{smudge}\"\n\tprocess = \"{process}\"\n\trequired = true\n\
         [diff \"evil\"]\n\ttextconv = \"{textconv}\"\n\tcommand = \"{diffcmd}\"\n\
         [include]\n\tpath = /workspace/.git/evil.inc\n\
         [uploadpack]\n\tpackObjectsHook = \"{packhook}\"\n\
         [credential]\n\thelper = \"!{cred}\"\n",
        fsmonitor = t("fsmonitor"),
        pager = t("pager"),
        ssh = t("ssh"),
        editor = t("editor"),
        askpass = t("askpass"),
        clean = t("clean"),
        smudge = t("smudge"),
        process = t("process"),
        textconv = t("textconv"),
        diffcmd = t("diff"),
        packhook = t("packhook"),
        cred = t("credential"),
    )
}

#[test]
fn an_agent_filled_git_config_runs_nothing_on_the_host_at_any_step() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let markers = tempfile::tempdir().expect("tempdir");
    let m = markers.path();
    let include = format!("[core]\n\tfsmonitor = \"touch {}/include\"\n", m.display());
    let hook = format!("#!/bin/sh\ntouch {}/hook-$(basename \"$0\")\n", m.display());
    // The agent pushes, then fills its copy's .git with everything that
    // runs a command and leaves changes uncommitted.
    let script = format!(
        "set -e; cd /workspace; echo work >> notes.txt; git commit -qam work; git push -q origin main; \
         cat > .git/config.evil <<'EOF'\n{config}EOF\n\
         cat .git/config.evil >> .git/config; rm .git/config.evil; \
         printf '%s' '{include}' > .git/evil.inc; \
         echo '* filter=evil diff=evil' > .git/evil-attributes; echo '* filter=evil diff=evil' > .gitattributes; \
         mkdir -p .git/evil-hooks; \
         for h in pre-commit post-commit pre-push post-checkout post-index-change reference-transaction \
           pre-receive update post-receive post-update fsmonitor-watchman; do \
           printf '%s' '{hook}' > .git/evil-hooks/$h; cp .git/evil-hooks/$h .git/hooks/$h; \
           chmod +x .git/evil-hooks/$h .git/hooks/$h; done; \
         echo 'uncommitted' > left.txt; echo done",
        config = evil_config(m),
        include = include.replace('\'', ""),
        hook = hook,
    );
    let p = project(&script);
    let out = p.start();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("done"), "{stdout}");
    let slug = p.slug();
    // The evil config really is in the kept copy.
    let ws = p.state.path().join("bot-bottle/bottles").join(&slug).join("workspace");
    let cfg = std::fs::read_to_string(ws.join(".git/config")).expect("config");
    assert!(cfg.contains("fsmonitor") && cfg.contains("evil-hooks"), "{cfg}");
    // None of the agent's commands ran on the host...
    let ran: Vec<PathBuf> = std::fs::read_dir(m).expect("markers").flatten().map(|e| e.path()).collect();
    assert!(ran.is_empty(), "ran on the host: {ran:?}\n{stderr}");
    // ...though every step ran: the push landed, and the uncommitted work.
    let unc = format!("bot-bottle/{slug}/uncommitted");
    assert!(ok(git(p.repo()).args(["branch", "--list", &format!("bot-bottle/{slug}/main")])).contains("main"));
    assert_eq!(ok(git(p.repo()).args(["show", &format!("{unc}:left.txt")])), "uncommitted");
    assert_eq!(ok(git(p.repo()).args(["show", &format!("{unc}:.gitattributes")])), "* filter=evil diff=evil");
    // Resuming and cleaning up do not run them either.
    let out = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .args(["cleanup"])
        .current_dir(p.repo())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", p.state.path())
        .env("XDG_STATE_HOME", p.state.path())
        .output()
        .expect("cleanup");
    assert!(out.status.success());
    let ran: Vec<PathBuf> = std::fs::read_dir(m).expect("markers").flatten().map(|e| e.path()).collect();
    assert!(ran.is_empty(), "ran on the host: {ran:?}");
}

const FORGE_TOKEN: &str = "forge-token-0b9d8c7e6f5a4b3c2d1e";

/// fake-forge (built beside bot-bottle by `cargo test --workspace`),
/// running for one test: its address and directory.
struct Forge {
    child: std::process::Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Forge {
    fn start() -> Result<Forge, String> {
        let exe = Path::new(env!("CARGO_BIN_EXE_bot-bottle")).with_file_name("fake-forge");
        if !exe.exists() {
            return Err(format!("{} is not built (run `cargo test --workspace`)", exe.display()));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(exe)
            .arg("--dir")
            .arg(dir.path())
            .args(["--token", FORGE_TOKEN, "--repo", "org/app"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("fake-forge");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line)
            .expect("read");
        Ok(Forge { child, addr: line.trim().to_owned(), dir })
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Titles of `org/app`'s deploy keys.
    fn titles(&self) -> Vec<String> {
        let out = ok(Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(self.ca())
            .args(["-H", &format!("Authorization: token {FORGE_TOKEN}")])
            .arg(format!("https://{}/api/v1/repos/org/app/keys", self.addr)));
        let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v.iter().map(|k| k["title"].as_str().expect("title").to_owned()).collect()
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project whose bottle has an upstream with a Gitea deploy key; the
/// agent runs `script`.
fn forge_project(forge: &Forge, script: &str) -> Project {
    let p = project(script);
    std::fs::write(
        p.repo().join(".bot-bottle/bottles/b.yaml"),
        format!(
            "backend: native\nresources: {{ pids: 512 }}\ngit-gate:\n  repos:\n    app:\n      url: ssh://git@127.0.0.1:1/org/app.git\n      \
             key: {{ provider: gitea, forge_token_env: FORGE_TOKEN, api: \"https://{}/api/v1\" }}\n      \
             host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\n",
            forge.addr
        ),
    )
    .expect("write");
    p
}

fn forge_start(p: &Project, forge: &Forge, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bot-bottle"));
    c.args(args)
        .current_dir(p.repo())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", p.state.path())
        .env("XDG_STATE_HOME", p.state.path())
        .env("FORGE_TOKEN", FORGE_TOKEN)
        .env("BOT_BOTTLE_UPSTREAM_CA", forge.ca())
        .stdin(Stdio::null());
    c
}

/// Reads the child's stdout until `line`.
fn wait_for(child: &mut std::process::Child, line: &str) -> String {
    let mut r = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    loop {
        let mut l = Vec::new();
        if std::io::BufRead::read_until(&mut r, b'\n', &mut l).expect("read") == 0 {
            panic!("the agent ended before `{line}`: {seen}");
        }
        let l = String::from_utf8_lossy(&l);
        seen.push_str(&l);
        if l.trim() == line {
            return seen;
        }
    }
}

#[test]
fn a_deploy_key_lives_as_long_as_its_bottle_and_never_enters_it() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let forge = match Forge::start() {
        Ok(f) => f,
        Err(why) => return panic_or_skip(&why),
    };
    // The agent looks everywhere it can, then waits to be told to go.
    let p = forge_project(
        &forge,
        "env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n'; \
         for d in /run /home /tmp /workspace /etc /dev/shm; do find \"$d\" -type f -size -4M 2>/dev/null | \
         while read -r f; do cat \"$f\" 2>/dev/null; done; done; echo dump-done; \
         while [ ! -e /workspace/go ]; do sleep 0.05; done",
    );
    let mut child = forge_start(&p, &forge, &["start", "a", "--quiet"]).stdout(Stdio::piped()).spawn().expect("start");
    let dump = wait_for(&mut child, "dump-done");
    let slug = p.slug();
    assert_eq!(forge.titles(), [format!("bot-bottle {slug}")], "one key, titled with the slug, while it runs");
    let state = p.state.path().join("bot-bottle/bottles").join(&slug);
    let private = std::fs::read_to_string(state.join("gate/keys/app")).expect("the gate holds the private key");
    let body: String = private.lines().filter(|l| !l.starts_with("-----")).collect();
    std::fs::write(state.join("workspace/go"), "").expect("go");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dump.len() > 10_000, "the dump ran: {} bytes", dump.len());
    assert!(!dump.contains(FORGE_TOKEN), "the forge token is visible inside the bottle");
    for chunk in body.as_bytes().chunks(32) {
        assert!(
            !dump.contains(std::str::from_utf8(chunk).expect("utf8")),
            "the deploy key is visible inside the bottle"
        );
    }
    assert!(forge.titles().is_empty(), "the deploy key outlived its bottle");
}

#[test]
fn cleanup_deletes_the_deploy_key_of_a_killed_launcher() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let forge = match Forge::start() {
        Ok(f) => f,
        Err(why) => return panic_or_skip(&why),
    };
    let p = forge_project(&forge, "echo up; sleep 60");
    let mut child = forge_start(&p, &forge, &["start", "a", "--quiet"]).stdout(Stdio::piped()).spawn().expect("start");
    wait_for(&mut child, "up");
    let slug = p.slug();
    assert_eq!(forge.titles(), [format!("bot-bottle {slug}")]);
    Command::new("kill").args(["-KILL", &child.id().to_string()]).status().expect("kill");
    let _ = child.wait();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(forge.titles().len(), 1, "a killed launcher cannot delete its key");
    let out = forge_start(&p, &forge, &["cleanup"]).output().expect("cleanup");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("deleted 1 deploy key `bot-bottle {slug}` on org/app")), "{said}");
    assert!(forge.titles().is_empty());
}
