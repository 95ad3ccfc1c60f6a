#!/bin/sh
# Adding a key to a keyring.
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = ("user", "bb", "xyz", 3, -2); my $r = syscall(248, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: add_key refused by the filter"; else echo "ESCAPED: add_key reached the kernel ($r)"; fi
