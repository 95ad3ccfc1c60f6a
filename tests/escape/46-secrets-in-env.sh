#!/bin/sh
# The launcher's environment (where tokens live) in the bottle: the agent's
# own env, and every process's environ it can read (the init stages too).
# Prints `contained: ...` or `ESCAPED: ...`.
if env | grep -qE '^(CARGO_|BB_HOST_)' || cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -qE '^(CARGO_|BB_HOST_)'; then echo "ESCAPED: the host environment is visible"; else echo "contained: no host environment"; fi
