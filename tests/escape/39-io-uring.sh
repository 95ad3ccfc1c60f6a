#!/bin/sh
# io_uring (a way around seccomp and network rules).
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = (1, 0); my $r = syscall(425, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: io_uring_setup refused by the filter"; else echo "ESCAPED: io_uring_setup reached the kernel ($r)"; fi
