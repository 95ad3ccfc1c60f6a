#!/bin/sh
# ptrace-attaching the bottle's init.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = (16, 1, 0, 0); my $r = syscall(101, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: ptrace(ATTACH, 1) refused by the filter"; else echo "ESCAPED: ptrace(ATTACH, 1) reached the kernel ($r)"; fi
