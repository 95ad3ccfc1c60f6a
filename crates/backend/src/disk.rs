//! A bottle's disk budget: how much it may add to the host's disk through
//! its workspace. No filesystem the launcher can make without privileges
//! caps a host directory, so the launcher watches: it measures the
//! workspace when the bottle starts and then again every second or so, and
//! stops the bottle once it has grown by more than its budget. What the
//! agent writes between two looks can overshoot; no single file can (the
//! bottle's `RLIMIT_FSIZE` is the same budget).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A bottle's disk budget when its manifest sets none.
pub const DEFAULT_DISK: u64 = 10 << 30;

/// The shortest time between two measurements.
const TICK: Duration = Duration::from_secs(1);

/// Watches a workspace's growth; sets the bottle's stop flag past the
/// budget. Dropping it ends the watch.
#[derive(Debug)]
pub struct DiskWatch {
    done: Arc<AtomicBool>,
    over: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl DiskWatch {
    /// Measures `dir` now and then watches it: past `budget` bytes of
    /// growth it sets `stop` and remembers why ([`DiskWatch::exceeded`]).
    pub fn start(dir: &Path, budget: u64, stop: Arc<AtomicBool>) -> std::io::Result<DiskWatch> {
        let start = usage(dir)?;
        let done = Arc::new(AtomicBool::new(false));
        let over = Arc::new(Mutex::new(None));
        let (d, o, dir) = (done.clone(), over.clone(), dir.to_path_buf());
        let thread = std::thread::spawn(move || watch(&dir, start, budget, &stop, &d, &o));
        Ok(DiskWatch { done, over, thread: Some(thread) })
    }

    /// Why the bottle was stopped, if the budget was exceeded.
    pub fn exceeded(&self) -> Option<String> {
        self.over.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

fn watch(dir: &Path, start: u64, budget: u64, stop: &AtomicBool, done: &AtomicBool, over: &Mutex<Option<String>>) {
    let mut pause = TICK;
    while !done.load(Ordering::SeqCst) {
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if done.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let began = Instant::now();
        // A tree changing under the walk can fail it; the next look counts.
        let Ok(now) = usage(dir) else { continue };
        // A large tree is looked at less often, so watching costs at most
        // a twentieth of a core.
        pause = TICK.max(began.elapsed() * 20);
        let grown = now.saturating_sub(start);
        if grown > budget {
            let why = format!(
                "the workspace grew by {} MiB, over the bottle's disk budget of {} MiB (`resources.disk`)",
                grown >> 20,
                budget >> 20
            );
            *over.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
            stop.store(true, Ordering::SeqCst);
            return;
        }
    }
}

/// The disk space the tree at `dir` takes: allocated blocks, each inode
/// counted once, symlinks not followed, other filesystems not entered.
pub(crate) fn usage(dir: &Path) -> std::io::Result<u64> {
    let root = std::fs::symlink_metadata(dir)?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut total = root.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Removed while we looked, or unreadable to us: skip it.
            Err(_) => continue,
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_budget_stops_the_bottle() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("before"), vec![1u8; 4 << 20]).expect("write");
        let stop = Arc::new(AtomicBool::new(false));
        let w = DiskWatch::start(dir.path(), 8 << 20, stop.clone()).expect("watch");
        // Within the budget: nothing happens.
        std::fs::write(dir.path().join("small"), vec![1u8; 4 << 20]).expect("write");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!stop.load(Ordering::SeqCst) && w.exceeded().is_none());
        // Past it (hard links count once, sparse files by what they hold).
        std::fs::hard_link(dir.path().join("small"), dir.path().join("link")).expect("link");
        let sparse = std::fs::File::create(dir.path().join("sparse")).expect("create");
        sparse.set_len(1 << 30).expect("sparse");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!stop.load(Ordering::SeqCst), "a hard link or a sparse file counted as data");
        std::fs::write(dir.path().join("big"), vec![1u8; 6 << 20]).expect("write");
        let t = Instant::now();
        while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(stop.load(Ordering::SeqCst));
        assert!(w.exceeded().is_some_and(|m| m.contains("disk budget of 8 MiB")), "{:?}", w.exceeded());
    }
}
