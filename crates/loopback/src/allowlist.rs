//! Making sure a smolvm machine's egress allowlist is exactly what we asked.
//!
//! smolvm 0.8.0 drops `--allow-cidr` when it is combined with `--from`, and
//! an unrestricted machine could reach every service on host loopback. So
//! after `smolvm machine create` and before `machine start` we read the
//! machine's record in smolvm's own state DB, write the allowlist in if it
//! differs, and read it back. Anything we cannot confirm (no DB, no record,
//! a record we cannot read, a write that did not take) refuses the launch.
//!
//! smolvm's DB: `vms(name TEXT PRIMARY KEY, data BLOB NOT NULL)`, where
//! `data` is the JSON of the machine record, stored as a BLOB (smolvm cannot
//! read it back as TEXT). We change only its `allowed_cidrs`, keep every
//! other field and their order, and leave the journal mode smolvm chose.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde_json::{Map, Value};

/// How long to wait for smolvm's own writers before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a machine's allowlist could not be confirmed. Every variant except
/// [`AllowlistError::NoDbPath`] and the input checks is a refusal to launch.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("cannot locate smolvm's state DB: {var} {reason}")]
    NoDbPath { var: &'static str, reason: &'static str },
    #[error("no allowlist given for machine `{machine}`; an empty one may mean no restriction to smolvm")]
    EmptyAllowlist { machine: String },
    #[error("invalid allowlist entry `{cidr}` for machine `{machine}`: {reason}")]
    InvalidCidr { machine: String, cidr: String, reason: &'static str },
    #[error(
        "smolvm's state DB {} does not exist, so the egress allowlist of machine `{machine}` cannot be confirmed; \
         refusing to launch (is smolvm's data directory elsewhere? set SMOLVM_DATA_DIR as smolvm sees it)",
        db.display()
    )]
    MissingDb { db: PathBuf, machine: String },
    #[error(
        "smolvm's state DB {} has no record of machine `{machine}`; refusing to launch (the machine must be \
         created first; is smolvm's data directory elsewhere? set SMOLVM_DATA_DIR as smolvm sees it)",
        db.display()
    )]
    MissingRow { db: PathBuf, machine: String },
    #[error(
        "the record of machine `{machine}` in {} is unreadable ({reason}); refusing to launch (is this smolvm \
         version supported?)",
        db.display()
    )]
    Unreadable { db: PathBuf, machine: String, reason: String },
    #[error(
        "machine `{machine}` would allow {} instead of exactly {} (in {}); refusing to launch",
        show(found.as_deref()),
        show(Some(want)),
        db.display()
    )]
    Mismatch { db: PathBuf, machine: String, want: Vec<String>, found: Option<Vec<String>> },
    #[error("{op} {} for machine `{machine}`; refusing to launch", db.display())]
    Sqlite {
        db: PathBuf,
        machine: String,
        op: &'static str,
        // Boxed: SQLite's error is large, and every result carries this type.
        #[source]
        source: Box<rusqlite::Error>,
    },
}

fn show(cidrs: Option<&[String]>) -> String {
    match cidrs {
        None => "everything (no allowlist)".to_owned(),
        Some(c) => format!("[{}]", c.join(", ")),
    }
}

/// Where smolvm keeps its state DB, which differs by platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// XDG data directory (also what smolvm's `dirs` crate uses on the BSDs).
    Linux,
    /// `~/Library/Application Support`.
    MacOs,
}

impl Platform {
    pub fn current() -> Platform {
        if cfg!(target_os = "macos") { Platform::MacOs } else { Platform::Linux }
    }
}

/// The path of smolvm's state DB as smolvm would compute it from `env` (a
/// lookup such as `|k| std::env::var_os(k)`).
///
/// Linux: `SMOLVM_DATA_DIR` makes smolvm set `HOME` to it and drop the XDG
/// variables, giving `$SMOLVM_DATA_DIR/.local/share/smolvm/server/smolvm.db`;
/// otherwise `$XDG_DATA_HOME` (only when absolute, as in `dirs`) or
/// `$HOME/.local/share`, then `smolvm/server/smolvm.db`. macOS:
/// `$HOME/Library/Application Support/smolvm/server/smolvm.db`
/// (`SMOLVM_DATA_DIR` does not move it there). Empty variables count as
/// unset; a relative `HOME` or `SMOLVM_DATA_DIR` is refused, as it would
/// depend on smolvm's working directory.
pub fn db_path(platform: Platform, env: &dyn Fn(&str) -> Option<OsString>) -> Result<PathBuf, AllowlistError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let absolute = |k: &'static str| -> Result<PathBuf, AllowlistError> {
        match var(k) {
            None => Err(AllowlistError::NoDbPath { var: k, reason: "is not set" }),
            Some(p) if p.is_relative() => Err(AllowlistError::NoDbPath { var: k, reason: "is not an absolute path" }),
            Some(p) => Ok(p),
        }
    };
    let data = match platform {
        Platform::MacOs => absolute("HOME")?.join("Library").join("Application Support"),
        Platform::Linux if var("SMOLVM_DATA_DIR").is_some() => {
            absolute("SMOLVM_DATA_DIR")?.join(".local").join("share")
        }
        Platform::Linux => match var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
            Some(p) => p,
            None => absolute("HOME")?.join(".local").join("share"),
        },
    };
    Ok(data.join("smolvm").join("server").join("smolvm.db"))
}

/// What [`force_allowlist`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enforced {
    /// `true` when the record had to be written (smolvm had dropped the
    /// allowlist); `false` when it already matched and nothing was written.
    pub patched: bool,
}

/// Makes machine `machine`'s persisted allowlist exactly `cidrs`, or
/// refuses. Run it after `smolvm machine create` and before `machine start`
/// (smolvm reads the record when the machine starts).
///
/// "Exactly" compares sets: order and repeats do not matter, but every
/// entry must be there and nothing else. Entries are canonical CIDRs
/// (`127.0.0.16/32`: a prefix, no host bits). The DB is opened read-write
/// and never created. When the record already matches, nothing is written;
/// otherwise `allowed_cidrs` is replaced inside one immediate transaction,
/// read back before commit, and read again afterwards with
/// [`verify_allowlist`].
pub fn force_allowlist(db: &Path, machine: &str, cidrs: &[String]) -> Result<Enforced, AllowlistError> {
    let want = parse_all(machine, cidrs)?;
    let ctx = Ctx { db, machine };
    let mut conn = ctx.open()?;
    let stored = ctx.read(&conn)?;
    if stored.blob && same(stored.cidrs.as_deref(), &want) {
        return Ok(Enforced { patched: false });
    }

    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ctx.sqlite("starting a write transaction on"))?;
    let mut stored = ctx.read(&tx)?;
    let mut unique = BTreeSet::new();
    let list = cidrs.iter().filter(|c| unique.insert(c.as_str())).map(|c| Value::String(c.clone())).collect();
    stored.record.insert("allowed_cidrs".to_owned(), Value::Array(list));
    let bytes = serde_json::to_vec(&stored.record).map_err(|e| ctx.unreadable(e.to_string()))?;
    let changed = tx
        .execute("UPDATE vms SET data = ?1 WHERE name = ?2", (bytes, machine))
        .map_err(ctx.sqlite("writing the record to"))?;
    if changed != 1 {
        return Err(ctx.missing_row());
    }
    ctx.check(&ctx.read(&tx)?, cidrs, &want)?;
    tx.commit().map_err(ctx.sqlite("committing to"))?;
    drop(conn);

    verify_allowlist(db, machine, cidrs)?;
    Ok(Enforced { patched: true })
}

/// Confirms, without writing, that machine `machine`'s persisted allowlist
/// is exactly `cidrs` (as a set) and stored as smolvm can read it.
pub fn verify_allowlist(db: &Path, machine: &str, cidrs: &[String]) -> Result<(), AllowlistError> {
    let want = parse_all(machine, cidrs)?;
    let ctx = Ctx { db, machine };
    let conn = ctx.open()?;
    ctx.check(&ctx.read(&conn)?, cidrs, &want)
}

/// A canonical network: the address with its host bits clear, and the prefix.
type Cidr = (IpAddr, u8);

fn parse_cidr(s: &str) -> Result<Cidr, &'static str> {
    let (addr, prefix) = s.split_once('/').ok_or("no prefix length (write `/32` for one address)")?;
    let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
    let prefix: u8 = prefix.parse().map_err(|_| "the prefix length is not a number")?;
    let host_bits_clear = match addr {
        IpAddr::V4(a) if prefix <= 32 => u32::from(a).checked_shl(u32::from(prefix)).unwrap_or(0) == 0,
        IpAddr::V6(a) if prefix <= 128 => u128::from(a).checked_shl(u32::from(prefix)).unwrap_or(0) == 0,
        _ => return Err("the prefix length is too long"),
    };
    if !host_bits_clear {
        return Err("host bits are set");
    }
    // What we write is what smolvm parses, so only one spelling is accepted.
    if format!("{addr}/{prefix}") != s {
        return Err("not in canonical form");
    }
    Ok((addr, prefix))
}

fn parse_all(machine: &str, cidrs: &[String]) -> Result<BTreeSet<Cidr>, AllowlistError> {
    if cidrs.is_empty() {
        return Err(AllowlistError::EmptyAllowlist { machine: machine.to_owned() });
    }
    cidrs
        .iter()
        .map(|c| {
            parse_cidr(c).map_err(|reason| AllowlistError::InvalidCidr {
                machine: machine.to_owned(),
                cidr: c.clone(),
                reason,
            })
        })
        .collect()
}

/// Whether `found` allows exactly `want`. An entry we cannot parse is not
/// something we asked for, so it makes the lists differ.
fn same(found: Option<&[String]>, want: &BTreeSet<Cidr>) -> bool {
    let Some(found) = found else { return false };
    let parsed: Result<BTreeSet<Cidr>, _> = found.iter().map(|c| parse_cidr(c)).collect();
    parsed.is_ok_and(|p| &p == want)
}

/// A machine record as read from the DB.
struct Stored {
    record: Map<String, Value>,
    cidrs: Option<Vec<String>>,
    /// Whether `data` is a BLOB, the only type smolvm reads.
    blob: bool,
}

struct Ctx<'a> {
    db: &'a Path,
    machine: &'a str,
}

impl Ctx<'_> {
    fn open(&self) -> Result<Connection, AllowlistError> {
        // Checked first so that a missing DB is reported as such, whatever
        // SQLite would say; the flags below never create one either.
        if !self.db.is_file() {
            return Err(AllowlistError::MissingDb { db: self.db.to_owned(), machine: self.machine.to_owned() });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.db, flags).map_err(self.sqlite("opening"))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(self.sqlite("configuring"))?;
        Ok(conn)
    }

    fn read(&self, conn: &Connection) -> Result<Stored, AllowlistError> {
        let row = conn
            .query_row("SELECT data FROM vms WHERE name = ?1", [self.machine], |row| {
                Ok(match row.get_ref(0)? {
                    ValueRef::Blob(b) => Ok((b.to_vec(), true)),
                    ValueRef::Text(t) => Ok((t.to_vec(), false)),
                    other => Err(format!("data is {}, not JSON bytes", other.data_type())),
                })
            })
            .optional()
            .map_err(self.sqlite("reading the record from"))?;
        let (bytes, blob) = row.ok_or_else(|| self.missing_row())?.map_err(|r| self.unreadable(r))?;
        let record = match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(self.unreadable("data is not a JSON object".into())),
            Err(e) => return Err(self.unreadable(format!("data is not JSON: {e}"))),
        };
        let cidrs = match record.get("allowed_cidrs") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| self.unreadable("allowed_cidrs holds something other than strings".into()))?,
            ),
            Some(_) => return Err(self.unreadable("allowed_cidrs is not a list".into())),
        };
        Ok(Stored { record, cidrs, blob })
    }

    fn check(&self, stored: &Stored, cidrs: &[String], want: &BTreeSet<Cidr>) -> Result<(), AllowlistError> {
        if !same(stored.cidrs.as_deref(), want) {
            return Err(AllowlistError::Mismatch {
                db: self.db.to_owned(),
                machine: self.machine.to_owned(),
                want: cidrs.to_vec(),
                found: stored.cidrs.clone(),
            });
        }
        if !stored.blob {
            return Err(self.unreadable("data is stored as TEXT, which smolvm cannot read".into()));
        }
        Ok(())
    }

    fn missing_row(&self) -> AllowlistError {
        AllowlistError::MissingRow { db: self.db.to_owned(), machine: self.machine.to_owned() }
    }

    fn unreadable(&self, reason: String) -> AllowlistError {
        AllowlistError::Unreadable { db: self.db.to_owned(), machine: self.machine.to_owned(), reason }
    }

    fn sqlite(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> AllowlistError {
        let (db, machine) = (self.db.to_owned(), self.machine.to_owned());
        move |source| AllowlistError::Sqlite { db, machine, op, source: Box::new(source) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_must_be_canonical() {
        assert_eq!(parse_cidr("127.0.0.16/32"), Ok(("127.0.0.16".parse().expect("ip"), 32)));
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok(("10.0.0.0".parse().expect("ip"), 8)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(("0.0.0.0".parse().expect("ip"), 0)));
        assert_eq!(parse_cidr("::1/128"), Ok(("::1".parse().expect("ip"), 128)));
        for bad in [
            "127.0.0.16",
            "127.0.0.16/032",
            "127.0.0.16/+32",
            "::0:1/128",
            "10.0.0.1/8",
            "1.2.3.4/33",
            "::1/129",
            "x/32",
            "1.2.3.4/x",
            "::1/64",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sameness_is_set_equality() {
        let want = parse_all("m", &["127.0.0.16/32".into(), "10.0.0.0/8".into()]).expect("want");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(same(Some(&s(&["10.0.0.0/8", "127.0.0.16/32"])), &want));
        assert!(same(Some(&s(&["10.0.0.0/8", "127.0.0.16/32", "10.0.0.0/8"])), &want));
        assert!(!same(Some(&s(&["127.0.0.16/32"])), &want));
        assert!(!same(Some(&s(&["10.0.0.0/8", "127.0.0.16/32", "127.0.0.0/8"])), &want));
        assert!(!same(Some(&s(&["10.0.0.0/8", "127.0.0.16"])), &want));
        assert!(!same(Some(&[]), &want));
        assert!(!same(None, &want));
    }
}
