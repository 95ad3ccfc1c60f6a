//! The durable request queue: one JSON file per request in the bottle's
//! state dir (`supervise/requests/<id>.json`), each written whole to a
//! temporary file and renamed into place, so a reader never sees half a
//! request and a crash never loses one. Every read-modify-write holds an
//! exclusive `flock` on `requests/.lock`: the supervise server (in the
//! launcher) and any number of operator CLIs change the same files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::SuperviseError;

/// A route as the agent proposes it or the operator grants it: only what a
/// request may name (no token injection, no TLS passthrough).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// How long a granted route lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifetime {
    /// Until the bottle stops.
    Session,
    /// For good: also wanted in the bottle's manifest.
    Persist,
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    /// Approved with a route other than the one asked for.
    Modified,
    Rejected,
}

/// The operator's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Who decided (the operator's user name).
    pub by: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The route granted; `None` for a rejection.
    pub route: Option<RouteSpec>,
    pub comment: Option<String>,
}

/// One request, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRequest {
    pub id: String,
    pub bottle: String,
    pub created: String,
    /// The supervise run (one per bottle start) that took the request: a
    /// session grant lasts only as long as its run.
    pub run: String,
    pub route: RouteSpec,
    pub justification: String,
    pub lifetime: Lifetime,
    pub state: State,
    pub decision: Option<Decision>,
    /// The granted route is in force in the running proxy.
    #[serde(default)]
    pub applied: bool,
    /// Why applying the granted route failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
}

/// A bottle's queue.
#[derive(Clone, Debug)]
pub struct Queue {
    state: PathBuf,
    dir: PathBuf,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SuperviseError {
    move |source| SuperviseError::Io { what, source }
}

/// A fresh request id: time-ordered, unique within the process and across
/// processes (the pid is part of it).
fn new_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("r{}-{}-{}", t.as_millis(), std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// An id names a file in the queue: nothing but letters, digits and `-`.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Queue {
    /// The queue of the bottle whose state dir is `state`.
    pub fn new(state: &Path) -> Queue {
        Queue { state: state.to_path_buf(), dir: state.join("supervise").join("requests") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create_dir(&self) -> Result<(), SuperviseError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))
    }

    /// Holds the queue's lock until dropped.
    fn lock(&self) -> Result<Flock<File>, SuperviseError> {
        self.create_dir()?;
        let p = self.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(format!("opening {}", p.display())))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| SuperviseError::Io { what: format!("locking {}", p.display()), source: e.into() })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn write(&self, r: &EgressRequest) -> Result<(), SuperviseError> {
        let p = self.path(&r.id);
        let tmp = self.dir.join(format!(".{}.tmp", r.id));
        let mut text = serde_json::to_vec_pretty(r).map_err(|e| SuperviseError::Corrupt(e.to_string()))?;
        text.push(b'\n');
        let mut f = File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &p).map_err(io(format!("renaming into {}", p.display())))
    }

    /// Adds a new pending request and returns it.
    pub fn submit(
        &self,
        bottle: &str,
        run: &str,
        route: RouteSpec,
        justification: String,
        lifetime: Lifetime,
    ) -> Result<EgressRequest, SuperviseError> {
        let _l = self.lock()?;
        let r = EgressRequest {
            id: new_id(),
            bottle: bottle.to_owned(),
            created: now(),
            run: run.to_owned(),
            route,
            justification,
            lifetime,
            state: State::Pending,
            decision: None,
            applied: false,
            apply_error: None,
        };
        self.write(&r)?;
        super::audit::record(&self.state, &super::AuditEvent::request(&r))?;
        Ok(r)
    }

    /// One request by id.
    pub fn get(&self, id: &str) -> Result<EgressRequest, SuperviseError> {
        if !valid_id(id) {
            return Err(SuperviseError::NoSuchRequest(id.to_owned()));
        }
        let p = self.path(id);
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SuperviseError::NoSuchRequest(id.to_owned()));
            }
            Err(e) => return Err(SuperviseError::Io { what: format!("reading {}", p.display()), source: e }),
        };
        serde_json::from_slice(&text).map_err(|e| SuperviseError::Corrupt(format!("{}: {e}", p.display())))
    }

    /// Every request, oldest first. A file that cannot be read is an error,
    /// not skipped: a request must never silently vanish.
    pub fn all(&self) -> Result<Vec<EgressRequest>, SuperviseError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SuperviseError::Io { what: format!("reading {}", self.dir.display()), source: e }),
        };
        let mut v = Vec::new();
        for e in rd {
            let e = e.map_err(io(format!("reading {}", self.dir.display())))?;
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if id.starts_with('.') {
                continue;
            }
            v.push(self.get(id)?);
        }
        v.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(v)
    }

    /// Records the operator's decision on a pending request. `route` is the
    /// route granted (`None` rejects). Refuses a request already decided.
    pub fn decide(
        &self,
        id: &str,
        by: &str,
        route: Option<RouteSpec>,
        comment: Option<String>,
    ) -> Result<EgressRequest, SuperviseError> {
        let _l = self.lock()?;
        let mut r = self.get(id)?;
        if r.state != State::Pending {
            return Err(SuperviseError::AlreadyDecided { id: id.to_owned(), state: r.state });
        }
        r.state = match &route {
            None => State::Rejected,
            Some(g) if *g == r.route => State::Approved,
            Some(_) => State::Modified,
        };
        r.decision = Some(Decision { by: by.to_owned(), at: now(), route, comment });
        self.write(&r)?;
        super::audit::record(&self.state, &super::AuditEvent::decision(&r))?;
        Ok(r)
    }

    /// Marks requests as applied (or failed to apply), under the lock.
    pub(crate) fn mark_applied(&self, ids: &[String], error: Option<&str>) -> Result<(), SuperviseError> {
        let _l = self.lock()?;
        for id in ids {
            let mut r = self.get(id)?;
            r.applied = error.is_none();
            r.apply_error = error.map(str::to_owned);
            self.write(&r)?;
        }
        Ok(())
    }
}

pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
