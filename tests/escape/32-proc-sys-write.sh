#!/bin/sh
# Writing kernel parameters under /proc/sys.
# Prints `contained: ...` or `ESCAPED: ...`.
if { echo 1 > /proc/sys/kernel/sysrq || echo 1 > /proc/sys/net/ipv4/ip_forward; } 2>/dev/null; then echo "ESCAPED: wrote /proc/sys"; else echo "contained: /proc/sys read-only"; fi
