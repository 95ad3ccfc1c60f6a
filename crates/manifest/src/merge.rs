//! The merge rules, shared by `extends:` chains and launch-time bottle lists.
//!
//! - scalars: the later layer wins where it says anything;
//! - maps (`resources`, `git-gate.user`, `env`) merge key by key;
//! - `egress.routes` are keyed by host: a later route for the same host
//!   replaces the earlier one whole, keeping its position;
//! - `git-gate.repos` are keyed by name and likewise replaced whole, so a
//!   child can never pair its own URL with a parent's deploy key.
//! - `workspace.include-ignored` patterns are appended in order, each kept at
//!   its last place only. The last matching pattern decides, as in
//!   `.gitignore`, so an earlier copy of a pattern that also comes later never
//!   decides anything and dropping it changes nothing. `mounts` are appended
//!   the same way.
//!
//! Every rule is "later wins per key" on an ordered map, so `merge` is
//! associative; the property tests hold it to that.

use indexmap::IndexMap;

use crate::model::{BottleSpec, GitUser, Resources};

/// Layers `over` on top of `base`.
pub fn merge(base: &BottleSpec, over: &BottleSpec) -> BottleSpec {
    BottleSpec {
        backend: over.backend.or(base.backend),
        image: over.image.clone().or_else(|| base.image.clone()),
        workspace: over.workspace.or(base.workspace),
        include_ignored: appended(&base.include_ignored, &over.include_ignored),
        mounts: appended(&base.mounts, &over.mounts),
        env: keyed(&base.env, &over.env),
        resources: Resources {
            cpus: over.resources.cpus.or(base.resources.cpus),
            memory: over.resources.memory.or(base.resources.memory),
            pids: over.resources.pids.or(base.resources.pids),
            disk: over.resources.disk.or(base.resources.disk),
        },
        routes: keyed(&base.routes, &over.routes),
        dlp: over.dlp.or(base.dlp),
        git_user: GitUser {
            name: over.git_user.name.clone().or_else(|| base.git_user.name.clone()),
            email: over.git_user.email.clone().or_else(|| base.git_user.email.clone()),
        },
        repos: keyed(&base.repos, &over.repos),
        supervise: over.supervise.or(base.supervise),
    }
}

/// Later entries replace earlier ones with the same key, in place; new keys
/// are appended.
fn keyed<K: Clone + std::hash::Hash + Eq, V: Clone>(base: &IndexMap<K, V>, over: &IndexMap<K, V>) -> IndexMap<K, V> {
    let mut out = base.clone();
    for (k, v) in over {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// `base` then `over`, each entry kept only at its last place.
fn appended<T: Clone + PartialEq>(base: &[T], over: &[T]) -> Vec<T> {
    let all: Vec<&T> = base.iter().chain(over).collect();
    all.iter().enumerate().filter(|(i, p)| !all[i + 1..].contains(p)).map(|(_, p)| (*p).clone()).collect()
}

/// Folds layers left to right.
pub fn merge_all<'a>(layers: impl IntoIterator<Item = &'a BottleSpec>) -> BottleSpec {
    layers.into_iter().fold(BottleSpec::default(), |acc, l| merge(&acc, l))
}
