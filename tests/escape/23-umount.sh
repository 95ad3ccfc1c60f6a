#!/bin/sh
# umount /proc to uncover what is below.
# Prints `contained: ...` or `ESCAPED: ...`.
if umount /proc 2>/dev/null || umount -l /workspace 2>/dev/null; then echo "ESCAPED: unmounted"; else echo "contained: umount refused"; fi
