//! exec: the guest's status and output, smolvm's own failures, the retry on
//! 137, timeouts, and large output.

use std::time::Duration;

use bot_bottle_smolvm::{CreateOpts, ExecOpts, ExecOutput, SmolvmError, Source};

use super::{fake, fake_with};

fn sh(name: &str, script: &str) -> ExecOpts {
    ExecOpts::new(name, ["sh", "-c", script])
}

fn exec_calls(f: &super::Fake) -> usize {
    f.subcommands().iter().filter(|c| *c == "machine exec").count()
}

#[test]
fn the_guest_status_and_output_are_returned() {
    let f = fake();
    f.running("b");
    let out = f.smolvm.machine_exec(&sh("b", "echo out; echo err >&2; exit 3")).expect("exec");
    assert_eq!(out, ExecOutput { status: 3, stdout: b"out\n".to_vec(), stderr: b"err\n".to_vec() });
    assert!(!out.success());
    // Exit 2 from the guest is not a usage error.
    assert_eq!(f.smolvm.machine_exec(&sh("b", "exit 2")).expect("exec").status, 2);
}

#[test]
fn a_guest_that_prints_error_and_exits_1_is_the_guests_failure() {
    let f = fake();
    f.running("b");
    let out = f.smolvm.machine_exec(&sh("b", "echo 'Error: boom' >&2; exit 1")).expect("exec");
    assert_eq!((out.status, out.stderr.as_slice()), (1, b"Error: boom\n".as_slice()));
    // The wrapper asked smolvm whether the machine runs: that decided it.
    assert_eq!(f.subcommands().last().map(String::as_str), Some("machine status"));
}

#[test]
fn exec_on_a_stopped_machine_is_smolvms_failure() {
    let f = fake();
    f.smolvm.machine_create(&CreateOpts::new("b", Source::Bare)).expect("create");
    match f.smolvm.machine_exec(&sh("b", "true")) {
        Err(SmolvmError::Failed { status: 1, stderr, .. }) => assert_eq!(
            stderr,
            "Error: agent operation failed: connect: machine 'b' is not running. \
             Use 'smolvm machine start --name b' first."
        ),
        other => panic!("{other:?}"),
    }
    assert!(!f.subcommands().contains(&"machine start".to_owned()), "exec never starts a machine");
    assert!(matches!(f.smolvm.machine_exec(&sh("nosuch", "true")), Err(SmolvmError::Failed { status: 1, .. })));
    let mut sink = Vec::new();
    let got = f.smolvm.machine_exec_streaming(&sh("b", "true"), &mut Vec::new(), &mut sink);
    assert!(matches!(got, Err(SmolvmError::Failed { status: 1, .. })), "{got:?}");
    assert!(matches!(f.smolvm.machine_exec_attached(&sh("b", "true")), Err(SmolvmError::NotRunning { .. })));
}

#[test]
fn a_flag_this_smolvm_does_not_know_is_a_usage_error_not_the_guests_2() {
    let f = fake_with(&[("FAKE_SMOLVM_UNKNOWN_FLAGS", "--stream")]);
    f.running("b");
    let opts = ExecOpts { stream: true, ..sh("b", "true") };
    assert!(matches!(f.smolvm.machine_exec(&opts), Err(SmolvmError::Usage { .. })));
}

#[test]
fn env_and_workdir() {
    let f = fake();
    let opts = CreateOpts {
        env: vec![("A".into(), "machine".into()), ("B".into(), "machine".into())],
        workdir: Some("/workspace".into()),
        ..CreateOpts::new("b", Source::Bare)
    };
    f.smolvm.machine_create(&opts).expect("create");
    f.smolvm.machine_start("b").expect("start");
    std::fs::create_dir_all(f.guest("b").join("workspace/sub")).expect("mkdir");
    let script = r#"echo "$A $B ${HOME:-nohome}"; pwd"#;
    let out = f.smolvm.machine_exec(&ExecOpts { env: vec![("B".into(), "exec".into())], ..sh("b", script) });
    let out = out.expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "machine exec nohome\n/workspace\n", "the guest's own view");
    let out = f.smolvm.machine_exec(&ExecOpts { workdir: Some("/workspace/sub".into()), ..sh("b", "pwd") });
    assert_eq!(String::from_utf8_lossy(&out.expect("exec").stdout), "/workspace/sub\n");
    // stdin is not forwarded without -i.
    assert_eq!(f.smolvm.machine_exec(&ExecOpts::new("b", ["cat"])).expect("exec").stdout, b"");
}

#[test]
fn a_137_is_retried_once() {
    let f = fake_with(&[("FAKE_SMOLVM_EXEC_137_ONCE", "1")]);
    f.running("b");
    let out = f.smolvm.machine_exec(&sh("b", "echo ran")).expect("exec");
    assert_eq!((out.status, out.stdout.as_slice()), (0, b"ran\n".as_slice()));
    assert_eq!(exec_calls(&f), 2);
}

#[test]
fn a_second_137_is_returned() {
    let f = fake();
    f.running("b");
    let out = f.smolvm.machine_exec(&sh("b", "kill -9 $$")).expect("exec");
    assert_eq!(out.status, 137);
    assert_eq!(exec_calls(&f), 2, "one retry, no more");
}

#[test]
fn other_statuses_are_not_retried() {
    let f = fake();
    f.running("b");
    assert_eq!(f.smolvm.machine_exec(&sh("b", "exit 1")).expect("exec").status, 1);
    assert_eq!(f.smolvm.machine_exec(&sh("b", "kill -15 $$")).expect("exec").status, 143);
    assert_eq!(exec_calls(&f), 2);
}

#[test]
fn streaming_retries_a_137_only_before_any_output() {
    let f = fake_with(&[("FAKE_SMOLVM_EXEC_137_ONCE", "1")]);
    f.running("b");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = f.smolvm.machine_exec_streaming(&sh("b", "echo ran"), &mut out, &mut err).expect("exec");
    assert_eq!((status, out.as_slice()), (0, b"ran\n".as_slice()));
    assert_eq!(exec_calls(&f), 2);

    // Output was passed on: a retry would repeat it.
    let mut out = Vec::new();
    let status = f.smolvm.machine_exec_streaming(&sh("b", "echo partial; kill -9 $$"), &mut out, &mut err);
    assert_eq!((status.expect("exec"), out.as_slice()), (137, b"partial\n".as_slice()));
    assert_eq!(exec_calls(&f), 3);
}

#[test]
fn timeout() {
    let f = fake();
    f.running("b");
    let opts = ExecOpts { timeout: Some(Duration::from_millis(300)), ..sh("b", "sleep 30 & sleep 30") };
    let started = std::time::Instant::now();
    assert_eq!(f.smolvm.machine_exec(&opts).expect("exec").status, 124);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// 12 MiB: more than smolvm's 11 MiB cap on buffered output.
const BIG: usize = 12 * 1024 * 1024;
const CAP: usize = 11 * 1024 * 1024;

#[test]
fn large_output_streams_whole_and_is_cut_when_buffered() {
    let f = fake();
    f.running("b");
    let script = format!("head -c {BIG} /dev/zero; echo done >&2");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = f.smolvm.machine_exec_streaming(&sh("b", &script), &mut out, &mut err).expect("exec");
    assert_eq!((status, out.len(), err.as_slice()), (0, BIG, b"done\n".as_slice()));

    let buffered = f.smolvm.machine_exec(&sh("b", &script)).expect("exec");
    assert_eq!(buffered.stdout.len(), CAP, "smolvm cuts buffered output at 11 MiB");
    let whole = f.smolvm.machine_exec(&ExecOpts { stream: true, ..sh("b", &script) }).expect("exec");
    assert_eq!(whole.stdout.len(), BIG);
}

#[test]
fn a_failing_writer_is_an_error_after_the_command_ends() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let f = fake();
    f.running("b");
    let got = f.smolvm.machine_exec_streaming(&sh("b", "head -c 1000000 /dev/zero"), &mut Broken, &mut Vec::new());
    assert!(matches!(got, Err(SmolvmError::Output { .. })), "{got:?}");
}

#[test]
fn attached_returns_the_guests_status() {
    let f = fake();
    f.running("b");
    assert_eq!(f.smolvm.machine_exec_attached(&sh("b", "exit 5")).expect("exec"), 5);
    let last = f.calls().pop().expect("calls");
    assert!(last.contains(&"--stream".to_owned()), "{last:?}");
}
