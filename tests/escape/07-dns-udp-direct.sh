#!/bin/sh
# A DNS query sent straight to a resolver address.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c "$(printf '%s\n' 'import os, socket' 'try:' '    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001"), ("127.0.0.53", 53)); s.recv(512)' 'except OSError:' '    print('\''blocked'\'')' 'else:' '    print('\''reached'\'')')" 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: no DNS answer"; else echo "ESCAPED: got a DNS answer ($r)"; fi
