//! The docker backend: each bottle is a container of the local Docker
//! daemon, driven through its API (bollard), the API version negotiated
//! with the daemon (Debian 12's docker.io speaks 1.41; Docker 29 refuses
//! clients below 1.44; a pinned version would fail one or the other).
//!
//! The container has no network at all (`network_mode: none`: only `lo`,
//! so no route out and no DNS server to ask). The sidecar bundle runs on
//! the host as for the other backends, on unix sockets in the bottle's
//! state directory ([`Endpoint::Unix`]); that directory is bind-mounted
//! read-only into the container, whose main process is bot-bottle's own
//! forwarder (`__bottle-forward`, the host binary bind-mounted read-only)
//! making them reachable at `127.0.0.1:3128`/`:9420`, as in a native
//! bottle. The agent runs through the same binary's `--exec` confiner: no
//! capabilities, `no_new_privs`, the native bottle's seccomp filter, on
//! top of docker's own profile. See ARCHITECTURE.md for why no network.

mod bottle;
mod client;
mod spec;

use std::path::{Path, PathBuf};

use bot_bottle_manifest::{BackendKind, ImageSource, WorkspaceMode};

pub use bottle::DockerBottle;
use client::Client;

use crate::{Backend, BackendError, Bottle, Check, Endpoint, PreparedBottle, Status, Target, Teardown, pause_point};

/// The label naming a resource's bottle; `cleanup` finds them by it.
pub const LABEL_SLUG: &str = "bot-bottle.slug";
/// The label naming the backend that made a resource.
const LABEL_BACKEND: &str = "bot-bottle.backend";
/// Where the sidecar sockets appear in the container (read-only).
const SIDECARS: &str = "/run/bot-bottle-sidecars";
/// Where bot-bottle's own binary appears in the container (read-only).
const FORWARDER: &str = "/run/bot-bottle-bin/bot-bottle";
const HOME: &str = "/home/agent";
const WORKSPACE: &str = "/workspace";
/// The bottle's own files (CA, prompt): root's, on a tmpfs.
const STATE_DIR: &str = "/run/bot-bottle";
/// The pids limit when the plan sets none: a fork bomb stops here.
const DEFAULT_PIDS: u32 = 4096;
/// The environment variable that picks the OCI runtime (`runc`, `runsc`)
/// until the cli's `--runtime` reaches the backend.
pub const RUNTIME_ENV: &str = "BOT_BOTTLE_DOCKER_RUNTIME";

/// The docker backend.
#[derive(Debug, Default)]
pub struct Docker {
    /// The OCI runtime asked for; `None`: runsc when registered, else the
    /// daemon's default.
    pub runtime: Option<String>,
}

impl Docker {
    /// The runtime from [`RUNTIME_ENV`], if set.
    pub fn from_env() -> Docker {
        Docker { runtime: std::env::var(RUNTIME_ENV).ok().filter(|s| !s.is_empty()) }
    }

    /// What must hold before anything is created: a daemon that answers,
    /// and the runtime bottles would get. Says the daemon's version and it.
    pub fn preflight(&self) -> Result<String, BackendError> {
        let c = Client::connect()?;
        let (version, runtimes) = c.info()?;
        let runtime = choose_runtime(self.runtime.as_deref(), &runtimes)?;
        Ok(format!(
            "docker {version} (API {}), bottles run under {}",
            c.api_version(),
            runtime.as_deref().unwrap_or("the daemon's default runtime")
        ))
    }
}

/// The runtime a bottle gets: the one asked for (which must be registered),
/// else runsc (gVisor) when the daemon has it, else the daemon's default.
fn choose_runtime(asked: Option<&str>, registered: &[String]) -> Result<Option<String>, BackendError> {
    match asked {
        Some(r) if registered.iter().any(|x| x == r) => Ok(Some(r.to_owned())),
        Some(r) => Err(BackendError::Preflight(format!(
            "the docker runtime `{r}` is not registered with the daemon (it has: {}); register it in \
             /etc/docker/daemon.json under \"runtimes\" and restart dockerd",
            registered.join(", ")
        ))),
        None if registered.iter().any(|x| x == "runsc") => Ok(Some("runsc".into())),
        None => Ok(None),
    }
}

/// What a docker launch builds; `--dry-run` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prepared {
    pub container: String,
    pub image: String,
    /// The OCI runtime (`runsc` for gVisor); `None`: the daemon's default.
    pub runtime: Option<String>,
    /// The host directory mounted at `/workspace`.
    pub workspace: Option<PathBuf>,
    /// The host directory of the sidecar sockets, mounted read-only.
    pub sockets_dir: PathBuf,
    /// `mounts:`: host directories bound read-only at the same path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<PathBuf>,
    /// Each sidecar socket and the port it is reached at inside.
    pub sockets: Vec<(String, u16)>,
    /// The agent's uid and gid inside (the launcher's, or 1000 for root).
    pub agent_ids: (u32, u32),
    /// The forwarder's: the launcher's, who owns the sockets.
    pub forwarder_ids: (u32, u32),
    pub pids: u32,
    pub memory: Option<u64>,
    pub millicpus: Option<u32>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    slug: String,
    #[serde(skip)]
    workspace_mode: WorkspaceMode,
    #[serde(skip)]
    project: PathBuf,
    #[serde(skip)]
    state: PathBuf,
    #[serde(skip)]
    resume: bool,
}

/// A container name for a bottle: docker allows `[a-zA-Z0-9][a-zA-Z0-9_.-]`.
fn container_name(slug: &str) -> String {
    let s: String =
        slug.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect();
    format!("bot-bottle-{s}")
}

/// The agent's ids inside: the launcher's own (a mounted project stays
/// writable and owned by its user), or [`crate::native::AGENT_ID`] when
/// the launcher is root: the agent is never root.
pub(crate) fn agent_ids() -> (u32, u32) {
    let (u, g) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    if u == 0 { (crate::native::AGENT_ID, crate::native::AGENT_ID) } else { (u, g) }
}

impl Backend for Docker {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn prepare(&self, t: &Target<'_>) -> Result<Box<dyn PreparedBottle>, BackendError> {
        Ok(Box::new(self.prepare_container(t)?))
    }

    fn cleanup(&self, slug: &str, state: &Path) -> Vec<String> {
        cleanup_leftovers(slug, state)
    }

    fn doctor(&self) -> Vec<Check> {
        vec![match self.preflight() {
            Ok(v) => Check { name: "dockerd", status: Status::Ok, detail: v, fix: None },
            Err(e) => Check {
                name: "dockerd",
                status: Status::Fail,
                detail: e.to_string(),
                fix: Some(
                    "install docker (apt install docker.io) and start dockerd; add yourself to the docker group".into(),
                ),
            },
        }]
    }
}

impl Docker {
    /// What a docker launch for `t` builds.
    pub fn prepare_container(&self, t: &Target<'_>) -> Result<Prepared, BackendError> {
        let image = match t.plan.image.as_ref() {
            Some(ImageSource::Image(r)) => r.clone(),
            Some(ImageSource::Dockerfile(p)) => {
                return Err(BackendError::Preflight(format!(
                    "the docker backend does not build `dockerfile:` ({}) yet: build it with `docker build -t NAME` \
                     and name it with `image: NAME`",
                    p.display()
                )));
            }
            None => {
                return Err(BackendError::Preflight(
                    "the docker backend needs an image: set `image:` in the bottle".into(),
                ));
            }
        };
        let workspace = match t.plan.workspace {
            WorkspaceMode::None => None,
            WorkspaceMode::Mount => Some(t.project.to_path_buf()),
            WorkspaceMode::Copy => Some(t.state.join("workspace")),
        };
        let extra = t.plan.supervise.then_some(("supervise.sock", crate::SUPERVISE_PORT));
        let sockets = crate::UNIX_SOCKETS.iter().copied().chain(extra).map(|(n, p)| (n.to_owned(), p)).collect();
        let mut warnings = Vec::new();
        if t.plan.resources.disk.is_some() {
            warnings.push("disk: the workspace is watched as on every backend; docker's own layers are not".into());
        }
        let me = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        Ok(Prepared {
            container: container_name(t.slug),
            image,
            runtime: self.runtime.clone(),
            workspace,
            sockets_dir: t.state.join("sockets"),
            mounts: t.plan.mounts.iter().map(|m| m.path.clone()).collect(),
            sockets,
            agent_ids: agent_ids(),
            forwarder_ids: me,
            pids: t.plan.resources.pids.unwrap_or(DEFAULT_PIDS),
            memory: t.plan.resources.memory.map(|m| m.0),
            millicpus: t.plan.resources.cpus.map(|c| c.0),
            warnings,
            slug: t.slug.to_owned(),
            workspace_mode: t.plan.workspace,
            project: t.project.to_path_buf(),
            state: t.state.to_path_buf(),
            resume: t.resume,
        })
    }
}

impl PreparedBottle for Prepared {
    fn view(&self) -> serde_json::Value {
        crate::view_of(BackendKind::Docker, self)
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn copy_owner(&self) -> Option<u32> {
        crate::copy_owner("docker")
    }

    fn reserve(&self, teardown: &mut Teardown) -> Result<Endpoint, BackendError> {
        let p = self;
        let dir = p.sockets_dir.clone();
        std::fs::create_dir_all(&dir).map_err(crate::io(format!("creating {}", dir.display())))?;
        crate::own(&dir, 0o700, None).map_err(crate::io(format!("securing {}", dir.display())))?;
        let d = dir.clone();
        teardown.push("the sidecar sockets", move || {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                tracing::warn!(dir = %d.display(), error = %e, "removing the sidecar sockets; `bot-bottle cleanup` retries");
            }
        });
        Ok(Endpoint::Unix { dir, owner: None })
    }

    fn launch(&self, endpoint: &Endpoint, teardown: &mut Teardown) -> Result<Box<dyn Bottle>, BackendError> {
        let p = self;
        let Endpoint::Unix { dir, .. } = endpoint else {
            return Err(BackendError::Control("a docker bottle needs a socket directory".into()));
        };
        if dir != &p.sockets_dir {
            return Err(BackendError::Control("the sidecar sockets are not where the plan said".into()));
        }
        let client = Client::connect()?;
        let (_, runtimes) = client.info()?;
        let mut p = p.clone();
        p.runtime = choose_runtime(p.runtime.as_deref(), &runtimes)?;
        client.ensure_image(&p.image)?;
        let owner = crate::copy_owner("docker");
        let workspace = crate::prepare_workspace(p.workspace_mode, &p.project, &p.state, p.resume, owner)?;
        if workspace != p.workspace {
            return Err(BackendError::Control("the workspace is not where the plan said".into()));
        }
        let exe = std::env::current_exe().map_err(crate::io("finding bot-bottle's own executable"))?;
        let body = spec::container(&p, &exe.display().to_string());
        // Registered first, so that a container half made is removed too.
        let name = p.container.clone();
        teardown.push(format!("the container {name}"), move || match Client::connect() {
            Ok(c) => {
                if let Err(e) = c.remove(&name) {
                    tracing::warn!(container = %name, error = %e, "removing the container; `bot-bottle cleanup` retries");
                }
            }
            Err(e) => tracing::warn!(container = %name, error = %e, "removing the container"),
        });
        client.create(&p.container, body)?;
        pause_point("container-created");
        client.start(&p.container)?;
        pause_point("container-started");
        let ports: Vec<String> = p.sockets.iter().map(|(_, port)| port.to_string()).collect();
        let mut argv = vec![FORWARDER.to_owned(), "__bottle-forward".to_owned(), "--ready".to_owned()];
        argv.extend(ports);
        let out = client.exec_output(&p.container, &argv, &[], None, &ids(p.forwarder_ids), None)?;
        if out.code != 0 {
            return Err(BackendError::Inside {
                what: "waiting for the sidecar forwarder".into(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(Box::new(DockerBottle::new(client, p.container.clone(), p.agent_ids)))
    }
}

/// What a killed launcher left of the docker bottle `slug`: its containers
/// (found by label) and its sockets.
fn cleanup_leftovers(slug: &str, state: &Path) -> Vec<String> {
    {
        let mut did = Vec::new();
        match Client::connect() {
            Ok(c) => match c.labelled(slug) {
                Ok(names) => {
                    for n in names {
                        match c.remove(&n) {
                            Ok(()) => did.push(format!("removed container {n}")),
                            Err(e) => did.push(format!("could not remove container {n}: {e}")),
                        }
                    }
                }
                Err(e) => did.push(format!("could not list docker containers: {e}")),
            },
            Err(e) => did.push(format!("could not reach the docker daemon: {e}")),
        }
        if std::fs::remove_dir_all(state.join("sockets")).is_ok() {
            did.push("removed sockets".into());
        }
        did
    }
}

fn ids((u, g): (u32, u32)) -> String {
    format!("{u}:{g}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runsc_is_chosen_when_registered_and_an_unknown_runtime_is_refused() {
        let reg = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(choose_runtime(None, &reg(&["runc", "runsc"])).expect("ok"), Some("runsc".into()));
        assert_eq!(choose_runtime(None, &reg(&["runc"])).expect("ok"), None);
        assert_eq!(choose_runtime(Some("runc"), &reg(&["runc", "runsc"])).expect("ok"), Some("runc".into()));
        let e = choose_runtime(Some("kata"), &reg(&["runc"])).expect_err("unknown");
        assert!(e.to_string().contains("daemon.json"), "{e}");
    }

    #[test]
    fn container_names_are_what_docker_accepts() {
        assert_eq!(container_name("a.b_c-1"), "bot-bottle-a.b_c-1");
        assert_eq!(container_name("x/y z"), "bot-bottle-x-y-z");
    }
}
