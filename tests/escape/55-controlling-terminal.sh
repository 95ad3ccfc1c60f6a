#!/bin/sh
# The user's terminal: no process of the bottle may hold it, as a
# controlling terminal (/dev/tty) or as a descriptor. Run off a terminal, an
# agent has none at all; on one, only a pty of the bottle's own (tested
# through a real terminal in suite::terminal).
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 - <<'PY' 2>&1 | tail -n 1
import errno, os
bad = []
try:
    os.close(os.open("/dev/tty", os.O_RDWR))
    bad.append("opened /dev/tty")
except OSError as e:
    if e.errno != errno.ENXIO:
        bad.append("/dev/tty: %s" % e)
for fd in (0, 1, 2):
    if os.isatty(fd):
        bad.append("fd %d is a terminal" % fd)
print("; ".join(bad) if bad else "blocked")
PY
)
if [ "$r" = "blocked" ]; then echo "contained: no controlling terminal, no terminal descriptor"; else echo "ESCAPED: $r"; fi
