//! smolvm command lines, built by pure functions.
//!
//! Each function returns the arguments after the program name, or refuses
//! its input before anything is spawned: a machine name smolvm would reject
//! (or read as a flag), an env key with `=`, a CIDR that does not parse, a
//! guest path that is not absolute. The machine name is always `--name NAME`,
//! the one spelling every subcommand (and `exec`, which has no `-n`) accepts
//! since 1.0.2.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::error::{Result, SmolvmError};
use crate::opts::{CpOpts, CreateOpts, ExecOpts, MountSocket, NetBackend, PackOpts, Source, Volume};

/// `--version`.
pub fn version() -> Vec<OsString> {
    words(["--version"])
}

/// `pack create -I IMAGE -o PATH [--cpus N] [--mem MiB]`.
pub fn pack_create(opts: &PackOpts) -> Result<Vec<OsString>> {
    check_image(&opts.image)?;
    check_host_path("pack output", &opts.output)?;
    if opts.output.extension().is_some_and(|e| e == "smolmachine") {
        return Err(bad("pack output", opts.output.display(), "name the stub; smolvm adds .smolmachine itself"));
    }
    let mut a = words(["pack", "create", "-I", &opts.image, "-o"]);
    a.push(opts.output.clone().into());
    push_resources(&mut a, opts.cpus, opts.mem_mib)?;
    Ok(a)
}

/// `machine create --name NAME [source] [resources] [-v]… [-p]… [-e]… [-w]
/// [--label]… [network]`.
pub fn machine_create(opts: &CreateOpts) -> Result<Vec<OsString>> {
    let mut a = machine("create", &opts.name)?;
    match &opts.source {
        Source::Bare => {}
        Source::Image(image) => {
            check_image(image)?;
            a.extend(words(["-I", image]));
        }
        Source::From(path) => {
            check_host_path("--from path", path)?;
            a.push("--from".into());
            a.push(path.clone().into());
        }
    }
    push_resources(&mut a, opts.cpus, opts.mem_mib)?;
    for v in &opts.volumes {
        a.push("-v".into());
        a.push(volume(v)?);
    }
    for p in &opts.ports {
        if p.host == 0 || p.guest == 0 {
            return Err(bad("port", format!("{}:{}", p.host, p.guest), "port 0 cannot be published"));
        }
        a.extend(words(["-p", &format!("{}:{}", p.host, p.guest)]));
    }
    for m in &opts.mount_sockets {
        a.push("--mount-socket".into());
        a.push(mount_socket(m)?);
    }
    push_env(&mut a, &opts.env)?;
    if let Some(dir) = &opts.workdir {
        check_guest_path("workdir", dir)?;
        a.extend(words(["-w", dir]));
    }
    for (k, v) in &opts.labels {
        check_key("label key", k)?;
        if v.contains('\0') {
            return Err(bad("label value of", k, "contains NUL"));
        }
        a.extend(words(["--label", &format!("{k}={v}")]));
    }
    if opts.net {
        a.push("--net".into());
    }
    if let Some(backend) = opts.net_backend {
        if backend == NetBackend::Tsi && (opts.has_egress_policy() || !opts.ports.is_empty()) {
            return Err(bad(
                "net backend",
                "tsi",
                "an egress policy or a port needs virtio-net; tsi does not enforce it",
            ));
        }
        a.extend(words(["--net-backend", backend.as_str()]));
    }
    if let Some(dns) = opts.dns {
        a.extend(words(["--dns", &dns.to_string()]));
    }
    for cidr in &opts.allow_cidrs {
        check_cidr(cidr)?;
        a.extend(words(["--allow-cidr", cidr]));
    }
    for host in &opts.allow_hosts {
        check_hostname(host)?;
        a.extend(words(["--allow-host", host]));
    }
    if opts.outbound_localhost_only {
        a.push("--outbound-localhost-only".into());
    }
    Ok(a)
}

/// `machine start --name NAME`.
pub fn machine_start(name: &str) -> Result<Vec<OsString>> {
    machine("start", name)
}

/// `machine stop --name NAME`.
pub fn machine_stop(name: &str) -> Result<Vec<OsString>> {
    machine("stop", name)
}

/// `machine delete --name NAME -f`: without `-f` smolvm asks on the terminal.
pub fn machine_delete(name: &str) -> Result<Vec<OsString>> {
    let mut a = machine("delete", name)?;
    a.push("-f".into());
    Ok(a)
}

/// `machine status --name NAME --json`.
pub fn machine_status(name: &str) -> Result<Vec<OsString>> {
    let mut a = machine("status", name)?;
    a.push("--json".into());
    Ok(a)
}

/// `machine ls --json`.
pub fn machine_ls() -> Vec<OsString> {
    words(["machine", "ls", "--json"])
}

/// `machine exec --name NAME [-w DIR] [-e K=V]… [--timeout T] [--stream] [-i]
/// [-t] -- COMMAND…`. The `--` keeps the guest's words from being read as
/// smolvm's flags.
pub fn machine_exec(opts: &ExecOpts) -> Result<Vec<OsString>> {
    let mut a = machine("exec", &opts.name)?;
    if let Some(dir) = &opts.workdir {
        check_guest_path("workdir", dir)?;
        a.extend(words(["-w", dir]));
    }
    push_env(&mut a, &opts.env)?;
    if let Some(t) = opts.timeout {
        a.extend(words(["--timeout", &duration(t)?]));
    }
    if opts.stream {
        a.push("--stream".into());
    }
    if opts.interactive {
        a.push("-i".into());
    }
    if opts.tty {
        a.push("-t".into());
    }
    if opts.detach {
        if opts.interactive || opts.tty || opts.stream {
            return Err(bad("exec -d", opts.argv.join(" "), "a detached command has no terminal, stdin or stream"));
        }
        a.push("-d".into());
    }
    if let Some(user) = &opts.user {
        check_user(user)?;
        a.extend(words(["-u", user]));
    }
    if opts.argv.is_empty() {
        return Err(bad("exec command", "", "empty"));
    }
    if let Some(w) = opts.argv.iter().find(|w| w.contains('\0')) {
        return Err(bad("exec command word", w, "contains NUL"));
    }
    a.push("--".into());
    a.extend(opts.argv.iter().map(OsString::from));
    Ok(a)
}

/// `machine cp [--mode OCTAL] [--uid N] [--gid N] HOST NAME:GUEST`: one file
/// into a running machine.
pub fn machine_cp_in(name: &str, host: &Path, guest: &str, opts: &CpOpts) -> Result<Vec<OsString>> {
    check_name(name)?;
    check_host_path("host path", host)?;
    check_guest_path("guest path", guest)?;
    let mut a = words(["machine", "cp"]);
    if let Some(mode) = opts.mode {
        if mode > 0o7777 {
            return Err(bad("mode", format!("{mode:o}"), "more than 12 permission bits"));
        }
        a.extend(words(["--mode", &format!("{mode:o}")]));
    }
    if let Some(uid) = opts.uid {
        a.extend(words(["--uid", &uid.to_string()]));
    }
    if let Some(gid) = opts.gid {
        a.extend(words(["--gid", &gid.to_string()]));
    }
    a.push(host.into());
    a.push(format!("{name}:{guest}").into());
    Ok(a)
}

/// `machine cp NAME:GUEST HOST`: one file out of a running machine.
pub fn machine_cp_out(name: &str, guest: &str, host: &Path) -> Result<Vec<OsString>> {
    check_name(name)?;
    check_guest_path("guest path", guest)?;
    check_host_path("host path", host)?;
    let mut a = words(["machine", "cp", &format!("{name}:{guest}")]);
    a.push(host.into());
    Ok(a)
}

/// smolvm's rule for machine names (`validate_vm_name`): 1–128 characters of
/// `[A-Za-z0-9_-]`, starting with a letter or digit, not ending with `-`,
/// without `--`. A name passing it can be neither a flag nor a path.
pub fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > 128 {
        Some("longer than 128 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("must start with a letter or digit")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Some("only letters, digits, '_' and '-' are allowed")
    } else if name.ends_with('-') {
        Some("must not end with '-'")
    } else if name.contains("--") {
        Some("must not contain '--'")
    } else {
        None
    };
    match why {
        Some(why) => Err(SmolvmError::BadName { name: name.to_owned(), why }),
        None => Ok(()),
    }
}

fn machine(sub: &str, name: &str) -> Result<Vec<OsString>> {
    check_name(name)?;
    Ok(words(["machine", sub, "--name", name]))
}

fn words<'a>(w: impl IntoIterator<Item = &'a str>) -> Vec<OsString> {
    w.into_iter().map(OsString::from).collect()
}

fn bad(what: &'static str, value: impl ToString, why: &'static str) -> SmolvmError {
    SmolvmError::BadInput { what, value: value.to_string(), why }
}

fn push_resources(a: &mut Vec<OsString>, cpus: Option<u32>, mem_mib: Option<u32>) -> Result<()> {
    if let Some(n) = cpus {
        if n == 0 {
            return Err(bad("cpus", n, "must be at least 1"));
        }
        a.extend(words(["--cpus", &n.to_string()]));
    }
    if let Some(m) = mem_mib {
        if m == 0 {
            return Err(bad("memory (MiB)", m, "must be at least 1"));
        }
        a.extend(words(["--mem", &m.to_string()]));
    }
    Ok(())
}

fn push_env(a: &mut Vec<OsString>, env: &[(String, String)]) -> Result<()> {
    for (k, v) in env {
        check_key("env key", k)?;
        if v.contains('\0') {
            // The key, never the value: values may be secrets.
            return Err(bad("env value of", k, "contains NUL"));
        }
        a.extend(words(["-e", &format!("{k}={v}")]));
    }
    Ok(())
}

/// An env or label key: non-empty, no `=` (it would end the key), no NUL, and
/// not starting with `-` (smolvm would read `-e -x=1` as two flags).
fn check_key(what: &'static str, k: &str) -> Result<()> {
    if k.is_empty() {
        Err(bad(what, k, "empty"))
    } else if k.contains('=') {
        Err(bad(what, k, "contains '='"))
    } else if k.contains('\0') {
        Err(bad(what, k, "contains NUL"))
    } else if k.starts_with('-') {
        Err(bad(what, k, "starts with '-'"))
    } else {
        Ok(())
    }
}

fn check_image(image: &str) -> Result<()> {
    if image.is_empty() {
        Err(bad("image", image, "empty"))
    } else if image.starts_with('-') {
        Err(bad("image", image, "starts with '-'"))
    } else if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(bad("image", image, "contains whitespace"))
    } else {
        Ok(())
    }
}

/// A guest path: absolute (relative paths would depend on smolvm's idea of
/// the guest's cwd), no `:` (it separates the parts of `-v` and `cp`), no NUL.
fn check_guest_path(what: &'static str, p: &str) -> Result<()> {
    if !p.starts_with('/') {
        Err(bad(what, p, "not absolute"))
    } else if p.contains(':') {
        Err(bad(what, p, "contains ':'"))
    } else if p.contains('\0') {
        Err(bad(what, p, "contains NUL"))
    } else {
        Ok(())
    }
}

/// A host path: not empty, not starting with `-` (a flag), no `:` (smolvm
/// would read `a:b` as a machine path or a volume separator).
fn check_host_path(what: &'static str, p: &Path) -> Result<()> {
    let s = p.as_os_str();
    let lossy = s.to_string_lossy();
    if s.is_empty() {
        Err(bad(what, "", "empty"))
    } else if lossy.starts_with('-') {
        Err(bad(what, p.display(), "starts with '-'"))
    } else if lossy.contains(':') {
        Err(bad(what, p.display(), "contains ':'"))
    } else {
        Ok(())
    }
}

fn volume(v: &Volume) -> Result<OsString> {
    check_host_path("volume host path", &v.host)?;
    if !v.host.is_absolute() {
        return Err(bad("volume host path", v.host.display(), "not absolute"));
    }
    check_guest_path("volume guest path", &v.guest)?;
    let mut s = OsString::from(&v.host);
    s.push(":");
    s.push(&v.guest);
    if v.read_only {
        s.push(":ro");
    }
    Ok(s)
}

/// `HOST:GUEST`, both absolute and without `:` (smolvm splits on it).
fn mount_socket(m: &MountSocket) -> Result<OsString> {
    check_host_path("mount-socket host path", &m.host)?;
    if !m.host.is_absolute() {
        return Err(bad("mount-socket host path", m.host.display(), "not absolute"));
    }
    check_guest_path("mount-socket guest path", &m.guest)?;
    let mut s = OsString::from(&m.host);
    s.push(":");
    s.push(&m.guest);
    Ok(s)
}

/// A guest user: a name (`agent`) or `UID[:GID]`; never a flag.
fn check_user(user: &str) -> Result<()> {
    let word = |w: &str| {
        !w.is_empty()
            && !w.starts_with('-')
            && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    let ok = match user.split_once(':') {
        Some((u, g)) => word(u) && word(g),
        None => word(user),
    };
    if ok { Ok(()) } else { Err(bad("exec user", user, "not a user name or UID[:GID]")) }
}

/// `1.2.3.4`, `1.2.3.0/24`, `::1`, `2001:db8::/32`: an address, and a prefix
/// no longer than the address.
pub(crate) fn check_cidr(cidr: &str) -> Result<()> {
    let (addr, prefix) = match cidr.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (cidr, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(bad("CIDR", cidr, "not an IP address with an optional /prefix"));
    };
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let ok = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        if !ok || p.parse::<u32>().map_or(true, |n| n > max) {
            return Err(bad("CIDR", cidr, "prefix length out of range"));
        }
    }
    Ok(())
}

/// A DNS name: labels of letters, digits, `-` and `_`, dot-separated.
fn check_hostname(host: &str) -> Result<()> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok { Ok(()) } else { Err(bad("allowed host", host, "not a DNS name")) }
}

/// A humantime duration smolvm accepts: whole seconds as `30s`, otherwise
/// milliseconds (rounded up) as `1500ms`.
fn duration(t: Duration) -> Result<String> {
    if t.is_zero() {
        return Err(bad("timeout", "0s", "must be more than zero"));
    }
    if t.subsec_nanos() == 0 {
        return Ok(format!("{}s", t.as_secs()));
    }
    let ms = t.as_nanos().div_ceil(1_000_000);
    Ok(format!("{ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        for ok in ["1.2.3.4", "10.0.0.0/8", "0.0.0.0/0", "1.1.1.1/32", "::1", "2001:db8::/32", "::/0", "::1/128"] {
            assert!(check_cidr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/08x",
            "x",
            "1.2.3.4/0008",
            "-1.2.3.4",
        ] {
            assert!(check_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_secs(30)).ok().as_deref(), Some("30s"));
        assert_eq!(duration(Duration::from_millis(1500)).ok().as_deref(), Some("1500ms"));
        assert_eq!(duration(Duration::from_micros(1)).ok().as_deref(), Some("1ms"));
        assert!(duration(Duration::ZERO).is_err());
    }

    #[test]
    fn hostnames() {
        for ok in ["api.github.com", "localhost", "example.com.", "a_b.example"] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "-x.com", "a..b", "a b", "*.example.com", "x/y"] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }
}
