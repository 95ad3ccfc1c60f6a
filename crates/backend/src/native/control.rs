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
    /// Seals the bottle's own files and starts the agent on a terminal of
    /// its own (`terminal`: its window size) or on pipes. The reply,
    /// [`Reply::Started`], carries the launcher's ends as descriptors.
    Agent {
        cmd: Exec,
        terminal: Option<Size>,
    },
    /// Sends `signal` to the agent's process group.
    Signal {
        signal: i32,
    },
    /// Starts a command beside the agent (`bot-bottle exec`), on a terminal
    /// of its own or pipes. The reply, [`Reply::Started`], carries the
    /// caller's ends as for the agent, and then the reading end of a pipe
    /// that gets the command's exit code when it ends.
    Spawn {
        cmd: Exec,
        terminal: Option<Size>,
    },
}

/// What `bot-bottle exec` asks a running bottle's launcher for, on the
/// launcher's private exec socket. The launcher runs `argv` as the agent,
/// with the agent's environment and working directory.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecRequest {
    pub(crate) argv: Vec<String>,
    pub(crate) terminal: Option<Size>,
}

/// A terminal's window size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Size {
    pub(crate) rows: u16,
    pub(crate) cols: u16,
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
    /// The agent runs. Sent with descriptors (`SCM_RIGHTS`): the pty's
    /// master, or the writing end of its stdin and the reading ends of its
    /// stdout and stderr, in that order.
    Started,
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

/// Writes one message as a JSON line with `fds` attached.
pub(crate) fn send_with_fds<T: Serialize>(
    sock: &std::os::unix::net::UnixStream,
    msg: &T,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS || !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors for one message"));
    }
    // The descriptors travel with the first byte; the rest follows plainly.
    let n = sendmsg(sock, &[std::io::IoSlice::new(&line)], &mut cmsg, SendFlags::NOSIGNAL)?;
    std::io::Write::write_all(&mut &*sock, &line[n..])
}

/// The most descriptors one message carries.
const MAX_FDS: usize = 4;

/// Reads one JSON line and the descriptors sent with it. `r` must hold no
/// buffered bytes: descriptors arrive only through the socket itself.
pub(crate) fn recv_with_fds<T: for<'de> Deserialize<'de>>(
    r: &mut std::io::BufReader<std::os::unix::net::UnixStream>,
) -> std::io::Result<Option<(T, Vec<std::os::fd::OwnedFd>)>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    if !r.buffer().is_empty() {
        return Err(std::io::Error::other("unexpected bytes before a message with descriptors"));
    }
    let sock = r.get_ref();
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.ends_with(b"\n") {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(sock, &mut [std::io::IoSliceMut::new(&mut buf)], &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(std::io::Error::other("descriptors were cut off"));
        }
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            return Ok(None);
        }
        line.extend_from_slice(&buf[..got.bytes]);
        if line.len() > 1 << 20 {
            return Err(std::io::Error::other("reply too long"));
        }
    }
    if line.iter().position(|&b| b == b'\n') != Some(line.len() - 1) {
        return Err(std::io::Error::other("more than one message with descriptors"));
    }
    serde_json::from_slice(&line).map(|m| Some((m, fds))).map_err(std::io::Error::other)
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
