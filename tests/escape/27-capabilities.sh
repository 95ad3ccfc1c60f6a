#!/bin/sh
# Any capability left.
# Prints `contained: ...` or `ESCAPED: ...`.
eff=$(awk "/^CapEff/ {print \$2}" /proc/self/status); bnd=$(awk "/^CapBnd/ {print \$2}" /proc/self/status); if [ "$eff" != "0000000000000000" ] || [ "$bnd" != "0000000000000000" ]; then echo "ESCAPED: capabilities $eff/$bnd"; else echo "contained: no capabilities"; fi
