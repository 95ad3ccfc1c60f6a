#!/bin/sh
# Pushing keystrokes into a terminal's input queue (TIOCSTI, bubblewrap's
# CVE-2017-5226) or the console's paste buffer (TIOCLINUX), redirecting
# the console (TIOCCONS), swapping line disciplines (TIOCSETD): refused by
# the filter (EPERM) even on a terminal the process controls, and even
# with high bits set in the ioctl number (which the kernel ignores).
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 - <<'PY' 2>&1 | tail -n 1
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    bad = []
    try:
        os.setsid()
        master = os.open("/dev/ptmx", os.O_RDWR)
        libc.grantpt(master); libc.unlockpt(master)
        libc.ptsname.restype = ctypes.c_char_p
        name = libc.ptsname(master).decode()
        tty = os.open(name, os.O_RDWR)  # our controlling terminal now
        ch = ctypes.c_char(b"x")
        disc = ctypes.c_int(0)
        for label, req, arg in (
            ("TIOCSTI", 0x5412, ctypes.addressof(ch)),
            ("TIOCSTI|1<<32", 0x100005412, ctypes.addressof(ch)),
            ("TIOCLINUX", 0x541C, ctypes.addressof(ch)),
            ("TIOCCONS", 0x541D, None),
            ("TIOCSETD", 0x5423, ctypes.addressof(disc)),
        ):
            if libc.ioctl(tty, req, arg) == 0:
                bad.append(label + " worked")
            elif ctypes.get_errno() != errno.EPERM:
                bad.append("%s: errno %d, not the filter's EPERM" % (label, ctypes.get_errno()))
    except OSError as e:
        bad.append("probe broke: %s" % e)
    os.write(w, ("; ".join(bad) if bad else "blocked").encode())
    os._exit(0)
os.close(w)
os.wait()
print(os.read(r, 4096).decode())
PY
)
if [ "$r" = "blocked" ]; then echo "contained: terminal input injection refused"; else echo "ESCAPED: $r"; fi
