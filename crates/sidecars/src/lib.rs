//! The per-bottle sidecar bundle: the host-side services that are a
//! bottle's only way out.
//!
//! [`Bundle`] starts what a bottle's plan needs on the backend's endpoint
//! and ends it:
//! - the egress proxy ([`Proxy`]): an HTTP/1.1 forward proxy that decrypts
//!   HTTPS with a per-bottle CA, allows only what the bottle's routes name,
//!   injects real tokens from the host environment, blocks secrets on the way
//!   out, and writes an audit log of every decision;
//! - the git gate ([`Gate`]): the only way the agent's commits leave, as
//!   secret-scanned pushes to upstreams (with deploy keys the agent never
//!   sees) or as branches in the user's own repository.
//!
//! - supervise ([`Supervise`]): an MCP server through which the agent asks
//!   for more egress; a human decides from the durable [`Queue`], and
//!   grants take effect in the running proxy at once.
//!
//! Not for: deciding policy (routes and repos come from
//! `bot-bottle-manifest`) or finding secrets (that is `bot-bottle-detect`).

mod bundle;
mod endpoint;
mod gate;
mod lazy;
mod peer;
mod proxy;
mod renew;
mod supervise;

pub use bundle::{Addresses, Bundle, BundleConfig, BundleError, BundleReport, SharedEnv, cleanup as bundle_cleanup};
pub use endpoint::{Endpoint, GATE_PORT, PROXY_PORT, SUPERVISE_PORT, UNIX_SOCKETS};
pub use gate::{
    ArgvError, ForgeError, Gate, GateConfig, GateError, GateReport, Https, HttpsError, Landing, Refusal,
    cleanup as gate_cleanup, landing_prefix,
};
pub use proxy::{Ca, EnvLookup, Limits, Policy, Proxy, ProxyConfig, ProxyError};
pub use renew::{LiveCredential, LiveToken, Renew, Renewed};
pub use supervise::{
    AuditError, AuditEvent, DEFAULT_WAIT as SUPERVISE_DEFAULT_WAIT, Decision, EgressRequest, Lifetime, Queue,
    RouteSpec, State as RequestState, Supervise, SuperviseConfig, SuperviseError, audit_path, check_route, read_audit,
};
