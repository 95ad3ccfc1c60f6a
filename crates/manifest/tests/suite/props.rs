//! Properties: the loader never panics on any input, and merging is the
//! same whether layers arrive as an `extends:` chain, an `extends:` list or
//! launch-time `--bottle` flags, however they are grouped.

use std::path::Path;

use bot_bottle_manifest::{Manifest, Plan, Request};
use proptest::prelude::*;

use super::cases::load_all;

fn load_text(bottle: &str, agent: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = tmp.path().join("m");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::write(m.join("bottles/b.yaml"), bottle).expect("write");
    std::fs::write(m.join("agents/a.md"), agent).expect("write");
    let manifest = Manifest::load(&m, Some(Path::new("/home/u"))).expect("load");
    let _ = manifest.check().render();
    let _ = manifest.listing();
    let _ = manifest.resolve(&Request { agent: "a".into(), ..Request::default() }, &|_| true);
    let _ =
        manifest.resolve(&Request { agent: "a".into(), bottles: vec!["b".into()], ..Request::default() }, &|_| true);
}

fn valid_texts() -> Vec<String> {
    load_all("plans")
        .into_iter()
        .chain(load_all("malformed"))
        .flat_map(|c| c.files.into_iter().map(|(_, t)| t))
        .collect()
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, char),
    Swap(usize, usize),
    Truncate(usize),
}

fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let n = chars.len().max(1);
        match *e {
            Edit::Delete(i) if !chars.is_empty() => {
                chars.remove(i % n);
            }
            Edit::Insert(i, c) => chars.insert(i % (chars.len() + 1), c),
            Edit::Swap(i, j) if !chars.is_empty() => chars.swap(i % n, j % n),
            Edit::Truncate(i) => chars.truncate(i % (chars.len() + 1)),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop::sample::select(vec![
        ':', '-', ' ', '\n', '[', ']', '{', '}', '"', '\'', '&', '*', '!', '|', '>', '#', '\t', 'x', '0', '~', '%',
        '@', '?', ',', 'é',
    ]);
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), ch).prop_map(|(i, c)| Edit::Insert(i, c)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_input_never_panics(bottle in ".{0,200}", agent in ".{0,200}") {
        load_text(&bottle, &agent);
        load_text(&bottle, &format!("---\n{agent}\n---\nbody"));
    }

    #[test]
    fn mutated_manifests_never_panic(i in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..8)) {
        let texts = valid_texts();
        let text = i.get(&texts);
        let mutated = mutate(text, &edits);
        load_text(&mutated, &format!("---\nprovider: claude\nbottle: b\n---\n{mutated}"));
        load_text("{}", &format!("---\n{mutated}\n---\n"));
    }

    #[test]
    fn chain_list_and_flags_merge_alike(layers in prop::collection::vec(layer(), 3)) {
        let (a, b, c) = (&layers[0], &layers[1], &layers[2]);
        // a <- b <- c as an extends chain.
        let chain = plan(&[("a", a.clone()), ("b", format!("extends: a\n{b}")), ("c", format!("extends: b\n{c}"))], &["c"]);
        // The same layers as launch-time flags.
        let flags = plan(&[("a", a.clone()), ("b", b.clone()), ("c", c.clone())], &["a", "b", "c"]);
        // Grouped left: (a b) c.
        let left = plan(&[("a", a.clone()), ("b", b.clone()), ("ab", "extends: [a, b]\n".into()), ("c", c.clone())], &["ab", "c"]);
        // Grouped right: a (b c).
        let right = plan(&[("a", a.clone()), ("b", b.clone()), ("c", c.clone()), ("bc", "extends: [b, c]\n".into())], &["a", "bc"]);
        prop_assert_eq!(&chain, &flags);
        prop_assert_eq!(&left, &flags);
        prop_assert_eq!(&right, &flags);
    }
}

/// Resolves `--bottle` flags over the given bottles; returns the merged
/// content (everything but the lineage and file paths).
fn plan(bottles: &[(&str, String)], select: &[&str]) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = tmp.path();
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    for (name, text) in bottles {
        std::fs::write(m.join(format!("bottles/{name}.yaml")), text).expect("write");
    }
    std::fs::write(m.join("agents/x.md"), "---\nprovider: claude\n---\nGo.\n").expect("write");
    let manifest = Manifest::load(m, Some(Path::new("/home/u"))).expect("load");
    let req =
        Request { agent: "x".into(), bottles: select.iter().map(|s| s.to_string()).collect(), ..Request::default() };
    let p: Plan = manifest.resolve(&req, &|_| true).unwrap_or_else(|e| panic!("{e:?}\n{bottles:?}"));
    serde_json::to_string(&(
        p.backend,
        p.image,
        p.workspace,
        p.workspace_include_ignored,
        p.resources,
        p.env,
        p.egress,
        p.git_gate,
        p.supervise,
    ))
    .expect("json")
}

/// A random bottle layer from a small vocabulary, so that layers collide on
/// keys (hosts, env names, repos) often enough to exercise replacement.
fn layer() -> impl Strategy<Value = String> {
    let host = prop::sample::select(vec!["a.example.com", "b.example.com", "*.example.org", "c.example.com:8443"]);
    let method = prop::sample::select(vec!["GET", "POST", "PUT"]);
    let route = (host, prop::collection::vec(method, 0..3)).prop_map(|(h, ms)| {
        let mut ms = ms;
        ms.dedup();
        let ms: Vec<&str> = ms.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        format!("    - {{ host: \"{h}\", methods: [{}] }}\n", ms.join(", "))
    });
    let env = (prop::sample::select(vec!["A", "B", "C"]), prop::sample::select(vec!["1", "2", "3"]));
    let repo = (prop::sample::select(vec!["app", "lib"]), prop::sample::select(vec!["org/x.git", "org/y.git"]));
    (
        prop::option::of(prop::sample::select(vec!["native", "docker", "smolmachines"])),
        prop::option::of(prop::sample::select(vec!["copy", "mount", "none"])),
        prop::collection::btree_map(env.0, env.1, 0..3),
        prop::option::of(1u32..8),
        prop::option::of(16u32..100),
        prop::collection::vec(route, 0..3),
        prop::collection::btree_map(repo.0, repo.1, 0..2),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::sample::select(vec!["block", "log"])),
        (
            prop::option::of(prop::sample::select(vec!["node:22-slim", "debian:12"])),
            prop::option::of(prop::sample::select(vec!["Bot A", "Bot B"])),
            prop::option::of(prop::sample::select(vec!["a@example.com", "b@example.com"])),
            prop::collection::btree_set(prop::sample::select(vec![".env.example", "vendor/", "!vendor/", "*.pem"]), 0..3),
        ),
    )
        .prop_map(|(backend, ws, env, cpus, pids, routes, repos, supervise, dlp, (image, user, email, include))| {
            let mut s = String::new();
            if let Some(i) = image {
                s += &format!("image: \"{i}\"\n");
            }
            if let Some(b) = backend {
                s += &format!("backend: {b}\n");
            }
            // Patterns only where this layer's mode is a copy (elsewhere they
            // are an error in the same file).
            let include: Vec<String> = include.into_iter().map(|p| format!("\"{p}\"")).collect();
            match ws {
                Some(w) if w != "copy" || include.is_empty() => s += &format!("workspace: {w}\n"),
                Some(w) => s += &format!("workspace: {{ mode: {w}, include-ignored: [{}] }}\n", include.join(", ")),
                None if !include.is_empty() => {
                    s += &format!("workspace: {{ include-ignored: [{}] }}\n", include.join(", "))
                }
                _ => {}
            }
            if !env.is_empty() {
                s += "env:\n";
                for (k, v) in env {
                    s += &format!("  {k}: \"{v}\"\n");
                }
            }
            s += "resources: {";
            let mut parts = Vec::new();
            if let Some(c) = cpus {
                parts.push(format!("cpus: {c}"));
            }
            if let Some(p) = pids {
                parts.push(format!("pids: {p}"));
            }
            s += &parts.join(", ");
            s += "}\n";
            // One route per host within a layer.
            let mut seen = std::collections::HashSet::new();
            let routes: Vec<String> = routes.into_iter().filter(|r| seen.insert(r.split('"').nth(1).map(str::to_owned))).collect();
            s += "egress:\n  routes:\n";
            if routes.is_empty() {
                s += "    []\n";
            }
            for r in routes {
                s += &r;
            }
            if let Some(d) = dlp {
                s += &format!("  dlp: {{ mode: {d} }}\n");
            }
            s += "git-gate:\n  user: {";
            let mut u = Vec::new();
            if let Some(n) = user {
                u.push(format!("name: {n}"));
            }
            if let Some(e) = email {
                u.push(format!("email: {e}"));
            }
            s += &u.join(", ");
            s += "}\n";
            if !repos.is_empty() {
                s += "  repos:\n";
                for (name, path) in repos {
                    s += &format!("    {name}:\n      url: https://git.example.com/{path}\n      key: {{ provider: token, env: T_{name} }}\n");
                }
            }
            if let Some(v) = supervise {
                s += &format!("supervise: {v}\n");
            }
            s
        })
}
