#!/bin/sh
# A memory hog is contained by the memory limit.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    b = bytearray(3 * 1024**3)' 'except MemoryError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: 3 GiB allocation refused"; else echo "ESCAPED: allocated 3 GiB ($r)"; fi
