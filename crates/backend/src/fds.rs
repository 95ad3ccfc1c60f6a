//! Descriptors a process inherited without asking for them.

use std::io;

/// Closes every descriptor of this process above stderr, whatever its
/// parent left open without close-on-exec (a host file, a listening
/// socket, a terminal); returns how many there were. Call it before this
/// process opens anything of its own, and before it starts any thread.
///
/// `close_range(2)` would do this in one call, but it is reachable only
/// through `unsafe`; the list in `/proc/self/fd` is the same set.
pub fn close_inherited() -> io::Result<usize> {
    let mut open = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = e?.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
            && fd > 2
        {
            open.push(fd);
        }
    }
    // The directory's own descriptor was among them and is closed by now.
    let mut closed = 0;
    for fd in open {
        match nix::unistd::close(fd) {
            Ok(()) => closed += 1,
            Err(nix::errno::Errno::EBADF) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(closed)
}
