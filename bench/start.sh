#!/usr/bin/env bash
# Start latency of a native bottle vs `docker run --rm` and `bwrap`, in one
# interleaved run. Installs what it needs (Debian), starts dockerd if it is
# not running, and imports a minimal busybox image offline.
#
#   bench/start.sh [RUNS]     # default 30 of each
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v bwrap >/dev/null || need+=(bubblewrap)
[ -x /usr/bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! docker info >/dev/null 2>&1; then
  (dockerd >/tmp/bb-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
if ! docker image inspect bb-bench:busybox >/dev/null 2>&1; then
  img=$(mktemp -d)
  mkdir -p "$img/bin"
  cp /usr/bin/busybox "$img/bin/"
  for c in sh true echo; do ln -sf busybox "$img/bin/$c"; done
  tar -C "$img" -c . | docker import - bb-bench:busybox >/dev/null
fi
docker version --format 'docker {{.Server.Version}}'
bwrap --version
cargo build -q --release -p bot-bottle
python3 bench/start.py "$PWD/target/release/bot-bottle" "$runs"
