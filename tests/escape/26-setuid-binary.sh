#!/bin/sh
# Setuid binaries never raise privilege. When the agent is not root inside,
# `su` must not make it root; when it is root inside (an unprivileged
# launch), a setuid-root file's owner must be unmapped, so setuid could at
# most give the overflow id, never host root.
# Prints `contained: ...` or `ESCAPED: ...`.
me=$(id -u)
if [ "$me" != "0" ]; then
  got=$(su root -c 'id -u' </dev/null 2>/dev/null)
  if [ "$got" = "0" ]; then echo "ESCAPED: su gave uid 0"; else echo "contained: su gave nothing"; fi
else
  owner=$(stat -c %u /usr/bin/su 2>/dev/null)
  if [ "$owner" = "0" ]; then echo "ESCAPED: host root is mapped inside"; else echo "contained: setuid-root files are owned by unmapped uid $owner"; fi
fi
