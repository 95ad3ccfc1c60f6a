//! Command lines, without spawning anything: every subcommand, and the inputs
//! that must be refused.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use bot_bottle_smolvm::argv;
use bot_bottle_smolvm::{
    CpOpts, CreateOpts, ExecOpts, MountSocket, NetBackend, PackOpts, Port, SmolvmError, Source, Volume,
};

fn check(got: Result<Vec<OsString>, SmolvmError>, expect: &[&str]) {
    let got = got.unwrap_or_else(|e| panic!("refused: {e}"));
    let got: Vec<String> = got.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    assert_eq!(got, expect);
}

/// The refusal, as its message.
fn refused(got: Result<Vec<OsString>, SmolvmError>) -> String {
    match got {
        Ok(a) => panic!("accepted: {a:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn version_and_ls() {
    check(Ok(argv::version()), &["--version"]);
    check(Ok(argv::machine_ls()), &["machine", "ls", "--json"]);
}

#[test]
fn lifecycle() {
    check(argv::machine_start("bottle-1"), &["machine", "start", "--name", "bottle-1"]);
    check(argv::machine_stop("bottle-1"), &["machine", "stop", "--name", "bottle-1"]);
    check(argv::machine_delete("bottle-1"), &["machine", "delete", "--name", "bottle-1", "-f"]);
    check(argv::machine_status("bottle-1"), &["machine", "status", "--name", "bottle-1", "--json"]);
}

#[test]
fn create_bare() {
    check(argv::machine_create(&CreateOpts::new("b", Source::Bare)), &["machine", "create", "--name", "b"]);
}

#[rustfmt::skip]
#[test]
fn create_with_everything() {
    let opts = CreateOpts {
        name: "bot-bottle-demo_1".into(),
        source: Source::Image("ghcr.io/acme/agent:1.2".into()),
        cpus: Some(2),
        mem_mib: Some(1024),
        volumes: vec![
            Volume { host: "/home/u/src".into(), guest: "/workspace".into(), read_only: false },
            Volume { host: "/etc/ssl".into(), guest: "/host-ssl".into(), read_only: true },
        ],
        ports: vec![Port { host: 8080, guest: 80 }],
        mount_sockets: vec![MountSocket { host: "/s/p.sock".into(), guest: "/run/p.sock".into() }],
        env: vec![("HTTPS_PROXY".into(), "http://10.0.0.1:3128".into()), ("EMPTY".into(), String::new())],
        workdir: Some("/workspace".into()),
        labels: vec![("bot-bottle".into(), "demo".into()), ("owner".into(), "a=b".into())],
        net: true,
        net_backend: Some(NetBackend::VirtioNet),
        dns: Some(Ipv4Addr::new(1, 1, 1, 1)),
        allow_cidrs: vec!["10.0.0.1/32".into(), "2001:db8::/32".into()],
        allow_hosts: vec!["api.anthropic.com".into()],
        outbound_localhost_only: true,
    };
    check(
        argv::machine_create(&opts),
        &[
            "machine", "create", "--name", "bot-bottle-demo_1",
            "-I", "ghcr.io/acme/agent:1.2",
            "--cpus", "2", "--mem", "1024",
            "-v", "/home/u/src:/workspace", "-v", "/etc/ssl:/host-ssl:ro",
            "-p", "8080:80",
            "--mount-socket", "/s/p.sock:/run/p.sock",
            "-e", "HTTPS_PROXY=http://10.0.0.1:3128", "-e", "EMPTY=",
            "-w", "/workspace",
            "--label", "bot-bottle=demo", "--label", "owner=a=b",
            "--net", "--net-backend", "virtio-net", "--dns", "1.1.1.1",
            "--allow-cidr", "10.0.0.1/32", "--allow-cidr", "2001:db8::/32",
            "--allow-host", "api.anthropic.com",
            "--outbound-localhost-only",
        ],
    );
}

#[test]
fn create_from_a_pack() {
    let opts = CreateOpts {
        allow_cidrs: vec!["127.0.0.1".into()],
        ..CreateOpts::new("b", Source::From("/var/cache/agent.smolmachine".into()))
    };
    check(
        argv::machine_create(&opts),
        &["machine", "create", "--name", "b", "--from", "/var/cache/agent.smolmachine", "--allow-cidr", "127.0.0.1"],
    );
}

#[rustfmt::skip]
#[test]
fn exec() {
    check(argv::machine_exec(&ExecOpts::new("b", ["true"])), &["machine", "exec", "--name", "b", "--", "true"]);
    let opts = ExecOpts {
        env: vec![("HOME".into(), "/home/agent".into())],
        workdir: Some("/workspace".into()),
        timeout: Some(Duration::from_secs(90)),
        stream: true,
        interactive: true,
        tty: true,
        ..ExecOpts::new("b", ["claude", "--dangerously-skip-permissions", "-p", "hi there"])
    };
    check(
        argv::machine_exec(&opts),
        &[
            "machine", "exec", "--name", "b", "-w", "/workspace", "-e", "HOME=/home/agent", "--timeout", "90s",
            "--stream", "-i", "-t", "--", "claude", "--dangerously-skip-permissions", "-p", "hi there",
        ],
    );
    let opts = ExecOpts { timeout: Some(Duration::from_millis(2500)), ..ExecOpts::new("b", ["--help"]) };
    check(argv::machine_exec(&opts), &["machine", "exec", "--name", "b", "--timeout", "2500ms", "--", "--help"]);
}

#[test]
fn sockets_detach_and_user() {
    let opts = CreateOpts {
        mount_sockets: vec![
            MountSocket { host: "/run/b/proxy.sock".into(), guest: "/run/bot-bottle/proxy.sock".into() },
            MountSocket { host: "/run/b/gate.sock".into(), guest: "/run/bot-bottle/gate.sock".into() },
        ],
        ..CreateOpts::new("b", Source::Bare)
    };
    check(
        argv::machine_create(&opts),
        &[
            "machine",
            "create",
            "--name",
            "b",
            "--mount-socket",
            "/run/b/proxy.sock:/run/bot-bottle/proxy.sock",
            "--mount-socket",
            "/run/b/gate.sock:/run/bot-bottle/gate.sock",
        ],
    );
    let opts = ExecOpts { detach: true, user: Some("1000:1000".into()), ..ExecOpts::new("b", ["fwd"]) };
    check(argv::machine_exec(&opts), &["machine", "exec", "--name", "b", "-d", "-u", "1000:1000", "--", "fwd"]);
    for (opts, want) in [
        (
            ExecOpts { detach: true, tty: true, ..ExecOpts::new("b", ["x"]) },
            "a detached command has no terminal, stdin or stream",
        ),
        (ExecOpts { user: Some("-x".into()), ..ExecOpts::new("b", ["x"]) }, "not a user name or UID[:GID]"),
        (ExecOpts { user: Some("a:".into()), ..ExecOpts::new("b", ["x"]) }, "not a user name or UID[:GID]"),
        (ExecOpts { user: Some("a b".into()), ..ExecOpts::new("b", ["x"]) }, "not a user name or UID[:GID]"),
    ] {
        let e = refused(argv::machine_exec(&opts));
        assert!(e.contains(want), "{e}");
    }
    for (host, guest, want) in [
        ("rel.sock", "/g", "not absolute"),
        ("/a:b", "/g", "contains ':'"),
        ("/a", "g", "not absolute"),
        ("/a", "/g:x", "contains ':'"),
    ] {
        let o = CreateOpts {
            mount_sockets: vec![MountSocket { host: host.into(), guest: guest.into() }],
            ..CreateOpts::new("b", Source::Bare)
        };
        let e = refused(argv::machine_create(&o));
        assert!(e.contains("mount-socket") && e.contains(want), "{e}");
    }
}

#[test]
fn cp() {
    check(
        argv::machine_cp_in("b", "/tmp/ca.pem".as_ref(), "/usr/local/share/ca.crt", &CpOpts::default()),
        &["machine", "cp", "/tmp/ca.pem", "b:/usr/local/share/ca.crt"],
    );
    check(
        argv::machine_cp_in("b", "rel/f".as_ref(), "/f", &CpOpts { mode: Some(0o600), uid: Some(1000), gid: Some(0) }),
        &["machine", "cp", "--mode", "600", "--uid", "1000", "--gid", "0", "rel/f", "b:/f"],
    );
    check(
        argv::machine_cp_out("b", "/out/log.txt", "/tmp/log.txt".as_ref()),
        &["machine", "cp", "b:/out/log.txt", "/tmp/log.txt"],
    );
}

#[test]
fn pack() {
    let opts = PackOpts { image: "alpine:3.20".into(), output: "/cache/agent".into(), cpus: None, mem_mib: Some(2048) };
    check(argv::pack_create(&opts), &["pack", "create", "-I", "alpine:3.20", "-o", "/cache/agent", "--mem", "2048"]);
}

#[test]
fn names_smolvm_would_refuse_are_refused_by_every_subcommand() {
    let long = "a".repeat(129);
    let bad = ["", "-rf", "--name", "-", "_x", "a-", "a--b", "a b", "a/b", "a:b", "a.b", "é", "a\0", long.as_str()];
    for name in bad {
        let all = [
            argv::machine_create(&CreateOpts::new(name, Source::Bare)),
            argv::machine_start(name),
            argv::machine_stop(name),
            argv::machine_delete(name),
            argv::machine_status(name),
            argv::machine_exec(&ExecOpts::new(name, ["true"])),
            argv::machine_cp_in(name, "/f".as_ref(), "/f", &CpOpts::default()),
            argv::machine_cp_out(name, "/f", "/f".as_ref()),
        ];
        for got in all {
            assert!(matches!(got, Err(SmolvmError::BadName { .. })), "{name:?}: {got:?}");
        }
    }
    for good in ["a", "0", "A0_b-c", "bot-bottle-demo-abc12", &"a".repeat(128)] {
        assert!(argv::check_name(good).is_ok(), "{good:?}");
    }
    assert_eq!(refused(argv::machine_start("-rf")), r#"bad machine name "-rf": must start with a letter or digit"#);
    assert_eq!(refused(argv::machine_start("a--b")), r#"bad machine name "a--b": must not contain '--'"#);
}

#[test]
fn bad_inputs_are_refused() {
    let create = |f: &dyn Fn(&mut CreateOpts)| {
        let mut o = CreateOpts::new("b", Source::Bare);
        f(&mut o);
        refused(argv::machine_create(&o))
    };
    let cases: Vec<(String, &str)> = vec![
        (create(&|o| o.env = vec![(String::new(), "v".into())]), r#"bad env key "": empty"#),
        (create(&|o| o.env = vec![("A=B".into(), "v".into())]), r#"bad env key "A=B": contains '='"#),
        (create(&|o| o.env = vec![("-x".into(), "v".into())]), r#"bad env key "-x": starts with '-'"#),
        (create(&|o| o.labels = vec![("k=v".into(), "v".into())]), r#"bad label key "k=v": contains '='"#),
        (create(&|o| o.labels = vec![(String::new(), "v".into())]), r#"bad label key "": empty"#),
        (
            create(&|o| o.allow_cidrs = vec!["10.0.0.0/33".into()]),
            r#"bad CIDR "10.0.0.0/33": prefix length out of range"#,
        ),
        (
            create(&|o| o.allow_cidrs = vec!["example.com".into()]),
            r#"bad CIDR "example.com": not an IP address with an optional /prefix"#,
        ),
        (create(&|o| o.allow_hosts = vec!["-x.com".into()]), r#"bad allowed host "-x.com": not a DNS name"#),
        (create(&|o| o.workdir = Some("workspace".into())), r#"bad workdir "workspace": not absolute"#),
        (
            create(&|o| {
                o.volumes = vec![Volume { host: "src".into(), guest: "/w".into(), read_only: false }];
            }),
            r#"bad volume host path "src": not absolute"#,
        ),
        (
            create(&|o| {
                o.volumes = vec![Volume { host: "/a:b".into(), guest: "/w".into(), read_only: false }];
            }),
            r#"bad volume host path "/a:b": contains ':'"#,
        ),
        (
            create(&|o| {
                o.volumes = vec![Volume { host: "/src".into(), guest: "/w:ro".into(), read_only: false }];
            }),
            r#"bad volume guest path "/w:ro": contains ':'"#,
        ),
        (create(&|o| o.source = Source::Image("-x".into())), r#"bad image "-x": starts with '-'"#),
        (create(&|o| o.source = Source::Image(String::new())), r#"bad image "": empty"#),
        (create(&|o| o.source = Source::From(PathBuf::from("-p"))), r#"bad --from path "-p": starts with '-'"#),
        (create(&|o| o.cpus = Some(0)), r#"bad cpus "0": must be at least 1"#),
        (
            create(&|o| {
                o.net_backend = Some(NetBackend::Tsi);
                o.outbound_localhost_only = true;
            }),
            r#"bad net backend "tsi": an egress policy or a port needs virtio-net; tsi does not enforce it"#,
        ),
        (
            create(&|o| {
                o.net_backend = Some(NetBackend::Tsi);
                o.ports = vec![Port { host: 1, guest: 2 }];
            }),
            r#"bad net backend "tsi": an egress policy or a port needs virtio-net; tsi does not enforce it"#,
        ),
        (refused(argv::machine_exec(&ExecOpts::new("b", Vec::<String>::new()))), r#"bad exec command "": empty"#),
        (
            refused(argv::machine_exec(&ExecOpts { timeout: Some(Duration::ZERO), ..ExecOpts::new("b", ["true"]) })),
            r#"bad timeout "0s": must be more than zero"#,
        ),
        (
            refused(argv::machine_exec(&ExecOpts { workdir: Some("./w".into()), ..ExecOpts::new("b", ["true"]) })),
            r#"bad workdir "./w": not absolute"#,
        ),
        (
            refused(argv::machine_cp_in("b", "/f".as_ref(), "f", &CpOpts::default())),
            r#"bad guest path "f": not absolute"#,
        ),
        (
            refused(argv::machine_cp_in("b", "-f".as_ref(), "/f", &CpOpts::default())),
            r#"bad host path "-f": starts with '-'"#,
        ),
        (
            refused(argv::machine_cp_in("b", "a:b".as_ref(), "/f", &CpOpts::default())),
            r#"bad host path "a:b": contains ':'"#,
        ),
        (
            refused(argv::machine_cp_in(
                "b",
                "/f".as_ref(),
                "/f",
                &CpOpts { mode: Some(0o17777), ..CpOpts::default() },
            )),
            r#"bad mode "17777": more than 12 permission bits"#,
        ),
        (refused(argv::machine_cp_out("b", "/f", "".as_ref())), r#"bad host path "": empty"#),
        (
            refused(argv::pack_create(&PackOpts {
                image: "alpine".into(),
                output: "/c/x.smolmachine".into(),
                cpus: None,
                mem_mib: None,
            })),
            r#"bad pack output "/c/x.smolmachine": name the stub; smolvm adds .smolmachine itself"#,
        ),
    ];
    for (got, expect) in cases {
        assert_eq!(got, expect);
    }
}

#[test]
fn an_env_value_is_never_in_an_error() {
    let opts = ExecOpts { env: vec![("TOKEN".into(), "s3cret\0".into())], ..ExecOpts::new("b", ["true"]) };
    let msg = refused(argv::machine_exec(&opts));
    assert_eq!(msg, r#"bad env value of "TOKEN": contains NUL"#);
    assert!(!format!("{opts:?}").contains("s3cret"), "Debug shows env values: {opts:?}");
    let create = CreateOpts { env: vec![("TOKEN".into(), "s3cret".into())], ..CreateOpts::new("b", Source::Bare) };
    assert!(!format!("{create:?}").contains("s3cret"));
}
