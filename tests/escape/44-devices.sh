#!/bin/sh
# Block devices, memory and the kernel log.
# Prints `contained: ...` or `ESCAPED: ...`.
if ls /dev/vda /dev/sda /dev/mem /dev/kmsg /dev/port /dev/kvm >/dev/null 2>&1; then echo "ESCAPED: found a host device"; else echo "contained: only harmless devices"; fi
