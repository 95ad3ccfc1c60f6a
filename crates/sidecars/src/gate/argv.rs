//! Every git and ssh command line the gate runs, built by pure functions.
//!
//! Nothing here spawns anything, so each builder is unit-tested, including
//! the inputs it must refuse: a path, URL or ref that git could read as an
//! option, a ref outside `refs/`, an object id that is not one.
//!
//! Every git the gate runs starts from [`base_env`]: an otherwise empty
//! environment, no system or global config, an empty `HOME`, no prompts and
//! no replace refs. Options that matter for safety are given with `-c` on
//! the command line, which outranks any config a repository could hold.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// One git invocation: its arguments (after the program) and the variables
/// it adds to [`base_env`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GitCmd {
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(&'static str, OsString)>,
}

impl GitCmd {
    fn new<I: IntoIterator<Item = S>, S: Into<OsString>>(args: I) -> GitCmd {
        GitCmd { args: args.into_iter().map(Into::into).collect(), env: Vec::new() }
    }

    fn arg(mut self, a: impl Into<OsString>) -> GitCmd {
        self.args.push(a.into());
        self
    }

    fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, more: I) -> GitCmd {
        self.args.extend(more.into_iter().map(Into::into));
        self
    }

    pub(crate) fn env(mut self, k: &'static str, v: impl Into<OsString>) -> GitCmd {
        self.env.push((k, v.into()));
        self
    }

    /// Shown in errors: the arguments, never the environment (which may
    /// hold an https token).
    pub(crate) fn display(&self) -> String {
        let mut s = String::from("git");
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgvError {
    #[error("{what} `{value}` could be read as an option")]
    Dash { what: &'static str, value: String },
    #[error("{what} `{value}` is not valid: {why}")]
    Invalid { what: &'static str, value: String, why: &'static str },
}

fn dash(what: &'static str, value: &OsStr) -> Result<(), ArgvError> {
    if value.to_string_lossy().starts_with('-') {
        return Err(ArgvError::Dash { what, value: value.to_string_lossy().into_owned() });
    }
    Ok(())
}

/// A path the gate hands to git or to a shell: absolute, and free of the
/// bytes a command line or a config value would misread.
pub(crate) fn check_path(what: &'static str, p: &Path) -> Result<(), ArgvError> {
    let s = p.to_string_lossy();
    let invalid = |why| Err(ArgvError::Invalid { what, value: s.clone().into_owned(), why });
    if !p.is_absolute() {
        return invalid("must be absolute");
    }
    if s.chars().any(|c| c.is_control()) {
        return invalid("holds a control character");
    }
    Ok(())
}

/// A full object id: 40 (sha1) or 64 (sha256) lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Oid(String);

impl Oid {
    pub(crate) fn parse(s: &str) -> Result<Oid, ArgvError> {
        let ok = matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Oid(s.to_owned()))
        } else {
            Err(ArgvError::Invalid { what: "object id", value: s.to_owned(), why: "not a full hex object id" })
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The abbreviation shown to people.
    pub(crate) fn short(&self) -> &str {
        &self.0[..10]
    }
}

impl std::fmt::Display for Oid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full ref name under `refs/`, by git's `check-ref-format` rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RefName(String);

impl RefName {
    pub(crate) fn parse(s: &str) -> Result<RefName, ArgvError> {
        let invalid = |why| Err(ArgvError::Invalid { what: "ref", value: s.to_owned(), why });
        if !s.starts_with("refs/") {
            return invalid("not under refs/");
        }
        if s.len() > 1024 {
            return invalid("too long");
        }
        if s.ends_with('/') || s.ends_with('.') || s.contains("..") || s.contains("//") || s.contains("@{") {
            return invalid("a ref may not end in `/` or `.`, nor hold `..`, `//` or `@{`");
        }
        if s.bytes().any(|b| b.is_ascii_control() || b" ~^:?*[\\\x7f".contains(&b)) {
            return invalid("holds a character git does not allow in refs");
        }
        if s.split('/').any(|c| c.is_empty() || c.starts_with('.') || c.ends_with(".lock")) {
            return invalid("a path component is empty, starts with `.` or ends with `.lock`");
        }
        Ok(RefName(s.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The branch name, for refs under `refs/heads/`.
    pub(crate) fn branch(&self) -> Option<&str> {
        self.0.strip_prefix("refs/heads/")
    }
}

impl std::fmt::Display for RefName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Quotes `s` for a POSIX shell (git runs `GIT_SSH_COMMAND`,
/// `--upload-pack` and `--receive-pack` through one).
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The environment every git the gate runs starts from; nothing of the
/// launcher's own environment reaches git.
pub(crate) fn base_env(home: &Path, path: &OsStr) -> Vec<(&'static str, OsString)> {
    vec![
        ("PATH", path.to_owned()),
        ("HOME", home.into()),
        ("XDG_CONFIG_HOME", home.join(".config").into()),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
        ("GIT_ATTR_NOSYSTEM", "1".into()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
        ("GIT_ASKPASS", "/bin/false".into()),
        ("SSH_ASKPASS", "/bin/false".into()),
        // A replace ref would make git show one object and send another.
        ("GIT_NO_REPLACE_OBJECTS", "1".into()),
        // No transport that runs a command (`ext::`) or speaks plain text.
        ("GIT_ALLOW_PROTOCOL", "file:ssh:https".into()),
        ("LC_ALL", "C".into()),
    ]
}

/// `git init --bare` for one of the gate's repositories.
pub(crate) fn init_bare(dir: &Path) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    Ok(GitCmd::new(["init", "--quiet", "--bare", "--"]).arg(dir))
}

/// Refs a fetch from the gate never shows: the landed-branch namespace
/// (`local`) is for pushes only.
const HIDDEN: &str = "uploadpack.hideRefs=refs/namespaces/";

/// `git upload-pack` over stateless RPC (one HTTP request), or its ref
/// advertisement.
pub(crate) fn upload_pack(dir: &Path, advertise: bool) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    let mut c = GitCmd::new(["-c", HIDDEN, "upload-pack", "--stateless-rpc"]);
    if advertise {
        c = c.arg("--advertise-refs");
    }
    Ok(c.args(["--strict", "--"]).arg(dir))
}

/// What a push to one gate repository may do, as receive-pack enforces it
/// on its own (a second wall behind the gate's check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReceivePolicy {
    pub(crate) allow_force_push: bool,
    pub(crate) allow_delete: bool,
}

/// `git receive-pack` over stateless RPC, with the gate's hook directory
/// (its `pre-receive` hands each push to the gate), objects checked, and
/// nothing else that could run.
pub(crate) fn receive_pack(
    dir: &Path,
    hooks: &Path,
    policy: ReceivePolicy,
    advertise: bool,
) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    check_path("hooks directory", hooks)?;
    let mut hooks_path = OsString::from("core.hooksPath=");
    hooks_path.push(hooks);
    let mut c = GitCmd::new(["-c"])
        .arg(hooks_path)
        .args(["-c", "receive.fsckObjects=true"])
        .args(["-c", &format!("receive.denyDeletes={}", !policy.allow_delete)])
        .args(["-c", &format!("receive.denyNonFastForwards={}", !policy.allow_force_push)])
        .args(["-c", "receive.autogc=false"])
        .args(["-c", "receive.advertisePushOptions=false"])
        .args(["-c", "receive.shallowUpdate=false"])
        .args(["receive-pack", "--stateless-rpc"]);
    if advertise {
        c = c.arg("--advertise-refs");
    }
    Ok(c.arg("--").arg(dir))
}

/// How the gate authenticates to an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Remote {
    /// An ssh URL, with the deploy key and a `known_hosts` holding only the
    /// pinned host key under `alias`.
    Ssh { url: String, ssh: SshCommand },
    /// An https URL and the `Authorization` header value (secret).
    Https { url: String, authorization: String, ca_file: Option<std::path::PathBuf> },
    /// The project's own repository on this host; `owner` (uid, gid) when
    /// the gate runs as root and the repository is someone else's, so that
    /// what lands there is theirs.
    Local { path: std::path::PathBuf, owner: Option<(u32, u32)> },
}

impl Remote {
    fn url(&self) -> Result<OsString, ArgvError> {
        let url: OsString = match self {
            Remote::Ssh { url, .. } | Remote::Https { url, .. } => url.into(),
            Remote::Local { path, .. } => {
                check_path("repository", path)?;
                path.into()
            }
        };
        dash("remote", &url)?;
        Ok(url)
    }

    /// What this transport needs in git's environment.
    fn env(&self, mut c: GitCmd) -> GitCmd {
        match self {
            Remote::Ssh { ssh, .. } => {
                c = c
                    .env("GIT_SSH_COMMAND", ssh.render())
                    .env("GIT_SSH_VARIANT", "ssh")
                    .env("GIT_ALLOW_PROTOCOL", "ssh");
            }
            Remote::Https { url, authorization, ca_file } => {
                // Config from the environment, not `-c`: a command line is
                // readable in /proc by anyone, an environment only by its owner.
                let mut pairs = vec![
                    (format!("http.{url}.extraHeader"), format!("Authorization: {authorization}")),
                    ("credential.helper".to_owned(), String::new()),
                    ("http.followRedirects".to_owned(), "false".to_owned()),
                ];
                if let Some(ca) = ca_file {
                    pairs.push(("http.sslCAInfo".to_owned(), ca.to_string_lossy().into_owned()));
                }
                c = c.env("GIT_CONFIG_COUNT", pairs.len().to_string());
                for (i, (k, v)) in pairs.into_iter().enumerate() {
                    c = c.env(config_key(i), k).env(config_value(i), v);
                }
                c = c.env("GIT_ALLOW_PROTOCOL", "https");
            }
            Remote::Local { .. } => c = c.env("GIT_ALLOW_PROTOCOL", "file"),
        }
        c
    }

    /// For the project's repository: the command git runs there, with its
    /// hooks off and ownership accepted (it is the user's own repository,
    /// which bot-bottle may run as another uid).
    fn remote_program(&self, program: &str, extra: &[&str]) -> Option<String> {
        let Remote::Local { path, owner } = self else { return None };
        let mut s = String::new();
        if let Some((uid, gid)) = owner {
            s.push_str(&format!("setpriv --reuid={uid} --regid={gid} --clear-groups -- "));
        }
        s.push_str(&format!(
            "git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c safe.directory={}",
            sh_quote(&path.to_string_lossy())
        ));
        for e in extra {
            s.push_str(" -c ");
            s.push_str(e);
        }
        s.push(' ');
        s.push_str(program);
        Some(s)
    }
}

// `GIT_CONFIG_KEY_<n>` names are built at runtime; git reads up to
// `GIT_CONFIG_COUNT` of them. The gate needs at most a handful.
fn config_key(i: usize) -> &'static str {
    ["GIT_CONFIG_KEY_0", "GIT_CONFIG_KEY_1", "GIT_CONFIG_KEY_2", "GIT_CONFIG_KEY_3"][i]
}

fn config_value(i: usize) -> &'static str {
    ["GIT_CONFIG_VALUE_0", "GIT_CONFIG_VALUE_1", "GIT_CONFIG_VALUE_2", "GIT_CONFIG_VALUE_3"][i]
}

/// The `ssh` command git runs for an upstream: the deploy key and nothing
/// else, the pinned host key as the only known host, no agent, no
/// forwarding, no prompts, no user or system ssh config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SshCommand {
    pub(crate) program: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
    pub(crate) known_hosts: std::path::PathBuf,
    /// The name the pinned key is filed under in `known_hosts`.
    pub(crate) alias: String,
    pub(crate) connect_timeout_secs: u32,
}

impl SshCommand {
    pub(crate) fn check(&self) -> Result<(), ArgvError> {
        check_path("ssh program", &self.program)?;
        check_path("deploy key", &self.key)?;
        check_path("known_hosts", &self.known_hosts)?;
        let alias_ok = !self.alias.is_empty()
            && !self.alias.starts_with('-')
            && self.alias.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !alias_ok {
            return Err(ArgvError::Invalid {
                what: "host key alias",
                value: self.alias.clone(),
                why: "letters, digits, `.`, `_` and `-`",
            });
        }
        Ok(())
    }

    /// The shell command for `GIT_SSH_COMMAND`; git appends its own
    /// arguments (`-p PORT`, the host, the remote command).
    pub(crate) fn render(&self) -> String {
        let q = |p: &Path| sh_quote(&p.to_string_lossy());
        let mut s = format!("{} -F /dev/null -i {}", q(&self.program), q(&self.key));
        for o in [
            "IdentitiesOnly=yes".to_owned(),
            "IdentityAgent=none".to_owned(),
            "BatchMode=yes".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            format!("UserKnownHostsFile={}", q(&self.known_hosts)),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            format!("HostKeyAlias={}", self.alias),
            "CheckHostIP=no".to_owned(),
            "UpdateHostKeys=no".to_owned(),
            "ForwardAgent=no".to_owned(),
            "ForwardX11=no".to_owned(),
            "ClearAllForwardings=yes".to_owned(),
            "PermitLocalCommand=no".to_owned(),
            "ProxyCommand=none".to_owned(),
            "ProxyJump=none".to_owned(),
            "ControlMaster=no".to_owned(),
            "ControlPath=none".to_owned(),
            "PasswordAuthentication=no".to_owned(),
            "KbdInteractiveAuthentication=no".to_owned(),
            "PubkeyAuthentication=yes".to_owned(),
            format!("ConnectTimeout={}", self.connect_timeout_secs),
            "ServerAliveInterval=15".to_owned(),
            "ServerAliveCountMax=4".to_owned(),
        ] {
            s.push_str(" -o ");
            s.push_str(&o);
        }
        s
    }

    /// The `known_hosts` line that pins `key` under this command's alias.
    pub(crate) fn known_hosts_line(&self, key_type: &str, base64: &str) -> String {
        format!("{} {key_type} {base64}\n", self.alias)
    }
}

/// Refreshes a gate repository from its upstream: branches and tags, as the
/// upstream has them now. For `local` (`bottles`: true), no bottle's landed
/// branches (`bot-bottle/*`): see [`fetch_landed`] for this bottle's own.
pub(crate) fn fetch(dir: &Path, remote: &Remote, bottles: bool) -> Result<GitCmd, ArgvError> {
    let mut c = fetch_cmd(dir, remote)?.args(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]);
    if bottles {
        c = c.arg("^refs/heads/bot-bottle/*");
    }
    Ok(c)
}

/// This bottle's landed branches in the project's repository
/// (`bot-bottle/<slug>/B`), filed under the namespace receive-pack works in
/// (as `B`), so a push is checked against what the project has now. A
/// separate fetch: a negative refspec would exclude them from any other.
pub(crate) fn fetch_landed(dir: &Path, remote: &Remote, prefix: &str) -> Result<GitCmd, ArgvError> {
    check_landed_prefix(prefix)?;
    Ok(fetch_cmd(dir, remote)?.arg(format!("+refs/heads/{prefix}*:refs/namespaces/{LANDED_NS}/refs/heads/*")))
}

/// `git fetch --prune` from `remote` into `dir`, refspecs to follow.
fn fetch_cmd(dir: &Path, remote: &Remote) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    let url = remote.url()?;
    let mut c = GitCmd::new(["--git-dir"]).arg(dir).args([
        "fetch",
        "--quiet",
        "--prune",
        "--no-tags",
        "--no-write-fetch-head",
        "--no-recurse-submodules",
    ]);
    if let Some(p) = remote.remote_program("upload-pack", &[]) {
        c = c.arg(format!("--upload-pack={p}"));
    }
    Ok(remote.env(c.arg("--end-of-options").arg(url)))
}

/// The namespace of `local` that receive-pack works in: there a branch `B`
/// is this bottle's `bot-bottle/<slug>/B` in the host repository.
pub(crate) const LANDED_NS: &str = "landed";

fn check_landed_prefix(prefix: &str) -> Result<(), ArgvError> {
    let ok = prefix.starts_with("bot-bottle/")
        && prefix.ends_with('/')
        && RefName::parse(&format!("refs/heads/{prefix}x")).is_ok()
        && !prefix.contains('*');
    if ok {
        Ok(())
    } else {
        Err(ArgvError::Invalid {
            what: "landing prefix",
            value: prefix.to_owned(),
            why: "must be `bot-bottle/<slug>/`",
        })
    }
}

/// One ref update to forward: `old` is what the destination must hold now
/// (zero: the ref must not exist); `new` zero deletes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Update {
    pub(crate) old: Oid,
    pub(crate) new: Oid,
    pub(crate) dst: RefName,
}

/// Forwards checked updates: all or nothing (`--atomic`), each one only if
/// the destination still holds the value the check was made against
/// (`--force-with-lease` with an explicit expectation).
pub(crate) fn push(dir: &Path, remote: &Remote, updates: &[Update], force: bool) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    if updates.is_empty() {
        return Err(ArgvError::Invalid { what: "push", value: String::new(), why: "nothing to push" });
    }
    let url = remote.url()?;
    let mut c = GitCmd::new(["--git-dir"]).arg(dir).args(["push", "--porcelain", "--atomic", "--no-verify"]);
    if let Some(p) = remote.remote_program(
        "receive-pack",
        &[
            "receive.denyCurrentBranch=refuse",
            "receive.fsckObjects=true",
            if force { "receive.denyNonFastForwards=false" } else { "receive.denyNonFastForwards=true" },
            "receive.denyDeletes=true",
        ],
    ) {
        c = c.arg(format!("--receive-pack={p}"));
    }
    for u in updates {
        let expect = if u.old.is_zero() { String::new() } else { u.old.to_string() };
        c = c.arg(format!("--force-with-lease={}:{expect}", u.dst));
    }
    c = c.arg("--end-of-options").arg(url);
    for u in updates {
        if u.new.is_zero() {
            c = c.arg(format!(":{}", u.dst));
        } else {
            c = c.arg(format!("{}:{}", u.new, u.dst));
        }
    }
    Ok(remote.env(c))
}

/// The object environment of a push under check: its quarantine first,
/// the repository's own objects behind it.
pub(crate) fn quarantine_env(c: GitCmd, quarantine: &Path, objects: &Path) -> GitCmd {
    c.env("GIT_OBJECT_DIRECTORY", quarantine).env("GIT_ALTERNATE_OBJECT_DIRECTORIES", objects)
}

/// Every object the new tips bring that the repository does not already
/// reach, with the path each blob and tree was first found at. (On the
/// command line: git before 2.42 takes no `--not`/`--all` on stdin.)
pub(crate) fn rev_list_new(dir: &Path, tips: &[Oid]) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    Ok(GitCmd::new(["--git-dir"])
        .arg(dir)
        .args(["rev-list", "--objects"])
        .args(tips.iter().map(Oid::as_str))
        .args(["--not", "--all"]))
}

/// The branches and tags of a gate repository, one name a line.
pub(crate) fn list_refs(dir: &Path) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    Ok(GitCmd::new(["--git-dir"]).arg(dir).args(["for-each-ref", "--format=%(refname)", "refs/heads/", "refs/tags/"]))
}

/// Objects' types, sizes and contents, in stdin order.
pub(crate) fn cat_file_batch(dir: &Path) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    Ok(GitCmd::new(["--git-dir"]).arg(dir).args(["cat-file", "--batch", "--buffer"]))
}

/// Exit 0 when `old` is an ancestor of `new` (a fast-forward).
pub(crate) fn is_ancestor(dir: &Path, old: &Oid, new: &Oid) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    Ok(GitCmd::new(["--git-dir"])
        .arg(dir)
        .args(["merge-base", "--is-ancestor", "--end-of-options"])
        .args([old.as_str(), new.as_str()]))
}

/// The type of one object.
pub(crate) fn object_type(dir: &Path, oid: &Oid) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    Ok(GitCmd::new(["--git-dir"]).arg(dir).args(["cat-file", "-t", oid.as_str()]))
}

/// `ssh-keygen` making a fresh ed25519 deploy key at `path` (no passphrase).
pub(crate) fn ssh_keygen(path: &Path, comment: &str) -> Result<Vec<OsString>, ArgvError> {
    check_path("key file", path)?;
    if comment.starts_with('-') || comment.chars().any(|c| c.is_control()) {
        return Err(ArgvError::Invalid {
            what: "key comment",
            value: comment.to_owned(),
            why: "no `-` first, no control characters",
        });
    }
    Ok(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]
        .into_iter()
        .map(OsString::from)
        .chain([path.as_os_str().to_owned()])
        .collect())
}

/// A snapshot of a working tree, made by bot-bottle's own git: a fresh git
/// dir (`git_dir`), a fresh index, the tree at `work`. None of the tree's
/// own `.git` (config, hooks) is read: `GIT_DIR` points elsewhere, and
/// `exclude` (nested repositories) is left out, so no other repository's
/// files are read either.
pub(crate) fn snapshot_add(
    git_dir: &Path,
    work: &Path,
    index: &Path,
    exclude: &[OsString],
) -> Result<GitCmd, ArgvError> {
    check_path("git dir", git_dir)?;
    check_path("working tree", work)?;
    check_path("index", index)?;
    let mut c = GitCmd::new([
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.untrackedCache=false",
    ])
    .args(["-c", "core.symlinks=true", "-c", "core.autocrlf=false", "-c", "core.safecrlf=false"])
    .args(["-c", "advice.addEmbeddedRepo=false", "add", "--all", "--", "."]);
    for e in exclude {
        let mut spec = OsString::from(":(exclude,top,literal)");
        spec.push(e);
        c = c.arg(spec);
    }
    Ok(c.env("GIT_DIR", git_dir).env("GIT_WORK_TREE", work).env("GIT_INDEX_FILE", index))
}

/// The tree of the snapshot index.
pub(crate) fn write_tree(git_dir: &Path, index: &Path) -> Result<GitCmd, ArgvError> {
    check_path("git dir", git_dir)?;
    check_path("index", index)?;
    Ok(GitCmd::new(["write-tree"]).env("GIT_DIR", git_dir).env("GIT_INDEX_FILE", index))
}

/// A commit of `tree` on `parents`, with bot-bottle as author.
pub(crate) fn commit_tree(git_dir: &Path, tree: &Oid, parents: &[Oid], message: &str) -> Result<GitCmd, ArgvError> {
    check_path("git dir", git_dir)?;
    let mut c = GitCmd::new(["commit-tree", tree.as_str()]);
    for p in parents {
        c = c.args(["-p", p.as_str()]);
    }
    Ok(c.args(["-m", message])
        .env("GIT_DIR", git_dir)
        .env("GIT_AUTHOR_NAME", "bot-bottle")
        .env("GIT_AUTHOR_EMAIL", "bot-bottle@localhost")
        .env("GIT_COMMITTER_NAME", "bot-bottle")
        .env("GIT_COMMITTER_EMAIL", "bot-bottle@localhost"))
}

/// Points a gate repository's `HEAD` at the branch its upstream's names,
/// so a clone checks out what a clone of the upstream would.
pub(crate) fn set_head(dir: &Path, branch: &RefName) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    Ok(GitCmd::new(["--git-dir"]).arg(dir).args(["symbolic-ref", "HEAD", branch.as_str()]))
}

/// The value of one ref, or nothing (`rev-parse --verify --quiet`).
pub(crate) fn resolve(dir: &Path, rev: &str) -> Result<GitCmd, ArgvError> {
    check_path("repository", dir)?;
    dash("revision", OsStr::new(rev))?;
    Ok(GitCmd::new(["--git-dir"]).arg(dir).args(["rev-parse", "--verify", "--quiet", "--end-of-options", rev]))
}

/// `HEAD` of a remote and the branch it names, read through the same
/// locked-down transport as a refresh.
pub(crate) fn ls_remote_head(remote: &Remote) -> Result<GitCmd, ArgvError> {
    let url = remote.url()?;
    let mut c = GitCmd::new(["ls-remote", "--symref"]);
    if let Some(p) = remote.remote_program("upload-pack", &[]) {
        c = c.arg(format!("--upload-pack={p}"));
    }
    Ok(remote.env(c.arg("--end-of-options").arg(url).arg("HEAD")))
}

#[cfg(test)]
#[path = "argv_tests.rs"]
mod tests;
