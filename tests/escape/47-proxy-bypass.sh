#!/bin/sh
# Ignoring HTTPS_PROXY and connecting directly.
# Prints `contained: ...` or `ESCAPED: ...`.
if env -u HTTPS_PROXY -u https_proxy curl -s --max-time 3 -o /dev/null https://$HOST_ADDR:$HOST_PORT/ 2>/dev/null || curl -s --noproxy '*' --max-time 3 -o /dev/null http://$HOST_ADDR:$HOST_PORT/ 2>/dev/null; then echo "ESCAPED: reached the host directly"; else echo "contained: no direct route"; fi
