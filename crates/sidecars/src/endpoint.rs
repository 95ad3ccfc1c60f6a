//! Where a bottle's sidecar bundle listens, and the ports its services
//! have inside every bottle. A backend decides the endpoint (it knows how
//! its bottles reach the host); the bundle starts its services there.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The port of the egress proxy inside every bottle.
pub const PROXY_PORT: u16 = 3128;
/// The port of the git gate inside every bottle.
pub const GATE_PORT: u16 = 9420;
/// The port of the supervise MCP server inside every bottle.
pub const SUPERVISE_PORT: u16 = 9421;

/// The sidecar sockets of a `Unix` endpoint and the port each is reached
/// at inside the bottle, for backends that publish them one by one.
pub const UNIX_SOCKETS: &[(&str, u16)] = &[("proxy.sock", PROXY_PORT), ("gate.sock", GATE_PORT)];

/// Where a bottle's sidecar bundle listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// Unix sockets in `dir`, which only `owner` (a host uid, when set) may
    /// use; the bottle reaches them through forwarders on its loopback.
    Unix { dir: PathBuf, owner: Option<u32> },
    /// TCP on a loopback address of the bottle's own. The proxy's port is
    /// already bound (`listener`), so no one can take it in between.
    Tcp { addr: Ipv4Addr, listener: std::sync::Arc<std::net::TcpListener> },
}

impl Endpoint {
    /// Makes a socket a sidecar created in a `Unix` endpoint usable by the
    /// bottle alone (0600, its owner's); nothing to do for `Tcp`.
    pub fn secure(&self, socket: &Path) -> std::io::Result<()> {
        match self {
            Endpoint::Unix { owner, .. } => own(socket, 0o600, *owner),
            Endpoint::Tcp { .. } => Ok(()),
        }
    }

    /// The proxy's URL as the agent reaches it.
    pub fn proxy_url(&self) -> String {
        match self {
            Endpoint::Unix { .. } => format!("http://127.0.0.1:{PROXY_PORT}"),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}:{PROXY_PORT}"),
        }
    }

    /// The git gate's URL as the agent reaches it.
    pub fn gate_url(&self) -> String {
        match self {
            Endpoint::Unix { .. } => format!("http://127.0.0.1:{GATE_PORT}"),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}:{GATE_PORT}"),
        }
    }

    /// The supervise MCP endpoint as the agent reaches it.
    pub fn supervise_url(&self) -> String {
        format!("http://{}/mcp", self.supervise_host())
    }

    /// The `host:port` in the `Host` header of the agent's requests to
    /// supervise: the only one the server accepts.
    pub fn supervise_host(&self) -> String {
        match self {
            Endpoint::Unix { .. } => format!("127.0.0.1:{SUPERVISE_PORT}"),
            Endpoint::Tcp { addr, .. } => format!("{addr}:{SUPERVISE_PORT}"),
        }
    }
}

/// Sets `mode` on `p` and, when given, its owner (both uid and gid).
fn own(p: &Path, mode: u32, owner: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    if let Some(id) = owner {
        std::os::unix::fs::lchown(p, Some(id), Some(id))?;
    }
    Ok(())
}
