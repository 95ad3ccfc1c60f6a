//! The daemon's API, synchronously: a small runtime of its own drives
//! bollard, so the backend's callers need none.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::Docker as Api;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::LABEL_SLUG;
use crate::{BackendError, Output};

/// What [`Client::state`] says of a container.
#[derive(Clone, Copy, Debug)]
pub(crate) struct State {
    pub(crate) running: bool,
    pub(crate) oom_killed: bool,
    pub(crate) exit_code: Option<i64>,
}

/// A connection to the local daemon, its API version negotiated.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub(super) api: Api,
    pub(super) rt: Arc<tokio::runtime::Runtime>,
}

fn err(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> BackendError {
    let what = what.into();
    move |source| BackendError::Docker { what, source: Box::new(source) }
}

impl Client {
    /// `DOCKER_HOST` or the local socket; fails with how to fix it when
    /// the daemon does not answer.
    pub(crate) fn connect() -> Result<Client, BackendError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(crate::io("starting the docker client's runtime"))?;
        let api = Api::connect_with_local_defaults().map_err(err("connecting to the docker daemon"))?;
        // Down to the daemon's version when it is older; never pinned.
        let api = rt.block_on(api.negotiate_version()).map_err(|e| {
            BackendError::Preflight(format!(
                "the docker daemon does not answer ({e}): start it (`sudo systemctl start docker`) and make sure \
                 you may use its socket (the docker group)"
            ))
        })?;
        Ok(Client { api, rt: Arc::new(rt) })
    }

    pub(crate) fn api_version(&self) -> String {
        self.api.client_version().to_string()
    }

    /// The daemon's version and its registered runtimes.
    pub(crate) fn info(&self) -> Result<(String, Vec<String>), BackendError> {
        let i = self.rt.block_on(self.api.info()).map_err(err("asking the docker daemon what it runs"))?;
        let mut runtimes: Vec<String> = i.runtimes.unwrap_or_default().into_keys().collect();
        runtimes.sort();
        Ok((i.server_version.unwrap_or_default(), runtimes))
    }

    /// The image, pulled (progress on stderr) when the daemon lacks it.
    pub(crate) fn ensure_image(&self, image: &str) -> Result<(), BackendError> {
        if self.rt.block_on(self.api.inspect_image(image)).is_ok() {
            return Ok(());
        }
        tracing::info!(%image, "pulling the image");
        let opts = CreateImageOptionsBuilder::new().from_image(image).build();
        self.rt.block_on(async {
            let mut s = self.api.create_image(Some(opts), None, None);
            while let Some(m) = s.next().await {
                let m = m.map_err(|e| {
                    BackendError::Preflight(format!(
                        "the image `{image}` is not on this machine and pulling it failed ({e}): build or load it \
                         (`docker build`, `docker load`), or name another"
                    ))
                })?;
                if let Some(status) = m.status {
                    // Progress on stderr: a pull can take minutes.
                    let line = format!("bot-bottle: {image}: {status}\n");
                    std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes()).ok();
                }
            }
            Ok(())
        })
    }

    pub(crate) fn create(&self, name: &str, body: ContainerCreateBody) -> Result<(), BackendError> {
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        self.rt
            .block_on(self.api.create_container(Some(opts), body))
            .map_err(err(format!("creating the container {name}")))?;
        Ok(())
    }

    pub(crate) fn start(&self, name: &str) -> Result<(), BackendError> {
        self.rt.block_on(self.api.start_container(name, None)).map_err(err(format!("starting the container {name}")))
    }

    /// Removes the container, running or not, with its anonymous volumes.
    /// One already gone is removed.
    pub(crate) fn remove(&self, name: &str) -> Result<(), BackendError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.rt.block_on(self.api.remove_container(name, Some(opts))) {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(err(format!("removing the container {name}"))(e)),
        }
    }

    /// Kills the container's processes (the agent's too); removal is teardown's.
    pub(crate) fn kill(&self, name: &str) -> Result<(), BackendError> {
        self.rt.block_on(self.api.kill_container(name, None)).map_err(err(format!("stopping the container {name}")))
    }

    /// Whether the container still runs; when not, whether the kernel
    /// killed it at its memory limit and its exit code.
    pub(crate) fn state(&self, name: &str) -> Result<State, BackendError> {
        let i = self
            .rt
            .block_on(self.api.inspect_container(name, None))
            .map_err(err(format!("asking how the container {name} is")))?;
        let s = i.state.unwrap_or_default();
        Ok(State { running: s.running == Some(true), oom_killed: s.oom_killed == Some(true), exit_code: s.exit_code })
    }

    /// The names of every container, running or not, labelled for `slug`.
    pub(crate) fn labelled(&self, slug: &str) -> Result<Vec<String>, BackendError> {
        let filters: HashMap<&str, Vec<String>> = [("label", vec![format!("{LABEL_SLUG}={slug}")])].into();
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let list = self.rt.block_on(self.api.list_containers(Some(opts))).map_err(err("listing containers"))?;
        Ok(list
            .into_iter()
            .filter(|c| c.labels.as_ref().and_then(|l| l.get(LABEL_SLUG)).is_some_and(|s| s == slug))
            .filter_map(|c| c.names?.first().map(|n| n.trim_start_matches('/').to_owned()))
            .collect())
    }

    /// Runs `argv` in the container as `user` with exactly `env`, feeding
    /// it `stdin` (then EOF) and collecting its output and exit code.
    pub(crate) fn exec_output(
        &self,
        container: &str,
        argv: &[String],
        env: &[(String, String)],
        workdir: Option<&str>,
        user: &str,
        stdin: Option<&[u8]>,
    ) -> Result<Output, BackendError> {
        let what = || format!("running `{}` in {container}", argv.first().map_or("", String::as_str));
        self.rt.block_on(async {
            let id = self.create_exec(container, argv, env, workdir, user, false, stdin.is_some()).await?;
            let started = self.api.start_exec(&id, Some(StartExecOptions::default())).await.map_err(err(what()))?;
            let StartExecResults::Attached { mut output, mut input } = started else {
                return Err(BackendError::Control("the daemon ran an exec detached".into()));
            };
            if let Some(bytes) = stdin {
                input.write_all(bytes).await.map_err(crate::io(what()))?;
                input.shutdown().await.map_err(crate::io(what()))?;
            }
            let mut out = Output::default();
            while let Some(chunk) = output.next().await {
                match chunk.map_err(err(what()))? {
                    bollard::container::LogOutput::StdOut { message } => out.stdout.extend_from_slice(&message),
                    bollard::container::LogOutput::StdErr { message } => out.stderr.extend_from_slice(&message),
                    _ => {}
                }
            }
            out.code = self.exit_code(&id).await?;
            Ok(out)
        })
    }

    #[expect(clippy::too_many_arguments, reason = "one exec's settings")]
    pub(super) async fn create_exec(
        &self,
        container: &str,
        argv: &[String],
        env: &[(String, String)],
        workdir: Option<&str>,
        user: &str,
        tty: bool,
        stdin: bool,
    ) -> Result<String, BackendError> {
        let opts = CreateExecOptions {
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: Some(argv.to_vec()),
            user: Some(user.to_owned()),
            working_dir: workdir.map(str::to_owned),
            privileged: Some(false),
            ..CreateExecOptions::default()
        };
        let r =
            self.api.create_exec(container, opts).await.map_err(err(format!("starting a command in {container}")))?;
        Ok(r.id)
    }

    /// An exec's exit code, once it has ended.
    pub(super) async fn exit_code(&self, id: &str) -> Result<i32, BackendError> {
        for _ in 0..200 {
            let i = self.api.inspect_exec(id).await.map_err(err("asking how a command ended"))?;
            if i.running != Some(true) {
                return Ok(i.exit_code.map_or(-1, |c| i32::try_from(c).unwrap_or(-1)));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(BackendError::Control("a command's output ended but it kept running".into()))
    }
}
