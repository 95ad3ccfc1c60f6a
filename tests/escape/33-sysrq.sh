#!/bin/sh
# The sysrq trigger (h prints help: harmless even if it got through).
# Prints `contained: ...` or `ESCAPED: ...`.
if { echo h > /proc/sysrq-trigger; } 2>/dev/null && ! [ -c /proc/sysrq-trigger ]; then echo "ESCAPED: wrote sysrq-trigger"; else echo "contained: sysrq masked"; fi
