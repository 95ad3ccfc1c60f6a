//! Backends chosen at run time: [`open`] builds the one a plan names,
//! [`detect`] resolves `auto` to the first that can run here. Callers hold a
//! `Box<dyn Backend>` and never name a backend type.

use std::path::PathBuf;

use bot_bottle_manifest::BackendKind;

use crate::docker::Docker;
#[cfg(target_os = "linux")]
use crate::native::Native;
use crate::smolmachines::Smolmachines;
use crate::{Backend, BackendError, Status};

/// What building a backend needs from its caller.
#[derive(Clone, Debug)]
pub struct Context {
    /// This user's bot-bottle state directory (`$XDG_STATE_HOME/bot-bottle`):
    /// backends keep host-wide records there (smolmachines' address leases).
    pub state_root: PathBuf,
}

/// The backends this build has, in the order `auto` tries them.
#[cfg(target_os = "linux")]
pub const KINDS: &[BackendKind] = &[BackendKind::Native, BackendKind::Docker, BackendKind::Smolmachines];
/// The backends this build has (no native: it needs Linux namespaces).
#[cfg(not(target_os = "linux"))]
pub const KINDS: &[BackendKind] = &[BackendKind::Docker, BackendKind::Smolmachines];

/// The backend `kind` (`auto`: [`detect`]).
pub fn open(kind: BackendKind, ctx: &Context) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Auto => detect(ctx),
        #[cfg(target_os = "linux")]
        BackendKind::Native => Ok(Box::new(Native::new()?)),
        #[cfg(not(target_os = "linux"))]
        BackendKind::Native => Err(BackendError::Preflight(
            "the native backend needs Linux namespaces: on this system use `--backend docker` or `smolmachines`".into(),
        )),
        BackendKind::Smolmachines => Ok(Box::new(Smolmachines::from_env(&ctx.state_root))),
        BackendKind::Docker => Ok(Box::new(Docker::from_env(&ctx.state_root))),
    }
}

/// `cleanup --purge`: what every backend keeps between bottles (docker:
/// the images built from `dockerfile:`) removed; says what, per backend.
pub fn purge(ctx: &Context) -> Vec<String> {
    let mut did = Vec::new();
    for &kind in KINDS {
        match open(kind, ctx) {
            Ok(b) => did.extend(b.purge().into_iter().map(|l| format!("{}: {l}", kind.as_str()))),
            Err(e) => tracing::debug!(backend = kind.as_str(), error = %e, "nothing to purge"),
        }
    }
    did
}

/// What `auto` means here: the first backend of [`KINDS`] whose doctor
/// finds nothing failing. Otherwise the error lists, per backend, what is
/// missing and how to fix it.
pub fn detect(ctx: &Context) -> Result<Box<dyn Backend>, BackendError> {
    let mut missing = Vec::new();
    for &kind in KINDS {
        let backend = match open(kind, ctx) {
            Ok(b) => b,
            Err(e) => {
                missing.push(format!("  {}: {e}", kind.as_str()));
                continue;
            }
        };
        let checks = backend.doctor();
        if crate::checks_ready(&checks) {
            return Ok(backend);
        }
        for c in checks.iter().filter(|c| c.status == Status::Fail) {
            let fix = c.fix.as_deref().map(|f| format!(" (fix: {f})")).unwrap_or_default();
            missing.push(format!("  {}: {}: {}{fix}", kind.as_str(), c.name, c.detail));
        }
    }
    Err(BackendError::NoBackend(missing))
}
