#!/bin/sh
# Another bottle's ports: a neighbour bottle listens on its own 127.0.0.1.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    socket.create_connection(("127.0.0.1", int(os.environ["NEIGHBOR_PORT"])), timeout=2)' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: the neighbour's loopback is its own"; else echo "ESCAPED: reached another bottle's port ($r)"; fi
