//! A running docker bottle: commands through the daemon's exec API, the
//! agent on a pty of the container's own (docker's `tty`), relayed by the
//! same [`Relay`] as the other backends: the user's terminal never enters.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::exec::{ResizeExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::client::{Client, State};
use super::{FORWARDER, HOME, ids};
use crate::terminal::Relay;
use crate::{BackendError, Bottle, Exec, Output, Owner};

/// A running container. Dropping the handle kills it; teardown removes it.
///
/// Provisioning's directories and files are batched: each user's go into
/// one archive that the forwarder (`__bottle-forward --unpack`) writes in
/// one exec, before the next command or the agent runs; an exec costs
/// 50-70 ms, and a launch writes half a dozen files.
pub struct DockerBottle {
    client: Client,
    container: String,
    agent: (u32, u32),
    /// Writes not made yet, per user, in the order first asked.
    pending: Vec<(String, tar::Builder<Vec<u8>>)>,
    /// The forwarder's ports, until the first batch has seen them listen.
    unconfirmed: Vec<u16>,
}

impl std::fmt::Debug for DockerBottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBottle").field("container", &self.container).field("agent", &self.agent).finish()
    }
}

impl DockerBottle {
    pub(super) fn new(client: Client, container: String, agent: (u32, u32), ports: Vec<u16>) -> DockerBottle {
        DockerBottle { client, container, agent, pending: Vec::new(), unconfirmed: ports }
    }

    /// Adds a directory or file to `user`'s next batch.
    fn queue(&mut self, user: String, path: &str, mode: u32, content: Option<&[u8]>) -> Result<(), BackendError> {
        let rel = path.trim_start_matches('/');
        if !path.starts_with('/') || rel.is_empty() || rel.split('/').any(|c| c == "..") {
            return Err(BackendError::Control(format!("not an absolute path in the bottle: {path}")));
        }
        let i = match self.pending.iter().position(|(u, _)| *u == user) {
            Some(i) => i,
            None => {
                self.pending.push((user, tar::Builder::new(Vec::new())));
                self.pending.len() - 1
            }
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_mtime(0);
        let bytes = content.unwrap_or_default();
        h.set_entry_type(if content.is_some() { tar::EntryType::Regular } else { tar::EntryType::Directory });
        h.set_size(bytes.len() as u64);
        self.pending[i].1.append_data(&mut h, rel, bytes).map_err(crate::io(format!("queueing {path}")))
    }

    /// Makes every queued write, root's first (the agent's may go into
    /// directories root makes; root, with no capabilities, cannot write
    /// into the agent's), and confirms the forwarder listens.
    fn flush(&mut self) -> Result<(), BackendError> {
        let mut batches = std::mem::take(&mut self.pending);
        batches.sort_by_key(|(user, _)| user != "0:0");
        if batches.is_empty() && !self.unconfirmed.is_empty() {
            batches.push(("0:0".to_owned(), tar::Builder::new(Vec::new())));
        }
        for (user, b) in batches {
            let tar = b.into_inner().map_err(crate::io("finishing the files to write"))?;
            let mut argv: Vec<String> =
                [FORWARDER, "__bottle-forward", "--unpack"].into_iter().map(str::to_owned).collect();
            argv.extend(std::mem::take(&mut self.unconfirmed).iter().map(u16::to_string));
            let out = self.client.exec_output(&self.container, &argv, &[], Some("/"), &user, Some(&tar))?;
            if out.code != 0 {
                return Err(BackendError::Inside {
                    what: "writing the bottle's files and waiting for the sidecar forwarder".into(),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Who writes `path` for `owner`. Root inside has no capabilities, so
    /// it cannot write into the agent's home: what lands there is the
    /// agent's, as any file in its own home is the agent's to replace.
    fn writer(&self, path: &str, owner: Owner) -> String {
        let in_home = path == HOME || path.starts_with(&format!("{HOME}/"));
        match owner {
            Owner::Root if !in_home => "0:0".into(),
            _ => ids(self.agent),
        }
    }

    fn user(&self, owner: Owner) -> String {
        match owner {
            Owner::Root => "0:0".into(),
            Owner::Agent => ids(self.agent),
        }
    }
}

/// `argv` run through bot-bottle's confiner: no capabilities at all,
/// `no_new_privs`, the native bottle's seccomp filter.
fn confined(argv: &[String]) -> Vec<String> {
    [FORWARDER, "__bottle-forward", "--exec", "--"].into_iter().map(str::to_owned).chain(argv.iter().cloned()).collect()
}

impl Bottle for DockerBottle {
    fn exec(&mut self, cmd: &Exec) -> Result<Output, BackendError> {
        self.flush()?;
        let workdir = cmd.workdir.clone().unwrap_or_else(|| HOME.to_owned());
        let user = self.user(cmd.user);
        self.client.exec_output(&self.container, &confined(&cmd.argv), &cmd.env, Some(&workdir), &user, None)
    }

    fn mkdir(&mut self, path: &str, mode: u32, owner: Owner) -> Result<(), BackendError> {
        let user = self.writer(path, owner);
        self.queue(user, path, mode, None)
    }

    fn copy_in(&mut self, path: &str, content: &[u8], mode: u32, owner: Owner) -> Result<(), BackendError> {
        let user = self.writer(path, owner);
        self.queue(user, path, mode, Some(content))
    }

    fn run_agent(&mut self, cmd: &Exec, stop: &AtomicBool) -> Result<i32, BackendError> {
        self.flush()?;
        let size = crate::terminal::terminal_size();
        let tty = size.is_some();
        // The launcher's side of the agent's streams: a pty pair (the
        // relay on its master, the exec on its raw slave) or three pipes.
        let (relay, ours_in, ours_out, ours_err) = if tty {
            let (master, slave) = pty().map_err(crate::io("opening a pseudo-terminal for the agent"))?;
            let relay = Relay::pty(master).map_err(crate::io("putting your terminal in raw mode"))?;
            let slave = Arc::new(slave);
            (relay, slave.clone(), slave, None)
        } else {
            let p = || nix::unistd::pipe().map_err(|e| crate::io("a pipe for the agent")(e.into()));
            let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (p()?, p()?, p()?);
            (Relay::pipes(in_w, out_r, err_r), Arc::new(in_r), Arc::new(out_w), Some(Arc::new(err_w)))
        };
        let workdir = cmd.workdir.clone().unwrap_or_else(|| HOME.to_owned());
        let user = self.user(cmd.user);
        let winch = Arc::new(AtomicBool::new(false));
        let winch_id = signal_hook::flag::register(signal_hook::consts::SIGWINCH, winch.clone())
            .map_err(crate::io("watching the window size"))?;
        let done = Arc::new(AtomicBool::new(false));
        let client = self.client.clone();
        let container = self.container.clone();
        let mut argv = confined(&cmd.argv);
        if let Some(s) = size {
            argv.splice(3..3, ["--size".to_owned(), format!("{}x{}", s.ws_row, s.ws_col)]);
        }
        let env = cmd.env.clone();
        let d = done.clone();
        let rt = self.client.rt.clone();
        // The user's window size, passed on to the container's own pty.
        let (resize, sizes) = tokio::sync::mpsc::unbounded_channel();
        let streams = Streams { input: ours_in, out: ours_out, err: ours_err, sizes };
        let agent = rt.spawn(async move {
            let r = attach(&client, &container, &argv, &env, &workdir, &user, tty, size, streams).await;
            d.store(true, Ordering::SeqCst);
            r
        });
        let mut stopped = false;
        let mut checked = std::time::Instant::now();
        let mut ended = None;
        while !done.load(Ordering::SeqCst) {
            // A container that ends under the agent (gVisor's sandbox killed
            // at the memory limit, a runtime that fails) can leave the exec's
            // stream open for ever: its state is watched too.
            if !stopped && checked.elapsed() > CONTAINER_CHECK {
                checked = std::time::Instant::now();
                match self.client.state(&self.container) {
                    Ok(s) if !s.running => {
                        ended = Some(s);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(container = %self.container, error = %e, "checking the container"),
                }
            }
            if stop.load(Ordering::SeqCst) && !stopped {
                // Killing the container ends every process in it, the agent too.
                if let Err(e) = self.client.kill(&self.container) {
                    tracing::warn!(container = %self.container, error = %e, "stopping the container");
                }
                stopped = true;
            }
            if winch.swap(false, Ordering::SeqCst) {
                relay.resize();
                if let Some(s) = crate::terminal::terminal_size().filter(|_| tty) {
                    // Gone only once the agent has ended.
                    resize.send(s).ok();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_hook::low_level::unregister(winch_id);
        if let Some(s) = ended {
            agent.abort();
            // Cancelled: its streams are dropped, so the relay drains.
            if let Err(e) = self.client.rt.block_on(agent) {
                tracing::debug!(error = %e, "the agent's exec task");
            }
            relay.finish();
            return Err(BackendError::Inside { what: "running the agent".into(), message: container_ended(s) });
        }
        let r = self.client.rt.block_on(agent);
        relay.finish();
        // The exec's stream can also end because its container did: then
        // the agent's exit code is the runtime's, and why is the container's.
        // A runtime's own failure code (gVisor's sandbox killed at the
        // memory limit answers 128, "WaitPID failed: EOF") can come back
        // while the container is still being torn down: its state is given
        // a moment to settle before the code is taken as the agent's.
        let settle = if matches!(r, Ok(Ok(c)) if c >= 128) { CONTAINER_SETTLE } else { Duration::ZERO };
        let waited = std::time::Instant::now();
        if !stopped {
            loop {
                match self.client.state(&self.container) {
                    Ok(s) if !s.running => {
                        let message = container_ended(s);
                        return Err(BackendError::Inside { what: "running the agent".into(), message });
                    }
                    Ok(_) if waited.elapsed() < settle => std::thread::sleep(Duration::from_millis(100)),
                    _ => break,
                }
            }
        }
        match r {
            Ok(r) => r,
            Err(_) => Err(BackendError::Control("the agent's exec task failed".into())),
        }
    }
}

/// The launcher's side of the agent's streams, and its window sizes.
struct Streams {
    input: Arc<OwnedFd>,
    out: Arc<OwnedFd>,
    err: Option<Arc<OwnedFd>>,
    sizes: tokio::sync::mpsc::UnboundedReceiver<rustix::termios::Winsize>,
}

/// How often a running agent's container is checked.
const CONTAINER_CHECK: Duration = Duration::from_millis(500);

/// How long a container that may be ending under an agent whose exec
/// failed (exit code 128 and above) is watched before the code stands.
const CONTAINER_SETTLE: Duration = Duration::from_secs(3);

/// Why the container ended under the agent, for the user.
fn container_ended(s: State) -> String {
    if s.oom_killed {
        "the bottle was killed at its memory limit (`resources.memory`); under gVisor (runsc) the limit applies to \
         the whole sandbox, so a bottle that reaches it ends whole"
            .into()
    } else if s.exit_code == Some(137) {
        // The daemon does not always see gVisor's sandbox OOM-killed.
        "the bottle's container was killed (SIGKILL): at its memory limit (`resources.memory`; under gVisor (runsc) \
         the limit applies to the whole sandbox), or by `docker kill`"
            .into()
    } else {
        format!(
            "the bottle's container stopped (exit code {})",
            s.exit_code.map_or("unknown".into(), |c| c.to_string())
        )
    }
}

/// Starts the agent's exec attached and pumps its streams to ours until it
/// ends; returns its exit code.
#[expect(clippy::too_many_arguments, reason = "one exec's settings and streams")]
async fn attach(
    client: &Client,
    container: &str,
    argv: &[String],
    env: &[(String, String)],
    workdir: &str,
    user: &str,
    tty: bool,
    size: Option<rustix::termios::Winsize>,
    streams: Streams,
) -> Result<i32, BackendError> {
    let Streams { input: input_fd, out: out_fd, err: err_fd, mut sizes } = streams;
    let id = client.create_exec(container, argv, env, Some(workdir), user, tty, true).await?;
    let started = client
        .api
        .start_exec(&id, Some(StartExecOptions { tty, ..StartExecOptions::default() }))
        .await
        .map_err(|e| BackendError::Docker { what: "starting the agent".into(), source: Box::new(e) })?;
    let StartExecResults::Attached { mut output, mut input } = started else {
        return Err(BackendError::Control("the daemon ran the agent detached".into()));
    };
    if let Some(s) = size {
        let opts = ResizeExecOptions { height: s.ws_row, width: s.ws_col };
        if let Err(e) = client.api.resize_exec(&id, opts).await {
            tracing::debug!(error = %e, "sizing the agent's terminal");
        }
    }
    // Later sizes (SIGWINCH) go to the exec's pty: the daemon resizes it and
    // the agent gets its own SIGWINCH.
    let (api, exec) = (client.api.clone(), id.clone());
    let resizer = tokio::spawn(async move {
        while let Some(s) = sizes.recv().await {
            let opts = ResizeExecOptions { height: s.ws_row, width: s.ws_col };
            if let Err(e) = api.resize_exec(&exec, opts).await {
                tracing::debug!(error = %e, "resizing the agent's terminal");
            }
        }
    });
    // Our input side, read on a thread of its own (a blocking fd), sent on.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let stop_in = Arc::new(AtomicBool::new(false));
    let s = stop_in.clone();
    std::thread::spawn(move || read_into(input_fd.as_fd(), &tx, &s));
    let feeder = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if input.write_all(&b).await.is_err() {
                return;
            }
        }
        // The launcher's input ended: so does the agent's.
        input.shutdown().await.ok();
    });
    while let Some(chunk) = output.next().await {
        let Ok(chunk) = chunk else { break };
        let (fd, bytes) = match chunk {
            bollard::container::LogOutput::StdErr { message } => (err_fd.as_ref().unwrap_or(&out_fd), message),
            bollard::container::LogOutput::StdOut { message } | bollard::container::LogOutput::Console { message } => {
                (&out_fd, message)
            }
            bollard::container::LogOutput::StdIn { .. } => continue,
        };
        // A relay that has gone drops the rest; the agent never blocks on it.
        rustix::io::write(fd.as_fd(), &bytes).ok();
    }
    stop_in.store(true, Ordering::SeqCst);
    feeder.abort();
    resizer.abort();
    client.exit_code(&id).await
}

/// Reads `fd` into `tx` until it ends or `stop` is set (polled, so the
/// thread never outlives the agent for long).
fn read_into(fd: std::os::fd::BorrowedFd<'_>, tx: &tokio::sync::mpsc::Sender<Vec<u8>>, stop: &AtomicBool) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let tick = Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
    let mut buf = vec![0u8; 16 << 10];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => return,
        }
    }
}

/// A new pseudo-terminal whose slave is raw: it only carries bytes between
/// the relay and the container's own pty, which has the line discipline.
fn pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())?;
    let mut t = rustix::termios::tcgetattr(&slave)?;
    t.make_raw();
    rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)?;
    Ok((master, slave))
}

impl Drop for DockerBottle {
    fn drop(&mut self) {
        // Teardown removes it; killing it first ends the agent at once.
        if let Err(e) = self.client.kill(&self.container) {
            tracing::debug!(container = %self.container, error = %e, "stopping the container at teardown");
        }
    }
}
