#!/bin/sh
# mount(2) directly.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = ("none", "/tmp", "tmpfs", 0, 0); my $r = syscall(165, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: mount(2) refused by the filter"; else echo "ESCAPED: mount(2) reached the kernel ($r)"; fi
