#!/bin/sh
# /sys (host hardware and kernel state).
# Prints `contained: ...` or `ESCAPED: ...`.
if ls /sys/class >/dev/null 2>&1; then echo "ESCAPED: /sys visible"; else echo "contained: /sys absent"; fi
