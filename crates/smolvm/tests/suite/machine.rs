//! The machine lifecycle, `ls`/`status` JSON, the stored record, `pack
//! create`, and how smolvm's failures map to errors.

use std::collections::BTreeMap;

use bot_bottle_smolvm::{
    CreateOpts, MachineState, MachineStatus, NetBackend, PackOpts, PackOutput, Port, SmolvmError, Source, StoredRecord,
    Volume,
};

use super::{fake, fake_with};

#[test]
fn create_start_stop_delete() {
    let f = fake();
    let s = &f.smolvm;
    assert_eq!(s.machine_ls().expect("ls"), vec![]);
    let opts = CreateOpts {
        cpus: Some(2),
        mem_mib: Some(1024),
        labels: vec![("bot-bottle".into(), "demo".into())],
        ..CreateOpts::new("b1", Source::Bare)
    };
    s.machine_create(&opts).expect("create");
    let status = s.machine_status("b1").expect("status").expect("b1 exists");
    let created_at = status.created_at;
    assert!(created_at.is_some());
    assert_eq!(
        status,
        MachineStatus {
            name: "b1".into(),
            state: MachineState::Created,
            cpus: Some(2),
            memory_mib: Some(1024),
            pid: None,
            mounts: 0,
            ports: 0,
            created_at,
            image: None,
            labels: BTreeMap::from([("bot-bottle".into(), "demo".into())]),
            network: false,
            ephemeral: false,
        }
    );
    s.machine_start("b1").expect("start");
    let running = s.machine_status("b1").expect("status").expect("exists");
    assert_eq!((running.state, running.pid.is_some()), (MachineState::Running, true));
    s.machine_stop("b1").expect("stop");
    assert_eq!(s.machine_status("b1").expect("status").map(|m| m.state), Some(MachineState::Stopped));
    s.machine_delete("b1").expect("delete");
    assert_eq!(s.machine_status("b1").expect("status"), None);
    assert_eq!(s.machine_ls().expect("ls"), vec![]);
    assert!(!f.guest("b1").exists(), "delete removes the machine's data");
    let delete = ["machine", "delete", "--name", "b1", "-f"].map(String::from).to_vec();
    assert!(f.calls().contains(&delete), "{:?}", f.calls());
}

#[test]
fn ls_lists_every_machine_with_counts() {
    let f = fake();
    let src = f.dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let opts = CreateOpts {
        volumes: vec![Volume { host: src, guest: "/workspace".into(), read_only: true }],
        ports: vec![Port { host: 18080, guest: 80 }],
        ..CreateOpts::new("b", Source::Image("alpine:3.20".into()))
    };
    f.smolvm.machine_create(&opts).expect("create");
    f.smolvm.machine_create(&CreateOpts::new("a", Source::Bare)).expect("create");
    let ls = f.smolvm.machine_ls().expect("ls");
    let summary: Vec<_> =
        ls.iter().map(|m| (m.name.as_str(), m.mounts, m.ports, m.image.as_deref(), m.network)).collect();
    assert_eq!(summary, [("a", 0, 0, None, false), ("b", 1, 1, Some("alpine:3.20"), true)]);
}

#[test]
fn unknown_names() {
    let f = fake();
    assert_eq!(f.smolvm.machine_status("nosuch").expect("status"), None);
    match f.smolvm.machine_start("nosuch") {
        Err(e @ SmolvmError::Failed { status: 1, .. }) => assert_eq!(
            e.to_string(),
            "`fake-smolvm machine start --name nosuch` failed with exit status 1: Error: vm not found: nosuch"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.smolvm.machine_delete("nosuch"), Err(SmolvmError::Failed { status: 1, .. })));
    assert!(matches!(f.smolvm.machine_stop("nosuch"), Err(SmolvmError::Failed { status: 1, .. })));
}

#[test]
fn smolvm_failures_carry_argv_status_and_stderr() {
    let f = fake();
    let opts = CreateOpts { env: vec![("TOKEN".into(), "s3cret".into())], ..CreateOpts::new("b", Source::Bare) };
    f.smolvm.machine_create(&opts).expect("create");
    match f.smolvm.machine_create(&opts) {
        Err(SmolvmError::Failed { argv, status, stderr }) => {
            assert_eq!(argv.words(), ["fake-smolvm", "machine", "create", "--name", "b", "-e", "TOKEN=…"]);
            assert_eq!((status, stderr.as_str()), (1, "Error: machine 'b' already exists"));
        }
        other => panic!("{other:?}"),
    }
    let missing = CreateOpts::new("c", Source::From(f.dir.path().join("none.smolmachine")));
    assert!(matches!(f.smolvm.machine_create(&missing), Err(SmolvmError::Failed { status: 1, .. })));
}

#[test]
fn a_flag_this_smolvm_does_not_know_is_a_usage_error() {
    let f = fake_with(&[("FAKE_SMOLVM_UNKNOWN_FLAGS", "--allow-host")]);
    let opts = CreateOpts { allow_hosts: vec!["example.com".into()], ..CreateOpts::new("b", Source::Bare) };
    match f.smolvm.machine_create(&opts) {
        Err(SmolvmError::Usage { argv, stderr }) => {
            assert_eq!(argv.words().last().map(String::as_str), Some("example.com"));
            assert!(stderr.starts_with("error: unexpected argument '--allow-host' found"), "{stderr}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_spawn_failure_names_the_command() {
    let s = bot_bottle_smolvm::Smolvm::at("/nonexistent/smolvm");
    match s.machine_start("b") {
        Err(e @ SmolvmError::Spawn { .. }) => {
            assert_eq!(e.to_string(), "could not run `smolvm machine start --name b`")
        }
        other => panic!("{other:?}"),
    }
}

fn record(f: &super::Fake, name: &str) -> StoredRecord {
    f.smolvm.stored_record(name).expect("read the DB").expect("record")
}

#[test]
fn the_stored_record_holds_the_egress_policy() {
    let f = fake();
    assert_eq!(f.smolvm.stored_record("b").expect("no DB yet"), None);
    let opts = CreateOpts {
        allow_cidrs: vec!["1.1.1.1/32".into()],
        allow_hosts: vec!["localhost".into(), "api.example.com".into()],
        outbound_localhost_only: true,
        ..CreateOpts::new("b", Source::Bare)
    };
    f.smolvm.machine_create(&opts).expect("create");
    let r = record(&f, "b");
    assert_eq!(
        r.allowed_cidrs,
        Some(["1.1.1.1/32", "127.0.0.1/32", "::1/128", "127.0.0.0/8", "::1/128"].map(String::from).to_vec())
    );
    assert_eq!(r.dns_filter_hosts, Some(vec!["localhost".into(), "api.example.com".into()]));
    assert_eq!((r.network, r.network_backend.as_deref()), (true, Some("virtio-net")));
    assert_eq!(f.smolvm.stored_record("other").expect("read"), None);

    f.smolvm.machine_create(&CreateOpts { net: true, ..CreateOpts::new("open", Source::Bare) }).expect("create");
    let r = record(&f, "open");
    assert_eq!((r.allowed_cidrs, r.network, r.network_backend), (None, true, None));
}

#[test]
fn the_db_is_found_where_smolvm_keeps_it() {
    let f = fake();
    assert_eq!(f.smolvm.state_db_path().expect("path"), f.data().join("smolvm/server/smolvm.db"));
}

/// smolvm up to 1.7.7 dropped the egress flags on `create --from`; 1.8.0
/// fixed it. The stored record is how a caller finds out.
#[test]
fn allow_cidr_with_from_is_dropped_before_1_8_0() {
    for (version, kept) in [("1.7.7", false), ("1.8.0", true), ("1.9.3", true)] {
        let f = fake_with(&[("FAKE_SMOLVM_VERSION", version)]);
        let pack = f
            .smolvm
            .pack_create(&PackOpts {
                image: "alpine".into(),
                output: f.dir.path().join("agent"),
                cpus: None,
                mem_mib: None,
            })
            .expect("pack");
        let from = Source::From(pack.sidecar.clone());
        let opts = CreateOpts { allow_cidrs: vec!["10.1.2.3/32".into()], ..CreateOpts::new("b", from) };
        f.smolvm.machine_create(&opts).expect("create");
        let r = record(&f, "b");
        assert_eq!(r.source_smolmachine.as_ref(), Some(&pack.sidecar));
        let expect = kept.then(|| vec!["10.1.2.3/32".to_owned()]);
        assert_eq!(r.allowed_cidrs, expect, "{version}");
        let honoured = f.smolvm.version().expect("version") >= bot_bottle_smolvm::ALLOW_CIDR_WITH_FROM;
        assert_eq!(honoured, kept, "{version}");
    }
}

#[test]
fn tsi_with_a_policy_is_refused_by_smolvm_too() {
    // The wrapper refuses it before spawning; the fake, as smolvm, refuses it
    // at create time.
    let f = fake();
    let out = std::process::Command::new(super::FAKE)
        .env("SMOLVM_DATA_DIR", f.dir.path())
        .args(["machine", "create", "--name", "b", "--net-backend", "tsi", "--allow-cidr", "1.1.1.1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Error: egress policy"));
    let opts = CreateOpts {
        net_backend: Some(NetBackend::Tsi),
        allow_cidrs: vec!["1.1.1.1".into()],
        ..CreateOpts::new("b", Source::Bare)
    };
    assert!(matches!(f.smolvm.machine_create(&opts), Err(SmolvmError::BadInput { .. })));
    assert_eq!(f.calls().len(), 1, "the wrapper refused before spawning: {:?}", f.calls());
}

#[test]
fn pack_create_writes_the_stub_and_its_sidecar() {
    let f = fake();
    let output = f.dir.path().join("agent");
    let opts = PackOpts { image: "alpine:3.20".into(), output: output.clone(), cpus: Some(2), mem_mib: Some(512) };
    let got = f.smolvm.pack_create(&opts).expect("pack");
    let sidecar = f.dir.path().join("agent.smolmachine");
    assert_eq!(got, PackOutput { stub: output.clone(), sidecar: sidecar.clone() });
    assert!(output.is_file() && sidecar.is_file());
}
