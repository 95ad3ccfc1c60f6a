//! What the native init builds: passed from the host-side launcher to the
//! init stages as a JSON file in the bottle's state dir.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spec {
    pub hostname: String,
    /// The agent's uid/gid inside the bottle, its user name and home.
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub home: String,
    /// Host directory to mount read-write at `/workspace` (none: no workspace).
    pub workspace: Option<PathBuf>,
    /// Empty host directory used as the mount point of the new root.
    pub root_dir: PathBuf,
    /// Host directory of sidecar sockets, visible inside at `/run/bot-bottle/sockets`.
    pub sockets_dir: Option<PathBuf>,
    /// `127.0.0.1:port` inside forwarded to a unix socket of `sockets_dir`.
    pub forwards: Vec<Forward>,
    pub limits: Limits,
    /// FIFOs for the uid-map handshake with the host-side launcher.
    pub sync_out: PathBuf,
    pub sync_in: PathBuf,
    /// The launcher's control socket; the bottle's pid 1 connects to it
    /// once, before any process of the agent's exists.
    pub control: PathBuf,
    /// The init binary, bind-mounted inside for the last stage.
    pub init_exe: PathBuf,
    /// Host directories bound read-only at the same path (`mounts:`; the
    /// manifest has refused credential locations and paths the bottle
    /// builds itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<PathBuf>,
    /// The bottle's cgroup, when the launcher made one (none in the specs
    /// of older launchers): the first init stage joins it before it
    /// unshares, so the bottle's cgroup namespace is rooted there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<SpecCgroup>,
}

impl Spec {
    /// The limits left to rlimits in the last init stage: those the cgroup
    /// does not enforce. `RLIMIT_NPROC` counts every process of the agent's
    /// host uid, which all bottles launched by one user share, and
    /// `RLIMIT_DATA` breaks runtimes that reserve large address spaces; a
    /// cgroup limit is the better tool wherever there is one.
    pub fn rlimits(&self) -> Limits {
        let c = self.cgroup.as_ref();
        Limits {
            pids: self.limits.pids.filter(|_| !c.is_some_and(|c| c.pids)),
            memory: self.limits.memory.filter(|_| !c.is_some_and(|c| c.memory)),
            // No rlimit can share out cpu time.
            cpus: None,
            disk: self.limits.disk,
        }
    }
}

/// A bottle's cgroup as its init stages see it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpecCgroup {
    /// The `cgroup.procs` files the first init stage writes `0` to.
    pub procs: Vec<PathBuf>,
    /// Whether the cgroup enforces `limits.pids` and `limits.memory`.
    pub pids: bool,
    pub memory: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Forward {
    pub port: u16,
    /// Socket file name inside `sockets_dir`.
    pub socket: String,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    pub pids: Option<u64>,
    pub memory: Option<u64>,
    /// Thousandths of a cpu (`1500`: one and a half).
    #[serde(default)]
    pub cpus: Option<u64>,
    /// Bytes the bottle may add to the host's disk. No file may grow past
    /// it (`RLIMIT_FSIZE`); the workspace as a whole is watched by the
    /// launcher (see [`crate::DiskWatch`]).
    #[serde(default)]
    pub disk: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_without_a_cgroup_still_parses_and_keeps_every_rlimit() {
        let mut spec = Spec {
            hostname: "h".into(),
            uid: 1,
            gid: 1,
            user: "agent".into(),
            home: "/home/agent".into(),
            workspace: None,
            root_dir: "/r".into(),
            sockets_dir: None,
            forwards: vec![],
            limits: Limits { pids: Some(64), memory: Some(1 << 30), cpus: Some(500), disk: Some(1 << 30) },
            sync_out: "/o".into(),
            sync_in: "/i".into(),
            control: "/c".into(),
            init_exe: "/bb".into(),
            mounts: vec![],
            cgroup: None,
        };
        let json = serde_json::to_string(&spec).expect("json");
        assert!(!json.contains("cgroup"), "{json}");
        assert_eq!(serde_json::from_str::<Spec>(&json).expect("parse"), spec);
        assert_eq!(spec.rlimits(), Limits { cpus: None, ..spec.limits });
        // What the cgroup enforces is left out of the rlimits.
        spec.cgroup = Some(SpecCgroup { procs: vec!["/cg/cgroup.procs".into()], pids: true, memory: false });
        assert_eq!(spec.rlimits(), Limits { pids: None, memory: Some(1 << 30), cpus: None, disk: Some(1 << 30) });
        spec.cgroup = Some(SpecCgroup { procs: vec![], pids: true, memory: true });
        assert_eq!(spec.rlimits(), Limits { disk: Some(1 << 30), ..Limits::default() });
        let back: Spec = serde_json::from_str(&serde_json::to_string(&spec).expect("json")).expect("parse");
        assert_eq!(back, spec);
    }
}
