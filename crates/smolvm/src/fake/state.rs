//! The state DB and the machine lifecycle: create, start, stop, delete,
//! status, ls; and pack create.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value, json};

use super::cli::{Backend, CreateArgs, DeleteArgs, LsArgs, PackCreateArgs, StatusArgs};
use super::{Fake, R, env_specs, err_line, out};

/// A machine record: smolvm's `VmRecord` as JSON.
pub(super) type Record = Map<String, Value>;

/// smolvm's state DB: `vms(name TEXT PRIMARY KEY, data BLOB NOT NULL)`, the
/// data being the record's JSON bytes; WAL, 15 s busy timeout.
pub(super) struct Db(Connection);

impl Db {
    pub(super) fn open(fake: &Fake) -> R<Db> {
        let dir = fake.smolvm_dir().join("server");
        std::fs::create_dir_all(&dir).map_err(|e| format!("database unavailable: {}: {e}", dir.display()))?;
        let path = dir.join("smolvm.db");
        let conn = Connection::open(&path).map_err(|e| format!("database unavailable: {e}"))?;
        let setup = || -> rusqlite::Result<()> {
            conn.busy_timeout(Duration::from_secs(15))?;
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS vms (name TEXT PRIMARY KEY, data BLOB NOT NULL);
                 CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
            )
        };
        setup().map_err(|e| format!("database unavailable: {e}"))?;
        Ok(Db(conn))
    }

    pub(super) fn get(&self, name: &str) -> R<Option<Record>> {
        let data: Option<Vec<u8>> = self
            .0
            .query_row("SELECT data FROM vms WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(|e| format!("database error: {e}"))?;
        data.map(|d| serde_json::from_slice(&d).map_err(|e| format!("corrupt record for '{name}': {e}"))).transpose()
    }

    /// The record, or smolvm's not-found error.
    pub(super) fn must_get(&self, name: &str) -> R<Record> {
        self.get(name)?.ok_or_else(|| format!("vm not found: {name}"))
    }

    pub(super) fn put(&self, name: &str, rec: &Record) -> R<()> {
        let data = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
        self.0
            .execute("INSERT OR REPLACE INTO vms (name, data) VALUES (?1, ?2)", rusqlite::params![name, data])
            .map(drop)
            .map_err(|e| format!("database error: {e}"))
    }

    fn delete(&self, name: &str) -> R<()> {
        self.0.execute("DELETE FROM vms WHERE name = ?1", [name]).map(drop).map_err(|e| format!("database error: {e}"))
    }

    fn all(&self) -> R<Vec<Record>> {
        let mut stmt =
            self.0.prepare("SELECT name FROM vms ORDER BY name").map_err(|e| format!("database error: {e}"))?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| format!("database error: {e}"))?;
        names.iter().map(|n| self.must_get(n)).collect()
    }
}

pub(super) fn state(rec: &Record) -> &str {
    rec.get("state").and_then(Value::as_str).unwrap_or("created")
}

/// smolvm's error for exec and cp on a machine that is not running.
pub(super) fn not_running(name: &str) -> String {
    format!(
        "agent operation failed: connect: machine '{name}' is not running. Use 'smolvm machine start --name {name}' first."
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `VmRecord` fields of v1.9.3, in its order; `skip if None/empty` fields
/// are left out when so.
fn record(name: &str, a: &CreateArgs, egress: Egress, env: Vec<(String, String)>, mounts: Vec<Value>) -> Record {
    // `PublishedSocketConfig`, as `parse_published_sockets` makes it.
    let sockets: Vec<Value> = a
        .mount_socket
        .iter()
        .map(|(h, g)| json!({"direction": "mount", "guest_path": g, "host_path": h.display().to_string()}))
        .collect();
    let network_backend = match (a.net_backend, egress.forces_virtio || !a.port.is_empty()) {
        (Some(Backend::Tsi), _) => Some("tsi"),
        (Some(Backend::VirtioNet), _) | (None, true) => Some("virtio-net"),
        (None, false) => None,
    };
    let network = a.net || a.dns.is_some() || !a.port.is_empty() || egress.forces_virtio;
    let r = json!({
        "name": name,
        "created_at": now(),
        "state": "created",
        "pid": null,
        "pid_start_time": null,
        "cpus": a.cpus.unwrap_or(4),
        "mem": a.mem.unwrap_or(8192),
        "mounts": mounts,
        "ports": a.port.iter().map(|(h, g)| json!([h, g])).collect::<Vec<_>>(),
        "published_sockets": sockets,
        "network": network,
        "gpu": false,
        "gpu_vram_mib": null,
        "rosetta": false,
        "restart": {"policy": "never", "max_retries": 0, "max_backoff_secs": 300, "restart_count": 0, "user_stopped": false},
        "last_exit_code": null,
        "init": [],
        "init_completed": false,
        "remote_volumes": [],
        "env": env.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "workdir": a.workdir,
        "storage_gb": a.storage,
        "overlay_gb": a.overlay,
        "allowed_cidrs": egress.allowed_cidrs,
    });
    let mut r = match r {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(b) = network_backend {
        r.insert("network_backend".into(), b.into());
    }
    if let Some(dns) = a.dns {
        r.insert("dns".into(), dns.to_string().into());
    }
    r.insert("image".into(), json!(a.image));
    r.insert("entrypoint".into(), json!([]));
    r.insert("cmd".into(), json!(a.command));
    if !a.label.is_empty() {
        let labels: BTreeMap<&str, &str> = a.label.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        r.insert("labels".into(), json!(labels));
    }
    for (k, v) in [
        ("health_cmd", Value::Null),
        ("health_interval_secs", Value::Null),
        ("health_timeout_secs", Value::Null),
        ("health_retries", Value::Null),
        ("health_startup_grace_secs", Value::Null),
        ("ssh_agent", false.into()),
        ("cuda", false.into()),
        ("cuda_fork_pool_size", Value::Null),
        ("cuda_vram_limit_mib", Value::Null),
        ("cuda_preload_modules", json!([])),
        ("docker_socket", false.into()),
    ] {
        r.insert(k.into(), v);
    }
    if let Some(hosts) = egress.dns_filter_hosts {
        r.insert("dns_filter_hosts".into(), json!(hosts));
    }
    r.insert("ephemeral".into(), false.into());
    if let Some(from) = &a.from {
        r.insert("source_smolmachine".into(), from.display().to_string().into());
    }
    for (k, v) in [("golden", false), ("forkpoint_held", false), ("runtime_managed", false)] {
        r.insert(k.into(), v.into());
    }
    r.insert("fork_env".into(), json!([]));
    r
}

/// The egress policy as `resolve_egress_flags` stores it.
struct Egress {
    allowed_cidrs: Option<Vec<String>>,
    dns_filter_hosts: Option<Vec<String>>,
    forces_virtio: bool,
}

impl Egress {
    fn resolve(a: &CreateArgs) -> Egress {
        let policy = !a.allow_cidr.is_empty() || !a.allow_host.is_empty() || a.outbound_localhost_only;
        if !policy {
            return Egress { allowed_cidrs: None, dns_filter_hosts: None, forces_virtio: false };
        }
        let mut cidrs = a.allow_cidr.clone();
        // No DNS here: `localhost` and IP literals only (see the module docs).
        for host in &a.allow_host {
            let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) if host.eq_ignore_ascii_case("localhost") => {
                    vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16])]
                }
                Err(_) => vec![],
            };
            cidrs.extend(ips.iter().map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })));
        }
        if a.outbound_localhost_only {
            cidrs.extend(["127.0.0.0/8".to_owned(), "::1/128".to_owned()]);
        }
        let hosts = (!a.allow_host.is_empty()).then(|| a.allow_host.clone());
        Egress { allowed_cidrs: Some(cidrs), dns_filter_hosts: hosts, forces_virtio: true }
    }
}

impl Fake {
    pub(super) fn create(&self, a: CreateArgs) -> R<ExitCode> {
        let name = a.name.clone().unwrap_or_else(|| format!("vm-{:08x}", now() as u32 ^ std::process::id()));
        crate::argv::check_name(&name).map_err(|e| format!("invalid machine name: {e}"))?;
        let db = Db::open(self)?;
        if db.get(&name)?.is_some() {
            return Err(format!("machine '{name}' already exists"));
        }
        if let Some(from) = &a.from
            && !from.is_file()
        {
            return Err(format!("smolmachine not found: {}", from.display()));
        }
        let mut mounts = Vec::new();
        for spec in &a.volume {
            let (rest, ro) = match spec.strip_suffix(":ro") {
                Some(rest) => (rest, true),
                None => (spec.as_str(), false),
            };
            let Some((host, guest)) = rest.split_once(':') else {
                return Err(format!("invalid volume '{spec}': expected HOST:GUEST[:ro]"));
            };
            if !PathBuf::from(host).is_dir() {
                return Err(format!("volume host path must be an existing directory: {host}"));
            }
            mounts.push(json!([host, guest, ro]));
        }
        let mut egress = Egress::resolve(&a);
        if a.net_backend == Some(Backend::Tsi) && (egress.forces_virtio || !a.port.is_empty()) {
            return Err("egress policy, ports and networks require the virtio-net backend; TSI does not enforce them \
                 (drop --net-backend tsi)"
                .into());
        }
        if a.from.is_some() && !self.keeps_egress_with_from() {
            // smolvm up to 1.7.7: the --from path returned before the egress
            // flags were resolved, so they vanished without a word.
            egress = Egress { allowed_cidrs: None, dns_filter_hosts: None, forces_virtio: false };
        }
        let rec = record(&name, &a, egress, env_specs(&a.env), mounts);
        db.put(&name, &rec)?;
        let guest = self.guest_dir(&name);
        std::fs::create_dir_all(&guest).map_err(|e| format!("create {}: {e}", guest.display()))?;
        out(&format!("Created machine: {name}\n\nStart it with: smolvm machine start --name {name}\n"))?;
        Ok(ExitCode::SUCCESS)
    }

    pub(super) fn start(&self, name: &str) -> R<ExitCode> {
        let db = Db::open(self)?;
        let mut rec = match db.get(name)? {
            Some(r) => r,
            None if name == "default" => {
                let a = CreateArgs::default();
                let rec = record(name, &a, Egress::resolve(&a), vec![], vec![]);
                std::fs::create_dir_all(self.guest_dir(name)).map_err(|e| e.to_string())?;
                rec
            }
            None => return Err(format!("vm not found: {name}")),
        };
        if state(&rec) == "running" {
            out(&format!("Machine '{name}' is already running\n"))?;
            return Ok(ExitCode::SUCCESS);
        }
        std::fs::create_dir_all(self.guest_dir(name)).map_err(|e| e.to_string())?;
        // The VM's one network stack: with no network device, a namespace
        // of its own holding only `lo` (down, as smolvm's stub may leave it);
        // every exec of this machine joins it.
        if !rec.get("network").and_then(Value::as_bool).unwrap_or(false) {
            let holder = spawn_netns_holder()?;
            self.save_runtime(name, &Runtime { netns: Some(holder), detached: vec![] })?;
        }
        rec.insert("state".into(), "running".into());
        rec.insert("pid".into(), std::process::id().into());
        db.put(name, &rec)?;
        out(&format!("Started machine: {name}\n"))?;
        Ok(ExitCode::SUCCESS)
    }

    pub(super) fn stop(&self, name: &str) -> R<ExitCode> {
        let db = Db::open(self)?;
        let mut rec = db.must_get(name)?;
        self.kill_runtime(name);
        if state(&rec) == "running" {
            rec.insert("state".into(), "stopped".into());
            rec.insert("pid".into(), Value::Null);
            db.put(name, &rec)?;
        }
        out(&format!("Stopped machine: {name}\n"))?;
        Ok(ExitCode::SUCCESS)
    }

    pub(super) fn delete(&self, a: &DeleteArgs) -> R<ExitCode> {
        let db = Db::open(self)?;
        db.must_get(&a.name)?;
        if !a.force {
            // smolvm asks on the terminal; with stdin closed the answer is no.
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                super::err_line(&format!("reading the answer: {e}"));
            }
            if !matches!(line.trim(), "y" | "Y" | "yes") {
                return Err("deletion cancelled".into());
            }
        }
        self.kill_runtime(&a.name);
        db.delete(&a.name)?;
        let guest = self.guest_dir(&a.name);
        if guest.exists() {
            std::fs::remove_dir_all(&guest).map_err(|e| format!("remove {}: {e}", guest.display()))?;
        }
        out(&format!("Deleted machine: {}\n", a.name))?;
        Ok(ExitCode::SUCCESS)
    }

    pub(super) fn status(&self, a: &StatusArgs) -> R<ExitCode> {
        let rec = Db::open(self)?.must_get(&a.name)?;
        if a.json {
            out(&format!("{}\n", status_json(&rec)))?;
        } else {
            out(&format!("Machine: {}\nState: {}\n", a.name, state(&rec)))?;
        }
        Ok(ExitCode::SUCCESS)
    }

    pub(super) fn ls(&self, a: &LsArgs) -> R<ExitCode> {
        let all = Db::open(self)?.all()?;
        if a.json {
            let list: Vec<Value> = all.iter().map(status_json).collect();
            out(&format!("{}\n", Value::Array(list)))?;
        } else if all.is_empty() {
            out("No machines found\n")?;
        } else {
            let mut s = String::from("NAME\tSTATE\n");
            for r in &all {
                s.push_str(&format!("{}\t{}\n", r.get("name").and_then(Value::as_str).unwrap_or("?"), state(r)));
            }
            out(&s)?;
        }
        Ok(ExitCode::SUCCESS)
    }

    pub(super) fn pack_create(&self, a: &PackCreateArgs) -> R<ExitCode> {
        if a.output.extension().is_some_and(|e| e == "smolmachine") {
            return Err(format!(
                "output path must not end in .smolmachine: {} (the sidecar is written beside the stub)",
                a.output.display()
            ));
        }
        if let Some(vm) = &a.from_vm {
            let rec = Db::open(self)?.must_get(vm)?;
            if state(&rec) == "running" {
                return Err(format!("machine '{vm}' must be stopped to pack it"));
            }
        }
        let mut sidecar = a.output.clone().into_os_string();
        sidecar.push(".smolmachine");
        let meta = json!({"fake_smolmachine": 1, "image": a.image, "from_vm": a.from_vm, "cpus": a.cpus, "mem": a.mem});
        let write = |p: &std::path::Path, body: &[u8]| {
            std::fs::write(p, body).map_err(|e| format!("write {}: {e}", p.display()))
        };
        write(&a.output, b"#!/bin/sh\necho 'fake-smolvm pack stub: nothing to run' >&2\nexit 1\n")?;
        set_mode(&a.output, 0o755)?;
        write(PathBuf::from(&sidecar).as_path(), format!("{meta}\n").as_bytes())?;
        err_line(&format!("Packed {} -> {}", a.image.as_deref().unwrap_or("vm"), a.output.display()));
        Ok(ExitCode::SUCCESS)
    }
}

pub(super) fn set_mode(p: &std::path::Path, mode: u32) -> R<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

/// `machine_status_json` (vm_common.rs:2469): counts for mounts and ports, no
/// `allowed_cidrs`.
fn status_json(r: &Record) -> Value {
    let get = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
    let count = |k: &str| r.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    json!({
        "name": get("name"),
        "state": state(r),
        "cpus": get("cpus"),
        "memory_mib": get("mem"),
        "pid": get("pid"),
        "mounts": count("mounts"),
        "ports": count("ports"),
        "created_at": get("created_at"),
        "storage_gb": get("storage_gb"),
        "overlay_gb": get("overlay_gb"),
        "image": get("image"),
        "entrypoint": r.get("entrypoint").cloned().unwrap_or(json!([])),
        "cmd": r.get("cmd").cloned().unwrap_or(json!([])),
        "ephemeral": r.get("ephemeral").cloned().unwrap_or(false.into()),
        "gpu": r.get("gpu").cloned().unwrap_or(false.into()),
        "gpu_vram_mib": get("gpu_vram_mib"),
        "cuda": r.get("cuda").cloned().unwrap_or(false.into()),
        "forkable": r.get("forkable").cloned().unwrap_or(false.into()),
        "cuda_fork_pool_size": get("cuda_fork_pool_size"),
        "cuda_vram_limit_mib": get("cuda_vram_limit_mib"),
        "forkpoint_held": r.get("forkpoint_held").cloned().unwrap_or(false.into()),
        "labels": r.get("labels").cloned().unwrap_or(json!({})),
        "restart_policy": "never",
        "restart_max_retries": 0,
        "restart_count": 0,
        "health_cmd": get("health_cmd"),
        "health_interval_secs": get("health_interval_secs"),
        "health_timeout_secs": get("health_timeout_secs"),
        "health_retries": get("health_retries"),
        "health_startup_grace_secs": get("health_startup_grace_secs"),
        "network": r.get("network").cloned().unwrap_or(false.into()),
    })
}

/// What a running machine holds on the host: its network namespace's holder
/// and the processes `exec -d` left running. Kept beside the guest dir, out
/// of the guest's reach.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Runtime {
    pub(super) netns: Option<u32>,
    pub(super) detached: Vec<u32>,
}

/// `unshare --net sleep infinity`, in a process group of its own: the
/// network namespace lives as long as it does.
fn spawn_netns_holder() -> R<u32> {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new("unshare")
        .args(["--net", "--", "sleep", "infinity"])
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("fake-smolvm models no network with `unshare --net` (util-linux): {e}"))?;
    let pid = child.id();
    // Its namespace exists once it has left ours.
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        if theirs.is_some() && theirs != ours {
            return Ok(pid);
        }
        if std::time::Instant::now() > deadline {
            return Err("unshare --net did not make a network namespace (run as root)".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Fake {
    fn runtime_path(&self, name: &str) -> PathBuf {
        self.smolvm_dir().join("fake-guests").join(format!("{name}.runtime.json"))
    }

    pub(super) fn runtime(&self, name: &str) -> Runtime {
        std::fs::read(self.runtime_path(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub(super) fn save_runtime(&self, name: &str, r: &Runtime) -> R<()> {
        let body = serde_json::to_vec(r).map_err(|e| e.to_string())?;
        std::fs::write(self.runtime_path(name), body).map_err(|e| format!("write runtime of {name}: {e}"))
    }

    /// Ends what the machine runs, as stopping a VM does.
    fn kill_runtime(&self, name: &str) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let r = self.runtime(name);
        for pid in r.detached.into_iter().chain(r.netns) {
            let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            // ESRCH: already gone, as a stopped VM's processes are.
            if killpg(pid, Signal::SIGKILL).is_err()
                && let Err(e) = kill(pid, Signal::SIGKILL)
                && e != nix::errno::Errno::ESRCH
            {
                super::err_line(&format!("killing {pid}: {e}"));
            }
        }
        let path = self.runtime_path(name);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            super::err_line(&format!("removing {}: {e}", path.display()));
        }
    }
}
