#!/bin/sh
# Host /etc entries that are not world-readable (private keys, shadow,
# sudoers, credentials) must not be in the bottle at all, whatever groups
# or ids the agent holds.
# Prints `contained: ...` or `ESCAPED: ...`.
found=$(find /etc \( ! -perm -o=r -o -path '/etc/ssl/private*' \) 2>/dev/null | head -n 5 | tr '\n' ' ')
if [ -z "$found" ]; then echo "contained: everything in /etc is world-readable"; else echo "ESCAPED: $found"; fi
