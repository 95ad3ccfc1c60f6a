//! The git gate: the only way the agent's commits leave a bottle.
//!
//! A smart-HTTP git server (our own HTTP server in front of
//! `git upload-pack` / `git receive-pack --stateless-rpc`) with one bare
//! repository per upstream in `git-gate.repos`, plus `local`, the
//! project's own repository when it is one.
//!
//! - **Fetch**: before serving refs the gate refreshes the repository from
//!   its upstream (with the deploy key), so the agent sees current branches;
//!   `local` serves the project's branches, read-only. A push is checked
//!   against the gate's copy and forwarded with a lease per ref, so an
//!   upstream that moved since refuses it.
//! - **Push**: while receive-pack holds the pushed objects in quarantine,
//!   its `pre-receive` hook hands the push to the gate ([`hook`]), which
//!   checks the refs (branch globs, no force-push or deletion unless the
//!   repository allows it), scans every object the push adds with the
//!   detector ([`check`]), and only then forwards it: to the upstream with
//!   `git push` under a locked-down ssh command, or, for `local`, into the
//!   project's repository as `refs/heads/bot-bottle/<slug>/<branch>` and
//!   nothing else. A refusal, or an upstream's own refusal, fails the
//!   agent's push with every reason, and the gate's refs stay as they were.
//! - Every git runs with a cleared environment, no system or global config
//!   and an empty `HOME`, in the gate's own directory ([`git`]); every
//!   command line is built by a pure function ([`argv`]).

mod argv;
mod audit;
mod check;
mod forge;
mod git;
mod hook;
mod http;
mod https;
mod keys;
mod push;
mod snapshot;

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bot_bottle_detect::Detector;
use bot_bottle_manifest::{GitUrl, KeySource, Repo};
use indexmap::IndexMap;

pub use argv::ArgvError;
pub use forge::ForgeError;
pub use https::{Https, HttpsError};
pub use keys::cleanup;

use argv::{Oid, ReceivePolicy, RefName, Remote, SshCommand};
use audit::{Audit, Entry};
use check::Rules;
use git::Git;

use crate::EnvLookup;
use crate::lazy::Lazy;

/// Everything a gate needs to start.
pub struct GateConfig {
    /// The bottle's slug: names its landed branches and its deploy keys.
    pub bottle: String,
    /// The gate's own directory (created 0700): its repositories, hook,
    /// keys and pinned host keys.
    pub state_dir: PathBuf,
    /// The upstreams, by name.
    pub repos: IndexMap<String, Repo>,
    /// The project's repository (its work tree), served as `local`.
    pub local: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    /// Reads host variables: https tokens and forge tokens, by name.
    pub env: EnvLookup,
    /// Other secret values the bottle knows (by name): refused in pushes.
    pub known_secrets: Vec<(String, String)>,
    /// An extra CA for https upstreams and forge APIs (tests, private forges).
    pub upstream_ca: Option<PathBuf>,
    /// The longest one upstream transfer may take.
    pub timeout: Duration,
    /// The largest push (decoded request body) the gate takes.
    pub max_push_bytes: u64,
}

impl GateConfig {
    /// A config with the defaults: a 10 minute upstream time limit and
    /// pushes up to 2 GiB.
    pub fn new(bottle: impl Into<String>, state_dir: impl Into<PathBuf>) -> GateConfig {
        GateConfig {
            bottle: bottle.into(),
            state_dir: state_dir.into(),
            repos: IndexMap::new(),
            local: None,
            audit_log: None,
            env: Box::new(|_| None),
            known_secrets: Vec::new(),
            upstream_ca: None,
            timeout: Duration::from_secs(600),
            max_push_bytes: 2 << 30,
        }
    }
}

impl std::fmt::Debug for GateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateConfig")
            .field("bottle", &self.bottle)
            .field("state_dir", &self.state_dir)
            .field("repos", &self.repos.keys().collect::<Vec<_>>())
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Argv(#[from] ArgvError),
    #[error("`{0}` is not installed (the git gate needs it)")]
    Missing(&'static str),
    #[error("{what}: `{argv}` failed ({status}){}", tail(.stderr))]
    Git { what: String, argv: String, status: String, stderr: String },
    #[error("`{what}` took longer than {}s", after.as_secs())]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Unscannable(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
    #[error("repo {repo}: the upstream: {message}")]
    Upstream { repo: String, message: String },
    #[error("repo {repo}: ${env} is not set in the host environment")]
    MissingToken { repo: String, env: String },
    #[error("repo {repo}: the deploy key {}", path.display())]
    KeyFile {
        repo: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("repo {repo}: ssh upstreams need a pinned `host_key`")]
    NoHostKey { repo: String },
    #[error("repo {repo}: deploy key")]
    Forge {
        repo: String,
        #[source]
        source: ForgeError,
    },
    #[error(transparent)]
    Https(#[from] HttpsError),
    #[error("the project {} is not usable as `local`: {why}", path.display())]
    Local { path: PathBuf, why: String },
    /// A start that failed, and what undoing it could not undo.
    #[error("the start failed, and undoing it left: {left}")]
    Undone {
        #[source]
        source: Box<GateError>,
        left: String,
    },
}

fn tail(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        return String::new();
    }
    let start = s.char_indices().rev().nth(600).map_or(0, |(i, _)| i);
    format!(": {}", &s[start..])
}

impl GateError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GateError {
        let what = what.into();
        move |source| GateError::Io { what, source }
    }

    pub(crate) fn git(what: &str, out: &std::process::Output) -> GateError {
        GateError::Git {
            what: what.to_owned(),
            argv: String::new(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A branch a push created or moved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Landing {
    pub repo: String,
    /// The branch as it is named where it landed (`bot-bottle/<slug>/main`
    /// in the project's repository; the pushed name upstream).
    pub branch: String,
    pub commit: String,
}

/// A push the gate refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub repo: String,
    pub refs: Vec<String>,
    /// The first line of the reason.
    pub reason: String,
    pub findings: usize,
}

/// What a bottle's gate did: shown when the session ends.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GateReport {
    /// Branches landed in the project's repository.
    pub landed: Vec<Landing>,
    /// Branches pushed to upstreams.
    pub pushed: Vec<Landing>,
    pub refused: Vec<Refusal>,
    /// What went wrong at teardown (a deploy key left on a forge...).
    pub problems: Vec<String>,
}

/// One gate repository.
#[derive(Debug)]
pub(crate) struct RepoState {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) remote: Remote,
    pub(crate) rules: Rules,
    pub(crate) policy: ReceivePolicy,
    /// `local`: receive-pack works in the landed namespace.
    pub(crate) namespace: Option<&'static str>,
    /// `local`: the landing prefix, for the refresh.
    pub(crate) landed: Option<String>,
    /// Refreshes and pushes of one repository run one at a time.
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether `HEAD` has been pointed at the upstream's branch.
    pub(crate) head_known: std::sync::atomic::AtomicBool,
}

pub(crate) struct Inner {
    bottle: String,
    dir: PathBuf,
    git: Git,
    hooks: PathBuf,
    run: PathBuf,
    repos: IndexMap<String, RepoState>,
    /// Built off the start's path; a push that arrives first waits for it,
    /// and one that cannot have it is refused.
    detector: Lazy<Detector>,
    audit: Audit,
    events: Mutex<GateReport>,
    keys: Mutex<Vec<forge::KeyRecord>>,
    https: Https,
    env: EnvLookup,
    seq: AtomicU64,
    max_push: u64,
    /// The project's `HEAD` when the gate started: the snapshot's parent
    /// when the workspace's own `HEAD` is unknown to the gate.
    local_base: Option<Oid>,
}

/// A running git gate. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("bottle", &self.inner.bottle).finish_non_exhaustive()
    }
}

fn mkdir(p: &Path, mode: u32) -> Result<(), GateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .map_err(GateError::io(format!("creating {}", p.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(GateError::io(format!("securing {}", p.display())))
}

/// The prefix a bottle's branches land under in the project's repository.
pub fn landing_prefix(slug: &str) -> String {
    format!("bot-bottle/{slug}/")
}

impl Gate {
    /// Prepares the gate: its directory, hook and repositories, each
    /// upstream's credential (minting deploy keys on forges), and the
    /// detector. Fails, leaving no deploy key behind, if any upstream cannot
    /// be set up.
    pub async fn start(mut cfg: GateConfig) -> Result<Gate, GateError> {
        let dir = cfg.state_dir.clone();
        mkdir(&dir, 0o700)?;
        // Push sessions a killed launcher left (a resumed bottle counts
        // them from 0 again).
        let run = dir.join("run");
        if run.exists() {
            std::fs::remove_dir_all(&run).map_err(GateError::io(format!("clearing {}", run.display())))?;
        }
        for sub in ["repos", "run", "keys", "known_hosts"] {
            mkdir(&dir.join(sub), 0o700)?;
        }
        // git's HOME: empty, so git finds no user config in it.
        mkdir(&dir.join("home"), 0o700)?;
        let hooks = dir.join("hooks");
        hook::install(&hooks)?;
        let git = Git::new(git::find_program("git")?, &dir.join("home"), &dir, cfg.timeout);
        let https = Https::new(cfg.upstream_ca.as_deref(), Duration::from_secs(30))?;
        let audit = Audit::open(cfg.audit_log.as_deref())
            .map_err(GateError::io(format!("opening {}", cfg.audit_log.clone().unwrap_or_default().display())))?;
        let mut gate = Inner {
            bottle: cfg.bottle.clone(),
            git,
            hooks,
            run: dir.join("run"),
            repos: IndexMap::new(),
            detector: Lazy::never(),
            audit,
            events: Mutex::default(),
            // What an earlier launch of this bottle recorded stays on the
            // list until deleted.
            keys: Mutex::new(forge::read_records(&dir)),
            https,
            env: std::mem::replace(&mut cfg.env, Box::new(|_| None)),
            seq: AtomicU64::new(0),
            max_push: cfg.max_push_bytes,
            local_base: None,
            dir,
        };
        if let Err(e) = gate.setup(&cfg).await {
            // Nothing may outlive a failed start: delete any key just made.
            let problems = gate.delete_keys().await;
            return Err(if problems.is_empty() {
                e
            } else {
                GateError::Undone { source: Box::new(e), left: problems.join("; ") }
            });
        }
        Ok(Gate { inner: Arc::new(gate) })
    }

    /// Serves clients from `listener` until the task is dropped.
    pub async fn serve(&self, listener: tokio::net::TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Only latency is at stake.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay on a gate connection");
                    }
                    http::spawn_conn(self.inner.clone(), stream);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Serves clients from a unix socket (a native bottle's forwarder).
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => http::spawn_conn(self.inner.clone(), stream),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// What the gate has landed, pushed and refused so far.
    pub fn report(&self) -> GateReport {
        self.inner.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Lands the uncommitted state of `work` (the kept workspace copy) in
    /// the project's repository as `bot-bottle/<slug>/uncommitted`, built by
    /// the gate's own git (see [`snapshot`]) and scanned like any push.
    /// `None` when there is no `local` or nothing changed.
    pub async fn land_uncommitted(&self, work: &Path) -> Result<Option<Landing>, GateError> {
        snapshot::land(&self.inner, work).await
    }

    /// Ends the gate: deletes the deploy keys it minted, and returns what it
    /// did. Problems are reported, not hidden.
    pub async fn finish(&self) -> GateReport {
        let problems = self.inner.delete_keys().await;
        let mut r = self.report();
        r.problems.extend(problems);
        r
    }
}

impl Inner {
    /// Everything of a start after the gate's directory exists: the
    /// repositories and their credentials, `local`, the detector.
    async fn setup(&mut self, cfg: &GateConfig) -> Result<(), GateError> {
        let mut known = cfg.known_secrets.clone();
        self.add_repos(&cfg.repos, cfg.upstream_ca.as_deref(), &mut known).await?;
        if let Some(project) = &cfg.local {
            self.add_local(project)?;
        }
        self.detector = Lazy::spawn(move || Detector::builtin().with_known(known));
        for r in self.repos.values() {
            if !r.dir.join("HEAD").exists() {
                let out = self.git.output(&argv::init_bare(&r.dir)?, None).await?;
                if !out.status.success() {
                    return Err(GateError::git(&format!("creating the gate's repository {}", r.name), &out));
                }
            }
        }
        if let Some(local) = self.repos.get("local") {
            // An unborn HEAD names no commit; the snapshot then has no parent.
            self.local_base = self.remote_head(local).await?;
        }
        Ok(())
    }

    async fn add_repos(
        &mut self,
        repos: &IndexMap<String, Repo>,
        ca: Option<&Path>,
        known: &mut Vec<(String, String)>,
    ) -> Result<(), GateError> {
        for (name, repo) in repos {
            RefName::parse(&format!("refs/heads/{name}")).map_err(GateError::Argv)?;
            let remote = self.remote_for(name, repo, ca, known).await?;
            let state = RepoState {
                name: name.clone(),
                dir: self.dir.join("repos").join(format!("{name}.git")),
                remote,
                rules: Rules::Upstream {
                    branches: repo.branches.clone(),
                    allow_force_push: repo.allow_force_push,
                    allow_delete: repo.allow_delete,
                },
                policy: ReceivePolicy { allow_force_push: repo.allow_force_push, allow_delete: repo.allow_delete },
                namespace: None,
                landed: None,
                lock: Arc::default(),
                head_known: false.into(),
            };
            self.repos.insert(name.clone(), state);
        }
        Ok(())
    }

    /// The credential and transport for one upstream.
    async fn remote_for(
        &mut self,
        name: &str,
        repo: &Repo,
        ca: Option<&Path>,
        known: &mut Vec<(String, String)>,
    ) -> Result<Remote, GateError> {
        let url = repo.url.to_string();
        if let GitUrl::Https { .. } = repo.url {
            let KeySource::Token { env } = &repo.key else {
                return Err(GateError::Internal(format!("repo {name}: https upstreams take `provider: token`")));
            };
            let token = (self.env)(env.as_str())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| GateError::MissingToken { repo: name.to_owned(), env: env.to_string() })?;
            known.push((env.to_string(), token.clone()));
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            return Ok(Remote::Https {
                url,
                authorization: format!("Basic {basic}"),
                ca_file: ca.map(Path::to_path_buf),
            });
        }
        let host_key = repo.host_key.as_ref().ok_or_else(|| GateError::NoHostKey { repo: name.to_owned() })?;
        let key = match &repo.key {
            KeySource::Static { path } => {
                std::fs::File::open(path).map_err(|source| GateError::KeyFile {
                    repo: name.to_owned(),
                    path: path.clone(),
                    source,
                })?;
                path.clone()
            }
            other => {
                let (forge, token_env, api) = forge::forge_of(other).ok_or_else(|| {
                    GateError::Internal(format!("repo {name}: ssh upstreams take a key, not a token"))
                })?;
                let token = (self.env)(token_env)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| GateError::MissingToken { repo: name.to_owned(), env: token_env.to_owned() })?;
                known.push((token_env.to_owned(), token.clone()));
                self.mint_key(name, forge, token_env, api, &repo.url, &token).await?
            }
        };
        let ssh = SshCommand {
            program: git::find_program("ssh")?,
            key,
            known_hosts: self.dir.join("known_hosts").join(name),
            alias: format!("bot-bottle-{name}"),
            connect_timeout_secs: 20,
        };
        ssh.check()?;
        std::fs::write(&ssh.known_hosts, ssh.known_hosts_line(&host_key.key_type, &host_key.base64))
            .map_err(GateError::io(format!("writing {}", ssh.known_hosts.display())))?;
        Ok(Remote::Ssh { url, ssh })
    }

    fn add_local(&mut self, project: &Path) -> Result<(), GateError> {
        let local = |why: &str| GateError::Local { path: project.to_path_buf(), why: why.to_owned() };
        argv::check_path("project", project).map_err(|_| local("not an absolute path"))?;
        let dotgit = project.join(".git");
        let meta = std::fs::metadata(&dotgit).map_err(|_| local("it has no .git"))?;
        let prefix = landing_prefix(&self.bottle);
        RefName::parse(&format!("refs/heads/{prefix}x")).map_err(|_| local("the bottle's name cannot be a branch"))?;
        // Running as root for someone else's repository: what lands there
        // is written as its owner, so the repository stays theirs.
        let owner = (nix::unistd::geteuid().is_root() && meta.uid() != 0).then(|| (meta.uid(), meta.gid()));
        let state = RepoState {
            name: "local".into(),
            dir: self.dir.join("repos").join("local.git"),
            remote: Remote::Local { path: project.to_path_buf(), owner },
            rules: Rules::Local { prefix: prefix.clone() },
            policy: ReceivePolicy { allow_force_push: false, allow_delete: false },
            namespace: Some(argv::LANDED_NS),
            landed: Some(prefix),
            lock: Arc::default(),
            head_known: false.into(),
        };
        self.repos.shift_insert(0, "local".into(), state);
        Ok(())
    }

    /// Takes every known secret out of a message from an upstream: as
    /// written, and in every encoding the detector knows. An upstream's
    /// message can echo the credential git sent it (base64 inside
    /// `Authorization: Basic`, hex, reversed), and it goes to the agent.
    async fn redact(&self, s: &str) -> String {
        match self.detector.get().await {
            Ok(det) => {
                let mut bytes = s.as_bytes().to_vec();
                det.redact_known(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // Nothing to mask with: nothing of the message is shown.
            Err(why) => format!("(the upstream's message is withheld: {why})"),
        }
    }

    fn audit(
        &self,
        repo: &str,
        op: &'static str,
        refs: Vec<String>,
        decision: &'static str,
        findings: usize,
        reason: Option<String>,
    ) {
        let e = Entry {
            time: audit::now(),
            bottle: &self.bottle,
            service: "git-gate",
            repo,
            op,
            refs,
            decision,
            findings,
            reason,
        };
        if self.audit.write(&e).is_err()
            && let Ok(mut ev) = self.events.lock()
        {
            ev.problems.push("the audit log could not be written".into());
        }
    }

    /// Brings a repository up to date with its upstream. Called with the
    /// repository's lock held.
    async fn refresh(&self, repo: &RepoState) -> Result<(), GateError> {
        if !repo.head_known.load(std::sync::atomic::Ordering::SeqCst) {
            self.remote_head(repo).await?;
        }
        let out = self.git.output(&argv::fetch(&repo.dir, &repo.remote, repo.landed.is_some())?, None).await?;
        if !out.status.success() {
            return Err(self.upstream_error(repo, "fetching", &out).await);
        }
        if let Some(prefix) = &repo.landed {
            let out = self.git.output(&argv::fetch_landed(&repo.dir, &repo.remote, prefix)?, None).await?;
            if !out.status.success() {
                return Err(self.upstream_error(repo, "fetching the landed branches", &out).await);
            }
        }
        Ok(())
    }

    /// The branches and tags a fetch may take, for its audit entry: the
    /// first hundred, named as the detector allows.
    async fn served_refs(&self, repo: &RepoState) -> Vec<String> {
        const SHOWN: usize = 100;
        let det = match self.detector.get().await {
            Ok(d) => d,
            Err(why) => return vec![format!("(the refs are withheld: {why})")],
        };
        let Ok(cmd) = argv::list_refs(&repo.dir) else { return Vec::new() };
        let out = match self.git.output(&cmd, None).await {
            Ok(o) if o.status.success() => o.stdout,
            _ => return vec!["(the refs could not be listed)".into()],
        };
        let all: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let mut refs: Vec<String> = all.iter().take(SHOWN).map(|r| check::show_path(r, &det)).collect();
        if all.len() > SHOWN {
            refs.push(format!("... and {} more", all.len() - SHOWN));
        }
        refs
    }

    async fn upstream_error(&self, repo: &RepoState, what: &str, out: &std::process::Output) -> GateError {
        GateError::Upstream {
            repo: repo.name.clone(),
            message: self.redact(&format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())).await,
        }
    }

    /// Reads the upstream's `HEAD`, points the gate repository's `HEAD` at
    /// the same branch, and returns the commit it names.
    async fn remote_head(&self, repo: &RepoState) -> Result<Option<Oid>, GateError> {
        let out = self.git.output(&argv::ls_remote_head(&repo.remote)?, None).await?;
        if !out.status.success() {
            return Err(self.upstream_error(repo, "reading HEAD", &out).await);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut commit = None;
        for line in text.lines() {
            if let Some(target) = line.strip_prefix("ref: ").and_then(|l| l.strip_suffix("\tHEAD")) {
                if let Ok(branch) = RefName::parse(target)
                    && branch.branch().is_some()
                {
                    let set = self.git.output(&argv::set_head(&repo.dir, &branch)?, None).await?;
                    if !set.status.success() {
                        return Err(GateError::git("pointing HEAD at the upstream's branch", &set));
                    }
                }
            } else if let Some((oid, "HEAD")) = line.split_once('\t') {
                commit = Oid::parse(oid).ok();
            }
        }
        repo.head_known.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(commit)
    }
}
