#!/bin/sh
# The user's supplementary groups open group-readable host files (a key
# under /etc/ssl/private, a project file of a shared group). The agent must
# hold none. Its own gid listed again (docker's exec adds the primary gid)
# grants nothing beyond that gid, so it is left out; any other counts.
# Prints `contained: ...` or `ESCAPED: ...`.
own=$(id -g)
g=$(sed -n 's/^Groups:[[:space:]]*//p' /proc/self/status | tr -s ' \t' '\n' | grep -v "^$own\$" | grep -v '^$' | tr '\n' ' ')
if [ -z "$g" ]; then echo "contained: no supplementary groups"; else echo "ESCAPED: supplementary groups $g"; fi
