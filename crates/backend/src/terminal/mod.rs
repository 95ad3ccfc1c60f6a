//! The agent's standard streams, seen from the launcher. The user's
//! terminal never enters a bottle: a descriptor of it inside would let the
//! agent push keystrokes into the user's shell (`TIOCSTI`), change its
//! modes, or read what the user types after bot-bottle returns.
//!
//! - On a terminal (stdin and stdout both are one), the agent gets a
//!   pseudo-terminal of its own, made inside the bottle, as its
//!   controlling terminal. The launcher puts the user's terminal in raw
//!   mode and relays bytes both ways, so Ctrl-C, Ctrl-\ and Ctrl-Z are
//!   bytes the agent's own line discipline turns into signals; window size
//!   changes are passed on. The user's terminal modes are restored on every
//!   way out that runs code: the agent's exit, SIGTERM, a panic, the
//!   bottle dying.
//! - Otherwise the agent gets pipes, and the launcher copies its own stdin,
//!   stdout and stderr through them. Whatever the launcher's streams are
//!   (a pipe, a socket, a file, a terminal), the agent only ever sees bytes.
//!
//! This is the shape of `sudo`'s `use_pty`, `ssh -t` and `docker run -t`.
//! Unlike those, what the agent writes to a terminal goes through
//! [`EscapeFilter`] first: escape sequences that reach past the screen (the
//! clipboard, answerbacks carrying the agent's text, programmable keys)
//! never reach the user's terminal.

mod escapes;

pub(crate) use escapes::EscapeFilter;
pub use escapes::filtered;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::termios::{OptionalActions, Termios, Winsize, tcgetattr, tcgetwinsize, tcsetattr, tcsetwinsize};

/// How long the launcher waits for the agent's last output once the bottle
/// has ended (every writer is gone by then; this only bounds a surprise).
const DRAIN: Duration = Duration::from_secs(2);

/// The window size of the terminal on this process's stdin and stdout, or
/// `None` when they are not both a terminal: the agent then gets pipes.
pub(crate) fn terminal_size() -> Option<Winsize> {
    let (stdin, stdout) = (rustix::stdio::stdin(), rustix::stdio::stdout());
    if !rustix::termios::isatty(stdin) || !rustix::termios::isatty(stdout) {
        return None;
    }
    // A terminal that reports no size still gets a usable one.
    Some(tcgetwinsize(stdin).unwrap_or(Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 }))
}

/// The user's terminal in raw mode; dropping it restores the saved modes.
#[derive(Debug)]
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> io::Result<RawMode> {
        let stdin = rustix::stdio::stdin();
        let saved = tcgetattr(stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved) {
            // Nothing else can be done from here; say how to recover.
            let msg = format!("\r\nbot-bottle: could not restore your terminal ({e}); type `reset`\r\n");
            write_all(rustix::stdio::stderr(), msg.as_bytes()).ok();
        }
    }
}

/// Relays bytes between the launcher's streams and the agent's.
#[derive(Debug)]
pub(crate) struct Relay {
    /// The pty's master, for window size changes (pty mode only).
    master: Option<Arc<OwnedFd>>,
    output: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
    /// Tells the input thread to stop.
    done: Arc<AtomicBool>,
    /// Restores the user's terminal when the relay is dropped, after the
    /// threads have stopped writing to it.
    raw: Option<RawMode>,
}

impl Relay {
    /// The agent on a pty whose `master` the bottle handed over: the user's
    /// terminal goes raw and bytes flow both ways.
    pub(crate) fn pty(master: OwnedFd) -> io::Result<Relay> {
        let master = Arc::new(master);
        let raw = RawMode::enter()?;
        let done = Arc::new(AtomicBool::new(false));
        let m = master.clone();
        let out = std::thread::spawn(move || copy(m.as_fd(), rustix::stdio::stdout()));
        let m = master.clone();
        let d = done.clone();
        let input = std::thread::spawn(move || feed(m.as_fd(), &d));
        Ok(Relay { master: Some(master), output: vec![out], input: Some(input), done, raw: Some(raw) })
    }

    /// The agent on pipes: `stdin` is the writing end of its stdin, `stdout`
    /// and `stderr` the reading ends of its output streams.
    pub(crate) fn pipes(stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> Relay {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        // Dropping `stdin` when the launcher's input ends gives the agent EOF.
        let input = std::thread::spawn(move || feed(stdin.as_fd(), &d));
        let output = vec![
            std::thread::spawn(move || copy(stdout.as_fd(), rustix::stdio::stdout())),
            std::thread::spawn(move || copy(stderr.as_fd(), rustix::stdio::stderr())),
        ];
        Relay { master: None, output, input: Some(input), done, raw: None }
    }

    /// Passes the user's window size on to the agent's terminal.
    pub(crate) fn resize(&self) {
        if let Some(m) = &self.master
            && let Ok(size) = tcgetwinsize(rustix::stdio::stdin())
        {
            // The agent's terminal is gone when this fails: nothing to resize.
            tcsetwinsize(m.as_fd(), size).ok();
        }
    }

    /// Waits (briefly) for the agent's last output once the bottle has
    /// ended, stops reading the user's input, and restores the terminal.
    pub(crate) fn finish(mut self) {
        let deadline = Instant::now() + DRAIN;
        for t in std::mem::take(&mut self.output) {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                t.join().ok();
            }
        }
        self.stop_input();
    }

    fn stop_input(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.input.take() {
            // It polls `done` every 50 ms; a write blocked on a full pipe
            // ends when the bottle (the reader) is gone.
            let deadline = Instant::now() + Duration::from_millis(500);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                t.join().ok();
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop_input();
        // `raw` restores the terminal as the relay goes.
        drop(self.raw.take());
    }
}

/// Copies from `from` to `to` until `from` ends. If `to` fails (a closed
/// pipe), the rest is read and dropped so that the agent never blocks on a
/// full pipe or terminal.
///
/// When `to` is a terminal, the bytes go through an [`EscapeFilter`].
fn copy(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut sink_ok = true;
    let mut filter = rustix::termios::isatty(to).then(EscapeFilter::default);
    let mut filtered = Vec::new();
    loop {
        let n = match rustix::io::read(from, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            // EIO: every holder of the pty's other side is gone.
            Err(_) => return,
        };
        if sink_ok {
            sink_ok = match &mut filter {
                Some(f) => {
                    filtered.clear();
                    f.filter(&buf[..n], &mut filtered);
                    write_all(to, &filtered).is_ok()
                }
                None => write_all(to, &buf[..n]).is_ok(),
            };
        }
    }
}

/// Copies this process's stdin to `to` until stdin ends, `to` fails, or
/// `done` is set.
fn feed(to: BorrowedFd<'_>, done: &AtomicBool) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let stdin = rustix::stdio::stdin();
    let mut buf = vec![0u8; 16 << 10];
    let tick = Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
    while !done.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let n = match rustix::io::read(stdin, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(_) => return,
        };
        if write_all(to, &buf[..n]).is_err() {
            return;
        }
    }
}

fn write_all(to: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(to, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
