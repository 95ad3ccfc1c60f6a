//! `bot-bottle start --backend smolmachines`, end to end against
//! fake-smolvm: a model of the smolvm CLI and its state DB (see
//! crates/smolvm/src/fake), whose guest commands run under bubblewrap.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::native::panic_or_skip;
use super::start_native::upstream;

/// fake-smolvm, built beside bot-bottle by `cargo test --workspace`.
fn fake() -> Result<PathBuf, String> {
    let exe = Path::new(env!("CARGO_BIN_EXE_bot-bottle"));
    let fake = exe.with_file_name("fake-smolvm");
    if !fake.exists() {
        return Err(format!("{} is not built (run `cargo test --workspace`)", fake.display()));
    }
    if Command::new("bwrap").arg("--version").output().is_err() {
        return Err("bwrap is not installed (apt-get install bubblewrap)".into());
    }
    Ok(fake)
}

struct Setup {
    dir: tempfile::TempDir,
    fake: PathBuf,
    /// The smolvm release the fake plays.
    version: &'static str,
}

/// A release of the seeds' era (TSI), below 1.1.3.
const TSI_ERA: &str = "1.1.2";

impl Setup {
    /// A bottle run by fake-smolvm playing the seeds' release.
    fn new(command: &str, port: u16) -> Option<Setup> {
        Setup::at(TSI_ERA, command, port)
    }

    fn at(version: &'static str, command: &str, port: u16) -> Option<Setup> {
        let fake = match fake() {
            Ok(f) => f,
            Err(why) => {
                panic_or_skip(&why);
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join("project/.bot-bottle");
        std::fs::create_dir_all(m.join("agents")).expect("mkdir");
        std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
        std::fs::write(
            m.join("bottles/vm.yaml"),
            format!(
                "backend: smolmachines\negress:\n  routes:\n    - host: \"127.0.0.1:{port}\"\n      methods: [GET]\n"
            ),
        )
        .expect("write");
        std::fs::write(
            m.join("agents/a.md"),
            format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {command:?}]\nbottle: vm\n---\n"),
        )
        .expect("write");
        std::fs::write(dir.path().join("project/notes.txt"), "the user's file\n").expect("write");
        std::fs::write(dir.path().join("kvm"), b"").expect("kvm stand-in");
        Some(Setup { dir, fake, version })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bot-bottle"));
        c.args(args)
            .current_dir(self.path("project"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("SMOLVM_DATA_DIR", self.path("smolvm"))
            .env("BOT_BOTTLE_SMOLVM", &self.fake)
            .env("FAKE_SMOLVM_VERSION", self.version)
            // The fake needs no KVM; CI machines may have none.
            .env("BOT_BOTTLE_KVM_DEVICE", self.path("kvm"))
            .stdin(Stdio::null());
        c
    }

    /// Every smolvm call, in order, as argv words.
    fn calls(&self) -> Vec<Vec<String>> {
        let log = self.path("smolvm/.local/share/smolvm/fake-calls.jsonl");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }

    fn called(&self, sub: &str) -> usize {
        self.calls().iter().filter(|c| c.get(1).is_some_and(|s| s == sub)).count()
    }

    /// Machines smolvm still has.
    fn machines(&self) -> Vec<String> {
        let out = Command::new(&self.fake)
            .args(["machine", "ls", "--json"])
            .env("SMOLVM_DATA_DIR", self.path("smolvm"))
            .output()
            .expect("ls");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v.as_array().into_iter().flatten().filter_map(|m| m["name"].as_str().map(str::to_owned)).collect()
    }

    fn leases(&self) -> usize {
        std::fs::read_dir(self.path("state/bot-bottle/loopback/leases")).map_or(0, |d| d.count())
    }
}

#[test]
fn a_vm_bottle_is_created_confined_provisioned_run_and_torn_down() {
    let (port, seen) = upstream();
    let script = format!(
        "head -1 /run/bot-bottle/ca.pem; echo proxy=$HTTPS_PROXY; cat /workspace/notes.txt; \
         curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{port}/ok; \
         curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://denied.example/; \
         echo changed >> /workspace/notes.txt; exit 3"
    );
    let Some(s) = Setup::new(&script, port) else { return };
    let out = s.command(&["start", "a", "--quiet"]).output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let addr = stdout.lines().find_map(|l| l.strip_prefix("proxy=http://")).and_then(|a| a.strip_suffix(":3128"));
    let addr = addr.unwrap_or_else(|| panic!("the proxy is on the bottle's own address: {stdout}"));
    assert!(addr.starts_with("127.0.0.") && addr != "127.0.0.1", "{addr}");
    assert!(stdout.starts_with("-----BEGIN CERTIFICATE-----\n"), "{stdout}");
    assert!(stdout.contains("the user's file\n200\n403\n"), "{stdout}");
    assert_eq!(*seen.lock().expect("lock"), vec!["GET /ok HTTP/1.1".to_owned()]);

    // Created with its confinement, which was checked before start.
    let calls = s.calls();
    let create = calls.iter().find(|c| c.get(1).is_some_and(|w| w == "create")).expect("create");
    let words = create.join(" ");
    for want in [format!("--allow-cidr {addr}/32"), format!("--dns {addr}"), "--label bot-bottle=a-".into()] {
        assert!(words.contains(&want), "{want} in {words}");
    }
    let order: Vec<&str> = calls.iter().filter_map(|c| c.get(1).map(String::as_str)).collect();
    let pos = |w: &str| order.iter().position(|x| *x == w).unwrap_or_else(|| panic!("{w} in {order:?}"));
    assert!(pos("create") < pos("start") && pos("start") < pos("exec") && pos("exec") < pos("delete"), "{order:?}");
    assert!(s.called("cp") >= 3, "provisioning copied files in: {order:?}");

    // Nothing left: no machine, no address; the workspace copy kept.
    assert!(s.machines().is_empty(), "{:?}", s.machines());
    assert_eq!(s.leases(), 0);
    assert_eq!(std::fs::read_to_string(s.path("project/notes.txt")).expect("read"), "the user's file\n");
    let kept: Vec<PathBuf> = std::fs::read_dir(s.path("state/bot-bottle/bottles"))
        .expect("bottles")
        .flatten()
        .map(|e| e.path().join("workspace/notes.txt"))
        .collect();
    assert_eq!(std::fs::read_to_string(&kept[0]).expect("kept"), "the user's file\nchanged\n");
}

#[test]
fn a_launch_whose_allowlist_cannot_be_confirmed_refuses_before_start() {
    let Some(s) = Setup::new("echo must-not-run", 1) else { return };
    // smolvm keeps its state elsewhere than bot-bottle looks (as `smolvm
    // serve` does as root): the allowlist cannot be read back.
    let wrapper = s.path("smolvm-elsewhere");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nSMOLVM_DATA_DIR='{}' exec '{}' \"$@\"\n", s.path("elsewhere").display(), s.fake.display()),
    )
    .expect("write");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let out = s.command(&["start", "a", "--quiet"]).env("BOT_BOTTLE_SMOLVM", &wrapper).output().expect("start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("refusing to launch") && err.contains("SMOLVM_DATA_DIR"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("must-not-run"));
    let log = std::fs::read_to_string(s.path("elsewhere/.local/share/smolvm/fake-calls.jsonl")).expect("calls");
    assert!(log.contains("\"create\"") && !log.contains("\"start\""), "never started:\n{log}");
    assert!(log.contains("\"delete\""), "the half-made machine is deleted:\n{log}");
    assert_eq!(s.leases(), 0, "the address is released");
}

#[test]
fn a_patch_that_does_not_take_refuses_before_start() {
    let Some(s) = Setup::new("echo must-not-run", 1) else { return };
    // A smolvm that drops the policy at create and keeps it dropped.
    let init = Command::new(&s.fake)
        .args(["machine", "ls", "--json"])
        .env("SMOLVM_DATA_DIR", s.path("smolvm"))
        .output()
        .expect("init db");
    assert!(init.status.success());
    let db = s.path("smolvm/.local/share/smolvm/server/smolvm.db");
    let sql = "CREATE TRIGGER drop_policy AFTER INSERT ON vms BEGIN \
                 UPDATE vms SET data = CAST(json_set(CAST(new.data AS TEXT), '$.allowed_cidrs', json('null')) AS BLOB) WHERE name = new.name; END; \
               CREATE TRIGGER keep_dropped AFTER UPDATE ON vms \
                 WHEN json_extract(CAST(new.data AS TEXT), '$.allowed_cidrs') IS NOT NULL \
                 BEGIN UPDATE vms SET data = old.data WHERE name = new.name; END;";
    let py = format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.executescript({sql:?}); c.commit()",
        db.display().to_string()
    );
    assert!(Command::new("python3").args(["-c", &py]).status().expect("python3").success());
    let out = s.command(&["start", "a", "--quiet"]).output().expect("start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("refusing to launch") && err.contains("127.0.0."), "{err}");
    assert_eq!(s.called("start"), 0, "never started: {:?}", s.calls());
    assert!(s.machines().is_empty() && s.leases() == 0);
}

#[test]
fn sigkill_then_cleanup_leaves_no_machine_address_or_sidecar() {
    let Some(s) = Setup::new("sleep 30", 1) else { return };
    for phase in ["vm-created", "vm-started"] {
        let mut c = s.command(&["start", "a", "--quiet"]);
        c.env("BOT_BOTTLE_PAUSE_AT", phase).stderr(Stdio::piped());
        let mut child = c.spawn().expect("start");
        let mut err = child.stderr.take().expect("stderr");
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.contains(&format!("paused at {phase}")) && Instant::now() < deadline {
            let mut b = [0u8; 256];
            let n = std::io::Read::read(&mut err, &mut b).unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&b[..n]));
        }
        assert!(seen.contains(&format!("paused at {phase}")), "{seen}");
        let addr = std::fs::read_dir(s.path("state/bot-bottle/loopback/leases"))
            .expect("leases")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| !n.starts_with('.'))
            .expect("a lease");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(s.machines().len(), 1, "{phase}: the launcher died holding a machine");
        let out = s.command(&["cleanup"]).output().expect("cleanup");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("deleted machine") && said.contains(&format!("released {addr}")), "{phase}: {said}");
        assert!(s.machines().is_empty(), "{phase}");
        assert_eq!(s.leases(), 0, "{phase}");
        assert!(std::net::TcpStream::connect((addr.as_str(), 3128)).is_err(), "{phase}: no sidecar listens");
    }
}

/// `unshare --net`: the fake gives a machine with no network a namespace of
/// its own (root only).
fn netns() -> bool {
    let ok = Command::new("unshare").args(["--net", "true"]).status().is_ok_and(|s| s.success());
    if !ok {
        panic_or_skip("`unshare --net` does not work here: fake-smolvm's no-network machines need root");
    }
    ok
}

#[test]
fn on_current_smolvm_the_vm_has_no_network_and_reaches_only_its_published_proxy() {
    if !netns() {
        return;
    }
    let (port, seen) = upstream();
    let script = format!(
        "echo proxy=$HTTPS_PROXY; cat /workspace/notes.txt; \
         curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{port}/ok; \
         curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://denied.example/; \
         curl -s -m 2 -o /dev/null -w 'direct=%{{http_code}}\\n' --noproxy '*' http://127.0.0.1:{port}/direct; \
         echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '); \
         getent hosts example.com || echo no-dns; exit 3"
    );
    let Some(s) = Setup::at("1.9.3", &script, port) else { return };
    let out = s.command(&["start", "a", "--quiet"]).output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("proxy=http://127.0.0.1:3128\nthe user's file\n200\n403\ndirect=000\nifaces=lo\nno-dns\n"),
        "{stdout}"
    );
    assert_eq!(*seen.lock().expect("lock"), vec!["GET /ok HTTP/1.1".to_owned()], "only the proxy reached it");

    // Created with no network and the sidecar sockets published.
    let calls = s.calls();
    let create = calls.iter().find(|c| c.get(1).is_some_and(|w| w == "create")).expect("create").join(" ");
    for unwanted in ["--net", "--allow-cidr", "--dns", "--allow-host", "--outbound-localhost-only"] {
        assert!(!create.split(' ').any(|w| w == unwanted), "{unwanted} in {create}");
    }
    for sock in ["proxy.sock:/run/bot-bottle/sidecars/proxy.sock", "gate.sock:/run/bot-bottle/sidecars/gate.sock"] {
        assert!(create.contains(&format!("/sockets/{sock}")), "{sock} in {create}");
    }
    let order: Vec<&str> = calls.iter().filter_map(|c| c.get(1).map(String::as_str)).collect();
    let pos = |w: &str| order.iter().position(|x| *x == w).unwrap_or_else(|| panic!("{w} in {order:?}"));
    assert!(pos("create") < pos("start") && pos("start") < pos("exec") && pos("exec") < pos("delete"), "{order:?}");

    // Nothing left: no machine, no guest process, no socket, no address.
    assert!(s.machines().is_empty(), "{:?}", s.machines());
    let guests = s.path("smolvm/.local/share/smolvm/fake-guests");
    let left: Vec<_> =
        std::fs::read_dir(&guests).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left in the fake's guests: {left:?}");
    assert_eq!(s.leases(), 0);
    for b in std::fs::read_dir(s.path("state/bot-bottle/bottles")).expect("bottles").flatten() {
        assert!(!b.path().join("sockets").exists(), "the sockets dir is removed");
    }
}

/// The agent's ids in the guest: the launcher's, or 1000 when it is root.
fn agent_ids() -> (u32, u32) {
    if nix::unistd::geteuid().is_root() {
        (1000, 1000)
    } else {
        (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
    }
}

#[test]
fn on_smolvm_with_exec_user_the_agent_is_a_user_who_owns_its_workspace_and_home_and_nothing_else() {
    if !netns() {
        return;
    }
    let (port, seen) = upstream();
    let script = format!(
        "echo uid=$(id -u) gid=$(id -g); echo home=$HOME owner=$(stat -c %u $HOME) mode=$(stat -c %a $HOME); \
         echo mine > /workspace/agent-wrote && echo workspace-written; \
         echo mine > $HOME/agent-wrote && echo home-written; \
         echo changed >> /workspace/notes.txt && echo copy-changed; \
         head -1 /run/bot-bottle/ca.pem; \
         for p in /etc/bot-bottle-x /bot-bottle-x /run/bot-bottle/bot-bottle-x /run/bot-bottle/ca.pem; do \
           (echo x >> $p) 2>/dev/null && echo wrote=$p || echo denied=$p; done; \
         curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{port}/ok; \
         curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://denied.example/; \
         echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '); exit 4"
    );
    let Some(s) = Setup::at("1.14.0", &script, port) else { return };
    let out = s.command(&["start", "a", "--quiet"]).output().expect("start");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    let (u, g) = agent_ids();
    assert_ne!(u, 0);
    let want = format!(
        "uid={u} gid={g}\nhome=/home/agent owner={u} mode=700\nworkspace-written\nhome-written\ncopy-changed\n\
         -----BEGIN CERTIFICATE-----\n\
         denied=/etc/bot-bottle-x\ndenied=/bot-bottle-x\ndenied=/run/bot-bottle/bot-bottle-x\n\
         denied=/run/bot-bottle/ca.pem\n200\n403\nifaces=lo\n"
    );
    assert!(stdout.contains(&want), "want:\n{want}\ngot:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("exec --user"), "no warning on a smolvm with --user: {stderr}");
    assert_eq!(*seen.lock().expect("lock"), vec!["GET /ok HTTP/1.1".to_owned()]);

    // The agent ran with `-u`; the forwarder (which brings `lo` up) as root.
    let calls = s.calls();
    let user = format!("{u}:{g}");
    let execs: Vec<&Vec<String>> = calls.iter().filter(|c| c.get(1).is_some_and(|w| w == "exec")).collect();
    let as_user = |c: &Vec<String>| c.windows(2).any(|w| w[0] == "-u" && w[1] == user);
    // Provisioning's checks and the agent: confined, as the agent's user.
    let confined: Vec<_> = execs.iter().filter(|c| c.iter().any(|w| w == "--exec")).collect();
    assert!(confined.len() >= 2, "{execs:?}");
    assert!(confined.iter().all(|c| as_user(c)), "{confined:?}");
    let agent = execs.last().expect("the agent's exec");
    assert!(agent.iter().any(|w| w == "--exec") && as_user(agent), "{agent:?}");
    let forwarder = execs.iter().find(|c| c.iter().any(|w| w == "-d")).expect("the forwarder's exec");
    assert!(!forwarder.iter().any(|w| w == "-u"), "{forwarder:?}");
    assert!(s.machines().is_empty(), "{:?}", s.machines());
}

#[test]
fn below_smolvm_1_14_the_agent_runs_as_root_without_capabilities_and_the_launch_says_so() {
    if !netns() {
        return;
    }
    let script = "echo uid=$(id -u) cap=$(grep CapEff /proc/self/status | cut -f2); \
                  echo x > /workspace/w && echo x > $HOME/h && echo wrote-workspace-and-home";
    let Some(s) = Setup::at("1.13.9", script, 1) else { return };
    let out = s.command(&["start", "a"]).output().expect("start");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("uid=0 cap=0000000000000000\nwrote-workspace-and-home\n"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("in the VM the agent runs as root, with no capabilities: smolvm 1.13.9 has no `exec --user`"),
        "{stderr}"
    );
    assert!(!s.calls().iter().any(|c| c.iter().any(|w| w == "-u")), "no -u below 1.14: {:?}", s.calls());
}

#[test]
fn a_smolvm_between_the_two_designs_is_refused_before_anything_is_made() {
    for v in ["1.1.3", "1.6.3"] {
        let Some(s) = Setup::at(v, "echo must-not-run", 1) else { return };
        let out = s.command(&["start", "a", "--quiet"]).output().expect("start");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{v}: {err}");
        assert!(
            err.contains(&format!("smolvm {v} cannot confine a bottle")) && err.contains("1.6.4 or later"),
            "{err}"
        );
        assert_eq!(s.called("create"), 0, "{v}: {:?}", s.calls());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("must-not-run"));
    }
}

/// The escape suite's network cases (tests/escape), each run as the agent
/// of a bottle on a current smolvm (the fake's guest): each must report
/// `contained`, and no host listener may be reached.
#[test]
fn the_escape_suites_network_cases_are_contained_in_the_guest() {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    if !netns() {
        return;
    }
    let hits = Arc::new(AtomicUsize::new(0));
    let tcp = std::net::TcpListener::bind("0.0.0.0:0").expect("tcp");
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    // What a neighbour bottle's port is to a native bottle: a port on the
    // host's own loopback.
    let neighbour = std::net::TcpListener::bind("127.0.0.1:0").expect("neighbour");
    let name = format!("bb-smol-escape-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let abs = std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract");
    for l in [tcp.try_clone().expect("clone"), neighbour.try_clone().expect("clone")] {
        let h = hits.clone();
        std::thread::spawn(move || {
            for _ in l.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    {
        let (h, u) = (hits.clone(), udp.try_clone().expect("clone"));
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while u.recv(&mut b).is_ok() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut c in abs.incoming().flatten() {
                let _ = c.read(&mut [0u8; 1]);
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let host = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(3).and_then(|a| a.split('/').next()).map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".into());
    let env = format!(
        "HOST_ADDR={host} HOST_PORT={} HOST_UDP_PORT={} HOST_ABSTRACT={name} HOST_PID={} NEIGHBOR_PORT={}",
        tcp.local_addr().expect("addr").port(),
        udp.local_addr().expect("addr").port(),
        std::process::id(),
        neighbour.local_addr().expect("addr").port(),
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/escape");
    let network = ["01", "02", "03", "04", "05", "06", "07", "08", "09", "47", "51", "53"];
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/escape")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| network.iter().any(|c| n.to_string_lossy().starts_with(&format!("{c}-"))))
        })
        .collect();
    cases.sort();
    assert_eq!(cases.len(), network.len(), "{cases:?}");
    let mut failures = Vec::new();
    let mut report = Vec::new();
    // As root without capabilities (before `exec --user`) and as a user.
    for (version, case) in ["1.9.3", "1.14.0"].into_iter().flat_map(|v| cases.iter().map(move |c| (v, c))) {
        let Some(s) = Setup::at(version, &format!("env {env} sh /workspace/case.sh"), 1) else { return };
        std::fs::copy(case, s.path("project/case.sh")).expect("copy");
        let out = s.command(&["start", "a", "--quiet"]).output().expect("start");
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let stem = case.file_stem().expect("stem").to_string_lossy().into_owned();
        report.push(format!("{stem} on {version}: {said}"));
        if out.status.code() != Some(0) || !said.starts_with("contained") {
            failures.push(format!(
                "{stem} on {version} (exit {:?}): {said} {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(failures.is_empty(), "escapes or broken cases:\n{}\n\nall:\n{}", failures.join("\n"), report.join("\n"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "something reached a host listener");
}

/// On the user's terminal: smolvm's client runs on a pty of bot-bottle's,
/// relayed, so the agent's keystroke injection and terminal changes reach
/// neither the user's shell nor the user's terminal, and the agent still
/// gets a terminal.
#[test]
fn on_a_terminal_the_agent_types_nothing_into_the_users_shell_and_leaves_its_terminal_as_it_was() {
    if !netns() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mark = tmp.path().join("INJECTED");
    let agent = format!(
        "[ -t 0 ] && [ -t 1 ] && echo tty-ok; \
         python3 -c 'import fcntl, termios\nfor fd in (0, 1, 2):\n    for c in b\"touch {mark}\\n\":\n        try: fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))\n        except OSError: pass'; \
         for t in /dev/stdin /dev/tty; do stty rows 5 cols 7 -echo -icanon < $t 2>/dev/null; done; echo injector-done; \
         echo agent-uid=$(id -u)",
        mark = mark.display()
    );
    // A smolvm with `exec --user`: `-it` as the agent's user.
    let Some(s) = Setup::at("1.14.0", &agent, 1) else { return };
    let t = tmp.path().display();
    let env = format!(
        "HOME={} XDG_STATE_HOME={} SMOLVM_DATA_DIR={} BOT_BOTTLE_SMOLVM={} FAKE_SMOLVM_VERSION=1.14.0 BOT_BOTTLE_KVM_DEVICE={}",
        s.path("home").display(),
        s.path("state").display(),
        s.path("smolvm").display(),
        s.fake.display(),
        s.path("kvm").display()
    );
    let line = format!(
        "stty -g > {t}/before; stty size > {t}/size-before; {env} {} start a --quiet; echo code=$?; \
         stty -g > {t}/after; stty size > {t}/size-after; echo SHELL-$((1+1))BACK\n",
        env!("CARGO_BIN_EXE_bot-bottle")
    );
    let steps = serde_json::json!([
        ["wait", "bash-"],
        ["type", line],
        ["wait", "SHELL-2BACK"],
        ["type", "echo E$((2+3))ND\n"],
        ["wait", "E5ND"],
        ["type", "exit\n"]
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pty_run.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(steps.to_string())
        .args(["--", "bash", "--norc", "--noprofile", "-i"])
        .current_dir(s.path("project"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .output()
        .expect("python3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pty_run: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let shown = v["output"].as_str().unwrap_or_default().to_owned();
    assert!(shown.contains("tty-ok") && shown.contains("injector-done"), "{shown}");
    assert!(shown.contains("code=0") && shown.contains("E5ND"), "{shown}");
    assert!(!mark.exists(), "the agent's keystrokes ran in the user's shell: {shown}");
    let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}: {shown}"));
    assert_eq!(read("size-before").trim(), "24 80");
    assert_eq!(read("size-after"), read("size-before"), "the agent resized the user's terminal");
    assert_eq!(read("after"), read("before"), "the user's terminal modes changed");
    // smolvm's client ran in a session of its own, on bot-bottle's pty.
    let exec = s.calls().into_iter().rfind(|c| c.get(1).is_some_and(|w| w == "exec")).expect("exec");
    assert!(exec.iter().any(|w| w == "-t") && exec.iter().any(|w| w == "-i"), "{exec:?}");
    let (u, g) = agent_ids();
    assert!(exec.windows(2).any(|w| w[0] == "-u" && w[1] == format!("{u}:{g}")), "{exec:?}");
    assert!(shown.contains(&format!("agent-uid={u}")), "{shown}");
    assert!(s.machines().is_empty());
}

/// The same end to end on a real smolvm, where one runs: smolvm ≥ 1.6.4 on
/// PATH, a usable /dev/kvm, and `BOT_BOTTLE_TEST_SMOLVM_IMAGE`, an image
/// smolvm can boot without a network (a `docker save` tar or a rootfs
/// directory) that has curl and getent and runs glibc binaries (bot-bottle's
/// forwarder is copied in). Says why it skips otherwise, CI included: no
/// runner of ours has KVM.
#[test]
#[expect(clippy::print_stderr, reason = "a gated test says why it skips")]
fn on_a_real_smolvm_the_vm_reaches_only_its_published_proxy() {
    let smolvm = match which_smolvm() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping the real-smolvm test: {why}");
            return;
        }
    };
    let Ok(image) = std::env::var("BOT_BOTTLE_TEST_SMOLVM_IMAGE") else {
        eprintln!("skipping the real-smolvm test: set BOT_BOTTLE_TEST_SMOLVM_IMAGE to a local image (see the test)");
        return;
    };
    let (port, seen) = upstream();
    let script = format!(
        "curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://127.0.0.1:{port}/ok; \
         curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://denied.example/; \
         echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '); \
         getent hosts example.com || echo no-dns; exit 3"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join("project/.bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(
        m.join("bottles/vm.yaml"),
        format!(
            "backend: smolmachines\nimage: {image:?}\negress:\n  routes:\n    - host: \"127.0.0.1:{port}\"\n      methods: [GET]\n"
        ),
    )
    .expect("write");
    std::fs::write(
        m.join("agents/a.md"),
        format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {script:?}]\nbottle: vm\n---\n"),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_bot-bottle"))
        .args(["start", "a", "--quiet"])
        .current_dir(dir.path().join("project"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env("BOT_BOTTLE_SMOLVM", &smolvm)
        .stdin(Stdio::null())
        .output()
        .expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("200\n403\nifaces=lo\nno-dns\n"), "{stdout}");
    assert_eq!(*seen.lock().expect("lock"), vec!["GET /ok HTTP/1.1".to_owned()]);
}

/// A real smolvm of the socket design's releases, and KVM to run it.
fn which_smolvm() -> Result<PathBuf, String> {
    let p = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("smolvm"))
        .find(|p| p.is_file())
        .ok_or("no smolvm on PATH")?;
    let out = Command::new(&p).arg("--version").output().map_err(|e| format!("{}: {e}", p.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u32> = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .trim_start_matches('v')
        .split(['.', '-'])
        .take(3)
        .filter_map(|n| n.parse().ok())
        .collect();
    if v.len() != 3 || v < vec![1, 6, 4] || v >= vec![2, 0, 0] {
        return Err(format!("{} is not smolvm >=1.6.4, <2.0.0: {}", p.display(), text.trim()));
    }
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm");
    kvm.map_err(|e| format!("/dev/kvm is not usable here: {e}"))?;
    Ok(p)
}

#[test]
fn a_vm_with_no_network_boots_a_local_rootfs_and_refuses_a_registry_image_docker_cannot_save() {
    if !netns() {
        return;
    }
    let Some(s) = Setup::at("1.9.3", "echo booted", 1) else { return };
    let bottle = s.path("project/.bot-bottle/bottles/vm.yaml");
    let base = std::fs::read_to_string(&bottle).expect("read");
    std::fs::create_dir_all(s.path("project/rootfs")).expect("rootfs");
    std::fs::write(&bottle, format!("{base}image: ./rootfs\n")).expect("write");
    let out = s.command(&["start", "a", "--quiet"]).output().expect("start");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let create = s.calls().into_iter().find(|c| c.get(1).is_some_and(|w| w == "create")).expect("create");
    let at = create.iter().position(|w| w == "-I").expect("-I");
    assert_eq!(Path::new(&create[at + 1]), s.path("project/./rootfs"), "{create:?}");

    // A registry image: docker must save it, and here its daemon is down.
    let bin = s.path("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::write(bin.join("docker"), "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
        .expect("w");
    std::fs::set_permissions(bin.join("docker"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::write(&bottle, format!("{base}image: node:22-slim\n")).expect("write");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let before = s.called("create");
    let out = s.command(&["start", "a", "--quiet"]).env("PATH", path).output().expect("start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("`node:22-slim` needs docker") && err.contains("docker save"), "{err}");
    assert_eq!(s.called("create"), before, "nothing is created");
    assert!(s.machines().is_empty());
}
