#!/bin/sh
# A new user namespace to regain capabilities.
# Prints `contained: ...` or `ESCAPED: ...`.
if unshare -U -r true 2>/dev/null; then echo "ESCAPED: created a user namespace"; else echo "contained: unshare refused"; fi
