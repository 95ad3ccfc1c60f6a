#!/bin/sh
# Taking over the bottle's pid 1 through its descriptors: its control
# socket to the launcher would let a process command the bottle. Every
# route to pid 1's descriptors (reopening /proc/1/fd/*, pidfd_getfd) must
# fail. (Listing their numbers is no capability: when the agent is uid 0
# inside, the directory's owner is its own uid.)
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 - <<'PY' 2>&1 | tail -n 1
import ctypes, os, stat
libc = ctypes.CDLL(None, use_errno=True)
got = []
try:
    names = os.listdir("/proc/1/fd")
    for n in names:
        try:
            fd = os.open("/proc/1/fd/" + n, os.O_RDONLY)
            got.append("reopened fd %s" % n)
            os.close(fd)
        except OSError:
            pass
except OSError:
    pass
# Every other user's process too (a docker bottle's forwarder holds the
# sidecar sockets): Linux checks ptrace access, gVisor did not.
me = os.getuid()
for p in os.listdir("/proc"):
    if not p.isdigit() or p == "1" or int(p) == os.getpid():
        continue
    try:
        uid = int([l.split()[1] for l in open("/proc/%s/status" % p) if l.startswith("Uid:")][0])
        names = os.listdir("/proc/%s/fd" % p) if uid != me else []
    except (OSError, IndexError):
        continue
    for n in names:
        try:
            os.close(os.open("/proc/%s/fd/%s" % (p, n), os.O_RDONLY))
            got.append("reopened fd %s of pid %s (uid %d)" % (n, p, uid))
        except OSError:
            pass
pidfd = libc.syscall(434, 1, 0)  # pidfd_open
if pidfd >= 0:
    for target in range(0, 64):
        fd = libc.syscall(438, pidfd, target, 0)  # pidfd_getfd
        if fd >= 0:
            got.append("pidfd_getfd took fd %d" % target)
print("; ".join(got) if got else "blocked")
PY
)
if [ "$r" = "blocked" ]; then echo "contained: pid 1's descriptors are out of reach"; else echo "ESCAPED: $r"; fi
