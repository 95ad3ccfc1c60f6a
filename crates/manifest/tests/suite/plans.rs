//! Resolved plans for every merge rule, as snapshots.

use std::path::Path;

use bot_bottle_manifest::{BackendKind, DockerRuntime, Manifest, Request};

use super::cases::{Case, load_all};

/// Turns a case's `# start:` words into a request, the way the CLI would.
fn request(case: &Case) -> Request {
    let mut req = Request::default();
    let mut words = case.start.iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "--bottle" => req.bottles.push(words.next().expect("bottle name").clone()),
            "--backend" => req.backend = BackendKind::parse(words.next().expect("backend")),
            "--runtime" => req.runtime = DockerRuntime::parse(words.next().expect("runtime")),
            "--" => req.args = words.by_ref().cloned().collect(),
            agent => req.agent = agent.to_owned(),
        }
    }
    req
}

pub(crate) fn plan_json(case: &Case) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = case.materialize(tmp.path());
    let m = Manifest::load(&root, Some(Path::new("/home/user"))).expect("load");
    let set = |name: &str| case.env.iter().any(|e| e == name);
    let plan = m.resolve(&request(case), &set).unwrap_or_else(|e| panic!("{}: {e}\n{e:?}", case.name));
    let json = serde_json::to_string_pretty(&plan).expect("json");
    json.replace(&root.display().to_string(), "[MANIFEST]")
}

#[test]
fn plans() {
    let cases = load_all("plans");
    assert!(cases.len() >= 15, "at least 15 plan cases");
    for case in &cases {
        insta::assert_snapshot!(format!("plan-{}", case.name), plan_json(case));
    }
}

#[test]
fn plans_are_deterministic() {
    for case in load_all("plans") {
        assert_eq!(plan_json(&case), plan_json(&case), "{}", case.name);
    }
}
