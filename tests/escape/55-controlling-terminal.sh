#!/bin/sh
# The user's terminal: no process of the bottle may hold it, as a
# controlling terminal (/dev/tty) or as a descriptor. Run off a terminal, an
# agent has none at all; on one, only a pty of the bottle's own (tested
# through a real terminal in suite::terminal).
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 - <<'PY' 2>&1 | tail -n 1
import errno, os
# gVisor answers EIO where Linux answers ENXIO for a process without a
# controlling terminal; its /proc/version is a fixed string.
gvisor = "Sun Jan 10 15:06:54 PST 2016" in open("/proc/version").read()
bad, note = [], ""
try:
    os.close(os.open("/dev/tty", os.O_RDWR))
    bad.append("opened /dev/tty")
except OSError as e:
    if gvisor and e.errno == errno.EIO:
        note = " (/dev/tty: EIO, gVisor's answer for no controlling terminal)"
    elif e.errno != errno.ENXIO:
        bad.append("/dev/tty: %s" % e)
for fd in (0, 1, 2):
    if os.isatty(fd):
        bad.append("fd %d is a terminal" % fd)
print("; ".join(bad) if bad else "blocked" + note)
PY
)
case "$r" in
  blocked*) echo "contained: no controlling terminal, no terminal descriptor${r#blocked}" ;;
  *) echo "ESCAPED: $r" ;;
esac
