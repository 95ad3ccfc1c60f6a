#!/bin/sh
# Seeing host processes.
# Prints `contained: ...` or `ESCAPED: ...`.
n=$(ls -d /proc/[0-9]* | wc -l); if grep -lqsE "dockerd|cargo|sshd|systemd" /proc/[0-9]*/cmdline 2>/dev/null; then echo "ESCAPED: host processes visible"; elif [ "$n" -gt 20 ]; then echo "ESCAPED: $n processes visible"; else echo "contained: $n processes, all the bottle's"; fi
