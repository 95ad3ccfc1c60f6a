//! Where smolvm keeps its state.

use std::ffi::OsString;
use std::path::PathBuf;

/// The host OS, as far as smolvm's paths care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Os {
    Linux,
    MacOs,
}

impl Os {
    pub(crate) const HOST: Os = if cfg!(target_os = "macos") { Os::MacOs } else { Os::Linux };
}

/// `dirs::data_local_dir()` as smolvm sees it, after `SMOLVM_DATA_DIR`
/// (which, on Linux, smolvm turns into `HOME` with the XDG variables unset).
/// `env` looks a variable up; empty values count as unset.
pub(crate) fn data_local_dir(os: Os, env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    match os {
        Os::Linux => {
            if let Some(root) = get("SMOLVM_DATA_DIR") {
                return Some(PathBuf::from(root).join(".local/share"));
            }
            if let Some(xdg) = get("XDG_DATA_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
                return Some(xdg);
            }
            get("HOME").map(|h| PathBuf::from(h).join(".local/share"))
        }
        Os::MacOs => get("HOME").map(|h| PathBuf::from(h).join("Library/Application Support")),
    }
}

/// `<data_local_dir>/smolvm/server/smolvm.db`.
pub(crate) fn state_db(os: Os, env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    data_local_dir(os, env).map(|d| d.join("smolvm/server/smolvm.db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(os: Os, vars: &[(&str, &str)]) -> Option<PathBuf> {
        state_db(os, |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v)))
    }

    #[test]
    fn linux() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(db(Os::Linux, &[("HOME", "/home/u")]), p("/home/u/.local/share/smolvm/server/smolvm.db"));
        assert_eq!(db(Os::Linux, &[("HOME", "/home/u"), ("XDG_DATA_HOME", "/x")]), p("/x/smolvm/server/smolvm.db"));
        // A relative XDG_DATA_HOME is ignored, as the XDG spec (and `dirs`) say.
        assert_eq!(
            db(Os::Linux, &[("HOME", "/home/u"), ("XDG_DATA_HOME", "x")]),
            p("/home/u/.local/share/smolvm/server/smolvm.db")
        );
        assert_eq!(
            db(Os::Linux, &[("HOME", "/home/u"), ("XDG_DATA_HOME", "/x"), ("SMOLVM_DATA_DIR", "/d")]),
            p("/d/.local/share/smolvm/server/smolvm.db")
        );
        assert_eq!(db(Os::Linux, &[("HOME", "")]), None);
    }

    #[test]
    fn macos_ignores_the_linux_overrides() {
        assert_eq!(
            db(Os::MacOs, &[("HOME", "/Users/u"), ("SMOLVM_DATA_DIR", "/d"), ("XDG_DATA_HOME", "/x")]),
            Some(PathBuf::from("/Users/u/Library/Application Support/smolvm/server/smolvm.db"))
        );
    }
}
