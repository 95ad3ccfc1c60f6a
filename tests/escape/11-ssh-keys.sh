#!/bin/sh
# ssh keys and the ssh agent.
# Prints `contained: ...` or `ESCAPED: ...`.
if ls /root/.ssh /etc/ssh >/dev/null 2>&1 || [ -n "$SSH_AUTH_SOCK" ]; then echo "ESCAPED: found ssh material"; else echo "contained: no ssh keys or agent"; fi
