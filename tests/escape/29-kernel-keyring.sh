#!/bin/sh
# The kernel keyring.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = (0, -3, 0); my $r = syscall(250, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: keyctl(GET_KEYRING_ID) refused by the filter"; else echo "ESCAPED: keyctl(GET_KEYRING_ID) reached the kernel ($r)"; fi
