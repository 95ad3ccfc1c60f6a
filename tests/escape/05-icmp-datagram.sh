#!/bin/sh
# ICMP echo through an unprivileged ping socket.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).sendto(bytes([8,0,247,255,0,0,0,0]), (os.environ["HOST_ADDR"], 0))' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: ICMP refused or unroutable"; else echo "ESCAPED: sent ICMP out ($r)"; fi
