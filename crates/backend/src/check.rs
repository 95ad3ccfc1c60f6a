//! What `bot-bottle doctor` reports of each backend: one line per thing a
//! backend needs from the host, with a fix for every failure.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with a layer missing or a caveat.
    Warn,
    /// The backend cannot run bottles until this is fixed.
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

/// Whether checks with these results let a backend run bottles.
pub fn ready(checks: &[Check]) -> bool {
    !checks.iter().any(|c| c.status == Status::Fail)
}
