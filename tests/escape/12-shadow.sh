#!/bin/sh
# The host's /etc/shadow.
# Prints `contained: ...` or `ESCAPED: ...`.
if cat /etc/shadow >/dev/null 2>&1 || cat /etc/gshadow >/dev/null 2>&1; then echo "ESCAPED: read a shadow file"; else echo "contained: no shadow files"; fi
