#!/bin/sh
# Only loopback exists inside.
# Prints `contained: ...` or `ESCAPED: ...`.
n=$(ls /proc/sys/net/ipv4/conf 2>/dev/null | grep -vcE '^(all|default|lo)$'); if [ "$n" != "0" ]; then echo "ESCAPED: other interfaces: $n"; else echo "contained: loopback only"; fi
