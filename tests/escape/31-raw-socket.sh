#!/bin/sh
# Raw sockets (packet capture, spoofing).
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: packet socket refused"; else echo "ESCAPED: opened a packet socket ($r)"; fi
