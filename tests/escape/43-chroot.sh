#!/bin/sh
# chroot(2).
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = ("/tmp"); my $r = syscall(161, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: chroot refused by the filter"; else echo "ESCAPED: chroot reached the kernel ($r)"; fi
