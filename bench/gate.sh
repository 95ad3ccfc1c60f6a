#!/usr/bin/env bash
# The git gate: pushing a repository of 1,000 commits / 10,000 files through
# the gate vs directly to the same kind of upstream (a real sshd on
# loopback), in one run, alternating, median of ROUNDS.
#
#   bench/gate.sh [ROUNDS]      # default 3
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
git --version
ssh -V 2>&1
cargo bench -q -p bot-bottle-sidecars --bench gate -- --commits 1000 --files 10000 --rounds "$rounds"
