"""Runs a command on a fresh pseudo-terminal as its controlling terminal,
the way a user's shell would, and drives it like a user at the keyboard.

usage: pty_run.py SCRIPT_JSON -- ARGV...
SCRIPT_JSON is a list of steps: ["wait", TEXT] waits until TEXT has been
printed; ["resize", ROWS, COLS] changes the window size (the kernel sends
SIGWINCH to the terminal's foreground process group); ["type", TEXT] types
TEXT (so "\u0003" is Ctrl-C); ["sleep", SECONDS] waits, reading output;
["waitfile", PATTERN] waits until a file matches the glob PATTERN. The command's environment is
this script's. Prints {"code": N, "output": "..."} as JSON.
"""
import fcntl
import glob
import json
import os
import select
import struct
import subprocess
import sys
import termios
import time

steps = json.loads(sys.argv[1])
argv = sys.argv[sys.argv.index("--") + 1 :]
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))


def controlling_tty():
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


proc = subprocess.Popen(
    argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=controlling_tty
)
os.close(slave)
out = b""


def pump(timeout):
    global out
    r, _, _ = select.select([master], [], [], timeout)
    if r:
        try:
            data = os.read(master, 65536)
        except OSError:
            return False
        if not data:
            return False
        out += data
    return True


deadline = time.time() + 60
for step in steps:
    if step[0] == "wait":
        while step[1].encode() not in out and time.time() < deadline:
            if not pump(0.1) and proc.poll() is not None:
                break
    elif step[0] == "resize":
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", step[1], step[2], 0, 0))
    elif step[0] == "type":
        os.write(master, step[1].encode())
    elif step[0] == "sleep":
        until = time.time() + step[1]
        while time.time() < until:
            pump(0.05)
    elif step[0] == "waitfile":
        while not glob.glob(step[1]) and time.time() < deadline:
            pump(0.05)
while proc.poll() is None and time.time() < deadline:
    pump(0.1)
# Drain what is left, but not forever: a select timeout is not EOF, and a
# process that outlives the command may hold the terminal open.
drained = time.time() + 5
while time.time() < drained and pump(0.1):
    pass
if proc.poll() is None:
    proc.kill()
print(json.dumps({"code": proc.wait(), "output": out.decode(errors="replace")}))
