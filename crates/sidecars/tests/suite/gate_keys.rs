//! Deploy keys minted per bottle on a forge (fake-forge: the GitHub and
//! Gitea deploy-key endpoints as documented), used for the gate's pushes,
//! and deleted at the end or by `cleanup` after the gate was killed.

use bot_bottle_manifest::{EnvName, KeySource};
use bot_bottle_sidecars::{Gate, gate_cleanup};
use indexmap::IndexMap;

use super::gate_support::{
    FORGE_TOKEN, FakeForge, Opts, World, app_repo, gate_config, keygen, missing, ok, runtime, skip_or_panic,
};

fn env_name(s: &str) -> EnvName {
    // EnvName is only made by the manifest checker; a manifest is the way in.
    let yaml = format!(
        "git-gate:\n  repos:\n    x:\n      url: git@h:o/r.git\n      key: {{ provider: gitea, forge_token_env: {s} }}\n      host_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\n"
    );
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join(".bot-bottle");
    std::fs::create_dir_all(root.join("bottles")).expect("mkdir");
    std::fs::create_dir_all(root.join("agents")).expect("mkdir");
    std::fs::write(root.join("bottles/b.yaml"), yaml).expect("write");
    std::fs::write(root.join("agents/a.md"), "---\nprovider: claude\nbottle: b\n---\n").expect("write");
    let m = bot_bottle_manifest::Manifest::load(&root, None).expect("load");
    let req = bot_bottle_manifest::Request { agent: "a".into(), ..Default::default() };
    let plan = m.resolve(&req, &|_| true).expect("plan");
    match &plan.git_gate.repos["x"].key {
        KeySource::Gitea { forge_token_env, .. } => forge_token_env.clone(),
        other => panic!("{other:?}"),
    }
}

fn gitea(forge: &FakeForge) -> KeySource {
    KeySource::Gitea { forge_token_env: env_name("FORGE_TOKEN"), api: Some(forge.gitea()) }
}

fn github(forge: &FakeForge) -> KeySource {
    KeySource::Github { forge_token_env: env_name("FORGE_TOKEN"), api: Some(forge.github()) }
}

#[test]
fn a_gitea_deploy_key_is_minted_for_the_bottle_pushes_with_it_and_is_deleted_at_the_end() {
    let forge = FakeForge::start();
    let Some(w) = World::new(Opts { key: Some(gitea(&forge)), forge: forge.opts(), ..Opts::default() }) else {
        return;
    };
    // One write key, titled with the bottle's slug; sshd accepts it
    // because the forge does.
    let keys = forge.keys(&forge.gitea());
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!((keys[0].1.as_str(), keys[0].2), ("bot-bottle bottle-1", false));
    let private = w.gate_dir.join("keys/app");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&private).expect("key").permissions().mode() & 0o777, 0o600);
    // The static key the World also made is not what the gate uses: it
    // only pushes because the forge's key is authorized.
    std::fs::write(w.sshd.dir.join("authorized_keys"), "").expect("write");
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/x"]));
    let head = w.commit(&work, "a", b"a\n", "a");
    let (pushed, out) = w.push(&work, &["origin", "bot/x"]);
    assert!(pushed, "{out}");
    assert_eq!(ok(w.git().arg("--git-dir").arg(&w.upstream).args(["rev-parse", "bot/x"])), head);
    // Teardown deletes it: gone from the forge and from what sshd accepts.
    let report = w.rt.block_on(w.gate.finish());
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(forge.keys(&forge.gitea()).is_empty());
    assert_eq!(std::fs::read_to_string(forge.authorized_keys()).expect("read").trim(), "");
    // The forge token never appears in what the gate wrote.
    for f in ["state/audit.jsonl", "state/gate/deploy-keys.json"] {
        let s = std::fs::read_to_string(w.path(f)).unwrap_or_default();
        assert!(!s.contains(FORGE_TOKEN), "{f} holds the forge token");
    }
}

#[test]
fn a_github_deploy_key_left_by_a_killed_gate_is_deleted_by_cleanup_by_title() {
    if let Some(why) = missing() {
        skip_or_panic(&why);
        return;
    }
    let forge = FakeForge::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = keygen(&tmp.path().join("hk"));
    let repo = app_repo("git", 22, github(&forge), &host, &Opts::default());
    let cfg = gate_config(tmp.path(), IndexMap::from([("app".to_owned(), repo)]), Some(forge.ca()));
    let gate_dir = cfg.state_dir.clone();
    // Someone's own key on the same repository: cleanup must leave it.
    let (code, body) = forge.curl(
        FORGE_TOKEN,
        "POST",
        &format!("{}/repos/org/app/keys", forge.github()),
        Some(&format!("{{\"title\":\"ci\",\"key\":\"{}\",\"read_only\":true}}", keygen(&tmp.path().join("ci")))),
    );
    assert_eq!(code, 201, "{body}");
    let rt = runtime();
    let gate: Gate = rt.block_on(Gate::start(cfg)).expect("start");
    let titles: Vec<String> = forge.keys(&forge.github()).into_iter().map(|k| k.1).collect();
    assert_eq!(titles, ["ci", "bot-bottle bottle-1"]);
    // The launcher dies: nothing runs `finish`.
    drop(gate);
    drop(rt);
    assert_eq!(forge.keys(&forge.github()).len(), 2, "the key outlives a killed gate");
    // cleanup without the token says what to do and deletes nothing.
    let rt = runtime();
    let said = rt.block_on(gate_cleanup(&gate_dir, &|_| None, Some(&forge.ca())));
    assert!(said.iter().any(|s| s.contains("set $FORGE_TOKEN")), "{said:?}");
    assert_eq!(forge.keys(&forge.github()).len(), 2);
    let env = |n: &str| (n == "FORGE_TOKEN").then(|| FORGE_TOKEN.to_owned());
    let said = rt.block_on(gate_cleanup(&gate_dir, &env, Some(&forge.ca())));
    assert_eq!(said, ["deleted 1 deploy key `bot-bottle bottle-1` on org/app"]);
    let left: Vec<String> = forge.keys(&forge.github()).into_iter().map(|k| k.1).collect();
    assert_eq!(left, ["ci"], "only the bottle's key was deleted");
    // Nothing left to do the second time.
    assert!(rt.block_on(gate_cleanup(&gate_dir, &env, Some(&forge.ca()))).is_empty());
}

#[test]
fn forge_errors_stop_the_gate_with_the_forges_reason_and_leave_no_key() {
    if let Some(why) = missing() {
        skip_or_panic(&why);
        return;
    }
    let forge = FakeForge::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = keygen(&tmp.path().join("hk"));
    let rt = runtime();
    let start = |key: KeySource, path: &str, token: Option<&'static str>| {
        let mut repo = app_repo("git", 22, key, &host, &Opts::default());
        if let bot_bottle_manifest::GitUrl::Ssh { path: p, .. } = &mut repo.url {
            *p = path.to_owned();
        }
        let mut cfg = gate_config(tmp.path(), IndexMap::from([("app".to_owned(), repo)]), Some(forge.ca()));
        cfg.env = Box::new(move |n| (n == "FORGE_TOKEN").then(|| token.map(str::to_owned)).flatten());
        rt.block_on(Gate::start(cfg)).map(|_| ()).map_err(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s.push_str(&format!(": {c}"));
                src = c.source();
            }
            s
        })
    };
    let err = start(gitea(&forge), "org/app.git", Some("wrong-token-000000000")).expect_err("bad token");
    assert!(err.contains("Gitea answered 401"), "{err}");
    assert!(!err.contains("wrong-token"), "{err}");
    let err = start(github(&forge), "org/nope.git", Some(FORGE_TOKEN)).expect_err("unknown repo");
    assert!(err.contains("GitHub answered 404") && err.contains("Not Found"), "{err}");
    let err = start(gitea(&forge), "org/app.git", None).expect_err("no token");
    assert!(err.contains("$FORGE_TOKEN is not set"), "{err}");
    let err = start(gitea(&forge), "org/sub/app.git", Some(FORGE_TOKEN)).expect_err("not OWNER/NAME");
    assert!(err.contains("OWNER/NAME"), "{err}");
    assert!(forge.keys(&forge.gitea()).is_empty(), "a failed start leaves no key");
    // The same key twice is the forge's 422.
    let (code, body) = forge.curl(
        FORGE_TOKEN,
        "POST",
        &format!("{}/repos/org/app/keys", forge.gitea()),
        Some(&format!("{{\"title\":\"a\",\"key\":\"{}\"}}", keygen(&tmp.path().join("dup")))),
    );
    assert_eq!(code, 201, "{body}");
    let again = std::fs::read_to_string(tmp.path().join("dup.pub")).expect("pub");
    let (code, body) = forge.curl(
        FORGE_TOKEN,
        "POST",
        &format!("{}/repos/org/app/keys", forge.gitea()),
        Some(&format!("{{\"title\":\"b\",\"key\":\"{}\"}}", again.trim())),
    );
    assert_eq!(code, 422, "{body}");
}
