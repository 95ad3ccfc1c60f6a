#!/usr/bin/env python3
"""Copies a deterministic slice of real source files into a corpus folder.

usage: make-corpus.py SRC DEST MEGABYTES
Takes regular files under SRC in sorted order (skipping files over 1 MB),
until MEGABYTES are copied, keeping relative paths. Both tools under test
then scan exactly the same bytes.
"""
import os, shutil, sys

src, dest, mb = sys.argv[1], sys.argv[2], float(sys.argv[3])
limit = int(mb * 1e6)
total = 0
if os.path.exists(dest):
    shutil.rmtree(dest)
for root, dirs, files in os.walk(src):
    dirs.sort()
    for name in sorted(files):
        p = os.path.join(root, name)
        if not os.path.isfile(p) or os.path.islink(p):
            continue
        size = os.path.getsize(p)
        if size > 1_000_000:
            continue
        rel = os.path.relpath(p, src)
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copyfile(p, os.path.join(dest, rel))
        total += size
        if total >= limit:
            print(f"{total} bytes")
            sys.exit(0)
print(f"{total} bytes")
