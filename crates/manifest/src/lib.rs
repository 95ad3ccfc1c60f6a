//! Agent and bottle manifests for bot-bottle.
//!
//! This crate finds a manifest directory, checks every file in it into a
//! typed model (reporting all problems with file, line, column and a fix),
//! merges bottle layers, and resolves an agent into the [`Plan`] that
//! backends launch from.
//!
//! It is not for launching anything: it does no I/O beyond reading the
//! manifest files it is given and checking that referenced files exist, and
//! it reads no environment variables (callers pass in what it needs), so a
//! plan can be made anywhere without side effects.

mod diag;
mod discover;
mod egress;
mod listing;
mod load;
mod merge;
mod model;
mod mounts;
mod plan;
mod schema;
mod yaml;

pub use diag::{Diagnostic, Diagnostics, Severity};
pub use discover::{DiscoverError, DiscoverFrom, Found, discover};
pub use egress::{Egress, parse_egress};
pub use listing::{AgentSummary, BottleSummary, Listing};
pub use load::{LoadError, Manifest};
pub use merge::{merge, merge_all};
pub use model::{
    BackendKind, BottleSpec, ByteSize, CA_BUNDLE_VARS, Cpus, DlpMode, EnvName, GitUrl, GitUser, HostKey, HostKind,
    HostPattern, ImageSource, Inject, KeySource, Method, Provider, Repo, Resources, Route, TlsMode, WorkspaceMode,
    looks_like_secret,
};
pub use mounts::Mount;
pub use plan::{
    PLAN_SCHEMA, Plan, PlanAgent, PlanBackend, PlanBottle, PlanEgress, PlanGitGate, PlanSkill, PromptRef, Request,
    ResolveError, SecretRef,
};
pub use yaml::Pos;
