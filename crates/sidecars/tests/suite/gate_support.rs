//! What the gate tests run against: a real OpenSSH `sshd` on loopback
//! (an ephemeral port, a temporary host key, one authorized deploy key)
//! serving bare repositories, the gate in process on a loopback port, and
//! the real git client with a clean environment.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bot_bottle_manifest::{GitUrl, HostKey, KeySource, Repo};
use bot_bottle_sidecars::{Gate, GateConfig};
use indexmap::IndexMap;

/// Why these tests cannot run here, if they cannot.
pub(crate) fn missing() -> Option<String> {
    for (prog, pkg) in [("git", "git"), ("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")] {
        if which::which(prog).is_err() {
            return Some(format!("`{prog}` is not installed (apt-get install {pkg})"));
        }
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        return Some("/usr/sbin/sshd is not installed (apt-get install openssh-server)".into());
    }
    None
}

/// Skips with a reason, except on CI, where a missing tool is a failure.
#[expect(clippy::print_stderr, reason = "a skipped test says why")]
pub(crate) fn skip_or_panic(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub(crate) fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A git with no config but what the test gives it.
pub(crate) fn git(home: &Path) -> Command {
    let mut c = Command::new("git");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Agent")
        .env("GIT_AUTHOR_EMAIL", "agent@example.com")
        .env("GIT_COMMITTER_NAME", "Agent")
        .env("GIT_COMMITTER_EMAIL", "agent@example.com")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    c
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A real sshd on 127.0.0.1, for the current user, accepting the keys in
/// its `authorized_keys` file (and a forge's). Like a forge's ssh server it
/// serves repositories by path (`/org/app.git`) from a directory of its own,
/// `srv`.
pub(crate) struct Sshd {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    /// Another authorized keys file (a forge's).
    pub(crate) extra_keys: Option<PathBuf>,
    /// `ssh-ed25519 AAAA...`: what a manifest's `host_key` pins.
    pub(crate) host_key: String,
    pub(crate) user: String,
    child: Option<Child>,
}

pub(crate) fn keygen(path: &Path) -> String {
    ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"]).arg(path));
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("pub");
    public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

impl Sshd {
    pub(crate) fn start(dir: &Path, extra_keys: Option<PathBuf>) -> Sshd {
        std::fs::create_dir_all(dir.join("srv")).expect("mkdir");
        let host_key = keygen(&dir.join("host_key"));
        std::fs::write(dir.join("authorized_keys"), "").expect("write");
        let user = ok(Command::new("id").arg("-un"));
        if nix_root() {
            // sshd's privilege separation directory, as Debian's unit makes it.
            std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        }
        let mut s = Sshd { port: 0, dir: dir.to_path_buf(), extra_keys, host_key, user, child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        for _ in 0..20 {
            let port = if self.port == 0 { free_port() } else { self.port };
            let cfg = self.dir.join("sshd_config");
            std::fs::write(
                &cfg,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n\
                     AuthorizedKeysFile {dir}/authorized_keys {extra}\nPidFile none\nStrictModes no\nUsePAM no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     PermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\nMaxStartups 100\n\
                     ForceCommand cd {dir}/srv && eval \"$(printf '%s' \"$SSH_ORIGINAL_COMMAND\" | sed \"s|'/|'|\")\"\n",
                    dir = self.dir.display(),
                    extra = self.extra_keys.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    user = self.user
                ),
            )
            .expect("write");
            let child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sshd");
            self.child = Some(child);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    self.port = port;
                    return;
                }
                if let Some(c) = self.child.as_mut()
                    && c.try_wait().ok().flatten().is_some()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop();
        }
        panic!("sshd did not start");
    }

    pub(crate) fn authorize(&self, public: &str) {
        let p = self.dir.join("authorized_keys");
        let mut all = std::fs::read_to_string(&p).expect("read");
        all.push_str(public);
        all.push('\n');
        std::fs::write(p, all).expect("write");
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nix_root() -> bool {
    ok(Command::new("id").arg("-u")) == "0"
}

pub(crate) fn host_key(line: &str) -> HostKey {
    let (t, b) = line.split_once(' ').expect("key");
    HostKey { key_type: t.into(), base64: b.into() }
}

/// One gate with an upstream `app` behind sshd, plus what a test needs.
pub(crate) struct World {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) sshd: Sshd,
    pub(crate) upstream: PathBuf,
    pub(crate) gate: Gate,
    pub(crate) gate_url: String,
    pub(crate) gate_dir: PathBuf,
    pub(crate) home: PathBuf,
    /// Runs the gate; dropped with the world.
    pub(crate) rt: tokio::runtime::Runtime,
}

pub(crate) struct Opts {
    pub(crate) branches: Vec<String>,
    pub(crate) allow_force_push: bool,
    pub(crate) allow_delete: bool,
    /// Pin this instead of the server's real host key.
    pub(crate) host_key: Option<String>,
    pub(crate) local: Option<PathBuf>,
    /// The key source; default: a static deploy key sshd accepts.
    pub(crate) key: Option<KeySource>,
    /// A forge (its CA, its authorized keys file) whose write keys sshd
    /// also accepts.
    pub(crate) forge: Option<(PathBuf, PathBuf)>,
    pub(crate) known_secrets: Vec<(String, String)>,
    pub(crate) max_push_bytes: Option<u64>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            branches: vec!["bot/*".into()],
            allow_force_push: false,
            allow_delete: false,
            host_key: None,
            local: None,
            key: None,
            forge: None,
            known_secrets: Vec::new(),
            max_push_bytes: None,
        }
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A running fake-forge (the GitHub and Gitea deploy-key endpoints).
pub(crate) struct FakeForge {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) addr: String,
    child: Child,
}

pub(crate) const FORGE_TOKEN: &str = "forge-token-5d1e9c7b3a2f4e6d8c0b";

impl FakeForge {
    pub(crate) fn start() -> FakeForge {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-forge"))
            .arg("--dir")
            .arg(dir.path())
            .args(["--token", FORGE_TOKEN, "--repo", "org/app", "--repo", "org/other", "--authorized-keys"])
            .arg(dir.path().join("authorized_keys"))
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("fake-forge");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line)
            .expect("read");
        FakeForge { addr: line.trim().to_owned(), dir, child }
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// What a World needs to use this forge.
    pub(crate) fn opts(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.ca(), self.authorized_keys()))
    }

    pub(crate) fn authorized_keys(&self) -> PathBuf {
        self.dir.path().join("authorized_keys")
    }

    pub(crate) fn github(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub(crate) fn gitea(&self) -> String {
        format!("https://{}/api/v1", self.addr)
    }

    /// `curl` against the forge with the token (or `token`), any method.
    pub(crate) fn curl(&self, token: &str, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--cacert"]).arg(self.ca()).args([
            "-H",
            &format!("Authorization: token {token}"),
            "-H",
            "Content-Type: application/json",
        ]);
        if let Some(b) = body {
            c.args(["--data", b]);
        }
        let out = ok(c.arg(url));
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.parse().expect("status"), body.to_owned())
    }

    /// The deploy keys of `org/app` as `(id, title, read_only)`, through
    /// the API at `api`.
    pub(crate) fn keys(&self, api: &str) -> Vec<(u64, String, bool)> {
        let (code, out) = self.curl(FORGE_TOKEN, "GET", &format!("{api}/repos/org/app/keys"), None);
        assert_eq!(code, 200, "{out}");
        let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v.iter()
            .map(|k| {
                (
                    k["id"].as_u64().expect("id"),
                    k["title"].as_str().expect("title").to_owned(),
                    k["read_only"].as_bool().expect("read_only"),
                )
            })
            .collect()
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream repo of the tests: `/org/app.git` on `sshd`.
pub(crate) fn app_repo(sshd_user: &str, port: u16, key: KeySource, host: &str, opts: &Opts) -> Repo {
    Repo {
        url: GitUrl::Ssh {
            user: Some(sshd_user.to_owned()),
            host: "127.0.0.1".into(),
            port: Some(port),
            path: "org/app.git".into(),
        },
        key,
        host_key: Some(host_key(host)),
        branches: opts.branches.clone(),
        allow_force_push: opts.allow_force_push,
        allow_delete: opts.allow_delete,
    }
}

/// A gate config for `repos` in `dir`, trusting the forge's CA when given.
pub(crate) fn gate_config(dir: &Path, repos: IndexMap<String, Repo>, forge_ca: Option<PathBuf>) -> GateConfig {
    let mut cfg = GateConfig::new("bottle-1", dir.join("state/gate"));
    cfg.repos = repos;
    cfg.audit_log = Some(dir.join("state/audit.jsonl"));
    cfg.timeout = Duration::from_secs(60);
    if let Some(ca) = forge_ca {
        cfg.upstream_ca = Some(ca);
        cfg.env = Box::new(|name| (name == "FORGE_TOKEN").then(|| FORGE_TOKEN.to_owned()));
    }
    cfg
}

impl World {
    pub(crate) fn new(opts: Opts) -> Option<World> {
        if let Some(why) = missing() {
            skip_or_panic(&why);
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).expect("mkdir");
        let sshd = Sshd::start(&tmp.path().join("sshd"), opts.forge.as_ref().map(|f| f.1.clone()));
        let deploy = tmp.path().join("deploy_key");
        sshd.authorize(&keygen(&deploy));
        // The upstream: a bare repository with one commit on main, served
        // as /org/app.git.
        let upstream = sshd.dir.join("srv/org/app.git");
        ok(git(&home).args(["init", "-q", "--bare", "-b", "main"]).arg(&upstream));
        let seed = tmp.path().join("seed");
        ok(git(&home).args(["init", "-q", "-b", "main"]).arg(&seed));
        std::fs::write(seed.join("README.md"), "# app\n").expect("write");
        ok(git(&home).arg("-C").arg(&seed).args(["add", "."]));
        ok(git(&home).arg("-C").arg(&seed).args(["commit", "-qm", "first"]));
        ok(git(&home).arg("-C").arg(&seed).args(["push", "-q"]).arg(&upstream).arg("main"));
        let key = opts.key.clone().unwrap_or(KeySource::Static { path: deploy });
        let repo = app_repo(&sshd.user, sshd.port, key, opts.host_key.as_deref().unwrap_or(&sshd.host_key), &opts);
        std::fs::create_dir_all(tmp.path().join("state")).expect("mkdir");
        let mut cfg = gate_config(tmp.path(), IndexMap::from([("app".to_owned(), repo)]), opts.forge.map(|f| f.0));
        cfg.local = opts.local;
        cfg.known_secrets = opts.known_secrets;
        if let Some(max) = opts.max_push_bytes {
            cfg.max_push_bytes = max;
        }
        let gate_dir = cfg.state_dir.clone();
        let rt = runtime();
        let gate = rt.block_on(Gate::start(cfg)).expect("gate starts");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let gate_url = format!("http://{}", listener.local_addr().expect("addr"));
        let g = gate.clone();
        rt.spawn(async move { g.serve(listener).await });
        Some(World { tmp, sshd, upstream, gate, gate_url, gate_dir, home, rt })
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    pub(crate) fn git(&self) -> Command {
        git(&self.home)
    }

    /// `git -C dir ARGS`.
    pub(crate) fn in_dir(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = self.git();
        c.arg("-C").arg(dir).args(args);
        c
    }

    /// A clone of `repo` through the gate, at `name` in the test's dir.
    pub(crate) fn clone(&self, repo: &str, name: &str) -> PathBuf {
        let dst = self.path(name);
        ok(self.git().args(["clone", "-q", &format!("{}/{repo}.git", self.gate_url)]).arg(&dst));
        dst
    }

    /// The refs of a bare repository, as `for-each-ref` lists them.
    pub(crate) fn refs(&self, bare: &Path) -> String {
        ok(self.git().arg("--git-dir").arg(bare).args(["for-each-ref", "--format=%(refname) %(objectname)"]))
    }

    pub(crate) fn gate_repo(&self, name: &str) -> PathBuf {
        self.gate_dir.join("repos").join(format!("{name}.git"))
    }

    pub(crate) fn commit(&self, dir: &Path, file: &str, content: &[u8], message: &str) -> String {
        let p = dir.join(file);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
        ok(&mut self.in_dir(dir, &["add", "-A"]));
        ok(&mut self.in_dir(dir, &["commit", "-qm", message]));
        ok(&mut self.in_dir(dir, &["rev-parse", "HEAD"]))
    }

    /// `git push ARGS` in `dir`: (success, everything it printed).
    pub(crate) fn push(&self, dir: &Path, args: &[&str]) -> (bool, String) {
        let out = run(self.in_dir(dir, &["push"]).args(args));
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    pub(crate) fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("state/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit json"))
            .collect()
    }
}
