#!/bin/sh
# UDP to the host's interface.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (os.environ["HOST_ADDR"], int(os.environ["HOST_UDP_PORT"])))' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: no route for UDP"; else echo "ESCAPED: sent UDP out ($r)"; fi
