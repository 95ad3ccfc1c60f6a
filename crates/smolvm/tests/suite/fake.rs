//! fake-smolvm itself, run directly: the CLI surface and state it models.

use std::process::{Command, Output};

use super::{FAKE, fake};

fn run(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(FAKE).env("SMOLVM_DATA_DIR", data).args(args).output().expect("run fake-smolvm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version() {
    let f = fake();
    let out = run(f.dir.path(), &["--version"]);
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "smolvm 1.9.3\n".to_owned()));
}

#[test]
fn usage_errors_exit_2_like_clap() {
    let f = fake();
    let d = f.dir.path();
    for args in [
        &["machine", "create", "t2"][..],
        &["machine", "start", "t2"],
        &["machine", "exec", "-n", "t2", "--", "true"],
        &["machine", "exec", "--name", "t2"],
        &["machine", "delete", "-f"],
        &["machine", "create", "--name", "x", "--bogus"],
        &["machine", "create", "--name", "x", "-I", "alpine", "--from", "/p"],
        &["machine", "create", "--name", "x", "--allow-cidr", "10.0.0.0/40"],
        &["machine", "create", "--name", "x", "--dns", "::1"],
        &["machine", "create", "--name", "x", "--net-backend", "slirp"],
        &["machine", "exec", "--name", "x", "-d", "--stream", "--", "true"],
        &["machine", "exec", "--name", "x", "--timeout", "0s", "--", "true"],
        &["pack", "create", "alpine", "-o", "/x"],
        &["pack", "create", "-o", "/x"],
    ] {
        let out = run(d, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).starts_with("error: "), "{args:?}");
    }
    assert!(text(&run(d, &["machine", "create", "t2"]).stderr).contains("unexpected argument 't2' found"));
}

#[test]
fn smolvm_failures_exit_1_with_error() {
    let f = fake();
    let d = f.dir.path();
    let out = run(d, &["machine", "status", "--name", "nosuch", "--json"]);
    assert_eq!((out.status.code(), text(&out.stderr)), (Some(1), "Error: vm not found: nosuch\n".to_owned()));
    assert!(out.stdout.is_empty());
    let out = run(d, &["pack", "create", "-I", "alpine", "-o", "/tmp/x.smolmachine"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("Error: output path must not end in .smolmachine"));
    run(d, &["machine", "create", "--name", "b"]);
    let out = run(d, &["machine", "delete", "--name", "b"]);
    assert_eq!(out.status.code(), Some(1), "without -f smolvm asks, and no answer is no");
    let out = run(d, &["machine", "cp", "/etc/hostname", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(1), "cp needs a machine:path side");
}

#[test]
fn ls_json_is_an_empty_list_and_create_says_so() {
    let f = fake();
    let d = f.dir.path();
    assert_eq!(text(&run(d, &["machine", "ls", "--json"]).stdout), "[]\n");
    let out = run(d, &["vm", "create", "--name", "b"]);
    assert!(text(&out.stdout).starts_with("Created machine: b\n"));
    let out = run(d, &["machine", "create"]);
    assert!(text(&out.stdout).starts_with("Created machine: vm-"), "an unnamed machine gets a generated name");
    let out = run(d, &["machine", "start"]);
    assert_eq!(out.status.code(), Some(0), "start without a name creates `default`");
    let names: Vec<String> =
        serde_json::from_slice::<Vec<serde_json::Value>>(&run(d, &["machine", "list", "--json"]).stdout)
            .expect("json")
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect();
    assert_eq!(names.len(), 3);
    assert!(names.contains(&"default".to_owned()) && names.contains(&"b".to_owned()));
}

#[test]
fn status_json_has_the_documented_shape_without_allowed_cidrs() {
    let f = fake();
    let d = f.dir.path();
    run(
        d,
        &[
            "machine",
            "create",
            "--name",
            "t1",
            "--cpus",
            "2",
            "--mem",
            "1024",
            "--label",
            "bottle=x",
            "--allow-cidr",
            "1.1.1.1/32",
        ],
    );
    let out = run(d, &["machine", "status", "--name", "t1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "name",
            "state",
            "cpus",
            "memory_mib",
            "pid",
            "mounts",
            "ports",
            "created_at",
            "storage_gb",
            "overlay_gb",
            "image",
            "entrypoint",
            "cmd",
            "ephemeral",
            "gpu",
            "gpu_vram_mib",
            "cuda",
            "forkable",
            "cuda_fork_pool_size",
            "cuda_vram_limit_mib",
            "forkpoint_held",
            "labels",
            "restart_policy",
            "restart_max_retries",
            "restart_count",
            "health_cmd",
            "health_interval_secs",
            "health_timeout_secs",
            "health_retries",
            "health_startup_grace_secs",
            "network",
        ]
    );
    assert_eq!(
        (&v["state"], &v["cpus"], &v["memory_mib"], &v["network"]),
        (&"created".into(), &2.into(), &1024.into(), &true.into())
    );
    assert_eq!(v["labels"], serde_json::json!({"bottle": "x"}));
}

#[test]
fn the_state_db_is_smolvms() {
    let f = fake();
    run(f.dir.path(), &["machine", "create", "--name", "t1", "--allow-cidr", "1.1.1.1/32"]);
    let db = rusqlite::Connection::open(f.data().join("smolvm/server/smolvm.db")).expect("db");
    let mode: String = db.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("pragma");
    assert_eq!(mode, "wal");
    let (kind, data): (String, Vec<u8>) = db
        .query_row("SELECT typeof(data), data FROM vms WHERE name = 't1'", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("row");
    assert_eq!(kind, "blob");
    let rec: serde_json::Value = serde_json::from_slice(&data).expect("json");
    assert_eq!((&rec["allowed_cidrs"], &rec["network"]), (&serde_json::json!(["1.1.1.1/32"]), &true.into()));
    let schema: String =
        db.query_row("SELECT sql FROM sqlite_master WHERE name = 'vms'", [], |r| r.get(0)).expect("schema");
    assert_eq!(schema, "CREATE TABLE vms (name TEXT PRIMARY KEY, data BLOB NOT NULL)");
}

#[test]
fn the_data_dir_follows_home_and_xdg_without_smolvm_data_dir() {
    let home = tempfile::tempdir().expect("tempdir");
    let xdg = tempfile::tempdir().expect("tempdir");
    let run_in = |xdg: Option<&std::path::Path>| {
        let mut c = Command::new(FAKE);
        c.env_remove("SMOLVM_DATA_DIR").env_remove("XDG_DATA_HOME").env("HOME", home.path());
        if let Some(x) = xdg {
            c.env("XDG_DATA_HOME", x);
        }
        c.args(["machine", "create", "--name", "b"]).output().expect("run")
    };
    run_in(None);
    assert!(home.path().join(".local/share/smolvm/server/smolvm.db").is_file());
    run_in(Some(xdg.path()));
    assert!(xdg.path().join("smolvm/server/smolvm.db").is_file());
}

#[test]
fn every_call_is_logged_in_order() {
    let f = fake();
    let d = f.dir.path();
    run(d, &["machine", "create", "--name", "b", "-e", "A=1"]);
    run(d, &["machine", "bogus"]);
    assert_eq!(
        f.calls(),
        vec![
            ["machine", "create", "--name", "b", "-e", "A=1"].map(String::from).to_vec(),
            ["machine", "bogus"].map(String::from).to_vec(),
        ]
    );
}

/// `unshare --net` needs root (or a user namespace); the fake's no-network
/// machines need it.
fn netns_available() -> Result<(), String> {
    let ok = Command::new("unshare").args(["--net", "true"]).status().is_ok_and(|s| s.success());
    if ok { Ok(()) } else { Err("`unshare --net` does not work here (needs root and util-linux)".into()) }
}

#[test]
fn a_machine_without_network_has_only_lo_and_its_published_socket() {
    if let Err(why) = netns_available() {
        super::skip(&why);
        return;
    }
    let f = fake();
    let d = f.dir.path();
    let sock = d.join("p.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut c, b"from the host\n");
        }
    });
    let spec = format!("{}:/run/s/p.sock", sock.display());
    assert!(run(d, &["machine", "create", "--name", "m", "--mount-socket", &spec]).status.success());
    assert!(run(d, &["machine", "start", "--name", "m"]).status.success());
    let probe = "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/s/p.sock'); print(s.recv(99).decode(), end='')";
    let out = run(
        d,
        &[
            "machine",
            "exec",
            "--name",
            "m",
            "--",
            "sh",
            "-c",
            &format!(
                "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; python3 -c \"{probe}\"; getent hosts example.com || echo no-dns"
            ),
        ],
    );
    assert_eq!(text(&out.stdout), "lo\nfrom the host\nno-dns\n", "{}", text(&out.stderr));
    // A detached process runs in the same namespace and ends with the machine.
    let out = run(d, &["machine", "exec", "--name", "m", "-d", "--", "sleep", "60"]);
    let pid = text(&out.stdout).trim().to_owned();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "{pid}");
    assert!(run(d, &["machine", "stop", "--name", "m"]).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(std::time::Instant::now() < deadline, "the detached process outlived its machine");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(run(d, &["machine", "delete", "-f", "--name", "m"]).status.success());
}

#[test]
fn flags_appear_with_the_release_that_added_them() {
    let f = fake();
    let d = f.dir.path();
    let with = |v: &str, args: &[&str]| {
        Command::new(FAKE).env("SMOLVM_DATA_DIR", d).env("FAKE_SMOLVM_VERSION", v).args(args).output().expect("run")
    };
    let create = ["machine", "create", "--name", "x", "--mount-socket", "/a.sock:/b.sock"];
    let out = with("1.6.3", &create);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unexpected argument '--mount-socket'"), "{}", text(&out.stderr));
    assert!(with("1.6.4", &create).status.success());
    assert!(with("1.6.4", &["machine", "start", "--name", "x"]).status.success() || netns_available().is_err());
    let exec = ["machine", "exec", "--name", "x", "-u", "1000:1000", "--", "true"];
    let out = with("1.13.9", &exec);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unexpected argument '-u'"), "{}", text(&out.stderr));
    if netns_available().is_ok() {
        let out = with("1.14.0", &["machine", "exec", "--name", "x", "-u", "1000:1000", "--", "id", "-u"]);
        assert_eq!(text(&out.stdout), "1000\n", "{}", text(&out.stderr));
    }
    assert!(run(d, &["machine", "delete", "-f", "--name", "x"]).status.success());
}
