#!/bin/sh
# An abstract unix socket on the host (the kind dbus and X11 use).
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    socket.socket(socket.AF_UNIX).connect("\0" + os.environ["HOST_ABSTRACT"])' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: host abstract socket unreachable"; else echo "ESCAPED: connected to a host abstract socket ($r)"; fi
