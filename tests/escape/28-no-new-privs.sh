#!/bin/sh
# no_new_privs is set.
# Prints `contained: ...` or `ESCAPED: ...`.
if ! grep -q '^NoNewPrivs:\s*1' /proc/self/status; then echo "ESCAPED: no_new_privs off"; else echo "contained: no_new_privs on"; fi
