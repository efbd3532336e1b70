#!/usr/bin/env bash
# The CPU regression gate: run the smoke and handoff suites on CPU and check them against the committed reference
# (results/reference/cpu-smoke). Exact tensor bytes gate at 0 %; timings are reported only.
#   scripts/gate.sh            run and check (exit 1 on a regression, a missing run or a status change)
#   scripts/gate.sh --refresh  run and record the result as the new reference (every run must be ok)
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export OMP_NUM_THREADS=2  # the reference was recorded with 2 threads: kernels' scratch buffers may depend on it
reference=results/reference/cpu-smoke
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for suite in smoke handoff; do
  .venv/bin/python -m revbench run "$suite" --device cpu --out "$out" --no-report
done
if [ "${1:-}" = --refresh ]; then
  .venv/bin/python - "$out" <<'PY'
import sys
from revbench.check import load
bad = [f"{r.method}: {r.status} ({r.error})" for r in load(sys.argv[1]) if r.status != "ok"]
sys.exit("not recording a reference with failed runs:\n" + "\n".join(bad) if bad else 0)
PY
  mkdir -p "$reference"
  cp "$out/results.jsonl" "$reference/results.jsonl"
  echo "refreshed $reference/results.jsonl: review the diff and commit it"
else
  # ZeRO-3 gathers and releases partitioned parameters on its own schedule: once in five runs under load its
  # peak held one more 128 KiB block (+0.2 % of the total, +0.8 % of activations). RevFFN on ZeRO-2 offload, whose
  # reduce hooks now fire layer by layer inside the reversible backward, once in four runs under load peaked
  # 8,032 B (0.01 %) off its reference, and once, right after the test suite, one more 128 KiB block live in its
  # activations (+131,072 B, +1.6 % of 8 MB; ten reruns, quiet and loaded, gave the reference to the byte); the
  # cause is not pinned down (not Python's garbage collector: disabled or frequent, the bytes do not move). Every
  # other method is exact.
  .venv/bin/python -m revbench check "$out" --against "$reference" --tolerance zero3-offload:tensor_bytes=1 \
    --tolerance revffn-zero2-offload:tensor_bytes=1 --tolerance revffn-zero2-offload:tensor_bytes.activations=2
fi
