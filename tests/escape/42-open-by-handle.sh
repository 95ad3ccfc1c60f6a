#!/bin/sh
# open_by_handle_at(2) (the shocker escape).
# Contained only if the probe says `blocked`; a probe that breaks counts
# as an escape, so a broken case can never pass.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(perl -e 'my @a = (0, 0, 0); my $r = syscall(304, @a); print(($r == -1 && $!{EPERM}) ? "blocked" : "reached")' 2>&1 | tail -n 1)
if [ "$r" = "blocked" ]; then echo "contained: open_by_handle_at refused by the filter"; else echo "ESCAPED: open_by_handle_at reached the kernel ($r)"; fi
