//! Resolution: an agent plus its bottles, merged into the plan every backend
//! launches from and `start --dry-run` prints.
//!
//! The plan is a documented, versioned format (`schema`); see
//! `docs/manifest.md`. It holds secret *names* only, never values.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Serialize;

use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::load::{Linearized, Manifest};
use crate::merge::merge_all;
use crate::model::*;
use crate::mounts::Mount;
use crate::schema::suggest;

/// The plan format version. Bump it on any change a consumer could notice.
pub const PLAN_SCHEMA: u32 = 1;

/// What the user asked to start.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub agent: String,
    /// `--bottle` values, in order; when non-empty they replace the agent's
    /// `bottle:` list.
    pub bottles: Vec<String>,
    /// `--backend`; overrides the bottle's `backend:`.
    pub backend: Option<BackendKind>,
    /// Arguments after `--`, passed to the agent.
    pub args: Vec<String>,
}

/// Why a request could not be resolved. All are the user's to fix (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no agent named `{name}`{}", hint(suggestion, known))]
    NoSuchAgent { name: String, suggestion: Option<String>, known: Vec<String> },
    #[error("no bottle named `{name}`{}", hint(suggestion, known))]
    NoSuchBottle { name: String, suggestion: Option<String>, known: Vec<String> },
    #[error("agent `{agent}` names no bottle; choose one with --bottle NAME (known: {})", known.join(", "))]
    NoBottle { agent: String, known: Vec<String> },
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

fn hint(suggestion: &Option<String>, known: &[String]) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None if known.is_empty() => "; the manifest defines none".into(),
        None => format!("; known: {}", known.join(", ")),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub schema: u32,
    pub manifest: PathBuf,
    pub agent: PlanAgent,
    pub bottle: PlanBottle,
    pub backend: PlanBackend,
    pub image: Option<ImageSource>,
    pub workspace: WorkspaceMode,
    /// Ignored files a copy brings in anyway (`.gitignore` patterns, relative
    /// to the project); only with `workspace: copy`, and only shown when set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workspace_include_ignored: Vec<String>,
    /// Host directories bound read-only at the same path (`mounts:`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    /// Plain values written into the bottle (never secrets: validation refuses those).
    pub env: IndexMap<EnvName, String>,
    /// Host environment variables the bottle's sidecars read, by name only.
    pub secrets: Vec<SecretRef>,
    pub egress: PlanEgress,
    pub git_gate: PlanGitGate,
    pub supervise: bool,
    pub args: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanAgent {
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub provider: Provider,
    /// argv, for `provider: command`.
    pub command: Option<Vec<String>>,
    pub model: Option<String>,
    /// The unattended task (`task:`), used when no arguments follow `--`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub prompt: PromptRef,
    pub skills: Vec<PlanSkill>,
}

/// Where the agent's prompt is: the body of its file from `line` on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptRef {
    pub file: PathBuf,
    pub line: usize,
    pub bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanSkill {
    pub name: String,
    pub dir: PathBuf,
    pub files: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanBottle {
    /// The bottles asked for, in order.
    pub selected: Vec<String>,
    /// `agent` (its `bottle:` list) or `command line` (`--bottle`).
    pub selected_by: &'static str,
    /// Every layer applied, root first; diamonds appear once.
    pub lineage: Vec<String>,
    /// The lineage as the CLI shows it: `base -> dev -> claude-dev`.
    pub lineage_text: String,
    pub files: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanBackend {
    /// `auto` is decided at launch by probing what works on the host.
    pub requested: BackendKind,
    /// `command line`, `bottle` or `default`.
    pub from: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SecretRef {
    pub env: EnvName,
    pub used_by: String,
    /// Whether the variable is set in the environment `resolve` was given.
    pub set: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanEgress {
    pub routes: Vec<Route>,
    pub dlp: DlpMode,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanGitGate {
    pub user: GitUser,
    pub repos: IndexMap<String, Repo>,
}

impl Manifest {
    /// Resolves `req` into a plan. `env_is_set` answers whether a host
    /// variable is set; it is asked about names only, so values never pass
    /// through here.
    pub fn resolve(&self, req: &Request, env_is_set: &dyn Fn(&str) -> bool) -> Result<Plan, ResolveError> {
        let agent = self.agents.get(&req.agent).ok_or_else(|| {
            let known: Vec<String> = self.agents.keys().cloned().collect();
            let names: Vec<&str> = known.iter().map(String::as_str).collect();
            ResolveError::NoSuchAgent {
                name: req.agent.clone(),
                suggestion: suggest(&req.agent, &names).map(str::to_owned),
                known,
            }
        })?;
        // Layout problems (duplicate or bad file names) make any name ambiguous.
        let mut diags: Vec<Diagnostic> = self.layout.clone();
        diags.extend(agent.diags.iter().cloned());
        let Some(head) = &agent.head else { return Err(invalid(diags)) };
        diags.extend(self.agent_refs(agent, head));

        let (selected, selected_by) = if req.bottles.is_empty() {
            (head.bottles.iter().map(|r| r.name.clone()).collect::<Vec<_>>(), "agent")
        } else {
            (req.bottles.clone(), "command line")
        };
        let known: Vec<String> = self.bottles.keys().cloned().collect();
        if selected.is_empty() && diags.iter().all(|d| d.severity != Severity::Error) {
            return Err(ResolveError::NoBottle { agent: req.agent.clone(), known });
        }
        if selected_by == "command line" {
            for b in &selected {
                if !self.bottles.contains_key(b) {
                    let names: Vec<&str> = known.iter().map(String::as_str).collect();
                    return Err(ResolveError::NoSuchBottle {
                        name: b.clone(),
                        suggestion: suggest(b, &names).map(str::to_owned),
                        known,
                    });
                }
            }
        }
        let mut lin = Linearized::default();
        for b in &selected {
            self.linearize(b, &mut Vec::new(), &mut lin);
        }
        diags.extend(lin.diags);
        for name in &lin.order {
            diags.extend(self.bottles[name].diags.iter().cloned());
        }
        for s in &head.skills {
            if let Some(skill) = self.skills.get(&s.name) {
                diags.extend(skill.diags.iter().cloned());
            }
        }
        if diags.iter().any(|d| d.severity == Severity::Error) {
            return Err(invalid(diags));
        }
        let Some(provider) = head.provider else { return Err(invalid(diags)) };

        let layers: Vec<&BottleSpec> =
            lin.order.iter().filter_map(|n| self.bottles[n].body.as_ref().map(|b| &b.spec)).collect();
        let spec = merge_all(layers);

        let (backend, from) = match (req.backend, spec.backend) {
            (Some(b), _) => (b, "command line"),
            (None, Some(b)) => (b, "bottle"),
            (None, None) => (BackendKind::Auto, "default"),
        };
        let mut warnings: Vec<String> = diags.iter().map(|d| format!("{}: {}", d.file.display(), d.message)).collect();
        if backend == BackendKind::Native && spec.image.is_some() {
            warnings.push("the native backend runs on the host's system directories; `image`/`dockerfile` apply to docker and smolmachines only".into());
        }
        let workspace = spec.workspace.unwrap_or(WorkspaceMode::Copy);
        if workspace != WorkspaceMode::Copy && !spec.include_ignored.is_empty() {
            warnings.push(format!(
                "`workspace.include-ignored` does nothing with `workspace: {}` (it chooses what a copy brings in)",
                if workspace == WorkspaceMode::Mount { "mount" } else { "none" }
            ));
        }
        let secrets = secret_refs(&spec, env_is_set);
        for s in secrets.iter().filter(|s| !s.set) {
            warnings.push(format!(
                "{} is not set in this environment ({}); start will refuse to launch until it is",
                s.env, s.used_by
            ));
        }
        let skills = head
            .skills
            .iter()
            .filter_map(|r| {
                let s = self.skills.get(&r.name)?;
                Some(PlanSkill { name: r.name.clone(), dir: s.dir.clone(), files: s.files.clone() })
            })
            .collect();
        Ok(Plan {
            schema: PLAN_SCHEMA,
            manifest: self.root.clone(),
            agent: PlanAgent {
                name: req.agent.clone(),
                file: agent.file.path.clone(),
                description: head.description.clone(),
                provider,
                command: (provider == Provider::Command).then(|| head.command.clone()),
                model: head.model.clone(),
                task: head.task.clone(),
                prompt: PromptRef { file: agent.file.path.clone(), line: agent.prompt_line, bytes: agent.prompt_bytes },
                skills,
            },
            bottle: PlanBottle {
                selected,
                selected_by,
                lineage_text: lin.order.join(" -> "),
                files: lin.order.iter().map(|n| self.bottles[n].file.path.clone()).collect(),
                lineage: lin.order,
            },
            backend: PlanBackend { requested: backend, from },
            image: spec.image,
            workspace,
            workspace_include_ignored: if workspace == WorkspaceMode::Copy { spec.include_ignored } else { Vec::new() },
            mounts: spec.mounts,
            resources: spec.resources,
            env: spec.env,
            secrets,
            egress: PlanEgress { routes: spec.routes.into_values().collect(), dlp: spec.dlp.unwrap_or(DlpMode::Block) },
            git_gate: PlanGitGate { user: spec.git_user, repos: spec.repos },
            supervise: spec.supervise.unwrap_or(false),
            args: req.args.clone(),
            warnings,
        })
    }
}

fn invalid(diags: Vec<Diagnostic>) -> ResolveError {
    let mut d = Diagnostics(diags);
    d.sort();
    ResolveError::Invalid(d)
}

fn secret_refs(spec: &BottleSpec, env_is_set: &dyn Fn(&str) -> bool) -> Vec<SecretRef> {
    let mut out: Vec<SecretRef> = Vec::new();
    let mut add = |env: &EnvName, used_by: String| {
        if !out.iter().any(|s| s.env == *env && s.used_by == used_by) {
            out.push(SecretRef { env: env.clone(), used_by, set: env_is_set(env.as_str()) });
        }
    };
    for r in spec.routes.values() {
        if let Some(i) = &r.inject {
            add(&i.env, format!("egress {} header {}", r.host, i.header));
        }
    }
    for (name, repo) in &spec.repos {
        match &repo.key {
            KeySource::Github { forge_token_env: e, .. } | KeySource::Gitea { forge_token_env: e, .. } => {
                add(e, format!("git-gate repo {name} forge token"))
            }
            KeySource::Token { env } => add(env, format!("git-gate repo {name} token")),
            KeySource::Static { .. } => {}
        }
    }
    out
}
