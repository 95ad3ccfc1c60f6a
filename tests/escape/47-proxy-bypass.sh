#!/bin/sh
# Ignoring the proxy (every proxy variable) and connecting directly.
# Prints `contained: ...` or `ESCAPED: ...`.
if curl -s --noproxy '*' --max-time 3 -o /dev/null https://$HOST_ADDR:$HOST_PORT/ 2>/dev/null || curl -s --noproxy '*' --max-time 3 -o /dev/null http://$HOST_ADDR:$HOST_PORT/ 2>/dev/null; then echo "ESCAPED: reached the host directly"; else echo "contained: no direct route"; fi
