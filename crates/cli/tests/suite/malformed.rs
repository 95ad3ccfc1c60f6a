//! Every malformed manifest case exits 2 from the CLI, for both `start
//! --dry-run` and `manifest check`, creates nothing and leaks no secret.

use super::cases::{load_all, tree};
use super::cli::Env;

#[test]
fn malformed_manifests_exit_2_and_create_nothing() {
    let cases = load_all("malformed");
    assert!(cases.len() >= 30);
    for case in &cases {
        let env = Env::new();
        let project_dir = tempfile::tempdir().expect("tempdir");
        let project = project_dir.path().to_path_buf();
        let m = case.materialize(&project);
        let before = tree(&project);
        let agent = case.start[0].as_str();
        for args in [&["start", agent, "--dry-run", "--format", "json"][..], &["start", agent], &["manifest", "check"]]
        {
            let r = env.run(&project, args, &[]);
            assert_eq!(r.code, 2, "{} {args:?}:\n{}\n{}", case.name, r.stdout, r.stderr);
            assert!(r.stderr.contains("error"), "{}: {}", case.name, r.stderr);
            assert!(r.stderr.contains(".bot-bottle/"), "{}: errors name the file: {}", case.name, r.stderr);
            for s in &case.secrets {
                assert!(!r.stdout.contains(s.as_str()) && !r.stderr.contains(s.as_str()), "{}: leaked", case.name);
            }
        }
        assert_eq!(tree(&project), before, "{}: the manifest tree changed", case.name);
        assert!(env.written().is_empty(), "{}: wrote {:?}", case.name, env.written());
        let _ = m;
    }
}
