#!/bin/sh
# clone(CLONE_NEWUSER) directly.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = (0x10000000); my $r = syscall(272, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: unshare(CLONE_NEWUSER) refused by the filter"; else echo "ESCAPED: unshare(CLONE_NEWUSER) reached the kernel ($r)"; fi
