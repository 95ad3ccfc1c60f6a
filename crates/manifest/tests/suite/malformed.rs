//! Malformed manifests: each reports its problems with file, line, column,
//! the source line and a fix; none leaks a secret.

use std::path::Path;

use bot_bottle_manifest::{Manifest, Request};

use super::cases::load_all;

#[test]
fn malformed_manifests_report_located_errors() {
    let cases = load_all("malformed");
    assert!(cases.len() >= 30, "at least 30 malformed cases");
    for case in &cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = case.materialize(tmp.path());
        let m = Manifest::load(&root, Some(Path::new("/home/user"))).expect("load");
        let diags = m.check();
        assert!(diags.has_errors(), "{}: expected errors", case.name);
        for d in diags.errors() {
            assert!(d.line >= 1 && d.column >= 1, "{}: {d:?}", case.name);
            assert!(d.help.is_some(), "{}: every error says what to do: {d:?}", case.name);
        }
        let rendered: Vec<String> = diags.0.iter().map(|d| d.clone().relative_to(tmp.path()).to_string()).collect();
        let rendered = rendered.join("\n").replace(&tmp.path().display().to_string(), "[TMP]");
        for s in &case.secrets {
            assert!(!rendered.contains(s.as_str()), "{}: secret leaked:\n{rendered}", case.name);
        }
        // Resolving the agent that uses the bad file fails the same way.
        let req = Request { agent: case.start[0].clone(), ..Request::default() };
        let err = m.resolve(&req, &|_| false).expect_err(&case.name);
        for s in &case.secrets {
            assert!(!format!("{err:?}").contains(s.as_str()), "{}: secret leaked in resolve error", case.name);
        }
        insta::assert_snapshot!(format!("malformed-{}", case.name), rendered);
    }
}

#[test]
fn symlinked_skill_folders_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = tmp.path().join(".bot-bottle");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("SKILL.md"), "x").expect("write");
    std::fs::create_dir_all(m.join("skills")).expect("mkdir");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, m.join("skills/linked")).expect("symlink");
    std::fs::write(m.join("agents/a.md"), "---\nprovider: claude\nbottle: dev\nskills: [linked]\n---\nGo.\n")
        .expect("write");
    std::fs::write(m.join("bottles/dev.yaml"), "{}\n").expect("write");
    let manifest = Manifest::load(&m, None).expect("load");
    let diags = manifest.check();
    assert!(diags.errors().any(|d| d.message.contains("is a symlink")), "{}", diags.render());
    let err = manifest.resolve(&Request { agent: "a".into(), ..Request::default() }, &|_| true);
    assert!(err.is_err(), "an agent using a symlinked skill must not resolve");
}
