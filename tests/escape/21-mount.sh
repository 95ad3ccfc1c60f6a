#!/bin/sh
# mount a filesystem.
# Prints `contained: ...` or `ESCAPED: ...`.
if mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>/dev/null; then echo "ESCAPED: mounted"; else echo "contained: mount refused"; fi
