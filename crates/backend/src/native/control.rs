//! The control channel between the host-side launcher and the bottle's
//! pid 1: one JSON line per request, one per reply, over a unix socket only
//! those two hold. Nothing of the agent's can reach it: pid 1 connects
//! before the first process of the agent's exists and the socket's path
//! is gone from the bottle by then.

use serde::{Deserialize, Serialize};

use crate::Exec;
use crate::Owner;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Request {
    Mkdir {
        path: String,
        mode: u32,
        owner: Owner,
    },
    Write {
        path: String,
        mode: u32,
        owner: Owner,
        #[serde(with = "b64")]
        content: Vec<u8>,
    },
    Exec {
        cmd: Exec,
    },
    /// Seals the bottle's own files and starts the agent on pid 1's stdio.
    Agent {
        cmd: Exec,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub(crate) enum Reply {
    Ready,
    Done,
    Output {
        code: i32,
        #[serde(with = "b64")]
        stdout: Vec<u8>,
        #[serde(with = "b64")]
        stderr: Vec<u8>,
    },
    Error {
        message: String,
    },
}

/// Bytes as base64 in JSON: a CA bundle as an array of numbers would cost
/// milliseconds to parse.
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

/// Writes one message as a JSON line.
pub(crate) fn send<T: Serialize>(w: &mut impl std::io::Write, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one JSON line; `None` at end of stream.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl std::io::BufRead) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    // A request carries at most a provisioned file; bound it anyway.
    let n = std::io::BufRead::read_until(&mut std::io::Read::take(&mut *r, 256 << 20), b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&line).map(Some).map_err(std::io::Error::other)
}
