//! Grants "for good": an approved route written into the bottle's manifest
//! file, so the next start has it. The YAML text is edited (a route entry
//! appended to `egress.routes`), never re-serialized, so comments and
//! formatting stay; the result is parsed and must equal the old document
//! with that one route added, or nothing is written.

use std::path::{Path, PathBuf};

use bot_bottle_manifest::{BackendKind, DockerRuntime, Manifest, Request, WorkspaceMode};
use bot_bottle_sidecars::RouteSpec;
use serde_yaml::Value;

use crate::{Failure, failure, usage};

/// Writes `route` into the manifest file of bottle `slug`'s selected bottle.
/// Refuses a file the agent could write (a `workspace: mount` of a project
/// holding it). Returns the file written.
pub(crate) fn persist(slug: &str, route: &RouteSpec) -> Result<PathBuf, Failure> {
    let (file, new) = edited(slug, route)?;
    let io = |e: std::io::Error| failure(format!("error: writing {}: {e}", file.display()));
    let tmp = file.with_extension("yaml.bot-bottle-tmp");
    std::fs::write(&tmp, new).map_err(io)?;
    let perms = std::fs::metadata(&file).map_err(io)?.permissions();
    std::fs::set_permissions(&tmp, perms).map_err(io)?;
    std::fs::rename(&tmp, &file).map_err(io)?;
    Ok(file)
}

/// Checks that `route` can be written for `slug`, writing nothing.
pub(crate) fn check(slug: &str, route: &RouteSpec) -> Result<(), Failure> {
    edited(slug, route).map(drop)
}

/// The manifest file and its text with `route` added.
fn edited(slug: &str, route: &RouteSpec) -> Result<(PathBuf, String), Failure> {
    let file = target(slug)?;
    let text =
        std::fs::read_to_string(&file).map_err(|e| failure(format!("error: reading {}: {e}", file.display())))?;
    let new = append_route(&text, route).map_err(|e| {
        usage(format!("error: cannot add the route to {}: {e}; add it under egress.routes by hand", file.display()))
    })?;
    Ok((file, new))
}

/// The file to write: the last bottle the agent's request selected, as the
/// manifest resolves today.
fn target(slug: &str) -> Result<PathBuf, Failure> {
    let (_, meta) = crate::bottles::find(slug)?;
    let r = &meta.request;
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let manifest = Manifest::load(&r.manifest, home.as_deref())
        .map_err(|e| usage(format!("error: {}", crate::requests::chain(&e))))?;
    let req = Request {
        agent: r.agent.clone(),
        bottles: r.bottles.clone(),
        backend: r.backend.as_deref().and_then(BackendKind::parse),
        runtime: r.runtime.as_deref().and_then(DockerRuntime::parse),
        args: r.args.clone(),
    };
    let is_set = crate::credentials::is_set;
    let plan = manifest
        .resolve(&req, &is_set)
        .map_err(|e| usage(format!("error: the manifest no longer resolves for `{slug}`: {e}")))?;
    let name = plan.bottle.selected.last().ok_or_else(|| usage(format!("error: `{slug}` has no bottle file")))?;
    let i = plan.bottle.lineage.iter().position(|n| n == name);
    let file = i
        .and_then(|i| plan.bottle.files.get(i))
        .cloned()
        .ok_or_else(|| usage(format!("error: no file for bottle `{name}`")))?;
    // Checked again here, not only at start: the layout may have changed.
    if plan.workspace == WorkspaceMode::Mount && inside(&file, &r.project) {
        return Err(usage(format!(
            "error: {} is inside the project {}, which `workspace: mount` lets the agent write; \
             refusing to widen egress through a file the agent controls",
            file.display(),
            r.project.display()
        )));
    }
    Ok(file)
}

fn inside(file: &Path, dir: &Path) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    real(file).starts_with(real(dir))
}

/// `text` with `route` appended to `egress.routes` (both created when
/// absent), as text. Flow-style (`routes: [...]`) or otherwise unusual
/// layouts are refused rather than guessed at.
pub(crate) fn append_route(text: &str, route: &RouteSpec) -> Result<String, String> {
    let before: Value = serde_yaml::from_str(text).map_err(|e| format!("it does not parse: {e}"))?;
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let content = |l: &&str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    let egress = lines.iter().position(|l| indent(l) == 0 && key(l, "egress").is_some());
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    match egress {
        None => {
            out.push("egress:".into());
            out.push("  routes:".into());
            out.extend(entry(route, 4));
        }
        Some(e) => {
            if !key(lines[e], "egress").is_some_and(|rest| rest.is_empty() || rest.starts_with('#')) {
                return Err("`egress:` is not a block mapping".into());
            }
            // The egress block: the lines after it, up to the next top-level key.
            let end =
                (e + 1..lines.len()).find(|&i| content(&lines[i]) && indent(lines[i]) == 0).unwrap_or(lines.len());
            let child = (e + 1..end).find(|&i| content(&lines[i])).map_or(2, |i| indent(lines[i]));
            let routes = (e + 1..end).find(|&i| indent(lines[i]) == child && key(lines[i], "routes").is_some());
            match routes {
                None => {
                    let mut add = vec![format!("{}routes:", " ".repeat(child))];
                    add.extend(entry(route, child + 2));
                    out.splice(e + 1..e + 1, add);
                }
                Some(r) => {
                    if !key(lines[r], "routes").is_some_and(|rest| rest.is_empty() || rest.starts_with('#')) {
                        return Err("`routes:` is not a block list".into());
                    }
                    // The list: deeper lines (or `- ` at the same indentation).
                    let item = |l: &str| indent(l) > child || (indent(l) == child && l.trim_start().starts_with("- "));
                    let last = (r + 1..end)
                        .take_while(|&i| !content(&lines[i]) || item(lines[i]))
                        .filter(|&i| content(&lines[i]))
                        .last();
                    let dash = (r + 1..end)
                        .find(|&i| content(&lines[i]) && lines[i].trim_start().starts_with("- "))
                        .map_or(child + 2, |i| indent(lines[i]));
                    out.splice(last.unwrap_or(r) + 1..last.unwrap_or(r) + 1, entry(route, dash));
                }
            }
        }
    }
    let mut new = out.join("\n");
    new.push('\n');
    // The edit must be exactly "one more route".
    let after: Value = serde_yaml::from_str(&new).map_err(|e| format!("the edit would not parse: {e}"))?;
    let mut expect = before;
    if !expect.is_mapping() {
        expect = Value::Mapping(Default::default());
    }
    let eg = expect
        .as_mapping_mut()
        .map(|m| m.entry("egress".into()).or_insert_with(|| Value::Mapping(Default::default())))
        .filter(|v| v.is_mapping() || v.is_null());
    let Some(eg) = eg else { return Err("`egress` is not a mapping".into()) };
    if eg.is_null() {
        *eg = Value::Mapping(Default::default());
    }
    let routes = eg.as_mapping_mut().map(|m| m.entry("routes".into()).or_insert_with(|| Value::Sequence(vec![])));
    match routes {
        Some(Value::Sequence(v)) => v.push(serde_yaml::to_value(route).map_err(|e| e.to_string())?),
        Some(v @ Value::Null) => *v = Value::Sequence(vec![serde_yaml::to_value(route).map_err(|e| e.to_string())?]),
        _ => return Err("`egress.routes` is not a list".into()),
    }
    if after != expect {
        return Err("its layout is not one this edit understands".into());
    }
    Ok(new)
}

/// The rest of line `l` after the mapping key `k:`, if it is that key.
fn key<'a>(l: &'a str, k: &str) -> Option<&'a str> {
    l.trim_start().strip_prefix(k).and_then(|r| r.strip_prefix(':')).map(str::trim)
}

/// The route as block YAML at `dash` columns.
fn entry(r: &RouteSpec, dash: usize) -> Vec<String> {
    let pad = " ".repeat(dash);
    let list = |v: &[String]| format!("[{}]", v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "));
    let mut v = vec![format!("{pad}- host: {}", quote(&r.host))];
    if !r.paths.is_empty() {
        v.push(format!("{pad}  paths: {}", list(&r.paths)));
    }
    if !r.methods.is_empty() {
        v.push(format!("{pad}  methods: {}", list(&r.methods)));
    }
    v
}

/// A YAML double-quoted scalar (JSON's escaping is valid YAML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str) -> RouteSpec {
        RouteSpec { host: host.into(), paths: vec!["/v1".into()], methods: vec!["GET".into()] }
    }

    #[test]
    fn appends_to_an_existing_list_keeping_comments() {
        let text = "# my bottle\nbackend: native   # fast\negress:\n  # the APIs\n  routes:\n    - host: a.example  # first\n      methods: [GET]\n\n    - host: b.example\nenv: { A: \"1\" }\n";
        let new = append_route(text, &r("c.example")).expect("edit");
        assert_eq!(
            new,
            "# my bottle\nbackend: native   # fast\negress:\n  # the APIs\n  routes:\n    - host: a.example  # first\n      methods: [GET]\n\n    - host: b.example\n    - host: \"c.example\"\n      paths: [\"/v1\"]\n      methods: [\"GET\"]\nenv: { A: \"1\" }\n"
        );
    }

    #[test]
    fn creates_egress_and_routes_when_absent() {
        assert_eq!(
            append_route("backend: native\n", &r("c.example")).expect("edit"),
            "backend: native\negress:\n  routes:\n    - host: \"c.example\"\n      paths: [\"/v1\"]\n      methods: [\"GET\"]\n"
        );
        let new =
            append_route("egress:\n    mode: x\nenv: {}\n", &RouteSpec { host: "h".into(), ..Default::default() });
        assert_eq!(new.expect("edit"), "egress:\n    routes:\n      - host: \"h\"\n    mode: x\nenv: {}\n");
        // A list at the key's own indentation.
        let new =
            append_route("egress:\n  routes:\n  - host: a\n", &RouteSpec { host: "h".into(), ..Default::default() });
        assert_eq!(new.expect("edit"), "egress:\n  routes:\n  - host: a\n  - host: \"h\"\n");
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for text in ["egress: { routes: [] }\n", "egress:\n  routes: []\n", "egress:\n  routes: &x\n    - host: a\n"] {
            assert!(append_route(text, &r("c.example")).is_err(), "{text}");
        }
    }
}
