#!/bin/sh
# Direct TCP to an address outside the bottle (the host's own interface).
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    socket.create_connection((os.environ["HOST_ADDR"], int(os.environ["HOST_PORT"])), timeout=2)' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: no route out"; else echo "ESCAPED: connected to the host interface ($r)"; fi
