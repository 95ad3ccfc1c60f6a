#!/bin/sh
# DNS lookups of any name: through getent where the bottle has it, and
# through the C library's resolver (getaddrinfo) in every bottle, so that an
# image without getent cannot pass by having no probe.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import socket' 'try:' '    socket.getaddrinfo("example.com", 443)' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if getent hosts example.com >/dev/null 2>&1; then echo "ESCAPED: resolved a name"
elif [ "$r" = "blocked" ]; then echo "contained: no resolver"
else echo "ESCAPED: getaddrinfo resolved a name ($r)"; fi
