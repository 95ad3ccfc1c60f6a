#!/bin/sh
# Changing the clock.
# Prints `contained: ...` or `ESCAPED: ...`.
if date -s '2001-01-01' >/dev/null 2>&1; then echo "ESCAPED: changed the time"; else echo "contained: clock change refused"; fi
