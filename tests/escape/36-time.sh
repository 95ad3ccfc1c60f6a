#!/bin/sh
# Setting the clock: `date -s` (busybox's reports a refusal but exits 0, so
# its exit status alone proves nothing) and clock_settime(2) itself, to the
# current time so that an escape changes nothing.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 - <<'PY' 2>&1 | tail -n 1
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
now = Timespec(int(time.time()), 0)
print("reached" if libc.clock_settime(0, ctypes.byref(now)) == 0 else "blocked")
PY
)
if date -s '2001-01-01' >/dev/null 2>&1 && [ "$(date +%Y)" = "2001" ]; then echo "ESCAPED: changed the time"
elif [ "$r" = "blocked" ]; then echo "contained: clock change refused"
else echo "ESCAPED: clock_settime worked ($r)"; fi
