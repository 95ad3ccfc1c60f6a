//! `backend: auto`: which backend can run here.

use bot_bottle_manifest::BackendKind;

use crate::BackendError;
use crate::native;

/// The backend `auto` resolved to, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    pub kind: BackendKind,
    pub why: String,
}

/// Resolves `requested`: an explicit backend is taken as asked (its own
/// preflight speaks at launch); `auto` is native on Linux when user
/// namespaces work. Otherwise the error lists, per backend, what is missing
/// and how to fix it.
pub fn detect(requested: BackendKind) -> Result<Detected, BackendError> {
    if requested != BackendKind::Auto {
        return Ok(Detected { kind: requested, why: "asked for".into() });
    }
    let checks = native::doctor();
    if cfg!(target_os = "linux") && native::doctor_ready(&checks) {
        return Ok(Detected { kind: BackendKind::Native, why: "user namespaces work here".into() });
    }
    let mut missing = Vec::new();
    for c in checks.iter().filter(|c| c.status == native::Status::Fail) {
        let fix = c.fix.as_deref().map(|f| format!(" (fix: {f})")).unwrap_or_default();
        missing.push(format!("  native: {}: {}{fix}", c.name, c.detail));
    }
    if !cfg!(target_os = "linux") {
        missing.push("  native: needs Linux".into());
    }
    missing.push("  docker: not in this build yet".into());
    missing.push("  smolmachines: not in this build yet".into());
    Err(BackendError::NoBackend(missing))
}
