#!/bin/sh
# Changing the host name (only the bottle's UTS namespace could change).
# Prints `contained: ...` or `ESCAPED: ...`.
if hostname bb-escape 2>/dev/null && [ "$(hostname)" = "bb-escape" ]; then echo "ESCAPED: changed the hostname"; else echo "contained: hostname change refused"; fi
