//! A typed wrapper around the `smolvm` CLI, which runs libkrun micro-VMs.
//!
//! One method of [`Smolvm`] per subcommand the launch flow needs: `pack
//! create`; `machine create`, `start`, `stop`, `delete`, `exec`, `cp`, `ls`
//! and `status`; `--version`. Every command line is built by a pure function
//! in [`argv`], which refuses what smolvm would misread (a machine name
//! starting with `-`, an env key with `=`, a CIDR that does not parse) before
//! anything is spawned. Every subcommand takes the machine as `name`, and
//! every failure is a [`SmolvmError`] carrying the command line (env values
//! redacted), the exit status and smolvm's stderr. `exec` tells the guest's
//! status (returned) from smolvm's own failure (an error).
//!
//! The crate also holds `fake-smolvm`, a test double modelling the CLI
//! (flags, exit codes, JSON, the SQLite state DB) without a VM; see
//! [`fake`].
//!
//! Not for: deciding what a bottle needs (the backend does), or talking to
//! smolvm's HTTP API. Only this crate builds smolvm command lines.

pub mod argv;
mod error;
#[doc(hidden)]
pub mod fake;
mod opts;
mod output;
mod paths;
mod smolvm;
mod version;

pub use error::{Argv, Result, SmolvmError};
pub use opts::{CpOpts, CreateOpts, ExecOpts, MountSocket, NetBackend, PackOpts, Port, Source, Volume};
pub use output::{ExecOutput, MachineState, MachineStatus, PackOutput, PublishedSocket, StoredRecord};
pub use smolvm::{SIGKILL_STATUS, Smolvm, is_available};
pub use version::{
    ALLOW_CIDR_WITH_FROM, EXEC_USER, MOUNT_SOCKET, POLICY_ON_VIRTIO_NET, SOCKETS, SUPPORTED, TSI_LOOPBACK, Version,
    VersionRange,
};
