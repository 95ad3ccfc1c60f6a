#!/bin/sh
# A fork bomb is contained by the process limit.
# Prints `contained: ...` or `ESCAPED: ...`.
python3 - <<'PY'
import os, time
pids = []
try:
    for _ in range(2000):
        p = os.fork()
        if p == 0:
            time.sleep(30)
            os._exit(0)
        pids.append(p)
except OSError:
    pass
for p in pids:
    os.kill(p, 9)
n = len(pids)
print(f"ESCAPED: {n} processes" if n >= 1000 else f"contained: stopped at {n} processes")
PY
