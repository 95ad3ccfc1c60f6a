//! smolvm versions and the range this crate supports.

use std::fmt;

use serde::{Serialize, Serializer};

/// A smolvm release, `major.minor.patch`. A pre-release or build suffix
/// (`1.10.0-rc1`) is ignored: it compares as its release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version { major, minor, patch }
    }

    /// `1.9.3`, `v1.9.3` or `1.9.3-rc1`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let mut num = || -> Option<u32> {
            let p = parts.next()?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = Version::new(num()?, num()?, num()?);
        parts.next().is_none().then_some(v)
    }

    /// The version in `smolvm --version` output: `smolvm 1.9.3`.
    pub(crate) fn from_output(out: &str) -> Option<Self> {
        let mut words = out.lines().next()?.split_whitespace();
        match (words.next(), words.next()) {
            (Some("smolvm"), Some(v)) => Version::parse(v),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Versions from `min` (inclusive) up to `below` (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionRange {
    pub min: Version,
    pub below: Version,
}

impl VersionRange {
    pub fn contains(&self, v: Version) -> bool {
        self.min <= v && v < self.below
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ">={}, <{}", self.min, self.below)
    }
}

impl Serialize for VersionRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The smolvm releases this crate drives.
///
/// From 1.0.2: that release made the machine name a `--name` flag on every
/// subcommand (1.0.0 and 1.0.1 took `create NAME` positionally), and this
/// crate only ever passes `--name`. Flags added later in 1.x (`--allow-host`,
/// `--net-backend`, …) fail loudly on an older release, as a usage error
/// (exit 2), so they need no gate of their own. The one known *silent*
/// difference is [`ALLOW_CIDR_WITH_FROM`]: callers that need an egress policy
/// on a `--from` machine check that constant, or read the stored record.
///
/// Below 2.0.0: a new major release may change the command line or the JSON
/// this crate parses; it should be checked (and the fake updated) before it is
/// allowed. The flags and JSON were verified against 1.9.3.
pub const SUPPORTED: VersionRange = VersionRange { min: Version::new(1, 0, 2), below: Version::new(2, 0, 0) };

/// The first release that keeps `--allow-cidr`/`--allow-host`/
/// `--outbound-localhost-only` on `machine create --from`. Up to 1.7.7 they
/// were accepted and silently dropped, leaving the machine's egress open
/// (smolvm PR #892).
pub const ALLOW_CIDR_WITH_FROM: Version = Version::new(1, 8, 0);

/// The first release where any egress policy runs on smolvm's virtio-net
/// gateway (and a TSI policy is refused). There the guest's `127.0.0.0/8` is
/// its own loopback: a sidecar on the host's `127.0.0.N` cannot be reached.
pub const POLICY_ON_VIRTIO_NET: Version = Version::new(1, 1, 3);

/// The first release with `machine create --mount-socket HOST:GUEST`: a host
/// unix socket published in the guest over vsock, with or without a network.
pub const MOUNT_SOCKET: Version = Version::new(1, 6, 4);

/// The first release with `machine exec -u/--user` (smolvm PR #1148).
pub const EXEC_USER: Version = Version::new(1, 14, 0);

/// Releases where a bottle's VM has no network at all and its sidecars'
/// sockets are published into it with `--mount-socket`.
pub const SOCKETS: VersionRange = VersionRange { min: MOUNT_SOCKET, below: SUPPORTED.below };

/// Releases where a policy still runs on TSI, so the VM reaches the host's
/// `127.0.0.N` it is allowed (the seeds' design).
pub const TSI_LOOPBACK: VersionRange = VersionRange { min: SUPPORTED.min, below: POLICY_ON_VIRTIO_NET };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(Version::parse("1.9.3"), Some(Version::new(1, 9, 3)));
        assert_eq!(Version::parse("v1.10.0-rc1"), Some(Version::new(1, 10, 0)));
        assert_eq!(Version::parse("1.9.3+abc"), Some(Version::new(1, 9, 3)));
        for bad in ["", "1.9", "1.9.3.4", "1..3", "a.b.c", "1.9.-3", "1.9.+3", " 1.9.3"] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn from_output() {
        assert_eq!(Version::from_output("smolvm 1.9.3\n"), Some(Version::new(1, 9, 3)));
        assert_eq!(Version::from_output("smolvm 1.16.0 (abc)\nmore"), Some(Version::new(1, 16, 0)));
        assert_eq!(Version::from_output("krunvm 1.9.3\n"), None);
        assert_eq!(Version::from_output("smolvm\n"), None);
        assert_eq!(Version::from_output(""), None);
    }

    #[test]
    fn order_display_and_range() {
        assert!(Version::new(1, 10, 0) > Version::new(1, 9, 3));
        assert_eq!(SUPPORTED.to_string(), ">=1.0.2, <2.0.0");
        assert!(SUPPORTED.contains(Version::new(1, 0, 2)));
        assert!(SUPPORTED.contains(Version::new(1, 99, 0)));
        assert!(!SUPPORTED.contains(Version::new(1, 0, 1)));
        assert!(!SUPPORTED.contains(Version::new(2, 0, 0)));
        assert_eq!(serde_json::to_string(&Version::new(1, 9, 3)).ok().as_deref(), Some("\"1.9.3\""));
        assert_eq!(serde_json::to_string(&SUPPORTED).ok().as_deref(), Some("\">=1.0.2, <2.0.0\""));
        // The two designs never overlap, and 1.1.3 up to 1.6.3 is in neither.
        assert_eq!(SOCKETS.to_string(), ">=1.6.4, <2.0.0");
        assert_eq!(TSI_LOOPBACK.to_string(), ">=1.0.2, <1.1.3");
        for v in [Version::new(1, 1, 3), Version::new(1, 6, 3)] {
            assert!(!SOCKETS.contains(v) && !TSI_LOOPBACK.contains(v), "{v}");
        }
    }
}
