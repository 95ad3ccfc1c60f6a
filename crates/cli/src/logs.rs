//! `logs SLUG [-f]`: the agent's output of a detached bottle, from its
//! `agent.log`. Kept small so the audit-log side (`--denied`, `--format
//! json`) can join it.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use crate::bottles::find;
use crate::launch::read_meta;
use crate::{Failure, failure, usage};

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// The bottle's slug, as `list -a` shows it.
    slug: String,
    /// Keep printing new output until the bottle stops.
    #[arg(long, short)]
    follow: bool,
}

pub(crate) fn run(args: &LogsArgs) -> Result<(), Failure> {
    let (dir, _) = find(&args.slug)?;
    let path = dir.join("agent.log");
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(usage(format!(
                "error: `{}` has no agent.log: only a bottle started with --detach keeps its output",
                args.slug
            )));
        }
        Err(e) => return Err(failure(format!("error: reading {}: {e}", path.display()))),
    };
    let mut out = std::io::stdout().lock();
    let mut copy = |f: &mut std::fs::File| -> Result<(), Failure> {
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(|e| failure(format!("error: reading {}: {e}", path.display())))?;
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(failure(format!("error: cannot write output: {e}")))
            }
            _ => Ok(()),
        }
    };
    copy(&mut f)?;
    if args.follow {
        // Until the launcher is gone; then what it wrote last.
        while read_meta(&dir).is_some_and(|m| m.exit.is_none() && crate::state::alive(&m)) {
            std::thread::sleep(Duration::from_millis(200));
            // A truncated log (a new `start` reusing it) is read from its start.
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if f.stream_position().is_ok_and(|p| p > len) {
                f.seek(SeekFrom::Start(0)).map_err(|e| failure(format!("error: {e}")))?;
            }
            copy(&mut f)?;
        }
        copy(&mut f)?;
    }
    Ok(())
}
