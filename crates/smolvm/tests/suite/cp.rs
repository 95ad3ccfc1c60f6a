//! cp: one file in and out of a running machine.

use std::os::unix::fs::PermissionsExt;

use bot_bottle_smolvm::{CpOpts, CreateOpts, ExecOpts, SmolvmError, Source};

use super::fake;

#[test]
fn round_trip() {
    let f = fake();
    f.running("b");
    let host = f.dir.path().join("ca.pem");
    std::fs::write(&host, b"-----BEGIN CERTIFICATE-----\n").expect("write");
    let opts = CpOpts { mode: Some(0o600), ..CpOpts::default() };
    f.smolvm.machine_cp_in("b", &host, "/srv/ca/bottle.crt", &opts).expect("cp in");
    let in_guest = f.guest("b").join("srv/ca/bottle.crt");
    let mode = std::fs::metadata(&in_guest).expect("copied").permissions().mode();
    assert_eq!(mode & 0o7777, 0o600);

    // The guest's commands see it.
    let cat = ExecOpts::new("b", ["sh", "-c", r#"cat "$FAKE_SMOLVM_GUEST/srv/ca/bottle.crt""#]);
    assert_eq!(f.smolvm.machine_exec(&cat).expect("exec").stdout, b"-----BEGIN CERTIFICATE-----\n");

    let back = f.dir.path().join("back.pem");
    f.smolvm.machine_cp_out("b", "/srv/ca/bottle.crt", &back).expect("cp out");
    assert_eq!(std::fs::read(&back).expect("read"), b"-----BEGIN CERTIFICATE-----\n");
}

#[test]
fn files_only_and_the_machine_must_run() {
    let f = fake();
    f.running("b");
    let dir = f.dir.path().join("d");
    std::fs::create_dir(&dir).expect("mkdir");
    let got = f.smolvm.machine_cp_in("b", &dir, "/d", &CpOpts::default());
    match got {
        Err(SmolvmError::Failed { status: 1, stderr, .. }) => assert!(stderr.contains("is a directory"), "{stderr}"),
        other => panic!("{other:?}"),
    }
    let missing = f.smolvm.machine_cp_out("b", "/no/such/file", &f.dir.path().join("x"));
    assert!(matches!(missing, Err(SmolvmError::Failed { status: 1, .. })), "{missing:?}");

    f.smolvm.machine_create(&CreateOpts::new("stopped", Source::Bare)).expect("create");
    let file = f.dir.path().join("f");
    std::fs::write(&file, b"x").expect("write");
    match f.smolvm.machine_cp_in("stopped", &file, "/f", &CpOpts::default()) {
        Err(SmolvmError::Failed { stderr, .. }) => assert!(stderr.contains("is not running"), "{stderr}"),
        other => panic!("{other:?}"),
    }
}
