//! What the native init builds: passed from the host-side launcher to the
//! init stages as a JSON file in the bottle's state dir.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spec {
    /// The agent's argv, env (the whole environment: nothing is inherited),
    /// and working directory inside.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
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
    /// Files to create before the agent starts (provisioning).
    pub files: Vec<SpecFile>,
    pub dirs: Vec<SpecDir>,
    pub limits: Limits,
    /// Run inside, as the agent, before it starts; the first that fails
    /// stops the launch with its `why`.
    #[serde(default)]
    pub checks: Vec<SpecCheck>,
    /// FIFOs for the uid-map handshake with the host-side launcher.
    pub sync_out: PathBuf,
    pub sync_in: PathBuf,
    /// The init binary, bind-mounted inside for the last stage.
    pub init_exe: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Forward {
    pub port: u16,
    /// Socket file name inside `sockets_dir`.
    pub socket: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpecFile {
    pub path: String,
    pub mode: u32,
    /// Owned by the agent (else root).
    pub agent: bool,
    /// As base64 in the JSON: a CA bundle as an array of numbers would
    /// cost every init stage milliseconds to parse.
    #[serde(with = "b64")]
    pub content: Vec<u8>,
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpecDir {
    pub path: String,
    pub mode: u32,
    pub agent: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpecCheck {
    pub argv: Vec<String>,
    pub why: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    pub pids: Option<u64>,
    pub memory: Option<u64>,
}
