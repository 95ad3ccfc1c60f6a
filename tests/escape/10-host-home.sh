#!/bin/sh
# Reading the host's home directories.
# Prints `contained: ...` or `ESCAPED: ...`.
if ls /root /home/cloudsdk >/dev/null 2>&1 || cat /root/.bashrc >/dev/null 2>&1; then echo "ESCAPED: read a host home"; else echo "contained: host homes absent"; fi
