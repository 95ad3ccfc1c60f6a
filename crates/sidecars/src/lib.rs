//! The per-bottle sidecar bundle: the host-side services that are a
//! bottle's only way out.
//!
//! Today this is the egress proxy ([`Proxy`]): an HTTP/1.1 forward proxy
//! that decrypts HTTPS with a per-bottle CA, allows only what the bottle's
//! routes name, injects real tokens from the host environment, blocks
//! secrets on the way out, and writes an audit log of every decision. The
//! git gate and supervise join it with their issues.
//!
//! Not for: deciding policy (routes come from `bot-bottle-manifest`) or
//! finding secrets (that is `bot-bottle-detect`).

mod proxy;

pub use proxy::{Ca, EnvLookup, Limits, Policy, Proxy, ProxyConfig, ProxyError};
