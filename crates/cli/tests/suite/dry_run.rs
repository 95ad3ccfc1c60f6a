//! `start --dry-run` on the shipped examples, and the CLI's other commands.

use super::cli::{Env, examples};

/// Paths of this checkout and this machine replaced: the examples' folder,
/// and the repository around it (the project when starting from there).
fn redact(s: &str) -> String {
    let repo = examples().parent().expect("repo").display().to_string();
    s.replace(env!("CARGO_BIN_EXE_bot-bottle"), "[BOT-BOTTLE]")
        .replace(&examples().display().to_string(), "[EXAMPLES]")
        .replace(&repo, "[REPO]")
}

#[test]
fn dry_run_json_plan_of_the_hello_example() {
    let env = Env::new();
    let r = env.run(&examples(), &["start", "hello", "--dry-run", "--format", "json"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).expect("plan is JSON");
    assert_eq!(plan["schema"], 1);
    assert_eq!(plan["bottle"]["lineage_text"], "base -> sandbox");
    assert_eq!(plan["agent"]["command"][0], "sh");
    assert!(env.written().is_empty(), "dry run wrote {:?}", env.written());
    let stdout = redact(&r.stdout).replace(&env.path().display().to_string(), "[TMP]");
    insta::assert_snapshot!("hello-plan-json", stdout);
}

#[test]
fn dry_run_text_and_yaml_formats() {
    let env = Env::new();
    let text = env.run(&examples(), &["start", "hello", "--dry-run"], &[]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    insta::assert_snapshot!(
        "hello-plan-text",
        redact(&text.stdout).replace(&env.path().display().to_string(), "[TMP]")
    );
    let yaml = env.run(&examples(), &["start", "hello", "--dry-run", "--format", "yaml"], &[]);
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    let v: serde_json::Value = serde_yaml::from_str(&yaml.stdout).expect("plan is YAML");
    let json = env.run(&examples(), &["start", "hello", "--dry-run", "--format", "json"], &[]);
    let j: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v, j, "yaml and json carry the same plan");
}

#[test]
fn secret_values_never_reach_the_plan_or_errors() {
    let env = Env::new();
    let token = "ghp_realTokenValue0123456789abcdefghijkl";
    for args in [
        &["start", "reviewer", "--bottle", "dev", "--dry-run", "--format", "json"][..],
        &["start", "reviewer", "--bottle", "dev", "--dry-run", "--format", "yaml"],
        &["start", "reviewer", "--bottle", "dev", "--dry-run"],
        &["start", "reviewer", "--bottle", "claude"],
    ] {
        let r = env.run(&examples(), args, &[("GITHUB_TOKEN", token)]);
        for out in [&r.stdout, &r.stderr] {
            assert!(!out.contains(token), "{args:?} leaked a secret:\n{out}");
        }
    }
    // With the token set the plan says so, by name only.
    let r = env.run(
        &examples(),
        &["start", "reviewer", "--bottle", "dev", "--dry-run", "--format", "json"],
        &[("GITHUB_TOKEN", token)],
    );
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(plan["secrets"][0]["env"], "GITHUB_TOKEN");
    assert_eq!(plan["secrets"][0]["set"], true);
    assert_eq!(plan["warnings"].as_array().map(Vec::len), Some(0));
}

#[test]
fn start_refuses_before_creating_anything_when_a_secret_is_unset() {
    let env = Env::new();
    let unset = env.run(&examples(), &["start", "reviewer", "--bottle", "claude"], &[]);
    assert_eq!(unset.code, 125);
    assert!(unset.stderr.contains("GITHUB_TOKEN") && unset.stderr.contains("ANTHROPIC_API_KEY"), "{}", unset.stderr);
    assert!(env.written().is_empty(), "{:?}", env.written());
}

#[test]
fn usage_errors_exit_2_with_a_pointer() {
    let env = Env::new();
    let ex = examples();
    let cases: &[(&[&str], &str)] = &[
        (&["start", "helo", "--dry-run"], "did you mean `hello`?"),
        (&["start", "--dry-run"], "name the agent"),
        (&["start", "reviewer", "--dry-run"], "--bottle"),
        (&["start", "hello", "--bottle", "dve", "--dry-run"], "did you mean `dev`?"),
        (&["start", "hello", "--backend", "podman", "--dry-run"], "invalid value"),
        (&["start", "--manifest", "/nonexistent/dir", "hello", "--dry-run"], "does not exist"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, expect) in cases {
        let r = env.run(&ex, args, &[]);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{args:?}: {}", r.stderr);
    }
    // Outside any manifest, discovery says where it looked.
    let r = env.run(env.path(), &["start", "hello", "--dry-run"], &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no manifest directory found"), "{}", r.stderr);
}

#[test]
fn manifest_directory_discovery_from_the_environment() {
    let env = Env::new();
    let m = examples().join(".bot-bottle");
    let project = env.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    let r = env.run(&project, &["start", "hello", "--dry-run"], &[("BOT_BOTTLE_MANIFEST", m.to_str().expect("utf-8"))]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A subdirectory finds the nearest .bot-bottle/ above it.
    let r = env.run(&m.join("agents"), &["manifest", "check"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn manifest_check_and_list() {
    let env = Env::new();
    let check = env.run(&examples(), &["manifest", "check"], &[]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("0 errors"), "{}", check.stdout);
    let list = env.run(&examples(), &["manifest", "list"], &[]);
    assert_eq!(list.code, 0);
    insta::assert_snapshot!("examples-list", list.stdout);
    let json = env.run(&examples(), &["manifest", "list", "--format", "json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["agents"][0]["lineage"], serde_json::json!(["base", "sandbox"]));
}

#[test]
fn completions_for_each_shell() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let r = env.run(env.path(), &["completions", shell], &[]);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert!(r.stdout.contains("bot-bottle") && r.stdout.contains("dry-run"), "{shell}");
    }
}

#[test]
fn help_texts() {
    let env = Env::new();
    let every: &[&[&str]] = &[
        &["--help"],
        &["start", "--help"],
        &["manifest", "--help"],
        &["manifest", "check", "--help"],
        &["manifest", "list", "--help"],
        &["proxy", "--help"],
        &["scan", "--help"],
        &["doctor", "--help"],
        &["list", "--help"],
        &["logs", "--help"],
        &["stop", "--help"],
        &["resume", "--help"],
        &["rm", "--help"],
        &["cleanup", "--help"],
        &["completions", "--help"],
    ];
    for args in every {
        let r = env.run(env.path(), args, &[]);
        assert_eq!(r.code, 0);
        insta::assert_snapshot!(format!("help-{}", args.join("-").trim_start_matches("-")), r.stdout);
    }
}

#[test]
fn dry_run_shows_what_a_smolmachines_launch_would_build() {
    let env = Env::new();
    let plan = |extra: &[(&str, &str)]| -> serde_json::Value {
        let args = ["start", "hello", "--backend", "smolmachines", "--dry-run", "--format", "json"];
        let r = env.run(&examples(), &args, extra);
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str(&r.stdout).expect("plan is JSON")
    };
    // No smolvm here: what a current release gets.
    let launch = &plan(&[])["launch"];
    assert_eq!(launch["backend"], "smolmachines");
    assert_eq!(launch["design"], "sockets");
    assert_eq!(launch["network"], "none");
    assert_eq!(launch["smolvm"]["supported"], ">=1.0.2, <2.0.0");
    assert_eq!(launch["smolvm"]["range"], ">=1.6.4, <2.0.0");
    assert_eq!(
        launch["smolvm"]["designs"],
        serde_json::json!([["sockets", ">=1.6.4, <2.0.0"], ["tsi-loopback", ">=1.0.2, <1.1.3"]])
    );
    let sockets = launch["sockets"].as_array().expect("sockets");
    let shown: Vec<(u64, &str)> =
        sockets.iter().map(|s| (s["port"].as_u64().unwrap_or(0), s["guest"].as_str().unwrap_or(""))).collect();
    assert_eq!(
        shown,
        vec![(3128, "/run/bot-bottle/sidecars/proxy.sock"), (9420, "/run/bot-bottle/sidecars/gate.sock")]
    );
    assert!(sockets.iter().all(|s| s["host"].as_str().is_some_and(|h| h.ends_with(".sock"))), "{sockets:?}");
    assert!(launch.get("address").is_none() && launch.get("allowlist").is_none(), "{launch}");
    // A current smolvm has `exec --user`: the agent is never root.
    let root = nix::unistd::geteuid().is_root();
    let ids =
        if root { "1000:1000".to_owned() } else { format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid()) };
    assert_eq!(launch["agent_user"], ids.as_str());

    // A smolvm of the seeds' era: its own loopback address.
    let fake = std::path::Path::new(env!("CARGO_BIN_EXE_bot-bottle")).with_file_name("fake-smolvm");
    if fake.exists() {
        let data = env.path().join("smolvm");
        let fake = fake.display().to_string();
        let data = data.display().to_string();
        let with = |v: &'static str| {
            plan(&[("BOT_BOTTLE_SMOLVM", &fake), ("SMOLVM_DATA_DIR", &data), ("FAKE_SMOLVM_VERSION", v)])
        };
        let launch = &with("1.1.2")["launch"];
        assert_eq!(launch["design"], "tsi-loopback");
        assert_eq!(launch["smolvm"]["found"], "1.1.2");
        assert_eq!(launch["smolvm"]["range"], ">=1.0.2, <1.1.3");
        assert_eq!(launch["address"], "127.0.0.16", "the lowest free address of an empty pool");
        assert_eq!(launch["allowlist"], serde_json::json!(["127.0.0.16/32"]));
        assert_eq!(launch["dns"], "127.0.0.16");
        assert_eq!(launch["pool"], "127.0.0.16-127.0.0.31");
        assert!(launch.get("sockets").is_none(), "{launch}");
        assert_eq!(launch["agent_user"], "root");
        // Before `exec --user`: root with no capabilities, and a warning.
        let launch = &with("1.13.9")["launch"];
        assert_eq!(launch["design"], "sockets");
        assert_eq!(launch["agent_user"], "root, with no capabilities");
        let warned = launch["warnings"].to_string();
        assert!(warned.contains("smolvm 1.13.9 has no `exec --user`, which arrives in 1.14.0"), "{warned}");
        assert_eq!(with("1.14.0")["launch"]["agent_user"], ids.as_str());
        // In between: the plan says it will be refused.
        let p = with("1.5.0");
        let said = p.to_string();
        assert!(said.contains("smolvm 1.5.0 cannot confine a bottle"), "{said}");
    }
    assert!(env.written().iter().all(|w| w.starts_with("smolvm")), "dry run wrote {:?}", env.written());
}
