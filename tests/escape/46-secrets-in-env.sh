#!/bin/sh
# The launcher's environment (where tokens live) in the bottle: the agent's
# own env, and every process's environ it can read (the init stages too).
# The one CARGO_ variable bot-bottle itself provisions (the bottle's CA
# bundle, at the bottle's own path) is not the launcher's.
# Prints `contained: ...` or `ESCAPED: ...`.
mine='^CARGO_HTTP_CAINFO=/run/bot-bottle/ca-bundle\.pem$'
if env | grep -E '^(CARGO_|BB_HOST_)' | grep -qvE "$mine" || cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -E '^(CARGO_|BB_HOST_)' | grep -qvE "$mine"; then echo "ESCAPED: the host environment is visible"; else echo "contained: no host environment"; fi
