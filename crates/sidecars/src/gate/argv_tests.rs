//! Tests of every command line the gate builds, refused inputs included.
use super::*;

fn strs(c: &GitCmd) -> Vec<String> {
    c.args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
}

fn env<'a>(c: &'a GitCmd, k: &str) -> Option<&'a OsStr> {
    c.env.iter().rev().find(|(n, _)| *n == k).map(|(_, v)| v.as_os_str())
}

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const ZERO: &str = "0000000000000000000000000000000000000000";

fn ssh() -> SshCommand {
    SshCommand {
        program: "/usr/bin/ssh".into(),
        key: "/state/gate/keys/app key".into(),
        known_hosts: "/state/gate/known_hosts/app".into(),
        alias: "bot-bottle-app".into(),
        connect_timeout_secs: 20,
    }
}

#[test]
fn object_ids_and_refs_are_checked() {
    assert!(Oid::parse(A).is_ok());
    assert!(Oid::parse(&"a".repeat(64)).is_ok());
    for bad in ["", "123", &"A".repeat(40), &format!("-{}", &A[1..]), &"g".repeat(40), "HEAD"] {
        assert!(Oid::parse(bad).is_err(), "{bad}");
    }
    assert!(Oid::parse(ZERO).is_ok_and(|o| o.is_zero()));
    for good in ["refs/heads/main", "refs/heads/bot/x-1", "refs/tags/v1.0"] {
        assert!(RefName::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "main",
        "-refs/heads/x",
        "refs/heads/a..b",
        "refs/heads/a b",
        "refs/heads/x.lock",
        "refs/heads/.hidden",
        "refs/heads/x/",
        "refs/heads//x",
        "refs/heads/x@{1}",
        "refs/heads/a:b",
        "refs/heads/a\nb",
        "refs/heads/*",
        "refs/heads/a\\b",
    ] {
        assert!(RefName::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(RefName::parse("refs/heads/bot/x").expect("ref").branch(), Some("bot/x"));
    assert_eq!(RefName::parse("refs/tags/v1").expect("ref").branch(), None);
}

#[test]
fn the_base_environment_has_no_config_no_prompt_and_no_host_variables() {
    let e = base_env(Path::new("/state/gate/home"), OsStr::new("/usr/bin:/bin"));
    let names: Vec<&str> = e.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        [
            "PATH",
            "HOME",
            "XDG_CONFIG_HOME",
            "GIT_CONFIG_NOSYSTEM",
            "GIT_CONFIG_GLOBAL",
            "GIT_ATTR_NOSYSTEM",
            "GIT_TERMINAL_PROMPT",
            "GIT_ASKPASS",
            "SSH_ASKPASS",
            "GIT_NO_REPLACE_OBJECTS",
            "GIT_ALLOW_PROTOCOL",
            "LC_ALL"
        ]
    );
    let c = GitCmd { args: vec![], env: e };
    assert_eq!(env(&c, "GIT_CONFIG_GLOBAL"), Some(OsStr::new("/dev/null")));
    assert_eq!(env(&c, "HOME"), Some(OsStr::new("/state/gate/home")));
}

#[test]
fn serving_commands() {
    let d = Path::new("/g/repos/app.git");
    assert_eq!(
        strs(&upload_pack(d, true).expect("argv")),
        [
            "-c",
            "uploadpack.hideRefs=refs/namespaces/",
            "upload-pack",
            "--stateless-rpc",
            "--advertise-refs",
            "--strict",
            "--",
            "/g/repos/app.git"
        ]
    );
    let r =
        receive_pack(d, Path::new("/g/hooks"), ReceivePolicy { allow_force_push: false, allow_delete: true }, false)
            .expect("argv");
    assert_eq!(
        strs(&r),
        [
            "-c",
            "core.hooksPath=/g/hooks",
            "-c",
            "receive.fsckObjects=true",
            "-c",
            "receive.denyDeletes=false",
            "-c",
            "receive.denyNonFastForwards=true",
            "-c",
            "receive.autogc=false",
            "-c",
            "receive.advertisePushOptions=false",
            "-c",
            "receive.shallowUpdate=false",
            "receive-pack",
            "--stateless-rpc",
            "--",
            "/g/repos/app.git"
        ]
    );
    assert!(upload_pack(Path::new("repos/app.git"), false).is_err(), "relative paths are refused");
    assert!(
        receive_pack(d, Path::new("/g/hooks\n"), ReceivePolicy { allow_force_push: false, allow_delete: false }, true)
            .is_err()
    );
}

#[test]
fn the_ssh_command_uses_the_deploy_key_and_the_pinned_host_only() {
    let s = ssh();
    s.check().expect("valid");
    assert_eq!(
        s.render(),
        "'/usr/bin/ssh' -F /dev/null -i '/state/gate/keys/app key' -o IdentitiesOnly=yes -o IdentityAgent=none \
         -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile='/state/gate/known_hosts/app' \
         -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=bot-bottle-app -o CheckHostIP=no -o UpdateHostKeys=no \
         -o ForwardAgent=no -o ForwardX11=no -o ClearAllForwardings=yes -o PermitLocalCommand=no \
         -o ProxyCommand=none -o ProxyJump=none -o ControlMaster=no -o ControlPath=none \
         -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o PubkeyAuthentication=yes \
         -o ConnectTimeout=20 -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
    );
    assert_eq!(s.known_hosts_line("ssh-ed25519", "AAAA"), "bot-bottle-app ssh-ed25519 AAAA\n");
    // A quote in a path stays inside its quotes.
    let q = SshCommand { key: "/k/it's".into(), ..ssh() };
    assert!(q.render().contains(r"-i '/k/it'\''s'"));
    for bad in [
        SshCommand { alias: "-oProxyCommand=x".into(), ..ssh() },
        SshCommand { alias: "a b".into(), ..ssh() },
        SshCommand { key: "relative".into(), ..ssh() },
        SshCommand { known_hosts: "/k\n/x".into(), ..ssh() },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
}

#[test]
fn fetch_from_an_ssh_upstream() {
    let remote = Remote::Ssh { url: "ssh://git@example.com:2222/org/app.git".into(), ssh: ssh() };
    let c = fetch(Path::new("/g/repos/app.git"), &remote, false).expect("argv");
    assert_eq!(
        strs(&c),
        [
            "--git-dir",
            "/g/repos/app.git",
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--end-of-options",
            "ssh://git@example.com:2222/org/app.git",
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*"
        ]
    );
    assert_eq!(env(&c, "GIT_SSH_COMMAND").map(|s| s.to_string_lossy().into_owned()), Some(ssh().render()));
    assert_eq!(env(&c, "GIT_ALLOW_PROTOCOL"), Some(OsStr::new("ssh")));
    let dashed = Remote::Ssh { url: "-oProxyCommand=touch /tmp/x".into(), ssh: ssh() };
    assert!(matches!(fetch(Path::new("/g/r.git"), &dashed, false), Err(ArgvError::Dash { .. })));
}

#[test]
fn fetch_from_the_project_hides_every_bottles_branches_and_files_this_ones_landed_branches() {
    let remote = Remote::Local { path: "/home/u/it's".into(), owner: None };
    let c = fetch(Path::new("/g/repos/local.git"), &remote, true).expect("argv");
    let a = strs(&c);
    assert_eq!(
        a[8],
        "--upload-pack=git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c safe.directory='/home/u/it'\\''s' upload-pack"
    );
    assert_eq!(
        a[9..],
        [
            "--end-of-options",
            "/home/u/it's",
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
            "^refs/heads/bot-bottle/*"
        ]
    );
    assert_eq!(env(&c, "GIT_ALLOW_PROTOCOL"), Some(OsStr::new("file")));
    let l = fetch_landed(Path::new("/g/repos/local.git"), &remote, "bot-bottle/a-1/").expect("argv");
    assert_eq!(
        strs(&l)[9..],
        ["--end-of-options", "/home/u/it's", "+refs/heads/bot-bottle/a-1/*:refs/namespaces/landed/refs/heads/*"]
    );
    for bad in ["bot-bottle/a-1", "other/a-1/", "bot-bottle/*/", "bot-bottle/a..b/"] {
        assert!(fetch_landed(Path::new("/g/l.git"), &remote, bad).is_err(), "{bad}");
    }
    assert!(fetch(Path::new("/g/l.git"), &Remote::Local { path: "rel".into(), owner: None }, false).is_err());
}

#[test]
fn push_is_atomic_and_leased() {
    let remote = Remote::Ssh { url: "ssh://git@example.com/org/app.git".into(), ssh: ssh() };
    let ups = [
        Update {
            old: Oid::parse(ZERO).expect("oid"),
            new: Oid::parse(A).expect("oid"),
            dst: RefName::parse("refs/heads/bot/new").expect("ref"),
        },
        Update {
            old: Oid::parse(A).expect("oid"),
            new: Oid::parse(B).expect("oid"),
            dst: RefName::parse("refs/heads/bot/x").expect("ref"),
        },
        Update {
            old: Oid::parse(B).expect("oid"),
            new: Oid::parse(ZERO).expect("oid"),
            dst: RefName::parse("refs/heads/bot/gone").expect("ref"),
        },
    ];
    let c = push(Path::new("/g/repos/app.git"), &remote, &ups, false).expect("argv");
    assert_eq!(
        strs(&c),
        [
            "--git-dir",
            "/g/repos/app.git",
            "push",
            "--porcelain",
            "--atomic",
            "--no-verify",
            "--force-with-lease=refs/heads/bot/new:",
            &format!("--force-with-lease=refs/heads/bot/x:{A}"),
            &format!("--force-with-lease=refs/heads/bot/gone:{B}"),
            "--end-of-options",
            "ssh://git@example.com/org/app.git",
            &format!("{A}:refs/heads/bot/new"),
            &format!("{B}:refs/heads/bot/x"),
            ":refs/heads/bot/gone"
        ]
    );
    assert!(push(Path::new("/g/r.git"), &remote, &[], false).is_err());
    let local = Remote::Local { path: "/home/u/p".into(), owner: Some((1000, 1001)) };
    let c = push(Path::new("/g/repos/local.git"), &local, &ups[..1], false).expect("argv");
    assert_eq!(
        strs(&c)[6],
        "--receive-pack=setpriv --reuid=1000 --regid=1001 --clear-groups -- git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c safe.directory='/home/u/p' \
         -c receive.denyCurrentBranch=refuse -c receive.fsckObjects=true -c receive.denyNonFastForwards=true \
         -c receive.denyDeletes=true receive-pack"
    );
}

#[test]
fn an_https_token_travels_in_the_environment_not_the_command_line() {
    let remote = Remote::Https {
        url: "https://git.example.com/org/app.git".into(),
        authorization: "Basic c2VjcmV0".into(),
        ca_file: None,
    };
    let c = fetch(Path::new("/g/repos/app.git"), &remote, false).expect("argv");
    assert!(!c.display().contains("c2VjcmV0") && strs(&c).iter().all(|a| !a.contains("c2VjcmV0")));
    assert_eq!(env(&c, "GIT_CONFIG_COUNT"), Some(OsStr::new("3")));
    assert_eq!(env(&c, "GIT_CONFIG_KEY_0"), Some(OsStr::new("http.https://git.example.com/org/app.git.extraHeader")));
    assert_eq!(env(&c, "GIT_CONFIG_VALUE_0"), Some(OsStr::new("Authorization: Basic c2VjcmV0")));
    assert_eq!(env(&c, "GIT_CONFIG_KEY_1"), Some(OsStr::new("credential.helper")));
    assert_eq!(env(&c, "GIT_ALLOW_PROTOCOL"), Some(OsStr::new("https")));
}

#[test]
fn scanning_and_snapshot_commands() {
    let d = Path::new("/g/repos/app.git");
    assert_eq!(
        strs(&rev_list_new(d, &[Oid::parse(A).expect("oid")]).expect("argv")),
        ["--git-dir", "/g/repos/app.git", "rev-list", "--objects", A, "--not", "--all"]
    );
    let q = quarantine_env(GitCmd::default(), Path::new("/g/q"), Path::new("/g/o"));
    assert_eq!(env(&q, "GIT_OBJECT_DIRECTORY"), Some(OsStr::new("/g/q")));
    assert_eq!(env(&q, "GIT_ALTERNATE_OBJECT_DIRECTORIES"), Some(OsStr::new("/g/o")));
    let a = Oid::parse(A).expect("oid");
    let b = Oid::parse(B).expect("oid");
    assert_eq!(
        strs(&is_ancestor(d, &a, &b).expect("argv"))[2..],
        ["merge-base", "--is-ancestor", "--end-of-options", A, B]
    );
    let add = snapshot_add(Path::new("/t/git"), Path::new("/s/workspace"), Path::new("/t/index"), &["sub/x".into()])
        .expect("argv");
    assert!(strs(&add).ends_with(&[
        "add".into(),
        "--all".into(),
        "--".into(),
        ".".into(),
        ":(exclude,top,literal)sub/x".into()
    ]));
    assert_eq!(env(&add, "GIT_DIR"), Some(OsStr::new("/t/git")));
    assert_eq!(env(&add, "GIT_WORK_TREE"), Some(OsStr::new("/s/workspace")));
    assert!(snapshot_add(Path::new("/t/git"), Path::new("workspace"), Path::new("/t/index"), &[]).is_err());
    let t = Oid::parse(A).expect("oid");
    let c = commit_tree(Path::new("/t/git"), &t, &[b.clone(), a.clone()], "m").expect("argv");
    assert_eq!(strs(&c), ["commit-tree", A, "-p", B, "-p", A, "-m", "m"]);
    assert!(resolve(d, "-x").is_err());
    let head = ls_remote_head(&Remote::Local { path: "/p".into(), owner: None }).expect("argv");
    assert_eq!(strs(&head)[3..], ["--end-of-options", "/p", "HEAD"]);
    assert_eq!(
        strs(&set_head(d, &RefName::parse("refs/heads/main").expect("ref")).expect("argv"))[2..],
        ["symbolic-ref", "HEAD", "refs/heads/main"]
    );
    assert_eq!(
        strs(&GitCmd { args: ssh_keygen(Path::new("/g/keys/app"), "bot-bottle a-1").expect("argv"), env: vec![] }),
        ["-q", "-t", "ed25519", "-N", "", "-C", "bot-bottle a-1", "-f", "/g/keys/app"]
    );
    assert!(ssh_keygen(Path::new("/g/keys/app"), "-oops").is_err());
    assert!(ssh_keygen(Path::new("keys/app"), "x").is_err());
}
