#!/bin/sh
# ICMP out needs a raw socket.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: raw ICMP socket refused"; else echo "ESCAPED: opened a raw ICMP socket ($r)"; fi
