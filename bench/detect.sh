#!/usr/bin/env bash
# Detector throughput, single core, against detect-secrets on the same files.
#
#   bench/detect.sh [SRC_DIR] [MEGABYTES]
#
# SRC_DIR defaults to ~/.cargo/registry/src (real source, available offline);
# a deterministic MEGABYTES slice of it (default 32) is copied to a corpus
# folder so both tools read exactly the same bytes. Both run pinned to CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-$HOME/.cargo/registry/src}
mb=${2:-32}
corpus=${TMPDIR:-/tmp}/bb-bench-corpus
python3 bench/make-corpus.py "$src" "$corpus" "$mb"

echo "== bot-bottle-detect (in memory, best of 5, CPU 0)"
cargo build -q --release -p bot-bottle-detect --benches
taskset -c 0 cargo bench -q -p bot-bottle-detect --bench throughput -- "$corpus" | tee /tmp/bb-bench-ours.json

echo "== detect-secrets (CPU 0)"
# In the bench virtualenv (see bench/proxy.sh), not the machine's Python.
venv=target/bench-venv
if [ ! -x "$venv/bin/detect-secrets" ]; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q detect-secrets
fi
ds=$PWD/$venv/bin/detect-secrets
"$ds" --version
# detect-secrets scans paths relative to the current directory: handed an
# absolute folder it finds no files and reports nothing in a fraction of a
# second. Run it inside the corpus.
start=$(date +%s.%N)
(cd "$corpus" && taskset -c 0 "$ds" scan --all-files .) > /tmp/bb-bench-ds.json
end=$(date +%s.%N)
python3 - "$start" "$end" "$mb" <<'PY'
import json, sys
start, end, mb = map(float, sys.argv[1:4])
ours = json.load(open("/tmp/bb-bench-ours.json"))
ds = json.load(open("/tmp/bb-bench-ds.json"))
secs = end - start
n = sum(len(v) for v in ds["results"].values())
ds_rate = ours["mb"] / secs
print(f"detect-secrets: {secs:.1f} s, {ds_rate:.3f} MB/s, {n} findings")
print(f"bot-bottle-detect: {ours['seconds']:.3f} s, {ours['mb_per_s']:.1f} MB/s, {ours['findings']} findings")
print(f"ratio: {ours['mb_per_s'] / ds_rate:.0f}x")
PY
