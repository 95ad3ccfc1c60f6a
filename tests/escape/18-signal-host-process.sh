#!/bin/sh
# Signalling a host process by its host pid.
# Prints `contained: ...` or `ESCAPED: ...`.
if kill -0 "$HOST_PID" 2>/dev/null; then echo "ESCAPED: host pid $HOST_PID is reachable"; else echo "contained: host pid not reachable"; fi
