//! What the caller asks for: the inputs of the subcommands, as data.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// `machine create`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CreateOpts {
    pub name: String,
    pub source: Source,
    /// `--cpus`; smolvm's default is 4.
    pub cpus: Option<u32>,
    /// `--mem`, in MiB; smolvm's default is 8192.
    pub mem_mib: Option<u32>,
    /// `-v HOST:GUEST[:ro]`: directories only.
    pub volumes: Vec<Volume>,
    /// `-p HOST:GUEST`.
    pub ports: Vec<Port>,
    /// `--mount-socket HOST:GUEST` (since 1.6.4): a host unix socket the
    /// guest reaches at GUEST over vsock; needs no network device.
    pub mount_sockets: Vec<MountSocket>,
    /// `-e KEY=VALUE`: the environment of every exec in this machine.
    pub env: Vec<(String, String)>,
    /// `-w DIR`: the default working directory of exec.
    pub workdir: Option<String>,
    /// `--label KEY=VALUE`: the place to tag ownership.
    pub labels: Vec<(String, String)>,
    /// `--net`: a NIC. Any egress flag and `--dns` imply it.
    pub net: bool,
    /// `--net-backend`. Any egress policy or port needs (and defaults to)
    /// virtio-net; asking for TSI with one is refused.
    pub net_backend: Option<NetBackend>,
    /// `--dns`: the upstream resolver the gateway forwards to.
    pub dns: Option<Ipv4Addr>,
    /// `--allow-cidr`: `1.2.3.4`, `10.0.0.0/8` or `2001:db8::/32`.
    ///
    /// The policy exists only when one of `allow_cidrs`, `allow_hosts` or
    /// `outbound_localhost_only` is set: all three empty means open egress.
    pub allow_cidrs: Vec<String>,
    /// `--allow-host`: resolved to addresses at create time; DNS answers for
    /// these names (and their subdomains) are let through and learned.
    pub allow_hosts: Vec<String>,
    /// `--outbound-localhost-only`: adds `127.0.0.0/8` and `::1/128`.
    pub outbound_localhost_only: bool,
}

impl CreateOpts {
    pub fn new(name: impl Into<String>, source: Source) -> Self {
        CreateOpts { name: name.into(), source, ..CreateOpts::default() }
    }

    /// Whether this asks smolvm for an egress policy.
    pub fn has_egress_policy(&self) -> bool {
        !self.allow_cidrs.is_empty() || !self.allow_hosts.is_empty() || self.outbound_localhost_only
    }
}

impl fmt::Debug for CreateOpts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateOpts")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("cpus", &self.cpus)
            .field("mem_mib", &self.mem_mib)
            .field("volumes", &self.volumes)
            .field("ports", &self.ports)
            .field("mount_sockets", &self.mount_sockets)
            .field("env", &EnvKeys(&self.env))
            .field("workdir", &self.workdir)
            .field("labels", &self.labels)
            .field("net", &self.net)
            .field("net_backend", &self.net_backend)
            .field("dns", &self.dns)
            .field("allow_cidrs", &self.allow_cidrs)
            .field("allow_hosts", &self.allow_hosts)
            .field("outbound_localhost_only", &self.outbound_localhost_only)
            .finish()
    }
}

/// What a machine boots from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// No image: smolvm's Alpine agent rootfs. (Not `None`, so that it does
    /// not read as `Option::None` in a match.)
    #[default]
    Bare,
    /// `-I IMAGE`: an OCI image reference.
    Image(String),
    /// `--from PATH`: a packed `.smolmachine`.
    From(PathBuf),
}

/// `-v HOST:GUEST[:ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// `--mount-socket HOST:GUEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSocket {
    pub host: PathBuf,
    pub guest: String,
}

/// `-p HOST:GUEST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub host: u16,
    pub guest: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// libkrun's transparent socket impersonation: outbound only, and it does
    /// not enforce an egress policy.
    Tsi,
    /// smolvm's own NAT gateway, which enforces the egress policy.
    VirtioNet,
}

impl NetBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            NetBackend::Tsi => "tsi",
            NetBackend::VirtioNet => "virtio-net",
        }
    }
}

/// `machine exec`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExecOpts {
    pub name: String,
    /// The guest's command line; at least one word.
    pub argv: Vec<String>,
    /// `-e KEY=VALUE`, on top of the machine's own env.
    pub env: Vec<(String, String)>,
    /// `-w DIR`, absolute.
    pub workdir: Option<String>,
    /// `--timeout`: the guest command is killed after it, and exec reports 124.
    pub timeout: Option<Duration>,
    /// `--stream`: output is passed on as it comes. Without it smolvm buffers
    /// the output in the guest and cuts each stream at 11 MiB.
    pub stream: bool,
    /// `-i`: forward stdin. Without it the guest reads nothing.
    pub interactive: bool,
    /// `-t`: a terminal in the guest.
    pub tty: bool,
    /// `-d`: started in the background; exec prints its pid and returns.
    pub detach: bool,
    /// `-u USER` (since 1.14): a name or `UID[:GID]` of the guest.
    pub user: Option<String>,
}

impl ExecOpts {
    pub fn new<S: Into<String>>(name: impl Into<String>, argv: impl IntoIterator<Item = S>) -> Self {
        ExecOpts { name: name.into(), argv: argv.into_iter().map(Into::into).collect(), ..ExecOpts::default() }
    }
}

impl fmt::Debug for ExecOpts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecOpts")
            .field("name", &self.name)
            .field("argv", &self.argv)
            .field("env", &EnvKeys(&self.env))
            .field("workdir", &self.workdir)
            .field("timeout", &self.timeout)
            .field("stream", &self.stream)
            .field("interactive", &self.interactive)
            .field("tty", &self.tty)
            .field("detach", &self.detach)
            .field("user", &self.user)
            .finish()
    }
}

/// `machine cp` options for an upload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpOpts {
    /// `--mode`, e.g. `0o644`.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// `pack create`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackOpts {
    /// `-I IMAGE`.
    pub image: String,
    /// `-o PATH`: the stub executable; the sidecar goes to `PATH.smolmachine`.
    pub output: PathBuf,
    pub cpus: Option<u32>,
    pub mem_mib: Option<u32>,
}

/// Shows env keys, never values: `Debug` output ends up in logs.
struct EnvKeys<'a>(&'a [(String, String)]);

impl fmt::Debug for EnvKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| format!("{k}=…"))).finish()
    }
}
