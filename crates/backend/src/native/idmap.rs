//! The bottle's uid and gid maps, written from outside by the launcher.
//!
//! - Launched by root: inside root maps onto the unprivileged host range at
//!   [`HOST_ID_BASE`], so nothing in a bottle is host root, and the bottle
//!   may drop its supplementary groups.
//! - Launched by a user: inside root is that user. The kernel lets a user
//!   map a group only after giving up `setgroups` for the whole namespace,
//!   which would leave the user's supplementary groups with every process
//!   inside (and with them every host file a group may read). Where the
//!   setuid `newgidmap` (Debian's `uidmap`) is installed and the user has a
//!   range in `/etc/subgid`, it maps the gids instead and the bottle drops
//!   the groups; otherwise they are kept, and the launch says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::HOST_ID_BASE;

/// What the bottle does with the launcher's supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "groups")]
pub enum Groups {
    /// The bottle holds none (root, or `newgidmap` with a subgid range).
    Dropped,
    /// The launcher has none to drop.
    None,
    /// They stay with every process inside: the gids, and why.
    Kept { gids: Vec<u32>, why: String },
}

/// How a launch by this process would map the bottle's gids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GidMap {
    /// As root: the whole range, written directly.
    Root,
    /// `newgidmap PID 0 GID 1 1 START COUNT`: the bottle may drop groups.
    Newgidmap { program: PathBuf, gid: u32, start: u32, count: u32 },
    /// `setgroups` denied, then `0 GID 1`: the groups stay.
    Own { gid: u32 },
}

/// The most subordinate gids a bottle maps.
const MAX_SUBGIDS: u32 = 65536;

impl GidMap {
    /// The map this process would use, and what it means for its groups.
    pub(crate) fn for_this_process() -> (GidMap, Groups) {
        if nix::unistd::geteuid().is_root() {
            return (GidMap::Root, Groups::Dropped);
        }
        let gid = nix::unistd::getegid().as_raw();
        let uid = nix::unistd::geteuid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name);
        let extra: Vec<u32> = nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.as_raw())
            .filter(|&g| g != gid)
            .collect();
        let subgid = std::fs::read_to_string("/etc/subgid").ok();
        let range = subgid.as_deref().and_then(|t| subordinate(t, user.as_deref(), uid.as_raw()));
        let program = newgidmap();
        match (program, range) {
            (Some(program), Some((start, count))) => {
                (GidMap::Newgidmap { program, gid, start, count: count.min(MAX_SUBGIDS) }, Groups::Dropped)
            }
            _ if extra.is_empty() => (GidMap::Own { gid }, Groups::None),
            (program, _) => {
                let why = match program {
                    None => "newgidmap is not installed (apt install uidmap)".to_owned(),
                    Some(_) => format!(
                        "{} has no range in /etc/subgid (add one: usermod --add-subgids 100000-165535 {})",
                        user.as_deref().unwrap_or("this user"),
                        user.as_deref().unwrap_or("USER")
                    ),
                };
                (GidMap::Own { gid }, Groups::Kept { gids: extra, why })
            }
        }
    }
}

/// The first range of subordinate ids `/etc/subgid` gives `user` (by name
/// or uid): `(start, count)`.
fn subordinate(text: &str, user: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    let uid = uid.to_string();
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let ours = Some(who) == user || who == uid;
        let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        (ours && count > 0 && f.next().is_none()).then_some((start, count))
    })
}

/// The setuid `newgidmap`, where the usual places have one.
fn newgidmap() -> Option<PathBuf> {
    ["/usr/bin/newgidmap", "/bin/newgidmap", "/usr/local/bin/newgidmap"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `newgidmap`'s argv for process `pid`: inside gid 0 is the launcher's
/// gid, 1 and up its subordinate range.
pub(crate) fn newgidmap_argv(pid: u32, gid: u32, start: u32, count: u32) -> Vec<String> {
    [pid, 0, gid, 1, 1, start, count].iter().map(u32::to_string).collect()
}

/// Writes the maps of process `pid` (the bottle's first init stage, just
/// unshared).
pub(crate) fn write_maps(pid: u32, map: &GidMap) -> Result<(), String> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let w = |name: &str, s: &str| std::fs::write(proc.join(name), s).map_err(|e| format!("{name}: {e}"));
    match map {
        GidMap::Root => {
            w("setgroups", "allow")?;
            w("uid_map", &format!("0 {HOST_ID_BASE} 65536\n"))?;
            w("gid_map", &format!("0 {HOST_ID_BASE} 65536\n"))
        }
        GidMap::Newgidmap { program, gid, start, count } => {
            w("uid_map", &format!("0 {} 1\n", nix::unistd::geteuid()))?;
            run(program, &newgidmap_argv(pid, *gid, *start, *count))
        }
        GidMap::Own { gid } => {
            w("setgroups", "deny")?;
            w("uid_map", &format!("0 {} 1\n", nix::unistd::geteuid()))?;
            w("gid_map", &format!("0 {gid} 1\n"))
        }
    }
}

fn run(program: &Path, argv: &[String]) -> Result<(), String> {
    let out = Command::new(program)
        .args(argv)
        .env_clear()
        .output()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} {} failed: {}", program.display(), argv.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_found_by_name_or_uid() {
        let t = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\nmallory:1:2:3\n";
        assert_eq!(subordinate(t, Some("alice"), 1000), Some((100000, 65536)));
        assert_eq!(subordinate(t, Some("carol"), 1001), Some((200000, 1000)));
        // An empty range, a malformed line, nobody's.
        assert_eq!(subordinate(t, Some("bob"), 1002), None);
        assert_eq!(subordinate(t, Some("mallory"), 1003), None);
        assert_eq!(subordinate("", Some("alice"), 1000), None);
    }

    #[test]
    fn newgidmap_maps_the_launchers_gid_to_0_and_the_range_above() {
        assert_eq!(newgidmap_argv(42, 1000, 100000, 65536), ["42", "0", "1000", "1", "1", "100000", "65536"]);
    }
}
