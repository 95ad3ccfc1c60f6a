#!/bin/sh
# Descriptors the launcher inherited without close-on-exec (the test
# harness leaves a host file and a host TCP connection open on purpose):
# only the standard streams may cross into the bottle.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 - <<'PY' 2>&1 | tail -n 1
import os
bad = []
for n in os.listdir("/proc/self/fd"):
    fd = int(n)
    if fd <= 2:
        continue
    try:
        bad.append("fd %d -> %s" % (fd, os.readlink("/proc/self/fd/%d" % fd)))
    except OSError:
        pass  # the directory listing's own descriptor, closed by now
print("; ".join(bad) if bad else "blocked")
PY
)
if [ "$r" = "blocked" ]; then echo "contained: only stdin, stdout and stderr"; else echo "ESCAPED: $r"; fi
