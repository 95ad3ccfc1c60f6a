#!/bin/sh
# Loading a kernel module.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = (-1, "", 0); my $r = syscall(313, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: finit_module refused by the filter"; else echo "ESCAPED: finit_module reached the kernel ($r)"; fi
