//! The design for smolvm ≥ 1.6.4: a VM with no network device at all, the
//! bottle's sidecar sockets published into it with `--mount-socket`, and a
//! forwarder in the guest that makes them reachable at the same
//! `127.0.0.1` ports as in a native bottle.
//!
//! The forwarder is this same bot-bottle executable, copied in with `machine
//! cp` and run as `__bottle-forward` with `exec -d`: it needs nothing from
//! the image (no socat, no python, no `ip`: it brings `lo` up itself over
//! rtnetlink), only that the guest can run a Linux binary of the host's
//! architecture and libc (see ARCHITECTURE.md for the limit that sets).

use std::path::{Path, PathBuf};

use bot_bottle_smolvm::{CpOpts, ExecOpts, MountSocket, Smolvm, StoredRecord};

use crate::BackendError;

/// Where the sidecar sockets appear in the guest.
pub(super) const GUEST_DIR: &str = "/run/bot-bottle/sidecars";
/// Where the forwarder is copied in the guest.
pub(super) const FORWARDER: &str = "/run/bot-bottle/bin/bot-bottle-forward";
/// A unix socket path's limit (`sun_path`), less its NUL.
const SUN_PATH_MAX: usize = 107;

/// One sidecar socket published in the guest.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Published {
    /// The port the agent reaches it at: `127.0.0.1:port`.
    pub port: u16,
    pub host: PathBuf,
    pub guest: String,
}

/// Every sidecar socket of a bottle whose sockets are in `dir`: the proxy
/// and the gate always, supervise when the plan enables it.
pub(super) fn published(dir: &Path, supervise: bool) -> Vec<Published> {
    let extra = supervise.then_some(("supervise.sock", crate::SUPERVISE_PORT));
    crate::UNIX_SOCKETS
        .iter()
        .copied()
        .chain(extra)
        .map(|(name, port)| Published { port, host: dir.join(name), guest: format!("{GUEST_DIR}/{name}") })
        .collect()
}

/// A socket path smolvm and the kernel can use: short enough for
/// `sun_path` (smolvm hangs at boot on one too long, smolvm PR #1208) and
/// without the `:` that `--mount-socket` splits on.
pub(super) fn check_paths(sockets: &[Published]) -> Result<(), BackendError> {
    for s in sockets {
        let len = s.host.as_os_str().len();
        if len > SUN_PATH_MAX {
            return Err(BackendError::Preflight(format!(
                "the sidecar socket {} is {len} bytes long, more than a unix socket may be ({SUN_PATH_MAX}): \
                 set XDG_STATE_HOME to a shorter directory",
                s.host.display()
            )));
        }
        if s.host.to_string_lossy().contains(':') {
            return Err(BackendError::Preflight(format!(
                "the sidecar socket {} contains ':', which smolvm's --mount-socket cannot take: \
                 set XDG_STATE_HOME to a directory without one",
                s.host.display()
            )));
        }
    }
    Ok(())
}

pub(super) fn mount_sockets(sockets: &[Published]) -> Vec<MountSocket> {
    sockets.iter().map(|s| MountSocket { host: s.host.clone(), guest: s.guest.clone() }).collect()
}

/// Fail closed: the machine smolvm recorded has no network device and no
/// egress policy, and publishes exactly our sockets.
pub(super) fn confirm(name: &str, record: Option<&StoredRecord>, sockets: &[Published]) -> Result<(), BackendError> {
    let refuse = |why: String| Err(BackendError::Confinement(format!("machine {name} {why}: refusing to start it")));
    let Some(r) = record else { return refuse("is not in smolvm's state DB".into()) };
    if r.network {
        return refuse("was created with a network device".into());
    }
    if r.allowed_cidrs.is_some() || r.dns.is_some() || r.network_backend.is_some() {
        return refuse("carries a network policy".into());
    }
    let mut want: Vec<(Option<String>, String)> =
        sockets.iter().map(|s| (Some(s.host.display().to_string()), s.guest.clone())).collect();
    let mut got: Vec<(Option<String>, String)> =
        r.published_sockets.iter().map(|p| (p.host_path.clone(), p.guest_path.clone())).collect();
    want.sort();
    got.sort();
    if got != want {
        return refuse(format!("publishes {got:?} instead of {want:?}"));
    }
    Ok(())
}

/// Copies the forwarder in, starts it in the background and waits until
/// every port answers.
pub(super) fn start_forwarder(smolvm: &Smolvm, name: &str, sockets: &[Published]) -> Result<(), BackendError> {
    let exe = std::env::current_exe().map_err(crate::io("finding bot-bottle's own executable"))?;
    smolvm.machine_cp_in(name, &exe, FORWARDER, &CpOpts { mode: Some(0o755), ..CpOpts::default() })?;
    let mut argv = vec![FORWARDER.to_owned(), "__bottle-forward".to_owned()];
    argv.extend(sockets.iter().map(|s| format!("{}={}", s.port, s.guest)));
    let out = smolvm.machine_exec(&ExecOpts { detach: true, ..ExecOpts::new(name, argv) })?;
    if out.status != 0 {
        return Err(BackendError::Inside {
            what: "starting the sidecar forwarder".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let mut argv = vec![FORWARDER.to_owned(), "__bottle-forward".to_owned(), "--ready".to_owned()];
    argv.extend(sockets.iter().map(|s| s.port.to_string()));
    let out = smolvm.machine_exec(&ExecOpts::new(name, argv))?;
    if out.status != 0 {
        return Err(BackendError::Inside {
            what: "waiting for the sidecar forwarder".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
