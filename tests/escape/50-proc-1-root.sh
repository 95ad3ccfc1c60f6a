#!/bin/sh
# Reaching another root through /proc/1/root.
# Prints `contained: ...` or `ESCAPED: ...`.
if ls /proc/1/root/root >/dev/null 2>&1 && [ -e /proc/1/root/etc/shadow ]; then echo "ESCAPED: reached the host root"; else echo "contained: pid 1 is the bottle's own"; fi
