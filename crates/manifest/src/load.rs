//! Loading a manifest directory: every agent, bottle and skill in it, each
//! checked on its own, then the references between them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Diagnostics, Severity, Source};
use crate::model::{Provider, check_name};
use crate::schema::{self, AgentHead, BottleFile, Checker, NameRef, suggest};
use crate::yaml::{self, Pos, Target, YamlPath, locate_or_parent};

/// Failures to read the manifest directory itself (not problems inside it,
/// which are [`Diagnostics`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read manifest directory {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The text of one manifest file, kept so that cross-file errors can quote it.
#[derive(Debug, Clone)]
pub(crate) struct FileText {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    /// Byte range of the YAML part and the line it starts after.
    yaml: std::ops::Range<usize>,
    line_offset: usize,
}

impl FileText {
    pub(crate) fn source(&self) -> Source<'_> {
        Source {
            path: &self.path,
            full_text: &self.text,
            yaml: &self.text[self.yaml.clone()],
            line_offset: self.line_offset,
        }
    }

    /// A diagnostic at a path inside this file's YAML.
    pub(crate) fn diag(&self, sev: Severity, path: &YamlPath, message: String, help: Option<String>) -> Diagnostic {
        let src = self.source();
        let pos = locate_or_parent(src.yaml, path, Target::Value);
        src.diag(sev, pos, message, help, false)
    }

    /// Parses the YAML part; a syntax error becomes a located diagnostic.
    fn parse(&self, what: &str) -> Result<serde_yaml::Value, Box<Diagnostic>> {
        let src = self.source();
        yaml::parse(src.yaml).map_err(|e| {
            Box::new(src.diag(
                Severity::Error,
                e.pos,
                format!("invalid YAML{what}: {}", e.message),
                Some("fix the YAML syntax".into()),
                false,
            ))
        })
    }

    fn whole_file(&self, sev: Severity, message: String, help: Option<String>) -> Diagnostic {
        self.source().diag(sev, Pos { line: 1, column: 1 }, message, help, false)
    }
}

#[derive(Debug)]
pub(crate) struct AgentEntry {
    pub(crate) file: FileText,
    /// `None` when the file could not be parsed at all.
    pub(crate) head: Option<AgentHead>,
    /// The line the prompt body starts on, and its length in bytes.
    pub(crate) prompt_line: usize,
    pub(crate) prompt_bytes: usize,
    pub(crate) diags: Vec<Diagnostic>,
}

#[derive(Debug)]
pub(crate) struct BottleEntry {
    pub(crate) file: FileText,
    pub(crate) body: Option<BottleFile>,
    pub(crate) diags: Vec<Diagnostic>,
}

#[derive(Debug)]
pub(crate) struct SkillEntry {
    pub(crate) dir: PathBuf,
    /// Files in the skill folder, relative to it, sorted.
    pub(crate) files: Vec<String>,
    pub(crate) diags: Vec<Diagnostic>,
}

/// A loaded manifest directory. Loading never fails on bad content: every
/// problem is kept as a diagnostic on the file it belongs to, so `check`
/// can report them all and `resolve` only those it depends on.
#[derive(Debug)]
pub struct Manifest {
    pub(crate) root: PathBuf,
    pub(crate) agents: BTreeMap<String, AgentEntry>,
    pub(crate) bottles: BTreeMap<String, BottleEntry>,
    pub(crate) skills: BTreeMap<String, SkillEntry>,
    /// Problems with the directory layout itself (duplicate or bad names).
    pub(crate) layout: Vec<Diagnostic>,
}

impl Manifest {
    /// Reads and checks every file under `root`. `home` expands `~` in paths;
    /// nothing else is read from the environment.
    pub fn load(root: &Path, home: Option<&Path>) -> Result<Manifest, LoadError> {
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LoadError::Read { path, source }
        };
        fs::read_dir(root).map_err(read_err(root))?;
        let mut m = Manifest {
            root: root.to_path_buf(),
            agents: BTreeMap::new(),
            bottles: BTreeMap::new(),
            skills: BTreeMap::new(),
            layout: Vec::new(),
        };
        for (name, path) in m.list(&root.join("agents"), &["md"])? {
            let entry = load_agent(path);
            m.agents.insert(name, entry);
        }
        for (name, path) in m.list(&root.join("bottles"), &["yaml", "yml"])? {
            let entry = load_bottle(path, root, home);
            m.bottles.insert(name, entry);
        }
        let skills_dir = root.join("skills");
        if skills_dir.is_dir() {
            for e in sorted_entries(&skills_dir)? {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(ft) = e.file_type() else { continue };
                if name.starts_with('.') || !(ft.is_dir() || ft.is_symlink()) {
                    continue;
                }
                // A skill's files are copied into the bottle; a symlinked
                // folder could pull any host directory in with them.
                if ft.is_symlink() {
                    m.layout.push(path_diag(
                        &e.path(),
                        format!("skill folder `{name}` is a symlink"),
                        Some("copy the skill into the manifest's skills/ folder; links are not followed".into()),
                    ));
                    continue;
                }
                let mut skill = SkillEntry { dir: e.path(), files: list_files(&e.path()), diags: Vec::new() };
                if let Err(inv) = check_name(&name) {
                    skill.diags.push(path_diag(&e.path(), inv.message, inv.help));
                }
                if !skill.files.iter().any(|f| f == "SKILL.md") {
                    skill.diags.push(path_diag(
                        &e.path(),
                        format!("skill `{name}` has no SKILL.md"),
                        Some(format!("add {}/SKILL.md describing the skill", e.path().display())),
                    ));
                }
                m.skills.insert(name, skill);
            }
        }
        Ok(m)
    }

    /// Lists `dir`'s files with one of `exts`, by name; records bad and
    /// duplicate names as layout errors.
    fn list(&mut self, dir: &Path, exts: &[&str]) -> Result<Vec<(String, PathBuf)>, LoadError> {
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for e in sorted_entries(dir)? {
            let path = e.path();
            let file_name = e.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || path.is_dir() {
                continue;
            }
            let Some((stem, ext)) = file_name.rsplit_once('.').filter(|(_, ext)| exts.contains(ext)) else {
                self.layout.push(path_diag_sev(
                    Severity::Warning,
                    &path,
                    format!("ignored `{file_name}`"),
                    Some(format!("files here end in .{}", exts.join(" or ."))),
                ));
                continue;
            };
            if let Err(inv) = check_name(stem) {
                self.layout.push(path_diag(&path, inv.message, inv.help));
                continue;
            }
            if let Some((_, first)) = out.iter().find(|(n, _)| n == stem) {
                self.layout.push(path_diag(
                    &path,
                    format!("duplicate name `{stem}`: also defined by {}", first.display()),
                    Some(format!("rename or remove one of them (this one is .{ext})")),
                ));
                continue;
            }
            out.push((stem.to_owned(), path));
        }
        Ok(out)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every diagnostic in the directory: each file's own, then the
    /// references between files (missing parents and skills, cycles).
    pub fn check(&self) -> Diagnostics {
        let mut all = Diagnostics(self.layout.clone());
        for a in self.agents.values() {
            all.0.extend(a.diags.iter().cloned());
            if let Some(head) = &a.head {
                all.0.extend(self.agent_refs(a, head));
            }
        }
        for b in self.bottles.values() {
            all.0.extend(b.diags.iter().cloned());
        }
        for s in self.skills.values() {
            all.0.extend(s.diags.iter().cloned());
        }
        for name in self.bottles.keys() {
            let mut lin = Linearized::default();
            self.linearize(name, &mut Vec::new(), &mut lin);
            all.0.extend(lin.diags);
        }
        all.sort();
        all
    }

    /// Errors in an agent's references to bottles and skills.
    pub(crate) fn agent_refs(&self, a: &AgentEntry, head: &AgentHead) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for r in &head.bottles {
            if !self.bottles.contains_key(&r.name) {
                out.push(self.missing(&a.file, r, "bottle", self.bottles.keys()));
            }
        }
        for r in &head.skills {
            if !self.skills.contains_key(&r.name) {
                out.push(self.missing(&a.file, r, "skill", self.skills.keys()));
            }
        }
        out
    }

    pub(crate) fn missing<'n>(
        &self,
        file: &FileText,
        r: &NameRef,
        what: &str,
        names: impl Iterator<Item = &'n String>,
    ) -> Diagnostic {
        let names: Vec<&str> = names.map(String::as_str).collect();
        let folder = if what == "skill" { "skills/NAME/SKILL.md" } else { "bottles/NAME.yaml" };
        let help = match suggest(&r.name, &names) {
            Some(s) => format!("did you mean `{s}`?"),
            None if names.is_empty() => format!("create {}", folder.replace("NAME", &r.name)),
            None => format!("known {what}s: {}", names.join(", ")),
        };
        file.diag(Severity::Error, &r.path, format!("{what} `{}` does not exist", r.name), Some(help))
    }

    /// Resolves `name`'s `extends:` depth-first, left to right, root first;
    /// a layer reached twice (a diamond) is applied once, where first reached.
    pub(crate) fn linearize(&self, name: &str, stack: &mut Vec<String>, out: &mut Linearized) {
        if out.order.iter().any(|n| n == name) {
            return;
        }
        let Some(entry) = self.bottles.get(name) else { return };
        stack.push(name.to_owned());
        if let Some(body) = &entry.body {
            for parent in &body.extends {
                if let Some(i) = stack.iter().position(|s| *s == parent.name) {
                    let mut cycle: Vec<&str> = stack[i..].iter().map(String::as_str).collect();
                    cycle.push(&parent.name);
                    out.diags.push(entry.file.diag(
                        Severity::Error,
                        &parent.path,
                        format!("extends cycle: {}", cycle.join(" -> ")),
                        Some("a bottle cannot extend itself, directly or through its parents; remove one link".into()),
                    ));
                    continue;
                }
                if !self.bottles.contains_key(&parent.name) {
                    out.diags.push(self.missing(&entry.file, parent, "bottle", self.bottles.keys()));
                    continue;
                }
                self.linearize(&parent.name, stack, out);
            }
        }
        stack.pop();
        if !out.order.iter().any(|n| n == name) {
            out.order.push(name.to_owned());
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Linearized {
    pub(crate) order: Vec<String>,
    pub(crate) diags: Vec<Diagnostic>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>, LoadError> {
    let rd = fs::read_dir(dir).map_err(|source| LoadError::Read { path: dir.to_path_buf(), source })?;
    let mut v: Vec<fs::DirEntry> = rd.filter_map(Result::ok).collect();
    v.sort_by_key(fs::DirEntry::file_name);
    Ok(v)
}

fn list_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            // Symlinks are not followed: a skill must not pull in files from
            // elsewhere on the host.
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_file()
                && let Ok(rel) = p.strip_prefix(base)
            {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn path_diag(path: &Path, message: String, help: Option<String>) -> Diagnostic {
    path_diag_sev(Severity::Error, path, message, help)
}

fn path_diag_sev(severity: Severity, path: &Path, message: String, help: Option<String>) -> Diagnostic {
    Diagnostic { severity, file: path.to_path_buf(), line: 1, column: 1, message, source_line: None, width: 1, help }
}

fn read(path: &Path) -> Result<String, Box<Diagnostic>> {
    let bytes = fs::read(path).map_err(|e| Box::new(path_diag(path, format!("cannot read file: {e}"), None)))?;
    String::from_utf8(bytes)
        .map_err(|_| Box::new(path_diag(path, "file is not UTF-8 text".into(), Some("save it as UTF-8".into()))))
}

fn load_bottle(path: PathBuf, manifest: &Path, home: Option<&Path>) -> BottleEntry {
    let text = match read(&path) {
        Ok(t) => t,
        Err(d) => {
            let file = FileText { path, text: String::new(), yaml: 0..0, line_offset: 0 };
            return BottleEntry { file, body: None, diags: vec![*d] };
        }
    };
    let len = text.len();
    let file = FileText { path, text, yaml: 0..len, line_offset: 0 };
    let root = match file.parse("") {
        Ok(v) => v,
        Err(d) => return BottleEntry { file, body: None, diags: vec![*d] },
    };
    let src = file.source();
    let dir = file.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut ck = Checker::new(&src);
    // Where a `dockerfile:` may be: the manifest's folder, and the project
    // around it when it is a project's `.bot-bottle/`.
    let mut within = vec![manifest.to_path_buf()];
    if manifest.file_name().is_some_and(|n| n == ".bot-bottle")
        && let Some(project) = manifest.parent()
    {
        within.push(project.to_path_buf());
    }
    let body = schema::bottle(&mut ck, &root, &dir, &within, home);
    let diags = ck.diags;
    BottleEntry { file, body: Some(body), diags }
}

fn load_agent(path: PathBuf) -> AgentEntry {
    let fail = |file: FileText, d: Diagnostic| AgentEntry {
        file,
        head: None,
        prompt_line: 0,
        prompt_bytes: 0,
        diags: vec![d],
    };
    let text = match read(&path) {
        Ok(t) => t,
        Err(d) => return fail(FileText { path, text: String::new(), yaml: 0..0, line_offset: 0 }, *d),
    };
    let Some(fm) = split_frontmatter(&text) else {
        let len = text.len();
        let file = FileText { path, text, yaml: 0..len, line_offset: 0 };
        let d = file.whole_file(
            Severity::Error,
            "agent file has no YAML frontmatter".into(),
            Some(
                "start the file with `---`, the agent's settings (e.g. `provider: claude`), then `---` and the prompt"
                    .into(),
            ),
        );
        return fail(file, d);
    };
    let file = FileText { path, text, yaml: fm.yaml, line_offset: 1 };
    let root = match file.parse(" in frontmatter") {
        Ok(v) => v,
        Err(d) => return fail(file, *d),
    };
    let src = file.source();
    let mut ck = Checker::new(&src);
    let head = schema::agent(&mut ck, &root);
    let body = &file.text[fm.body_start..];
    if body.trim().is_empty() && head.provider != Some(Provider::Command) {
        ck.diags.push(file.whole_file(
            Severity::Warning,
            "agent has an empty prompt".into(),
            Some("write the agent's instructions below the closing `---`".into()),
        ));
    }
    let diags = ck.diags;
    AgentEntry { prompt_line: fm.body_line, prompt_bytes: body.len(), head: Some(head), file, diags }
}

struct Frontmatter {
    yaml: std::ops::Range<usize>,
    body_start: usize,
    body_line: usize,
}

/// Splits `---\nYAML\n---\nbody`. The closing fence may also be `...`.
fn split_frontmatter(text: &str) -> Option<Frontmatter> {
    let first_end = text.find('\n')?;
    if text[..first_end].trim_end() != "---" {
        return None;
    }
    let start = first_end + 1;
    let mut offset = start;
    for (line, l) in (2..).zip(text[start..].split_inclusive('\n')) {
        let trimmed = l.trim_end();
        if trimmed == "---" || trimmed == "..." {
            return Some(Frontmatter { yaml: start..offset, body_start: offset + l.len(), body_line: line + 1 });
        }
        offset += l.len();
    }
    None
}
