#!/usr/bin/env bash
# Builds the docker backend's test image offline (no registry is reachable
# in CI): a root assembled from this host's binaries (busybox, curl, and
# python3 and perl for the escape suite's probes) and the shared libraries
# they and bot-bottle need, imported with `docker import`. Cached under a
# fixed tag, labelled with this script's hash so that a changed recipe
# rebuilds it; `--force` rebuilds it anyway.
#
#   tests/docker/image.sh [--force]    # prints the tag
set -euo pipefail
tag=bot-bottle-test:base
recipe=$(sha256sum "$0" | cut -c1-16)
have=$(docker image inspect --format '{{index .Config.Labels "bot-bottle.recipe"}}' "$tag" 2>/dev/null || true)
if [ "${1:-}" != --force ] && [ "$have" = "$recipe" ]; then
  echo "$tag"
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,usr/bin,etc,tmp,home,workspace,run,proc,sys,dev,lib64}
chmod 1777 "$root/tmp"
cp /usr/bin/busybox "$root/bin/busybox"
for c in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$c" ] || ln -s busybox "$root/bin/$c"
done
# Binaries and every library they load, at the same paths as on the host.
libs() { ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true; }
add() {
  local f
  for f in "$@" $(for b in "$@"; do libs "$b"; done); do
    [ -e "$f" ] || continue
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
  done
}
add /usr/bin/curl
# The escape suite's probes: python3 (ctypes) and perl, with their standard
# libraries and every extension module's libraries. Debian's own python,
# not whatever `python3` a PATH shim picks.
if [ -x /usr/bin/python3.11 ]; then
  add /usr/bin/python3.11
  ln -sf python3.11 "$root/usr/bin/python3"
  mkdir -p "$root/usr/lib/python3.11"
  tar -C /usr/lib/python3.11 --exclude=./test --exclude=./site-packages --exclude=./dist-packages -c . \
    | tar -C "$root/usr/lib/python3.11" -x
  add /usr/lib/python3.11/lib-dynload/*.so
fi
if [ -x /usr/bin/perl ]; then
  add /usr/bin/perl
  mkdir -p "$root/usr/lib/x86_64-linux-gnu"
  cp -a /usr/lib/x86_64-linux-gnu/perl-base "$root/usr/lib/x86_64-linux-gnu/"
fi
# bot-bottle's own libraries (the forwarder is the host binary).
add /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6
if [ -n "${BOT_BOTTLE_EXE:-}" ]; then add "$BOT_BOTTLE_EXE"; rm -f "$root$BOT_BOTTLE_EXE"; fi
mkdir -p "$root/etc/ssl/certs"
printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nagent:x:1000:\n' >"$root/etc/group"
tar -C "$root" -c . | docker import --change "LABEL bot-bottle.recipe=$recipe" - "$tag" >/dev/null
echo "$tag"
