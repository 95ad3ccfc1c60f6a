#!/bin/sh
# kexec_load(2).
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = (0, 0, 0, 0); my $r = syscall(246, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: kexec_load refused by the filter"; else echo "ESCAPED: kexec_load reached the kernel ($r)"; fi
