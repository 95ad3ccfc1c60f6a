//! Per-bottle loopback addresses for the smolmachines backend, and the
//! fail-closed check of smolvm's egress allowlist.
//!
//! Each bottle's sidecars are published on its own `127.0.0.<N>`, and its VM
//! may reach only that `/32`, so one bottle cannot reach another's ports or
//! the host's own loopback services. This crate:
//!
//! - hands out those addresses from a [`Pool`] (`127.0.0.16`–`127.0.0.31` by
//!   default): [`Pool::allocate`] leases the lowest free one under an
//!   exclusive file lock, skipping addresses whose owner still runs and
//!   reclaiming those whose owner has exited; [`Lease::release`],
//!   [`release`] and [`release_owner`] give them back; [`leases`] lists them;
//! - makes the addresses exist: [`ensure_pool`] aliases them on `lo0` on
//!   macOS and does nothing on Linux, where all of `127.0.0.0/8` is loopback;
//! - enforces the allowlist: [`force_allowlist`] makes a machine's record in
//!   smolvm's state DB ([`db_path`]) allow exactly the given CIDRs, writing
//!   only when it differs, reading it back, and refusing the launch whenever
//!   it cannot confirm the result.
//!
//! Not for: running smolvm or Docker, or choosing which CIDRs a bottle gets.
//! The record check confirms what smolvm will read when the machine starts,
//! not that its runtime enforces it; that is the sandbox-escape tests' job.

mod alias;
mod allowlist;
mod owner;
mod pool;

pub use alias::ensure_pool;
pub use allowlist::{AllowlistError, Enforced, Platform, db_path, force_allowlist, verify_allowlist};
pub use owner::{Owner, start_token};
pub use pool::{Lease, LeaseInfo, LeaseState, LoopbackError, Pool, leases, release, release_owner};
