//! The smolmachines backend: each bottle is a libkrun micro-VM run by the
//! `smolvm` CLI, with a kernel of its own. Which design confines it depends
//! on the smolvm found (`smolvm --version`), and the plan says which:
//!
//! - smolvm ≥ 1.6.4 ([`SOCKETS`], see [`sockets`]): the VM has no network
//!   device at all. The bottle's sidecars listen on unix sockets in its
//!   state directory ([`Endpoint::Unix`]), published into the guest with
//!   `--mount-socket`; a forwarder in the guest makes them reachable at
//!   `127.0.0.1:3128` and `:9420`, as in a native bottle. Nothing else is
//!   reachable: no interface but `lo`, no DNS.
//! - smolvm before 1.1.3 ([`TSI_LOOPBACK`], the seeds' design): a policy
//!   ran on TSI, where a guest's connection to `127.0.0.N` is made by the
//!   host. The sidecars listen on the bottle's own `127.0.0.N` (leased from
//!   the loopback pool), and the VM is created with `--allow-cidr
//!   127.0.0.N/32`; before `machine start` the allowlist is confirmed in
//!   smolvm's own state DB (patched where smolvm dropped it) and the launch
//!   is refused if it cannot be. DNS: `--dns 127.0.0.N`, where nothing
//!   answers on port 53, so the gateway's forwarding carries nothing out.
//! - In between, refused: from 1.1.3 every policy runs on the virtio-net
//!   gateway, where the guest's `127.0.0.0/8` is its own loopback and only
//!   the gateway's address reaches the host's `127.0.0.1` (smolvm #784,
//!   #1060), and `--mount-socket` does not exist yet.
//!
//! Users: from smolvm 1.14 (`exec --user`, socket design) the agent and
//! every provisioning step meant for it run as a user of their own: the
//! launcher's uid and gid, or [`crate::AGENT_ID`] when the launcher
//! is root (then the workspace copy is made that uid's, since the guest sees
//! a volume with the host's ownership). Root in the guest makes the agent's
//! home and hands it over before anything of the agent's runs, and runs the
//! forwarder. Before 1.14 the agent runs as root in the guest (with no
//! capabilities in the socket design); the plan says so and warns.

mod image;
mod sockets;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bot_bottle_loopback::{self as loopback, Pool};
use bot_bottle_manifest::{BackendKind, WorkspaceMode};
use bot_bottle_smolvm::{
    CpOpts, CreateOpts, EXEC_USER, ExecOpts, MachineState, SOCKETS, SUPPORTED, Smolvm, Source, TSI_LOOPBACK, Version,
    VersionRange, Volume,
};
pub use image::Image;
pub use sockets::Published;

use crate::terminal::Relay;
use crate::{
    Backend, BackendError, Bottle, Check, Endpoint, Exec, Output, Owner, PreparedBottle, Status, Target, Teardown,
    pause_point,
};

/// The label that names a machine's bottle, and the one with its address.
const LABEL: &str = "bot-bottle";
const LABEL_ADDR: &str = "bot-bottle-addr";

/// The agent's home in the guest, as provisioning has it.
const HOME: &str = "/home/agent";

/// The smolmachines backend.
#[derive(Clone, Debug)]
pub struct Smolmachines {
    smolvm: Smolvm,
    pool: Pool,
    /// The loopback pool's lease directory (one per user).
    leases: PathBuf,
    /// The KVM device that must be usable (Linux); `None` on macOS.
    kvm: Option<PathBuf>,
}

impl Smolmachines {
    /// `smolvm` (from `$BOT_BOTTLE_SMOLVM`, else `PATH`), the default pool,
    /// leases under `state_root`, and `/dev/kvm` on Linux
    /// (`$BOT_BOTTLE_KVM_DEVICE` names another device).
    pub fn from_env(state_root: &Path) -> Smolmachines {
        // Not found: a bare name, which `preflight` reports as not installed.
        let smolvm = match std::env::var_os("BOT_BOTTLE_SMOLVM") {
            Some(p) => Smolvm::at(p),
            None => Smolvm::find().unwrap_or_else(|_| Smolvm::at("smolvm")),
        };
        let kvm = cfg!(target_os = "linux").then(|| {
            std::env::var_os("BOT_BOTTLE_KVM_DEVICE").map_or_else(|| PathBuf::from("/dev/kvm"), PathBuf::from)
        });
        Smolmachines::new(smolvm, Pool::default(), state_root.join("loopback"), kvm)
    }

    pub fn new(smolvm: Smolvm, pool: Pool, leases: PathBuf, kvm: Option<PathBuf>) -> Smolmachines {
        Smolmachines { smolvm, pool, leases, kvm }
    }

    /// What must hold before anything is created: a supported smolvm of a
    /// release one of the designs fits and, on Linux, a usable KVM device.
    /// Returns smolvm's version and the design it gets.
    pub fn preflight(&self) -> Result<String, BackendError> {
        let (v, design) = self.design()?;
        Ok(format!("{v} ({})", design.describe()))
    }

    fn design(&self) -> Result<(Version, Design), BackendError> {
        if self.smolvm.program() == Path::new("smolvm") {
            return Err(bot_bottle_smolvm::SmolvmError::NotInstalled.into());
        }
        if let Some(dev) = &self.kvm {
            kvm_check(dev).map_err(BackendError::Preflight)?;
        }
        let v = self.smolvm.check_version()?;
        Ok((v, Design::for_version(v).map_err(BackendError::Preflight)?))
    }

    /// Addresses held by machines of any bottle that still exist.
    fn busy(&self) -> Vec<Ipv4Addr> {
        self.smolvm
            .machine_ls()
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m.labels.get(LABEL_ADDR)?.parse().ok())
            .collect()
    }
}

/// KVM on Linux: the device must exist and be readable and writable by us.
pub fn kvm_check(dev: &Path) -> Result<(), String> {
    use nix::unistd::{AccessFlags, access};
    if !dev.exists() {
        return Err(format!(
            "{} does not exist: this machine offers no KVM. Load the module (`sudo modprobe kvm_intel` or \
             `sudo modprobe kvm_amd`); inside a VM, enable nested virtualisation",
            dev.display()
        ));
    }
    if access(dev, AccessFlags::R_OK | AccessFlags::W_OK).is_err() {
        return Err(format!(
            "{} is not readable and writable by you: add yourself to the kvm group \
             (`sudo usermod -aG kvm $USER`, then log in again)",
            dev.display()
        ));
    }
    Ok(())
}

/// How a bottle's VM is confined; which one depends on smolvm's release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Design {
    /// No network device; the sidecars' sockets published with
    /// `--mount-socket` and forwarded to `127.0.0.1` inside.
    Sockets,
    /// The seeds' design: the sidecars on the bottle's own `127.0.0.N`, the
    /// only address the VM's TSI policy allows.
    TsiLoopback,
}

impl Design {
    /// The smolvm releases this design is used for.
    pub fn range(self) -> VersionRange {
        match self {
            Design::Sockets => SOCKETS,
            Design::TsiLoopback => TSI_LOOPBACK,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Design::Sockets => "a VM with no network; its sidecar sockets published into it",
            Design::TsiLoopback => "a VM confined by TSI to its own loopback address",
        }
    }

    /// The design for smolvm `v`, or why there is none.
    pub fn for_version(v: Version) -> Result<Design, String> {
        if SOCKETS.contains(v) {
            Ok(Design::Sockets)
        } else if TSI_LOOPBACK.contains(v) {
            Ok(Design::TsiLoopback)
        } else if TSI_LOOPBACK.below <= v && v < SOCKETS.min {
            Err(format!(
                "smolvm {v} cannot confine a bottle: from {} its egress policy runs on the virtio-net gateway, \
                 where a bottle's own 127.0.0.N is unreachable, and `--mount-socket` arrives only in {}. \
                 Upgrade smolvm to {} or later",
                TSI_LOOPBACK.below, SOCKETS.min, SOCKETS.min
            ))
        } else {
            Err(format!("smolvm {v} is not supported: bot-bottle drives smolvm {SUPPORTED}"))
        }
    }
}

/// What a smolmachines launch builds; `--dry-run` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prepared {
    pub machine: String,
    /// The confinement smolvm's release gets (the socket design when no
    /// smolvm is found: what a current release gets).
    pub design: Design,
    /// `none`: the VM has no network device (socket design); `tsi`.
    pub network: &'static str,
    /// The sidecar sockets published in the guest (socket design).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<Published>,
    /// The loopback address this bottle would get if launched now (TSI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// What the VM may reach: the bottle's own address (TSI).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowlist: Vec<String>,
    /// The gateway's upstream resolver: the bottle's own address, where
    /// nothing answers, so DNS carries nothing out (TSI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Ipv4Addr>,
    pub smolvm: SmolvmInfo,
    pub image: Option<String>,
    /// What the VM boots from (socket design): docker's work, if any, is
    /// done at launch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boots: Option<Image>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// The host directory mounted at `/workspace`.
    pub workspace: Option<PathBuf>,
    /// Who the agent runs as in the guest: `UID:GID`, or root where smolvm
    /// has no `exec --user`.
    pub agent_user: String,
    /// Every setting of the plan a VM cannot enforce as asked.
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
    /// The agent's uid and gid in the guest; `None`: root.
    #[serde(skip)]
    agent_ids: Option<(u32, u32)>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SmolvmInfo {
    pub program: PathBuf,
    pub supported: String,
    /// The version found, when smolvm runs here.
    pub found: Option<String>,
    /// The releases the design in force is used for.
    pub range: String,
    /// Every design and its releases; the releases in none are refused.
    pub designs: Vec<(Design, String)>,
}

/// A smolvm machine name for a bottle: smolvm allows `[A-Za-z0-9_-]`, no
/// `--`, no trailing `-`.
fn machine_name(slug: &str) -> String {
    let mut out = String::from("bottle-");
    for c in slug.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_end_matches('-').chars().take(128).collect()
}

fn cidr(addr: Ipv4Addr) -> String {
    format!("{addr}/32")
}

impl Backend for Smolmachines {
    fn kind(&self) -> BackendKind {
        BackendKind::Smolmachines
    }

    fn prepare(&self, t: &Target<'_>) -> Result<Box<dyn PreparedBottle>, BackendError> {
        Ok(Box::new(SmolPrepared { backend: self.clone(), p: self.prepare_machine(t)? }))
    }

    fn cleanup(&self, slug: &str, state: &Path) -> Vec<String> {
        self.cleanup_leftovers(slug, state)
    }

    fn doctor(&self) -> Vec<Check> {
        vec![match self.preflight() {
            Ok(v) => Check {
                name: "smolvm",
                status: Status::Ok,
                detail: format!("smolvm {v}, and KVM where needed"),
                fix: None,
            },
            Err(e) => Check { name: "smolvm", status: Status::Fail, detail: e.to_string(), fix: None },
        }]
    }
}

/// A smolmachines bottle resolved for a target, with the backend that
/// builds it.
#[derive(Debug)]
struct SmolPrepared {
    backend: Smolmachines,
    p: Prepared,
}

impl PreparedBottle for SmolPrepared {
    fn view(&self) -> serde_json::Value {
        crate::view_of(BackendKind::Smolmachines, &self.p)
    }

    fn warnings(&self) -> Vec<String> {
        self.p.warnings.clone()
    }

    fn copy_owner(&self) -> Option<u32> {
        copy_owner(&self.p)
    }

    fn reserve(&self, teardown: &mut Teardown) -> Result<Endpoint, BackendError> {
        self.backend.reserve_for(&self.p, teardown)
    }

    fn launch(&self, endpoint: &Endpoint, teardown: &mut Teardown) -> Result<Box<dyn Bottle>, BackendError> {
        Ok(Box::new(self.backend.launch_for(&self.p, endpoint, teardown)?))
    }
}

impl Smolmachines {
    /// What a smolmachines launch for `t` builds.
    pub fn prepare_machine(&self, t: &Target<'_>) -> Result<Prepared, BackendError> {
        let found = self.smolvm.version().ok();
        let mut warnings = Vec::new();
        let design = match found.map(Design::for_version) {
            Some(Ok(d)) => d,
            Some(Err(why)) => {
                warnings.push(format!("smolvm: {why}"));
                Design::Sockets
            }
            None => Design::Sockets,
        };
        if !t.plan.mounts.is_empty() {
            warnings.push(
                "mounts: not supported by smolmachines yet: the VM sees none of the host directories listed".into(),
            );
        }
        let (address, sockets) = match design {
            Design::TsiLoopback => {
                // Read-only: which address the pool would hand out now.
                let live: Vec<Ipv4Addr> = loopback::leases(&self.leases)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|l| !matches!(l.state, loopback::LeaseState::Stale { .. }))
                    .map(|l| l.addr)
                    .collect();
                (self.pool.addrs().find(|a| !live.contains(a)), vec![])
            }
            Design::Sockets => (None, sockets::published(&t.state.join("sockets"), t.plan.supervise)),
        };
        let workspace = match t.plan.workspace {
            WorkspaceMode::None => None,
            WorkspaceMode::Mount => Some(t.project.to_path_buf()),
            WorkspaceMode::Copy => Some(t.state.join("workspace")),
        };
        if t.plan.resources.pids.is_some() {
            warnings.push("pids: not enforced: the VM is the boundary, and nothing inside it counts processes".into());
        }
        if let Some(c) = t.plan.resources.cpus
            && c.0 % 1000 != 0
        {
            warnings.push(format!("cpus: a VM has whole cpus: {c} becomes {}", c.0.div_ceil(1000)));
        }
        let tsi = design == Design::TsiLoopback;
        // A smolvm not found is planned as a current one, which has `--user`.
        let agent_ids = (!tsi && found.is_none_or(|v| v >= EXEC_USER)).then(crate::docker::agent_ids);
        let agent_user = match agent_ids {
            Some((u, g)) => format!("{u}:{g}"),
            None => {
                let how = if tsi { "root" } else { "root, with no capabilities" };
                warnings.push(format!(
                    "user: in the VM the agent runs as {how}: smolvm {} has no `exec --user`, which arrives in {EXEC_USER}; \
                     upgrade smolvm to run it as a user of its own",
                    found.map_or_else(|| "?".into(), |v| v.to_string())
                ));
                how.to_owned()
            }
        };
        Ok(Prepared {
            warnings,
            machine: machine_name(t.slug),
            design,
            network: if tsi { "tsi" } else { "none" },
            sockets,
            address,
            pool: tsi.then(|| self.pool.to_string()),
            allowlist: address.map(cidr).into_iter().collect(),
            dns: address,
            smolvm: SmolvmInfo {
                program: self.smolvm.program().to_path_buf(),
                supported: SUPPORTED.to_string(),
                found: found.map(|v| v.to_string()),
                range: design.range().to_string(),
                designs: [Design::Sockets, Design::TsiLoopback].map(|d| (d, d.range().to_string())).into(),
            },
            boots: (!tsi).then(|| image::resolve(t.plan.image.as_ref(), t.project)),
            image: t.plan.image.as_ref().and_then(|i| match i {
                bot_bottle_manifest::ImageSource::Image(r) => Some(r.clone()),
                _ => None,
            }),
            cpus: t.plan.resources.cpus.map(|c| c.0.div_ceil(1000)),
            memory_mib: t.plan.resources.memory.map(|m| u32::try_from(m.0 >> 20).unwrap_or(u32::MAX)),
            workspace,
            slug: t.slug.to_owned(),
            workspace_mode: t.plan.workspace,
            project: t.project.to_path_buf(),
            state: t.state.to_path_buf(),
            resume: t.resume,
            agent_user,
            agent_ids,
        })
    }

    fn reserve_for(&self, p: &Prepared, teardown: &mut Teardown) -> Result<Endpoint, BackendError> {
        let (_, design) = self.design()?;
        if design != p.design {
            return Err(BackendError::Control(format!(
                "smolvm changed while the bottle was planned: it now gets {design:?}, not {:?}",
                p.design
            )));
        }
        if design == Design::Sockets {
            return reserve_sockets(p, teardown);
        }
        loopback::ensure_pool(&self.pool)?;
        let owner = loopback::Owner::current(&p.slug)?;
        let mut busy = self.busy();
        // An address another user's bottle (another lease dir) listens on
        // is taken too: skip any whose sidecar port is bound.
        let (lease, listener) = loop {
            let lease = self.pool.allocate(&self.leases, &owner, &busy)?;
            if let Ok(l) = std::net::TcpListener::bind((lease.addr(), crate::PROXY_PORT)) {
                break (lease, l);
            }
            busy.push(lease.addr());
            if let Err(e) = lease.release() {
                tracing::warn!(addr = %lease.addr(), error = %e, "releasing a loopback lease whose port is taken; `bot-bottle cleanup` retries");
            }
        };
        let addr = lease.addr();
        teardown.push(format!("the loopback address {addr}"), move || {
            if let Err(e) = lease.release() {
                tracing::warn!(%addr, error = %e, "releasing the loopback lease; `bot-bottle cleanup` retries");
            }
        });
        Ok(Endpoint::Tcp { addr, listener: Arc::new(listener) })
    }

    fn launch_for(
        &self,
        p: &Prepared,
        endpoint: &Endpoint,
        teardown: &mut Teardown,
    ) -> Result<SmolBottle, BackendError> {
        if p.design == Design::Sockets {
            return self.launch_sockets(p, endpoint, teardown);
        }
        let Endpoint::Tcp { addr, .. } = endpoint else {
            return Err(BackendError::Control("a smolmachines bottle needs a loopback address".into()));
        };
        let addr = *addr;
        let workspace = crate::prepare_workspace(p.workspace_mode, &p.project, &p.state, p.resume, None)?;
        let opts = CreateOpts {
            cpus: p.cpus,
            mem_mib: p.memory_mib,
            volumes: workspace
                .into_iter()
                .map(|host| Volume { host, guest: "/workspace".into(), read_only: false })
                .collect(),
            labels: vec![(LABEL.into(), p.slug.clone()), (LABEL_ADDR.into(), addr.to_string())],
            net: true,
            dns: Some(addr),
            allow_cidrs: vec![cidr(addr)],
            ..CreateOpts::new(p.machine.clone(), source(p))
        };
        // Registered first, so a machine half made is deleted too.
        let (smolvm, name) = (self.smolvm.clone(), p.machine.clone());
        teardown.push(format!("the machine {name}"), move || {
            if let Err(e) = smolvm.machine_delete(&name) {
                tracing::warn!(machine = %name, error = %e, "deleting the machine; `bot-bottle cleanup` retries");
            }
        });
        self.smolvm.machine_create(&opts)?;
        pause_point("vm-created");
        // Fail closed: the VM boots only with its confinement confirmed.
        let db = self.smolvm.state_db_path()?;
        loopback::force_allowlist(&db, &p.machine, &[cidr(addr)])?;
        let record = self.smolvm.stored_record(&p.machine)?;
        let dns = record.as_ref().and_then(|r| r.dns.clone());
        if dns.as_deref() != Some(addr.to_string().as_str()) {
            return Err(BackendError::Confinement(format!(
                "machine {} would resolve names through {} instead of {addr}: refusing to start it",
                p.machine,
                dns.as_deref().unwrap_or("smolvm's default resolver")
            )));
        }
        self.smolvm.machine_start(&p.machine)?;
        pause_point("vm-started");
        let scratch = p.state.join("copy-in");
        std::fs::create_dir_all(&scratch).map_err(crate::io(format!("creating {}", scratch.display())))?;
        Ok(SmolBottle { smolvm: self.smolvm.clone(), name: p.machine.clone(), confiner: None, scratch, agent: None })
    }

    fn cleanup_leftovers(&self, slug: &str, state: &Path) -> Vec<String> {
        let mut did = Vec::new();
        match self.smolvm.machine_ls() {
            Ok(machines) => {
                for m in machines.into_iter().filter(|m| m.labels.get(LABEL).is_some_and(|s| s == slug)) {
                    match self.smolvm.machine_delete(&m.name) {
                        Ok(()) => did.push(format!("deleted machine {}", m.name)),
                        Err(e) => did.push(format!("could not delete machine {}: {e}", m.name)),
                    }
                }
            }
            Err(e) => did.push(format!("could not list machines: {e}")),
        }
        match loopback::release_owner(&self.leases, slug) {
            Ok(addrs) => did.extend(addrs.into_iter().map(|a| format!("released {a}"))),
            Err(e) => did.push(format!("could not release its loopback addresses: {e}")),
        }
        for d in ["copy-in", "sockets", "image"] {
            let p = state.join(d);
            if std::fs::symlink_metadata(&p).is_ok() {
                match crate::gone::remove_dir_all(d, &p) {
                    Ok(()) => did.push(format!("removed {d}")),
                    Err(e) => did.push(format!("could not remove {}: {e}", p.display())),
                }
            }
        }
        did
    }
}

/// The host uid the workspace copy must have: the agent's, when the agent
/// runs as a user and the launcher is root (as a user, the copy is already
/// the launcher's, who is the agent).
fn copy_owner(p: &Prepared) -> Option<u32> {
    p.agent_ids.filter(|_| nix::unistd::geteuid().is_root()).map(|(u, _)| u)
}

/// The socket design's endpoint: a directory of the bottle's own (0700),
/// whose sockets the sidecars make 0600.
fn reserve_sockets(p: &Prepared, teardown: &mut Teardown) -> Result<Endpoint, BackendError> {
    sockets::check_paths(&p.sockets)?;
    let dir = p.state.join("sockets");
    std::fs::create_dir_all(&dir).map_err(crate::io(format!("creating {}", dir.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(crate::io(format!("securing {}", dir.display())))?;
    let d = dir.clone();
    teardown.push("the sidecar sockets", move || {
        if let Err(e) = std::fs::remove_dir_all(&d) {
            tracing::warn!(dir = %d.display(), error = %e, "removing the sidecar sockets; `bot-bottle cleanup` retries");
        }
    });
    Ok(Endpoint::Unix { dir, owner: None })
}

impl Smolmachines {
    /// The socket design: a machine with no network device, the sidecar
    /// sockets published, confirmed in smolvm's record before it starts, and
    /// the forwarder running inside before anything else does.
    fn launch_sockets(
        &self,
        p: &Prepared,
        endpoint: &Endpoint,
        teardown: &mut Teardown,
    ) -> Result<SmolBottle, BackendError> {
        let Endpoint::Unix { dir, .. } = endpoint else {
            return Err(BackendError::Control("a smolmachines bottle on this smolvm needs a socket directory".into()));
        };
        if p.sockets.iter().any(|s| s.host.parent() != Some(dir.as_path())) {
            return Err(BackendError::Control("the sidecar sockets are not where the plan said".into()));
        }
        let saved = p.state.join("image");
        let s = saved.clone();
        teardown.push("the saved image", move || {
            if let Err(e) = std::fs::remove_dir_all(&s)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %s.display(), error = %e, "removing the saved image");
            }
        });
        let source = image::source(p.boots.as_ref().unwrap_or(&Image::Bare), &p.slug, &saved)?;
        let workspace = crate::prepare_workspace(p.workspace_mode, &p.project, &p.state, p.resume, copy_owner(p))?;
        let opts = CreateOpts {
            cpus: p.cpus,
            mem_mib: p.memory_mib,
            volumes: workspace
                .into_iter()
                .map(|host| Volume { host, guest: "/workspace".into(), read_only: false })
                .collect(),
            mount_sockets: sockets::mount_sockets(&p.sockets),
            labels: vec![(LABEL.into(), p.slug.clone())],
            ..CreateOpts::new(p.machine.clone(), source)
        };
        let (smolvm, name) = (self.smolvm.clone(), p.machine.clone());
        teardown.push(format!("the machine {name}"), move || {
            if let Err(e) = smolvm.machine_delete(&name) {
                tracing::warn!(machine = %name, error = %e, "deleting the machine; `bot-bottle cleanup` retries");
            }
        });
        self.smolvm.machine_create(&opts)?;
        pause_point("vm-created");
        let record = self.smolvm.stored_record(&p.machine).map_err(|e| {
            BackendError::Confinement(format!(
                "machine {}'s record cannot be read ({e}): its network cannot be confirmed, refusing to start it",
                p.machine
            ))
        })?;
        sockets::confirm(&p.machine, record.as_ref(), &p.sockets)?;
        self.smolvm.machine_start(&p.machine)?;
        pause_point("vm-started");
        sockets::start_forwarder(&self.smolvm, &p.machine, &p.sockets)?;
        let scratch = p.state.join("copy-in");
        std::fs::create_dir_all(&scratch).map_err(crate::io(format!("creating {}", scratch.display())))?;
        let confiner = Some(sockets::FORWARDER.to_owned());
        let bottle =
            SmolBottle { smolvm: self.smolvm.clone(), name: p.machine.clone(), confiner, scratch, agent: p.agent_ids };
        if let Some((u, g)) = p.agent_ids {
            // As root, before anything of the agent's runs: the agent can
            // read and run what bot-bottle put in `/run/bot-bottle`, and has
            // a home of its own (the image's `/home` is root's).
            bottle.run(
                "making the agent's home".into(),
                &[
                    "sh",
                    "-c",
                    "chmod 755 /run/bot-bottle /run/bot-bottle/bin && mkdir -p -- \"$1\" && \
                     chown -h -- \"$2\" \"$1\" && chmod 700 -- \"$1\"",
                    "sh",
                    HOME,
                    &format!("{u}:{g}"),
                ],
                None,
            )?;
        }
        Ok(bottle)
    }
}

fn source(p: &Prepared) -> Source {
    match &p.image {
        Some(i) => Source::Image(i.clone()),
        None => Source::Bare,
    }
}

/// A running smolvm machine.
#[derive(Debug)]
pub struct SmolBottle {
    smolvm: Smolvm,
    name: String,
    /// The guest's copy of bot-bottle, which confines the agent before it
    /// runs (socket design); `None` runs it as smolvm does.
    confiner: Option<String>,
    /// Host scratch dir for files on their way in.
    scratch: PathBuf,
    /// The agent's uid and gid (`exec --user`); `None`: it runs as root.
    agent: Option<(u32, u32)>,
}

impl SmolBottle {
    /// Runs `argv` in the guest as `user` (`UID:GID`; root when `None`).
    fn run(&self, what: String, argv: &[&str], user: Option<String>) -> Result<(), BackendError> {
        let opts = ExecOpts { user, ..ExecOpts::new(self.name.clone(), argv.iter().copied()) };
        let out = self.smolvm.machine_exec(&opts)?;
        if out.status == 0 {
            return Ok(());
        }
        Err(BackendError::Inside { what, message: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }

    /// `-u` for a command of `owner`'s: the agent's ids, or none (root).
    fn user(&self, owner: Owner) -> Option<String> {
        match owner {
            Owner::Agent => self.agent.map(|(u, g)| format!("{u}:{g}")),
            Owner::Root => None,
        }
    }

    /// Who writes `path` for `owner`: as in a docker bottle, whatever lands
    /// in the agent's home is the agent's, as any file there is the agent's
    /// to replace; root writes only outside it.
    fn writer(&self, path: &str, owner: Owner) -> Owner {
        let in_home = path == HOME || path.starts_with(&format!("{HOME}/"));
        if in_home { Owner::Agent } else { owner }
    }

    /// `argv` through the guest's confiner, when it has one.
    fn confined(&self, argv: &[String]) -> Vec<String> {
        match &self.confiner {
            Some(c) => [c.as_str(), "__bottle-forward", "--exec", "--"]
                .into_iter()
                .map(str::to_owned)
                .chain(argv.iter().cloned())
                .collect(),
            None => argv.to_vec(),
        }
    }
}

impl Bottle for SmolBottle {
    fn exec(&mut self, cmd: &Exec) -> Result<Output, BackendError> {
        let opts = ExecOpts {
            env: cmd.env.clone(),
            workdir: cmd.workdir.clone(),
            user: self.user(cmd.user),
            ..ExecOpts::new(self.name.clone(), self.confined(&cmd.argv))
        };
        let out = self.smolvm.machine_exec(&opts)?;
        Ok(Output { code: out.status, stdout: out.stdout, stderr: out.stderr })
    }

    fn mkdir(&mut self, path: &str, mode: u32, owner: Owner) -> Result<(), BackendError> {
        let mode = format!("{mode:o}");
        let user = self.user(self.writer(path, owner));
        self.run(
            format!("creating {path}"),
            &["sh", "-c", "mkdir -p -- \"$1\" && chmod \"$2\" -- \"$1\"", "sh", path, &mode],
            user,
        )
    }

    fn copy_in(&mut self, path: &str, content: &[u8], mode: u32, owner: Owner) -> Result<(), BackendError> {
        let writer = self.writer(path, owner);
        if let Some(parent) = Path::new(path).parent().and_then(Path::to_str) {
            self.run(format!("creating {parent}"), &["mkdir", "-p", "--", parent], self.user(writer))?;
        }
        let tmp = tempfile::NamedTempFile::new_in(&self.scratch).map_err(crate::io("a scratch file"))?;
        std::fs::write(tmp.path(), content).map_err(crate::io("a scratch file"))?;
        // `machine cp` writes as root; the file is handed to its writer.
        // Provisioning writes files before any command of the agent's runs,
        // so nothing of the agent's can have put a link in the way.
        let (uid, gid) = match (writer, self.agent) {
            (Owner::Agent, Some((u, g))) => (Some(u), Some(g)),
            _ => (None, None),
        };
        self.smolvm.machine_cp_in(&self.name, tmp.path(), path, &CpOpts { mode: Some(mode), uid, gid })?;
        Ok(())
    }

    fn run_agent(&mut self, cmd: &Exec, stop: &AtomicBool) -> Result<i32, BackendError> {
        // As native: a pty when both stdin and stdout are a terminal.
        let tty = crate::terminal::terminal_size().is_some();
        let opts = ExecOpts {
            env: cmd.env.clone(),
            workdir: cmd.workdir.clone(),
            interactive: tty,
            tty,
            user: self.user(cmd.user),
            ..ExecOpts::new(self.name.clone(), self.confined(&cmd.argv))
        };
        // On a terminal, smolvm's client is on a pty of ours, relayed: the
        // user's terminal is never its terminal, so nothing the guest sends
        // through it can type into the user's.
        let (relay, terminal) = if tty {
            let (master, slave) = pty().map_err(crate::io("opening a pseudo-terminal for the agent"))?;
            (Some(Relay::pty(master).map_err(crate::io("putting your terminal in raw mode"))?), Some(slave))
        } else {
            (None, None)
        };
        let winch = Arc::new(AtomicBool::new(false));
        let winch_id = signal_hook::flag::register(signal_hook::consts::SIGWINCH, winch.clone())
            .map_err(crate::io("watching the window size"))?;
        let done = Arc::new(AtomicBool::new(false));
        let (smolvm, d) = (self.smolvm.clone(), done.clone());
        let agent = std::thread::spawn(move || {
            let r = match &terminal {
                Some(t) => smolvm.machine_exec_on(&opts, t),
                None => smolvm.machine_exec_attached(&opts),
            };
            // Our copy of the pty's other side closes here, so the relay
            // sees the end of the agent's output.
            drop(terminal);
            d.store(true, Ordering::SeqCst);
            r
        });
        let mut stopped = false;
        while !done.load(Ordering::SeqCst) {
            if stop.load(Ordering::SeqCst) && !stopped {
                // Stopping the machine ends every process in it, the agent too.
                if let Err(e) = self.smolvm.machine_stop(&self.name) {
                    tracing::warn!(machine = %self.name, error = %e, "stopping the machine");
                }
                stopped = true;
            }
            if winch.swap(false, Ordering::SeqCst)
                && let Some(r) = &relay
            {
                r.resize();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_hook::low_level::unregister(winch_id);
        let r = agent.join();
        if let Some(r) = relay {
            r.finish();
        }
        match r {
            Ok(r) => Ok(r?),
            Err(_) => Err(BackendError::Control("the agent's exec thread panicked".into())),
        }
    }
}

/// A new pseudo-terminal, sized as the user's.
fn pty() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())?;
    if let Some(size) = crate::terminal::terminal_size() {
        rustix::termios::tcsetwinsize(&slave, size)?;
    }
    Ok((master, slave))
}

impl Drop for SmolBottle {
    fn drop(&mut self) {
        if let Ok(Some(m)) = self.smolvm.machine_status(&self.name)
            && m.state == MachineState::Running
            && let Err(e) = self.smolvm.machine_stop(&self.name)
        {
            tracing::warn!(error = %e, "stopping the machine at teardown");
        }
        if crate::gone::remove_dir_all("the copy-in scratch dir", &self.scratch).is_err() {
            tracing::warn!(dir = %self.scratch.display(), "`bot-bottle cleanup` retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_follow_smolvms_rules() {
        assert_eq!(machine_name("hello-0a1b2c"), "bottle-hello-0a1b2c");
        assert_eq!(machine_name("a.b..c-"), "bottle-a-b-c");
        assert!(bot_bottle_smolvm::argv::check_name(&machine_name("x.-_.y--")).is_ok());
    }

    #[test]
    fn the_agent_writes_its_home_and_root_the_rest() {
        let b = |agent| SmolBottle {
            smolvm: Smolvm::at("/nonexistent/smolvm"),
            name: "bottle-t".into(),
            confiner: None,
            scratch: PathBuf::from("/nonexistent"),
            agent,
        };
        let user = b(Some((1000, 1001)));
        assert_eq!(user.writer("/home/agent", Owner::Agent), Owner::Agent);
        assert_eq!(user.writer("/home/agent/.codex/AGENTS.md", Owner::Root), Owner::Agent);
        assert_eq!(user.writer("/home/agentx/f", Owner::Root), Owner::Root);
        assert_eq!(user.writer("/run/bot-bottle/ca.pem", Owner::Root), Owner::Root);
        assert_eq!(user.user(Owner::Agent).as_deref(), Some("1000:1001"));
        assert_eq!(user.user(Owner::Root), None);
        // Before `exec --user`: everything as root.
        assert_eq!(b(None).user(Owner::Agent), None);
    }

    #[test]
    fn kvm_preflight_says_how_to_fix_it() {
        let e = kvm_check(Path::new("/nonexistent/kvm")).expect_err("missing");
        assert!(e.contains("modprobe kvm_intel") && e.contains("kvm_amd") && e.contains("nested"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, b"").expect("write");
        assert_eq!(kvm_check(&dev), Ok(()));
        // Root reads and writes any device, so only a user sees the refusal.
        if !nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o400)).expect("chmod");
            let e = kvm_check(&dev).expect_err("read-only");
            assert!(e.contains("usermod -aG kvm"), "{e}");
        }
    }
}
