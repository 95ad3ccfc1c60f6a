//! Who holds a lease, and whether that process still runs.
//!
//! A lease names its owner by pid *and* the process's start time, so a pid
//! reused by an unrelated process after the launcher died does not keep the
//! address busy forever, and a dead launcher's lease can be reclaimed.

use crate::LoopbackError;

/// The bottle (by slug) and the process (by pid) that hold an address.
///
/// The pid is the bottle's launcher: the lease stays live for as long as that
/// process runs, and becomes reclaimable when it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    slug: String,
    pid: u32,
}

impl Owner {
    /// An owner for `slug` held by process `pid`. The slug follows the CLI's
    /// rules: ASCII letters, digits, `.`, `_` and `-`, at most 100, not
    /// starting with `.` or `-`.
    pub fn new(slug: &str, pid: u32) -> Result<Owner, LoopbackError> {
        let bad = |reason: &'static str| LoopbackError::BadSlug { slug: slug.to_owned(), reason };
        if slug.is_empty() {
            return Err(bad("empty"));
        }
        if slug.len() > 100 {
            return Err(bad("longer than 100 characters"));
        }
        if slug.starts_with('.') || slug.starts_with('-') {
            return Err(bad("starts with `.` or `-`"));
        }
        if !slug.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(bad("only ASCII letters, digits, `.`, `_` and `-` are allowed"));
        }
        if pid == 0 {
            return Err(LoopbackError::OwnerNotRunning { pid });
        }
        Ok(Owner { slug: slug.to_owned(), pid })
    }

    /// An owner for `slug` held by the calling process.
    pub fn current(slug: &str) -> Result<Owner, LoopbackError> {
        Owner::new(slug, std::process::id())
    }

    pub fn slug(&self) -> &str {
        &self.slug
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// An opaque token that identifies one run of process `pid`: equal tokens
/// mean the same process. `None` when no such process runs (or it is a
/// zombie, which will never release anything).
///
/// This is the workspace's one liveness check: loopback leases and the
/// CLI's bottle records both name their owner by pid plus this token, so a
/// pid reused after the owner died never counts as the owner.
pub fn start_token(pid: u32) -> Option<String> {
    platform::start_token(pid)
}

/// Parses the fields of `/proc/<pid>/stat` we need: the state (field 3) and
/// the start time in clock ticks since boot (field 22). The command name
/// (field 2) is in parentheses and may itself hold spaces and parentheses,
/// so fields are counted from the last `)`.
#[cfg_attr(
    not(any(target_os = "linux", test)),
    expect(dead_code, reason = "procfs exists on Linux only; the parser is tested everywhere")
)]
pub(crate) fn parse_proc_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was the state; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(target_os = "linux")]
mod platform {
    /// `<boot id>:<start ticks>`. The start time alone counts from boot, so
    /// the boot id keeps a lease from before a reboot from matching a new
    /// process that happens to get the same pid and start tick.
    pub(super) fn start_token(pid: u32) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start) = super::parse_proc_stat(&stat)?;
        if matches!(state, 'Z' | 'X' | 'x') {
            return None;
        }
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        Some(format!("{}:{start}", boot.trim()))
    }
}

#[cfg(target_os = "macos")]
mod platform {
    use std::process::Command;

    /// macOS has no procfs; `ps` reports the start as wall-clock time, which
    /// is unambiguous across reboots.
    pub(super) fn start_token(pid: u32) -> Option<String> {
        let out =
            Command::new("/bin/ps").args(["-o", "stat=", "-o", "lstart=", "-p", &pid.to_string()]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).ok()?;
        let (state, start) = text.trim().split_once(char::is_whitespace)?;
        if state.starts_with('Z') {
            return None;
        }
        Some(start.trim().to_owned())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod platform {
    /// Elsewhere we cannot tell a live owner from a dead one, so every owner
    /// counts as live: a stale lease then needs `cleanup`, but an address is
    /// never handed out twice.
    pub(super) fn start_token(_pid: u32) -> Option<String> {
        Some(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_count_from_the_last_parenthesis() {
        let tail = (4..=21).map(|n| n.to_string()).collect::<Vec<_>>().join(" ");
        let stat = format!("42 (a (weird) name) S {tail} 987654 23 24\n");
        // Field 4 is "4" … field 21 is "21", so field 22 is 987654.
        assert_eq!(parse_proc_stat(&stat), Some(('S', 987_654)));
        assert_eq!(parse_proc_stat("42 (short) S 1 2"), None);
        assert_eq!(parse_proc_stat("no parenthesis"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_stable_token() {
        let me = start_token(std::process::id());
        assert!(me.is_some());
        assert_eq!(me, start_token(std::process::id()));
    }

    #[test]
    fn slugs_follow_the_cli_rules() {
        assert!(Owner::new("claude-1a2b3c", 7).is_ok());
        for bad in ["", ".hidden", "-flag", "a/b", "a b", &"x".repeat(101)] {
            assert!(matches!(Owner::new(bad, 7), Err(LoopbackError::BadSlug { .. })), "{bad:?}");
        }
        assert!(matches!(Owner::new("ok", 0), Err(LoopbackError::OwnerNotRunning { pid: 0 })));
    }
}
