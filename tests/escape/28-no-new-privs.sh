#!/bin/sh
# no_new_privs, asked of the kernel (prctl PR_GET_NO_NEW_PRIVS) and read
# from /proc/self/status where the kernel reports it there (gVisor's /proc
# has no such line; a line present must say 1).
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 -c 'import ctypes; print("on" if ctypes.CDLL(None, use_errno=True).prctl(39, 0, 0, 0, 0) == 1 else "off")' 2>&1 | tail -n 1)
line=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/self/status)
if [ "$r" != "on" ] || [ "${line:-1}" != "1" ]; then echo "ESCAPED: no_new_privs off (prctl: $r, status: ${line:-none})"
elif [ -n "$line" ]; then echo "contained: no_new_privs on"
else echo "contained: no_new_privs on (prctl; this kernel's /proc/self/status does not report it, as gVisor's)"; fi
