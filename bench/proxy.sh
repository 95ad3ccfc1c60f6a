#!/usr/bin/env bash
# Egress proxy benchmarks against mitmdump and direct, in one run, then the
# load test (1,000 concurrent connections, 100,000 requests, 2 rounds).
#
#   bench/proxy.sh [SECONDS]      # default 5 s per measurement
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
if ! command -v mitmdump >/dev/null; then
  python3 -m pip install -q mitmproxy
fi
mitmdump --version | head -1
cargo build -q --release -p bot-bottle
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "== proxy vs mitmdump vs direct"
cargo bench -q -p bot-bottle-sidecars --bench proxy -- \
  --bin "$PWD/target/release/bot-bottle" --mitmdump "$(command -v mitmdump)" --seconds "$secs"
echo "== load test"
cargo bench -q -p bot-bottle-sidecars --bench proxy -- --bin "$PWD/target/release/bot-bottle" --load
