//! Finding the manifest directory. First hit wins:
//! `--manifest DIR`, `$BOT_BOTTLE_MANIFEST`, the nearest `.bot-bottle/`
//! walking up from the current directory, then
//! `$XDG_CONFIG_HOME/bot-bottle/` (default `~/.config/bot-bottle/`).
//!
//! The caller passes the environment in, so discovery is testable and this
//! crate reads no variables itself.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What discovery looks at.
#[derive(Clone, Debug, Default)]
pub struct DiscoverFrom {
    pub flag: Option<PathBuf>,
    pub env: Option<PathBuf>,
    pub cwd: PathBuf,
    pub xdg_config_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

/// How the manifest directory was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Found {
    Flag,
    Env,
    Nearest,
    UserConfig,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscoverError {
    /// An explicit choice that does not exist is an error, never a silent
    /// fall-through to another manifest.
    #[error("manifest directory {} (from {how}) does not exist", path.display())]
    Missing { path: PathBuf, how: &'static str },
    #[error(
        "no manifest directory found: looked for .bot-bottle/ from {} upwards and in {}; \
         create one (see examples/) or pass --manifest DIR",
        cwd.display(), user.as_ref().map_or_else(|| "(no config dir: HOME unset)".into(), |p| p.display().to_string())
    )]
    NotFound { cwd: PathBuf, user: Option<PathBuf> },
}

pub fn discover(from: &DiscoverFrom) -> Result<(PathBuf, Found), DiscoverError> {
    let explicit = |p: &Path, how: &'static str, found: Found| {
        let p = if p.is_absolute() { p.to_path_buf() } else { from.cwd.join(p) };
        if p.is_dir() { Ok((p, found)) } else { Err(DiscoverError::Missing { path: p, how }) }
    };
    if let Some(p) = &from.flag {
        return explicit(p, "--manifest", Found::Flag);
    }
    if let Some(p) = from.env.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        return explicit(p, "$BOT_BOTTLE_MANIFEST", Found::Env);
    }
    for dir in from.cwd.ancestors() {
        let candidate = dir.join(".bot-bottle");
        if candidate.is_dir() {
            return Ok((candidate, Found::Nearest));
        }
    }
    let user = from
        .xdg_config_home
        .as_ref()
        .filter(|p| p.is_absolute())
        .cloned()
        .or_else(|| from.home.as_ref().map(|h| h.join(".config")))
        .map(|c| c.join("bot-bottle"));
    match user {
        Some(u) if u.is_dir() => Ok((u, Found::UserConfig)),
        _ => Err(DiscoverError::NotFound { cwd: from.cwd.clone(), user }),
    }
}
