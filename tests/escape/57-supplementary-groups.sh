#!/bin/sh
# The user's supplementary groups open group-readable host files (a key
# under /etc/ssl/private, a project file of a shared group). The agent must
# hold none.
# Prints `contained: ...` or `ESCAPED: ...`.
g=$(sed -n 's/^Groups:[[:space:]]*//p' /proc/self/status | tr -d ' \t')
if [ -z "$g" ]; then echo "contained: no supplementary groups"; else echo "ESCAPED: supplementary groups $g"; fi
