#!/usr/bin/env bash
# Egress proxy benchmarks against mitmdump and direct, in one run, then the
# load test (1,000 concurrent connections, 100,000 requests, 2 rounds).
#
#   bench/proxy.sh [SECONDS]      # default 5 s per measurement
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
# mitmproxy lives in a virtualenv of its own: installed into the machine's
# Python it pins h11 and cryptography down for everything else.
venv=target/bench-venv
if [ ! -x "$venv/bin/mitmdump" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q mitmproxy
fi
mitmdump=$PWD/$venv/bin/mitmdump
"$mitmdump" --version | head -1
cargo build -q --release -p bot-bottle
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "== proxy vs mitmdump vs direct"
cargo bench -q -p bot-bottle-sidecars --bench proxy -- \
  --bin "$PWD/target/release/bot-bottle" --mitmdump "$mitmdump" --seconds "$secs"
echo "== load test"
cargo bench -q -p bot-bottle-sidecars --bench proxy -- --bin "$PWD/target/release/bot-bottle" --load
