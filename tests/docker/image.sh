#!/usr/bin/env bash
# Builds the docker backend's test image offline (no registry is reachable
# in CI): a root assembled from this host's binaries (busybox, curl,
# python3 when present) and the shared libraries they and bot-bottle need,
# imported with `docker import`. Cached under a fixed tag; `--force`
# rebuilds it.
#
#   tests/docker/image.sh [--force]    # prints the tag
set -euo pipefail
tag=bot-bottle-test:base
if [ "${1:-}" != --force ] && docker image inspect "$tag" >/dev/null 2>&1; then
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
# bot-bottle's own libraries (the forwarder is the host binary).
add /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6
if [ -n "${BOT_BOTTLE_EXE:-}" ]; then add "$BOT_BOTTLE_EXE"; rm -f "$root$BOT_BOTTLE_EXE"; fi
mkdir -p "$root/etc/ssl/certs"
printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nagent:x:1000:\n' >"$root/etc/group"
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "$tag"
