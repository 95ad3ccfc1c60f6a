#!/bin/sh
# Files of other host users and system state.
# Prints `contained: ...` or `ESCAPED: ...`.
if ls /var/lib /var/log /srv /opt >/dev/null 2>&1; then echo "ESCAPED: listed host system state"; else echo "contained: no /var, /srv or /opt"; fi
