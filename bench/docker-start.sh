#!/usr/bin/env bash
# Start latency of a docker-backend bottle vs a bare `docker run --rm` of
# the same image running the same command, in one interleaved run, under
# runc and (when registered) runsc. Starts dockerd if it is not running and
# builds the test image offline (tests/docker/image.sh).
#
#   bench/docker-start.sh [RUNS]     # default 20 of each
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
if ! docker info >/dev/null 2>&1; then
  (setsid dockerd >/tmp/bb-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
image=$(tests/docker/image.sh)
docker version --format 'docker {{.Server.Version}}'
cargo build -q --release -p bot-bottle
uptime
python3 bench/docker-start.py "$PWD/target/release/bot-bottle" "$image" "$runs"
uptime
