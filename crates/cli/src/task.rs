//! Where an unattended agent's task comes from, checked before anything is
//! created: `-- TASK`, the agent's `task:`, or standard input.

use std::os::fd::AsFd;

use bot_bottle_manifest::{Plan, Provider};
use nix::sys::stat::{SFlag, fstat};

use crate::{Failure, usage};

/// Fails (exit 2) when `plan`'s agent would run unattended with no task:
/// no arguments after `--`, no `task:`, and a standard input that cannot
/// carry one (`--detach` gives the agent none; a terminal means an
/// interactive session, which needs none).
pub(crate) fn check(plan: &Plan, detach: bool) -> Result<(), Failure> {
    if !matches!(plan.agent.provider, Provider::Claude | Provider::Codex) {
        return Ok(());
    }
    if !plan.args.is_empty() || plan.agent.task.is_some() {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !detach && nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
        return Ok(());
    }
    if !detach && stdin_may_hold_a_task(&stdin) {
        return Ok(());
    }
    let name = &plan.agent.name;
    let how = if detach { "`--detach` leaves the agent no standard input" } else { "standard input holds nothing" };
    Err(usage(format!(
        "error: cannot start `{name}` unattended: it has no task ({how})\n\
         give one after `--` (bot-bottle start {name} -- \"fix the failing tests\"),\n\
         as `task:` in {},\n\
         or on standard input (echo \"fix the failing tests\" | bot-bottle start {name})",
        plan.agent.file.display()
    )))
}

/// A pipe, a socket or a non-empty file may carry a task; `/dev/null`, an
/// empty file or a closed descriptor cannot.
fn stdin_may_hold_a_task(stdin: &std::io::Stdin) -> bool {
    let Ok(st) = fstat(stdin.as_fd()) else { return false };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    kind == SFlag::S_IFIFO || kind == SFlag::S_IFSOCK || (kind == SFlag::S_IFREG && st.st_size > 0)
}
