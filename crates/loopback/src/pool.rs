//! The address pool and its leases on disk.
//!
//! A state directory holds `loopback.lock` and `leases/<address>`, one JSON
//! file per address in use. Every change happens under an exclusive `flock`
//! on `loopback.lock`, so concurrent launchers (separate processes) never
//! hand out the same address; a lease file is written to a temporary name and
//! renamed, so a reader never sees half of one.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::owner::{Owner, start_token};

const LOCK_FILE: &str = "loopback.lock";
const LEASES_DIR: &str = "leases";

/// Failures of the pool: its configuration, its leases, and (on macOS) the
/// `lo0` aliases.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("loopback pool starting at {first} with {size} addresses: {reason}")]
    BadPool { first: Ipv4Addr, size: u8, reason: &'static str },
    #[error("invalid bottle slug `{slug}`: {reason}")]
    BadSlug { slug: String, reason: &'static str },
    #[error("process {pid} is not running, so it cannot hold a loopback lease")]
    OwnerNotRunning { pid: u32 },
    /// Every address is taken. `held` says by whom, one entry per address.
    #[error(
        "all {} addresses of the loopback pool {pool} are in use ({}); run `bot-bottle cleanup` to release \
         the addresses of bottles that are gone, or configure a larger pool",
        held.len(),
        held.join(", ")
    )]
    Exhausted { pool: Pool, held: Vec<String> },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `ifconfig` refused to add a loopback alias (macOS only).
    #[error("`{}` failed ({status}): {stderr}", argv.join(" "))]
    Alias { argv: Vec<String>, status: String, stderr: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LoopbackError {
    let path = path.to_owned();
    move |source| LoopbackError::Io { what, path, source }
}

/// A contiguous range of addresses in `127.0.0.0/8`, one per running bottle.
/// The default is `127.0.0.16`–`127.0.0.31`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    first: Ipv4Addr,
    size: u8,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool { first: Ipv4Addr::new(127, 0, 0, 16), size: 16 }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last())
    }
}

impl Pool {
    /// `size` addresses from `first` on. Refused unless the whole range lies
    /// in `127.0.0.0/8` and avoids `127.0.0.0`, `127.0.0.1` (the host's own
    /// loopback services) and `127.255.255.255`.
    pub fn new(first: Ipv4Addr, size: u8) -> Result<Pool, LoopbackError> {
        let bad = |reason| Err(LoopbackError::BadPool { first, size, reason });
        if size == 0 {
            return bad("the pool is empty");
        }
        if first.octets()[0] != 127 {
            return bad("the pool must lie in 127.0.0.0/8");
        }
        if u32::from(first) < u32::from(Ipv4Addr::new(127, 0, 0, 2)) {
            return bad("the pool must not include 127.0.0.0 or 127.0.0.1");
        }
        let last = u32::from(first) + u32::from(size) - 1;
        if last >= u32::from(Ipv4Addr::new(127, 255, 255, 255)) {
            return bad("the pool must end before 127.255.255.255");
        }
        Ok(Pool { first, size })
    }

    pub fn first(&self) -> Ipv4Addr {
        self.first
    }

    pub fn size(&self) -> u8 {
        self.size
    }

    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + u32::from(self.size) - 1)
    }

    /// The pool's addresses, lowest first.
    pub fn addrs(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.first);
        (first..first + u32::from(self.size)).map(Ipv4Addr::from)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last())).contains(&u32::from(addr))
    }

    /// Leases the lowest free address of the pool to `owner`, recording it in
    /// the state directory `dir` (created `0700` if missing).
    ///
    /// An address is taken when its lease names an owner that still runs
    /// (same pid, same start time), when its lease cannot be read (we cannot
    /// tell, so we do not share it), or when the caller lists it in `busy`
    /// (for example addresses of running bottles found some other way).
    /// A lease whose owner has exited is reclaimed. Blocks while another
    /// process holds the lock.
    pub fn allocate(&self, dir: &Path, owner: &Owner, busy: &[Ipv4Addr]) -> Result<Lease, LoopbackError> {
        let leases = dir.join(LEASES_DIR);
        DirBuilder::new().recursive(true).mode(0o700).create(&leases).map_err(io("creating", &leases))?;
        let start = start_token(owner.pid()).ok_or(LoopbackError::OwnerNotRunning { pid: owner.pid() })?;
        let _lock = lock(dir)?;
        let mut held = Vec::new();
        for addr in self.addrs() {
            if busy.contains(&addr) {
                held.push(format!("{addr} (a running bottle)"));
                continue;
            }
            match read_lease(&leases, addr) {
                Some(LeaseState::Live { slug, pid, .. }) => held.push(format!("{addr} ({slug}, pid {pid})")),
                Some(LeaseState::Unreadable { reason }) => held.push(format!("{addr} (unreadable lease: {reason})")),
                None | Some(LeaseState::Stale { .. }) => {
                    let record = Record {
                        slug: owner.slug().to_owned(),
                        pid: owner.pid(),
                        start: start.clone(),
                        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    };
                    write_lease(&leases, addr, &record)?;
                    return Ok(Lease { dir: dir.to_owned(), addr, owner: owner.clone(), start });
                }
            }
        }
        Err(LoopbackError::Exhausted { pool: *self, held })
    }
}

/// An address leased to a bottle. Dropping it releases nothing: the lease
/// lasts until [`Lease::release`], [`release`] or [`release_owner`], or until
/// its owner exits and another allocation reclaims it.
#[derive(Debug)]
pub struct Lease {
    dir: PathBuf,
    addr: Ipv4Addr,
    owner: Owner,
    start: String,
}

impl Lease {
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Gives the address back. Removes the lease only while it is still this
    /// one (not a later owner's, after a reclaim); releasing twice is fine.
    pub fn release(&self) -> Result<(), LoopbackError> {
        let Some(_lock) = lock_existing(&self.dir)? else { return Ok(()) };
        let leases = self.dir.join(LEASES_DIR);
        if let Ok(r) = read_record(&leases.join(self.addr.to_string()))
            && r.slug == self.owner.slug()
            && r.pid == self.owner.pid()
            && r.start == self.start
        {
            remove(&leases, self.addr)?;
        }
        Ok(())
    }
}

/// A lease as found on disk, for `list` and `cleanup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub addr: Ipv4Addr,
    pub state: LeaseState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// The owner still runs.
    Live { slug: String, pid: u32, created: u64 },
    /// The owner has exited; the next allocation may reclaim the address.
    Stale { slug: String, pid: u32, created: u64 },
    /// The file is not a lease we wrote. The address counts as taken.
    Unreadable { reason: String },
}

/// Every lease in `dir`, lowest address first. An absent directory has none.
pub fn leases(dir: &Path) -> Result<Vec<LeaseInfo>, LoopbackError> {
    let leases = dir.join(LEASES_DIR);
    let entries = match fs::read_dir(&leases) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading", &leases)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("reading", &leases))?;
        let Some(addr) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else { continue };
        if let Some(state) = read_lease(&leases, addr) {
            out.push(LeaseInfo { addr, state });
        }
    }
    out.sort_by_key(|l| l.addr);
    Ok(out)
}

/// Removes the lease on `addr` whoever holds it, for `cleanup` of a bottle
/// known to be gone. Returns whether there was one.
pub fn release(dir: &Path, addr: Ipv4Addr) -> Result<bool, LoopbackError> {
    let Some(_lock) = lock_existing(dir)? else { return Ok(false) };
    remove(&dir.join(LEASES_DIR), addr)
}

/// Removes every lease naming the bottle `slug`, live or not, and returns
/// their addresses.
pub fn release_owner(dir: &Path, slug: &str) -> Result<Vec<Ipv4Addr>, LoopbackError> {
    let Some(_lock) = lock_existing(dir)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for info in leases(dir)? {
        if let LeaseState::Live { slug: s, .. } | LeaseState::Stale { slug: s, .. } = &info.state
            && s == slug
            && remove(&dir.join(LEASES_DIR), info.addr)?
        {
            out.push(info.addr);
        }
    }
    Ok(out)
}

/// The lease file's contents.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    slug: String,
    pid: u32,
    /// The owner's start token (see `owner::start_token`).
    start: String,
    /// Seconds since the Unix epoch.
    created: u64,
}

/// Takes the pool's lock, blocking; it is released when the file closes.
fn lock(dir: &Path) -> Result<File, LoopbackError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("opening", &path))?;
    file.lock().map_err(io("locking", &path))?;
    Ok(file)
}

/// The lock, unless the state directory does not exist (then there is
/// nothing to release, and releasing must not create it).
fn lock_existing(dir: &Path) -> Result<Option<File>, LoopbackError> {
    if !dir.join(LEASES_DIR).is_dir() {
        return Ok(None);
    }
    lock(dir).map(Some)
}

fn read_record(path: &Path) -> Result<Record, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The state of `addr`'s lease; `None` when there is none.
fn read_lease(leases: &Path, addr: Ipv4Addr) -> Option<LeaseState> {
    let path = leases.join(addr.to_string());
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => return Some(LeaseState::Unreadable { reason: e.to_string() }),
        Ok(m) if !m.is_file() => return Some(LeaseState::Unreadable { reason: "not a regular file".into() }),
        Ok(_) => {}
    }
    Some(match read_record(&path) {
        Err(reason) => LeaseState::Unreadable { reason },
        Ok(Record { slug, pid, start, created }) => {
            if start_token(pid).is_some_and(|now| now == start) {
                LeaseState::Live { slug, pid, created }
            } else {
                LeaseState::Stale { slug, pid, created }
            }
        }
    })
}

fn write_lease(leases: &Path, addr: Ipv4Addr, record: &Record) -> Result<(), LoopbackError> {
    let path = leases.join(addr.to_string());
    let tmp = leases.join(format!(".{addr}.tmp"));
    let mut json = serde_json::to_vec(record).map_err(|e| io("encoding", &path)(e.into()))?;
    json.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(&json).and_then(|()| f.sync_all()).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("renaming to", &path))
}

fn remove(leases: &Path, addr: Ipv4Addr) -> Result<bool, LoopbackError> {
    let path = leases.join(addr.to_string());
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("removing", &path)(e)),
    }
}
