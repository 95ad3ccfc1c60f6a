//! A bottle's disk budget: how much it may add to the host's disk through
//! its workspace. No filesystem the launcher can make without privileges
//! caps a host directory, so the launcher watches: it measures the
//! workspace when the bottle starts and then again every second or so, and
//! stops the bottle once it has grown by more than its budget. What the
//! agent writes between two looks can overshoot; no single file can (the
//! bottle's `RLIMIT_FSIZE` is the same budget).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A bottle's disk budget when its manifest sets none.
pub const DEFAULT_DISK: u64 = 10 << 30;

/// The shortest time between two measurements.
const TICK: Duration = Duration::from_secs(1);

/// The longest time between two measurements, however slow the walk.
const LONGEST_PAUSE: Duration = Duration::from_secs(10);

/// What each file, directory or link costs at least: empty files hold no
/// blocks but take an inode of the host's filesystem, which runs out too
/// (and millions of them make the walk slow).
const INODE_COST: u64 = 4096;

/// Failed measurements in a row that stop the bottle.
const FAILED_LOOKS: u32 = 3;

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
    let mut failed = 0;
    while !done.load(Ordering::SeqCst) {
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if done.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let began = Instant::now();
        let why = match usage(dir) {
            Ok(now) => {
                failed = 0;
                let grown = now.saturating_sub(start);
                (grown > budget).then(|| {
                    format!(
                        "the workspace grew by {} MiB, over the bottle's disk budget of {} MiB (`resources.disk`)",
                        grown >> 20,
                        budget >> 20
                    )
                })
            }
            // A tree the agent can make unmeasurable would grow unwatched:
            // a failure that persists stops the bottle.
            Err(e) => {
                failed += 1;
                (failed >= FAILED_LOOKS).then(|| {
                    format!("the workspace could not be measured against its disk budget ({e}); stopped rather than left unwatched")
                })
            }
        };
        // A large tree is looked at less often, so watching costs at most
        // a twentieth of a core; but never less than every `LONGEST_PAUSE`,
        // or a tree made slow to walk would buy minutes of unwatched writing.
        pause = (began.elapsed() * 20).clamp(TICK, LONGEST_PAUSE);
        if let Some(why) = why {
            *over.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
            stop.store(true, Ordering::SeqCst);
            return;
        }
    }
}

/// The disk space the tree at `dir` takes: allocated blocks, at least
/// [`INODE_COST`] for each inode, each inode counted once, symlinks not
/// followed, other filesystems not entered.
///
/// The tree is the agent's, and it changes it while this looks: every
/// directory is opened relative to its parent's descriptor with
/// `O_NOFOLLOW`, so a directory swapped for a symlink is never followed out
/// of the tree, and a tree nested past `PATH_MAX` is measured whole rather
/// than skipped (a path-based walk fails there with `ENAMETOOLONG`, and
/// what lies below would grow unwatched). An entry that vanishes or changes
/// kind under the walk is skipped; any other failure (out of descriptors,
/// say) is an error, never a smaller count.
pub(crate) fn usage(dir: &Path) -> std::io::Result<u64> {
    use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rustix::fs::open(dir, flags, Mode::empty())?;
    let st = rustix::fs::fstat(&root)?;
    let dev = st.st_dev;
    let mut seen = HashSet::new();
    let mut total = st.st_blocks as u64 * 512;
    // Directories still to read, each with its parent's descriptor; a
    // parent stays open only while it has children waiting, so a deep
    // chain holds few descriptors.
    let mut stack: Vec<(Arc<OwnedFd>, CString)> = Vec::new();
    let mut current = Some(Arc::new(root));
    loop {
        let d = match current.take() {
            Some(d) => d,
            None => {
                let Some((parent, name)) = stack.pop() else { break };
                match rustix::fs::openat(&*parent, name.as_c_str(), flags, Mode::empty()) {
                    Ok(fd) => Arc::new(fd),
                    // Removed, or swapped for a symlink or a file, since it was listed.
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let mut entries = match Dir::read_from(&*d) {
            Ok(e) => e,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        while let Some(e) = entries.read() {
            let e = match e {
                Ok(e) => e,
                Err(rustix::io::Errno::NOENT) => break,
                Err(e) => return Err(e.into()),
            };
            let name = e.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let m = match rustix::fs::statat(&*d, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(m) => m,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            if m.st_dev != dev {
                continue;
            }
            let is_dir = FileType::from_raw_mode(m.st_mode) == FileType::Directory;
            if m.st_nlink > 1 && !is_dir && !seen.insert(m.st_ino) {
                continue;
            }
            total += (m.st_blocks as u64 * 512).max(INODE_COST);
            if is_dir {
                stack.push((d.clone(), name.to_owned()));
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn empty_files_cost_their_inodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = usage(dir.path()).expect("usage");
        for i in 0..2000 {
            std::fs::File::create(dir.path().join(format!("e{i}"))).expect("create");
        }
        let grown = usage(dir.path()).expect("usage") - before;
        assert!(grown >= 2000 * INODE_COST, "2,000 empty files grew the count by {grown} bytes");
    }

    #[test]
    fn a_tree_nested_past_path_max_is_measured_whole() {
        // 300 levels of 20-character names: 6,300 bytes of path, past
        // PATH_MAX (4,096), made relative to each parent as an agent would.
        use rustix::fs::{Mode, OFlags};
        let dir = tempfile::tempdir().expect("tempdir");
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut at = rustix::fs::open(dir.path(), flags, Mode::empty()).expect("open");
        let name = "d".repeat(20);
        for _ in 0..300 {
            rustix::fs::mkdirat(&at, name.as_str(), Mode::from_raw_mode(0o755)).expect("mkdir");
            at = rustix::fs::openat(&at, name.as_str(), flags, Mode::empty()).expect("open");
        }
        let f = rustix::fs::openat(
            &at,
            "deep",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .expect("create");
        std::fs::File::from(f).write_all(&vec![1u8; 8 << 20]).expect("write");
        let used = usage(dir.path()).expect("usage");
        assert!(used >= 8 << 20, "the file below PATH_MAX was not counted: {used} bytes");
    }

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
