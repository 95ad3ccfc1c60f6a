//! The pool against real lease files, real locks and real processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bot_bottle_loopback::{LeaseInfo, LeaseState, LoopbackError, Owner, Pool, leases, release, release_owner};
use proptest::prelude::*;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn me(slug: &str) -> Owner {
    Owner::current(slug).expect("owner")
}

/// A process that runs until killed, to own leases that then go stale.
fn sleeper() -> Child {
    Command::new("sleep").arg("600").spawn().expect("spawn sleep")
}

fn kill(mut child: Child) {
    child.kill().expect("kill");
    child.wait().expect("wait");
}

fn state(dir: &Path) -> Vec<(Ipv4Addr, &'static str)> {
    leases(dir)
        .expect("leases")
        .into_iter()
        .map(|LeaseInfo { addr, state }| {
            let s = match state {
                LeaseState::Live { .. } => "live",
                LeaseState::Stale { .. } => "stale",
                LeaseState::Unreadable { .. } => "unreadable",
            };
            (addr, s)
        })
        .collect()
}

#[test]
fn the_lowest_free_address_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("state");
    let pool = Pool::default();
    let a = pool.allocate(&dir, &me("a"), &[]).expect("a");
    let b = pool.allocate(&dir, &me("b"), &[]).expect("b");
    let c = pool.allocate(&dir, &me("c"), &[]).expect("c");
    assert_eq!([a.addr(), b.addr(), c.addr()], [ip(16), ip(17), ip(18)]);
    b.release().expect("release");
    assert_eq!(pool.allocate(&dir, &me("d"), &[]).expect("d").addr(), ip(17));
    assert_eq!(pool.allocate(&dir, &me("e"), &[]).expect("e").addr(), ip(19));
    assert_eq!(state(&dir), [(ip(16), "live"), (ip(17), "live"), (ip(18), "live"), (ip(19), "live")]);
}

#[test]
fn addresses_the_caller_knows_are_busy_are_skipped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = Pool::default();
    let busy = [ip(16), ip(18)];
    assert_eq!(pool.allocate(tmp.path(), &me("a"), &busy).expect("a").addr(), ip(17));
    assert_eq!(pool.allocate(tmp.path(), &me("b"), &busy).expect("b").addr(), ip(19));
}

#[test]
fn a_dead_owners_lease_is_reclaimed_and_a_live_ones_is_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = Pool::default();
    let (gone, running) = (sleeper(), sleeper());
    let old = pool.allocate(tmp.path(), &Owner::new("gone", gone.id()).expect("owner"), &[]).expect("gone");
    let kept = pool.allocate(tmp.path(), &Owner::new("running", running.id()).expect("owner"), &[]).expect("running");
    assert_eq!((old.addr(), kept.addr()), (ip(16), ip(17)));
    kill(gone);
    assert_eq!(state(tmp.path()), [(ip(16), "stale"), (ip(17), "live")]);

    let new = pool.allocate(tmp.path(), &me("new"), &[]).expect("new");
    assert_eq!(new.addr(), ip(16));
    // The old handle must not release the new owner's lease.
    old.release().expect("release");
    assert_eq!(state(tmp.path()), [(ip(16), "live"), (ip(17), "live")]);
    kill(running);
}

#[test]
fn a_reused_pid_does_not_keep_a_lease_alive() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lease = tmp.path().join("leases/127.0.0.16");
    std::fs::create_dir_all(lease.parent().expect("parent")).expect("mkdir");
    // Our pid, but a start time that is not ours: another process had it.
    let json = format!(r#"{{"slug":"old","pid":{},"start":"0:1","created":0}}"#, std::process::id());
    std::fs::write(&lease, json).expect("write");
    assert_eq!(state(tmp.path()), [(ip(16), "stale")]);
    assert_eq!(Pool::default().allocate(tmp.path(), &me("new"), &[]).expect("new").addr(), ip(16));
}

#[test]
fn an_unreadable_lease_keeps_its_address_taken() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(tmp.path().join("leases")).expect("mkdir");
    std::fs::write(tmp.path().join("leases/127.0.0.16"), "garbage").expect("write");
    assert_eq!(Pool::default().allocate(tmp.path(), &me("a"), &[]).expect("a").addr(), ip(17));
    assert_eq!(state(tmp.path()), [(ip(16), "unreadable"), (ip(17), "live")]);
}

#[test]
fn an_exhausted_pool_says_who_holds_what_and_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = Pool::new(ip(16), 3).expect("pool");
    let a = pool.allocate(tmp.path(), &me("a"), &[]).expect("a");
    std::fs::write(tmp.path().join("leases/127.0.0.18"), "garbage").expect("write");
    let err = pool.allocate(tmp.path(), &me("b"), &[ip(17)]).expect_err("exhausted");
    assert!(matches!(&err, LoopbackError::Exhausted { pool: p, held } if *p == pool && held.len() == 3), "{err:?}");
    let pid = std::process::id();
    assert_eq!(
        err.to_string(),
        format!(
            "all 3 addresses of the loopback pool 127.0.0.16-127.0.0.18 are in use (127.0.0.16 (a, pid {pid}), \
             127.0.0.17 (a running bottle), 127.0.0.18 (unreadable lease: expected value at line 1 column 1)); \
             run `bot-bottle cleanup` to release the addresses of bottles that are gone, or configure a larger pool"
        )
    );
    a.release().expect("release");
    assert_eq!(pool.allocate(tmp.path(), &me("b"), &[]).expect("b").addr(), ip(16));
}

#[test]
fn the_pool_size_and_start_are_configurable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = Pool::new(Ipv4Addr::new(127, 0, 1, 254), 3).expect("pool");
    assert_eq!(pool.to_string(), "127.0.1.254-127.0.2.0");
    let got: Vec<_> = (0..3).map(|i| pool.allocate(tmp.path(), &me(&format!("b{i}")), &[]).expect("lease")).collect();
    let addrs: Vec<_> = got.iter().map(|l| l.addr()).collect();
    assert_eq!(addrs, [Ipv4Addr::new(127, 0, 1, 254), Ipv4Addr::new(127, 0, 1, 255), Ipv4Addr::new(127, 0, 2, 0)]);
    assert!(matches!(pool.allocate(tmp.path(), &me("x"), &[]), Err(LoopbackError::Exhausted { .. })));
    assert_eq!(Pool::default(), Pool::new(ip(16), 16).expect("default"));
    assert_eq!(Pool::default().addrs().collect::<Vec<_>>(), (16..=31).map(ip).collect::<Vec<_>>());
}

#[test]
fn pools_outside_the_safe_part_of_loopback_are_refused() {
    let bad = [
        (Ipv4Addr::new(10, 0, 0, 16), 4, "the pool must lie in 127.0.0.0/8"),
        (Ipv4Addr::new(127, 0, 0, 0), 4, "the pool must not include 127.0.0.0 or 127.0.0.1"),
        (Ipv4Addr::new(127, 0, 0, 1), 1, "the pool must not include 127.0.0.0 or 127.0.0.1"),
        (Ipv4Addr::new(127, 255, 255, 250), 6, "the pool must end before 127.255.255.255"),
        (Ipv4Addr::new(127, 255, 255, 254), 255, "the pool must end before 127.255.255.255"),
        (ip(16), 0, "the pool is empty"),
    ];
    for (first, size, why) in bad {
        match Pool::new(first, size) {
            Err(LoopbackError::BadPool { reason, .. }) => assert_eq!(reason, why, "{first}/{size}"),
            other => panic!("{first}/{size}: {other:?}"),
        }
    }
    for (first, size) in [(Ipv4Addr::new(127, 255, 255, 250), 5), (ip(2), 255), (ip(16), 1)] {
        assert!(Pool::new(first, size).is_ok(), "{first}/{size}");
    }
}

#[test]
fn releasing_is_idempotent_and_never_creates_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = Pool::default();
    let a = pool.allocate(tmp.path(), &me("a"), &[]).expect("a");
    a.release().expect("first");
    a.release().expect("second");
    assert!(!release(tmp.path(), ip(16)).expect("release"));
    let b = pool.allocate(tmp.path(), &me("b"), &[]).expect("b");
    assert!(release(tmp.path(), b.addr()).expect("release"));
    assert!(!release(tmp.path(), b.addr()).expect("again"));
    b.release().expect("after a forced release");

    let absent = tmp.path().join("absent");
    assert!(!release(&absent, ip(16)).expect("release"));
    assert_eq!(release_owner(&absent, "a").expect("release_owner"), Vec::<Ipv4Addr>::new());
    assert_eq!(leases(&absent).expect("leases"), Vec::<LeaseInfo>::new());
    assert!(!absent.exists());
}

#[test]
fn cleanup_releases_every_lease_of_a_bottle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = Pool::default();
    let gone = sleeper();
    let _a = pool.allocate(tmp.path(), &Owner::new("demo", gone.id()).expect("owner"), &[]).expect("a");
    let _b = pool.allocate(tmp.path(), &me("other"), &[]).expect("b");
    let _c = pool.allocate(tmp.path(), &me("demo"), &[]).expect("c");
    kill(gone);
    assert_eq!(release_owner(tmp.path(), "demo").expect("release_owner"), [ip(16), ip(18)]);
    assert_eq!(state(tmp.path()), [(ip(17), "live")]);
}

#[test]
fn leases_are_private_json_files_naming_their_owner() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a/b");
    let lease = Pool::default().allocate(&dir, &me("demo-1a2b3c"), &[]).expect("lease");
    assert_eq!(lease.owner(), &me("demo-1a2b3c"));
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("leases")), 0o700);
    let file = dir.join("leases/127.0.0.16");
    assert_eq!(mode(&file), 0o600);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let keys: Vec<_> = v.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, ["slug", "pid", "start", "created"]);
    assert_eq!((v["slug"].as_str(), v["pid"].as_u64()), (Some("demo-1a2b3c"), Some(u64::from(std::process::id()))));
    let names: Vec<_> = std::fs::read_dir(dir.join("leases"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(names, ["127.0.0.16"], "no temporary file is left behind");
}

#[test]
fn an_owner_that_is_not_running_cannot_lease() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new("true").spawn().expect("spawn");
    child.wait().expect("wait");
    let err = Pool::default().allocate(tmp.path(), &Owner::new("x", child.id()).expect("owner"), &[]);
    assert!(matches!(err, Err(LoopbackError::OwnerNotRunning { .. })), "{err:?}");
}

const CHILD_DIR: &str = "BOT_BOTTLE_LOOPBACK_TEST_CHILD_DIR";

/// Not a test on its own: the body of each process in
/// `sixteen_processes_never_share_an_address`, which runs this test binary
/// with `CHILD_DIR` set. It waits for a line on stdin (so that all processes
/// allocate at once), allocates for itself, reports the address on stdout,
/// and holds the lease until stdin closes.
#[test]
#[expect(clippy::print_stdout, reason = "the child process reports its address to the parent on stdout")]
fn child_allocates_and_holds() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("go");
    let owner = Owner::current(&format!("child-{}", std::process::id())).expect("owner");
    match Pool::default().allocate(Path::new(&dir), &owner, &[]) {
        Ok(lease) => println!("<<lease {}>>", lease.addr()),
        Err(e) => println!("<<error {e}>>"),
    }
    let _ = std::io::stdin().read_to_string(&mut go);
}

#[test]
fn sixteen_processes_never_share_an_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut children: Vec<Child> = (0..16)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "suite::pool::child_allocates_and_holds", "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR, tmp.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in &mut children {
        c.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("go");
    }
    let mut got = Vec::new();
    for c in &mut children {
        let out = BufReader::new(c.stdout.as_mut().expect("stdout"));
        let report = out
            .lines()
            .map(|l| l.expect("line"))
            .find_map(|l| Some(l[l.find("<<")? + 2..l.rfind(">>")?].to_owned()))
            .expect("a report");
        let addr: Ipv4Addr = report.strip_prefix("lease ").unwrap_or_else(|| panic!("{report}")).parse().expect("ip");
        got.push((addr, c.id()));
    }
    // All sixteen hold their leases now: each address once, in the name of
    // the process that allocated it.
    let mut addrs: Vec<_> = got.iter().map(|(a, _)| *a).collect();
    addrs.sort();
    assert_eq!(addrs, Pool::default().addrs().collect::<Vec<_>>());
    let mut on_disk: Vec<_> = leases(tmp.path())
        .expect("leases")
        .into_iter()
        .map(|l| match l.state {
            LeaseState::Live { pid, .. } => (l.addr, pid),
            other => panic!("{}: {other:?}", l.addr),
        })
        .collect();
    got.sort();
    on_disk.sort();
    assert_eq!(on_disk, got);

    for mut c in children {
        drop(c.stdin.take());
        assert!(c.wait().expect("wait").success());
    }
    assert!(state(tmp.path()).iter().all(|(_, s)| *s == "stale"));
}

#[derive(Clone, Debug)]
enum Op {
    Allocate,
    /// Releases the n-th held lease (modulo how many are held).
    Release(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Any sequence of allocations and releases hands out what a model of
    /// "lowest free address" predicts, and refuses exactly when it is full.
    #[test]
    fn allocation_follows_the_lowest_free_model(
        ops in proptest::collection::vec(prop_oneof![3 => Just(Op::Allocate), 2 => any::<usize>().prop_map(Op::Release)], 1..24),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pool = Pool::new(ip(16), 4).expect("pool");
        let mut held = Vec::new();
        for op in ops {
            match op {
                Op::Allocate => {
                    let want = pool.addrs().find(|a| !held.iter().any(|l: &bot_bottle_loopback::Lease| l.addr() == *a));
                    match (pool.allocate(tmp.path(), &me("p"), &[]), want) {
                        (Ok(lease), Some(want)) => { prop_assert_eq!(lease.addr(), want); held.push(lease); }
                        (Err(LoopbackError::Exhausted { .. }), None) => {}
                        (got, want) => prop_assert!(false, "got {:?}, want {:?}", got, want),
                    }
                }
                Op::Release(n) if !held.is_empty() => {
                    let lease = held.remove(n % held.len());
                    lease.release().expect("release");
                }
                Op::Release(_) => {}
            }
            let mut on_disk: Vec<_> = leases(tmp.path()).expect("leases").into_iter().map(|l| l.addr).collect();
            let mut model: Vec<_> = held.iter().map(|l| l.addr()).collect();
            on_disk.sort();
            model.sort();
            prop_assert_eq!(on_disk, model);
        }
    }
}
