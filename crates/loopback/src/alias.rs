//! Making the pool's addresses exist on the host.
//!
//! Linux routes all of `127.0.0.0/8` to `lo`, so nothing is needed there.
//! macOS answers only on `127.0.0.1` until each further address is aliased
//! on `lo0`, which takes root; the aliases last until reboot, so the
//! operator is asked for a password at most once per boot.

use std::net::Ipv4Addr;

use crate::Pool;

/// The argv that aliases `addr` on `lo0`, through `sudo` unless we are root.
/// `ifconfig` is named by its absolute path so `PATH` cannot substitute it.
#[cfg_attr(
    not(any(target_os = "macos", test)),
    expect(dead_code, reason = "only macOS needs aliases; the argv is tested everywhere")
)]
pub(crate) fn alias_argv(addr: Ipv4Addr, root: bool) -> Vec<String> {
    let mut argv: Vec<String> = if root { vec![] } else { vec!["/usr/bin/sudo".into()] };
    argv.extend(["/sbin/ifconfig".into(), "lo0".into(), "alias".into(), addr.to_string(), "up".into()]);
    argv
}

/// The pool's addresses that `ifconfig lo0` output does not list yet.
#[cfg_attr(
    not(any(target_os = "macos", test)),
    expect(dead_code, reason = "only macOS needs aliases; the parser is tested everywhere")
)]
pub(crate) fn missing_aliases(pool: &Pool, ifconfig_lo0: &str) -> Vec<Ipv4Addr> {
    let present: Vec<Ipv4Addr> = ifconfig_lo0
        .lines()
        .filter_map(|line| {
            let mut words = line.split_ascii_whitespace();
            (words.next() == Some("inet")).then(|| words.next()?.parse().ok()).flatten()
        })
        .collect();
    pool.addrs().filter(|a| !present.contains(a)).collect()
}

/// Aliases every address of `pool` on `lo0` that is not there yet. Runs
/// `sudo` (which may prompt) only when something is missing.
#[cfg(target_os = "macos")]
pub fn ensure_pool(pool: &Pool) -> Result<(), crate::LoopbackError> {
    let listing = macos::run(&["/sbin/ifconfig".to_owned(), "lo0".to_owned()])?;
    let root = macos::run(&["/usr/bin/id".to_owned(), "-u".to_owned()])?.trim() == "0";
    for addr in missing_aliases(pool, &listing) {
        macos::run(&alias_argv(addr, root))?;
    }
    Ok(())
}

#[cfg(target_os = "macos")]
mod macos {
    use std::process::Command;

    use crate::LoopbackError;

    /// Runs `argv` and returns its stdout, or why it failed.
    pub(super) fn run(argv: &[String]) -> Result<String, LoopbackError> {
        let out = Command::new(&argv[0]).args(&argv[1..]).output().map_err(|source| LoopbackError::Io {
            what: "running",
            path: argv[0].clone().into(),
            source,
        })?;
        if !out.status.success() {
            return Err(LoopbackError::Alias {
                argv: argv.to_vec(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Nothing to do: the whole of `127.0.0.0/8` is already on `lo`.
#[cfg(not(target_os = "macos"))]
pub fn ensure_pool(_pool: &Pool) -> Result<(), crate::LoopbackError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_argv_uses_sudo_unless_root() {
        let a = Ipv4Addr::new(127, 0, 0, 17);
        assert_eq!(alias_argv(a, false), ["/usr/bin/sudo", "/sbin/ifconfig", "lo0", "alias", "127.0.0.17", "up"]);
        assert_eq!(alias_argv(a, true), ["/sbin/ifconfig", "lo0", "alias", "127.0.0.17", "up"]);
    }

    #[test]
    fn missing_aliases_reads_macos_ifconfig() {
        let out = "lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> mtu 16384\n\
                   \toptions=1203<RXCSUM,TXCSUM,TXSTATUS,SW_TIMESTAMP>\n\
                   \tinet 127.0.0.1 netmask 0xff000000\n\
                   \tinet6 ::1 prefixlen 128\n\
                   \tinet6 fe80::1%lo0 prefixlen 64 scopeid 0x1\n\
                   \tinet 127.0.0.16 netmask 0xff000000\n\
                   \tinet 127.0.0.18 netmask 0xff000000\n\
                   \tnd6 options=201<PERFORMNUD,DAD>\n";
        let pool = Pool::new(Ipv4Addr::new(127, 0, 0, 16), 4).expect("pool");
        assert_eq!(missing_aliases(&pool, out), [Ipv4Addr::new(127, 0, 0, 17), Ipv4Addr::new(127, 0, 0, 19)]);
    }

    #[cfg(not(target_os = "macos"))]
    #[test]
    fn ensure_pool_is_a_no_op_off_macos() {
        assert!(ensure_pool(&Pool::default()).is_ok());
    }
}
