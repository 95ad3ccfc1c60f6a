#!/usr/bin/env bash
# Start to the agent's first instruction with a 10,000-file, 200 MB git
# project and a 2 GB ignored build directory, against `git clone --local`
# and `cp -a` of the same project, in one interleaved run.
#
#   bench/workspace.sh [RUNS] [WORKDIR]   # default 5 runs; the project is made once in WORKDIR
set -euo pipefail
cd "$(dirname "$0")/.."
command -v git >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git; }
cargo build -q --release -p bot-bottle
git --version
python3 bench/workspace.py "$PWD/target/release/bot-bottle" "${1:-5}" "${2:-${TMPDIR:-/tmp}/bb-bench-workspace}"
