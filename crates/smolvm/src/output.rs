//! What smolvm reports back.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The guest command's exit status and output. A non-zero `status` is the
/// guest's (128+signal when it was killed, 124 when `--timeout` fired); it is
/// not an error of this crate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// What `pack create` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackOutput {
    /// The stub executable, at the `-o` path.
    pub stub: PathBuf,
    /// The sidecar beside it (`<stub>.smolmachine`): what `--from` takes.
    pub sidecar: PathBuf,
}

/// One machine as `machine ls --json` and `machine status --json` show it.
/// Fields this crate has no use for are ignored. The egress policy
/// (`allowed_cidrs`) is not in this JSON: see [`StoredRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct MachineStatus {
    pub name: String,
    pub state: MachineState,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub pid: Option<u32>,
    /// How many volumes (a count, not the list).
    #[serde(default)]
    pub mounts: u32,
    /// How many published ports.
    #[serde(default)]
    pub ports: u32,
    #[serde(default)]
    pub created_at: Option<u64>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub ephemeral: bool,
}

/// A machine's state. smolvm resolves it live (a probe of the guest agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Created,
    Running,
    Stopped,
    Failed,
    /// The VMM is up but its agent does not answer.
    Unreachable,
    Frozen,
    /// A state a later smolvm added.
    #[serde(other)]
    Unknown,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Running => "running",
            MachineState::Stopped => "stopped",
            MachineState::Failed => "failed",
            MachineState::Unreachable => "unreachable",
            MachineState::Frozen => "frozen",
            MachineState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of smolvm's stored machine record (`VmRecord`, JSON in the
/// `vms` table of its state DB) that its JSON output hides: above all the
/// egress policy as smolvm will enforce it. Read it to check that a policy
/// was kept (smolvm up to 1.7.7 dropped it on `create --from`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StoredRecord {
    pub name: String,
    /// The state smolvm last wrote; unlike [`MachineStatus::state`] it is not
    /// probed live.
    pub state: MachineState,
    /// `None`: no policy (open egress). `Some`: only these (plus what allowed
    /// names resolve to), with `--allow-host` names already resolved at create
    /// time and `--outbound-localhost-only` expanded.
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
    /// The `--allow-host` names whose DNS answers are let through.
    #[serde(default)]
    pub dns_filter_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub network_backend: Option<String>,
    #[serde(default)]
    pub dns: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub source_smolmachine: Option<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `(host, guest, read_only)`.
    #[serde(default)]
    pub mounts: Vec<(String, String, bool)>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// `--mount-socket` (and `--expose-socket`) as smolvm recorded them.
    #[serde(default)]
    pub published_sockets: Vec<PublishedSocket>,
}

/// smolvm's `PublishedSocketConfig`: a host socket mounted in the guest
/// (`mount`) or a guest socket exposed on the host (`expose`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct PublishedSocket {
    #[serde(default)]
    pub direction: Option<String>,
    pub guest_path: String,
    #[serde(default)]
    pub host_path: Option<String>,
}
