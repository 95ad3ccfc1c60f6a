//! The git gate with the real git client and a real upstream: OpenSSH sshd
//! on loopback serving a bare repository, reached only with the deploy key
//! and the pinned host key.

use super::gate_support::{Opts, World, keygen, ok};

/// Fabricated credentials in the detector's formats; none is real.
const GHP: &str = "ghp_Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5eG2uT";
const AKIA: &str = "AKIAYCDYBK377OXTZQ6S";
const PEM: &str =
    "-----BEGIN OPENSSH PRIVATE KEY-----\nQovrjmA1cTzsC6sx0/rAA2uhIGStPPpuHaESAx6ltlS68yNtJtOw3VQ76gE2hq3b\n";

fn world() -> Option<World> {
    World::new(Opts::default())
}

#[test]
fn clone_and_fetch_go_through_the_gate_and_see_the_upstream_as_it_is_now() {
    let Some(w) = world() else { return };
    let work = w.clone("app", "work");
    let upstream_main = ok(w.git().arg("--git-dir").arg(&w.upstream).args(["rev-parse", "main"]));
    assert_eq!(ok(&mut w.in_dir(&work, &["rev-parse", "HEAD"])), upstream_main);
    assert_eq!(std::fs::read_to_string(work.join("README.md")).expect("read"), "# app\n");
    // Someone else moves the upstream; a fetch through the gate sees it.
    let other = w.path("other");
    ok(w.git().arg("clone").arg("-q").arg(&w.upstream).arg(&other));
    let moved = w.commit(&other, "NEWS", b"news\n", "upstream moved");
    ok(&mut w.in_dir(&other, &["push", "-q", "origin", "main"]));
    ok(&mut w.in_dir(&work, &["fetch", "-q", "origin"]));
    assert_eq!(ok(&mut w.in_dir(&work, &["rev-parse", "origin/main"])), moved);
    // Protocol v2 was spoken (git's default); v0 works too.
    ok(&mut w.in_dir(&work, &["-c", "protocol.version=0", "fetch", "-q", "origin"]));
    let audit = w.audit();
    assert!(
        audit.iter().any(|e| e["op"] == "fetch"
            && e["decision"] == "allow"
            && e["repo"] == "app"
            && e["refs"] == serde_json::json!(["refs/heads/main"])),
        "{audit:?}"
    );
    // The gate serves only git, only its repositories.
    let out = ok(std::process::Command::new("curl")
        .args(["-s", &format!("{}/nope.git/info/refs?service=git-upload-pack", w.gate_url)]));
    assert!(out.contains("no repository `nope`"), "{out}");
}

#[test]
fn a_clean_push_arrives_upstream_with_the_same_commit_ids() {
    let Some(w) = world() else { return };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/feature"]));
    let a = w.commit(&work, "src/lib.rs", b"pub fn a() {}\n", "add a");
    let b = w.commit(&work, "src/lib.rs", b"pub fn a() {}\npub fn b() {}\n", "add b");
    let (pushed, out) = w.push(&work, &["origin", "bot/feature"]);
    assert!(pushed, "{out}");
    let up = ok(w.git().arg("--git-dir").arg(&w.upstream).args(["rev-parse", "bot/feature", "bot/feature~1"]));
    assert_eq!(up, format!("{b}\n{a}"), "identical commit ids upstream");
    // A second push on top is a fast-forward and goes through too.
    let c = w.commit(&work, "src/lib.rs", b"pub fn c() {}\n", "add c");
    assert!(w.push(&work, &["origin", "bot/feature"]).0);
    assert_eq!(ok(w.git().arg("--git-dir").arg(&w.upstream).args(["rev-parse", "bot/feature"])), c);
    assert_eq!(w.gate.report().pushed.len(), 1, "{:?}", w.gate.report());
    let audit = w.audit();
    assert!(
        audit.iter().any(|e| e["op"] == "push" && e["decision"] == "allow" && e["refs"][0] == "refs/heads/bot/feature"),
        "{audit:?}"
    );
}

/// Pushes `bot/x` from `work` and checks it was refused with `expect` in
/// the output, leaving the upstream and the gate's refs as they were.
fn refused(w: &World, work: &std::path::Path, args: &[&str], expect: &[&str]) -> String {
    let up_before = w.refs(&w.upstream);
    let gate_before = w.refs(&w.gate_repo("app"));
    let (pushed, out) = w.push(work, args);
    assert!(!pushed, "the push went through:\n{out}");
    for e in expect {
        assert!(out.contains(e), "missing `{e}` in:\n{out}");
    }
    assert_eq!(w.refs(&w.upstream), up_before, "the upstream changed:\n{out}");
    assert_eq!(w.refs(&w.gate_repo("app")), gate_before, "the gate's refs changed:\n{out}");
    for secret in [GHP, AKIA, "QovrjmA1cTzsC6sx0"] {
        assert!(!out.contains(secret), "the refusal shows a secret:\n{out}");
    }
    out
}

#[test]
fn secrets_anywhere_in_a_push_are_refused_with_every_finding() {
    let Some(w) = world() else { return };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/x"]));
    let base = ok(&mut w.in_dir(&work, &["rev-parse", "HEAD"]));
    let reset = |w: &World| ok(&mut w.in_dir(&work, &["reset", "-q", "--hard", &base]));

    // A new file.
    w.commit(&work, "config/prod.env", format!("A=1\nTOKEN={GHP}\n").as_bytes(), "config");
    let out = refused(&w, &work, &["origin", "bot/x"], &["push refused", "config/prod.env:2 github-ghp ghp_"]);
    assert!(out.contains("git rebase -i"), "says what to do:\n{out}");
    reset(&w);

    // A modified file.
    w.commit(&work, "README.md", format!("# app\n\naws: {AKIA}\n").as_bytes(), "docs");
    refused(&w, &work, &["origin", "bot/x"], &["README.md:3 aws-access-key-id … (20 bytes)"]);
    reset(&w);

    // Added, then deleted again within the same push.
    w.commit(&work, "tmp/key", PEM.as_bytes(), "oops");
    ok(&mut w.in_dir(&work, &["rm", "-q", "tmp/key"]));
    ok(&mut w.in_dir(&work, &["commit", "-qm", "remove the key"]));
    assert!(!work.join("tmp/key").exists());
    refused(&w, &work, &["origin", "bot/x"], &["tmp/key:1 private-key"]);
    reset(&w);

    // The commit message.
    std::fs::write(work.join("notes.txt"), "notes\n").expect("write");
    ok(&mut w.in_dir(&work, &["add", "."]));
    ok(&mut w.in_dir(&work, &["commit", "-qm", &format!("deploy\n\nused {GHP} for this")]));
    refused(&w, &work, &["origin", "bot/x"], &["message:3 github-ghp"]);
    reset(&w);

    // A binary file with a key inside.
    let mut blob = vec![0u8, 1, 2, 255, 0, 0];
    blob.extend_from_slice(AKIA.as_bytes());
    blob.extend_from_slice(&[0, 0, 7, 0xfe]);
    w.commit(&work, "assets/blob.bin", &blob, "asset");
    refused(&w, &work, &["origin", "bot/x"], &["assets/blob.bin:1 aws-access-key-id"]);
    reset(&w);

    // Several at once: every finding is listed.
    w.commit(&work, "a.txt", GHP.as_bytes(), "a");
    w.commit(&work, "b.txt", AKIA.as_bytes(), "b");
    refused(&w, &work, &["origin", "bot/x"], &["2 secrets", "a.txt:1 github-ghp", "b.txt:1 aws-access-key-id"]);

    let audit = w.audit();
    let denied: Vec<_> = audit.iter().filter(|e| e["op"] == "push" && e["decision"] == "deny").collect();
    assert_eq!(denied.len(), 6, "{audit:?}");
    assert_eq!(denied[5]["findings"], 2);
    let log = std::fs::read_to_string(w.path("state/audit.jsonl")).expect("audit");
    assert!(!log.contains(GHP) && !log.contains(AKIA), "the audit log holds no secret");
    assert_eq!(w.gate.report().refused.len(), 6);
}

#[test]
fn force_pushes_deletions_and_branches_outside_the_globs_are_refused() {
    let Some(w) = world() else { return };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/x"]));
    w.commit(&work, "a", b"a\n", "a");
    assert!(w.push(&work, &["origin", "bot/x"]).0);
    // Rewrite and force.
    ok(&mut w.in_dir(&work, &["commit", "-q", "--amend", "-m", "rewritten"]));
    refused(&w, &work, &["--force", "origin", "bot/x"], &["not a fast-forward", "force-push"]);
    refused(&w, &work, &["origin", "--delete", "bot/x"], &["deleting a branch is not allowed"]);
    refused(&w, &work, &["origin", "HEAD:main"], &["takes only the branches `bot/*`"]);
    refused(&w, &work, &["origin", "HEAD:refs/tags/v1"], &["only branches"]);
    refused(&w, &work, &["origin", "HEAD:bot/deep/er"], &["takes only the branches"]);
}

#[test]
fn a_repository_may_allow_force_pushes_and_deletions() {
    let Some(w) = World::new(Opts { allow_force_push: true, allow_delete: true, ..Opts::default() }) else { return };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/x"]));
    w.commit(&work, "a", b"a\n", "a");
    assert!(w.push(&work, &["origin", "bot/x"]).0);
    ok(&mut w.in_dir(&work, &["commit", "-q", "--amend", "-m", "rewritten"]));
    let (pushed, out) = w.push(&work, &["--force", "origin", "bot/x"]);
    assert!(pushed, "{out}");
    let head = ok(&mut w.in_dir(&work, &["rev-parse", "HEAD"]));
    assert_eq!(ok(w.git().arg("--git-dir").arg(&w.upstream).args(["rev-parse", "bot/x"])), head);
    let (deleted, out) = w.push(&work, &["origin", "--delete", "bot/x"]);
    assert!(deleted, "{out}");
    assert!(!w.refs(&w.upstream).contains("bot/x"));
}

#[test]
fn a_wrong_host_key_refuses_everything_and_pushes_nothing() {
    let other = tempfile::tempdir().expect("tempdir");
    let wrong = keygen(&other.path().join("k"));
    let Some(w) = World::new(Opts { host_key: Some(wrong), ..Opts::default() }) else { return };
    let before = w.refs(&w.upstream);
    let out =
        super::gate_support::run(w.git().args(["clone", "-q", &format!("{}/app.git", w.gate_url)]).arg(w.path("c")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cloned through a gate pinned to another key");
    assert!(err.contains("Host key verification failed") || err.contains("HOST IDENTIFICATION"), "{err}");
    // A push from a clone made elsewhere fails the same way.
    let work = w.path("direct");
    ok(w.git().arg("clone").arg("-q").arg(&w.upstream).arg(&work));
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/x"]));
    w.commit(&work, "a", b"a\n", "a");
    let (pushed, out) = w.push(&work, &[&format!("{}/app.git", w.gate_url), "bot/x"]);
    assert!(!pushed, "{out}");
    assert_eq!(w.refs(&w.upstream), before, "nothing reached the upstream");
}

#[test]
fn when_the_upstream_is_down_or_refuses_the_push_fails_and_the_gate_keeps_its_refs() {
    let Some(mut w) = world() else { return };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/x"]));
    w.commit(&work, "a", b"a\n", "a");
    // Down.
    w.sshd.stop();
    let out = refused(&w, &work, &["origin", "bot/x"], &["bot-bottle git gate"]);
    assert!(out.contains("upstream"), "{out}");
    w.sshd.restart();
    // Up, but its own hook refuses.
    let hook = w.upstream.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'upstream policy: no pushes today' >&2\nexit 1\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    refused(&w, &work, &["origin", "bot/x"], &["upstream refused the push", "upstream policy: no pushes today"]);
    std::fs::remove_file(&hook).expect("rm");
    // And then it goes through.
    let (pushed, out) = w.push(&work, &["origin", "bot/x"]);
    assert!(pushed, "{out}");
}

#[test]
fn large_chunked_and_gzipped_requests_stream_through() {
    let Some(w) = world() else { return };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/big"]));
    // Random bytes: incompressible, several MiB, so git sends the push
    // chunked (over http.postBuffer).
    let mut data = vec![0u8; 6 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8 | 0x80;
    }
    w.commit(&work, "big.bin", &data, "big");
    ok(&mut w.in_dir(&work, &["-c", "http.postBuffer=65536", "push", "-q", "origin", "bot/big"]));
    let head = ok(&mut w.in_dir(&work, &["rev-parse", "HEAD"]));
    assert_eq!(ok(w.git().arg("--git-dir").arg(&w.upstream).args(["rev-parse", "bot/big"])), head);
    // Many new branches upstream: the fetch asks for each (a request git
    // sends gzipped).
    let main = ok(w.git().arg("--git-dir").arg(&w.upstream).args(["rev-parse", "main"]));
    let mut stream = String::new();
    for i in 0..300 {
        stream.push_str(&format!(
            "commit refs/heads/bot/b{i}\ncommitter A <a@example.com> 0 +0000\ndata {}\nb{i}\nfrom {main}\n\n",
            format!("b{i}\n").len()
        ));
    }
    let mut fi = w.git();
    fi.arg("--git-dir").arg(&w.upstream).args(["fast-import", "--quiet"]).stdin(std::process::Stdio::piped());
    let mut child = fi.spawn().expect("fast-import");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), stream.as_bytes()).expect("write");
    assert!(child.wait().expect("wait").success());
    ok(&mut w.in_dir(&work, &["fetch", "-q", "origin"]));
    assert!(ok(&mut w.in_dir(&work, &["branch", "-r"])).contains("origin/bot/b299"));
}

#[test]
fn secrets_in_file_names_author_fields_and_known_values_are_refused_too() {
    let known = "s3cret-value-the-proxy-injects-0123";
    let Some(w) = World::new(Opts { known_secrets: vec![("API_TOKEN".into(), known.into())], ..Opts::default() })
    else {
        return;
    };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/x"]));
    let base = ok(&mut w.in_dir(&work, &["rev-parse", "HEAD"]));
    w.commit(&work, &format!("keys/{GHP}.txt"), b"nothing here\n", "named");
    refused(&w, &work, &["origin", "bot/x"], &["keys/<ghp_… (40 bytes)>.txt (file name) github-ghp"]);
    // A secret as a branch name: the name would be forwarded. git itself
    // echoes the name the agent pushed; the gate's own lines never do.
    let before = w.refs(&w.upstream);
    let (pushed, out) = w.push(&work, &["origin", &format!("HEAD:bot/{GHP}")]);
    assert!(!pushed && out.contains("bot/<ghp_… (40 bytes)> (ref name) github-ghp"), "{out}");
    assert!(out.lines().filter(|l| l.starts_with("remote:")).all(|l| !l.contains(GHP)), "{out}");
    assert_eq!(w.refs(&w.upstream), before);
    let log = std::fs::read_to_string(w.path("state/audit.jsonl")).expect("audit");
    assert!(!log.contains(GHP), "the audit log names the secret branch: {log}");
    ok(&mut w.in_dir(&work, &["reset", "-q", "--hard", &base]));
    std::fs::write(work.join("n"), "n\n").expect("write");
    ok(&mut w.in_dir(&work, &["add", "."]));
    ok(w.in_dir(&work, &["commit", "-qm", "by"]).env("GIT_AUTHOR_NAME", GHP));
    refused(&w, &work, &["origin", "bot/x"], &["header:3 github-ghp"]);
    ok(&mut w.in_dir(&work, &["reset", "-q", "--hard", &base]));
    // A value the bottle knows (a token the proxy injects), in no known
    // format, and in base64.
    w.commit(&work, "c.txt", format!("x = {known}\n").as_bytes(), "c");
    let out = refused(&w, &work, &["origin", "bot/x"], &["c.txt:1 known-secret:API_TOKEN"]);
    assert!(!out.contains(known), "{out}");
    ok(&mut w.in_dir(&work, &["reset", "-q", "--hard", &base]));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(known);
    w.commit(&work, "d.txt", format!("blob: {b64}\n").as_bytes(), "d");
    refused(&w, &work, &["origin", "bot/x"], &["d.txt:1 known-secret:API_TOKEN"]);
}

#[test]
fn pushes_over_the_size_cap_and_gzip_bombs_are_refused() {
    let Some(w) = World::new(Opts { max_push_bytes: Some(1 << 20), ..Opts::default() }) else { return };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/big"]));
    let mut data = vec![0u8; 3 << 20];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 32) as u8;
    }
    w.commit(&work, "big.bin", &data, "big");
    let before = w.refs(&w.upstream);
    let (pushed, out) = w.push(&work, &["origin", "bot/big"]);
    assert!(!pushed, "{out}");
    assert!(out.contains("413") || out.contains("larger than the gate takes"), "{out}");
    assert_eq!(w.refs(&w.upstream), before);
    // 64 MiB of zeros in a 64 KiB gzip body: refused at the cap, never
    // inflated whole.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        std::io::Write::write_all(&mut enc, &zeros).expect("gzip");
    }
    let bomb = enc.finish().expect("gzip");
    assert!(bomb.len() < 128 << 10);
    std::fs::write(w.path("bomb.gz"), &bomb).expect("write");
    let out = ok(std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/x-git-receive-pack-request",
        ])
        .args(["-H", "Content-Encoding: gzip", "--data-binary"])
        .arg(format!("@{}", w.path("bomb.gz").display()))
        .arg(format!("{}/app.git/git-receive-pack", w.gate_url)));
    assert_eq!(out, "413");
    assert_eq!(w.refs(&w.upstream), before);
}

#[test]
fn a_push_onto_an_upstream_that_moved_since_is_refused_until_the_agent_fetches() {
    let Some(w) = world() else { return };
    let work = w.clone("app", "work");
    ok(&mut w.in_dir(&work, &["checkout", "-qb", "bot/x"]));
    w.commit(&work, "a", b"a\n", "a");
    assert!(w.push(&work, &["origin", "bot/x"]).0);
    // Someone else moves bot/x upstream; the gate's copy does not know.
    let other = w.path("other");
    ok(w.git().arg("clone").arg("-q").args(["-b", "bot/x"]).arg(&w.upstream).arg(&other));
    let theirs = w.commit(&other, "b", b"b\n", "theirs");
    ok(&mut w.in_dir(&other, &["push", "-q", "origin", "bot/x"]));
    // The agent's fast-forward of the old tip is not one of theirs.
    w.commit(&work, "c", b"c\n", "ours");
    let out = refused(&w, &work, &["origin", "bot/x"], &["upstream refused the push"]);
    assert!(out.contains("stale info") || out.contains("rejected"), "{out}");
    assert_eq!(ok(w.git().arg("--git-dir").arg(&w.upstream).args(["rev-parse", "bot/x"])), theirs);
    // Fetch, rebase, push: through.
    ok(&mut w.in_dir(&work, &["pull", "-q", "--rebase", "origin", "bot/x"]));
    let (pushed, out) = w.push(&work, &["origin", "bot/x"]);
    assert!(pushed, "{out}");
}

#[test]
fn local_shows_no_bottles_branches_and_checks_a_push_against_the_project_as_it_is_now() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    ok(super::gate_support::git(&home).args(["init", "-q", "-b", "main"]).arg(&project));
    std::fs::write(project.join("a"), "a\n").expect("write");
    ok(super::gate_support::git(&home).arg("-C").arg(&project).args(["add", "."]));
    ok(super::gate_support::git(&home).arg("-C").arg(&project).args(["commit", "-qm", "a"]));
    ok(super::gate_support::git(&home).arg("-C").arg(&project).args(["branch", "bot-bottle/other-1/main"]));
    let Some(w) = World::new(Opts { local: Some(project.clone()), ..Opts::default() }) else { return };
    let in_project = |args: &[&str]| ok(super::gate_support::git(&home).arg("-C").arg(&project).args(args));
    let work = w.clone("local", "work");
    assert_eq!(ok(&mut w.in_dir(&work, &["branch", "-r"])), "origin/HEAD -> origin/main\n  origin/main");
    w.commit(&work, "b", b"b\n", "b");
    assert!(w.push(&work, &["origin", "main"]).0);
    let first = ok(&mut w.in_dir(&work, &["rev-parse", "HEAD"]));
    assert_eq!(in_project(&["rev-parse", "bot-bottle/bottle-1/main"]), first);
    // The user deletes the landed branch; the next push creates it again
    // rather than being checked against what the gate saw before.
    in_project(&["branch", "-D", "bot-bottle/bottle-1/main"]);
    let second = w.commit(&work, "c", b"c\n", "c");
    let (pushed, out) = w.push(&work, &["origin", "main"]);
    assert!(pushed, "{out}");
    assert!(out.contains("landed as bot-bottle/bottle-1/main"), "{out}");
    assert_eq!(in_project(&["rev-parse", "bot-bottle/bottle-1/main"]), second);
    // The project's own main never moved, and a fetch shows it so.
    ok(&mut w.in_dir(&work, &["fetch", "-q", "origin"]));
    assert_eq!(in_project(&["rev-parse", "main"]), ok(&mut w.in_dir(&work, &["rev-parse", "origin/main"])));
    assert_ne!(in_project(&["rev-parse", "main"]), second);
    assert_eq!(w.gate.report().landed.len(), 1);
}
