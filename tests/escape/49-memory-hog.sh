#!/bin/sh
# A memory hog is contained by the memory limit: the allocation is refused
# (an rlimit), or the hog is killed when it reaches the bottle's cgroup
# limit (SIGKILL, exit 137).
# Contained only if the probe says `blocked` or is killed; a probe that
# breaks otherwise counts as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
prog=$(printf '%s\n' 'try:' '    b = bytearray(3 * 1024**3)' 'except MemoryError:' '    print("blocked")' 'else:' '    print("reached")')
# The shell's own word on a killed child goes to the captured stderr too.
out=$( { python3 -c "$prog"; echo "exit=$?"; } 2>&1 )
if printf '%s\n' "$out" | grep -qx blocked; then echo "contained: 3 GiB allocation refused"
elif [ "$(printf '%s\n' "$out" | tail -n 1)" = "exit=137" ]; then echo "contained: killed at the memory limit before 3 GiB"
else echo "ESCAPED: allocated 3 GiB ($(printf '%s' "$out" | tr '\n' ' '))"; fi
