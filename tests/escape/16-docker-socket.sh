#!/bin/sh
# The docker socket and other daemons' sockets.
# Prints `contained: ...` or `ESCAPED: ...`.
if ls /var/run/docker.sock /run/docker.sock /run/containerd /run/dbus /tmp/.X11-unix >/dev/null 2>&1; then echo "ESCAPED: found a daemon socket"; else echo "contained: no daemon sockets"; fi
