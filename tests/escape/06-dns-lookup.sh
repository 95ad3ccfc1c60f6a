#!/bin/sh
# DNS lookups of any name.
# Prints `contained: ...` or `ESCAPED: ...`.
if getent hosts example.com >/dev/null 2>&1; then echo "ESCAPED: resolved a name"; else echo "contained: no resolver"; fi
