#!/usr/bin/env bash
# The proxy's memory bound through a real native bottle: 200 concurrent
# 15 MiB gzip uploads; reports the launcher's peak RSS (bench/memory.py).
#
#   bench/memory.sh [UPLOADS] [MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p bot-bottle
python3 bench/memory.py "$PWD/target/release/bot-bottle" "${1:-200}" "${2:-15}"
