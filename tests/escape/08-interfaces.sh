#!/bin/sh
# Only loopback exists inside: the interfaces the kernel lists to any
# socket (if_nameindex), and /proc/sys/net's view where the kernel has one
# (gVisor's /proc has no /proc/sys/net/ipv4/conf; the first probe covers it).
# A probe that breaks counts as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c 'import socket; print(" ".join(sorted(n for _, n in socket.if_nameindex())) or "none")' 2>&1 | tail -n 1)
conf=$(ls /proc/sys/net/ipv4/conf 2>/dev/null | grep -vE '^(all|default|lo)$' | tr '\n' ' ')
if [ "$r" != "lo" ]; then echo "ESCAPED: interfaces: $r"
elif [ -n "$conf" ]; then echo "ESCAPED: other interfaces in /proc/sys: $conf"
elif [ -d /proc/sys/net/ipv4/conf ]; then echo "contained: loopback only"
else echo "contained: loopback only (this kernel has no /proc/sys/net/ipv4/conf, as gVisor's: if_nameindex alone)"; fi
