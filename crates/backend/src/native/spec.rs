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
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Forward {
    pub port: u16,
    /// Socket file name inside `sockets_dir`.
    pub socket: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    pub pids: Option<u64>,
    pub memory: Option<u64>,
}
